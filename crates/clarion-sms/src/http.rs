//! What the HTTP providers (Twilio, Vonage, the generic gateway) share: the client,
//! reading a bounded reply, `Retry-After`, and classifying transport failures.

use clarion_core::DeliveryError;
use std::time::Duration;

/// Replies longer than this are cut: an SMS API answers in a few hundred bytes, and a
/// misbehaving proxy must not make us buffer megabytes.
const MAX_REPLY_BYTES: usize = 64 * 1024;

pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A redirect from an SMS API is a misconfiguration; following it could replay
        // a POST (and the credentials) to somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("clarion-sms/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The status, `Retry-After` and (at most [`MAX_REPLY_BYTES`] of) the body.
pub(crate) struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Reply {
    pub(crate) async fn read(mut resp: reqwest::Response) -> Result<Reply, DeliveryError> {
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| clarion_core::retry_after::parse(v, std::time::SystemTime::now()));
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_REPLY_BYTES.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= MAX_REPLY_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                // The status line already arrived: for a success it counts (the
                // provider took the message), for a failure the status decides.
                Err(e) => {
                    tracing::debug!(error = %e, status, "reply body cut short");
                    break;
                }
            }
        }
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }

    pub(crate) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The start of the body as text, for error reasons.
    pub(crate) fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        match text.char_indices().nth(200) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text.to_string(),
        }
    }
}

/// A request that got no HTTP reply. Connect failures and timeouts are retryable (a
/// timeout may mean the gateway took the message: SMS APIs have no idempotency key,
/// so a retry can duplicate it, which beats losing it); a request we could not even
/// build is not.
pub(crate) fn transport_error(provider: &str, e: &reqwest::Error) -> DeliveryError {
    if e.is_builder() {
        return DeliveryError::permanent(format!("{provider}: cannot build the request: {e}"));
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    DeliveryError::retryable(format!("{provider}: {what}: {}", error_chain(e)), None)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// URL-encodes `pairs` as an `application/x-www-form-urlencoded` body.
pub(crate) fn form<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}
