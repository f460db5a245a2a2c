//! The Clarion daemon: consumes incident updates from Kafka and fans each one out to
//! every target whose audiences it names, with retries, per-incident order, and a
//! dead-letter topic for what cannot be delivered.
//!
//! This is the only crate that knows Kafka. It must never store an offset past an
//! unresolved update, and never hold unbounded work: see `ARCHITECTURE.md`.
//!
//! The crate is in rooms, one folder each, whose imports run one way (top to
//! bottom; `scripts/module-graph` fails on a cycle):
//! - `cli`: the commands other than `run` (publish, drill, follow, status, report,
//!   dlq replay, route, render, demo, check-config);
//! - `engine`: the running daemon: supervisor, streams, offsets, dispatch, breakers,
//!   people walks;
//! - `inbound`: the listener where recipients confirm and providers call back;
//! - `confirm`: confirmation requests' state (cases in a compacted topic), each
//!   recipient's way to confirm, and who an escalation reaches;
//! - `people`: the directory a people target walks, kept current from its file or
//!   topic;
//! - `statuspage`: the public status page's state, followed from its topic, and
//!   the daemon's own listener; origins are targets;
//! - `records`: what the daemon writes down: dead letters, the ledger, the incident
//!   state, deadlines;
//! - `ops`: health, logs and metrics, and the listener that serves them;
//! - `kafka`: the librdkafka settings every client starts from;
//! - `config`: parse, validate, build;
//! - `directory`: the people directory's data, with no I/O beyond reading its file.

pub mod cli;
pub mod config;
pub mod confirm;
pub mod directory;
pub mod engine;
pub mod inbound;
pub mod kafka;
pub mod ops;
pub mod people;
pub mod records;
pub mod statuspage;

pub use engine::dispatch::DeliveryReport;
pub use engine::supervisor::{Summary, run, run_with_secrets};
