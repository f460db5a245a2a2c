//! The commands other than `run`: each subcommand of `clarion` that is not the
//! daemon itself. `publish` numbers and produces an update and can `--follow` it;
//! `drill` proves the channels; `status` and `report` read the ledger; `dlq replay`
//! re-delivers dead letters to one target; `route` and `render` preview; `topics
//! create` makes the topics a config names; `demo` runs the whole path on an
//! embedded broker.
//!
//! Invariants: a command never runs a target stream or joins a daemon's consumer
//! group (readers are assigned, never commit); what it shows is read from Kafka, not
//! from logs. `replay` and `demo` reuse the engine's dispatcher rather than copy it.

pub mod check_config;
pub mod client;
pub mod confirmations;
pub mod demo;
pub mod drill;
pub mod follow;
pub mod preview;
pub mod publish;
pub mod replay;
pub mod report;
pub mod statements;
pub mod timeline;
pub mod topics;
