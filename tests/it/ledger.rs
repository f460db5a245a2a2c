//! The delivery ledger, the incident-state topic, `clarion status`, `clarion report`
//! and deadlines, against the real broker and real peers (issue 12).
//!
//! What a user cares about: the ledger holds exactly one final record per delivery
//! (per recipient), whatever retries, dead letters and supersedes happened, and each
//! record says what the peer actually saw (attempts, provider ids); records follow the
//! published JSON Schema (checked by Python's `jsonschema`, not by our own code);
//! `status` and `report` answer "who was told what and when" across channels; the
//! HTML report renders in a real browser; a missed deadline is counted and warned.

use crate::email::SmtpPeer;
use crate::push::{Peer as ApnsPeer, device, start_peer};
use crate::sms::{Seen, Stub, reply};
use clarion_core::{IdempotencyKey, IncidentUpdate, samples};
use clarion_tests::daemon::{InProcess, Process, Wiring, binary};
use clarion_tests::kafka::{create_topic, publish_updates, read_all};
use clarion_tests::receiver::{Behaviour, Receiver};
use clarion_tests::{free_port, unique_topic};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 2;

/// Creates the ledger and incident-state topics of a test.
pub(crate) async fn record_topics(w: &Wiring) -> (String, String) {
    let ledger = unique_topic("ledger");
    let state = unique_topic("incident-state");
    create_topic(&w.brokers, &ledger, PARTITIONS).await;
    create_topic(&w.brokers, &state, 1).await;
    (ledger, state)
}

/// The wiring's config with the ledger and state topics, `targets` and `extra`
/// top-level tables.
pub(crate) fn config(w: &Wiring, ledger: &str, state: &str, targets: &str) -> String {
    w.config(targets).replacen(
        &format!("group_id = \"{}\"", w.group),
        &format!(
            "group_id = \"{}\"\nledger_topic = \"{ledger}\"\nincident_state_topic = \"{state}\"",
            w.group
        ),
        1,
    )
}

/// Whether a ledger record is a final outcome of a delivery or a recipient
/// (`delivered`, `dead_lettered`, `superseded`), not what is due, pending, or the
/// end of a delivery (`resolved`).
pub(crate) fn is_outcome(v: &Value) -> bool {
    matches!(
        v["outcome"].as_str(),
        Some("delivered" | "dead_lettered" | "superseded")
    )
}

/// Reads the whole ledger until `want` final outcomes ([`is_outcome`]) arrived,
/// then a little longer to catch any extra one. Every record read, in order.
pub(crate) async fn ledger_all(brokers: &str, topic: &str, want: usize) -> Vec<(String, Value)> {
    let got = clarion_tests::kafka::read_until(brokers, topic, Duration::from_secs(20), |got| {
        got.iter()
            .filter(|r| serde_json::from_slice::<Value>(&r.payload).is_ok_and(|v| is_outcome(&v)))
            .count()
            > want
    })
    .await;
    got.into_iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.payload).expect("ledger records are JSON");
            (r.key.unwrap_or_default(), v)
        })
        .collect()
}

/// Validates every record against docs/ledger.schema.json with Python's
/// `jsonschema` (Draft 2020-12, formats checked): an implementation independent of
/// the daemon's serde types.
pub(crate) fn assert_schema_valid(py: &Path, records: &[Value]) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ledger.schema.json");
    let script = r#"
import json, sys
from jsonschema import Draft202012Validator, FormatChecker
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
v = Draft202012Validator(schema, format_checker=FormatChecker())
bad = 0
n = 0
for line in sys.stdin:
    n += 1
    for e in v.iter_errors(json.loads(line)):
        bad += 1
        print(f"record {n}: {e.json_path}: {e.message}")
print(f"{n} records, {bad} errors")
sys.exit(1 if bad or n == 0 else 0)
"#;
    let mut child = Command::new(py)
        .args(["-c", script])
        .arg(&schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        for r in records {
            writeln!(stdin, "{r}").expect("write record");
        }
    }
    let out = child.wait_with_output().expect("python");
    assert!(
        out.status.success(),
        "ledger records do not follow docs/ledger.schema.json:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_holds_one_final_record_per_delivery_matching_what_receivers_got() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    // One target that needs a retry per update, one that refuses everything, one
    // that fails long enough for newer updates to supersede older ones.
    let retrying = Receiver::start(Behaviour::PerMessage(vec![503, 200])).await;
    let refusing = Receiver::start(Behaviour::Always(400)).await;
    let superseding =
        Receiver::start(Behaviour::PerMessage(vec![503, 503, 503, 503, 503, 200])).await;
    let w = Wiring::new(&brokers, "ledger-outcomes", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let targets = format!(
        r#"[targets.retrying]
type = "webhook"
audiences = ["customers"]
url = "{}"
# Failures here are the test's script, not an outage: keep the breaker out of it.
breaker = {{ failures = 1000 }}

[targets.refusing]
type = "webhook"
audiences = ["customers"]
url = "{}"

[targets.superseding]
type = "webhook"
audiences = ["customers"]
url = "{}"
supersede = true
breaker = {{ failures = 1000 }}
"#,
        retrying.url, refusing.url, superseding.url
    );
    let updates: Vec<IncidentUpdate> = ["LEDGER-A", "LEDGER-B"]
        .iter()
        .flat_map(|i| samples::lifecycle(i, "Outage", &["customers"], jiff::Timestamp::now()))
        .collect();
    // Published before the daemon starts: it reads them in one burst, so the newer
    // updates of an incident are planned while the first one is still failing.
    publish_updates(&brokers, &w.topic, &updates).await;
    let daemon = InProcess::start(&config(&w, &ledger_topic, &state_topic, &targets));
    let offsets = w.wait_committed(PARTITIONS).await;
    daemon.stop().await;
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "every stream committed the end: {offsets:?}"
    );
    let n = updates.len();
    let all = ledger_all(&brokers, &ledger_topic, 3 * n).await;
    let values: Vec<Value> = all.iter().map(|(_, v)| v.clone()).collect();
    assert_schema_valid(&py, &values);
    // Every update was due to each of the three targets before any outcome; the
    // retried ones were recorded pending, with the error, on the way.
    let due: BTreeSet<(&str, &str)> = values
        .iter()
        .filter(|v| s(v, "outcome") == "due")
        .map(|v| (s(v, "update_id"), s(v, "target")))
        .collect();
    assert_eq!(due.len(), 3 * n, "one due record per update and target");
    let pending: Vec<&Value> = values
        .iter()
        .filter(|v| s(v, "outcome") == "pending")
        .collect();
    assert!(
        pending
            .iter()
            .any(|v| s(v, "target") == "retrying" && v["error"]["code"] == json!("503")),
        "the 503 was recorded pending: {pending:#?}"
    );
    let records: Vec<(String, Value)> = all.into_iter().filter(|(_, v)| is_outcome(v)).collect();

    // Exactly one final record per (update, target): webhooks have no recipients.
    let mut per: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for (key, v) in &records {
        assert_eq!(key, s(v, "incident_id"), "keyed by incident id");
        assert!(v["recipient"].is_null(), "webhooks have no recipient: {v}");
        per.entry((s(v, "update_id").into(), s(v, "target").into()))
            .or_default()
            .push(v);
    }
    assert_eq!(records.len(), 3 * n, "{records:#?}");
    assert_eq!(per.len(), 3 * n, "one record per update and target");
    let by_id: BTreeMap<&str, &IncidentUpdate> =
        updates.iter().map(|u| (u.update_id.as_str(), u)).collect();

    // What each receiver answered, per update id.
    let answered = |r: &Receiver| -> BTreeMap<String, Vec<u16>> {
        let mut m: BTreeMap<String, Vec<u16>> = BTreeMap::new();
        for got in r.received() {
            m.entry(got.update_id().to_string())
                .or_default()
                .push(got.answered);
        }
        m
    };
    let (a_retry, a_refuse, a_super) = (
        answered(&retrying),
        answered(&refusing),
        answered(&superseding),
    );
    let mut superseded = 0;
    for ((update_id, target), recs) in &per {
        let v = recs[0];
        let u = by_id[update_id.as_str()];
        assert_eq!(v["sequence"], json!(u.sequence));
        assert_eq!(s(v, "status"), u.status.as_str());
        assert_eq!(s(v, "channel"), "webhook");
        assert_eq!(
            s(v, "idempotency_key"),
            IdempotencyKey::new(update_id, target).as_str()
        );
        assert!(!v["published_at"].is_null() && !v["source"]["offset"].is_null());
        match target.as_str() {
            "retrying" => {
                // The receiver saw 503 then 200; the ledger says delivered in 2.
                assert_eq!(a_retry[update_id.as_str()], vec![503, 200]);
                assert_eq!(s(v, "outcome"), "delivered");
                assert_eq!(v["attempts"], json!(2));
                assert_eq!(s(v, "provider_id"), "HTTP 200");
                assert!(s(v, "first_attempt_at") <= s(v, "final_at"));
            }
            "refusing" => {
                assert_eq!(a_refuse[update_id.as_str()], vec![400]);
                assert_eq!(s(v, "outcome"), "dead_lettered");
                assert_eq!(v["attempts"], json!(1));
                assert_eq!(v["error"]["class"], json!("permanent"));
                assert_eq!(v["error"]["code"], json!("400"));
            }
            "superseding" => {
                let seen = a_super.get(update_id.as_str()).cloned().unwrap_or_default();
                match s(v, "outcome") {
                    "delivered" => {
                        assert_eq!(seen.last(), Some(&200), "{update_id}: {seen:?}");
                        assert_eq!(v["attempts"], json!(seen.len()));
                    }
                    "superseded" => {
                        superseded += 1;
                        assert!(
                            !seen.contains(&200),
                            "a superseded update was not delivered"
                        );
                        assert_eq!(v["attempts"], json!(seen.len()));
                        let by = by_id[s(v, "superseded_by")];
                        assert_eq!(by.incident_id, u.incident_id);
                        assert!(by.sequence > u.sequence);
                    }
                    other => panic!("superseding target: unexpected outcome {other}: {v}"),
                }
                // The newest update of an incident is never superseded.
                if u.sequence == 4 {
                    assert_eq!(s(v, "outcome"), "delivered");
                }
            }
            other => panic!("unknown target {other}"),
        }
    }
    assert!(superseded > 0, "some older updates were superseded");
    // The dead letters are the refusing target's, as many as its ledger records.
    let dead = read_all(&brokers, &w.dlq, n + 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), n);

    // The incident-state topic's last record per incident is its newest update.
    let states = read_all(&brokers, &state_topic, n + 1, Duration::from_secs(10)).await;
    let mut latest: BTreeMap<String, Value> = BTreeMap::new();
    for r in states {
        latest.insert(
            r.key.unwrap_or_default(),
            serde_json::from_slice(&r.payload).expect("state JSON"),
        );
    }
    for id in ["LEDGER-A", "LEDGER-B"] {
        let v = &latest[id];
        assert_eq!(v["schema_version"], json!(1));
        assert_eq!(v["update"]["sequence"], json!(4), "{v}");
        assert_eq!(v["update"]["status"], json!("resolved"));
        assert_eq!(v["source"]["topic"], json!(w.topic));
    }
}

/// Twilio as it answers: 201 with a fresh `SM…` sid.
async fn twilio() -> Stub {
    let sids = AtomicUsize::new(0);
    Stub::start(move |req: &Seen| {
        if req.method.as_str() == "GET" {
            return reply(200, json!({"sid": "AC123", "status": "active"}));
        }
        let n = sids.fetch_add(1, Ordering::Relaxed) + 1;
        reply(
            201,
            json!({"sid": format!("SM{n:032}"), "status": "queued"}),
        )
    })
    .await
}

fn four_channels(smtp: &SmtpPeer, sms: &Stub, hook: &Receiver, apns: &ApnsPeer) -> String {
    let file = |p: PathBuf| p.display().to_string();
    format!(
        r#"[audiences.regulators]
first_notice_within = "60m"
warn_at = 0.8

[audiences.regulators.deadlines]
resolved = "30m"

[targets.regulator-mail]
type = "email"
audiences = ["regulators"]
host = "127.0.0.1"
port = {smtp_port}
tls = "starttls"
tls_ca_file = "{smtp_ca}"
username = "clarion"
password = {{ value = "s3cret" }}
from = "Acme Status <status@acme.example>"
connect_timeout = "20s"
command_timeout = "20s"
recipients = {{ regulators = ["desk@regulator.example", "duty@regulator.example"] }}

[targets.customer-sms]
type = "sms"
audiences = ["customers"]
provider = "twilio"
account_sid = "AC123"
auth_token = {{ value = "tok" }}
from = "+15005550006"
base_url = "{sms_base}"
rate_per_second = 1000
recipients = {{ customers = ["+447700900101", "+447700900102"] }}

[targets.partner-hook]
type = "webhook"
audiences = ["business"]
url = "{hook}"

[targets.app-push]
type = "apns"
audiences = ["customers"]
signing_key = {{ file = "{p8}" }}
key_id = "{key_id}"
team_id = "{team_id}"
topic = "{topic}"
environment = "sandbox"
base_url = "https://127.0.0.1:{apns_port}"
ca_file = "{apns_ca}"
device_tokens = {{ customers = ["{tok_a}", "{tok_c}"] }}
"#,
        smtp_port = smtp.port,
        smtp_ca = smtp.ca(),
        sms_base = sms.base,
        hook = hook.url,
        p8 = file(apns.dir.join("apns.p8")),
        key_id = crate::push::KEY_ID,
        team_id = crate::push::TEAM_ID,
        topic = crate::push::TOPIC,
        apns_port = apns.port,
        apns_ca = file(apns.dir.join("ca.pem")),
        tok_a = device('a'),
        tok_c = device('c'),
    )
}

/// Runs the `clarion` binary with `args`; returns (exit code, stdout, stderr).
pub(crate) fn clarion(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run clarion");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_report_show_email_sms_webhook_and_push_with_one_failing() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let smtp = SmtpPeer::start_secured(&py, &[]).await;
    let sms = twilio().await;
    let hook = Receiver::start(Behaviour::Always(400)).await;
    let apns = start_peer(py.clone()).await;
    let w = Wiring::new(&brokers, "ledger-status", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let toml = config(
        &w,
        &ledger_topic,
        &state_topic,
        &four_channels(&smtp, &sms, &hook, &apns),
    );
    let dir = std::env::temp_dir().join(unique_topic("ledger-status"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("clarion.toml");
    std::fs::write(&cfg, &toml).expect("config");
    let cfg = cfg.display().to_string();

    let incident = unique_topic("INC");
    let updates = samples::lifecycle(
        &incident,
        "Mobile data outage",
        &["customers", "business", "regulators"],
        jiff::Timestamp::now(),
    );
    let daemon = InProcess::start(&toml);
    publish_updates(&brokers, &w.topic, &updates).await;
    let offsets = w.wait_committed(PARTITIONS).await;
    daemon.stop().await;
    assert!(clarion_tests::kafka::all_committed(&offsets), "{offsets:?}");

    // 4 updates × (2 mail + 2 SMS + 2 push recipients + 1 webhook).
    let want = 4 * 7;
    let (code, out, err) = clarion(&["status", &incident, "-c", &cfg, "--json"]);
    assert_eq!(code, 1, "a dead-lettered notice makes status exit 1: {err}");
    let status: Value = serde_json::from_str(&out).expect("status --json");
    // 4 updates × 4 targets, every one final; the outcomes per recipient.
    let notices = status["notices"].as_array().expect("notices");
    assert_eq!(notices.len(), 16, "{out}");
    assert_eq!(status["tally"]["pending"], json!(0), "{out}");
    assert_eq!(status["tally"]["dead_lettered"], json!(4), "{out}");
    let records: Vec<Value> = notices
        .iter()
        .flat_map(|n| {
            n["finals"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut f| {
                    f["target"] = n["target"].clone();
                    f["update_id"] = n["update_id"].clone();
                    f
                })
        })
        .collect();
    assert_eq!(records.len(), want, "{out}");
    let of = |target: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| s(r, "target") == target)
            .collect()
    };
    // Email: every regulator address, each update, delivered; masked, never whole.
    let mail = of("regulator-mail");
    assert_eq!(mail.len(), 8);
    assert!(mail.iter().all(|r| s(r, "outcome") == "delivered"));
    let masked: BTreeSet<&str> = mail.iter().map(|r| s(r, "recipient")).collect();
    let want_masked: BTreeSet<String> = ["desk@regulator.example", "duty@regulator.example"]
        .iter()
        .map(|r| mask(r))
        .collect();
    assert_eq!(
        masked,
        want_masked
            .iter()
            .map(String::as_str)
            .collect::<BTreeSet<_>>()
    );
    assert!(
        !out.contains("regulator.example\""),
        "no full address in the ledger"
    );
    // What the SMTP server received matches: one message per address and update.
    let got = smtp.received(8).await;
    assert_eq!(got.len(), 8, "{got:#?}");
    // SMS: Twilio's sids are the provider ids, one per message it accepted.
    let texts = of("customer-sms");
    assert_eq!(texts.len(), 8);
    let sids: BTreeSet<&str> = texts.iter().map(|r| s(r, "provider_id")).collect();
    let posted = sms
        .seen()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count();
    assert_eq!(posted, 8, "Twilio got one request per number and update");
    assert_eq!(sids.len(), 8, "eight distinct sids: {sids:?}");
    assert!(sids.iter().all(|sid| sid.starts_with("SM")));
    // Push: APNs echoes the apns-id Clarion sent, derived from the idempotency key.
    let pushes = of("app-push");
    assert_eq!(pushes.len(), 8);
    for r in &pushes {
        assert_eq!(s(r, "outcome"), "delivered");
        assert_eq!(
            s(r, "provider_id"),
            IdempotencyKey::new(s(r, "update_id"), "app-push").as_uuid()
        );
    }
    // The failing webhook: each update dead-lettered after one refused attempt.
    let hooks = of("partner-hook");
    assert_eq!(hooks.len(), 4);
    assert!(hooks.iter().all(|r| s(r, "outcome") == "dead_lettered"));
    assert_eq!(hook.received().len(), 4);

    // The table a person reads, and the regulator question at a glance.
    let (code, table, err) = clarion(&["status", &incident, "-c", &cfg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        table.starts_with(&format!(
            "incident {incident}: 16 notice(s) due: 12 delivered, 4 dead-lettered"
        )),
        "{table}"
    );
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains("dead_lettered"))
            .count(),
        4,
        "{table}"
    );
    assert!(
        table.contains("HTTP 400") || table.contains("permanent 400"),
        "{table}"
    );
    let (code, regs, err) = clarion(&["status", &incident, "--audience", "regulators", "-c", &cfg]);
    assert_eq!(
        code, 0,
        "every regulator notice was delivered: {err}\n{regs}"
    );
    assert!(
        regs.starts_with(&format!(
            "incident {incident}: 4 notice(s) due: 4 delivered"
        )),
        "{regs}"
    );
    let rows: Vec<&str> = regs
        .lines()
        .skip(2)
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 8, "two addresses, four updates: {regs}");
    assert!(
        rows.iter()
            .all(|l| l.contains("regulator-mail") && l.contains("delivered")),
        "{regs}"
    );
    assert!(
        regs.contains("deadline regulators first_notice: MET"),
        "{regs}"
    );

    // The report: JSON data and a self-contained page.
    let html = dir.join("report.html");
    let (code, json_out, err) = clarion(&[
        "report",
        &incident,
        "--html",
        &html.display().to_string(),
        "--json",
        "-c",
        &cfg,
    ]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&json_out).expect("report --json");
    assert_eq!(report["notices"].as_array().map(Vec::len), Some(16));
    let finals: usize = report["notices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| n["finals"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(finals, want);
    assert_eq!(report["updates"].as_array().map(Vec::len), Some(4));
    let regulators = report["audiences"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["audience"] == "regulators"))
        .expect("regulators row");
    assert!(
        regulators["time_to_first_notice_s"]
            .as_i64()
            .is_some_and(|t| t >= 0)
    );
    let verdicts: BTreeMap<&str, &str> = regulators["deadlines"]
        .as_array()
        .expect("deadlines")
        .iter()
        .map(|d| (s(d, "deadline"), s(d, "verdict")))
        .collect();
    assert_eq!(
        verdicts,
        BTreeMap::from([("first_notice", "met"), ("resolved", "met")])
    );
    let business = report["audiences"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["audience"] == "business"))
        .expect("business row");
    assert!(
        business["first_notice_at"].is_null(),
        "the partner was never reached"
    );
    let page = std::fs::read_to_string(&html).expect("report written");
    // Self-contained: no script, no stylesheet or image fetched from anywhere.
    for fetch in ["<script", "<link", "src=", "url("] {
        assert!(!page.contains(fetch), "the page must not contain {fetch}");
    }
    render_in_chromium(&html);
}

/// Renders the report in headless Chromium (Debian's `chromium`): no console error,
/// the timeline present in the rendered DOM with one lane per audience, and a
/// screenshot kept under the target directory as the test's artifact.
fn render_in_chromium(html: &Path) {
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed (scripts/test installs it)"
        );
        eprintln!(
            "SKIPPED the browser check: chromium is not installed (scripts/test installs it)"
        );
        return;
    };
    let profile = std::env::temp_dir().join(unique_topic("chromium-profile"));
    let artifacts = binary()
        .parent()
        .map(|p| p.join("artifacts"))
        .expect("target dir");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let shot = artifacts.join("ledger-report.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("file://{}", html.display());
    let run = |extra: &[&str]| {
        Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("run chromium")
    };
    let dom = run(&["--dump-dom"]);
    let rendered = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(dom.status.success(), "chromium failed: {log}");
    assert!(
        rendered.contains("<svg id=\"timeline\""),
        "timeline rendered: {rendered}"
    );
    for audience in ["business", "customers", "regulators"] {
        assert!(
            rendered.contains(&format!("data-audience=\"{audience}\"")),
            "a lane for {audience}"
        );
    }
    // Chromium logs page console messages as `CONSOLE(...)` / "Uncaught".
    let console: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let window = run(&[
        &format!("--screenshot={}", shot.display()),
        "--window-size=1200,1400",
        "--hide-scrollbars",
    ]);
    assert!(
        window.status.success(),
        "{}",
        String::from_utf8_lossy(&window.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    let _ = std::fs::remove_dir_all(&profile);
}

/// Fetches the daemon's Prometheus text.
pub(crate) async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let _ = c
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = c.read_to_string(&mut out).await;
    out
}

/// The value of the metric line starting with `series`, if present.
pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_deadline_raises_the_metric_and_the_warning() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    // The regulators' endpoint is down for the whole test; the customers' works.
    let regulators = Receiver::start(Behaviour::Always(503)).await;
    let customers = Receiver::start(Behaviour::Always(200)).await;
    let w = Wiring::new(&brokers, "ledger-deadline", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let port = free_port();
    let targets = format!(
        r#"[metrics]
listen = "127.0.0.1:{port}"

[audiences.regulators]
first_notice_within = "4s"
warn_at = 0.5

[audiences.customers]
first_notice_within = "1h"

[targets.regulator-hook]
type = "webhook"
audiences = ["regulators"]
url = "{}"
retry = {{ max_attempts = 1000, max_elapsed = "1h" }}

[targets.customer-hook]
type = "webhook"
audiences = ["customers"]
url = "{}"
"#,
        regulators.url, customers.url
    );
    let mut daemon = Process::start(
        &config(&w, &ledger_topic, &state_topic, &targets),
        "ledger-deadline",
    );
    let update = samples::lifecycle(
        &unique_topic("INC"),
        "Outage",
        &["customers", "regulators"],
        jiff::Timestamp::now(),
    )
    .remove(0);
    publish_updates(&brokers, &w.topic, std::slice::from_ref(&update)).await;

    // A generous guard, not a threshold: the deadline is 4 s after occurred_at.
    let guard = tokio::time::Instant::now() + WAIT;
    let breached = "clarion_deadline_breaches_total{audience=\"regulators\"}";
    let text = loop {
        let text = scrape(port).await;
        if metric(&text, breached) == Some(1.0) || tokio::time::Instant::now() > guard {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let log = daemon.log_text();
    daemon.signal("TERM");
    let code = daemon.wait(Duration::from_secs(60)).await;
    assert_eq!(metric(&text, breached), Some(1.0), "{text}\n{log}");
    assert_eq!(
        metric(
            &text,
            "clarion_deadline_breaches_total{audience=\"customers\"}"
        ),
        Some(0.0),
        "customers were told in time: {text}"
    );
    assert_eq!(
        metric(&text, "clarion_deadline_at_risk{audience=\"regulators\"}"),
        Some(1.0),
        "{text}"
    );
    // The warning came first (at half the time), then the breach, each once.
    let warn = log
        .lines()
        .position(|l| l.contains("WARN") && l.contains("notification deadline at risk"));
    let missed = log
        .lines()
        .position(|l| l.contains("ERROR") && l.contains("notification deadline missed"));
    assert!(
        matches!((warn, missed), (Some(w), Some(m)) if w < m),
        "warning then breach in the log:\n{log}"
    );
    assert_eq!(
        log.matches("notification deadline missed").count(),
        1,
        "{log}"
    );
    assert!(
        customers.delivered().len() == 1,
        "the customers' notice went out"
    );
    assert!(regulators.received().iter().all(|r| r.answered == 503));
    assert_eq!(code, Some(0), "{log}");
}

/// `telemetry::mask`, as the ledger writes recipients.
fn mask(r: &str) -> String {
    clarion_core::mask(Some(r))
}
