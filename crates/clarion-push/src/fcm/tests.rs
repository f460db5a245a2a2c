//! FCM against a loopback stand-in for Google's token endpoint and the FCM send API.
//! The stand-in verifies the JWT assertion with the fake service account's public key
//! (a throwaway RSA key made by `openssl` for the test run) and answers sends with the
//! error bodies from FCM's documentation.

use super::*;
use axum::extract::{ConnectInfo, Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use clarion_core::{Secret, samples};
use jsonwebtoken::{DecodingKey, Validation};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

/// Runs `openssl` with `args` and returns what it prints (a PEM key).
pub(crate) fn openssl_key(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the tests need the `openssl` command (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("PEM is ASCII")
}

fn public_key_of(private_pem: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["pkey", "-pubout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run openssl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(private_pem.as_bytes())
        .expect("write key");
    let out = child.wait_with_output().expect("openssl pkey");
    String::from_utf8(out.stdout).expect("PEM is ASCII")
}

/// One throwaway RSA key per test binary run: generating one takes a moment.
fn rsa_key() -> &'static (String, String) {
    static KEY: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let private = openssl_key(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ]);
        let public = public_key_of(&private);
        (private, public)
    })
}

const CLIENT_EMAIL: &str = "clarion@test-project.iam.gserviceaccount.com";

/// What a send endpoint answers for a given registration token.
#[derive(Clone)]
struct Scripted {
    status: u16,
    retry_after: Option<&'static str>,
    body: String,
    /// Answer like this this many times, then succeed.
    times: usize,
}

#[derive(Default)]
struct MockState {
    token_uri: String,
    expires_in: u64,
    token_delay_ms: u64,
    send_delay_ms: u64,
    in_flight: usize,
    max_in_flight: usize,
    issued: Vec<String>,
    /// Everything that the mock found wrong with a request.
    problems: Vec<String>,
    sends: Vec<(String, serde_json::Value)>,
    peers: BTreeSet<SocketAddr>,
    script: HashMap<String, Scripted>,
    /// Recipients whose sends are never answered, like a stalled provider.
    stall: BTreeSet<String>,
    stalled: Arc<tokio::sync::Notify>,
}

type Shared = Arc<Mutex<MockState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, MockState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    assertion: String,
}

#[derive(Deserialize)]
struct SeenClaims {
    scope: String,
    iat: u64,
    exp: u64,
}

async fn token_endpoint(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<TokenForm>,
) -> impl IntoResponse {
    let delay = {
        let mut st = lock(&s);
        st.peers.insert(peer);
        st.token_delay_ms
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let mut st = lock(&s);
    if form.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        st.problems.push(format!("grant_type {}", form.grant_type));
    }
    let key = DecodingKey::from_rsa_pem(rsa_key().1.as_bytes()).expect("public key");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[st.token_uri.clone()]);
    validation.set_issuer(&[CLIENT_EMAIL]);
    validation.set_required_spec_claims(&["iss", "aud", "exp", "iat"]);
    match jsonwebtoken::decode::<SeenClaims>(&form.assertion, &key, &validation) {
        Ok(data) => {
            let now = jsonwebtoken::get_current_timestamp();
            let c = data.claims;
            if c.scope != auth::SCOPE {
                st.problems.push(format!("scope {}", c.scope));
            }
            if c.exp.saturating_sub(c.iat) > 3600 || c.iat + 60 < now || c.iat > now + 60 {
                st.problems
                    .push(format!("iat {} exp {} now {now}", c.iat, c.exp));
            }
            if data.header.kid.as_deref() != Some("key-1") {
                st.problems.push(format!("kid {:?}", data.header.kid));
            }
        }
        Err(e) => {
            st.problems.push(format!("assertion: {e}"));
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_grant", "error_description": e.to_string()})),
            )
                .into_response();
        }
    }
    let token = format!("ya29.test-{}", st.issued.len() + 1);
    st.issued.push(token.clone());
    axum::Json(json!({"access_token": token, "expires_in": st.expires_in, "token_type": "Bearer"}))
        .into_response()
}

async fn send_endpoint(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let delay = {
        let mut st = lock(&s);
        st.in_flight += 1;
        st.max_in_flight = st.max_in_flight.max(st.in_flight);
        st.send_delay_ms
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let mut st = lock(&s);
    st.in_flight -= 1;
    st.peers.insert(peer);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let current = st.issued.last().map(|t| format!("Bearer {t}"));
    if current.as_deref() != Some(auth.as_str()) {
        st.problems.push(format!(
            "send with authorization `{auth}`, current {current:?}"
        ));
    }
    if body.len() > 4096 {
        st.problems.push(format!("send of {} bytes", body.len()));
    }
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            st.problems.push(format!("send body: {e}"));
            return (StatusCode::BAD_REQUEST, HeaderMap::new(), String::new()).into_response();
        }
    };
    let to = v["message"]["token"]
        .as_str()
        .or(v["message"]["topic"].as_str())
        .unwrap_or_default()
        .to_string();
    st.sends.push((auth, v));
    if st.stall.contains(&to) {
        st.stalled.notify_one();
        // Headers now, a body never: the client waits for it forever.
        let never = futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>();
        return axum::body::Body::from_stream(never).into_response();
    }
    let n = st.sends.len();
    if let Some(script) = st.script.get_mut(&to).filter(|s| s.times > 0) {
        script.times -= 1;
        let mut h = HeaderMap::new();
        if let Some(ra) = script.retry_after {
            h.insert("retry-after", ra.parse().expect("header"));
        }
        let status = StatusCode::from_u16(script.status).expect("status");
        return (status, h, script.body.clone()).into_response();
    }
    axum::Json(json!({"name": format!("projects/test-project/messages/{n}")})).into_response()
}

struct Mock {
    state: Shared,
    base: String,
}

async fn mock(expires_in: u64) -> Mock {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let base = format!("http://{addr}");
    let state: Shared = Arc::new(Mutex::new(MockState {
        token_uri: format!("{base}/token"),
        expires_in,
        ..MockState::default()
    }));
    let app = axum::Router::new()
        .route("/token", post(token_endpoint))
        .route(
            "/v1/projects/test-project/messages:send",
            post(send_endpoint),
        )
        .with_state(Arc::clone(&state));
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    Mock { state, base }
}

pub(crate) struct Values;

impl SecretResolver for Values {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        match reference {
            SecretRef::Value(s) => Ok(s.clone()),
            other => Err(format!("{other} is not available in tests")),
        }
    }
}

fn service_account_json(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key_id": "key-1",
        "private_key": rsa_key().0,
        "client_email": CLIENT_EMAIL,
        "client_id": "1",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    })
    .to_string()
}

/// The test config: the fake service account, the stand-in's URL, three tokens and a
/// topic, with the keys in `extra` (TOML) replacing or adding to those.
fn config_result(m: &Mock, extra: &str) -> Result<FcmConfig, String> {
    let base = format!(
        r#"
        service_account = {{ value = {sa} }}
        base_url = "{base}"
        device_tokens = {{ customers = ["tok-a", "tok-b"], business = ["tok-b", "tok-c"] }}
        topics = {{ customers = ["outages"] }}
        "#,
        sa = toml::Value::String(service_account_json(&format!("{}/token", m.base))),
        base = m.base,
    );
    let mut table: toml::Table = toml::from_str(&base).map_err(|e| e.to_string())?;
    table.extend(toml::from_str::<toml::Table>(extra).map_err(|e| e.to_string())?);
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())
}

fn config(m: &Mock, extra: &str) -> FcmConfig {
    config_result(m, extra).expect("config parses")
}

fn delivery(seq: usize, audiences: &[&str]) -> Delivery {
    let update = samples::lifecycle(
        "INC-1",
        "Mobile data outage",
        audiences,
        jiff::Timestamp::UNIX_EPOCH,
    )
    .remove(seq);
    let audiences: Vec<String> = audiences.iter().map(|a| a.to_string()).collect();
    Delivery::new(
        Arc::new(update),
        Arc::from("push-fcm"),
        Arc::from(audiences),
    )
}

fn recipients(o: &Outcome) -> Vec<&str> {
    o.results
        .iter()
        .map(|r| r.recipient.as_deref().unwrap_or("-"))
        .collect()
}

#[tokio::test]
async fn sends_to_tokens_and_topics_with_a_verified_assertion() {
    let m = mock(3600).await;
    let ch = build("push-fcm", &config(&m, ""), &Values).expect("build");
    let out = ch.send(&delivery(0, &["customers", "business"])).await;
    assert!(out.is_delivered(), "{out:?}");
    assert_eq!(
        recipients(&out),
        ["tok-a", "tok-b", "/topics/outages", "tok-c"]
    );
    assert!(out.results[0].result.as_ref().is_ok_and(|r| {
        r.provider_id
            .as_deref()
            .is_some_and(|id| id.starts_with("projects/test-project/messages/"))
    }));

    let st = lock(&m.state);
    assert_eq!(st.problems, Vec::<String>::new());
    assert_eq!(st.issued.len(), 1);
    let by_target: BTreeMap<String, &serde_json::Value> = st
        .sends
        .iter()
        .map(|(_, v)| {
            let m = &v["message"];
            (
                m["token"]
                    .as_str()
                    .or(m["topic"].as_str())
                    .unwrap_or_default()
                    .to_string(),
                m,
            )
        })
        .collect();
    assert_eq!(by_target.len(), 4);
    let msg = by_target["tok-a"];
    assert_eq!(
        msg["notification"]["title"],
        "Investigating: Mobile data outage"
    );
    assert_eq!(
        msg["data"],
        json!({"incident_id": "INC-1", "update_id": "INC-1-u1", "status": "investigating", "sequence": "1", "impact": "major"})
    );
    assert_eq!(
        msg["android"],
        json!({"priority": "HIGH", "ttl": "3600s", "collapse_key": "INC-1", "notification": {"tag": "INC-1"}})
    );
    assert_eq!(msg["apns"]["headers"]["apns-priority"], "10");
    assert_eq!(msg["apns"]["headers"]["apns-collapse-id"], "INC-1");
    assert!(
        msg["apns"]["headers"]["apns-expiration"]
            .as_str()
            .is_some_and(|e| e.parse::<u64>().is_ok())
    );
    assert_eq!(by_target["outages"]["topic"], "outages");
    assert!(by_target["outages"].get("token").is_none());
}

#[tokio::test]
async fn access_token_is_reused_then_refreshed_after_expiry() {
    let m = mock(3600).await;
    let mut ch = build("push-fcm", &config(&m, ""), &Values).expect("build");
    let (clock, offset) = Clock::offset();
    ch.set_clock(clock);
    for seq in 0..3 {
        assert!(ch.send(&delivery(seq, &["customers"])).await.is_delivered());
    }
    assert_eq!(lock(&m.state).issued.len(), 1, "one token for three sends");

    // 56 minutes later the token is within its refresh margin: a new one is fetched.
    *offset.lock().expect("lock") += Duration::from_secs(56 * 60);
    assert!(ch.send(&delivery(3, &["customers"])).await.is_delivered());
    let st = lock(&m.state);
    assert_eq!(st.issued.len(), 2);
    assert_eq!(
        st.problems,
        Vec::<String>::new(),
        "every send used the newest token"
    );
    assert_eq!(
        st.sends.last().map(|s| s.0.as_str()),
        Some("Bearer ya29.test-2")
    );
}

#[tokio::test]
async fn concurrent_sends_share_one_refresh() {
    let m = mock(3600).await;
    lock(&m.state).token_delay_ms = 300;
    let ch = build("push-fcm", &config(&m, "max_concurrent_sends = 4"), &Values).expect("build");
    let deliveries: Vec<Delivery> = (0..4).map(|seq| delivery(seq, &["customers"])).collect();
    let outcomes = futures::future::join_all(deliveries.iter().map(|d| ch.send(d))).await;
    assert!(outcomes.iter().all(Outcome::is_delivered), "{outcomes:?}");
    let st = lock(&m.state);
    assert_eq!(st.issued.len(), 1, "twelve sends, one token request");
    assert_eq!(st.sends.len(), 12);
}

#[tokio::test]
async fn requests_in_flight_are_bounded_per_target() {
    let m = mock(3600).await;
    lock(&m.state).send_delay_ms = 200;
    let ch = build("push-fcm", &config(&m, "max_concurrent_sends = 2"), &Values).expect("build");
    let deliveries: Vec<Delivery> = (0..4)
        .map(|seq| delivery(seq, &["customers", "business"]))
        .collect();
    let outcomes = futures::future::join_all(deliveries.iter().map(|d| ch.send(d))).await;
    assert!(outcomes.iter().all(Outcome::is_delivered), "{outcomes:?}");
    let st = lock(&m.state);
    assert_eq!(st.sends.len(), 16);
    assert_eq!(
        st.max_in_flight, 2,
        "16 sends with max_concurrent_sends = 2"
    );
}

fn fcm_error(http: u16, status: &str, code: &str, message: &str) -> String {
    json!({"error": {
        "code": http,
        "message": message,
        "status": status,
        "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code},
        ],
    }})
    .to_string()
}

#[tokio::test]
async fn error_bodies_from_the_documentation_are_classified() {
    let m = mock(3600).await;
    let tokens = [
        "gone",
        "bad",
        "quota",
        "unavailable",
        "internal",
        "mismatch",
        "plain503",
    ];
    let extra = format!(
        "device_tokens = {{ customers = [{}] }}\ntopics = {{}}",
        tokens
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let cfg = config(&m, &extra);
    {
        let mut st = lock(&m.state);
        let mut script =
            |token: &str, status: u16, retry_after: Option<&'static str>, body: String| {
                st.script.insert(
                    token.to_string(),
                    Scripted {
                        status,
                        retry_after,
                        body,
                        times: usize::MAX,
                    },
                );
            };
        script(
            "gone",
            404,
            None,
            fcm_error(
                404,
                "NOT_FOUND",
                "UNREGISTERED",
                "Requested entity was not found.",
            ),
        );
        let invalid = json!({"error": {"code": 400, "message": "The registration token is not a valid FCM registration token", "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "message.token", "description": "The registration token is not a valid FCM registration token"}]}
        ]}});
        script("bad", 400, None, invalid.to_string());
        script(
            "quota",
            429,
            Some("30"),
            fcm_error(
                429,
                "RESOURCE_EXHAUSTED",
                "QUOTA_EXCEEDED",
                "Quota exceeded for quota metric",
            ),
        );
        script(
            "unavailable",
            503,
            Some("Sun, 06 Nov 1994 08:49:37 GMT"),
            fcm_error(
                503,
                "UNAVAILABLE",
                "UNAVAILABLE",
                "The service is currently unavailable.",
            ),
        );
        script(
            "internal",
            500,
            None,
            fcm_error(500, "INTERNAL", "INTERNAL", "Internal error encountered."),
        );
        script(
            "mismatch",
            403,
            None,
            fcm_error(
                403,
                "PERMISSION_DENIED",
                "SENDER_ID_MISMATCH",
                "SenderId mismatch",
            ),
        );
        script(
            "plain503",
            503,
            None,
            "<html>Service Unavailable</html>".to_string(),
        );
    }
    let ch = build("push-fcm", &cfg, &Values).expect("build");
    let out = ch.send(&delivery(0, &["customers"])).await;
    let got: Vec<(&str, ErrorClass, Option<&str>)> = out
        .results
        .iter()
        .map(|r| {
            let e = r.result.as_ref().expect_err("every token fails");
            (
                r.recipient.as_deref().unwrap_or("-"),
                e.class,
                e.code.as_deref(),
            )
        })
        .collect();
    let retry = |s: Option<u64>| ErrorClass::Retryable {
        retry_after: s.map(Duration::from_secs),
    };
    assert_eq!(
        got,
        [
            ("gone", ErrorClass::RecipientGone, Some("UNREGISTERED")),
            ("bad", ErrorClass::Permanent, Some("INVALID_ARGUMENT")),
            ("quota", retry(Some(30)), Some("QUOTA_EXCEEDED")),
            // A date in the past: retry now.
            ("unavailable", retry(Some(0)), Some("UNAVAILABLE")),
            ("internal", retry(None), Some("INTERNAL")),
            (
                "mismatch",
                ErrorClass::Permanent,
                Some("SENDER_ID_MISMATCH")
            ),
            ("plain503", retry(None), Some("503")),
        ]
    );
    // The dead token is reported exactly as the daemon expects to publish it.
    let gone = &out.results[0];
    assert_eq!(gone.recipient.as_deref(), Some("gone"));
    let e = gone.result.as_ref().expect_err("gone");
    assert!(e.reason.contains("no longer valid"), "{}", e.reason);
}

#[tokio::test]
async fn unregistered_topic_is_not_a_dead_device() {
    let m = mock(3600).await;
    lock(&m.state).script.insert(
        "outages".into(),
        Scripted {
            status: 404,
            retry_after: None,
            body: fcm_error(404, "NOT_FOUND", "UNREGISTERED", "gone"),
            times: 1,
        },
    );
    let ch = build("push-fcm", &config(&m, ""), &Values).expect("build");
    let mut d = delivery(0, &["customers"]);
    d.recipients = Some(vec!["/topics/outages".into()]);
    let out = ch.send(&d).await;
    assert_eq!(recipients(&out), ["/topics/outages"]);
    assert_eq!(
        out.results[0].result.as_ref().map_err(|e| e.class),
        Err(ErrorClass::Permanent)
    );
}

#[tokio::test]
async fn a_refused_access_token_is_replaced_on_the_next_send() {
    let m = mock(3600).await;
    lock(&m.state).script.insert(
        "tok-a".into(),
        Scripted {
            status: 401,
            retry_after: None,
            body: json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}).to_string(),
            times: 1,
        },
    );
    let ch = build("push-fcm", &config(&m, ""), &Values).expect("build");
    let mut d = delivery(0, &["customers"]);
    d.recipients = Some(vec!["tok-a".into()]);
    let first = ch.send(&d).await;
    assert_eq!(
        first.results[0]
            .result
            .as_ref()
            .map_err(|e| (e.class, e.code.clone())),
        Err((
            ErrorClass::Retryable { retry_after: None },
            Some("UNAUTHENTICATED".into())
        ))
    );
    d.attempt = 2;
    assert!(ch.send(&d).await.is_delivered());
    assert_eq!(lock(&m.state).issued.len(), 2);
}

#[tokio::test]
async fn token_endpoint_failure_fails_every_recipient_once() {
    let m = mock(3600).await;
    let mut cfg = config(&m, "");
    // A service account whose token_uri nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    cfg.service_account = SecretRef::Value(Secret::new(service_account_json(&format!(
        "http://127.0.0.1:{port}/token"
    ))));
    let ch = build("push-fcm", &cfg, &Values).expect("build");
    let out = ch.send(&delivery(0, &["customers"])).await;
    assert_eq!(out.results.len(), 3);
    assert!(
        out.results
            .iter()
            .all(|r| r.result.as_ref().is_err_and(DeliveryError::is_retryable))
    );
    assert!(lock(&m.state).sends.is_empty());
}

#[tokio::test]
async fn long_messages_are_shortened_to_fit() {
    let m = mock(3600).await;
    let ch = build("push-fcm", &config(&m, ""), &Values).expect("build");
    let mut d = delivery(0, &["customers"]);
    let mut update = (*d.update).clone();
    update.message = "Très long message. ".repeat(400);
    d.update = Arc::new(update);
    assert!(ch.send(&d).await.is_delivered());
    let st = lock(&m.state);
    assert_eq!(st.problems, Vec::<String>::new());
    for (_, v) in &st.sends {
        let body = v["message"]["notification"]["body"]
            .as_str()
            .unwrap_or_default();
        assert!(
            body.ends_with('…') && body.starts_with("Très long message."),
            "{body}"
        );
        assert!(serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX) <= 4096);
    }
}

#[tokio::test]
async fn config_errors_name_the_field() {
    let m = mock(3600).await;
    let check = |extra: &str, expected: &str| {
        let got = config_result(&m, extra).and_then(|cfg| {
            build("push-fcm", &cfg, &Values)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        assert_eq!(got, Err(expected.to_string()), "{extra}");
    };
    check(
        "retry = 3",
        "unknown field `retry`, expected one of `service_account`, `project_id`, `base_url`, `device_tokens`, `topics`, `ttl`, `max_concurrent_sends`, `request_timeout`",
    );
    check(
        "device_tokens = { customers = [\"has space\"] }",
        "target `push-fcm`: `device_tokens.customers[0]` is not an FCM registration token",
    );
    check(
        "topics = { customers = [\"a/b\"] }",
        "target `push-fcm`: `topics.customers[0]` `a/b` is not an FCM topic name (letters, digits, `-_.~%`)",
    );
    check(
        "device_tokens = {}\ntopics = {}",
        "target `push-fcm`: `device_tokens` and `topics` are both empty: the target would reach nobody",
    );
    check(
        "service_account = { value = \"{}\" }",
        "target `push-fcm`: `service_account` is not a service-account JSON key: missing field `private_key` at line 1 column 2",
    );
    check(
        "service_account = { env = \"FCM_KEY\" }",
        "target `push-fcm`: `service_account` cannot be read: env:FCM_KEY is not available in tests",
    );
    check(
        "ttl = \"29days\"",
        "target `push-fcm`: `ttl` is over FCM's maximum of 28 days",
    );
    check(
        "max_concurrent_sends = 0",
        "target `push-fcm`: `max_concurrent_sends` must be between 1 and 10000",
    );
    check(
        "project_id = \"a/b\"",
        "target `push-fcm`: `project_id` `a/b` is not a Firebase project id",
    );
    check(
        "base_url = \"ftp://x\"",
        "target `push-fcm`: `base_url` `ftp://x/` is not an http(s) base URL",
    );
}

/// Pushes per second to the stand-in over one kept-alive connection, one request at a
/// time. Prints the number; asserts only what the stand-in saw.
#[tokio::test]
async fn measure_pushes_per_second_over_one_connection() {
    let m = mock(3600).await;
    let ch = build(
        "push-fcm",
        &config(
            &m,
            "device_tokens = { customers = [\"tok-a\"] }\ntopics = {}\nmax_concurrent_sends = 1",
        ),
        &Values,
    )
    .expect("build");
    let n = 1000;
    let started = std::time::Instant::now();
    for i in 0..n {
        let out = ch.send(&delivery(i % 4, &["customers"])).await;
        assert!(out.is_delivered(), "{out:?}");
    }
    let rate = f64::from(n as u32) / started.elapsed().as_secs_f64();
    let st = lock(&m.state);
    eprintln!(
        "FCM stand-in: {n} pushes, {rate:.0} pushes/s, {} TCP connection(s)",
        st.peers.len()
    );
    assert_eq!(st.sends.len(), n);
    assert_eq!(
        st.peers.len(),
        1,
        "token exchange and every send share one connection"
    );
    assert_eq!(st.problems, Vec::<String>::new());
}

fn sent_to(m: &Mock) -> Vec<String> {
    lock(&m.state)
        .sends
        .iter()
        .map(|(_, v)| {
            let to = &v["message"];
            to["token"]
                .as_str()
                .or(to["topic"].as_str())
                .unwrap_or("-")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_recipient_that_ended_in_a_timed_out_attempt_is_not_sent_again() {
    let m = mock(3600).await;
    let ch = build("push-fcm", &config(&m, ""), &Values).expect("build");
    let mut d = delivery(0, &["customers", "business"]);
    d.skip = Arc::new(["tok-b".to_string(), "/topics/outages".to_string()].into());
    let out = ch.send(&d).await;
    assert!(out.is_delivered(), "{out:?}");
    assert_eq!(recipients(&out), ["tok-a", "tok-c"]);
    // What FCM received: not the skipped token, nor the skipped topic.
    let mut got = sent_to(&m);
    got.sort();
    assert_eq!(got, ["tok-a", "tok-c"]);
}

#[tokio::test]
async fn progress_keeps_the_recipients_sent_before_the_attempt_was_dropped() {
    let m = mock(3600).await;
    lock(&m.state).stall.insert("tok-c".to_string());
    let stalled = Arc::clone(&lock(&m.state).stalled);
    // One send at a time, in recipient order, so "the first two" is well defined.
    let ch = build("push-fcm", &config(&m, "max_concurrent_sends = 1"), &Values).expect("build");
    let d = delivery(0, &["customers", "business"]);
    let send = ch.send(&d);
    // The daemon's attempt_timeout, in effect: the send is dropped while tok-c hangs.
    // The outer timeout only guards against a broken test.
    let raced = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            _ = send => panic!("tok-c never gets an answer"),
            _ = stalled.notified() => {}
        }
    })
    .await;
    assert!(raced.is_ok(), "the stand-in never stalled");
    let done: Vec<(String, bool)> = d
        .progress
        .take()
        .into_iter()
        .map(|r| (r.recipient.unwrap_or_default(), r.result.is_ok()))
        .collect();
    assert_eq!(
        done,
        [
            ("tok-a".to_string(), true),
            ("tok-b".to_string(), true),
            ("/topics/outages".to_string(), true),
        ]
    );
}

fn direct_delivery(audiences: &[&str], direct: &[&str]) -> Delivery {
    delivery(0, audiences).with_direct(direct.iter().map(|t| t.to_string()).collect())
}

/// `recipient: ok`, or `recipient: class: reason`, per result.
fn summary(o: &Outcome) -> Vec<String> {
    o.results
        .iter()
        .map(|r| {
            let who = r.recipient.as_deref().unwrap_or("-");
            match &r.result {
                Ok(_) => format!("{who}: ok"),
                Err(e) => format!("{who}: {}: {}", e.class.as_str(), e.reason),
            }
        })
        .collect()
}

#[tokio::test]
async fn direct_tokens_replace_the_configured_ones_and_a_malformed_one_fails_alone() {
    let m = mock(3600).await;
    let ch = build("push-fcm", &config(&m, ""), &Values).expect("build");
    let mut d = direct_delivery(
        &["business", "customers"],
        &[
            "dir-1",
            "has space",
            "dir-2",
            "dir-1",
            // A topic is no member's device.
            "/topics/outages",
            "tok-a",
        ],
    );
    let content = |title: &str| clarion_core::Content {
        parts: [("title".to_string(), title.to_string())].into(),
    };
    d.content = Arc::new(
        [
            ("business".to_string(), content("For business")),
            ("customers".to_string(), content("For customers")),
        ]
        .into(),
    );
    let out = ch.send(&d).await;
    assert_eq!(
        summary(&out),
        [
            "has space: permanent: target `push-fcm`: device token `ha…` (9 characters) is not an FCM registration token",
            "/topics/outages: permanent: target `push-fcm`: device token `/to…` (15 characters) is not an FCM registration token",
            "dir-1: ok",
            "dir-2: ok",
            "tok-a: ok",
        ]
    );
    // What FCM received: each valid direct token once, none of the configured tokens
    // (`tok-a` only as a direct one) nor the configured topic; all with the first
    // audience's text.
    let mut got = sent_to(&m);
    got.sort();
    assert_eq!(got, ["dir-1", "dir-2", "tok-a"]);
    let st = lock(&m.state);
    assert_eq!(st.problems, Vec::<String>::new());
    let titles: Vec<&str> = st
        .sends
        .iter()
        .map(|(_, v)| {
            v["message"]["notification"]["title"]
                .as_str()
                .unwrap_or("-")
        })
        .collect();
    assert_eq!(titles, ["For business"; 3]);
    drop(st);
    assert_eq!(d.progress.take().len(), 5);
}

#[tokio::test]
async fn a_retry_and_a_skip_restrict_direct_tokens() {
    let m = mock(3600).await;
    let ch = build("push-fcm", &config(&m, ""), &Values).expect("build");
    let mut d = direct_delivery(&["customers"], &["dir-1", "dir-2", "dir-3", "dir-4"]);
    d.recipients = Some(
        ["dir-2", "dir-3", "tok-a", "dir-9"]
            .map(String::from)
            .to_vec(),
    );
    d.skip = Arc::new(["dir-3".to_string()].into());
    let out = ch.send(&d).await;
    assert_eq!(summary(&out), ["dir-2: ok"]);
    assert_eq!(sent_to(&m), ["dir-2"]);
}

#[tokio::test]
async fn a_directory_config_needs_no_tokens_or_topics_and_refuses_them() {
    let m = mock(3600).await;
    let directory = |extra: &str| {
        config_result(&m, extra).and_then(|mut cfg| {
            cfg.directory = true;
            build("push-fcm", &cfg, &Values).map_err(|e| e.to_string())
        })
    };
    let ch = directory("device_tokens = {}\ntopics = {}").expect("a directory leg builds");
    let out = ch.send(&direct_delivery(&["customers"], &["dir-1"])).await;
    assert_eq!(summary(&out), ["dir-1: ok"]);
    assert_eq!(sent_to(&m), ["dir-1"]);

    let refused = |extra: &str| directory(extra).map(drop);
    assert_eq!(
        refused(""),
        Err("target `push-fcm`: `device_tokens` is not allowed: a people target's channel addresses the directory's members; static device tokens belong to an ordinary target".into())
    );
    assert_eq!(
        refused("device_tokens = {}"),
        Err("target `push-fcm`: `topics` is not allowed: a people target's channel addresses the directory's members; topics belong to an ordinary target".into())
    );
    // Only the daemon says a channel is a directory leg: the file cannot.
    assert_eq!(
        config_result(&m, "directory = true").map(drop),
        Err("unknown field `directory`, expected one of `service_account`, `project_id`, `base_url`, `device_tokens`, `topics`, `ttl`, `max_concurrent_sends`, `request_timeout`".into())
    );
}
