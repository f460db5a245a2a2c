//! The webhook channel: a JSON POST of the update, signed per Standard Webhooks v1, to
//! status pages, chat bridges and regulators' endpoints.
//!
//! It tries once per `send` and classifies the answer; it never follows a redirect
//! (a 3xx is a misconfigured URL, and following it would send a signed payload
//! somewhere nobody configured) and never retries on its own.

mod payload;
mod sign;

pub use payload::{PAYLOAD_VERSION, payload};
pub use sign::{SigningError, SigningKey};

use clarion_core::{Channel, Delivery, DeliveryError, Outcome, Receipt, SecretRef, SecretResolver};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use url::Url;

/// Configuration of one webhook target (the keys of `[targets.NAME]` besides `type`,
/// `audiences` and `retry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint to POST to (`http://` or `https://`).
    pub url: Url,
    /// Standard Webhooks signing secrets (`whsec_` + base64 of 24 to 64 random bytes).
    /// Every secret listed signs each request, so rotating is: add the new secret,
    /// let the receiver switch, remove the old one. Empty means unsigned requests.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// Extra HTTP headers sent with every request (e.g. an API key for a chat bridge).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long one attempt may take, connect to last byte. The Standard Webhooks
    /// spec recommends 15 to 30 seconds.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

/// Why a webhook target could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    #[error("url: `{0}` must be an http:// or https:// URL")]
    Scheme(Url),
    #[error("secrets[{index}]: {reason}")]
    Secret { index: usize, reason: String },
    #[error("headers.{name}: {reason}")]
    Header { name: String, reason: String },
    #[error("timeout: must be more than zero")]
    Timeout,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// A webhook target, ready to send.
#[derive(Debug)]
pub struct WebhookChannel {
    url: Url,
    keys: Vec<SigningKey>,
    headers: HeaderMap,
    client: reqwest::Client,
}

/// Builds a webhook target from its config, resolving and checking its secrets. Does
/// no network I/O.
pub fn build(
    target: &str,
    config: &WebhookConfig,
    secrets: &dyn SecretResolver,
) -> Result<WebhookChannel, WebhookConfigError> {
    if !matches!(config.url.scheme(), "http" | "https") {
        return Err(WebhookConfigError::Scheme(config.url.clone()));
    }
    if config.timeout.is_zero() {
        return Err(WebhookConfigError::Timeout);
    }
    let mut keys = Vec::with_capacity(config.secrets.len());
    for (index, reference) in config.secrets.iter().enumerate() {
        let secret = secrets
            .resolve(reference)
            .map_err(|reason| WebhookConfigError::Secret { index, reason })?;
        let key =
            SigningKey::from_whsec(secret.expose()).map_err(|e| WebhookConfigError::Secret {
                index,
                reason: e.to_string(),
            })?;
        keys.push(key);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let header_error = |reason: String| WebhookConfigError::Header {
            name: name.clone(),
            reason,
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|e| header_error(e.to_string()))?;
        if n.as_str().starts_with("webhook-") || n == CONTENT_TYPE {
            return Err(header_error(
                "is set by Clarion and cannot be overridden".into(),
            ));
        }
        let v = HeaderValue::from_str(value).map_err(|e| header_error(e.to_string()))?;
        headers.insert(n, v);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("clarion/", env!("CARGO_PKG_VERSION"))),
    );
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| WebhookConfigError::Client(e.to_string()))?;
    tracing::debug!(target_name = target, url = %config.url, signed = !keys.is_empty(), "webhook target built");
    Ok(WebhookChannel {
        url: config.url.clone(),
        keys,
        headers,
        client,
    })
}

impl WebhookChannel {
    /// The headers and body of one attempt, exactly as they will be sent.
    pub fn request_parts(&self, delivery: &Delivery, timestamp: i64) -> (HeaderMap, Vec<u8>) {
        let body = payload(delivery);
        let mut headers = self.headers.clone();
        let id = delivery.key.as_str();
        if let Ok(v) = HeaderValue::from_str(id) {
            headers.insert("webhook-id", v);
        }
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        if !self.keys.is_empty() {
            let signature = self
                .keys
                .iter()
                .map(|k| k.sign(id, timestamp, &body))
                .collect::<Vec<_>>()
                .join(" ");
            if let Ok(v) = HeaderValue::from_str(&signature) {
                headers.insert("webhook-signature", v);
            }
        }
        (headers, body)
    }
}

#[async_trait::async_trait]
impl Channel for WebhookChannel {
    async fn send(&self, delivery: &Delivery) -> Outcome {
        let (headers, body) = self.request_parts(delivery, jiff::Timestamp::now().as_second());
        let result = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        Outcome::single(match result {
            Ok(response) => classify(response).await,
            Err(e) => Err(transport_error(&e)),
        })
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        // A webhook has no side-effect-free probe in the spec, so check that the host
        // accepts connections and answers HTTP at all: any status is fine here.
        match self.client.head(self.url.clone()).send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(transport_error(&e)),
        }
    }
}

async fn classify(response: reqwest::Response) -> Result<Receipt, DeliveryError> {
    let status = response.status();
    let code = status.as_u16();
    if status.is_success() {
        return Ok(Receipt {
            provider_id: Some(format!("HTTP {code}")),
        });
    }
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| clarion_core::retry_after::parse(v, std::time::SystemTime::now()));
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let snippet = body_snippet(response).await;
    let error = match code {
        408 | 429 | 500..=599 => DeliveryError::retryable(
            format!("endpoint answered HTTP {code}{snippet}"),
            retry_after,
        ),
        300..=399 => DeliveryError::permanent(format!(
            "endpoint answered HTTP {code} redirect to {} (redirects are not followed: fix the target's url)",
            location.as_deref().unwrap_or("nowhere")
        )),
        410 => DeliveryError::permanent(format!(
            "endpoint answered HTTP 410 Gone: the receiver asks to stop sending; disable this target{snippet}"
        )),
        _ => DeliveryError::permanent(format!("endpoint answered HTTP {code}{snippet}")),
    };
    Err(error.with_code(code.to_string()))
}

/// Up to 200 printable characters of the reply body, for the reason text.
async fn body_snippet(response: reqwest::Response) -> String {
    let Ok(bytes) = response.bytes().await else {
        return String::new();
    };
    let text: String = String::from_utf8_lossy(&bytes[..bytes.len().min(400)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

fn transport_error(e: &reqwest::Error) -> DeliveryError {
    // Every transport failure is worth another try: connection refused and timeouts
    // are what a receiver that is restarting looks like. Build errors cannot happen
    // here because the URL and headers were checked when the target was built.
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    DeliveryError::retryable(format!("{what}: {}", error_chain(e)), None)
}

/// The error and its sources on one line, which is what an SRE needs to tell a DNS
/// failure from a refused connection.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}
