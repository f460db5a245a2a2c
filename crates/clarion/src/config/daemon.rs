//! `[daemon]`, `[metrics]` and `[health]`: the process's own bounds (window, event
//! size, grace and drain periods), the metrics listener, and what readiness means.

use serde::Deserialize;
use std::time::Duration;

/// How much work the daemon holds and how it stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Updates held at once (consumed, not yet resolved). When full, the consumer
    /// pauses its partitions: this is the backpressure that keeps memory bounded.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Largest event accepted, in bytes; larger ones are dead-lettered.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// On SIGTERM/SIGINT, how long in-flight deliveries may take to finish before
    /// they are abandoned (not committed, so redelivered after restart).
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// When a rebalance takes partitions away, how long to wait for their in-flight
    /// updates before handing them over (the new owner redelivers what is left).
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub rebalance_drain: Duration,
}

pub(super) fn default_max_in_flight() -> usize {
    // Per stream: each target has its own window, so four targets hold four times
    // this. 96 keeps a target's `concurrency` (64) busy with a third to spare for
    // updates waiting behind their incident's previous one, and bounds what a crash
    // replays to that target. Measured (docs/benchmarks.md): a larger window
    // drains a backlog no faster on this machine, and each doubling costs about
    // 20 MiB of peak RSS with four targets.
    96
}

pub(super) fn default_max_event_bytes() -> usize {
    256 * 1024
}

pub(super) fn default_grace() -> Duration {
    Duration::from_secs(30)
}

pub(super) fn default_drain() -> Duration {
    Duration::from_secs(10)
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            max_in_flight: default_max_in_flight(),
            max_event_bytes: default_max_event_bytes(),
            shutdown_grace: default_grace(),
            rebalance_drain: default_drain(),
        }
    }
}

/// Prometheus metrics endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `"0.0.0.0:9464"`. Unset: no endpoint.
    pub listen: Option<String>,
}

/// What readiness (`/readyz`) checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// A stream whose oldest unresolved update is older than this is stalled, and
    /// the replica unready (default `"15m"`). A stream whose target's breaker is
    /// open is only reported as degraded: its updates wait in Kafka by design.
    #[serde(with = "humantime_serde", default = "default_max_unresolved_age")]
    pub max_unresolved_age: Duration,
}

pub(super) fn default_max_unresolved_age() -> Duration {
    DEFAULT_MAX_UNRESOLVED_AGE
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            max_unresolved_age: default_max_unresolved_age(),
        }
    }
}

/// Default for `health.max_unresolved_age`.
pub const DEFAULT_MAX_UNRESOLVED_AGE: Duration = Duration::from_secs(15 * 60);
