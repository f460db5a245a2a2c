//! `retry` and `breaker`: how long and how often a delivery is retried, and when a
//! target counts as down. Shared by the top level, targets, backups and legs.

use anyhow::{Result, bail};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A retry policy as written: every key optional, so a target can override one.
///
/// Only a table is accepted. serde's derived struct parsing would also take a
/// sequence (`retry = [429]` as `max_attempts = 429`), which is how the SMS
/// gateway's old status list was silently read as a policy; `remote = "Self"` keeps
/// the derived parser as an inherent function that [`Deserialize`] below calls only
/// for a table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RetryOverride {
    /// Attempts in all, the first included (default 10).
    pub max_attempts: Option<u32>,
    /// Give up once this long has passed since the first attempt (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub max_elapsed: Option<Duration>,
    /// Ceiling of the first backoff (default 1s); each retry doubles it.
    #[serde(default, with = "humantime_serde")]
    pub initial_backoff: Option<Duration>,
    /// Largest backoff ceiling (default 5m). The actual wait is drawn uniformly
    /// between zero and the ceiling ("full jitter"), or the peer's `Retry-After` if
    /// that is longer.
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// How long an attempt may go without progress before it is cut (default 60s):
    /// a safety net over the channel's own timeouts. Each recipient a channel
    /// finishes restarts it, so a long recipient list paced by a provider is never
    /// cut while it moves. A cut attempt keeps what it achieved: the recipients it
    /// reached are not sent to again, and only the rest is retried.
    #[serde(default, with = "humantime_serde")]
    pub attempt_timeout: Option<Duration>,
}

/// The keys of a retry policy table, for error messages.
pub(super) const RETRY_KEYS: &str =
    "(max_attempts, max_elapsed, initial_backoff, max_backoff, attempt_timeout)";

impl<'de> Deserialize<'de> for RetryOverride {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Table;
        impl<'de> serde::de::Visitor<'de> for Table {
            type Value = RetryOverride;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a table of retry policy keys {RETRY_KEYS}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RetryOverride, A::Error> {
                RetryOverride::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Table)
    }
}

/// A complete, checked retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            max_elapsed: Duration::from_secs(3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    pub(super) fn apply(&self, o: &RetryOverride, key: &str) -> Result<RetryPolicy> {
        let p = RetryPolicy {
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            max_elapsed: o.max_elapsed.unwrap_or(self.max_elapsed),
            initial_backoff: o.initial_backoff.unwrap_or(self.initial_backoff),
            max_backoff: o.max_backoff.unwrap_or(self.max_backoff),
            attempt_timeout: o.attempt_timeout.unwrap_or(self.attempt_timeout),
        };
        if p.max_attempts == 0 {
            bail!("{key}.max_attempts: must be at least 1");
        }
        // Zero would dead-letter every delivery whose first attempt fails, however
        // retryable, which nobody means by writing a time limit.
        if p.max_elapsed.is_zero() {
            bail!("{key}.max_elapsed: must be more than zero");
        }
        if p.initial_backoff.is_zero() || p.initial_backoff > p.max_backoff {
            bail!("{key}.initial_backoff: must be more than zero and at most max_backoff");
        }
        if p.attempt_timeout.is_zero() {
            bail!("{key}.attempt_timeout: must be more than zero");
        }
        Ok(p)
    }
}

/// How a target's breaker behaves (`[targets.NAME.breaker]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive target-level failures that open the breaker.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Wait before the first probe once open; doubles after each failed probe.
    #[serde(default = "default_probe", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// The longest wait between two probes.
    #[serde(default = "default_max_probe", with = "humantime_serde")]
    pub max_probe_interval: Duration,
    /// How long an outage may last before the deliveries waiting for the target are
    /// dead-lettered ("target down since T"). Probes go on after it.
    #[serde(default = "default_outage_budget", with = "humantime_serde")]
    pub outage_budget: Duration,
}

pub(super) fn default_failures() -> u32 {
    5
}

pub(super) fn default_probe() -> Duration {
    Duration::from_secs(5)
}

pub(super) fn default_max_probe() -> Duration {
    // Gentle on a peer that is down, yet a target that comes back is found within
    // half a minute.
    Duration::from_secs(30)
}

pub(super) fn default_outage_budget() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_failures(),
            probe_interval: default_probe(),
            max_probe_interval: default_max_probe(),
            outage_budget: default_outage_budget(),
        }
    }
}
