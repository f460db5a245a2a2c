//! Integration tests: the SMS channel against loopback stand-ins for Twilio, Vonage and
//! an in-house HTTP gateway (axum servers that check method, auth, fields and encoding
//! and answer with the providers' documented bodies), and against a real SMPP 3.4
//! server (PyPI `smpp34`, run by `tests/peers/smsc.py`).

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use clarion_core::{
    Channel, Delivery, ErrorClass, IncidentUpdate, Outcome, Secret, SecretRef, SecretResolver,
    samples,
};
use clarion_sms::{SmsChannel, SmsConfig, build, compose};
use clarion_tests::{ChildGuard, free_port, python, wait_for_port};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Values;

impl SecretResolver for Values {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        match reference {
            SecretRef::Value(s) => Ok(s.clone()),
            other => Err(format!("{other} is not available in tests")),
        }
    }
}

fn channel(config: Value) -> SmsChannel {
    let config: SmsConfig = serde_json::from_value(config).expect("config parses");
    build("sms", &config, &Values).expect("channel builds")
}

fn update(message: Option<&str>) -> IncidentUpdate {
    let mut u = samples::lifecycle(
        "INC-9",
        "Mobile outage",
        &["customers"],
        jiff::Timestamp::UNIX_EPOCH,
    )
    .remove(0);
    if let Some(m) = message {
        m.clone_into(&mut u.message);
    }
    u
}

fn delivery(u: &IncidentUpdate, recipients: Option<Vec<String>>) -> Delivery {
    let mut d = Delivery::new(
        Arc::new(u.clone()),
        Arc::from("sms"),
        Arc::from(vec!["customers".to_string()]),
    );
    d.recipients = recipients;
    d
}

/// `number result` lines: `ok <provider id>` or `<class> <code>`.
fn summary(outcome: &Outcome) -> Vec<String> {
    outcome
        .results
        .iter()
        .map(|r| {
            let to = r.recipient.clone().unwrap_or_default();
            match &r.result {
                Ok(receipt) => format!(
                    "{to} ok {}",
                    receipt.provider_id.clone().unwrap_or_default()
                ),
                Err(e) => {
                    let class = match e.class {
                        ErrorClass::Retryable { retry_after } => {
                            format!("retryable({retry_after:?})")
                        }
                        other => other.as_str().to_string(),
                    };
                    format!("{to} {class} {}", e.code.clone().unwrap_or_default())
                }
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Loopback HTTP stand-ins

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: Method,
    pub(crate) path: String,
    query: String,
    headers: HeaderMap,
    body: String,
    at: Instant,
}

impl Seen {
    /// When the stand-in received it.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }

    pub(crate) fn form(&self) -> BTreeMap<String, String> {
        url::form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }
    pub(crate) fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
}

type Answer = Arc<dyn Fn(&Seen) -> Response + Send + Sync>;

pub(crate) struct Stub {
    pub(crate) base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Stub {
    pub(crate) async fn start(answer: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> Stub {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answer: Answer = Arc::new(answer);
        let (log, ans) = (seen.clone(), answer.clone());
        let app = axum::Router::new().fallback(
            move |method: Method, uri: axum::http::Uri, headers: HeaderMap, body: String| {
                let (log, ans) = (log.clone(), ans.clone());
                async move {
                    let req = Seen {
                        method,
                        path: uri.path().to_string(),
                        query: uri.query().unwrap_or_default().to_string(),
                        headers,
                        body,
                        at: Instant::now(),
                    };
                    let resp = ans(&req);
                    log.lock().expect("lock").push(req);
                    resp
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Stub {
            base: format!("http://{addr}"),
            seen,
        }
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

pub(crate) fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).expect("status");
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[tokio::test]
async fn twilio_sends_and_classifies() {
    let stub = Stub::start(|req| {
        if req.method == Method::GET {
            return reply(200, json!({"sid": "AC123", "status": "active"}));
        }
        let form = req.form();
        match form.get("To").map(String::as_str) {
            Some("+447700900001") => reply(201, json!({"sid": "SM0001", "status": "queued", "to": "+447700900001"})),
            Some("+447700900002") => reply(400, json!({"code": 21211, "message": "The 'To' number is not a valid phone number.", "more_info": "https://www.twilio.com/docs/errors/21211", "status": 400})),
            Some("+447700900003") => reply(400, json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "more_info": "https://www.twilio.com/docs/errors/21610", "status": 400})),
            Some("+447700900004") => {
                let mut r = reply(429, json!({"code": 20429, "message": "Too Many Requests", "status": 429}));
                r.headers_mut().insert("retry-after", "3".parse().expect("value"));
                r
            }
            _ => reply(503, json!({"code": 20500, "message": "Internal Server Error", "status": 503})),
        }
    })
    .await;
    let numbers = [
        "+447700900001",
        "+447700900002",
        "+447700900003",
        "+447700900004",
        "+447700900005",
    ];
    let ch = channel(json!({
        "provider": "twilio",
        "account_sid": "AC123",
        "auth_token": {"value": "tok"},
        "from": "+15005550006",
        "status_callback": "https://hooks.example.com/twilio",
        "base_url": stub.base,
        "recipients": {"customers": numbers},
        "rate_per_second": 1000,
    }));
    let u = update(None);
    let outcome = ch.send(&delivery(&u, None)).await;
    assert_eq!(
        summary(&outcome),
        [
            "+447700900001 ok SM0001",
            "+447700900002 permanent 21211",
            "+447700900003 recipient_gone 21610",
            "+447700900004 retryable(Some(3s)) 20429",
            "+447700900005 retryable(None) 20500",
        ]
    );
    ch.healthcheck().await.expect("healthcheck");
    let seen = stub.seen();
    assert_eq!(seen.len(), 6);
    let check = seen.last().expect("healthcheck request");
    assert_eq!(
        (check.method.as_str(), check.path.as_str()),
        ("GET", "/2010-04-01/Accounts/AC123.json")
    );
    assert_eq!(check.header("authorization"), "Basic QUMxMjM6dG9r");
    for req in &seen[..5] {
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.path, "/2010-04-01/Accounts/AC123/Messages.json");
        assert_eq!(req.header("authorization"), "Basic QUMxMjM6dG9r");
        assert_eq!(
            req.header("content-type"),
            "application/x-www-form-urlencoded"
        );
        let form = req.form();
        assert_eq!(form["From"], "+15005550006");
        assert_eq!(form["StatusCallback"], "https://hooks.example.com/twilio");
        assert_eq!(form["Body"], compose(&u, "customers", 3));
        assert!(!form.contains_key("MessagingServiceSid"));
    }
}

#[tokio::test]
async fn vonage_sends_unicode_when_needed_and_reads_per_message_status() {
    let stub = Stub::start(|req| {
        let form = req.form();
        let to = form.get("to").cloned().unwrap_or_default();
        let status = match to.as_str() {
            "447700900001" => "0",
            "447700900002" => "1",
            "447700900003" => "5",
            _ => "3",
        };
        if form.get("api_key").map(String::as_str) != Some("key1") || form.get("api_secret").map(String::as_str) != Some("sec1") {
            return reply(200, json!({"message-count": "1", "messages": [{"status": "4", "error-text": "Bad Credentials"}]}));
        }
        let message = if status == "0" {
            json!({"to": to, "message-id": "0A0000001", "status": "0", "remaining-balance": "3.14", "message-price": "0.03", "network": "23410"})
        } else {
            json!({"status": status, "error-text": format!("status {status}")})
        };
        reply(200, json!({"message-count": "1", "messages": [message]}))
    })
    .await;
    let ch = channel(json!({
        "provider": "vonage",
        "api_key": "key1",
        "api_secret": {"value": "sec1"},
        "from": "ACME",
        "base_url": stub.base,
        "recipients": {"customers": ["+447700900001", "+447700900002", "+447700900003", "+447700900004"]},
        "rate_per_second": 1000,
    }));
    let gsm = update(None);
    let outcome = ch.send(&delivery(&gsm, None)).await;
    assert_eq!(
        summary(&outcome),
        [
            "+447700900001 ok 0A0000001",
            "+447700900002 retryable(None) 1",
            "+447700900003 retryable(None) 5",
            "+447700900004 permanent 3",
        ]
    );
    let ucs2 = update(Some("Störung im Netz – wir arbeiten daran 🔧"));
    let outcome = ch
        .send(&delivery(&ucs2, Some(vec!["+447700900001".into()])))
        .await;
    assert_eq!(summary(&outcome), ["+447700900001 ok 0A0000001"]);

    let seen = stub.seen();
    assert_eq!(seen.len(), 5);
    for req in &seen {
        assert_eq!(
            (req.method.as_str(), req.path.as_str()),
            ("POST", "/sms/json")
        );
        let form = req.form();
        assert_eq!(form["from"], "ACME");
        assert_eq!(form["client-ref"], "INC-9-u1");
    }
    // The four numbers are sent to concurrently, so find the first one's request.
    let first = seen[..4]
        .iter()
        .map(Seen::form)
        .find(|f| f["to"] == "447700900001")
        .expect("request for +447700900001");
    assert_eq!(first["to"], "447700900001");
    assert_eq!(first["text"], compose(&gsm, "customers", 3));
    assert!(
        !first.contains_key("type"),
        "GSM-7 text is sent without type=unicode"
    );
    let last = seen[4].form();
    assert_eq!(last["type"], "unicode");
    assert_eq!(last["text"], compose(&ucs2, "customers", 3));
    assert!(last["text"].contains("🔧"));
}

#[tokio::test]
async fn generic_gateway_follows_its_template() {
    let stub = Stub::start(|req| {
        let body: Value = serde_json::from_str(&req.body).unwrap_or_default();
        match body["msisdn"].as_str() {
            Some("447700900001") => reply(202, json!({"result": {"id": "gw-77"}})),
            Some("447700900002") => {
                let mut r = reply(429, json!({"error": "slow down"}));
                r.headers_mut()
                    .insert("retry-after", "9".parse().expect("value"));
                r
            }
            Some("447700900003") => reply(410, json!({"error": "unsubscribed"})),
            _ => reply(400, json!({"error": "bad request"})),
        }
    })
    .await;
    let ch = channel(json!({
        "provider": "http",
        "url": format!("{}/v1/send?incident={{incident_id}}&t={{to}}", stub.base),
        "method": "PUT",
        "headers": {"Authorization": "Bearer {key}", "X-Idempotency-Key": "{idempotency_key}"},
        "key": {"value": "k-123"},
        "from": "ACME",
        "body": "json",
        "fields": {"msisdn": "{to_digits}", "message": "{text}", "sender": "{from}", "coding": "{encoding}", "parts": "{segments}", "status": "{status}", "literal": "{{braces}}"},
        "success": [200, "202-204"],
        "retry_statuses": [429, "500-599"],
        "recipient_gone": [410],
        "message_id": "/result/id",
        "recipients": {"customers": ["+447700900001", "+447700900002", "+447700900003", "+447700900004"]},
        "rate_per_second": 1000,
    }));
    let u = update(None);
    let d = delivery(&u, None);
    let outcome = ch.send(&d).await;
    assert_eq!(
        summary(&outcome),
        [
            "+447700900001 ok gw-77",
            "+447700900002 retryable(Some(9s)) 429",
            "+447700900003 recipient_gone 410",
            "+447700900004 permanent 400",
        ]
    );
    let seen = stub.seen();
    let req = seen
        .iter()
        .find(|r| r.body.contains("\"447700900001\""))
        .expect("request for +447700900001");
    assert_eq!(req.method, Method::PUT);
    assert_eq!(req.path, "/v1/send");
    assert_eq!(req.query, "incident=INC-9&t=%2B447700900001");
    assert_eq!(req.header("authorization"), "Bearer k-123");
    assert_eq!(req.header("x-idempotency-key"), d.key.as_str());
    assert_eq!(req.header("content-type"), "application/json");
    let body: Value = serde_json::from_str(&req.body).expect("json body");
    assert_eq!(
        body,
        json!({
            "msisdn": "447700900001",
            "message": compose(&u, "customers", 3),
            "sender": "ACME",
            "coding": "gsm7",
            "parts": "1",
            "status": "investigating",
            "literal": "{braces}",
        })
    );
}

#[tokio::test]
async fn the_rate_limit_makes_messages_wait_not_fail() {
    let stub = Stub::start(|_| reply(200, json!({"id": "x"}))).await;
    let numbers: Vec<String> = (1..=4).map(|i| format!("+44770090000{i}")).collect();
    let ch = channel(json!({
        "provider": "http",
        "url": format!("{}/send", stub.base),
        "fields": {"to": "{to}", "text": "{text}"},
        "recipients": {"customers": numbers},
        "rate_per_second": 5,
        "max_in_flight": 4,
    }));
    // A one-segment text, so each message takes one cell of the limit.
    let u = update(Some("Short."));
    let outcome = ch.send(&delivery(&u, None)).await;
    assert!(outcome.is_delivered(), "{:?}", summary(&outcome));
    let seen = stub.seen();
    assert_eq!(seen.len(), 4);
    // At 5 per second, four messages are spread over at least 3 × 200 ms. This is a
    // lower bound: a slow machine can only stretch it.
    let first = seen.iter().map(|s| s.at).min().expect("some");
    let last = seen.iter().map(|s| s.at).max().expect("some");
    let span = last - first;
    assert!(
        span >= Duration::from_millis(450),
        "4 messages at 5/s arrived within {span:?}"
    );
}

/// Throughput through the HTTP gateway stand-in. Run with `--ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, prints messages per second"]
async fn measure_gateway_throughput() {
    let stub = Stub::start(|_| reply(200, json!({"id": "x"}))).await;
    let n = 1000;
    let numbers: Vec<String> = (0..n).map(|i| format!("+4477009{i:05}")).collect();
    let ch = channel(json!({
        "provider": "http",
        "url": format!("{}/send", stub.base),
        "fields": {"to": "{to}", "text": "{text}"},
        "recipients": {"customers": numbers},
        "rate_per_second": 10000,
        "max_in_flight": 16,
        "max_segments": 1,
    }));
    let u = update(Some("Short."));
    let start = Instant::now();
    let outcome = ch.send(&delivery(&u, None)).await;
    let secs = start.elapsed().as_secs_f64();
    assert!(outcome.is_delivered());
    assert_eq!(stub.seen().len(), n);
    eprintln!(
        "MEASURE gateway: {n} messages in {secs:.2} s = {:.0} msg/s",
        n as f64 / secs
    );
}

// ---------------------------------------------------------------------------------
// SMPP against the smpp34 SMSC

pub(crate) struct Smsc {
    _guard: ChildGuard,
    pub(crate) port: u16,
    record: PathBuf,
}

impl Smsc {
    pub(crate) async fn start(python: &std::path::Path, extra: &[&str]) -> Smsc {
        // `free_port` hands back a port that is free now; two tests asking at the same
        // moment can get the same one. Starting one peer at a time, and waiting for
        // the peer's own "ready" line (not just for something on the port), keeps
        // each test talking to its own SMSC.
        static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let _one_at_a_time = STARTING.lock().await;
        let port = free_port();
        let record = std::env::temp_dir().join(format!(
            "clarion-smsc-{}-{}.jsonl",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&record);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/smsc.py");
        let mut guard = ChildGuard::spawn(
            Command::new(python)
                .arg(script)
                .args(["--port", &port.to_string(), "--record"])
                .arg(&record)
                .args(extra)
                .stdout(Stdio::piped()),
        )
        .expect("start the SMSC peer");
        let stdout = guard.0.stdout.take().expect("piped stdout");
        let ready = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.trim() == "ready")
        });
        let ready = tokio::time::timeout(Duration::from_secs(60), ready).await;
        assert!(
            matches!(ready, Ok(Ok(true))),
            "SMSC peer did not start on port {port}"
        );
        assert!(
            wait_for_port(port, Duration::from_secs(10)).await,
            "SMSC peer not listening on {port}"
        );
        Smsc {
            _guard: guard,
            port,
            record,
        }
    }

    pub(crate) fn submits(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == "submit_sm")
            .collect()
    }

    fn channel(&self, numbers: &[&str], extra: Value) -> SmsChannel {
        let mut config = json!({
            "provider": "smpp",
            "address": format!("127.0.0.1:{}", self.port),
            "system_id": "clarion",
            "password": {"value": "secret"},
            "source_addr": "ACME",
            "reconnect_backoff": "100ms",
            "response_timeout": "20s",
            "recipients": {"customers": numbers},
            "rate_per_second": 1000,
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        channel(config)
    }
}

impl Drop for Smsc {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.record);
    }
}

pub(crate) fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

#[tokio::test]
async fn smpp_long_ucs2_message_is_sent_in_concatenated_parts() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let smsc = Smsc::start(&py, &[]).await;
    let ch = smsc.channel(&["+447700900123"], json!({"max_segments": 3}));
    let text =
        "Störung im Mobilfunknetz 📵 – wir arbeiten mit Hochdruck an der Behebung. ".repeat(4);
    let u = update(Some(&text));
    let outcome = ch.send(&delivery(&u, None)).await;
    assert_eq!(summary(&outcome), ["+447700900123 ok sim-1,sim-2,sim-3"]);

    let submits = smsc.submits();
    assert_eq!(submits.len(), 3);
    let mut reassembled = Vec::new();
    let mut refs = Vec::new();
    for (i, s) in submits.iter().enumerate() {
        assert_eq!(s["destination_addr"], "447700900123");
        assert_eq!(s["dest_addr_ton"], 1);
        assert_eq!(s["source_addr"], "ACME");
        assert_eq!(s["source_addr_ton"], 5);
        assert_eq!(s["esm_class"], 0x40);
        assert_eq!(s["data_coding"], 8);
        let sm = hex(s["short_message"].as_str().expect("hex"));
        assert_eq!(sm[..3], [0x05, 0x00, 0x03], "UDH with an 8-bit reference");
        assert_eq!((sm[4], sm[5]), (3, i as u8 + 1), "total and sequence");
        assert!(
            sm.len() - 6 <= 134,
            "a part carries at most 67 UTF-16 units"
        );
        refs.push(sm[3]);
        reassembled.extend_from_slice(&sm[6..]);
    }
    assert!(
        refs.iter().all(|r| *r == refs[0]),
        "one reference for all parts: {refs:?}"
    );
    let units: Vec<u16> = reassembled
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let got = String::from_utf16(&units).expect("parts split on character boundaries");
    assert_eq!(got, compose(&u, "customers", 3));
    assert!(got.ends_with("… (ref INC-9-u1)"));
}

#[tokio::test]
async fn smpp_short_gsm7_message_is_one_plain_submit() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let smsc = Smsc::start(&py, &[]).await;
    let ch = smsc.channel(&["+447700900123"], json!({"registered_delivery": true}));
    let u = update(Some("Fixed {soon} €5"));
    let outcome = ch.send(&delivery(&u, None)).await;
    assert_eq!(summary(&outcome), ["+447700900123 ok sim-1"]);
    let submits = smsc.submits();
    assert_eq!(submits.len(), 1);
    assert_eq!(
        (
            submits[0]["esm_class"].clone(),
            submits[0]["data_coding"].clone()
        ),
        (json!(0), json!(0))
    );
    assert_eq!(submits[0]["registered_delivery"], 1);
    let sm = hex(submits[0]["short_message"].as_str().expect("hex"));
    let expected =
        clarion_sms::encoding::encode_gsm7_unpacked(&compose(&u, "customers", 3)).expect("gsm7");
    assert_eq!(sm, expected);
    // `{`, `}` and `€` go out as escape sequences.
    assert!(sm.windows(2).any(|w| w == [0x1B, 0x65]));
}

#[tokio::test]
async fn smpp_throttled_submit_is_retryable_and_the_retry_succeeds() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let smsc = Smsc::start(&py, &["--throttle-first", "1"]).await;
    let ch = smsc.channel(&["+447700900123"], json!({}));
    let u = update(Some("Short."));
    let outcome = ch.send(&delivery(&u, None)).await;
    assert_eq!(
        summary(&outcome),
        ["+447700900123 retryable(None) 0x00000058"]
    );
    let mut retry = delivery(&u, Some(vec!["+447700900123".into()]));
    retry.attempt = 2;
    let outcome = ch.send(&retry).await;
    assert_eq!(summary(&outcome), ["+447700900123 ok sim-2"]);
    let results: Vec<Value> = smsc.submits().iter().map(|s| s["result"].clone()).collect();
    assert_eq!(results, [json!("throttled"), json!("accepted")]);
}

#[tokio::test]
async fn smpp_dropped_connection_is_retryable_and_the_next_send_reconnects() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let smsc = Smsc::start(&py, &["--drop-after", "2"]).await;
    let numbers = [
        "+447700900001",
        "+447700900002",
        "+447700900003",
        "+447700900004",
        "+447700900005",
        "+447700900006",
    ];
    let ch = smsc.channel(&numbers, json!({"max_in_flight": 6, "window": 6}));
    let u = update(Some("Short."));
    let outcome = ch.send(&delivery(&u, None)).await;
    assert_eq!(outcome.results.len(), 6);
    let failed: Vec<String> = outcome
        .results
        .iter()
        .filter(|r| r.result.is_err())
        .filter_map(|r| r.recipient.clone())
        .collect();
    // The submits caught in the dropped session fail as retryable (sends that start
    // after the drop already bind a new session, so some may succeed).
    assert!(!failed.is_empty(), "{:?}", summary(&outcome));
    for r in &outcome.results {
        if let Err(e) = &r.result {
            assert!(e.is_retryable(), "{:?}", summary(&outcome));
            assert!(
                e.reason.starts_with("smpp: submit_sm failed"),
                "{}",
                e.reason
            );
        }
    }
    let dropped = std::fs::read_to_string(&smsc.record).unwrap_or_default();
    assert!(
        dropped.contains(r#""event": "dropped""#),
        "the peer never dropped the session"
    );
    // The retry binds a new session and goes through.
    let outcome = ch.send(&delivery(&u, Some(failed.clone()))).await;
    assert!(outcome.is_delivered(), "{:?}", summary(&outcome));
    assert_eq!(outcome.results.len(), failed.len());
    let accepted: Vec<String> = smsc
        .submits()
        .iter()
        .filter(|s| s["result"] == "accepted")
        .filter_map(|s| s["destination_addr"].as_str().map(|d| format!("+{d}")))
        .collect();
    for number in &failed {
        assert!(
            accepted.contains(number),
            "{number} never reached the SMSC after reconnecting"
        );
    }
}

#[tokio::test]
async fn smpp_keeps_at_most_window_submits_outstanding() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let smsc = Smsc::start(&py, &["--hold-ms", "300"]).await;
    let numbers: Vec<String> = (1..=6).map(|i| format!("+44770090000{i}")).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let ch = smsc.channel(&refs, json!({"max_in_flight": 6, "window": 2}));
    let outcome = ch.send(&delivery(&update(Some("Short.")), None)).await;
    assert!(outcome.is_delivered(), "{:?}", summary(&outcome));
    let outstanding: Vec<u64> = smsc
        .submits()
        .iter()
        .filter_map(|s| s["outstanding"].as_u64())
        .collect();
    assert_eq!(outstanding.len(), 6);
    // Never more than the window, and the window is used (two submits in flight at once).
    assert_eq!(outstanding.iter().max(), Some(&2), "{outstanding:?}");
}

#[tokio::test]
async fn smpp_over_tls_with_a_private_ca() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("clarion-smsc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir_arg = dir.to_string_lossy().to_string();
    let smsc = Smsc::start(&py, &["--tls-dir", &dir_arg]).await;
    let ca = dir.join("ca.pem").to_string_lossy().to_string();
    let ch = smsc.channel(&["+447700900123"], json!({"tls": true, "ca_file": ca}));
    let outcome = ch.send(&delivery(&update(Some("Short.")), None)).await;
    assert_eq!(summary(&outcome), ["+447700900123 ok sim-1"]);
    // Without the private CA the SMSC's certificate is not trusted: nothing is sent.
    let untrusting = smsc.channel(&["+447700900123"], json!({"tls": true}));
    let outcome = untrusting
        .send(&delivery(&update(Some("Short.")), None))
        .await;
    let Err(e) = &outcome.results[0].result else {
        panic!("sent over an untrusted TLS session")
    };
    assert!(e.is_retryable(), "{}", e.reason);
    assert!(e.reason.contains("cannot connect"), "{}", e.reason);
    assert_eq!(smsc.submits().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Throughput to the SMPP simulator. Run with `--ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement, prints messages per second"]
async fn measure_smpp_throughput() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let smsc = Smsc::start(&py, &[]).await;
    let n = 1000;
    let numbers: Vec<String> = (0..n).map(|i| format!("+4477009{i:05}")).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    let ch = smsc.channel(
        &refs,
        json!({"max_in_flight": 32, "window": 32, "rate_per_second": 10000, "max_segments": 1}),
    );
    let u = update(Some("Short."));
    // Bind first, so the measurement is of submits only.
    ch.healthcheck().await.expect("bind");
    let start = Instant::now();
    let outcome = ch.send(&delivery(&u, None)).await;
    let secs = start.elapsed().as_secs_f64();
    assert!(outcome.is_delivered(), "{:?}", &summary(&outcome)[..3]);
    eprintln!(
        "MEASURE smpp: {n} submit_sm in {secs:.2} s = {:.0} msg/s",
        n as f64 / secs
    );
}

#[tokio::test]
async fn smpp_unreachable_smsc_backs_off_without_hammering_it() {
    // Nothing listens on this port: no peer needed.
    let port = free_port();
    let ch = channel(json!({
        "provider": "smpp",
        "address": format!("127.0.0.1:{port}"),
        "system_id": "clarion",
        "password": {"value": "secret"},
        "source_addr": "+447700900999",
        "reconnect_backoff": "1h",
        "reconnect_backoff_max": "2h",
        "recipients": {"customers": ["+447700900123"]},
    }));
    let u = update(Some("Short."));
    let outcome = ch.send(&delivery(&u, None)).await;
    let Err(first) = &outcome.results[0].result else {
        panic!("sent to a closed port")
    };
    assert_eq!(
        first.class,
        ErrorClass::Retryable {
            retry_after: Some(Duration::from_secs(3600))
        }
    );
    assert!(first.reason.contains("cannot connect"), "{}", first.reason);
    // During the back-off a send fails at once, saying when the next try is.
    let outcome = ch.send(&delivery(&u, None)).await;
    let Err(second) = &outcome.results[0].result else {
        panic!("sent to a closed port")
    };
    assert!(
        second.reason.contains("next connect attempt in"),
        "{}",
        second.reason
    );
    assert!(
        matches!(second.class, ErrorClass::Retryable { retry_after: Some(d) } if d > Duration::from_secs(3000))
    );
}

/// An SMSC restart in the middle of a queue: the session drops, and the SMSC answers
/// the next binds with ESME_RBINDFAIL (0x0D) while it comes back up. Every error the
/// channel returns meanwhile (the lost submit, the refused binds, the sends during
/// the back-off) must be retryable, so that the daemon retries the messages and
/// they are delivered once the SMSC takes binds again; none is dead-lettered.
#[tokio::test]
async fn smpp_smsc_restart_with_refused_binds_is_retried_not_dead_lettered() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let smsc = Smsc::start(&py, &["--drop-after", "2", "--bind-fail-after-drop", "2"]).await;
    let numbers: Vec<String> = (1..=6).map(|i| format!("+44770090010{i}")).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    // One message at a time, like a queue being worked through.
    let ch = smsc.channel(
        &refs,
        json!({"max_in_flight": 1, "window": 1, "reconnect_backoff": "50ms", "reconnect_backoff_max": "200ms"}),
    );
    let u = update(Some("Short."));
    // What the daemon does: retry the retryable failures, waiting as asked, until
    // every number is delivered; a permanent error would be dead-lettered.
    let mut pending: Option<Vec<String>> = None;
    let mut retryable_seen = Vec::new();
    for attempt in 1..=50 {
        let mut d = delivery(&u, pending.clone());
        d.attempt = attempt;
        let outcome = ch.send(&d).await;
        let mut failed = Vec::new();
        let mut wait = Duration::from_millis(50);
        for r in &outcome.results {
            if let Err(e) = &r.result {
                match e.class {
                    ErrorClass::Retryable { retry_after } => {
                        wait = wait.max(retry_after.unwrap_or_default());
                        retryable_seen.push(e.reason.clone());
                        failed.extend(r.recipient.clone());
                    }
                    _ => panic!(
                        "{} would be dead-lettered: {} ({:?})",
                        r.recipient.as_deref().unwrap_or("-"),
                        e.reason,
                        e.code
                    ),
                }
            }
        }
        if failed.is_empty() {
            break;
        }
        pending = Some(failed);
        tokio::time::sleep(wait).await;
    }
    let record = std::fs::read_to_string(&smsc.record).unwrap_or_default();
    assert_eq!(
        record.matches(r#""event": "bind_refused""#).count(),
        2,
        "the SMSC did not refuse two binds after the restart: {record}"
    );
    assert!(
        retryable_seen
            .iter()
            .any(|r| r.contains("bind refused") && r.contains("0x0000000D")),
        "no refused bind reached a send: {retryable_seen:?}"
    );
    let mut accepted: Vec<String> = smsc
        .submits()
        .iter()
        .filter(|s| s["result"] == "accepted")
        .filter_map(|s| s["destination_addr"].as_str().map(|d| format!("+{d}")))
        .collect();
    accepted.sort();
    accepted.dedup();
    assert_eq!(
        accepted, numbers,
        "every number reached the SMSC once it was back"
    );
}
