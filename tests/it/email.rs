//! Integration tests: the email channel against real SMTP servers it does not share
//! code with. aiosmtpd (`tests/peers/smtp_peer.py`, STARTTLS with a test CA, AUTH)
//! parses what arrived with Python's `email` package; Postfix's `smtp-sink` injects
//! 4xx, 5xx, 421 and dropped connections.

use clarion_core::{
    Channel, Delivery, ErrorClass, RecipientResult, Secret, SecretRef, SecretResolver,
};
use clarion_email::{EmailChannel, EmailConfig};
use clarion_tests::{ChildGuard, free_port, python, wait_for_port};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/smtp_peer.py");
const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
const TARGET: &str = "status-mail";
const WAIT: Duration = Duration::from_secs(60);

struct Secrets;

impl SecretResolver for Secrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        match reference {
            SecretRef::Value(s) => Ok(s.clone()),
            other => Err(format!("{other} is not available in tests")),
        }
    }
}

/// A running aiosmtpd peer and the JSON lines it writes, one per received message.
pub(crate) struct SmtpPeer {
    pub(crate) port: u16,
    dir: PathBuf,
    _child: ChildGuard,
}

/// Peer arguments for STARTTLS with a generated test CA and AUTH as `clarion` /
/// `s3cret` (what [`tls_auth`] configures on the client side).
const SECURED: [&str; 6] = [
    "--certs",
    "{dir}/certs",
    "--user",
    "clarion",
    "--password",
    "s3cret",
];

impl SmtpPeer {
    /// A peer with STARTTLS and AUTH, plus `extra` arguments.
    pub(crate) async fn start_secured(python: &Path, extra: &[&str]) -> SmtpPeer {
        let args: Vec<&str> = SECURED.iter().chain(extra).copied().collect();
        SmtpPeer::start(python, &args).await
    }

    pub(crate) async fn start(python: &Path, args: &[&str]) -> SmtpPeer {
        SmtpPeer::start_on(python, free_port(), args).await
    }

    /// A peer on a given port: for a mail server that was down (nothing listening
    /// on its port) and comes back.
    pub(crate) async fn start_on(python: &Path, port: u16, args: &[&str]) -> SmtpPeer {
        let dir = std::env::temp_dir().join(format!("clarion-email-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the peer's directory");
        let child = ChildGuard::spawn(
            Command::new(python)
                .arg(PEER)
                .arg("--port")
                .arg(port.to_string())
                .arg("--out")
                .arg(dir.join("received.jsonl"))
                .args(
                    args.iter()
                        .map(|a| a.replace("{dir}", &dir.display().to_string())),
                )
                .stdout(Stdio::null()),
        )
        .expect("start the aiosmtpd peer");
        assert!(
            wait_for_port(port, WAIT).await,
            "aiosmtpd peer did not start on {port}"
        );
        SmtpPeer {
            port,
            dir,
            _child: child,
        }
    }

    pub(crate) fn ca(&self) -> String {
        self.dir.join("certs/ca.pem").display().to_string()
    }

    /// Waits until at least `n` messages have arrived, and returns all of them.
    pub(crate) async fn received(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = std::fs::read_to_string(self.dir.join("received.jsonl")).unwrap_or_default();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).expect("the peer writes JSON lines"))
                .collect();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpPeer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Postfix's smtp-sink with fault-injection flags; no TLS, no AUTH.
async fn smtp_sink(flags: &[&str]) -> Option<(u16, ChildGuard)> {
    if !Path::new(SMTP_SINK).exists() {
        eprintln!("SKIPPED: {SMTP_SINK} is missing (Debian package postfix)");
        return None;
    }
    let port = free_port();
    let child = ChildGuard::spawn(
        Command::new(SMTP_SINK)
            .args(["-u", "nobody"])
            .args(flags)
            .arg(format!("127.0.0.1:{port}"))
            .arg("16")
            .stdout(Stdio::null()),
    )
    .expect("start smtp-sink");
    assert!(
        wait_for_port(port, WAIT).await,
        "smtp-sink did not start on {port}"
    );
    Some((port, child))
}

/// The channel config as the daemon would hand it over (after removing `type`,
/// `audiences` and `retry`), with `overrides` merged in.
fn config(port: u16, overrides: Value) -> EmailConfig {
    let mut base = json!({
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "from": "Acme Status <status@acme.example>",
        "reply_to": "support@acme.example",
        "list_unsubscribe": "<mailto:unsubscribe@acme.example>",
        "recipients": {
            "customers": ["Ann <ann@customers.example>", "bob@customers.example"],
            "regulators": ["list:regulators"],
        },
        "lists": { "regulators": ["desk@regulator.example", "ann@customers.example"] },
        "connect_timeout": "20s",
        "command_timeout": "20s",
    });
    if let (Some(b), Some(o)) = (base.as_object_mut(), overrides.as_object()) {
        for (k, v) in o {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(base).expect("test config deserializes")
}

fn tls_auth(peer: &SmtpPeer, password: &str) -> Value {
    json!({
        "tls": "starttls",
        "tls_ca_file": peer.ca(),
        "username": "clarion",
        "password": { "value": password },
    })
}

fn channel(config: &EmailConfig) -> EmailChannel {
    clarion_email::build(TARGET, config, &Secrets).expect("valid config")
}

fn update(n: usize) -> Arc<clarion_core::IncidentUpdate> {
    let mut u = clarion_core::samples::lifecycle(
        &format!("INC-{n}"),
        "Störung: mobile data — Nord & Süd <now> ✅",
        &["customers", "regulators"],
        jiff::Timestamp::UNIX_EPOCH,
    )
    .remove(0);
    u.audience_messages.insert(
        "regulators".into(),
        "Formal notice: <outage> in région Nord.".into(),
    );
    Arc::new(u)
}

fn delivery(n: usize, audiences: &[&str]) -> Delivery {
    Delivery::new(
        update(n),
        Arc::from(TARGET),
        audiences
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .into(),
    )
}

fn result_for<'a>(results: &'a [RecipientResult], who: &str) -> &'a RecipientResult {
    results
        .iter()
        .find(|r| r.recipient.as_deref() == Some(who))
        .unwrap_or_else(|| panic!("no result for {who} in {results:?}"))
}

fn by_rcpt<'a>(messages: &'a [Value], who: &str) -> &'a Value {
    messages
        .iter()
        .find(|m| {
            m["rcpt_tos"]
                .as_array()
                .is_some_and(|r| r.iter().any(|a| a == who))
        })
        .unwrap_or_else(|| panic!("nothing arrived for {who}: {messages:?}"))
}

#[tokio::test]
async fn delivers_multipart_mail_over_starttls_with_auth() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let peer = SmtpPeer::start_secured(&py, &[]).await;
    let ch = channel(&config(peer.port, tls_auth(&peer, "s3cret")));
    ch.healthcheck().await.expect("healthcheck passes");

    let d = delivery(1, &["customers", "regulators"]);
    let outcome = ch.send(&d).await;
    assert!(outcome.is_delivered(), "{outcome:?}");
    let who: Vec<_> = outcome
        .results
        .iter()
        .filter_map(|r| r.recipient.clone())
        .collect();
    assert_eq!(
        who,
        [
            "ann@customers.example",
            "bob@customers.example",
            "desk@regulator.example"
        ]
    );
    for r in &outcome.results {
        let id = r
            .result
            .as_ref()
            .ok()
            .and_then(|rc| rc.provider_id.clone())
            .unwrap_or_default();
        assert!(
            id.starts_with('Q'),
            "the queue id from the 250 reply: {id:?}"
        );
    }

    let got = peer.received(3).await;
    assert_eq!(got.len(), 3, "one message per recipient: {got:?}");
    let message_id = format!("<{}@acme.example>", d.key.as_str());
    for m in &got {
        assert_eq!(m["tls"], true, "sent over STARTTLS");
        assert_eq!(m["auth_user"], "clarion");
        assert_eq!(m["mail_from"], "status@acme.example");
        assert_eq!(m["rcpt_tos"].as_array().map(Vec::len), Some(1));
        assert_eq!(m["defects"], json!([]), "the parser found defects: {m}");
        assert_eq!(m["content_type"], "multipart/alternative");
        assert_eq!(m["parts"], json!(["text/plain", "text/html"]));
        let h = &m["headers"];
        assert_eq!(
            h["subject"],
            "[Investigating] Störung: mobile data — Nord & Süd <now> ✅"
        );
        assert_eq!(h["message-id"], message_id.as_str());
        assert_eq!(h["from"], "Acme Status <status@acme.example>");
        assert_eq!(h["reply-to"], "support@acme.example");
        assert_eq!(h["list-unsubscribe"], "<mailto:unsubscribe@acme.example>");
        assert_eq!(h["x-clarion-incident-id"], "INC-1");
        assert_eq!(h["x-clarion-update-id"], "INC-1-u1");
        assert_eq!(h["x-clarion-status"], "investigating");
        let html = m["html"].as_str().unwrap_or_default();
        assert!(
            html.contains("Störung: mobile data — Nord &amp; Süd &lt;now&gt; ✅"),
            "{html}"
        );
    }
    let ann = by_rcpt(&got, "ann@customers.example");
    assert_eq!(ann["headers"]["to"], "Ann <ann@customers.example>");
    assert_eq!(ann["headers"]["x-clarion-audience"], "customers");
    assert!(
        ann["text"]
            .as_str()
            .unwrap_or_default()
            .contains("We are investigating reports")
    );
    // The regulators' desk gets the regulators' text, escaped in HTML.
    let desk = by_rcpt(&got, "desk@regulator.example");
    assert_eq!(desk["headers"]["x-clarion-audience"], "regulators");
    assert!(
        desk["text"]
            .as_str()
            .unwrap_or_default()
            .contains("Formal notice: <outage> in région Nord.")
    );
    assert!(
        desk["html"]
            .as_str()
            .unwrap_or_default()
            .contains("Formal notice: &lt;outage&gt; in région Nord.")
    );

    // A redelivery carries the same Message-ID, so it is recognisable as one.
    let mut again = d.clone();
    again.attempt = 2;
    again.recipients = Some(vec!["bob@customers.example".into()]);
    let outcome = ch.send(&again).await;
    assert!(outcome.is_delivered(), "{outcome:?}");
    assert_eq!(outcome.results.len(), 1);
    let got = peer.received(4).await;
    assert_eq!(got.len(), 4);
    assert_eq!(got[3]["rcpt_tos"], json!(["bob@customers.example"]));
    assert_eq!(got[3]["headers"]["message-id"], message_id.as_str());
}

#[tokio::test]
async fn delivers_over_implicit_tls() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let peer = SmtpPeer::start_secured(&py, &["--implicit-tls"]).await;
    let mut overrides = tls_auth(&peer, "s3cret");
    overrides["tls"] = json!("implicit");
    let ch = channel(&config(peer.port, overrides));
    ch.healthcheck().await.expect("healthcheck passes");
    let outcome = ch.send(&delivery(9, &["customers"])).await;
    assert!(outcome.is_delivered(), "{outcome:?}");
    let got = peer.received(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.iter()
            .all(|m| m["tls"] == true && m["auth_user"] == "clarion"),
        "{got:?}"
    );
}

#[tokio::test]
async fn one_rejected_recipient_fails_alone() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let peer = SmtpPeer::start(
        &py,
        &[
            "--reject",
            "bob@customers.example",
            "--tempfail",
            "desk@regulator.example",
        ],
    )
    .await;
    let check = |results: &[RecipientResult]| {
        assert!(
            result_for(results, "ann@customers.example").result.is_ok(),
            "{results:?}"
        );
        let bob = result_for(results, "bob@customers.example");
        let err = bob.result.as_ref().expect_err("bob is rejected");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(err.code.as_deref(), Some("550"));
        assert!(
            err.reason
                .contains("Recipient address rejected: User unknown"),
            "{err:?}"
        );
        assert!(err.reason.contains("RCPT TO"), "{err:?}");
        assert!(err.reason.contains(TARGET), "{err:?}");
        let desk = result_for(results, "desk@regulator.example");
        let err = desk.result.as_ref().expect_err("desk is deferred");
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(err.code.as_deref(), Some("450"));
    };

    // Bcc: one transaction per audience; the refused RCPT does not stop the others.
    let bcc = channel(&config(peer.port, json!({"send_mode": "bcc"})));
    let outcome = bcc.send(&delivery(2, &["customers", "regulators"])).await;
    assert_eq!(outcome.results.len(), 3, "{outcome:?}");
    check(&outcome.results);
    let got = peer.received(1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["rcpt_tos"], json!(["ann@customers.example"]));
    assert_eq!(got[0]["headers"]["to"], "undisclosed-recipients:;");

    // One message per recipient: the same results, and the same single arrival.
    let per = channel(&config(peer.port, json!({})));
    let outcome = per.send(&delivery(3, &["customers", "regulators"])).await;
    check(&outcome.results);
    let got = peer.received(2).await;
    assert_eq!(got.len(), 2, "{got:?}");

    // The daemon's retry names only the failed recipient: ann must not get it twice.
    let mut retry = delivery(3, &["customers", "regulators"]);
    retry.attempt = 2;
    retry.recipients = Some(vec!["desk@regulator.example".into()]);
    let outcome = per.send(&retry).await;
    assert_eq!(outcome.results.len(), 1, "{outcome:?}");
    assert!(
        outcome.results[0]
            .result
            .as_ref()
            .is_err_and(|e| e.is_retryable())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(peer.received(2).await.len(), 2, "nothing new arrived");
}

#[tokio::test]
async fn smtp_sink_faults_are_classified() {
    let Some(_) = python(module_path!()) else {
        return;
    };
    // (smtp-sink flags, retryable?, expected code)
    let cases: [(&[&str], bool, Option<&str>); 4] = [
        (&["-r", "RCPT"], true, Some("450")),
        (&["-f", "RCPT"], false, Some("500")),
        (&["-Q", "RCPT"], true, Some("421")),
        (&["-q", "RCPT"], true, None),
    ];
    for (flags, retryable, code) in cases {
        let Some((port, _sink)) = smtp_sink(flags).await else {
            return;
        };
        let ch = channel(&config(port, json!({})));
        let outcome = ch.send(&delivery(4, &["customers"])).await;
        assert_eq!(outcome.results.len(), 2, "{flags:?}: {outcome:?}");
        for r in &outcome.results {
            let err = r.result.as_ref().expect_err("every RCPT fails");
            assert_eq!(err.is_retryable(), retryable, "{flags:?}: {err:?}");
            if !retryable {
                assert_eq!(err.class, ErrorClass::Permanent);
            }
            assert_eq!(err.code.as_deref(), code, "{flags:?}: {err:?}");
            assert!(err.reason.contains(TARGET), "{err:?}");
        }
    }
    // A clean smtp-sink accepts, and the TLS-required channel refuses to talk to it
    // in clear text.
    let Some((port, _sink)) = smtp_sink(&[]).await else {
        return;
    };
    let outcome = channel(&config(port, json!({})))
        .send(&delivery(5, &["customers"]))
        .await;
    assert!(outcome.is_delivered(), "{outcome:?}");
    let opportunistic = channel(&config(port, json!({"tls": "starttls_opportunistic"})));
    let outcome = opportunistic.send(&delivery(5, &["customers"])).await;
    assert!(
        outcome.is_delivered(),
        "clear text when STARTTLS is not offered: {outcome:?}"
    );
    let strict = channel(&config(port, json!({"tls": "starttls"})));
    let outcome = strict.send(&delivery(5, &["customers"])).await;
    for r in &outcome.results {
        let err = r.result.as_ref().expect_err("no STARTTLS, no mail");
        assert_eq!(err.class, ErrorClass::Permanent, "{err:?}");
        assert!(
            err.reason.contains(TARGET) && err.reason.contains("STARTTLS"),
            "{err:?}"
        );
    }
    let err = strict
        .healthcheck()
        .await
        .expect_err("healthcheck fails too");
    assert!(err.reason.contains("STARTTLS is not supported"), "{err:?}");
}

#[tokio::test]
async fn a_421_drops_the_session_and_the_next_send_uses_a_new_one() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let peer = SmtpPeer::start(&py, &["--close-on-rcpt-once"]).await;
    // Bcc: both recipients in one envelope, so the 421 ends it for both.
    let ch = channel(&config(
        peer.port,
        json!({"pool_max_size": 1, "send_mode": "bcc"}),
    ));
    let outcome = ch.send(&delivery(6, &["regulators"])).await;
    assert_eq!(outcome.results.len(), 2, "{outcome:?}");
    for r in &outcome.results {
        let err = r.result.as_ref().expect_err("421 on the first RCPT");
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(err.code.as_deref(), Some("421"), "{err:?}");
    }

    for n in [7, 8] {
        let outcome = ch.send(&delivery(n, &["regulators"])).await;
        assert!(outcome.is_delivered(), "{outcome:?}");
    }
    let got = peer.received(2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        got[0]["rcpt_tos"],
        json!(["desk@regulator.example", "ann@customers.example"])
    );
    assert_eq!(
        got[0]["peer"], got[1]["peer"],
        "both later messages over the one new session"
    );
}

#[tokio::test]
async fn the_pool_reuses_a_handful_of_sessions() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let peer = SmtpPeer::start_secured(&py, &[]).await;
    let mut overrides = tls_auth(&peer, "s3cret");
    overrides["pool_max_size"] = json!(3);
    let ch = Arc::new(channel(&config(peer.port, overrides)));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..30 {
        let ch = Arc::clone(&ch);
        tasks.spawn(async move { ch.send(&delivery(100 + n, &["customers"])).await });
    }
    while let Some(done) = tasks.join_next().await {
        let outcome = done.expect("task");
        assert!(outcome.is_delivered(), "{outcome:?}");
    }
    let got = peer.received(60).await;
    assert_eq!(got.len(), 60);
    let mut peers: Vec<&str> = got.iter().filter_map(|m| m["peer"].as_str()).collect();
    peers.sort_unstable();
    peers.dedup();
    assert!(
        !peers.is_empty() && peers.len() <= 3,
        "60 messages over {} sessions: {peers:?}",
        peers.len()
    );
}

#[tokio::test]
async fn setup_errors_are_clear_and_name_the_target() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let peer = SmtpPeer::start_secured(&py, &[]).await;

    let wrong = channel(&config(peer.port, tls_auth(&peer, "wrong")));
    let err = wrong.healthcheck().await.expect_err("wrong password");
    assert_eq!(err.class, ErrorClass::Permanent, "{err:?}");
    assert_eq!(err.code.as_deref(), Some("535"));
    assert!(
        err.reason.contains("email target `status-mail`") && err.reason.contains("AUTH"),
        "{err:?}"
    );
    let outcome = wrong.send(&delivery(7, &["customers"])).await;
    assert!(
        outcome
            .results
            .iter()
            .all(|r| r.result.as_ref().err() == Some(&err)),
        "{outcome:?}"
    );

    // A CA the server's certificate does not chain to.
    let mut untrusted = tls_auth(&peer, "s3cret");
    untrusted["tls_ca_file"] = json!(null);
    let err = channel(&config(peer.port, untrusted))
        .healthcheck()
        .await
        .expect_err("untrusted cert");
    assert_eq!(err.class, ErrorClass::Permanent, "{err:?}");
    assert!(
        err.reason.contains("email target `status-mail`") && err.reason.contains("STARTTLS"),
        "{err:?}"
    );

    let nowhere = channel(&config(25, json!({"host": "no-such-host.invalid"})));
    let err = nowhere.healthcheck().await.expect_err("unknown host");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        err.reason.contains("email target `status-mail`")
            && err.reason.contains("no-such-host.invalid:25"),
        "{err:?}"
    );
    let outcome = nowhere.send(&delivery(7, &["customers"])).await;
    assert!(
        outcome
            .results
            .iter()
            .all(|r| r.result.as_ref().is_err_and(|e| e.is_retryable()))
    );

    assert!(peer.received(0).await.is_empty(), "nothing was delivered");
}

/// Opportunistic STARTTLS with credentials against a server that does not offer
/// STARTTLS (what a man in the middle who strips it produces): no AUTH goes out, and
/// the delivery fails permanently, saying why. With `allow_plaintext_auth` the same
/// server gets the AUTH, which shows that the peer's log would have caught it.
#[tokio::test]
async fn opportunistic_starttls_never_sends_auth_in_clear_text() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    // No --certs: the peer offers AUTH but not STARTTLS.
    let peer = SmtpPeer::start(
        &py,
        &[
            "--user",
            "clarion",
            "--password",
            "s3cret",
            "--auth-log",
            "{dir}/auth.jsonl",
        ],
    )
    .await;
    let auth_log = || std::fs::read_to_string(peer.dir.join("auth.jsonl")).unwrap_or_default();
    let stripped = json!({
        "tls": "starttls_opportunistic",
        "username": "clarion",
        "password": { "value": "s3cret" },
    });
    let ch = channel(&config(peer.port, stripped.clone()));
    let outcome = ch.send(&delivery(11, &["customers"])).await;
    assert_eq!(outcome.results.len(), 2, "{outcome:?}");
    for r in &outcome.results {
        let err = r.result.as_ref().expect_err("no STARTTLS, no AUTH");
        assert_eq!(err.class, ErrorClass::Permanent, "{err:?}");
        assert!(
            err.reason.contains("email target `status-mail`")
                && err.reason.contains("did not offer STARTTLS")
                && err.reason.contains("credentials were not sent")
                && err.reason.contains("allow_plaintext_auth"),
            "{err:?}"
        );
    }
    let err = ch
        .healthcheck()
        .await
        .expect_err("check-config --connect says so too");
    assert!(err.reason.contains("did not offer STARTTLS"), "{err:?}");
    assert_eq!(auth_log(), "", "the peer saw an AUTH");
    assert!(peer.received(0).await.is_empty(), "nothing was delivered");

    // Said explicitly: the password goes out in clear text, and the mail with it.
    let mut allowed = stripped;
    allowed["allow_plaintext_auth"] = json!(true);
    let outcome = channel(&config(peer.port, allowed))
        .send(&delivery(12, &["customers"]))
        .await;
    assert!(outcome.is_delivered(), "{outcome:?}");
    let log = auth_log();
    assert!(
        log.lines()
            .next()
            .is_some_and(|l| l.contains("\"login\": \"clarion\"") && l.contains("\"tls\": false")),
        "{log}"
    );
}

/// Throughput through the pool to a local aiosmtpd. Run with
/// `cargo test -p clarion-tests --test it email::bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints messages per second"]
async fn bench_messages_per_second() {
    let Some(py) = python(module_path!()) else {
        return;
    };
    let n: usize = std::env::var("CLARION_EMAIL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for (label, starttls) in [("plain", false), ("starttls+auth", true)] {
        let args: &[&str] = if starttls {
            &[
                "--quiet",
                "--certs",
                "{dir}/certs",
                "--user",
                "clarion",
                "--password",
                "s3cret",
            ]
        } else {
            &["--quiet"]
        };
        let peer = SmtpPeer::start(&py, args).await;
        let mut overrides = if starttls {
            tls_auth(&peer, "s3cret")
        } else {
            json!({})
        };
        overrides["pool_max_size"] = json!(4);
        overrides["recipients"] = json!({ "customers": ["ann@customers.example"] });
        let ch = Arc::new(channel(&config(peer.port, overrides)));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let ch = Arc::clone(&ch);
            tasks.spawn(async move {
                ch.send(&delivery(10_000 + i, &["customers"]))
                    .await
                    .is_delivered()
            });
        }
        let mut ok = 0;
        while let Some(done) = tasks.join_next().await {
            ok += usize::from(done.unwrap_or(false));
        }
        let secs = started.elapsed().as_secs_f64();
        let got = peer.received(n).await.len();
        let mut peers: Vec<String> = peer
            .received(n)
            .await
            .iter()
            .filter_map(|m| m["peer"].as_str().map(String::from))
            .collect();
        peers.sort_unstable();
        peers.dedup();
        println!(
            "email bench ({label}): {ok}/{n} delivered, {got} received over {} connections in {secs:.2}s = {:.0} msgs/s",
            peers.len(),
            n as f64 / secs
        );
        assert_eq!(got, n);
    }
}
