//! Confirmations' state (docs/confirmations.md): every notice that must be
//! confirmed is a case, kept in the compacted `confirm.topic` (`records.rs`),
//! folded by every replica into the same view (`state.rs`, fed by `store.rs`).
//! Target streams open cases and hand each recipient their way to confirm
//! (`ways.rs`); the inbound listener adds the answers; the escalation engine runs
//! the steps and timers and writes the outcomes. `people.rs` is the one place an
//! escalation meets the directory.
//!
//! Never sends a notice and never decides an outcome: the engine does both. Never
//! writes a full address to the ledger or a log (the topic holds an escalation's
//! addresses, as the directory's topic does).

pub mod people;
pub mod records;
pub mod state;
pub mod store;
pub mod ways;

pub use store::ConfirmStore;
