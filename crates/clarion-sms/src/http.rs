//! What the HTTP providers (Twilio, Vonage, the generic gateway) share: the client and
//! the reply as they classify it. Bounded reads, `Retry-After` and transport-error
//! classification come from `clarion-http`, shared with the webhook and push channels;
//! its error text never carries a request URL's path or query (a gateway URL may hold
//! an API key and the recipient's number).

use clarion_core::DeliveryError;
use std::time::{Duration, SystemTime};

pub(crate) use clarion_http::transport_error;

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

/// The status, `Retry-After` and (at most [`clarion_http::DEFAULT_BODY_LIMIT`] bytes of)
/// the body.
pub(crate) struct Reply {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Reply {
    pub(crate) async fn read(resp: reqwest::Response) -> Result<Reply, DeliveryError> {
        let status = resp.status().as_u16();
        let retry_after = clarion_http::retry_after(resp.headers(), SystemTime::now());
        let body = match clarion_http::read_limited(resp, clarion_http::DEFAULT_BODY_LIMIT).await {
            Ok(body) => body,
            // The status line already arrived: for a success it counts (the provider
            // took the message), for a failure the status decides.
            Err(e) => {
                let error = clarion_http::error_chain(&e);
                tracing::debug!(%error, status, "reply body cut short");
                Vec::new()
            }
        };
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }

    pub(crate) fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The start of the body as one line of text, for error reasons.
    pub(crate) fn snippet(&self) -> String {
        clarion_http::snippet(&self.body)
    }
}

/// URL-encodes `pairs` as an `application/x-www-form-urlencoded` body.
pub(crate) fn form<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}
