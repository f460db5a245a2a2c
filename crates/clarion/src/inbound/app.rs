//! What every request of the listener shares: the confirmation state, the
//! settings, the per-client rate and the slots; and the request counter.

use crate::config::ConfirmSettings;
use crate::confirm::ConfirmStore;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What a request needs.
pub struct Inbound {
    pub(super) store: Arc<ConfirmStore>,
    pub(super) settings: ConfirmSettings,
    pub(super) limiter: std::sync::RwLock<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    pub(super) quota: Quota,
    pub(super) slots: Semaphore,
    pub(super) cancel: CancellationToken,
}

impl Inbound {
    pub(super) fn limiter(&self) -> Arc<DefaultKeyedRateLimiter<IpAddr>> {
        self.limiter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The key a client's rate is counted under: its address, or for IPv6 its /64
/// (one subscriber's network, where each of them has billions of addresses).
pub(super) fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

pub(super) fn count(route: &'static str, outcome: &'static str) {
    metrics::counter!("clarion_inbound_requests_total", "route" => route, "outcome" => outcome)
        .increment(1);
}
