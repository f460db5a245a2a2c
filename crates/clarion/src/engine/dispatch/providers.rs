//! Provider choice: which of a target's providers (its primary, then its backups)
//! the next attempt goes to, given their breakers and the providers whose retry
//! budget the delivery spent, and why a delivery moves from one to another.

use super::*;

/// The provider the next attempt goes to, from `floor` on: the first whose breaker
/// lets it through now (an open one lets a probe through when one is due, which is
/// how a delivery comes back to a provider that recovered). When every one of them
/// is open, waits for the last one's breaker, or for any change.
pub(super) async fn choose(target: &Target, floor: usize) -> (usize, Pass) {
    let last = target.providers.len() - 1;
    loop {
        for i in floor..=last {
            if let Some(pass) = target.breakers.get(i).try_pass() {
                return (i, pass);
            }
        }
        tokio::select! {
            pass = target.breakers.get(last).pass() => return (last, pass),
            _ = target.breakers.changed() => {}
        }
    }
}

/// Why a delivery's attempt goes to provider `at` after one at `current`, given
/// that it may use providers from `floor` on (for the `FailedOver` event).
pub(super) fn failover_why(at: usize, current: usize, floor: usize) -> &'static str {
    if at < current {
        "back to a provider whose breaker let a probe through"
    } else if floor > current {
        "the retry budget at the previous provider was spent (failover_after, max_attempts or max_elapsed)"
    } else {
        "the previous provider's breaker is open"
    }
}

/// Where the next try goes when it leaves provider `at`: the first provider the
/// delivery may still use, or the next one when the target's breaker at `at` just
/// found it down. `None` when the next try stays at `at`.
pub(super) fn next_provider(
    target: &Target,
    at: usize,
    floor: usize,
    target_down: bool,
) -> Option<&str> {
    let last = target.providers.len() - 1;
    if floor > at {
        Some(&*target.providers[floor].name)
    } else if target_down && at < last {
        Some(&*target.providers[at + 1].name)
    } else {
        None
    }
}
