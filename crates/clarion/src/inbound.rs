//! The inbound listener (docs/confirmations.md#the-inbound-listener): where
//! recipients confirm notices by link (`GET` shows, only the button's `POST`
//! confirms) and where providers post SMS replies and call callbacks, each
//! verified by its provider's signature. Its own address and public URL, apart
//! from the metrics listener, so that it can face the internet and they not.
//!
//! Never sends anything and never decides an outcome: it adds answers to the
//! confirmation state, which the escalation engine acts on. Never answers or logs
//! a token, a secret or an address.

mod app;
pub mod callbacks;
mod listener;
pub mod page;

pub use listener::serve;
