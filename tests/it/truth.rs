//! The record tells the truth (issue 26): `status`, `report`, `publish --follow`,
//! `drill` and `dlq replay` never say "delivered" or "met" when it is not so, and
//! every "waiting" says why, from the daemon's own record. Against the real broker,
//! the real binary (daemon and commands) and real peers (an SMTP server that is down
//! and comes back, HTTP receivers, an SMS gateway stand-in).

use crate::email::SmtpPeer;
use crate::ledger::{
    assert_schema_valid, clarion, config, ledger_all, metric, record_topics, scrape,
};
use crate::sms::{Seen, Stub, reply};
use clarion_core::samples;
use clarion_tests::daemon::{Process, Wiring, binary};
use clarion_tests::kafka::publish_updates;
use clarion_tests::receiver::{Behaviour, Receiver};
use clarion_tests::{free_port, unique_topic};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// A generous guard for what the daemon does in seconds: not a threshold.
const WAIT: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 2;

/// Runs `f` every 250 ms until it returns `Some`, or `WAIT` passes (`None`).
async fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `clarion status INCIDENT -c CONFIG ARGS…`: (exit code, stdout + stderr).
fn status(config: &Path, incident: &str, args: &[&str]) -> (i32, String) {
    let cfg = config.display().to_string();
    let mut all = vec!["status", incident, "-c", &cfg];
    all.extend(args);
    let (code, out, err) = clarion(&all);
    (code, format!("{out}{err}"))
}

fn status_json(config: &Path, incident: &str) -> Value {
    let (_, out) = status(config, incident, &["--json"]);
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

/// The notice of `target` in a `status --json` answer.
fn notice<'a>(status: &'a Value, target: &str) -> Option<&'a Value> {
    status["notices"]
        .as_array()?
        .iter()
        .find(|n| n["target"] == target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_report_show_a_pending_regulator_notice_until_it_is_delivered_late_and_missed() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let employees = Receiver::start(Behaviour::Always(200)).await;
    // The regulators' mail server is down: nothing listens on its port yet.
    let smtp_port = free_port();
    let metrics = free_port();
    let w = Wiring::new(&brokers, "truth-pending", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let targets = format!(
        r#"[metrics]
listen = "127.0.0.1:{metrics}"

[audiences.regulators]
first_notice_within = "4s"

[targets.employees-hook]
type = "webhook"
audiences = ["employees"]
url = "{employees}"

[targets.regulator-mail]
type = "email"
audiences = ["regulators"]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Incident Desk <incidents@example.com>"
connect_timeout = "2s"
recipients = {{ regulators = ["desk@regulator.example", "duty@regulator.example"] }}
retry = {{ max_attempts = 1000, max_elapsed = "1h", initial_backoff = "100ms", max_backoff = "300ms" }}
breaker = {{ failures = 2, probe_interval = "1s", max_probe_interval = "2s" }}
"#,
        employees = employees.url,
    );
    let mut daemon = Process::start(
        &config(&w, &ledger_topic, &state_topic, &targets),
        "truth-pending",
    );
    let cfg = daemon.config_path().to_path_buf();
    let incident = unique_topic("INC");
    let update = samples::lifecycle(
        &incident,
        "Voice outage",
        &["employees", "regulators"],
        jiff::Timestamp::now(),
    )
    .remove(0);
    publish_updates(&brokers, &w.topic, std::slice::from_ref(&update)).await;
    assert!(
        employees.wait_until(WAIT, |r| !r.is_empty()).await,
        "employees told: {}",
        daemon.log_text()
    );

    // Pending, with the last error and the breaker open, once probes failed too:
    // the mail server was tried more than the two times that opened the breaker.
    let down = eventually(|| {
        let failed = daemon
            .log_text()
            .matches("delivery failed, will retry")
            .count();
        let s = status_json(&cfg, &incident);
        let n = notice(&s, "regulator-mail")?;
        (n["state"] == "pending" && n["pending"]["breaker"] == "open" && failed >= 4)
            .then(|| s.clone())
    })
    .await;
    let down = down.unwrap_or_else(|| {
        panic!(
            "regulator notice never pending with its breaker open: {}\n{}",
            status(&cfg, &incident, &[]).1,
            daemon.log_text()
        )
    });
    let reason = down["notices"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["target"] == "regulator-mail")
        .map(|n| n["pending"]["last_error"]["reason"].to_string())
        .unwrap_or_default();
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    let (code, text) = status(&cfg, &incident, &[]);
    assert_eq!(code, 3, "not every due notice is final: {text}");
    assert!(
        text.starts_with(&format!(
            "incident {incident}: 2 notice(s) due: 1 delivered, 1 pending"
        )),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("regulator-mail")
            && l.contains("pending")
            && l.to_lowercase().contains("refused")),
        "{text}"
    );
    let (code, regs) = status(&cfg, &incident, &["--audience", "regulators"]);
    assert_eq!(code, 3, "{regs}");
    assert!(regs.contains("audience regulators: NOT YET"), "{regs}");
    assert!(regs.to_lowercase().contains("refused"), "{regs}");
    assert!(regs.contains("breaker open"), "{regs}");
    let (code, emps) = status(&cfg, &incident, &["--audience", "employees"]);
    assert_eq!(code, 0, "{emps}");

    // Past its 4 s deadline, the regulators' first notice is missed, not open, in
    // the status and in the report, which has a regulators lane with the notice
    // pending.
    let missed = eventually(|| {
        let (_, t) = status(&cfg, &incident, &["--audience", "regulators"]);
        t.contains("deadline regulators first_notice: MISSED")
            .then_some(t)
    })
    .await;
    assert!(missed.is_some(), "{}", status(&cfg, &incident, &[]).1);
    let dir = cfg.parent().expect("config dir");
    let html = dir.join("report.html");
    let (code, out, err) = clarion(&[
        "report",
        &incident,
        "--json",
        "--html",
        &html.display().to_string(),
        "-c",
        &cfg.display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).expect("report --json");
    let regulators = report["audiences"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["audience"] == "regulators"))
        .unwrap_or_else(|| panic!("a regulators row: {out}"));
    assert_eq!(regulators["pending"], 1, "{regulators}");
    assert!(regulators["first_notice_at"].is_null(), "{regulators}");
    assert_eq!(
        regulators["deadlines"][0]["verdict"], "missed",
        "{regulators}"
    );
    let page = std::fs::read_to_string(&html).expect("report written");
    assert!(
        page.contains("data-audience=\"regulators\""),
        "a regulators lane"
    );
    assert!(
        page.contains("class=\"pending\""),
        "the notice drawn pending"
    );
    assert!(page.contains("Not final:"), "the page says it is not final");

    // The mail server comes back: the next probe delivers to both addresses, and
    // status exits 0.
    let smtp = SmtpPeer::start_on(&py, smtp_port, &[]).await;
    let reached = eventually(|| {
        let (code, t) = status(&cfg, &incident, &[]);
        (code == 0).then_some(t)
    })
    .await;
    let reached = reached.unwrap_or_else(|| {
        panic!(
            "never delivered: {}\n{}",
            status(&cfg, &incident, &[]).1,
            daemon.log_text()
        )
    });
    assert!(
        reached.starts_with(&format!(
            "incident {incident}: 2 notice(s) due: 2 delivered"
        )),
        "{reached}"
    );
    assert_eq!(smtp.received(2).await.len(), 2, "one message per address");
    // Delivered after its deadline: missed everywhere. The report...
    let (_, out, _) = clarion(&[
        "report",
        &incident,
        "--json",
        "-c",
        &cfg.display().to_string(),
    ]);
    let report: Value = serde_json::from_str(&out).expect("report --json");
    let regulators = report["audiences"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["audience"] == "regulators"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        regulators["deadlines"][0]["verdict"], "missed",
        "{regulators}"
    );
    assert!(
        !regulators["deadlines"][0]["met_at"].is_null(),
        "{regulators}"
    );
    // ...the metric, counted once...
    let page = scrape(metrics).await;
    assert_eq!(
        metric(
            &page,
            "clarion_deadline_breaches_total{audience=\"regulators\"}"
        ),
        Some(1.0),
        "{page}"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(60)).await, Some(0));
    // ...and the log, which never calls it met.
    let log = daemon.log_text();
    assert!(
        log.contains("notification deadline missed: the first delivery to this audience came after the deadline"),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("notification deadline met") && l.contains("regulators")),
        "{log}"
    );
    // The outage was logged once when it began and once when it ended, not at
    // every failed probe.
    assert_eq!(
        log.matches("target is down: breaker open").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("target is back").count(), 1, "{log}");

    // Every record, due and pending ones included, follows the published schema.
    let all = ledger_all(&brokers, &ledger_topic, 3).await;
    let values: Vec<Value> = all.into_iter().map(|(_, v)| v).collect();
    for outcome in ["due", "pending", "delivered", "resolved"] {
        assert!(
            values.iter().any(|v| v["outcome"] == outcome),
            "a {outcome} record: {values:#?}"
        );
    }
    assert_schema_valid(&py, &values);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_that_changes_a_deadline_applies_it_and_one_that_cannot_apply_is_refused() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    // The regulators' endpoint is down for the whole test.
    let down = format!("http://127.0.0.1:{}/hook", free_port());
    let metrics = free_port();
    let w = Wiring::new(&brokers, "truth-reload", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let targets = |within: &str, listen: u16| {
        format!(
            r#"[metrics]
listen = "127.0.0.1:{listen}"

[audiences.regulators]
first_notice_within = "{within}"

[targets.regulator-hook]
type = "webhook"
audiences = ["regulators"]
url = "{down}"
retry = {{ max_attempts = 1000, max_elapsed = "1h" }}
"#
        )
    };
    let toml = |within: &str, listen: u16| {
        config(&w, &ledger_topic, &state_topic, &targets(within, listen))
    };
    let mut daemon = Process::start(&toml("2h", metrics), "truth-reload");
    let breaches = "clarion_deadline_breaches_total{audience=\"regulators\"}";
    let success = "clarion_config_last_reload_success ";
    let up = async {
        for _ in 0..480 {
            if metric(&scrape(metrics).await, breaches).is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    };
    assert!(up.await, "metrics never served: {}", daemon.log_text());

    // 2h → 3s: applied, and the reload says so.
    std::fs::write(daemon.config_path(), toml("3s", metrics)).expect("config");
    daemon.signal("HUP");
    let line = eventually(|| {
        daemon
            .log_text()
            .lines()
            .find(|l| l.contains("config reloaded"))
            .map(str::to_string)
    })
    .await
    .unwrap_or_else(|| panic!("no reload: {}", daemon.log_text()));
    assert!(
        line.contains("regulators.first_notice_within 2h → 3s"),
        "{line}"
    );
    assert_eq!(metric(&scrape(metrics).await, success), Some(1.0));

    // An update from now on runs by the new deadline: missed after 3 s, where 2 h
    // would not be for two hours.
    let update = samples::lifecycle(
        &unique_topic("INC"),
        "Outage",
        &["regulators"],
        jiff::Timestamp::now(),
    )
    .remove(0);
    publish_updates(&brokers, &w.topic, std::slice::from_ref(&update)).await;
    let mut counted = None;
    for _ in 0..480 {
        counted = metric(&scrape(metrics).await, breaches);
        if counted == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(counted, Some(1.0), "{}", daemon.log_text());

    // A change that can only apply at a restart ([metrics] listen) is refused,
    // loudly, and nothing of that reload applies.
    let before = daemon.log_text().matches("config reload refused").count();
    std::fs::write(daemon.config_path(), toml("1s", free_port())).expect("config");
    daemon.signal("HUP");
    let refused = eventually(|| {
        let log = daemon.log_text();
        (log.matches("config reload refused").count() > before).then_some(log)
    })
    .await
    .unwrap_or_else(|| panic!("not refused: {}", daemon.log_text()));
    assert!(
        refused.contains("[metrics] changed") && refused.contains("restart the daemon"),
        "{refused}"
    );
    assert_eq!(metric(&scrape(metrics).await, success), Some(0.0));
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(60)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_twice_delivers_each_notice_once_and_status_shows_it_delivered() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    // An SMS gateway that refuses (400, permanent) until it is fixed, then accepts
    // each message with an id.
    let fixed = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let gateway = {
        let (fixed, accepted) = (fixed.clone(), accepted.clone());
        Stub::start(move |_req: &Seen| {
            if !fixed.load(Ordering::SeqCst) {
                return reply(400, serde_json::json!({"error": "account suspended"}));
            }
            let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
            reply(200, serde_json::json!({"id": format!("gw-{n}")}))
        })
        .await
    };
    let w = Wiring::new(&brokers, "truth-replay", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let targets = format!(
        r#"[targets.employees-sms]
type = "sms"
audiences = ["employees"]
provider = "http"
url = "{}/send"
fields = {{ to = "{{to}}", text = "{{text}}" }}
message_id = "/id"
recipients = {{ employees = ["+447700900101", "+447700900102"] }}
"#,
        gateway.base
    );
    let mut daemon = Process::start(
        &config(&w, &ledger_topic, &state_topic, &targets),
        "truth-replay",
    );
    let cfg = daemon.config_path().to_path_buf();
    let incident = unique_topic("INC");
    let update =
        samples::lifecycle(&incident, "Outage", &["employees"], jiff::Timestamp::now()).remove(0);
    publish_updates(&brokers, &w.topic, std::slice::from_ref(&update)).await;
    let dead = eventually(|| {
        let (code, t) = status(&cfg, &incident, &[]);
        (code == 1).then_some(t)
    })
    .await
    .unwrap_or_else(|| panic!("never dead-lettered: {}", daemon.log_text()));
    assert_eq!(dead.matches("dead_lettered").count(), 2, "{dead}");

    fixed.store(true, Ordering::SeqCst);
    let replay = |extra: &[&str]| {
        let cfg = cfg.display().to_string();
        let mut args = vec![
            "dlq",
            "replay",
            "--target",
            "employees-sms",
            "--incident",
            &incident,
            "-c",
            &cfg,
        ];
        args.extend(extra);
        let (code, out, err) = clarion(&args);
        (code, format!("{out}{err}"))
    };
    let (code, first) = replay(&[]);
    assert_eq!(code, 0, "{first}");
    assert!(
        first.contains("replayed 2 to `employees-sms`: 2 delivered"),
        "{first}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    // The ledger knows: status shows the notice delivered, the replay noted, and
    // exits 0.
    let (code, after) = status(&cfg, &incident, &[]);
    assert_eq!(code, 0, "{after}");
    assert!(
        after.starts_with(&format!(
            "incident {incident}: 1 notice(s) due: 1 delivered"
        )),
        "{after}"
    );
    assert_eq!(after.matches("(replayed)").count(), 2, "{after}");
    assert!(!after.contains("dead_lettered"), "{after}");

    // A second replay, dry or not, skips both: the gateway gets nothing more.
    let (code, dry) = replay(&["--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    assert_eq!(
        dry.matches("the ledger shows it delivered at").count(),
        2,
        "{dry}"
    );
    let (code, second) = replay(&[]);
    assert_eq!(code, 0, "{second}");
    assert!(
        second.contains("replayed 0 to `employees-sms`: 0 delivered, 0 dead-lettered again, 0 skipped, 2 already delivered (ledger)"),
        "{second}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "each number got the notice once"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(60)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_and_drill_name_the_reason_a_target_is_down() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let ok = Receiver::start(Behaviour::Always(200)).await;
    // Both the target and its drill endpoint refuse connections.
    let down = format!("http://127.0.0.1:{}/hook", free_port());
    let drill_down = format!("http://127.0.0.1:{}/hook", free_port());
    let w = Wiring::new(&brokers, "truth-follow", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let targets = format!(
        r#"[targets.status-page]
type = "webhook"
audiences = ["customers"]
url = "{ok}"

[targets.employees-hook]
type = "webhook"
audiences = ["employees"]
url = "{down}"
drill_recipients = ["{drill_down}"]
retry = {{ max_attempts = 1000, max_elapsed = "1h", initial_backoff = "100ms", max_backoff = "300ms" }}
breaker = {{ failures = 2, probe_interval = "1s", max_probe_interval = "2s" }}
"#,
        ok = ok.url,
    );
    let mut daemon = Process::start(
        &config(&w, &ledger_topic, &state_topic, &targets),
        "truth-follow",
    );
    let publish = {
        let cfg = daemon.config_path().to_path_buf();
        let incident = unique_topic("INC");
        move || {
            Command::new(binary())
                .arg("publish")
                .arg("-c")
                .arg(&cfg)
                .args([
                    "--incident",
                    &incident,
                    "--status",
                    "investigating",
                    "--impact",
                    "major",
                    "--title",
                    "Voice outage",
                    "--message",
                    "Calls fail in the north.",
                    "--audiences",
                    "customers,employees",
                    "--yes",
                    "--follow",
                    "--follow-timeout",
                    "20s",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("run clarion publish")
        }
    };
    let o = tokio::task::spawn_blocking(publish)
        .await
        .expect("publish ran");
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        o.status.code(),
        Some(3),
        "timed out: {out}\n{}",
        daemon.log_text()
    );
    // The waiting target says why, from the daemon's record: its error and its
    // breaker.
    let why = out
        .lines()
        .filter(|l| l.contains("employees-hook waiting:") || l.starts_with("  └ "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(why.contains("cannot connect"), "{out}");
    assert!(why.contains("breaker open"), "{out}");
    // The PROVIDER column names the provider, not the message id.
    assert!(
        out.lines().any(|l| l.starts_with("status-page")
            && l.contains("delivered")
            && l.trim_end().ends_with("primary")),
        "{out}"
    );

    // A drill of the target that is down names the reason, not "is a daemon running".
    let mut drill = Command::new(binary());
    drill
        .arg("drill")
        .arg("--config")
        .arg(daemon.config_path())
        .args(["--target", "employees-hook", "--timeout", "20s"])
        .stdin(Stdio::null());
    let o = tokio::task::spawn_blocking(move || drill.output())
        .await
        .expect("drill ran")
        .expect("run clarion drill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "{text}");
    let fail = text
        .lines()
        .find(|l| l.starts_with("FAIL  employees-hook (webhook) provider primary"))
        .unwrap_or_else(|| panic!("a FAIL line: {text}"));
    assert!(!fail.contains("is a daemon running"), "{fail}");
    assert!(fail.contains("breaker open"), "{fail}");
    assert!(fail.contains("cannot connect"), "{fail}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(60)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_two_problems_in_one_target_and_names_a_missing_topic() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let w = Wiring::new(&brokers, "truth-check", PARTITIONS).await;
    let hook = Receiver::start(Behaviour::Always(200)).await;
    let dir = std::env::temp_dir().join(unique_topic("truth-check"));
    std::fs::create_dir_all(&dir).expect("dir");
    let run = |toml: &str, name: &str, connect: bool| {
        let path = dir.join(name);
        std::fs::write(&path, toml).expect("config");
        let path = path.display().to_string();
        let mut args = vec!["check-config", "--config", &path];
        if connect {
            args.push("--connect");
        }
        let (code, out, err) = clarion(&args);
        (code, format!("{out}{err}"), path)
    };

    // One SMS target with a number that is not E.164 and a secret that is not set.
    let sms = w.config(
        "[targets.employees-sms]\ntype = \"sms\"\naudiences = [\"employees\"]\nprovider = \"twilio\"\n\
         account_sid = \"AC123\"\nauth_token = { env = \"TRUTH_UNSET_TWILIO_TOKEN\" }\nfrom = \"+15005550006\"\n\
         recipients = { employees = [\"02025550123\"] }\n",
    );
    let (code, out, _) = run(&sms, "two-problems.toml", false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("2 problems:"), "{out}");
    assert!(
        out.contains("targets.employees-sms: target `employees-sms`: invalid `recipients.employees[0]`: `02025550123` is not an E.164 number"),
        "{out}"
    );
    assert!(
        out.contains("targets.employees-sms: auth_token: environment variable TRUTH_UNSET_TWILIO_TOKEN is not set"),
        "{out}"
    );

    // A ledger topic nobody created: --connect names it, with the command.
    let ledger = unique_topic("truth-ledger");
    let toml = w
        .config(&format!(
            "[targets.hook]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"{}\"\n",
            hook.url
        ))
        .replacen(
            &format!("group_id = \"{}\"", w.group),
            &format!("group_id = \"{}\"\nledger_topic = \"{ledger}\"", w.group),
            1,
        );
    let (code, out, path) = run(&toml, "missing-topic.toml", true);
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "MISSING topic `{ledger}` (kafka.ledger_topic): create it with: clarion topics create --config {path} {ledger}"
    );
    assert!(out.contains(&want), "{want}\n{out}");
    assert!(
        out.contains(&format!("ok      topic `{}` (kafka.topic)", w.topic)),
        "{out}"
    );
    // That command, run, creates it; check-config then passes.
    let (code, made, _) = clarion(&["topics", "create", "--config", &path, &ledger]);
    assert_eq!(code, 0, "{made}");
    assert!(
        made.contains(&format!("created  {ledger} (kafka.ledger_topic")),
        "{made}"
    );
    let (code, out, _) = run(&toml, "missing-topic.toml", true);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("MISSING"), "{out}");
}
