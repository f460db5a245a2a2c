//! The webhook channel against real HTTP peers on loopback: signatures checked by the
//! Standard Webhooks reference verifier for Python, and every class of reply.

use clarion_core::{Channel, Delivery, ErrorClass, SecretRef, samples};
use clarion_tests::receiver::{Behaviour, Receiver};
use clarion_webhook::WebhookConfig;
use std::sync::Arc;
use std::time::Duration;

struct Plain;
impl clarion_core::SecretResolver for Plain {
    fn resolve(&self, r: &SecretRef) -> Result<clarion_core::Secret, String> {
        match r {
            SecretRef::Value(s) => Ok(s.clone()),
            other => Err(format!("unexpected {other}")),
        }
    }
}

fn channel(url: &str, secrets: &[&str], timeout: Duration) -> clarion_webhook::WebhookChannel {
    let secrets: Vec<String> = secrets
        .iter()
        .map(|s| format!("{{ value = \"{s}\" }}"))
        .collect();
    let toml = format!(
        "url = \"{url}\"\nsecrets = [{}]\ntimeout = \"{}ms\"\n",
        secrets.join(", "),
        timeout.as_millis()
    );
    let config: WebhookConfig = toml_from_str(&toml);
    clarion_webhook::build("test-hook", &config, &Plain).expect("valid webhook config")
}

fn toml_from_str<T: serde::de::DeserializeOwned>(s: &str) -> T {
    // The daemon reads target tables through the `config` crate into JSON values;
    // do the same so that the test exercises the same serde path.
    let v: serde_json::Value = config_value(s);
    serde_json::from_value(v).expect("deserialize")
}

fn config_value(s: &str) -> serde_json::Value {
    let raw = clarion::config::parse_str(&format!(
        "[kafka]\nbrokers = \"x\"\ntopic = \"t\"\ndead_letter_topic = \"d\"\n[targets.x]\n{s}"
    ))
    .expect("toml");
    raw.targets["x"].clone()
}

fn deliveries(n: usize) -> Vec<Delivery> {
    samples::lifecycle(
        "INC-SIG",
        "Signed <outage> \"quoted\" – ünïcode",
        &["customers"],
        jiff::Timestamp::now(),
    )
    .into_iter()
    .cycle()
    .take(n)
    .map(|u| {
        Delivery::new(
            Arc::new(u),
            Arc::from("test-hook"),
            Arc::from(vec!["customers".to_string()]),
        )
    })
    .collect()
}

const OLD: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const NEW: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn signatures_verify_with_the_reference_verifier_across_a_rotation() {
    let Some(python) =
        clarion_tests::python("signatures_verify_with_the_reference_verifier_across_a_rotation")
    else {
        return;
    };
    let rx = Receiver::start(Behaviour::Always(200)).await;
    // Rotation: first only the old secret, then both while receivers switch, then
    // only the new one.
    // (secrets the channel signs with, [(secret the receiver checks with, verifies?)])
    type Phase = (&'static [&'static str], &'static [(&'static str, bool)]);
    let phases: [Phase; 3] = [
        (&[OLD], &[(OLD, true), (NEW, false)]),
        (&[OLD, NEW], &[(OLD, true), (NEW, true)]),
        (&[NEW], &[(OLD, false), (NEW, true)]),
    ];
    let mut cases = Vec::new();
    for (secrets, expectations) in phases {
        let before = rx.received().len();
        let ch = channel(&rx.url, secrets, Duration::from_secs(10));
        for d in deliveries(2) {
            let out = ch.send(&d).await;
            assert!(out.is_delivered(), "{out:?}");
        }
        for r in &rx.received()[before..] {
            for (secret, expect) in expectations {
                cases.push(serde_json::json!({
                    "secret": secret,
                    "headers": r.headers,
                    "body": String::from_utf8(r.body.clone()).expect("utf-8 body"),
                    "expect": expect,
                }));
            }
        }
    }
    assert_eq!(cases.len(), 12);
    let file = std::env::temp_dir().join(clarion_tests::unique_topic("webhook-cases.json"));
    std::fs::write(&file, serde_json::to_vec(&cases).expect("json")).expect("write cases");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/verify_webhooks.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&file)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reference verifier disagreed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("12 of 12 as expected"), "{stdout}");
}

#[tokio::test]
async fn replies_are_classified() {
    async fn classify(
        behaviour: Behaviour,
        timeout: Duration,
    ) -> (ErrorClass, String, Option<String>) {
        let rx = Receiver::start(behaviour).await;
        let ch = channel(&rx.url, &[OLD], timeout);
        let d = &deliveries(1)[0];
        let out = ch.send(d).await;
        let e = out.results[0].result.clone().expect_err("must fail");
        (e.class, e.reason, e.code)
    }
    let retryable = |c: ErrorClass| matches!(c, ErrorClass::Retryable { .. });
    for status in [408, 429, 500, 502, 503, 504] {
        let (class, reason, code) =
            classify(Behaviour::Always(status), Duration::from_secs(10)).await;
        assert!(retryable(class), "{status} must be retryable: {reason}");
        assert_eq!(code.as_deref(), Some(status.to_string().as_str()));
    }
    for status in [400, 401, 403, 404, 410, 422, 301, 302, 307] {
        let (class, reason, _) = classify(Behaviour::Always(status), Duration::from_secs(10)).await;
        assert_eq!(
            class,
            ErrorClass::Permanent,
            "{status} must be permanent: {reason}"
        );
        if (300..400).contains(&status) {
            assert!(reason.contains("redirects are not followed"), "{reason}");
        }
    }
    // Too slow: the attempt times out, which is worth a retry.
    let (class, reason, _) = classify(
        Behaviour::Slow(Duration::from_secs(5)),
        Duration::from_millis(300),
    )
    .await;
    assert!(retryable(class) && reason.contains("timed out"), "{reason}");
    // Nobody listening.
    let port = clarion_tests::free_port();
    let ch = channel(
        &format!("http://127.0.0.1:{port}/hook"),
        &[OLD],
        Duration::from_secs(5),
    );
    let out = ch.send(&deliveries(1)[0]).await;
    let e = out.results[0].result.clone().expect_err("refused");
    assert!(
        e.is_retryable() && e.reason.contains("cannot connect"),
        "{}",
        e.reason
    );
}

#[tokio::test]
async fn retry_after_is_honoured() {
    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async {
            let mut h = HeaderMap::new();
            h.insert("retry-after", HeaderValue::from_static("7"));
            (StatusCode::TOO_MANY_REQUESTS, h, "slow down")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let ch = channel(
        &format!("http://{addr}/hook"),
        &[OLD],
        Duration::from_secs(5),
    );
    let out = ch.send(&deliveries(1)[0]).await;
    let e = out.results[0].result.clone().expect_err("429");
    assert_eq!(
        e.class,
        ErrorClass::Retryable {
            retry_after: Some(Duration::from_secs(7))
        }
    );
    assert!(
        e.reason.contains("slow down"),
        "the peer's words are kept: {}",
        e.reason
    );
}
