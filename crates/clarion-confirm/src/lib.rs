//! What a confirmation request is made of, and how what comes back is read: the
//! signed, expiring tokens behind each recipient's link, reply code and call
//! callbacks (`token`), the SMS reply codes and the carrier keywords they must
//! never be mistaken for (`reply`), the inbound listener's paths (`route`), form
//! bodies (`form`) and the client address behind a trusted proxy (`forwarded`).
//!
//! Pure: no I/O, no clock (callers pass the time), no Kafka, no HTTP server. Every
//! function here takes input a stranger on the internet controls, so none of them
//! panics on any input, each bounds what it reads, and each has a fuzz target
//! (`fuzz/fuzz_targets/confirm_*.rs`).

pub mod form;
pub mod forwarded;
pub mod reply;
pub mod route;
pub mod token;

pub use token::{CaseId, Keys, RecipientId, Refused, Token};
