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

/// One HTTPS webhook receiver (`tests/peers/webhook_peer.py`) with its own CA.
struct TlsPeer {
    _child: clarion_tests::ChildGuard,
    _scratch: crate::push::Scratch,
    dir: std::path::PathBuf,
    port: u16,
}

impl TlsPeer {
    async fn start(python: &std::path::Path, secret: &str) -> TlsPeer {
        let scratch = crate::push::Scratch::new("clarion-webhook-tls");
        let dir = scratch.0.clone();
        crate::push::make_server_certificate(&dir);
        let port = clarion_tests::free_port();
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/webhook_peer.py");
        let p = |f: &str| dir.join(f).display().to_string();
        let child = clarion_tests::ChildGuard::listening(
            std::process::Command::new(python)
                .arg(script)
                .args(["--port", &port.to_string()])
                .args(["--cert", &p("server.pem"), "--key", &p("server.key")])
                .args(["--secret", secret, "--out", &p("requests.jsonl")]),
            port,
            Duration::from_secs(30),
            "the webhook peer",
        )
        .await;
        TlsPeer {
            _child: child,
            _scratch: scratch,
            dir,
            port,
        }
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("peer JSON line"))
            .collect()
    }
}

/// The daemon to HTTPS receivers, end to end: the one whose CA the daemon's platform
/// trust store holds (`SSL_CERT_FILE`, as on a host with a private CA) gets every
/// update once, over HTTP/2 (offered by ALPN), signed so that the reference verifier
/// accepts it; the one whose certificate nobody vouches for gets no request at all,
/// and each update is dead-lettered with the certificate named as the reason and not
/// one character of the URL's path or query.
#[tokio::test]
async fn https_receivers_get_signed_updates_over_http2_and_unknown_certificates_are_refused() {
    let name = "https_receivers_get_signed_updates_over_http2_and_unknown_certificates_are_refused";
    let (Some(brokers), Some(python)) = (clarion_tests::kafka(name), clarion_tests::python(name))
    else {
        return;
    };
    let trusted = TlsPeer::start(&python, OLD).await;
    let untrusted = TlsPeer::start(&python, OLD).await;
    let w = clarion_tests::daemon::Wiring::new(&brokers, "webhook-tls", 1).await;
    let targets = format!(
        r#"
[targets.status-page]
type = "webhook"
audiences = ["customers"]
url = "https://127.0.0.1:{trusted}/hooks/status?token=s3cr3tQUERY"
secrets = [{{ value = "{OLD}" }}]

[targets.unvouched]
type = "webhook"
audiences = ["customers"]
url = "https://127.0.0.1:{untrusted}/hooks/s3cr3tPATH"
secrets = [{{ value = "{OLD}" }}]
# Spend the attempts rather than wait for the target to come back.
breaker = {{ failures = 1000 }}
"#,
        trusted = trusted.port,
        untrusted = untrusted.port,
    );
    let ca = trusted.dir.join("ca.pem").display().to_string();
    let daemon = clarion_tests::daemon::Process::start_env(
        &w.config(&targets),
        "webhook-tls",
        &[("SSL_CERT_FILE", &ca)],
    );
    let updates = samples::lifecycle(
        "INC-TLS",
        "TLS outage",
        &["customers"],
        jiff::Timestamp::now(),
    );
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;

    let dead =
        clarion_tests::kafka::read_all(&brokers, &w.dlq, updates.len(), Duration::from_secs(90))
            .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while trusted.requests().len() < updates.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = daemon.log_text();

    let got = trusted.requests();
    let ids: Vec<&str> = got
        .iter()
        .filter_map(|r| r["body"]["update_id"].as_str())
        .collect();
    let want: Vec<&str> = updates.iter().map(|u| u.update_id.as_str()).collect();
    assert_eq!(ids, want, "each update once, in order; log:\n{log}");
    for r in &got {
        assert_eq!(r["verified"], true, "{r}");
        assert_eq!(r["http_version"], "2", "{r}");
        assert_eq!(r["path"], "/hooks/status", "{r}");
    }

    assert!(
        untrusted.requests().is_empty(),
        "{:?}",
        untrusted.requests()
    );
    assert_eq!(dead.len(), updates.len(), "log:\n{log}");
    for d in &dead {
        d.assert_dlq_headers(&[("target", "unvouched")]);
        let reason = &d.headers["clarion.dlq.reason"];
        assert!(
            reason.contains("cannot connect") && reason.contains("certificate"),
            "{reason}"
        );
        assert!(
            reason.contains(&format!("https://127.0.0.1:{}", untrusted.port)),
            "{reason}"
        );
        assert!(!reason.contains("s3cr3t"), "{reason}");
    }
    assert!(
        !log.contains("s3cr3t"),
        "the log shows a URL's path or query:\n{log}"
    );
    // One line per failed attempt, ours: the verifier's own ERROR line (through the
    // `log` bridge) would say the same again, every attempt, without the target.
    assert!(
        log.contains("certificate") && !log.contains("failed to verify TLS certificate"),
        "the certificate error is logged twice:\n{log}"
    );
}

/// Tinyproxy (Debian's `tinyproxy`, a real HTTP proxy) on a free port, asking for
/// basic auth, logging every request it proxies.
struct Tinyproxy {
    _child: clarion_tests::ChildGuard,
    _scratch: crate::push::Scratch,
    log: std::path::PathBuf,
    port: u16,
}

impl Tinyproxy {
    async fn start(user: &str, password: &str) -> Tinyproxy {
        let scratch = crate::push::Scratch::new("clarion-tinyproxy");
        let dir = scratch.0.clone();
        let port = clarion_tests::free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 100\nAllow 127.0.0.1\nBasicAuth {user} {password}\nDisableViaHeader Yes\n",
                log.display()
            ),
        )
        .expect("write tinyproxy.conf");
        let child = clarion_tests::ChildGuard::listening(
            std::process::Command::new("tinyproxy")
                .args(["-d", "-c"])
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
            port,
            Duration::from_secs(10),
            "Debian's tinyproxy (scripts/test installs it)",
        )
        .await;
        Tinyproxy {
            _child: child,
            _scratch: scratch,
            log,
            port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A host whose only way out is a proxy: the daemon's environment names it
/// (`HTTPS_PROXY`, `HTTP_PROXY`, as curl reads them), with credentials, and every
/// webhook goes through it: to an `https://` receiver by a CONNECT tunnel, TLS
/// end to end (the receiver's reference verifier accepts each signature), and to an
/// `http://` one as a proxied request. Tinyproxy's own log shows both, and nothing
/// the daemon logs shows the proxy's password.
#[tokio::test]
async fn webhooks_go_through_the_proxy_the_environment_names() {
    let name = "webhooks_go_through_the_proxy_the_environment_names";
    let (Some(brokers), Some(python)) = (clarion_tests::kafka(name), clarion_tests::python(name))
    else {
        return;
    };
    let tls = TlsPeer::start(&python, OLD).await;
    let plain = Receiver::start(Behaviour::Always(204)).await;
    let proxy = Tinyproxy::start("ops", "s3cr3tPROXY").await;
    let w = clarion_tests::daemon::Wiring::new(&brokers, "webhook-proxy", 1).await;
    let targets = format!(
        r#"
[targets.status-page]
type = "webhook"
audiences = ["customers"]
url = "https://127.0.0.1:{tls}/hooks/status"
secrets = [{{ value = "{OLD}" }}]

[targets.chat-bridge]
type = "webhook"
audiences = ["customers"]
url = "{plain}"
"#,
        tls = tls.port,
        plain = plain.url,
    );
    let ca = tls.dir.join("ca.pem").display().to_string();
    let via = format!("http://ops:s3cr3tPROXY@127.0.0.1:{}", proxy.port);
    let daemon = clarion_tests::daemon::Process::start_env(
        &w.config(&targets),
        "webhook-proxy",
        &[
            ("SSL_CERT_FILE", &ca),
            ("HTTPS_PROXY", &via),
            ("HTTP_PROXY", &via),
            ("NO_PROXY", "example.invalid"),
        ],
    );
    let updates = samples::lifecycle(
        "INC-PROXY",
        "Proxy outage",
        &["customers"],
        jiff::Timestamp::now(),
    );
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;
    let n = updates.len();
    let both = plain
        .wait_until(Duration::from_secs(90), |got| got.len() >= n)
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tls.requests().len() < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (log, proxied) = (daemon.log_text(), proxy.log());
    assert!(
        both,
        "the http:// receiver got {:?}; log:\n{log}",
        plain.received().len()
    );
    let got = tls.requests();
    assert_eq!(got.len(), n, "{got:?}\nlog:\n{log}\ntinyproxy:\n{proxied}");
    assert!(got.iter().all(|r| r["verified"] == true), "{got:?}");

    assert!(
        proxied.contains(&format!("CONNECT 127.0.0.1:{}", tls.port)),
        "tinyproxy did not tunnel to the https receiver:\n{proxied}"
    );
    assert!(
        proxied.contains(&format!("POST {}", plain.url)),
        "tinyproxy did not forward to the http receiver:\n{proxied}"
    );
    assert!(!log.contains("s3cr3tPROXY"), "{log}");
}
