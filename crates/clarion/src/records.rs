//! The records: what the daemon writes down about every update, in Kafka beside
//! the source topic. The dead-letter topic (what could not be delivered, and why),
//! the delivery ledger and the incident-state topic (who was told what and when),
//! the notification deadlines computed from them, and the notices folded from the
//! ledger (what is due, and where each stands) that every reader shows.
//!
//! Invariants: records are written, and acknowledged, before the update they
//! describe resolves; no record holds a full recipient address or a credential.
//! This room starts no stream and delivers nothing.

pub mod confirmations;
pub mod deadlines;
pub mod dlq;
pub mod ledger;
pub mod notices;
