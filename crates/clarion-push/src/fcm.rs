//! Firebase Cloud Messaging, HTTP v1 API: one `messages:send` request per device token
//! or topic, authenticated with a service account's OAuth2 access token.
//!
//! FCM reports a dead registration token as `UNREGISTERED`; that, and only that, becomes
//! `RecipientGone`, so the app backend prunes exactly the tokens FCM says are gone. A
//! topic is never reported gone: it is the app's own name, not a device.

mod auth;
#[cfg(test)]
pub(crate) mod tests;

use crate::compose::{PAYLOAD_LIMIT, PushMessage, compose, fit};
use crate::http::{Clock, error_chain, fan_out, read_limited, retry_after, transport_error};
use crate::{PushConfigError, select_recipients};
use auth::{ServiceAccount, ServiceAccountFile, TokenSource};
use clarion_core::{
    Channel, Delivery, DeliveryError, ErrorClass, Outcome, Receipt, RecipientResult, SecretRef,
    SecretResolver,
};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use url::Url;

/// Recipients that are topics are written `/topics/NAME` (FCM's own legacy notation),
/// which no registration token can start with.
const TOPIC_PREFIX: &str = "/topics/";

/// FCM keeps a message for an offline device at most four weeks.
const MAX_TTL: Duration = Duration::from_secs(28 * 24 * 3600);

/// A push target on Firebase Cloud Messaging (`type = "fcm"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The Google service account's JSON key (as downloaded from the Firebase
    /// console), usually `{ file = "/run/secrets/fcm-service-account.json" }`. Its
    /// `client_email`, `private_key` and `token_uri` are used to obtain access tokens
    /// with the `firebase.messaging` scope.
    pub service_account: SecretRef,
    /// The Firebase project to send through. Default: the `project_id` in the service
    /// account JSON.
    #[serde(default)]
    pub project_id: Option<String>,
    /// Base URL of the FCM HTTP v1 API; requests go to
    /// `<base_url>/v1/projects/<project_id>/messages:send`. Change it only to point at a
    /// test double.
    #[serde(default = "default_base_url")]
    pub base_url: Url,
    /// Device registration tokens per audience: `{ customers = ["token", ...] }`.
    #[serde(default)]
    pub device_tokens: BTreeMap<String, Vec<String>>,
    /// FCM topics per audience: `{ customers = ["outages"] }`. One message per topic
    /// reaches every device subscribed to it.
    #[serde(default)]
    pub topics: BTreeMap<String, Vec<String>>,
    /// Set by the daemon, never by the file (the key does not exist in TOML): this
    /// channel is the leg of a people target that pushes to a directory's members'
    /// devices, handed over with each delivery (`Delivery::direct`). It then needs no
    /// `device_tokens` or `topics`, and refuses any: who it reaches is the
    /// directory's business, not the config's. Default false.
    #[serde(skip)]
    pub directory: bool,
    /// How long FCM keeps trying to reach an offline device before dropping the
    /// notification (`android.ttl`, and `apns-expiration` for iOS devices). At most 28
    /// days. Default: 1 hour (an outage notice a day late is noise).
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Most requests in flight to FCM at once for this target, across all deliveries.
    /// Default: 32.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_sends: usize,
    /// Time allowed for one request (token exchange or send), connecting included.
    /// Default: 10 s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_base_url() -> Url {
    #[allow(clippy::unwrap_used)] // A constant that parses; covered by the config tests.
    Url::parse("https://fcm.googleapis.com").unwrap()
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_concurrency() -> usize {
    32
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The FCM channel of one target. Cheap to share: one HTTP client (kept-alive
/// connections), one token cache, one concurrency limit.
#[derive(Debug)]
pub struct FcmChannel {
    target: String,
    send_url: Url,
    client: reqwest::Client,
    auth: TokenSource,
    /// Audience → recipients, topics written with [`TOPIC_PREFIX`].
    recipients: BTreeMap<String, Vec<String>>,
    ttl: Duration,
    limit: Semaphore,
}

/// Validates `config` and builds the channel. Reads nothing from the network.
pub fn build(
    target_name: &str,
    config: &FcmConfig,
    secrets: &dyn SecretResolver,
) -> Result<FcmChannel, PushConfigError> {
    let err = |field: &str, reason: String| PushConfigError::new(target_name, field, reason);
    crate::install_jwt_crypto();

    let json = secrets
        .resolve(&config.service_account)
        .map_err(|e| err("service_account", format!("cannot be read: {e}")))?;
    let file: ServiceAccountFile = serde_json::from_str(json.expose()).map_err(|e| {
        err(
            "service_account",
            format!("is not a service-account JSON key: {e}"),
        )
    })?;
    if let Some(kind) = file.kind.as_deref().filter(|k| *k != "service_account") {
        return Err(err(
            "service_account",
            format!("has type `{kind}`, expected `service_account`"),
        ));
    }
    let token_uri = Url::parse(&file.token_uri)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http"))
        .ok_or_else(|| {
            err(
                "service_account",
                format!(
                    "has a token_uri `{}` that is not an http(s) URL",
                    file.token_uri
                ),
            )
        })?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(file.private_key.expose().as_bytes())
        .map_err(|e| {
            err(
                "service_account",
                format!("has a private_key that is not an RSA PEM key: {e}"),
            )
        })?;
    if file.client_email.trim().is_empty() {
        return Err(err("service_account", "has an empty client_email".into()));
    }
    let account = ServiceAccount {
        client_email: file.client_email,
        token_uri,
        key_id: file.private_key_id,
        key,
    };
    // Sign once now, so that a key that parses but cannot sign fails at startup.
    account.assertion(SystemTime::now()).map_err(|e| {
        err(
            "service_account",
            format!("has a private_key that cannot sign: {e}"),
        )
    })?;

    let project = config
        .project_id
        .clone()
        .or(file.project_id)
        .ok_or_else(|| {
            err(
                "project_id",
                "is not set and the service account JSON has none".into(),
            )
        })?;
    if project.is_empty()
        || !project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
    {
        return Err(err(
            "project_id",
            format!("`{project}` is not a Firebase project id"),
        ));
    }

    if !matches!(config.base_url.scheme(), "https" | "http") || config.base_url.cannot_be_a_base() {
        return Err(err(
            "base_url",
            format!("`{}` is not an http(s) base URL", config.base_url),
        ));
    }
    let mut send_url = config.base_url.clone();
    let path = format!(
        "{}/v1/projects/{project}/messages:send",
        send_url.path().trim_end_matches('/')
    );
    send_url.set_path(&path);

    if config.directory {
        // Anything written here would be pushed on top of the directory's members, or
        // never, depending on how the daemon addressed the delivery: refuse it.
        if !config.device_tokens.is_empty() {
            return Err(err("device_tokens", crate::DIRECTORY_TOKENS.into()));
        }
        if !config.topics.is_empty() {
            return Err(err("topics", crate::DIRECTORY_TOPICS.into()));
        }
    }
    let mut recipients: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (audience, tokens) in &config.device_tokens {
        for (i, token) in tokens.iter().enumerate() {
            check_token(token)
                .map_err(|why| err(&format!("device_tokens.{audience}[{i}]"), why.into()))?;
        }
        recipients
            .entry(audience.clone())
            .or_default()
            .extend(tokens.iter().cloned());
    }
    for (audience, topics) in &config.topics {
        for (i, topic) in topics.iter().enumerate() {
            // FCM's topic name pattern: [a-zA-Z0-9-_.~%]+
            if topic.is_empty()
                || topic.len() > 900
                || !topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.~%".contains(c))
            {
                return Err(err(
                    &format!("topics.{audience}[{i}]"),
                    format!("`{topic}` is not an FCM topic name (letters, digits, `-_.~%`)"),
                ));
            }
        }
        recipients
            .entry(audience.clone())
            .or_default()
            .extend(topics.iter().map(|t| format!("{TOPIC_PREFIX}{t}")));
    }
    if !config.directory && recipients.values().all(Vec::is_empty) {
        return Err(err(
            "device_tokens",
            "and `topics` are both empty: the target would reach nobody".into(),
        ));
    }

    if config.ttl > MAX_TTL {
        return Err(err("ttl", "is over FCM's maximum of 28 days".into()));
    }
    if config.max_concurrent_sends == 0 || config.max_concurrent_sends > 10_000 {
        return Err(err(
            "max_concurrent_sends",
            "must be between 1 and 10000".into(),
        ));
    }
    if config.request_timeout.is_zero() {
        return Err(err("request_timeout", "must be more than zero".into()));
    }

    let mut builder = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none());
    if config.base_url.scheme() == "https" && account.token_uri.scheme() == "https" {
        // Google speaks HTTP/2. Requiring it up front (ALPN `h2` only) makes the
        // first burst of concurrent sends wait for one connection and multiplex on it,
        // instead of each opening its own before ALPN has said HTTP/2. Plain-http URLs
        // (test doubles) keep HTTP/1.1.
        builder = builder.http2_prior_knowledge();
    }
    let client = builder.build().map_err(|e| {
        err(
            "base_url",
            format!("cannot build an HTTP client: {}", error_chain(&e)),
        )
    })?;

    Ok(FcmChannel {
        target: target_name.to_string(),
        send_url,
        auth: TokenSource::new(account, client.clone(), Clock::system()),
        client,
        recipients,
        ttl: config.ttl,
        limit: Semaphore::new(config.max_concurrent_sends),
    })
}

/// The test every registration token passes, configured or handed over with a
/// delivery. A topic (`/topics/NAME`) is not a token, so a directory member cannot
/// stand for one.
fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty()
        || token.len() > 4096
        || token.starts_with('/')
        || token.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("is not an FCM registration token");
    }
    Ok(())
}

/// Who one FCM message is addressed to.
#[derive(Clone, Copy)]
enum Address<'a> {
    Token(&'a str),
    Topic(&'a str),
}

impl<'a> Address<'a> {
    fn of(recipient: &'a str) -> Self {
        match recipient.strip_prefix(TOPIC_PREFIX) {
            Some(topic) => Address::Topic(topic),
            None => Address::Token(recipient),
        }
    }
}

/// The `messages:send` request body for `msg` to `to`. All `data` values are strings,
/// as FCM requires.
fn render(msg: &PushMessage, to: Address<'_>, ttl: Duration, now: SystemTime) -> serde_json::Value {
    let expiration = if ttl.is_zero() {
        0
    } else {
        (now + ttl)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let mut message = json!({
        "notification": { "title": msg.title, "body": msg.body },
        "data": {
            "incident_id": msg.incident_id,
            "update_id": msg.update_id,
            "status": msg.status.as_str(),
            "sequence": msg.sequence.to_string(),
            "impact": msg.impact.as_str(),
        },
        "android": {
            "priority": if msg.high_priority { "HIGH" } else { "NORMAL" },
            "ttl": format!("{}s", ttl.as_secs()),
            // collapse_key replaces a queued, undelivered message; the tag replaces the
            // one already shown in the notification drawer.
            "collapse_key": msg.collapse_id,
            "notification": { "tag": msg.collapse_id },
        },
        "apns": {
            "headers": {
                "apns-priority": if msg.high_priority { "10" } else { "5" },
                "apns-collapse-id": msg.collapse_id,
                "apns-expiration": expiration.to_string(),
            },
            "payload": { "aps": { "thread-id": msg.incident_id } },
        },
    });
    match to {
        Address::Token(t) => message["token"] = json!(t),
        Address::Topic(t) => message["topic"] = json!(t),
    }
    json!({ "message": message })
}

/// FCM's error reply, `{"error": {code, message, status, details: [...]}}`.
#[derive(Deserialize)]
struct ErrorReply {
    error: GoogleError,
}

#[derive(Deserialize)]
struct GoogleError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

/// Classifies a non-2xx reply. The FCM `errorCode` in `details` decides when present
/// (it is the documented contract); otherwise the canonical `status`, then HTTP.
fn classify(
    http: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    to: Address<'_>,
) -> DeliveryError {
    let parsed = serde_json::from_slice::<ErrorReply>(body)
        .ok()
        .map(|r| r.error);
    let error_code = parsed.as_ref().and_then(|e| {
        e.details
            .iter()
            .find(|d| d.get("@type").and_then(|t| t.as_str()) == Some(FCM_ERROR_TYPE))
            .and_then(|d| d.get("errorCode"))
            .and_then(|c| c.as_str())
            .map(str::to_string)
    });
    let status = parsed.as_ref().and_then(|e| e.status.clone());
    let message = parsed
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    let code = error_code
        .clone()
        .filter(|c| c != "UNSPECIFIED_ERROR")
        .or(status)
        .unwrap_or_else(|| http.to_string());

    let retryable = |why: &str| {
        DeliveryError::retryable(format!("FCM {why} (HTTP {http}): {message}"), retry_after)
    };
    let permanent =
        |why: &str| DeliveryError::permanent(format!("FCM {why} (HTTP {http}): {message}"));
    let err = match code.as_str() {
        "UNREGISTERED" => match to {
            Address::Token(_) => DeliveryError {
                class: ErrorClass::RecipientGone,
                reason: format!(
                    "FCM says the registration token is no longer valid (HTTP {http}): {message}"
                ),
                code: None,
            },
            Address::Topic(_) => permanent("refused the topic as unregistered"),
        },
        "INVALID_ARGUMENT" => {
            permanent("rejected the message or the registration token as invalid")
        }
        "SENDER_ID_MISMATCH" => permanent("says the token belongs to another Firebase project"),
        "THIRD_PARTY_AUTH_ERROR" => {
            permanent("was refused by APNs or Web Push (check the APNs key in Firebase)")
        }
        "QUOTA_EXCEEDED" | "RESOURCE_EXHAUSTED" => retryable("sending quota exceeded"),
        "UNAVAILABLE" => retryable("is unavailable"),
        "INTERNAL" => retryable("had an internal error"),
        "UNAUTHENTICATED" => retryable("refused the access token"),
        "PERMISSION_DENIED" => permanent("denied the service account permission to send"),
        "NOT_FOUND" => permanent("did not find the project or entity"),
        _ => match http {
            401 => retryable("refused the access token"),
            408 | 429 => retryable("asked to slow down"),
            500..=599 => retryable("failed"),
            _ => permanent("rejected the request"),
        },
    };
    err.with_code(code)
}

impl FcmChannel {
    async fn send_one(
        &self,
        delivery: &Delivery,
        audience: &str,
        recipient: &str,
        token: &auth::AccessToken,
    ) -> RecipientResult {
        let result = self.try_send(delivery, audience, recipient, token).await;
        // Recorded now, not when the fan-out ends: an attempt the daemon cuts short
        // keeps the recipients that already ended.
        delivery.finish(RecipientResult {
            recipient: Some(recipient.to_string()),
            result,
        })
    }

    async fn try_send(
        &self,
        delivery: &Delivery,
        audience: &str,
        recipient: &str,
        token: &auth::AccessToken,
    ) -> Result<Receipt, DeliveryError> {
        let to = Address::of(recipient);
        let mut msg = compose(delivery, audience);
        let now = SystemTime::now();
        let body = fit(&mut msg, PAYLOAD_LIMIT, |m| {
            serde_json::to_vec(&render(m, to, self.ttl, now))
        })?;
        let reply = self
            .client
            .post(self.send_url.clone())
            .bearer_auth(token.value.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error("FCM", &e))?;
        let http = reply.status();
        let hint = retry_after(reply.headers(), SystemTime::now());
        let body = read_limited(reply)
            .await
            .map_err(|e| transport_error("FCM", &e))?;
        if http.is_success() {
            let name = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
            tracing::debug!(target_name = %self.target, message = ?name, "FCM accepted the message");
            return Ok(Receipt { provider_id: name });
        }
        let err = classify(http.as_u16(), &body, hint, to);
        if http.as_u16() == 401 {
            // The token was revoked or expired early: the next send fetches a new one.
            self.auth.invalidate(token).await;
        }
        Err(err)
    }

    #[cfg(test)]
    fn set_clock(&mut self, clock: Clock) {
        self.auth.set_clock(clock);
    }
}

#[async_trait::async_trait]
impl Channel for FcmChannel {
    async fn send(&self, delivery: &Delivery) -> Outcome {
        let selection = select_recipients(&self.recipients, delivery, &self.target, check_token);
        let mut results = selection.refused;
        if selection.send.is_empty() {
            return Outcome { results };
        }
        // One token for the whole fan-out: if the token endpoint is down, every
        // recipient gets that error at once instead of each trying again.
        let token = match self.auth.token().await {
            Ok(t) => t,
            Err(e) => {
                results.extend(selection.send.into_iter().map(|(_, r)| {
                    delivery.finish(RecipientResult {
                        recipient: Some(r.to_string()),
                        result: Err(e.clone()),
                    })
                }));
                return Outcome { results };
            }
        };
        let sent = fan_out(&self.limit, selection.send, |(audience, recipient)| {
            self.send_one(delivery, audience, recipient, &token)
        })
        .await;
        results.extend(sent);
        Outcome { results }
    }

    /// Obtains an access token and sends a `validate_only` message to a topic: that
    /// checks the credentials, the project id and the permission to send, and delivers
    /// nothing.
    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        let token = self.auth.token().await?;
        let body = json!({
            "validate_only": true,
            "message": {
                "topic": "clarion-healthcheck",
                "notification": { "title": "Clarion healthcheck", "body": "Not delivered." },
            },
        });
        let reply = self
            .client
            .post(self.send_url.clone())
            .bearer_auth(token.value.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| transport_error("FCM", &e))?;
        let http = reply.status();
        let hint = retry_after(reply.headers(), SystemTime::now());
        let body = read_limited(reply)
            .await
            .map_err(|e| transport_error("FCM", &e))?;
        if http.is_success() {
            Ok(())
        } else {
            Err(classify(
                http.as_u16(),
                &body,
                hint,
                Address::Topic("clarion-healthcheck"),
            ))
        }
    }
}
