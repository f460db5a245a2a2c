//! Backups tested before they are needed (docs/backups.md), end to end from a real
//! Apache Kafka broker: a target's SMS provider refuses connections (the carrier's own
//! gateway is part of the outage), and its updates still reach every number through
//! the target's backup provider, the `smpp34` SMSC (`tests/peers/smsc.py`). The ledger
//! and the daemon's log say which provider delivered. And `clarion drill` proves the
//! path before it is needed: it passes on healthy peers, fails with a line naming
//! the target when one is down, exercises the backup with `--failover`, and never
//! reaches anyone but the drill recipients.

use crate::ledger::{assert_schema_valid, config, is_outcome, ledger_all, record_topics};
use crate::ops::{get, wait_for, with_metrics};
use crate::sms::{Seen, Smsc, Stub, reply};
use crate::sms_e2e::{smpp_messages, update_of};
use clarion_core::{IncidentUpdate, samples};
use clarion_tests::daemon::{InProcess, Process, Wiring};
use clarion_tests::kafka::{committed_and_end, publish_updates};
use clarion_tests::receiver::{Behaviour, Receiver};
use std::collections::BTreeMap;
use std::time::Duration;

const PARTITIONS: i32 = 2;
const NUMBERS: [&str; 2] = ["+447700900301", "+447700900302"];

/// An SMS target `sms` for customers through Twilio at `twilio` (its keys, then
/// `extra` lines), with the SMSC on `port` as its backup `backup`.
fn sms_target(twilio: &str, numbers: [&str; 2], extra: &str, backup: &str, port: u16) -> String {
    format!(
        r#"[targets.sms]
type = "sms"
audiences = ["customers"]
provider = "twilio"
provider_name = "twilio"
account_sid = "AC123"
auth_token = {{ value = "tok" }}
from = "+15005550006"
base_url = "{twilio}"
rate_per_second = 1000
recipients = {{ customers = ["{n0}", "{n1}"] }}
{extra}

[[targets.sms.backups]]
name = "{backup}"
provider = "smpp"
address = "127.0.0.1:{port}"
system_id = "clarion"
password = {{ value = "e2eSmpp7" }}
source_addr = "ACME"
response_timeout = "20s"
rate_per_second = 1000
"#,
        n0 = numbers[0],
        n1 = numbers[1],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_fails_over_from_a_gateway_refusing_connections_to_the_backup_smsc() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let smsc = Smsc::start(&py, &[]).await;
    // Nothing listens here: every connection is refused.
    let refused = clarion_tests::free_port();
    let w = Wiring::new(&brokers, "backups-sms", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let targets = sms_target(
        &format!("http://127.0.0.1:{refused}"),
        NUMBERS,
        "failover_after = \"1s\"\nretry = { initial_backoff = \"100ms\", max_backoff = \"300ms\" }",
        "smsc-backup",
        smsc.port,
    );
    let daemon = InProcess::start(&config(&w, &ledger_topic, &state_topic, &targets));
    let updates: Vec<IncidentUpdate> = samples::lifecycle(
        "INC-BK-1",
        "Voice outage",
        &["customers"],
        jiff::Timestamp::now(),
    )
    .into_iter()
    .take(2)
    .collect();
    publish_updates(&brokers, &w.topic, &updates).await;
    let offsets = w.wait_committed(PARTITIONS).await;
    let all = ledger_all(&brokers, &ledger_topic, 2 * updates.len()).await;
    let records: Vec<&(String, serde_json::Value)> =
        all.iter().filter(|(_, v)| is_outcome(v)).collect();
    daemon.stop().await;
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "all offsets committed: {offsets:?}"
    );
    let letters = committed_and_end(&w.brokers, &w.group, &w.dlq, 1)[0].1;
    assert_eq!(letters, 0, "nothing was dead-lettered");

    // Every number got every update once, through the backup.
    let by_id: BTreeMap<&str, &IncidentUpdate> =
        updates.iter().map(|u| (u.update_id.as_str(), u)).collect();
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (to, text) in smpp_messages(&smsc.submits()) {
        let u = update_of(&text, &by_id, "customers");
        got.entry(to).or_default().push(u.sequence);
    }
    let want: BTreeMap<String, Vec<u64>> = NUMBERS
        .iter()
        .map(|n| (n.to_string(), updates.iter().map(|u| u.sequence).collect()))
        .collect();
    assert_eq!(got, want, "each number, each update, once and in order");

    // The ledger says who delivered: the backup, for every recipient.
    assert_eq!(records.len(), 2 * updates.len(), "{records:?}");
    for (_, r) in &records {
        assert_eq!(r["outcome"], "delivered", "{r}");
        assert_eq!(r["provider"], "smsc-backup", "{r}");
        // The first update tried the primary until `failover_after`; by the time the
        // second one came, the primary's breaker had opened (5 failures) and it went
        // to the backup at once.
        if r["sequence"] == 1 {
            assert!(
                r["attempts"].as_u64() >= Some(2),
                "the primary was tried first: {r}"
            );
        }
    }
    let values: Vec<serde_json::Value> = all.into_iter().map(|(_, v)| v).collect();
    assert_schema_valid(&py, &values);
}

/// The numbers a drill may reach, and those it must never reach.
const DRILL_NUMBERS: [&str; 2] = ["+447700900901", "+447700900902"];
const CUSTOMER_NUMBERS: [&str; 2] = ["+447700900401", "+447700900402"];

/// Runs `clarion drill` with `args` against the daemon's config: (exit code, stdout).
async fn drill(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut command = std::process::Command::new(clarion_tests::daemon::binary());
    command
        .arg("drill")
        .arg("--config")
        .arg(config)
        .args(args)
        .args(["--timeout", "90s"])
        .stdin(std::process::Stdio::null());
    let o = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("drill ran")
        .expect("run clarion drill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("clarion drill {}:\n{text}", args.join(" "));
    (o.status.code(), text)
}

/// The last value of a series on `/metrics`, by its exact labels.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_pass_on_healthy_peers_fail_on_a_down_one_and_reach_only_drill_recipients() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    // Every peer records what it got: the real audiences' endpoints must get nothing.
    let real_hook = Receiver::start(Behaviour::Always(200)).await;
    let drill_hook = Receiver::start(Behaviour::Always(200)).await;
    let real_down = Receiver::start(Behaviour::Always(200)).await;
    // The drill endpoint of `down` answers nothing until it is started below.
    let down_port = clarion_tests::free_port();
    let twilio = Stub::start(|req: &Seen| {
        if req.method.as_str() == "GET" {
            return reply(200, serde_json::json!({"sid": "AC123", "status": "active"}));
        }
        reply(
            201,
            serde_json::json!({"sid": "SM0001", "status": "queued"}),
        )
    })
    .await;
    let smsc = Smsc::start(&py, &[]).await;
    let w = Wiring::new(&brokers, "backups-drill", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let targets = format!(
        r#"[targets.hook]
type = "webhook"
audiences = ["customers"]
url = "{real_hook}"
drill_recipients = ["{drill_hook}"]

[targets.down]
type = "webhook"
audiences = ["regulators"]
url = "{real_down}"
drill_recipients = ["http://127.0.0.1:{down_port}/hook"]
retry = {{ max_attempts = 2, initial_backoff = "100ms", max_backoff = "200ms" }}

{sms}"#,
        real_hook = real_hook.url,
        drill_hook = drill_hook.url,
        real_down = real_down.url,
        sms = sms_target(
            &twilio.base,
            CUSTOMER_NUMBERS,
            &format!(
                "drill_recipients = [\"{}\", \"{}\"]",
                DRILL_NUMBERS[0], DRILL_NUMBERS[1]
            ),
            "smsc",
            smsc.port,
        ),
    );
    let metrics = clarion_tests::free_port();
    let config = with_metrics(&config(&w, &ledger_topic, &state_topic, &targets), metrics);
    let mut daemon = Process::start(&config, "backups-drill");
    let ready = wait_for(metrics, "/readyz", Duration::from_secs(120), |s, _| {
        s == 200
    })
    .await;
    assert!(
        matches!(ready, Some((200, _))),
        "never ready: {ready:?}\n{}",
        daemon.log_text()
    );
    let (_, page) = get(metrics, "/metrics").await.expect("/metrics");
    let last_success = |provider: &str, target: &str| {
        format!(
            "clarion_drill_last_success_timestamp_seconds{{target=\"{target}\",provider=\"{provider}\"}}"
        )
    };
    assert_eq!(
        sample(&page, &last_success("twilio", "sms")),
        Some(0.0),
        "{page}"
    );

    // A target whose drill endpoint is down fails, with a line that says which.
    let (code, out) = drill(daemon.config_path(), &["--target", "down"]).await;
    assert_eq!(code, Some(1), "{out}\n{}", daemon.log_text());
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL  down (webhook) provider primary: 0/1 delivered")),
        "{out}"
    );
    assert!(!out.contains("PASS"), "{out}");

    // Healthy peers: every target passes through its own provider.
    let _drill_down = Receiver::start_on(down_port, Behaviour::Always(200)).await;
    let (code, out) = drill(daemon.config_path(), &["--all"]).await;
    assert_eq!(code, Some(0), "{out}\n{}", daemon.log_text());
    for line in [
        "PASS  hook (webhook) provider primary: 1/1 delivered",
        "PASS  down (webhook) provider primary: 1/1 delivered",
        "PASS  sms (sms) provider twilio: 2/2 delivered",
    ] {
        assert!(out.lines().any(|l| l.starts_with(line)), "{line}:\n{out}");
    }

    // --failover: every provider, the SMS target's backup with its primary skipped.
    let (code, out) = drill(daemon.config_path(), &["--all", "--failover"]).await;
    assert_eq!(code, Some(0), "{out}\n{}", daemon.log_text());
    for line in [
        "PASS  hook (webhook) provider primary: 1/1 delivered",
        "PASS  sms (sms) provider twilio: 2/2 delivered",
        "PASS  sms (sms) provider smsc: 2/2 delivered",
    ] {
        assert!(out.lines().any(|l| l.starts_with(line)), "{line}:\n{out}");
    }
    assert!(out.contains("(failover: twilio skipped)"), "{out}");
    let (_, page) = get(metrics, "/metrics").await.expect("/metrics");
    for (provider, target) in [("twilio", "sms"), ("smsc", "sms"), ("primary", "hook")] {
        let at = sample(&page, &last_success(provider, target)).unwrap_or_default();
        assert!(at > 1.7e9, "{target}/{provider}: {at}\n{page}");
    }
    // A drill published by hand for a target that has no drill_recipients reaches
    // nobody, and says so.
    let mut stray = samples::lifecycle(
        "DRILL-STRAY",
        "drill",
        &["customers"],
        jiff::Timestamp::now(),
    )
    .remove(0);
    stray.drill = true;
    stray.drill_targets = vec!["nope".into()];
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &[stray]).await;
    let mut warned = false;
    for _ in 0..240 {
        if daemon.log_text().contains("no target takes this drill") {
            warned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(warned, "{}", daemon.log_text());
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(60)).await, Some(0));

    // What the peers got: drills only, to drill recipients only, marked as drills.
    assert!(
        real_hook.received().is_empty(),
        "a drill reached a real endpoint"
    );
    assert!(
        real_down.received().is_empty(),
        "a drill reached a real endpoint"
    );
    let bodies = drill_hook.received();
    assert_eq!(bodies.len(), 2, "one drill each run: {bodies:?}");
    for b in &bodies {
        assert_eq!(b.json["drill"], true, "{}", b.json);
        assert_eq!(b.json["data"]["drill"], true, "{}", b.json);
    }
    let posts: Vec<Seen> = twilio
        .seen()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect();
    assert_eq!(
        posts.len(),
        4,
        "two drills through twilio, to two numbers each"
    );
    for p in &posts {
        let form = p.form();
        let to = form.get("To").cloned().unwrap_or_default();
        assert!(DRILL_NUMBERS.contains(&to.as_str()), "a drill text to {to}");
        assert!(
            form.get("Body").is_some_and(|b| b.starts_with("[DRILL] ")),
            "{form:?}"
        );
    }
    let texts = smpp_messages(&smsc.submits());
    assert_eq!(
        texts.len(),
        2,
        "one failover drill through the SMSC: {texts:?}"
    );
    for (to, text) in &texts {
        assert!(DRILL_NUMBERS.contains(&to.as_str()), "a drill text to {to}");
        assert!(text.starts_with("[DRILL] "), "{text}");
    }
}

/// `check-config --connect` checks each provider of a target on its own line, so a
/// backup that cannot be reached is found before the primary fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_checks_every_provider_of_a_target() {
    let up = Receiver::start(Behaviour::Always(200)).await;
    let refused = clarion_tests::free_port();
    let toml = format!(
        r#"[kafka]
brokers = "127.0.0.1:9"
topic = "incident-updates"
dead_letter_topic = "clarion-dlq"

[targets.hook]
type = "webhook"
audiences = ["customers"]
url = "{url}"
provider_name = "main"

[[targets.hook.backups]]
name = "spare"
url = "http://127.0.0.1:{refused}/hook"
"#,
        url = up.url
    );
    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("connect"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("clarion.toml");
    std::fs::write(&path, toml).expect("write config");
    let mut command = std::process::Command::new(clarion_tests::daemon::binary());
    command
        .args(["check-config", "--connect", "--config"])
        .arg(&path);
    let o = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("ran")
        .expect("run clarion check-config");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        out.lines().any(|l| l
            .starts_with("ok      hook (webhook, audiences: customers), provider main: reachable")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l
            .starts_with("FAILED  hook (webhook, audiences: customers), provider spare: ")
            && l.contains("refused")),
        "{out}"
    );
    assert!(err.contains("some targets are not reachable"), "{err}");
}
