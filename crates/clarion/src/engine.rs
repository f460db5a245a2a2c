//! The engine: the running daemon. The supervisor builds what the streams share and
//! starts one stream per target plus the events stream; each stream consumes,
//! admits, dispatches and commits; dispatch retries, fails over and resolves each
//! delivery; breakers keep a down target from being hammered; offsets decide what
//! may be committed.
//!
//! Invariants: no offset is stored past an unresolved update (`offsets.rs`); a
//! delivery resolves only once its records are acknowledged (`records`); the engine
//! never parses config or reads a file, it is handed `Settings`.

pub mod breaker;
pub mod dispatch;
pub mod escalation;
pub mod offsets;
pub mod stream;
pub mod supervisor;
