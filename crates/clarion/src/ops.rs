//! Operations: what the process tells the people running it. Health (`/livez`,
//! `/readyz`, systemd's watchdog), the typed internal events whose `emit` writes the
//! log line and the metric together, and the listener that serves them.
//!
//! Invariants: metric labels are low-cardinality (never an incident id); no log line
//! carries a secret or a full recipient address. This room never changes what is
//! delivered: it only observes.

pub mod health;
pub mod telemetry;
