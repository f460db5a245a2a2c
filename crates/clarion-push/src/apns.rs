//! Apple Push Notification service: `POST /3/device/<token>` over HTTP/2 and TLS,
//! authenticated with an ES256 provider token.
//!
//! Apple treats a connection per request as abuse, so the channel holds one HTTP/2
//! client whose connection is reused and multiplexed by every send (HTTP/2 is required
//! up front, so concurrent first sends wait for one connection instead of each opening
//! their own). The provider token is re-signed no more often than every 20 minutes
//! (Apple answers `TooManyProviderTokenUpdates` otherwise) and before it is an hour old.

use crate::compose::{PAYLOAD_LIMIT, PushMessage, compose, fit};
use crate::http::{Clock, error_chain, fan_out, read_limited, retry_after, transport_error};
use crate::{PushConfigError, select_recipients};
use clarion_core::{
    Channel, Delivery, DeliveryError, ErrorClass, Outcome, Receipt, RecipientResult, SecretRef,
    SecretResolver,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use url::Url;

/// Re-sign the provider token once it is this old (Apple rejects it at 60 minutes).
const TOKEN_REFRESH_AFTER: Duration = Duration::from_secs(50 * 60);
/// Never re-sign a token younger than this (Apple's limit on token updates).
const TOKEN_MIN_AGE: Duration = Duration::from_secs(20 * 60);
/// `apns-expiration` is a date; Apple keeps undelivered notifications for about 30 days.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Which APNs environment to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApnsEnvironment {
    /// `https://api.push.apple.com`: apps from the App Store and TestFlight.
    #[default]
    Production,
    /// `https://api.sandbox.push.apple.com`: development builds.
    Sandbox,
}

impl ApnsEnvironment {
    fn base_url(self) -> &'static str {
        match self {
            ApnsEnvironment::Production => "https://api.push.apple.com",
            ApnsEnvironment::Sandbox => "https://api.sandbox.push.apple.com",
        }
    }
}

/// A push target on the Apple Push Notification service (`type = "apns"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The token-signing key (`AuthKey_XXXXXXXXXX.p8`, a PKCS#8 PEM P-256 key) from
    /// the Apple developer account, usually `{ file = "/run/secrets/apns.p8" }`.
    pub signing_key: SecretRef,
    /// The 10-character id of the signing key (`kid` of the provider token).
    pub key_id: String,
    /// The 10-character Apple developer team id (`iss` of the provider token).
    pub team_id: String,
    /// The app's bundle id, sent as `apns-topic`.
    pub topic: String,
    /// `production` (default) or `sandbox`; picks Apple's host.
    #[serde(default)]
    pub environment: ApnsEnvironment,
    /// Overrides the host chosen by `environment` (a test double or a relay);
    /// must be `https`.
    #[serde(default)]
    pub base_url: Option<Url>,
    /// A PEM file of CA certificates to trust instead of the system's roots (for a test
    /// double with its own CA). Default: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Device tokens (hex) per audience: `{ customers = ["a1b2...", ...] }`.
    pub device_tokens: BTreeMap<String, Vec<String>>,
    /// Set by the daemon, never by the file (the key does not exist in TOML): this
    /// channel is the leg of a people target that pushes to a directory's members'
    /// devices, handed over with each delivery (`Delivery::direct`). Its
    /// `device_tokens` must then be an empty table (anything else is refused): who it
    /// reaches is the directory's business, not the config's. Default false.
    #[serde(skip)]
    pub directory: bool,
    /// How long APNs keeps trying to reach an offline device (`apns-expiration` = now
    /// + ttl; `0s` means try once, now). At most 30 days. Default: 1 hour.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Most requests in flight at once for this target, across all deliveries; they
    /// share one HTTP/2 connection, whose stream limit Apple sets. Default: 100.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_sends: usize,
    /// Time allowed for one request, connecting included. Default: 10 s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_concurrency() -> usize {
    100
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The APNs channel of one target.
#[derive(Debug)]
pub struct ApnsChannel {
    target: String,
    base_url: Url,
    topic: String,
    client: reqwest::Client,
    tokens: ProviderTokens,
    recipients: BTreeMap<String, Vec<String>>,
    ttl: Duration,
    limit: Semaphore,
}

/// Validates `config` and builds the channel. Reads the key through `secrets` and the
/// `ca_file`, if any; does no network I/O.
pub fn build(
    target_name: &str,
    config: &ApnsConfig,
    secrets: &dyn SecretResolver,
) -> Result<ApnsChannel, PushConfigError> {
    let err = |field: &str, reason: String| PushConfigError::new(target_name, field, reason);
    crate::install_jwt_crypto();

    let pem = secrets
        .resolve(&config.signing_key)
        .map_err(|e| err("signing_key", format!("cannot be read: {e}")))?;
    let key = EncodingKey::from_ec_pem(pem.expose().as_bytes()).map_err(|e| {
        err(
            "signing_key",
            format!("is not a PKCS#8 PEM EC key (.p8): {e}"),
        )
    })?;
    for (field, value) in [("key_id", &config.key_id), ("team_id", &config.team_id)] {
        if value.len() != 10 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(err(
                field,
                format!("`{value}` is not a 10-character Apple id"),
            ));
        }
    }
    if config.topic.is_empty()
        || config
            .topic
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(err("topic", "must be the app's bundle id".into()));
    }
    let tokens = ProviderTokens::new(
        key,
        config.key_id.clone(),
        config.team_id.clone(),
        Clock::system(),
    );
    // Sign once now, so that a key that parses but cannot sign ES256 fails at startup.
    tokens.sign(SystemTime::now()).map_err(|e| {
        err(
            "signing_key",
            format!("cannot sign an ES256 provider token: {e}"),
        )
    })?;

    let base_url = match &config.base_url {
        Some(u) => u.clone(),
        None => Url::parse(config.environment.base_url())
            .map_err(|e| err("environment", format!("has an unusable host: {e}")))?,
    };
    if base_url.scheme() != "https" || base_url.cannot_be_a_base() {
        return Err(err(
            "base_url",
            format!("`{base_url}` is not an https base URL (APNs requires TLS)"),
        ));
    }

    if config.directory {
        // Anything written here would be pushed on top of the directory's members, or
        // never, depending on how the daemon addressed the delivery: refuse it.
        if !config.device_tokens.is_empty() {
            return Err(err("device_tokens", crate::DIRECTORY_TOKENS.into()));
        }
    } else {
        for (audience, list) in &config.device_tokens {
            for (i, token) in list.iter().enumerate() {
                check_token(token)
                    .map_err(|why| err(&format!("device_tokens.{audience}[{i}]"), why.into()))?;
            }
        }
        if config.device_tokens.values().all(Vec::is_empty) {
            return Err(err(
                "device_tokens",
                "is empty: the target would reach nobody".into(),
            ));
        }
    }
    if config.ttl > MAX_TTL {
        return Err(err("ttl", "is over 30 days".into()));
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
        .http2_prior_knowledge()
        .timeout(config.request_timeout)
        .connect_timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        // Keep the connection for as long as Apple does, and find out with pings when
        // it silently died rather than on the next outage's first push.
        .pool_idle_timeout(None)
        .http2_keep_alive_interval(Duration::from_secs(60))
        .http2_keep_alive_timeout(Duration::from_secs(20))
        .http2_keep_alive_while_idle(true);
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| err("ca_file", format!("cannot read {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            err(
                "ca_file",
                format!("{} is not a PEM certificate bundle: {e}", path.display()),
            )
        })?;
        if certs.is_empty() {
            return Err(err(
                "ca_file",
                format!("{} holds no certificate", path.display()),
            ));
        }
        builder = builder.tls_certs_only(certs);
    }
    let client = builder.build().map_err(|e| {
        err(
            "ca_file",
            format!("cannot build the HTTP/2 client: {}", error_chain(&e)),
        )
    })?;

    Ok(ApnsChannel {
        target: target_name.to_string(),
        base_url,
        topic: config.topic.clone(),
        client,
        tokens,
        recipients: config.device_tokens.clone(),
        ttl: config.ttl,
        limit: Semaphore::new(config.max_concurrent_sends),
    })
}

/// The test every device token passes, configured or handed over with a delivery.
fn check_token(token: &str) -> Result<(), &'static str> {
    if token.len() < 32 || token.len() > 200 || !token.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("is not an APNs device token (hex digits)");
    }
    Ok(())
}

#[derive(Serialize)]
struct ProviderClaims<'a> {
    iss: &'a str,
    iat: u64,
}

/// A signed provider token and its age.
#[derive(Clone)]
struct ProviderToken {
    jwt: Arc<str>,
    made_at: Instant,
    generation: u64,
}

/// The target's provider token: signed on first use, re-signed when 50 minutes old,
/// never more often than every 20 minutes.
struct ProviderTokens {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    clock: Clock,
    current: Mutex<(u64, Option<ProviderToken>)>,
}

impl fmt::Debug for ProviderTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderTokens")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

impl ProviderTokens {
    fn new(key: EncodingKey, key_id: String, team_id: String, clock: Clock) -> Self {
        ProviderTokens {
            key,
            key_id,
            team_id,
            clock,
            current: Mutex::new((0, None)),
        }
    }

    fn sign(&self, now: SystemTime) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        header.typ = None;
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        jsonwebtoken::encode(
            &header,
            &ProviderClaims {
                iss: &self.team_id,
                iat,
            },
            &self.key,
        )
    }

    /// The token to send with. Signing is quick and needs no I/O, so a plain mutex is
    /// held for it (never across an `.await`).
    fn get(&self) -> Result<ProviderToken, DeliveryError> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        if let Some(t) = current
            .1
            .as_ref()
            .filter(|t| now.saturating_duration_since(t.made_at) < TOKEN_REFRESH_AFTER)
        {
            return Ok(t.clone());
        }
        let jwt = self.sign(SystemTime::now()).map_err(|e| {
            DeliveryError::permanent(format!("cannot sign the APNs provider token: {e}"))
        })?;
        current.0 += 1;
        let token = ProviderToken {
            jwt: Arc::from(jwt),
            made_at: now,
            generation: current.0,
        };
        current.1 = Some(token.clone());
        Ok(token)
    }

    /// APNs said `used` has expired. Drops it so the next send signs a new one, unless
    /// a newer one already replaced it or it is younger than 20 minutes: then Apple's
    /// clock and ours disagree, and a new token (same clock) would not help but would
    /// count against the update limit. Returns whether a new token will be made.
    fn expired(&self, used: &ProviderToken) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        match current.1.as_ref() {
            Some(t) if t.generation == used.generation => {
                if now.saturating_duration_since(t.made_at) >= TOKEN_MIN_AGE {
                    current.1 = None;
                    true
                } else {
                    false
                }
            }
            // Already replaced (or never stored): the next send uses the newer one.
            _ => true,
        }
    }
}

/// The APNs JSON payload: the alert, the thread (one per incident, so iOS groups an
/// incident's updates), and the ids as custom keys for the app.
fn render(msg: &PushMessage) -> serde_json::Value {
    let mut aps = json!({
        "alert": { "title": msg.title, "body": msg.body },
        "thread-id": msg.incident_id,
    });
    if msg.high_priority {
        aps["sound"] = json!("default");
    }
    json!({
        "aps": aps,
        "incident_id": msg.incident_id,
        "update_id": msg.update_id,
        "status": msg.status.as_str(),
        "sequence": msg.sequence,
        "impact": msg.impact.as_str(),
    })
}

#[derive(Deserialize)]
struct ErrorReply {
    reason: String,
    /// For 410: when (ms since the epoch) APNs learned the token is no longer valid.
    #[serde(default)]
    timestamp: Option<u64>,
}

/// Classifies a non-200 reply by Apple's documented `reason`, falling back on the
/// HTTP status for reasons this build does not know.
fn classify(http: u16, body: &[u8], hint: Option<Duration>) -> (DeliveryError, bool) {
    let parsed = serde_json::from_slice::<ErrorReply>(body).ok();
    let reason = parsed
        .as_ref()
        .map(|r| r.reason.clone())
        .unwrap_or_else(|| http.to_string());
    let retryable =
        |why: &str| DeliveryError::retryable(format!("APNs {why} (HTTP {http} {reason})"), hint);
    let permanent =
        |why: &str| DeliveryError::permanent(format!("APNs {why} (HTTP {http} {reason})"));
    let mut provider_token_expired = false;
    let err = match reason.as_str() {
        "Unregistered" | "ExpiredToken" => {
            gone(http, &reason, parsed.as_ref().and_then(|r| r.timestamp))
        }
        "BadDeviceToken" => {
            permanent("rejected the device token (wrong environment, or not a token)")
        }
        "DeviceTokenNotForTopic" => permanent("says the device token belongs to another app"),
        "TooManyRequests" => retryable("asked to slow down for this device"),
        "InternalServerError" => retryable("had an internal error"),
        "ServiceUnavailable" => retryable("is unavailable"),
        "Shutdown" => retryable("is shutting down this connection"),
        "IdleTimeout" => retryable("closed the idle connection"),
        "TooManyProviderTokenUpdates" => retryable("says the provider token changes too often"),
        "ExpiredProviderToken" => {
            provider_token_expired = true;
            retryable("says the provider token expired")
        }
        "InvalidProviderToken" | "MissingProviderToken" | "UnrelatedKeyIdInToken" => {
            permanent("refused the provider token (check key_id, team_id and signing_key)")
        }
        "BadTopic" | "TopicDisallowed" | "MissingTopic" => {
            permanent("refused the topic (check `topic`)")
        }
        "PayloadTooLarge" | "PayloadEmpty" | "BadCollapseId" | "BadExpirationDate"
        | "BadMessageId" | "BadPriority" | "InvalidPushType" | "DuplicateHeaders" | "BadPath"
        | "MethodNotAllowed" => permanent("rejected the request as malformed"),
        _ => match http {
            410 => gone(http, &reason, None),
            429 | 500..=599 => retryable("failed"),
            _ => permanent("rejected the request"),
        },
    };
    (err.with_code(reason), provider_token_expired)
}

fn gone(http: u16, reason: &str, since_ms: Option<u64>) -> DeliveryError {
    let since = since_ms
        .and_then(|ms| jiff::Timestamp::from_millisecond(i64::try_from(ms).ok()?).ok())
        .map(|t| format!(" since {t}"))
        .unwrap_or_default();
    DeliveryError {
        class: ErrorClass::RecipientGone,
        reason: format!(
            "APNs says the device token is no longer active{since} (HTTP {http} {reason})"
        ),
        code: None,
    }
}

impl ApnsChannel {
    fn device_url(&self, token: &str) -> Url {
        let mut url = self.base_url.clone();
        let path = format!("{}/3/device/{token}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }

    async fn try_send(
        &self,
        delivery: &Delivery,
        audience: &str,
        device: &str,
    ) -> Result<Receipt, DeliveryError> {
        let mut msg = compose(delivery, audience);
        let body = fit(&mut msg, PAYLOAD_LIMIT, |m| serde_json::to_vec(&render(m)))?;
        let token = self.tokens.get()?;
        let expiration = if self.ttl.is_zero() {
            0
        } else {
            (SystemTime::now() + self.ttl)
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let apns_id = delivery.key.as_uuid();
        let reply = self
            .client
            .post(self.device_url(device))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("bearer {}", token.jwt),
            )
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", if msg.high_priority { "10" } else { "5" })
            .header("apns-expiration", expiration.to_string())
            .header("apns-collapse-id", &msg.collapse_id)
            .header("apns-id", &apns_id)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error("APNs", &e))?;
        let http = reply.status();
        let hint = retry_after(reply.headers(), SystemTime::now());
        let echoed_id = reply
            .headers()
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_limited(reply)
            .await
            .map_err(|e| transport_error("APNs", &e))?;
        if http.is_success() {
            tracing::debug!(target_name = %self.target, apns_id = %apns_id, "APNs accepted the notification");
            return Ok(Receipt {
                provider_id: Some(echoed_id.unwrap_or(apns_id)),
            });
        }
        let (mut err, provider_token_expired) = classify(http.as_u16(), &body, hint);
        if provider_token_expired && !self.tokens.expired(&token) {
            err.reason.push_str(
                "; the token is under 20 minutes old, so it is kept: check this host's clock",
            );
        }
        Err(err)
    }
}

#[async_trait::async_trait]
impl Channel for ApnsChannel {
    async fn send(&self, delivery: &Delivery) -> Outcome {
        let selection = select_recipients(&self.recipients, delivery, &self.target, check_token);
        let mut results = selection.refused;
        // Each result is recorded the moment it is known, not when the fan-out ends:
        // an attempt the daemon cuts short keeps the devices that already ended.
        let sent = fan_out(
            &self.limit,
            selection.send,
            |(audience, device)| async move {
                delivery.finish(RecipientResult {
                    recipient: Some(device.to_string()),
                    result: self.try_send(delivery, audience, device).await,
                })
            },
        )
        .await;
        results.extend(sent);
        Outcome { results }
    }

    /// Signs a provider token and posts a notification for an all-zero device token,
    /// which no device has: `BadDeviceToken` proves that the host is reachable over
    /// HTTP/2 and accepted the provider token and topic, and nothing is delivered.
    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        let token = self.tokens.get()?;
        let reply = self
            .client
            .post(self.device_url(&"0".repeat(64)))
            .header(
                reqwest::header::AUTHORIZATION,
                format!("bearer {}", token.jwt),
            )
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "5")
            .header("apns-expiration", "0")
            .json(&json!({ "aps": { "alert": "Clarion healthcheck" } }))
            .send()
            .await
            .map_err(|e| transport_error("APNs", &e))?;
        let http = reply.status();
        let hint = retry_after(reply.headers(), SystemTime::now());
        let body = read_limited(reply)
            .await
            .map_err(|e| transport_error("APNs", &e))?;
        let (err, _) = classify(http.as_u16(), &body, hint);
        match (http.as_u16(), err.code.as_deref()) {
            (200, _) | (400, Some("BadDeviceToken")) => Ok(()),
            _ => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(clock: Clock) -> ProviderTokens {
        let pem = crate::fcm::tests::openssl_key(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]);
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("ec key");
        ProviderTokens::new(key, "ABC123DEFG".into(), "TEAM123456".into(), clock)
    }

    #[test]
    fn provider_token_lives_50_minutes_and_is_never_renewed_within_20() {
        let (clock, offset) = Clock::offset();
        let t = tokens(clock);
        let first = t.get().expect("token");
        let advance = |mins: u64| *offset.lock().expect("lock") += Duration::from_secs(mins * 60);

        advance(10);
        assert_eq!(t.get().expect("token").generation, first.generation);
        // An ExpiredProviderToken for a 10-minute-old token is not a reason to re-sign.
        assert!(!t.expired(&first));
        assert_eq!(t.get().expect("token").generation, first.generation);

        advance(15); // 25 minutes old: may be renewed when APNs says it expired.
        assert!(t.expired(&first));
        let second = t.get().expect("token");
        assert_ne!(second.generation, first.generation);
        // A second ExpiredProviderToken for the old token does not drop the new one.
        assert!(t.expired(&first));
        assert_eq!(t.get().expect("token").generation, second.generation);

        advance(49);
        assert_eq!(t.get().expect("token").generation, second.generation);
        advance(1); // 50 minutes old: renewed before Apple's 60-minute limit.
        assert_ne!(t.get().expect("token").generation, second.generation);
    }

    #[test]
    fn config_errors_name_the_field() {
        let pem = crate::fcm::tests::openssl_key(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]);
        let base = format!(
            r#"
            signing_key = {{ value = {} }}
            key_id = "ABC123DEFG"
            team_id = "TEAM123456"
            topic = "com.example.status"
            environment = "sandbox"
            device_tokens = {{ customers = ["{}"] }}
            "#,
            toml::Value::String(pem.clone()),
            "ab".repeat(32),
        );
        let check = |extra: &str, expected: &str| {
            let mut table: toml::Table = toml::from_str(&base).expect("base");
            table.extend(toml::from_str::<toml::Table>(extra).expect("extra"));
            let got = toml::Value::Table(table)
                .try_into::<ApnsConfig>()
                .map_err(|e| e.message().to_string())
                .and_then(|c| {
                    build("push-apns", &c, &crate::fcm::tests::Values)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
            assert_eq!(got, Err(expected.to_string()), "{extra}");
        };
        // The base config builds.
        let table: toml::Table = toml::from_str(&base).expect("base");
        let cfg: ApnsConfig = toml::Value::Table(table).try_into().expect("config");
        let ch = build("push-apns", &cfg, &crate::fcm::tests::Values).expect("build");
        assert_eq!(ch.base_url.as_str(), "https://api.sandbox.push.apple.com/");

        check(
            "type = \"apns\"",
            "unknown field `type`, expected one of `signing_key`, `key_id`, `team_id`, `topic`, `environment`, `base_url`, `ca_file`, `device_tokens`, `ttl`, `max_concurrent_sends`, `request_timeout`",
        );
        check(
            "key_id = \"short\"",
            "target `push-apns`: `key_id` `short` is not a 10-character Apple id",
        );
        check(
            "device_tokens = { customers = [\"xyz\"] }",
            "target `push-apns`: `device_tokens.customers[0]` is not an APNs device token (hex digits)",
        );
        check(
            "signing_key = { value = \"nope\" }",
            "target `push-apns`: `signing_key` is not a PKCS#8 PEM EC key (.p8): InvalidKeyFormat",
        );
        check(
            "base_url = \"http://127.0.0.1:1\"",
            "target `push-apns`: `base_url` `http://127.0.0.1:1/` is not an https base URL (APNs requires TLS)",
        );
        check(
            "ca_file = \"/nonexistent/ca.pem\"",
            "target `push-apns`: `ca_file` cannot read /nonexistent/ca.pem: No such file or directory (os error 2)",
        );
        check(
            "environment = \"staging\"",
            "unknown variant `staging`, expected `production` or `sandbox`",
        );
    }

    #[test]
    fn classifies_apple_reasons() {
        let check = |http: u16, body: &str| {
            let (e, expired) = classify(http, body.as_bytes(), Some(Duration::from_secs(7)));
            (e.class, e.code.unwrap_or_default(), expired)
        };
        let retry = ErrorClass::Retryable {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(
            check(
                410,
                r#"{"reason":"Unregistered","timestamp":1700000000000}"#
            ),
            (ErrorClass::RecipientGone, "Unregistered".into(), false)
        );
        assert_eq!(
            check(400, r#"{"reason":"BadDeviceToken"}"#).0,
            ErrorClass::Permanent
        );
        assert_eq!(
            check(400, r#"{"reason":"DeviceTokenNotForTopic"}"#).0,
            ErrorClass::Permanent
        );
        for r in [
            "TooManyRequests",
            "InternalServerError",
            "ServiceUnavailable",
            "Shutdown",
        ] {
            assert_eq!(
                check(503, &format!(r#"{{"reason":"{r}"}}"#)).0,
                retry,
                "{r}"
            );
        }
        assert_eq!(
            check(403, r#"{"reason":"ExpiredProviderToken"}"#),
            (retry, "ExpiredProviderToken".into(), true)
        );
        assert_eq!(
            check(403, r#"{"reason":"InvalidProviderToken"}"#).0,
            ErrorClass::Permanent
        );
        assert_eq!(
            check(502, "<html>bad gateway</html>"),
            (retry, "502".into(), false)
        );
        assert_eq!(
            check(410, ""),
            (ErrorClass::RecipientGone, "410".into(), false)
        );
    }

    /// A port on loopback that nothing listens on.
    fn unused_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    /// The keys of an APNs target at `port` (a fresh signing key), then `extra`.
    fn config_at(port: u16, extra: &str) -> ApnsConfig {
        let pem = crate::fcm::tests::openssl_key(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ]);
        toml::from_str(&format!(
            r#"
            signing_key = {{ value = {} }}
            key_id = "ABC123DEFG"
            team_id = "TEAM123456"
            topic = "com.example.status"
            base_url = "https://127.0.0.1:{port}"
            {extra}
            "#,
            toml::Value::String(pem),
        ))
        .expect("config")
    }

    /// The first update of a sample incident, for customers, to `push-apns`.
    fn delivery() -> Delivery {
        let update = clarion_core::samples::lifecycle(
            "INC-1",
            "Outage",
            &["customers"],
            jiff::Timestamp::UNIX_EPOCH,
        )
        .remove(0);
        Delivery::new(
            std::sync::Arc::new(update),
            std::sync::Arc::from("push-apns"),
            vec!["customers".to_string()].into(),
        )
    }

    /// Finding 5: the request path carries the device token (personal data), and
    /// reqwest's error text carries the URL; the reason (WARN logs, dead letters) must
    /// name only the scheme and host.
    #[tokio::test]
    async fn a_failed_send_never_shows_the_device_token() {
        let token = "deadbeef".repeat(8);
        let port = unused_port();
        let config = config_at(
            port,
            &format!(r#"device_tokens = {{ customers = ["{token}"] }}"#),
        );
        let channel = build("push-apns", &config, &crate::fcm::tests::Values).expect("build");
        let delivery = delivery();
        let outcome = channel.send(&delivery).await;
        let error = outcome.results[0].result.clone().expect_err("refused");
        let shown = format!("{} {error:?}", error.reason);
        assert!(!shown.contains("deadbeef"), "{shown}");
        assert!(error.is_retryable(), "{shown}");
        assert!(
            error.reason.contains(&format!("https://127.0.0.1:{port}")),
            "{shown}"
        );
    }

    /// A directory leg at an address nobody listens on: what reaches the network is
    /// the valid direct tokens only, and a malformed one is refused without it.
    #[tokio::test]
    async fn a_directory_config_needs_no_device_tokens_and_refuses_them() {
        let port = unused_port();
        let config = |tokens: &str, directory: bool| {
            let mut c = config_at(port, &format!("device_tokens = {tokens}"));
            c.directory = directory;
            build("push-apns", &c, &crate::fcm::tests::Values).map_err(|e| e.to_string())
        };
        let configured = format!("{{ customers = [\"{}\"] }}", "ab".repeat(32));
        assert_eq!(
            config(&configured, true).map(drop),
            Err("target `push-apns`: `device_tokens` is not allowed: a people target's channel addresses the directory's members; static device tokens belong to an ordinary target".into())
        );
        // An ordinary target still refuses to reach nobody.
        assert_eq!(
            config("{}", false).map(drop),
            Err(
                "target `push-apns`: `device_tokens` is empty: the target would reach nobody"
                    .into()
            )
        );
        let channel = config("{}", true).expect("a directory leg builds");
        let valid = "deadbeef".repeat(8);
        let delivery = delivery().with_direct(vec![valid.clone(), "not-hex".into(), valid.clone()]);
        let outcome = channel.send(&delivery).await;
        let shown = format!("{outcome:?}");
        assert_eq!(outcome.results.len(), 2, "{shown}");
        let refused = &outcome.results[0];
        assert_eq!(refused.recipient.as_deref(), Some("not-hex"));
        assert_eq!(
            refused.result,
            Err(DeliveryError::permanent(
                "target `push-apns`: device token `n…` (7 characters) is not an APNs device token (hex digits)"
            ))
        );
        // The valid token was tried once (nothing listens: retryable), and its reason
        // does not show it.
        let tried = &outcome.results[1];
        assert_eq!(tried.recipient.as_deref(), Some(valid.as_str()), "{shown}");
        assert!(
            tried
                .result
                .as_ref()
                .is_err_and(|e| e.is_retryable() && !e.reason.contains("deadbeef")),
            "{shown}"
        );
    }
}
