//! The records: what the daemon writes down about every update, in Kafka beside
//! the source topic. The dead-letter topic (what could not be delivered, and why),
//! the delivery ledger and the incident-state topic (who was told what and when),
//! and the notification deadlines computed from them.
//!
//! Invariants: records are written, and acknowledged, before the update they
//! describe resolves; no record holds a full recipient address or a credential.
//! This room starts no stream and delivers nothing.

pub mod deadlines;
pub mod dlq;
pub mod ledger;
