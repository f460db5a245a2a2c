//! The webhook channel: a JSON POST of the update, signed per Standard Webhooks v1, to
//! status pages, chat bridges and regulators' endpoints.
//!
//! It tries once per `send` and classifies the answer; it never follows a redirect
//! (a 3xx is a misconfigured URL, and following it would send a signed payload
//! somewhere nobody configured) and never retries on its own.
//!
//! Requests go out on hyper's connections directly, not through reqwest: one request
//! per delivery is this channel's whole cost, and reqwest's layers (redirect and retry
//! policies, a URL parsed again into a URI for every request) doubled it. A target has
//! one origin, so its connections are pooled by `pool.rs`, simpler and cheaper than a
//! general client's pool. Connections are kept alive and reused, HTTP/2 is used when
//! a `https://` peer offers it, and certificates are checked against the platform's
//! roots.
//!
//! The URL and the header values are treated as credentials: a Slack or Teams
//! incoming-webhook URL *is* the secret, and a header often carries an API key. They
//! may be secret references in config, and nothing here prints more of the URL than
//! its scheme and host, nor any header value, in a log line, an error or a `Debug`.

mod egress;
mod payload;
mod pool;
mod sign;
mod statuspage;

pub use payload::{PAYLOAD_VERSION, payload};
pub use sign::{SigningError, SigningKey};
pub use statuspage::StatuspagePreset;

use bytes::Bytes;
use clarion_core::{
    Channel, Delivery, DeliveryError, Outcome, Receipt, Secret, SecretRef, SecretResolver,
};
use clarion_http::{error_chain, no_reply, read_body_limited, redact_url, redact_urls, snippet};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, LOCATION, PROXY_AUTHORIZATION,
    USER_AGENT,
};
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};
use url::Url;

/// Configuration of one webhook target (the keys of `[targets.NAME]` besides `type`,
/// `audiences` and `retry`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint to POST to (`http://` or `https://`): a plain string, or a secret
    /// reference (`{ env = "SLACK_WEBHOOK_URL" }`, `{ file = "/run/secrets/hook" }`)
    /// for URLs that are themselves the credential, like Slack and Teams incoming
    /// webhooks. Logs and errors show only its scheme and host either way.
    pub url: Setting,
    /// Standard Webhooks signing secrets (`whsec_` + base64 of 24 to 64 random bytes).
    /// Every secret listed signs each request, so rotating is: add the new secret,
    /// let the receiver switch, remove the old one. Empty means unsigned requests.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// Extra HTTP headers sent with every request (e.g. an API key for a chat bridge).
    /// Each value is a plain string or a secret reference (`{ env = "BRIDGE_TOKEN" }`,
    /// `{ file = "..." }`); values are never logged and are marked sensitive on the
    /// wire (HTTP/2 does not index them).
    #[serde(default)]
    pub headers: BTreeMap<String, Setting>,
    /// How long one attempt may take, connect to last byte. The Standard Webhooks
    /// spec recommends 15 to 30 seconds.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// The body's shape: `clarion` (default: the versioned envelope,
    /// docs/webhooks.md) or `statuspage` (Atlassian Statuspage's subscriber
    /// webhook, `{meta, page, incident}`, with `[targets.NAME.statuspage]`). A
    /// custom body template wins over either.
    #[serde(default)]
    pub format: PayloadFormat,
    /// With `format = "statuspage"`: the page's id, URL and unsubscribe link.
    #[serde(default)]
    pub statuspage: Option<StatuspagePreset>,
}

/// A webhook body's shape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    #[default]
    Clarion,
    Statuspage,
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

/// A config value written either inline (`"https://..."`) or as a secret reference
/// (`{ env = "X" }`, `{ file = "/path" }`, `{ value = "..." }`), resolved when the
/// target is built. Its `Debug` never prints an inline value in full: a URL shows its
/// scheme and host, anything else `***`.
#[derive(Clone, PartialEq, Eq)]
pub enum Setting {
    /// Written into the config file as a string.
    Plain(String),
    /// Resolved through the daemon's [`SecretResolver`].
    Secret(SecretRef),
}

impl Setting {
    fn resolve(&self, secrets: &dyn SecretResolver) -> Result<Secret, String> {
        match self {
            Setting::Plain(v) => Ok(Secret::new(v.clone())),
            Setting::Secret(reference) => secrets.resolve(reference),
        }
    }
}

impl fmt::Debug for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Setting::Plain(v) => match Url::parse(v) {
                Ok(url) if url.has_host() => f.write_str(&redact_url(&url)),
                _ => f.write_str("***"),
            },
            Setting::Secret(reference) => fmt::Debug::fmt(reference, f),
        }
    }
}

impl From<&str> for Setting {
    fn from(v: &str) -> Self {
        Setting::Plain(v.to_string())
    }
}

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Hand-written rather than `#[serde(untagged)]`, so that a mistyped reference
        // (`{ evn = "X" }`) gets `SecretRef`'s own error instead of "did not match any
        // variant".
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Setting;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a secret reference like { env = \"NAME\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Setting, E> {
                Ok(Setting::Plain(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Setting, A::Error> {
                SecretRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Setting::Secret)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Why a webhook target could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    // The reason never quotes the URL: it may be a credential.
    #[error("url: {0}")]
    Url(String),
    #[error("secrets[{index}]: {reason}")]
    Secret { index: usize, reason: String },
    #[error("headers.{name}: {reason}")]
    Header { name: String, reason: String },
    #[error("timeout: must be more than zero")]
    Timeout,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("proxy: {0}")]
    Proxy(String),
    #[error("{0}")]
    Format(String),
}

type Connector = hyper_rustls::HttpsConnector<egress::Egress>;

/// Idle connections are closed after this long (reqwest's and hyper-util's default
/// was 90 s; receivers behind nginx close theirs after 75 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

// Standard Webhooks' headers, as constants: a name given as a string is parsed
// again on every insert, and this runs for every delivery.
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// A webhook target, ready to send.
pub struct WebhookChannel {
    url: Url,
    keys: Vec<SigningKey>,
    headers: HeaderMap,
    /// Connections to `url` without its userinfo (that became an `authorization`
    /// header), which the pool holds parsed once.
    pool: pool::Pool,
    timeout: Duration,
    /// The proxy connections go through (scheme, host and port only), if any.
    proxy: Option<String>,
    /// The Statuspage subscriber shape instead of the envelope.
    statuspage: Option<StatuspagePreset>,
}

impl fmt::Debug for WebhookChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Scheme and host only, and header names only: see the module docs.
        f.debug_struct("WebhookChannel")
            .field("url", &redact_url(&self.url))
            .field("keys", &self.keys.len())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

/// Builds a webhook target from its config, resolving and checking its secrets, with
/// the proxy the environment names (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
/// `NO_PROXY`, as curl reads them; see `egress.rs`). Does no network I/O.
pub fn build(
    target: &str,
    config: &WebhookConfig,
    secrets: &dyn SecretResolver,
) -> Result<WebhookChannel, WebhookConfigError> {
    let url = config
        .url
        .resolve(secrets)
        .map_err(WebhookConfigError::Url)?;
    // `url::ParseError` describes the problem without quoting the input.
    let url = Url::parse(url.expose())
        .map_err(|e| WebhookConfigError::Url(format!("is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(WebhookConfigError::Url(format!(
            "must be an http:// or https:// URL, not {}:",
            url.scheme()
        )));
    }
    if config.timeout.is_zero() {
        return Err(WebhookConfigError::Timeout);
    }
    let statuspage = match (config.format, &config.statuspage) {
        (PayloadFormat::Statuspage, Some(p)) if !p.page_id.trim().is_empty() => Some(p.clone()),
        (PayloadFormat::Statuspage, _) => {
            return Err(WebhookConfigError::Format(
                "format = \"statuspage\" needs `[targets.NAME.statuspage]` with a `page_id`".into(),
            ));
        }
        (PayloadFormat::Clarion, Some(_)) => {
            return Err(WebhookConfigError::Format(
                "statuspage: only with format = \"statuspage\"".into(),
            ));
        }
        (PayloadFormat::Clarion, None) => None,
    };
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
        let value = value.resolve(secrets).map_err(header_error)?;
        let mut v =
            HeaderValue::from_str(value.expose()).map_err(|e| header_error(e.to_string()))?;
        // Keeps the value out of HTTP/2 header compression tables and out of
        // `HeaderMap`'s `Debug`.
        v.set_sensitive(true);
        headers.insert(n, v);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("clarion/", env!("CARGO_PKG_VERSION"))),
    );
    let (uri, basic) = request_uri(&url)?;
    // `https://user:password@host/` sends HTTP basic auth, as curl and reqwest do,
    // unless the config sets `authorization` itself.
    if let Some(mut basic) = basic
        && !headers.contains_key(AUTHORIZATION)
    {
        basic.set_sensitive(true);
        headers.insert(AUTHORIZATION, basic);
    }
    let route = egress::proxy_for(&Matcher::from_env(), &uri).map_err(WebhookConfigError::Proxy)?;
    let proxy = route.as_ref().map(|(p, _)| egress::shown(p));
    let https = url.scheme() == "https";
    // A forward proxy (plain http:// receivers) reads its credentials from every
    // request; a tunnel sends them once, in its CONNECT.
    if let (false, Some((_, Some(auth)))) = (https, &route) {
        headers.insert(PROXY_AUTHORIZATION, auth.clone());
    }
    let connector = connector(config.timeout.min(Duration::from_secs(10)), https, route)?;
    let pool = pool::Pool::new(connector, uri, IDLE_TIMEOUT);
    tracing::debug!(target_name = target, url = %redact_url(&url), signed = !keys.is_empty(), "webhook target built");
    Ok(WebhookChannel {
        url,
        keys,
        headers,
        pool,
        timeout: config.timeout,
        proxy,
        statuspage,
    })
}

/// The bytes a target with `config` POSTs for a delivery: its custom body, else
/// the envelope or, with `format = "statuspage"`, the subscriber shape.
pub fn payload_as(config: &WebhookConfig, delivery: &Delivery) -> Vec<u8> {
    let preset = match config.format {
        PayloadFormat::Statuspage => config.statuspage.as_ref(),
        PayloadFormat::Clarion => None,
    };
    body_of(preset, delivery)
}

fn body_of(statuspage: Option<&StatuspagePreset>, delivery: &Delivery) -> Vec<u8> {
    // The envelope's own path (`payload`) looks for a custom body itself; only
    // the subscriber shape has to look first.
    if let Some(preset) = statuspage {
        let custom = delivery
            .audiences
            .first()
            .and_then(|a| delivery.part(a, "body"))
            .is_some();
        if !custom {
            return statuspage::body(delivery, preset);
        }
    }
    payload(delivery)
}

/// The URI requests go to, and the `authorization` header the URL's userinfo asks
/// for. Neither error quotes the URL.
fn request_uri(url: &Url) -> Result<(Uri, Option<HeaderValue>), WebhookConfigError> {
    let mut bare = url.clone();
    let basic = if bare.username().is_empty() && bare.password().is_none() {
        None
    } else {
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let credentials = format!(
            "{}:{}",
            decode(bare.username()),
            bare.password().map(decode).unwrap_or_default()
        );
        // `set_username` fails only for URLs that cannot have a host, and `build`
        // accepts only http(s) URLs with one.
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        Some(
            HeaderValue::try_from(format!("Basic {encoded}"))
                .map_err(|_| WebhookConfigError::Url("has unusable credentials".into()))?,
        )
    };
    let uri = bare
        .as_str()
        .parse::<Uri>()
        .map_err(|e| WebhookConfigError::Url(format!("is not a valid URI: {e}")))?;
    Ok((uri, basic))
}

/// TCP with keep-alive and no Nagle delay, then TLS for `https://` (certificates
/// checked against the platform's roots, HTTP/2 when the peer offers it).
pub(crate) fn connector(
    connect_timeout: Duration,
    https: bool,
    route: Option<(Uri, Option<HeaderValue>)>,
) -> Result<Connector, WebhookConfigError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let egress = match route {
        None => egress::Egress::direct(http),
        Some((proxy, auth)) => egress::Egress::via(http, https, proxy, auth),
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .map_err(|e| WebhookConfigError::Client(format!("TLS: {e}")))?
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(egress))
}

impl WebhookChannel {
    /// The headers and body of one attempt, exactly as they will be sent.
    pub fn request_parts(&self, delivery: &Delivery, timestamp: i64) -> (HeaderMap, Vec<u8>) {
        let body = body_of(self.statuspage.as_ref(), delivery);
        // Sized once for the three headers added here: a clone of the target's map
        // would grow (and copy) on the first of them.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 3);
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
        let id = delivery.key.as_str();
        if let Ok(v) = HeaderValue::from_str(id) {
            headers.insert(WEBHOOK_ID, v);
        }
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        let signature = match self.keys.as_slice() {
            [] => None,
            [key] => Some(key.sign(id, timestamp, &body)),
            keys => Some(
                keys.iter()
                    .map(|k| k.sign(id, timestamp, &body))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        };
        if let Some(v) = signature.and_then(|s| HeaderValue::try_from(s).ok()) {
            headers.insert(WEBHOOK_SIGNATURE, v);
        }
        (headers, body)
    }
}

#[async_trait::async_trait]
impl Channel for WebhookChannel {
    async fn send(&self, delivery: &Delivery) -> Outcome {
        let (headers, body) = self.request_parts(delivery, jiff::Timestamp::now().as_second());
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.headers_mut() = headers;
        // The timeout covers the whole attempt, connecting to the reply's last byte.
        let attempt = async {
            match self.pool.send(request).await {
                Ok(response) => classify(response).await,
                Err(e) => Err(transport_error(&self.url, &e)),
            }
        };
        Outcome::single(match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(self.timeout)),
        })
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        // A webhook has no side-effect-free probe in the spec, so check that the host
        // accepts connections and answers HTTP at all: any status is fine here.
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.method_mut() = Method::HEAD;
        if let Some(agent) = self.headers.get(USER_AGENT) {
            request.headers_mut().insert(USER_AGENT, agent.clone());
        }
        match tokio::time::timeout(self.timeout, self.pool.send(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(transport_error(&self.url, &e)),
            Err(_) => Err(timed_out(self.timeout)),
        }
    }
}

/// A request that got no HTTP reply (refused, reset, TLS failed). Anything that
/// happened on the wire may work later, so it is retryable. The reason never holds
/// more of the URL than its scheme and host ([`error_chain`] reduces any URL).
fn transport_error(url: &Url, e: &pool::Failure) -> DeliveryError {
    let (what, chain) = match e {
        pool::Failure::Connect(cause) => ("cannot connect", error_chain(cause.as_ref())),
        pool::Failure::Request(cause) => ("request failed", error_chain(cause)),
    };
    no_reply("webhook", what, &format!("{}: {chain}", redact_url(url)))
}

/// No reply within the target's `timeout`. Retryable: the peer may have taken the
/// request, and a retry that duplicates beats a loss.
fn timed_out(timeout: Duration) -> DeliveryError {
    no_reply(
        "webhook",
        "timed out",
        &format!("no reply within {}", humantime::format_duration(timeout)),
    )
}

async fn classify(response: Response<Incoming>) -> Result<Receipt, DeliveryError> {
    let status = response.status();
    let code = status.as_u16();
    if status.is_success() {
        // The delivery is done. A body (Slack answers `ok`) is still read to its end,
        // aside, so that the connection goes back to the pool: dropping an unread
        // body closes it. A body past the limit or slower than a second costs that
        // one connection, never the delivery.
        let body = response.into_body();
        if !body.is_end_stream() {
            tokio::spawn(tokio::time::timeout(
                Duration::from_secs(1),
                read_body_limited(body, clarion_http::DEFAULT_BODY_LIMIT),
            ));
        }
        return Ok(Receipt {
            provider_id: Some(format!("HTTP {code}")),
        });
    }
    let retry_after = clarion_http::retry_after(response.headers(), SystemTime::now());
    // Where the redirect points, reduced like every URL we print: the operator needs
    // the host to see the misconfiguration, not a path that may be a credential.
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(redact_urls);
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

/// The start of the reply body, for the reason text. The body is read only up to
/// [`clarion_http::DEFAULT_BODY_LIMIT`]: a receiver (or a proxy in front of it) that
/// answers an error with megabytes, or never finishes its body, must not hold the
/// attempt or the memory.
async fn body_snippet(response: Response<Incoming>) -> String {
    let Ok(bytes) = read_body_limited(response.into_body(), clarion_http::DEFAULT_BODY_LIMIT).await
    else {
        return String::new();
    };
    let text = snippet(&bytes);
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clarion_core::samples;
    use futures::StreamExt;
    use std::sync::Arc;

    const SECRET_PATH: &str = "s3cr3tPATH";
    const SECRET_QUERY: &str = "s3cr3tQUERY";
    const SECRET_HEADER: &str = "s3cr3tHEADER";

    /// Resolves `{ value = .. }` references and refuses the rest, like a daemon whose
    /// environment lacks the variable.
    struct Values;

    impl SecretResolver for Values {
        fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
            match reference {
                SecretRef::Value(v) => Ok(v.clone()),
                other => Err(format!("{other} is not set")),
            }
        }
    }

    fn config(json: serde_json::Value) -> WebhookConfig {
        serde_json::from_value(json).expect("valid webhook config")
    }

    fn delivery() -> Delivery {
        let update = samples::lifecycle(
            "INC-1",
            "Outage",
            &["customers"],
            jiff::Timestamp::UNIX_EPOCH,
        )
        .remove(0);
        Delivery::new(
            Arc::new(update),
            Arc::from("hook"),
            vec!["customers".to_string()].into(),
        )
    }

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    /// Serves `app` on a loopback port and returns the base URL.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    async fn send_once(channel: &WebhookChannel) -> DeliveryError {
        let outcome = channel.send(&delivery()).await;
        outcome.results[0]
            .result
            .clone()
            .expect_err("the peer refuses")
    }

    /// Finding 5: reqwest's error text carries the whole URL, and a Slack-style URL is
    /// the credential. Neither the reason (which reaches WARN logs and the dead-letter
    /// header) nor any `Debug` may show its path or query.
    #[tokio::test]
    async fn a_failed_send_never_shows_the_url_path_or_query() {
        let port = closed_port();
        let url = format!(
            "http://127.0.0.1:{port}/services/T000/B000/{SECRET_PATH}?token={SECRET_QUERY}"
        );
        let config = config(serde_json::json!({
            "url": url,
            "headers": { "authorization": format!("Bearer {SECRET_HEADER}") },
        }));
        let channel = build("hook", &config, &Values).expect("builds");

        let error = send_once(&channel).await;
        let healthcheck = channel.healthcheck().await.expect_err("refused");
        let shown = format!(
            "{} {error:?} {} {healthcheck:?} {config:?} {channel:?}",
            error.reason, healthcheck.reason
        );
        for secret in [SECRET_PATH, SECRET_QUERY, SECRET_HEADER] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(error.is_retryable(), "{shown}");
        assert!(
            error.reason.starts_with("webhook: cannot connect: "),
            "{shown}"
        );
        // The operator still learns which host refused.
        assert!(
            error.reason.contains(&format!("http://127.0.0.1:{port}")),
            "{shown}"
        );
    }

    /// `https://user:password@host/` sends basic auth (percent-decoded), as reqwest
    /// and curl do, and the userinfo never shows; an answer with a body that arrives
    /// after its headers (Slack's `ok`, streamed) is still read to its end, so the
    /// connection is reused: three sends, one connection.
    #[tokio::test]
    async fn userinfo_becomes_basic_auth_and_connections_are_reused() {
        type Seen = Arc<std::sync::Mutex<Vec<(std::net::SocketAddr, String)>>>;
        let seen: Seen = Arc::default();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |axum::extract::State(seen): axum::extract::State<Seen>,
                     axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                        std::net::SocketAddr,
                    >,
                     headers: axum::http::HeaderMap| async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        seen.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((peer, auth));
                        // The body's end comes after the headers, in its own chunk,
                        // as from a receiver that streams its reply.
                        let chunks = futures::stream::iter(["o", "k"]).then(|c| async move {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            Ok::<_, std::convert::Infallible>(c)
                        });
                        axum::body::Body::from_stream(chunks)
                    },
                ),
            )
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .await
        });
        let config = config(serde_json::json!({
            "url": format!("http://ops:{SECRET_PATH}%40x@{addr}/hook"),
        }));
        let channel = build("hook", &config, &Values).expect("builds");
        assert!(!format!("{channel:?}").contains(SECRET_PATH));
        for _ in 0..3 {
            assert!(channel.send(&delivery()).await.is_delivered());
            // The body is read aside; give it a moment to hand the connection back.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        use base64::Engine as _;
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("ops:{SECRET_PATH}@x"))
        );
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|(_, auth)| *auth == expected), "{seen:?}");
        let connections: std::collections::BTreeSet<_> = seen.iter().map(|(p, _)| *p).collect();
        assert_eq!(connections.len(), 1, "{seen:?}");
    }

    /// Finding 5, config side: the URL and header values may come from secret
    /// references, resolved at build time, and what is sent is the resolved value.
    #[tokio::test]
    async fn url_and_headers_may_be_secret_references() {
        let seen = Arc::new(std::sync::Mutex::new(None::<(String, String)>));
        let app = {
            let seen = Arc::clone(&seen);
            axum::Router::new().route(
                "/services/T000/B000/{secret}",
                axum::routing::post(
                    move |axum::extract::Path(secret): axum::extract::Path<String>,
                          headers: axum::http::HeaderMap| {
                        let seen = Arc::clone(&seen);
                        async move {
                            let token = headers
                                .get("x-api-key")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some((secret, token));
                            "ok"
                        }
                    },
                ),
            )
        };
        let base = serve(app).await;
        let config = config(serde_json::json!({
            "url": { "value": format!("{base}/services/T000/B000/{SECRET_PATH}") },
            "headers": { "x-api-key": { "value": SECRET_HEADER } },
        }));
        let shown = format!("{config:?}");
        assert!(
            !shown.contains(SECRET_PATH) && !shown.contains(SECRET_HEADER),
            "{shown}"
        );
        let channel = build("hook", &config, &Values).expect("builds");
        let shown = format!("{channel:?}");
        assert!(
            !shown.contains(SECRET_PATH) && !shown.contains(SECRET_HEADER),
            "{shown}"
        );
        assert!(channel.send(&delivery()).await.is_delivered());
        let got = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            got,
            Some((SECRET_PATH.to_string(), SECRET_HEADER.to_string()))
        );

        // An unresolvable reference names the key and the reference, never a value.
        let unresolved = config_error(serde_json::json!({ "url": { "env": "HOOK_URL" } }));
        assert_eq!(unresolved, "url: env:HOOK_URL is not set");
        let unresolved = config_error(serde_json::json!({
            "url": "https://example.com/",
            "headers": { "x-api-key": { "file": "/run/secrets/key" } },
        }));
        assert_eq!(
            unresolved,
            "headers.x-api-key: file:/run/secrets/key is not set"
        );
        // A bad URL is reported without quoting it.
        let bad = config_error(serde_json::json!({ "url": format!("ftp://h/{SECRET_PATH}") }));
        assert_eq!(bad, "url: must be an http:// or https:// URL, not ftp:");
        let bad = config_error(serde_json::json!({ "url": format!("{SECRET_PATH} nope") }));
        assert_eq!(bad, "url: is not a valid URL: relative URL without a base");
        // A mistyped reference gets SecretRef's own message.
        let typo = serde_json::from_value::<WebhookConfig>(
            serde_json::json!({ "url": { "evn": "HOOK_URL" } }),
        )
        .expect_err("not a reference");
        assert!(typo.to_string().contains("unknown variant `evn`"), "{typo}");
    }

    fn config_error(json: serde_json::Value) -> String {
        build("hook", &config(json), &Values)
            .expect_err("does not build")
            .to_string()
    }

    /// Finding 6: an error body is read only up to the limit. This peer sends 10 MiB
    /// and then never finishes its body, so an unbounded read could only end at the
    /// attempt's timeout (and then with no body text at all); a bounded one returns as
    /// soon as it has the limit, quoting the start of the body, and hangs up.
    #[tokio::test]
    async fn a_huge_error_body_is_read_only_up_to_the_limit() {
        const TEN_MIB: usize = 10 * 1024 * 1024;
        const CHUNK: usize = 64 * 1024;
        let hung_up = Arc::new(tokio::sync::Notify::new());
        let app = {
            let hung_up = Arc::clone(&hung_up);
            axum::Router::new().route(
                "/hook",
                axum::routing::post(move || {
                    let guard = NotifyOnDrop(Arc::clone(&hung_up));
                    let chunks = futures::stream::iter(0..TEN_MIB / CHUNK)
                        .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'E'; CHUNK])))
                        .chain(futures::stream::pending())
                        .map(move |chunk| {
                            let _alive = &guard;
                            chunk
                        });
                    async move {
                        (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::body::Body::from_stream(chunks),
                        )
                    }
                }),
            )
        };
        let base = serve(app).await;
        let config = config(serde_json::json!({
            "url": format!("{base}/hook"),
            // Only an unbounded read ever reaches this timeout; it is here so that one
            // fails instead of hanging.
            "timeout": "30s",
        }));
        let channel = build("hook", &config, &Values).expect("builds");
        let error = send_once(&channel).await;
        assert!(error.is_retryable(), "{}", error.reason);
        assert_eq!(
            error.reason,
            format!(
                "endpoint answered HTTP 500: {}…",
                "E".repeat(clarion_http::SNIPPET_CHARS)
            )
        );
        // The peer sees the connection closed: we stopped reading instead of draining.
        hung_up.notified().await;
    }

    struct NotifyOnDrop(Arc<tokio::sync::Notify>);

    impl Drop for NotifyOnDrop {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }

    /// Finding 1's hint: a peer's `Retry-After: 18446744073709551615` comes back capped
    /// at [`clarion_core::retry_after::MAX`], so the daemon's deadline arithmetic can
    /// never overflow on it.
    #[tokio::test]
    async fn a_huge_retry_after_is_capped() {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "18446744073709551615")],
                    "busy",
                )
            }),
        );
        let base = serve(app).await;
        let config = config(serde_json::json!({ "url": format!("{base}/hook") }));
        let channel = build("hook", &config, &Values).expect("builds");
        let error = send_once(&channel).await;
        assert_eq!(
            error.class,
            clarion_core::ErrorClass::Retryable {
                retry_after: Some(clarion_core::retry_after::MAX)
            },
            "{}",
            error.reason
        );
        assert_eq!(error.reason, "endpoint answered HTTP 503: busy");
    }
}
