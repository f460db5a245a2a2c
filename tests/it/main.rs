//! Clarion's integration tests: one binary, one module per area, each against real
//! peers (Apache Kafka, SMTP servers, HTTP receivers on loopback, an SMSC simulator,
//! an HTTP/2 push stand-in). See `tests/support` for how peers are found.

mod backups;
mod cli;
mod confirm;
mod deploy;
mod email;
mod email_e2e;
mod escalation;
mod hardening;
mod isolation;
mod kafka;
mod leaks;
mod ledger;
mod ops;
mod people;
mod publish;
mod push;
mod push_e2e;
mod reload;
mod sms;
mod sms_e2e;
mod status_page;
mod truth;
mod webhook;
