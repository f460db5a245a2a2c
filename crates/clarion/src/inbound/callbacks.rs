//! Providers' callbacks: SMS replies, and a call's keypress and status. Each is
//! believed only once its provider's signature verifies against the secret of
//! the target and provider it names (the parsers and verifiers are the channel
//! crates': `clarion_http::inbound`, `clarion_voice`); what it says then goes into
//! the confirmation state like a link's confirmation.

use super::app::Inbound;
use super::page;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

#[allow(clippy::too_many_arguments)]
pub(super) async fn call(
    _app: &Inbound,
    _token: &str,
    _attempt: u32,
    _keypress: bool,
    _path: &str,
    _query: Option<&str>,
    _headers: &HeaderMap,
    _body: &[u8],
) -> Response {
    page::text(StatusCode::NOT_FOUND, "not found\n")
}

pub(super) async fn sms(
    _app: &Inbound,
    _target: &str,
    _provider: &str,
    _path: &str,
    _query: Option<&str>,
    _headers: &HeaderMap,
    _body: &[u8],
) -> Response {
    page::text(StatusCode::NOT_FOUND, "not found\n")
}
