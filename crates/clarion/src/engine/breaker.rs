//! The circuit breaker of one target: after repeated target-level failures it stops
//! the target's deliveries from hammering a peer that is down, lets one delivery
//! through now and then as a probe, and closes again when a probe succeeds.
//!
//! A target-level failure is an attempt in which nothing got through and everything
//! failed transiently (connection refused, timeouts, 5xx or 429 on every recipient).
//! Per-delivery failures (a 4xx for one payload, one bad recipient) are not the
//! target's fault, and neither trip nor feed the breaker.
//!
//! While the breaker is open, deliveries wait here without spending their own
//! attempts, the target's stream stops consuming (its updates wait in Kafka), and
//! other targets are untouched. An outage lasts until a probe succeeds or until the
//! outage budget runs out; after that, waiting deliveries are dead-lettered with the
//! time the target went down, while probes go on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub use crate::config::BreakerConfig;
pub use crate::ops::health::BreakerState;

#[derive(Debug)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        /// When the outage began (the breaker first opened).
        since: Instant,
        since_wall: jiff::Timestamp,
        /// When the next probe may go.
        next_probe: Instant,
        wait: Duration,
        probing: bool,
        /// The error of the attempt that opened it, or of the last failed probe.
        last_error: String,
    },
}

/// What a breaker says of its target now, for the ledger's `pending` records and
/// `/readyz`: its state, the last error while open, and when the next probe may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: BreakerState,
    pub last_error: Option<String>,
    pub next_probe_at: Option<jiff::Timestamp>,
}

impl Snapshot {
    /// A closed target has no error or probe to show.
    fn closed_if(self, closed: bool) -> Self {
        if closed {
            Snapshot {
                state: BreakerState::Closed,
                last_error: None,
                next_probe_at: None,
            }
        } else {
            self
        }
    }
}

/// What a delivery may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Try normally.
    Go,
    /// Try as the probe: its result opens or closes the breaker.
    Probe,
    /// The target has been down longer than the outage budget: give up.
    OutageOver { since: jiff::Timestamp },
}

/// How an attempt went, as far as the target (not the delivery) is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Something got through, or failed for a reason of its own.
    TargetUp,
    /// Everything failed transiently.
    TargetDown,
}

/// One target's breaker.
#[derive(Debug)]
pub struct Breaker {
    target: String,
    /// Set when the breaker is one of several providers' of its target.
    provider: Option<Member>,
    config: BreakerConfig,
    state: Mutex<State>,
    changed: Notify,
}

impl Breaker {
    pub fn new(target: &str, config: BreakerConfig) -> Self {
        Breaker::with_member(target, None, config)
    }

    fn with_member(target: &str, provider: Option<Member>, config: BreakerConfig) -> Self {
        let b = Breaker {
            target: target.to_string(),
            provider,
            config,
            state: Mutex::new(State::Closed { failures: 0 }),
            changed: Notify::new(),
        };
        b.publish(BreakerState::Closed);
        b
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every change is one assignment: a poisoned lock holds a whole state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { probing: true, .. } => BreakerState::HalfOpen,
            State::Open { .. } => BreakerState::Open,
        }
    }

    /// The state, the last error and the next probe's time.
    pub fn snapshot(&self) -> Snapshot {
        match &*self.lock() {
            State::Closed { .. } => Snapshot {
                state: BreakerState::Closed,
                last_error: None,
                next_probe_at: None,
            },
            State::Open {
                probing,
                next_probe,
                last_error,
                ..
            } => {
                let left = next_probe.saturating_duration_since(Instant::now());
                Snapshot {
                    state: if *probing {
                        BreakerState::HalfOpen
                    } else {
                        BreakerState::Open
                    },
                    last_error: Some(last_error.clone()),
                    next_probe_at: jiff::SignedDuration::try_from(left)
                        .ok()
                        .and_then(|d| jiff::Timestamp::now().checked_add(d).ok()),
                }
            }
        }
    }

    /// True while the target is considered down (open or probing).
    pub fn is_open(&self) -> bool {
        self.state() != BreakerState::Closed
    }

    /// [`Breaker::pass`] without waiting: `None` when it would wait, or when the
    /// outage budget is spent (a delivery with another provider to go to moves on).
    pub fn try_pass(&self) -> Option<Pass> {
        let mut st = self.lock();
        match &mut *st {
            State::Closed { .. } => Some(Pass::Go),
            State::Open {
                next_probe,
                probing,
                ..
            } => {
                if *probing || Instant::now() < *next_probe {
                    return None;
                }
                *probing = true;
                drop(st);
                self.publish(BreakerState::HalfOpen);
                Some(Pass::Probe)
            }
        }
    }

    /// Waits until a delivery may try (or must give up). Time spent here is not the
    /// delivery's: callers leave it out of `max_elapsed`.
    pub async fn pass(&self) -> Pass {
        loop {
            // Register for a change before looking, so none is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wait_until = {
                let mut st = self.lock();
                match &mut *st {
                    State::Closed { .. } => return Pass::Go,
                    State::Open {
                        since,
                        since_wall,
                        next_probe,
                        probing,
                        ..
                    } => {
                        let now = Instant::now();
                        if !*probing && now >= *next_probe {
                            *probing = true;
                            drop(st);
                            self.publish(BreakerState::HalfOpen);
                            return Pass::Probe;
                        }
                        if now.duration_since(*since) >= self.config.outage_budget {
                            return Pass::OutageOver { since: *since_wall };
                        }
                        if *probing { None } else { Some(*next_probe) }
                    }
                }
            };
            match wait_until {
                Some(at) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => {
                    // A probe is out: wait for its verdict, but wake for the outage
                    // budget too.
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep(self.config.probe_interval) => {}
                    }
                }
            }
        }
    }

    /// Records how an attempt went. `probe` says whether it went as the probe.
    /// Returns true when the breaker is open after it (the attempt is then not
    /// counted against the delivery: the target was down, not the delivery wrong).
    pub fn record(&self, pass: Pass, verdict: Verdict, reason: &str) -> bool {
        let mut st = self.lock();
        let now = Instant::now();
        let mut transition = None;
        let mut probe_failed = None;
        let open_after = match (&mut *st, verdict) {
            (State::Closed { failures }, Verdict::TargetUp) => {
                *failures = 0;
                false
            }
            (State::Closed { failures }, Verdict::TargetDown) => {
                *failures += 1;
                if *failures >= self.config.failures.max(1) {
                    *st = State::Open {
                        since: now,
                        since_wall: jiff::Timestamp::now(),
                        next_probe: now + self.config.probe_interval,
                        wait: self.config.probe_interval,
                        probing: false,
                        last_error: reason.to_string(),
                    };
                    transition = Some((BreakerState::Open, None));
                    true
                } else {
                    false
                }
            }
            (State::Open { since, .. }, Verdict::TargetUp) => {
                let down_for = now.duration_since(*since);
                *st = State::Closed { failures: 0 };
                transition = Some((BreakerState::Closed, Some(down_for)));
                false
            }
            (
                State::Open {
                    next_probe,
                    wait,
                    probing,
                    last_error,
                    ..
                },
                Verdict::TargetDown,
            ) => {
                if pass == Pass::Probe {
                    *wait = (*wait * 2).min(self.config.max_probe_interval);
                    *next_probe = now + *wait;
                    *probing = false;
                    *last_error = reason.to_string();
                    probe_failed = Some(*wait);
                }
                true
            }
        };
        drop(st);
        if let Some((to, down_for)) = transition {
            self.log_transition(to, down_for, reason);
            self.publish(to);
            self.changed.notify_waiters();
        } else if let Some(wait) = probe_failed {
            // Still down: not a transition. Logged once when it opened, and once
            // when it closes (docs/configuration.md), not at every probe.
            tracing::debug!(
                target_name = %self.target,
                provider = self.provider.as_ref().map(|m| m.name.as_str()),
                next_probe_in_ms = wait.as_millis() as u64,
                last_error = reason,
                "probe failed; the target is still down"
            );
            self.publish(BreakerState::Open);
            self.changed.notify_waiters();
        }
        open_after
    }

    /// Gives the probe slot back when a probe ended without a verdict (the delivery
    /// was cancelled or superseded before it could try).
    pub fn release_probe(&self, pass: Pass) {
        if pass != Pass::Probe {
            return;
        }
        if let State::Open { probing, .. } = &mut *self.lock() {
            *probing = false;
        }
        self.publish(self.state());
        self.changed.notify_waiters();
    }

    fn log_transition(&self, to: BreakerState, down_for: Option<Duration>, reason: &str) {
        if let Some(m) = &self.provider {
            match (to, down_for) {
                (BreakerState::Closed, Some(d)) => tracing::warn!(
                    target_name = %self.target,
                    provider = %m.name,
                    down_for_s = d.as_secs(),
                    "provider is back: its breaker closed, deliveries use it again"
                ),
                (BreakerState::Open, _) => tracing::warn!(
                    target_name = %self.target,
                    provider = %m.name,
                    last_error = reason,
                    "provider is down: breaker open; deliveries go to the target's next provider, and to this one again when a probe gets through"
                ),
                _ => {}
            }
            metrics::counter!("clarion_provider_breaker_transitions_total", "target" => self.target.clone(), "provider" => m.name.clone(), "to" => to.as_str()).increment(1);
            return;
        }
        match (to, down_for) {
            (BreakerState::Closed, Some(d)) => tracing::warn!(
                target_name = %self.target,
                down_for_s = d.as_secs(),
                "target is back: breaker closed, its stream resumes"
            ),
            (BreakerState::Open, _) => {
                if let State::Open { wait, .. } = &*self.lock() {
                    tracing::warn!(
                        target_name = %self.target,
                        next_probe_in_ms = wait.as_millis() as u64,
                        last_error = reason,
                        "target is down: breaker open; its updates wait in Kafka, other targets are not affected"
                    );
                }
            }
            _ => {}
        }
        metrics::counter!("clarion_breaker_transitions_total", "target" => self.target.clone(), "to" => to.as_str()).increment(1);
    }

    fn publish(&self, s: BreakerState) {
        let Some(m) = &self.provider else {
            metrics::gauge!("clarion_breaker_state", "target" => self.target.clone())
                .set(s.as_gauge());
            return;
        };
        metrics::gauge!("clarion_provider_breaker_state", "target" => self.target.clone(), "provider" => m.name.clone())
            .set(s.as_gauge());
        // The target is as down as its best provider.
        let best = {
            let mut states = m.states.lock().unwrap_or_else(|e| e.into_inner());
            states[m.index] = s;
            states.iter().map(|s| s.as_gauge()).fold(f64::MAX, f64::min)
        };
        metrics::gauge!("clarion_breaker_state", "target" => self.target.clone()).set(best);
    }

    /// Waits until the breaker's state may have changed.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// A provider's place among its target's providers.
#[derive(Debug)]
struct Member {
    name: String,
    index: usize,
    /// Every provider's state, for the target's own gauge.
    states: Arc<Mutex<Vec<BreakerState>>>,
}

/// The breakers of a target's providers, in failover order. The target is down
/// (its stream waits in Kafka) only when every provider is; `clarion_breaker_state`
/// is the best provider's state, and `clarion_provider_breaker_state` each one's.
/// A target with one provider has one plain breaker, as before providers existed.
#[derive(Debug)]
pub struct Breakers {
    list: Vec<Arc<Breaker>>,
}

impl Breakers {
    pub fn new(target: &str, providers: &[Arc<str>], config: &BreakerConfig) -> Self {
        if providers.len() <= 1 {
            return Breakers {
                list: vec![Arc::new(Breaker::new(target, config.clone()))],
            };
        }
        let states = Arc::new(Mutex::new(vec![BreakerState::Closed; providers.len()]));
        let list = providers
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let member = Member {
                    name: name.to_string(),
                    index,
                    states: states.clone(),
                };
                Arc::new(Breaker::with_member(target, Some(member), config.clone()))
            })
            .collect();
        Breakers { list }
    }

    /// The breaker of provider `i` (0 is the target's own).
    pub fn get(&self, i: usize) -> &Arc<Breaker> {
        &self.list[i]
    }

    /// The target as a whole: closed when any provider is.
    pub fn state(&self) -> BreakerState {
        let states: Vec<BreakerState> = self.list.iter().map(|b| b.state()).collect();
        if states.contains(&BreakerState::Closed) {
            BreakerState::Closed
        } else if states.contains(&BreakerState::HalfOpen) {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        }
    }

    /// The target as a whole: its state, the last error of its providers while
    /// every one is down, and the earliest next probe.
    pub fn snapshot(&self) -> Snapshot {
        let all: Vec<Snapshot> = self.list.iter().map(|b| b.snapshot()).collect();
        Snapshot {
            state: self.state(),
            last_error: all.iter().rev().find_map(|s| s.last_error.clone()),
            next_probe_at: all.iter().filter_map(|s| s.next_probe_at).min(),
        }
        .closed_if(self.state() == BreakerState::Closed)
    }

    /// Every provider's breaker is open (or probing).
    pub fn is_open(&self) -> bool {
        self.list.iter().all(|b| b.is_open())
    }

    /// Waits for any provider's breaker to change state.
    pub async fn changed(&self) {
        futures::future::select_all(self.list.iter().map(|b| Box::pin(b.changed()))).await;
    }
}

impl crate::ops::health::TargetBreaker for Breakers {
    fn state(&self) -> BreakerState {
        Breakers::state(self)
    }

    fn last_error(&self) -> Option<String> {
        self.snapshot().last_error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            "t",
            BreakerConfig {
                failures: 3,
                probe_interval: Duration::from_millis(20),
                max_probe_interval: Duration::from_millis(40),
                outage_budget: Duration::from_secs(3600),
            },
        )
    }

    #[tokio::test]
    async fn opens_after_consecutive_target_failures_and_closes_on_a_good_probe() {
        let b = breaker();
        assert!(!b.record(Pass::Go, Verdict::TargetDown, "refused"));
        // A success in between resets the count.
        assert!(!b.record(Pass::Go, Verdict::TargetUp, ""));
        assert!(!b.record(Pass::Go, Verdict::TargetDown, "refused"));
        assert!(!b.record(Pass::Go, Verdict::TargetDown, "refused"));
        assert!(b.record(Pass::Go, Verdict::TargetDown, "refused"));
        assert_eq!(b.state(), BreakerState::Open);
        // Only one delivery gets the probe; the others wait for its verdict.
        assert_eq!(b.pass().await, Pass::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let waiter = tokio::time::timeout(Duration::from_millis(50), b.pass()).await;
        assert!(
            waiter.is_err(),
            "a second delivery waits while the probe is out"
        );
        assert!(b.record(Pass::Probe, Verdict::TargetDown, "refused"));
        assert_eq!(
            b.pass().await,
            Pass::Probe,
            "probes again after the backoff"
        );
        let down = b.snapshot();
        assert_eq!(
            down.state,
            BreakerState::HalfOpen,
            "the second probe is out"
        );
        assert_eq!(down.last_error.as_deref(), Some("refused"));
        assert!(down.next_probe_at.is_some());
        assert!(!b.record(Pass::Probe, Verdict::TargetUp, ""));
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.snapshot().last_error, None);
        assert_eq!(b.pass().await, Pass::Go);
    }

    #[tokio::test]
    async fn after_the_outage_budget_waiting_deliveries_give_up_but_probes_go_on() {
        let b = Breaker::new(
            "t",
            BreakerConfig {
                failures: 1,
                probe_interval: Duration::from_secs(3600),
                max_probe_interval: Duration::from_secs(3600),
                outage_budget: Duration::ZERO,
            },
        );
        assert!(b.record(Pass::Go, Verdict::TargetDown, "refused"));
        assert!(matches!(b.pass().await, Pass::OutageOver { .. }));
    }
}
