//! Confirmations end to end (issue 23), against the real broker, real peers and a
//! real browser: a notice that must be confirmed goes out through an email target
//! to aiosmtpd; its recipient opens the link in headless Chromium and clicks the
//! button; the ledger says who confirmed, who did not, and when.
//!
//! What a user cares about: only the button's `POST` confirms (a scanner that
//! follows links, or a browser that only opens the page, confirms nothing); an
//! altered, expired or unknown link gets the same answer, so none tells a stranger
//! whether a notice exists; and when the window closes, whoever did not confirm
//! is recorded as such.

use crate::email::SmtpPeer;
use clarion_core::{IncidentUpdate, samples};
use clarion_tests::daemon::{InProcess, Wiring};
use clarion_tests::kafka::{create_topic, publish_updates, read_all};
use clarion_tests::{free_port, unique_topic};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
pub(crate) const SECRET: &str = "confirm-secret-for-tests-0123456789abcdef";
const TARGET: &str = "crisis-mail";

/// The topics and listener of a test that asks for confirmations.
pub(crate) struct Setup {
    pub(crate) w: Wiring,
    pub(crate) ledger: String,
    pub(crate) port: u16,
    confirm_topic: String,
}

impl Setup {
    pub(crate) async fn new(brokers: &str, name: &str) -> Setup {
        let w = Wiring::new(brokers, name, 2).await;
        let ledger = unique_topic(&format!("{name}-ledger"));
        let confirm_topic = unique_topic(&format!("{name}-confirm"));
        create_topic(brokers, &ledger, 2).await;
        create_topic(brokers, &confirm_topic, 3).await;
        Setup {
            w,
            ledger,
            port: free_port(),
            confirm_topic,
        }
    }

    pub(crate) fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The wiring's config with the ledger, `[confirm]` and `rest`.
    pub(crate) fn config(&self, rest: &str) -> String {
        let w = &self.w;
        let with_ledger = w.config(rest).replacen(
            &format!("group_id = \"{}\"", w.group),
            &format!(
                "group_id = \"{}\"\nledger_topic = \"{}\"",
                w.group, self.ledger
            ),
            1,
        );
        format!(
            "{with_ledger}\n[confirm]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\nsecret = {{ value = \"{SECRET}\" }}\ntopic = \"{topic}\"\n",
            port = self.port,
            base = self.base(),
            topic = self.confirm_topic,
        )
    }

    /// The confirmation records of the ledger so far.
    pub(crate) async fn confirmations(&self, at_least: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got: Vec<Value> = read_all(
                &self.w.brokers,
                &self.ledger,
                usize::MAX,
                Duration::from_secs(3),
            )
            .await
            .into_iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.payload).ok())
            .filter(|v| v["kind"] == "confirmation")
            .collect();
            if got.len() >= at_least || tokio::time::Instant::now() > deadline {
                return got;
            }
        }
    }

    /// Waits until the ledger has a confirmation record matching `pred`.
    pub(crate) async fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self.confirmations(0).await;
            if got.iter().any(&pred) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} in the ledger: {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The events of the confirmation records about a recipient (by masked address
/// or person).
pub(crate) fn events_of<'a>(records: &'a [Value], who: &str) -> Vec<&'a str> {
    records
        .iter()
        .filter(|r| r["recipient"] == who || r["person"] == who)
        .filter_map(|r| r["event"].as_str())
        .collect()
}

/// A link to the notice for `recipient`, as the daemon mints it: the same keys,
/// case and recipient id, with an expiry of the test's choosing.
pub(crate) fn link(
    base: &str,
    update_id: &str,
    target: &str,
    recipient: &str,
    expires: u64,
) -> String {
    let keys = clarion_confirm::Keys::new(SECRET.as_bytes()).expect("long enough");
    let case = keys.case_id(&[update_id, target]);
    let rid = keys.recipient_id(&case, recipient);
    format!("{base}/c/{}", keys.mint(&case, &rid, expires))
}

fn now_s() -> u64 {
    jiff::Timestamp::now().as_second() as u64
}

/// Runs `tests/peers/browser.py`: Chromium opens `url` (and clicks `click`).
pub(crate) fn browser(py: &Path, url: &str, click: Option<&str>) -> Option<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/browser.py");
    let mut cmd = std::process::Command::new(py);
    cmd.arg(script).arg(url);
    if let Some(c) = click {
        cmd.args(["--click", c]);
    }
    let out = cmd.output().expect("run the browser peer");
    assert!(
        out.status.success(),
        "browser peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("the browser peer prints JSON");
    if v.get("skipped").is_some() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed (scripts/test installs it)"
        );
        eprintln!("SKIPPED the browser part: chromium is not installed");
        return None;
    }
    Some(v)
}

/// Validates confirmation records against `docs/ledger.schema.json#/$defs/confirmation`
/// with Python's `jsonschema` (Draft 2020-12, formats checked): not our serde types.
pub(crate) fn assert_confirmations_valid(py: &Path, records: &[Value]) {
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ledger.schema.json");
    let script = r#"
import json, sys
from jsonschema import Draft202012Validator, FormatChecker
schema = json.load(open(sys.argv[1]))
Draft202012Validator.check_schema(schema)
sub = dict(schema["$defs"]["confirmation"])
v = Draft202012Validator(sub, format_checker=FormatChecker())
bad = n = 0
for line in sys.stdin:
    n += 1
    for e in v.iter_errors(json.loads(line)):
        bad += 1
        print(f"record {n}: {e.json_path}: {e.message}")
sys.exit(1 if bad or n == 0 else 0)
"#;
    let mut child = std::process::Command::new(py)
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
        "confirmation records do not follow docs/ledger.schema.json#/$defs/confirmation:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn email_target(peer: &SmtpPeer) -> String {
    format!(
        r#"[targets.{TARGET}]
type = "email"
audiences = ["employees"]
host = "127.0.0.1"
port = {port}
tls = "none"
from = "Acme Crisis <crisis@acme.example>"
confirm = {{ require = "each", within = "40s" }}

[targets.{TARGET}.recipients]
employees = ["ann@acme.example", "bob@acme.example"]
"#,
        port = peer.port,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_confirms_only_by_its_button_and_bad_links_reveal_nothing() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let peer = SmtpPeer::start(&py, &[]).await;
    let s = Setup::new(&brokers, "confirm-link").await;
    let daemon = InProcess::start(&s.config(&email_target(&peer)));
    let update: IncidentUpdate = samples::lifecycle(
        "CONF-1",
        "Core network outage",
        &["employees"],
        jiff::Timestamp::now(),
    )
    .remove(0);
    publish_updates(&brokers, &s.w.topic, std::slice::from_ref(&update)).await;
    let mail = peer.received(2).await;
    assert_eq!(mail.len(), 2, "both recipients got the notice: {mail:#?}");
    // Each delivery is recorded as a request.
    s.wait_for("requests", |r| {
        r["event"] == "requested" && r["recipient"] == "bo***mple"
    })
    .await;
    let ann = link(
        &s.base(),
        &update.update_id,
        TARGET,
        "ann@acme.example",
        now_s() + 3600,
    );
    let http = reqwest::Client::new();

    // A scanner follows the link: it sees the notice and confirms nothing.
    let r = http.get(&ann).send().await.expect("GET the link");
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let csp = h["content-security-policy"].to_str().expect("ascii");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-store");
    let page = r.text().await.expect("page");
    assert!(page.contains("Core network outage"), "{page}");
    assert!(page.contains("<form method=\"post\">"), "{page}");
    assert!(
        !page.contains("ann@acme.example"),
        "the page names no address: {page}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = s.confirmations(0).await;
    assert!(
        !records.iter().any(|r| r["event"] == "confirmed"),
        "a GET confirmed: {records:#?}"
    );

    // Altered, expired and unknown links: one answer, the same for each.
    let mut altered = ann.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).expect("ascii");
    let expired = link(
        &s.base(),
        &update.update_id,
        TARGET,
        "ann@acme.example",
        now_s() - 1,
    );
    let unknown = link(
        &s.base(),
        "no-such-update",
        TARGET,
        "ann@acme.example",
        now_s() + 3600,
    );
    let mut answers = Vec::new();
    for (what, url) in [
        ("altered", &altered),
        ("expired", &expired),
        ("unknown", &unknown),
    ] {
        for post in [false, true] {
            let r = if post {
                http.post(url.as_str()).send().await
            } else {
                http.get(url.as_str()).send().await
            }
            .expect("request");
            let status = r.status().as_u16();
            let body = r.text().await.expect("body");
            answers.push((what, post, status, body));
        }
    }
    for (what, post, status, body) in &answers {
        assert_eq!(
            (*status, body),
            (answers[0].2, &answers[0].3),
            "{what} (post: {post}) answered differently"
        );
    }
    assert_eq!(answers[0].2, 404);

    // A real browser opens the link and clicks the button: confirmed.
    if let Some(v) = browser(&py, &ann, Some("button")) {
        assert_eq!(v["page"]["status"], 200, "{v}");
        assert!(
            v["page"]["text"]
                .as_str()
                .unwrap_or("")
                .contains("I have read this notice"),
            "{v}"
        );
        assert_eq!(v["after_click"]["status"], 200, "{v}");
        assert!(
            v["after_click"]["text"]
                .as_str()
                .unwrap_or("")
                .contains("your confirmation is recorded"),
            "{v}"
        );
    } else {
        let r = http.post(&ann).send().await.expect("POST the link");
        assert_eq!(r.status(), 200);
    }
    let records = s
        .wait_for("ann's confirmation", |r| r["event"] == "confirmed")
        .await;
    let confirmed: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "confirmed")
        .collect();
    assert_eq!(confirmed.len(), 1, "{records:#?}");
    assert_eq!(confirmed[0]["via"], "link");
    assert_eq!(confirmed[0]["recipient"], "an***mple");
    assert!(confirmed[0]["time_to_confirm_ms"].as_u64().is_some());
    // Confirming again changes nothing.
    let r = http.post(&ann).send().await.expect("POST again");
    assert_eq!(r.status(), 200);

    // The window closes: Bob did not confirm, the notice did not get "each".
    let records = s.wait_for("the closing", |r| r["event"] == "closed").await;
    // Once closed, the link is refused like any other bad one.
    let r = http.get(&ann).send().await.expect("GET after the close");
    assert_eq!(
        (r.status().as_u16(), r.text().await.expect("body")),
        (404, answers[0].3.clone())
    );
    daemon.stop().await;
    assert_eq!(events_of(&records, "an***mple"), ["requested", "confirmed"]);
    assert_eq!(
        events_of(&records, "bo***mple"),
        ["requested", "not_confirmed"]
    );
    let closed: Vec<&Value> = records.iter().filter(|r| r["event"] == "closed").collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0]["met"], false);
    assert_eq!(closed[0]["require"], "each");
    assert_confirmations_valid(&py, &records);

    // `clarion status` answers who confirmed and who did not; `report` has the
    // time to confirm per audience.
    let cfg = std::env::temp_dir().join(unique_topic("confirm-link-config"));
    std::fs::write(&cfg, s.config(&email_target(&peer))).expect("write the config");
    let cfg = cfg.display().to_string();
    let (code, out, err) = crate::ledger::clarion(&["status", "CONF-1", "-c", &cfg]);
    assert_eq!(code, 0, "{err}");
    let section = out
        .split("confirmations:")
        .nth(1)
        .unwrap_or_else(|| panic!("no confirmations in:\n{out}"));
    assert!(
        section.contains(&format!(
            "{TARGET} (require each, closed, NOT met): 1 confirmed, 1 not confirmed, 0 unreachable"
        )),
        "{out}"
    );
    assert!(
        section
            .lines()
            .any(|l| l.contains("an***mple") && l.contains("confirmed by link")),
        "{out}"
    );
    assert!(
        section
            .lines()
            .any(|l| l.contains("bo***mple") && l.contains("not_confirmed")),
        "{out}"
    );
    let (code, json, err) = crate::ledger::clarion(&["report", "CONF-1", "-c", &cfg, "--json"]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&json).expect("report JSON");
    let a = &report["confirmations"]["audiences"][0];
    assert_eq!(a["audience"], "employees", "{report:#}");
    assert_eq!(
        (
            a["asked"].as_u64(),
            a["confirmed"].as_u64(),
            a["not_confirmed"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert!(a["median_time_to_confirm_s"].as_u64().is_some(), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_limits_each_client_and_believes_forwarded_headers_only_from_its_proxy() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let s = Setup::new(&brokers, "confirm-hostile").await;
    let receiver =
        clarion_tests::receiver::Receiver::start(clarion_tests::receiver::Behaviour::Always(200))
            .await;
    let target = format!(
        "[targets.hook]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"{}\"\nsecrets = [{{ value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }}]\n",
        receiver.url
    );
    let config = s.config(&target).replace(
        "[confirm]\n",
        "[confirm]\nrate_per_minute = 1\nburst = 4\nmax_body_bytes = 2048\ntrusted_proxies = [\"127.0.0.2\"]\n",
    );
    let daemon = InProcess::start(&config);
    assert!(
        clarion_tests::wait_for_port(s.port, WAIT).await,
        "the listener did not start"
    );
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .expect("client")
    };
    let bad = format!("{}/c/{}", s.base(), "A".repeat(60));
    let statuses = |client: reqwest::Client, xff: Option<&'static str>, n: usize| {
        let url = bad.clone();
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                let mut r = client.get(&url);
                if let Some(x) = xff {
                    r = r.header("x-forwarded-for", x);
                }
                out.push(r.send().await.expect("request").status().as_u16());
            }
            out
        }
    };
    // A stranger's X-Forwarded-For is ignored: every request counts as its own.
    let direct = from([127, 0, 0, 1]);
    let mut got = statuses(direct.clone(), None, 4).await;
    got.extend(statuses(direct.clone(), Some("198.51.100.1"), 2).await);
    assert_eq!(got, [404, 404, 404, 404, 429, 429]);
    // Through the trusted proxy, each forwarded client has its own rate; a client
    // cannot pick its key by sending the header itself (the proxy's entry wins).
    let proxy = from([127, 0, 0, 2]);
    assert_eq!(
        statuses(proxy.clone(), Some("198.51.100.7"), 5).await,
        [404, 404, 404, 404, 429]
    );
    assert_eq!(
        statuses(proxy.clone(), Some("203.0.113.9, 198.51.100.8"), 4).await,
        [404, 404, 404, 404]
    );
    assert_eq!(
        statuses(proxy.clone(), Some("203.0.113.9, 198.51.100.8"), 1).await,
        [429]
    );
    // A body over max_body_bytes is refused before it is read; a method no path
    // takes is 405 with Allow.
    let big = proxy
        .post(&bad)
        .header("x-forwarded-for", "198.51.100.20")
        .body(vec![b'x'; 4096])
        .send()
        .await
        .expect("POST");
    assert_eq!(big.status(), 413);
    let put = proxy
        .put(&bad)
        .header("x-forwarded-for", "198.51.100.21")
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 405);
    assert_eq!(put.headers()["allow"], "GET, HEAD, POST");
    let head = proxy
        .head(&bad)
        .header("x-forwarded-for", "198.51.100.22")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 404);
    assert_eq!(head.headers()["x-frame-options"], "DENY");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_recipient_can_confirm_and_it_is_recorded_as_a_drill() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let peer = SmtpPeer::start(&py, &[]).await;
    let s = Setup::new(&brokers, "confirm-drill").await;
    let target = email_target(&peer).replace(
        "confirm = {",
        "drill_recipients = [\"drill@acme.example\"]\nconfirm = {",
    );
    let daemon = InProcess::start(&s.config(&target));
    let mut drill =
        samples::lifecycle("DRILL-1", "Drill", &["employees"], jiff::Timestamp::now()).remove(0);
    drill.drill = true;
    publish_updates(&brokers, &s.w.topic, std::slice::from_ref(&drill)).await;
    let mail = peer.received(1).await;
    assert_eq!(mail.len(), 1, "{mail:#?}");
    assert_eq!(
        mail[0]["rcpt_tos"][0], "drill@acme.example",
        "a drill reaches only its recipients"
    );
    s.wait_for("the drill's request", |r| r["event"] == "requested")
        .await;
    let url = link(
        &s.base(),
        &drill.update_id,
        TARGET,
        "drill@acme.example",
        now_s() + 3600,
    );
    let page = reqwest::get(&url)
        .await
        .expect("GET")
        .text()
        .await
        .expect("page");
    assert!(
        page.contains("[DRILL]"),
        "the page says it is a drill: {page}"
    );
    let r = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    let records = s
        .wait_for("the drill's confirmation", |r| r["event"] == "confirmed")
        .await;
    daemon.stop().await;
    assert!(
        records
            .iter()
            .all(|r| r["drill"] == true && r["incident_id"] == "DRILL-1"),
        "every record of a drill says so: {records:#?}"
    );
    assert_eq!(events_of(&records, "dr***mple"), ["requested", "confirmed"]);
}
