//! The vocabulary every part of Clarion shares: the incident update that ops publish,
//! the [`Channel`] trait every delivery adapter implements, and the outcome and error
//! classes a delivery ends in.
//!
//! This crate must never do I/O and never know about Kafka: it is what lets a channel
//! crate be written, tested and reasoned about without a broker, and what keeps the
//! daemon's retry and dead-letter logic independent of any one channel.

mod channel;
mod confirm;
mod event;
mod key;
mod privacy;
pub mod retry_after;
pub mod samples;
mod secret;

pub use channel::{
    Channel, Content, Delivery, DeliveryError, ErrorClass, Outcome, Progress, Receipt,
    RecipientResult,
};
pub use confirm::{ConfirmWay, ConfirmWays};
pub use event::{
    EventError, Impact, IncidentUpdate, Link, SCHEMA_VERSION, STANDARD_AUDIENCES, Status,
};
pub use key::IdempotencyKey;
pub use privacy::mask;
pub use secret::{Secret, SecretRef, SecretResolver};
