//! End to end from a real Apache Kafka broker to a real SMTP server: ops publish
//! incident lifecycles, the daemon (in process) sends them through an `email` target
//! to aiosmtpd (`tests/peers/smtp_peer.py`, STARTTLS with a test CA and AUTH), which
//! parses every message with Python's own `email` package.
//!
//! What a user cares about: every accepted recipient gets every update exactly once,
//! in order, with the deterministic Message-ID that makes a redelivery recognisable;
//! an address the server refuses with 550 is dead-lettered once per update, naming
//! the recipient, and does not hold up the others; and the consumer's offsets reach
//! the end.

use crate::email::SmtpPeer;
use clarion_core::{IdempotencyKey, IncidentUpdate, samples};
use clarion_tests::daemon::{InProcess, Wiring};
use clarion_tests::kafka::{committed_and_end, publish_updates, read_all};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
const TARGET: &str = "status-mail";
const PARTITIONS: i32 = 2;
/// The customers' addresses the server accepts, and the regulators' one.
const ACCEPTED: [(&str, &str); 3] = [
    ("ann@customers.example", "customers"),
    ("bob@customers.example", "customers"),
    ("desk@regulator.example", "regulators"),
];
/// A customer address the server refuses with `550 5.1.1 ... User unknown`.
const REJECTED: &str = "gone@customers.example";

/// The `[targets.status-mail]` table as an operator would write it.
fn email_target(peer: &SmtpPeer) -> String {
    format!(
        r#"[targets.{TARGET}]
type = "email"
audiences = ["customers", "regulators"]
host = "127.0.0.1"
port = {port}
tls = "starttls"
tls_ca_file = "{ca}"
username = "clarion"
password = {{ value = "s3cret" }}
from = "Acme Status <status@acme.example>"
reply_to = "support@acme.example"
connect_timeout = "20s"
command_timeout = "20s"

[targets.{TARGET}.recipients]
customers = ["Ann <ann@customers.example>", "bob@customers.example", "{REJECTED}"]
regulators = ["desk@regulator.example"]
"#,
        port = peer.port,
        ca = peer.ca(),
    )
}

/// The single envelope recipient of a per-recipient message.
fn rcpt(m: &Value) -> &str {
    match m["rcpt_tos"].as_array().map(Vec::as_slice) {
        Some([one]) => one.as_str().unwrap_or_default(),
        _ => panic!("one envelope recipient per message: {m}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_published_to_kafka_arrive_as_mail() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let peer = SmtpPeer::start_secured(&py, &["--reject", REJECTED]).await;
    let w = Wiring::new(&brokers, "email-e2e", PARTITIONS).await;
    let daemon = InProcess::start(&w.config(&email_target(&peer)));

    let updates: Vec<IncidentUpdate> = (0..2)
        .flat_map(|i| {
            samples::lifecycle(
                &format!("MAIL-{i}"),
                "Mobile data outage",
                &["customers", "regulators"],
                jiff::Timestamp::now(),
            )
        })
        .collect();
    publish_updates(&brokers, &w.topic, &updates).await;
    let n = updates.len();
    let by_id: BTreeMap<&str, &IncidentUpdate> =
        updates.iter().map(|u| (u.update_id.as_str(), u)).collect();

    let want = n * ACCEPTED.len();
    // The peer's own wait is shorter than WAIT; keep asking until WAIT has passed.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut arrived = peer.received(want).await.len();
    while arrived < want && tokio::time::Instant::now() < deadline {
        arrived = peer.received(want).await.len();
    }
    let dead = read_all(&brokers, &w.dlq, n, WAIT).await;
    let offsets = w.wait_committed(PARTITIONS).await;
    daemon.stop().await;
    // Everything is resolved and the daemon has stopped: this is all that will arrive.
    let got = peer.received(want).await;
    let dead_written = committed_and_end(&w.brokers, &w.group, &w.dlq, 1)[0].1;
    assert!(arrived >= want, "{arrived} of {want} messages arrived");

    // What the SMTP server received, as Python's email package parsed it.
    assert_eq!(
        got.len(),
        want,
        "one message per accepted recipient and update, no duplicates: {got:#?}"
    );
    let mut order: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for m in &got {
        let who = rcpt(m);
        let audience = ACCEPTED
            .iter()
            .find(|(a, _)| *a == who)
            .map(|(_, aud)| *aud)
            .unwrap_or_else(|| panic!("mail for an address that should get none: {m}"));
        assert_eq!(m["tls"], true, "sent over STARTTLS: {m}");
        assert_eq!(m["auth_user"], "clarion", "{m}");
        assert_eq!(m["mail_from"], "status@acme.example", "{m}");
        assert_eq!(m["defects"], json!([]), "the parser found defects: {m}");
        assert_eq!(m["content_type"], "multipart/alternative", "{m}");
        assert_eq!(m["parts"], json!(["text/plain", "text/html"]), "{m}");
        let h = &m["headers"];
        let update_id = h["x-clarion-update-id"].as_str().unwrap_or_default();
        let u = by_id
            .get(update_id)
            .unwrap_or_else(|| panic!("X-Clarion-Update-Id of no published update: {m}"));
        let key = IdempotencyKey::new(&u.update_id, TARGET);
        assert_eq!(
            h["message-id"],
            format!("<{}@acme.example>", key.as_str()),
            "the deterministic Message-ID: {m}"
        );
        assert_eq!(h["x-clarion-incident-id"], u.incident_id.as_str(), "{m}");
        assert_eq!(
            h["x-clarion-status"],
            serde_json::to_value(u.status).expect("status"),
            "{m}"
        );
        assert_eq!(h["x-clarion-audience"], audience, "{m}");
        assert_eq!(h["from"], "Acme Status <status@acme.example>", "{m}");
        assert_eq!(h["reply-to"], "support@acme.example", "{m}");
        assert_eq!(h["auto-submitted"], "auto-generated", "{m}");
        let text = m["text"].as_str().unwrap_or_default();
        let html = m["html"].as_str().unwrap_or_default();
        for part in [text, html] {
            assert!(
                part.contains(&u.message) && part.contains(&u.update_id),
                "both parts carry the message and the update id: {m}"
            );
        }
        order
            .entry((who, u.incident_id.as_str()))
            .or_default()
            .push(u.sequence);
    }
    let ann = got
        .iter()
        .find(|m| rcpt(m) == "ann@customers.example")
        .expect("ann got mail");
    assert_eq!(ann["headers"]["to"], "Ann <ann@customers.example>");
    let incidents: BTreeSet<&str> = updates.iter().map(|u| u.incident_id.as_str()).collect();
    for (who, _) in ACCEPTED {
        for incident in &incidents {
            assert_eq!(
                order.get(&(who, *incident)).map(Vec::as_slice),
                Some(&[1, 2, 3, 4][..]),
                "{who} gets every update of {incident} once, in sequence order"
            );
        }
    }

    // The refused address: dead-lettered once per update, alone, never retried.
    assert_eq!(
        dead.len(),
        n,
        "one dead letter per update for {REJECTED}: {dead:#?}"
    );
    assert_eq!(
        dead_written,
        i64::try_from(n).expect("small"),
        "no further dead letters were written"
    );
    let mut dead_updates = BTreeSet::new();
    for d in &dead {
        let h = &d.headers;
        // attempts 1: a 550 is not retried.
        d.assert_dlq_headers(&[
            ("kind", "delivery_failed"),
            ("target", TARGET),
            ("channel", "email"),
            ("recipient", REJECTED),
            ("error.class", "permanent"),
            ("error.code", "550"),
            ("attempts", "1"),
            ("source.topic", &w.topic),
        ]);
        assert!(
            h["clarion.dlq.reason"].contains("User unknown"),
            "the server's words: {h:?}"
        );
        let original = d.original_update();
        assert_eq!(
            h["clarion.dlq.idempotency_key"],
            IdempotencyKey::new(&original.update_id, TARGET).as_str(),
            "{h:?}"
        );
        dead_updates.insert(original.update_id);
    }
    assert_eq!(
        dead_updates,
        by_id.keys().map(|k| k.to_string()).collect::<BTreeSet<_>>(),
        "every update is dead-lettered for {REJECTED}"
    );

    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "all offsets committed: {offsets:?}"
    );
    let sessions: BTreeSet<&str> = got.iter().filter_map(|m| m["peer"].as_str()).collect();
    eprintln!(
        "EMAIL E2E: {} messages to {} recipients over {} SMTP sessions, {} dead letters",
        got.len(),
        ACCEPTED.len(),
        sessions.len(),
        dead.len()
    );
}
