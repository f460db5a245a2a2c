//! The Clarion daemon: consumes incident updates from Kafka and fans each one out to
//! every target whose audiences it names, with retries, per-incident order, and a
//! dead-letter topic for what cannot be delivered.
//!
//! This is the only crate that knows Kafka. It must never store an offset past an
//! unresolved update, and never hold unbounded work: see `ARCHITECTURE.md`.

pub mod breaker;
pub mod config;
pub mod daemon;
pub mod deadlines;
pub mod demo;
pub mod directory;
pub mod dispatch;
pub mod dlq;
pub mod health;
pub mod ledger;
pub mod offsets;
pub mod people;
pub mod preview;
pub mod publish;
pub mod replay;
pub mod report;
pub mod stream;
pub mod supervisor;
pub mod telemetry;

pub use daemon::{Summary, run, run_with_secrets};
pub use dispatch::DeliveryReport;
