//! The stakeholder directory: the people Clarion notifies directly, the audiences
//! each belongs to, and the push tokens, phone number and email address each can be
//! reached at.
//!
//! The daemon loads it from a file ([`load_file`], at start-up and on SIGHUP) or
//! keeps it from a compacted topic keyed by person id ([`Person::from_record`],
//! [`Directory::upsert`], [`Directory::remove`]), walks one audience at a time in
//! bounded batches in id order ([`Directory::members_after`], whose cursor is just
//! the last id seen, so it survives a restart), and writes a person back without an
//! address that turned out dead ([`Person::without`], [`Person::to_json`]).
//!
//! Pure logic: this module knows no Kafka and reads no file but the one it is given.
//! Its errors must never echo a full phone number or push token (an email address
//! may be shown: the operator needs it to find the row), and nothing input can reach
//! may panic. It must stay small per person: deployments list millions of them, so
//! a person is boxed strings with no spare capacity and shared audience names, and
//! a file is read straight into the directory, never held whole nor as a list of
//! people beside it.

mod file;
#[cfg(test)]
mod measure;
mod person;
mod store;
#[cfg(test)]
mod tests;

pub use file::*;
pub use person::*;
pub use store::*;
