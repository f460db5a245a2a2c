//! End to end through a real Apache Kafka broker: ops publish, the daemon fans out to
//! webhook receivers on loopback, failures reach the dead-letter topic, offsets
//! follow finished work, and signals stop it without losing an update.

use clarion_core::{IncidentUpdate, samples};
use clarion_tests::daemon::{InProcess, Process, Wiring};
use clarion_tests::kafka::{committed_and_end, producer, publish, read_all};
use clarion_tests::receiver::{Behaviour, Receiver};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

fn lifecycles(prefix: &str, incidents: usize, audiences: &[&str]) -> Vec<IncidentUpdate> {
    (0..incidents)
        .flat_map(|i| {
            samples::lifecycle(
                &format!("{prefix}-{i}"),
                "Mobile data outage",
                audiences,
                jiff::Timestamp::now(),
            )
        })
        .collect()
}

fn webhook_target(name: &str, audiences: &str, url: &str) -> String {
    format!("[targets.{name}]\ntype = \"webhook\"\naudiences = [{audiences}]\nurl = \"{url}\"\n")
}

/// For each incident, the sequences in the order a receiver first saw them.
fn first_arrival_order(
    received: &[clarion_tests::receiver::Received],
) -> BTreeMap<String, Vec<u64>> {
    let mut seen = BTreeSet::new();
    let mut order: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in received.iter().filter(|r| (200..300).contains(&r.answered)) {
        if seen.insert(r.update_id().to_string()) {
            order
                .entry(r.incident_id().to_string())
                .or_default()
                .push(r.sequence());
        }
    }
    order
}

fn assert_in_order(name: &str, received: &[clarion_tests::receiver::Received]) {
    for (incident, seqs) in first_arrival_order(received) {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(
            seqs, sorted,
            "{name}: updates of {incident} arrived out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_reaches_every_matching_target_in_order() {
    let Some(brokers) = clarion_tests::kafka("every_update_reaches_every_matching_target_in_order")
    else {
        return;
    };
    let w = Wiring::new(&brokers, "fanout", 4).await;
    let customers = Receiver::start(Behaviour::Jitter(Duration::from_millis(15))).await;
    let regulators = Receiver::start(Behaviour::Jitter(Duration::from_millis(15))).await;
    let employees = Receiver::start(Behaviour::Always(200)).await;
    let targets = [
        webhook_target("status-page", "\"customers\", \"business\"", &customers.url),
        webhook_target("regulator", "\"regulators\"", &regulators.url),
        webhook_target("staff-chat", "\"employees\"", &employees.url),
    ]
    .join("\n");
    let daemon = InProcess::start(&w.config(&targets));
    let updates = lifecycles("fan", 12, &["customers", "regulators"]);
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;

    let n = updates.len();
    assert!(
        customers.wait_until(WAIT, |r| r.len() >= n).await,
        "status-page got {} of {n}",
        customers.received().len()
    );
    assert!(
        regulators.wait_until(WAIT, |r| r.len() >= n).await,
        "regulator got {} of {n}",
        regulators.received().len()
    );
    let offsets = w.wait_committed(4).await;
    daemon.stop().await;

    for (name, rx) in [("status-page", &customers), ("regulator", &regulators)] {
        let got = rx.received();
        let ids: BTreeSet<&str> = got.iter().map(|r| r.update_id()).collect();
        assert_eq!(ids.len(), n, "{name} must get every update");
        assert_eq!(got.len(), n, "{name}: no duplicates when nothing failed");
        assert_in_order(name, &got);
        for r in &got {
            assert_eq!(
                r.headers.get("webhook-id").map(String::len),
                Some(36),
                "{name}: webhook-id is the idempotency key"
            );
        }
    }
    assert!(
        employees.received().is_empty(),
        "a target whose audiences are not named gets nothing"
    );
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "all offsets committed: {offsets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_recovery_and_dead_letters_permanent_failures() {
    let Some(brokers) =
        clarion_tests::kafka("retries_until_recovery_and_dead_letters_permanent_failures")
    else {
        return;
    };
    let w = Wiring::new(&brokers, "retry", 2).await;
    let flaky = Receiver::start(Behaviour::PerMessage(vec![503, 503, 200])).await;
    let strict = Receiver::start(Behaviour::Always(400)).await;
    let targets = [
        webhook_target("flaky", "\"customers\"", &flaky.url),
        webhook_target("strict", "\"regulators\"", &strict.url),
    ]
    .join("\n");
    let daemon = InProcess::start(&w.config(&targets));
    let updates: Vec<IncidentUpdate> = lifecycles("rt", 1, &["customers", "regulators"])
        .into_iter()
        .take(2)
        .collect();
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;

    assert!(
        flaky
            .wait_until(WAIT, |r| r.iter().filter(|x| x.answered == 200).count()
                >= 2)
            .await
    );
    let dead = read_all(&brokers, &w.dlq, 2, WAIT).await;
    let offsets = w.wait_committed(2).await;
    daemon.stop().await;

    // The flaky receiver saw each update three times, with the same id and body.
    let got = flaky.received();
    assert_eq!(got.len(), 6, "503, 503, 200 for each of two updates");
    for u in &updates {
        let attempts: Vec<_> = got
            .iter()
            .filter(|r| r.update_id() == u.update_id)
            .collect();
        assert_eq!(
            attempts.iter().map(|r| r.answered).collect::<Vec<_>>(),
            vec![503, 503, 200]
        );
        assert!(
            attempts.windows(2).all(|p| p[0].body == p[1].body
                && p[0].headers["webhook-id"] == p[1].headers["webhook-id"])
        );
    }
    assert_in_order("flaky", &got);

    // 400 is permanent: tried once, then dead-lettered with the reason.
    assert_eq!(strict.received().len(), 2, "400 must not be retried");
    assert_eq!(
        dead.len(),
        2,
        "both updates dead-lettered for the strict target"
    );
    for d in &dead {
        d.assert_dlq_headers(&[
            ("kind", "delivery_failed"),
            ("target", "strict"),
            ("channel", "webhook"),
            ("attempts", "1"),
            ("error.class", "permanent"),
            ("error.code", "400"),
            ("source.topic", &w.topic),
        ]);
        assert!(
            d.headers["clarion.dlq.reason"].contains("HTTP 400"),
            "{:?}",
            d.headers
        );
        d.original_update();
    }
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "dead-lettered updates are resolved: {offsets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_dead_lettered_and_the_partition_moves_on() {
    let Some(brokers) =
        clarion_tests::kafka("malformed_events_are_dead_lettered_and_the_partition_moves_on")
    else {
        return;
    };
    let w = Wiring::new(&brokers, "malformed", 1).await;
    let rx = Receiver::start(Behaviour::Always(200)).await;
    let daemon = InProcess::start(&w.config(&webhook_target("hook", "\"customers\"", &rx.url)));

    let good = lifecycles("mf", 1, &["customers"]);
    let mut bad_status = serde_json::to_value(&good[0]).expect("json");
    bad_status["status"] = "exploded".into();
    let mut martians = serde_json::to_value(&good[1]).expect("json");
    martians["audiences"] = serde_json::json!(["martians"]);
    let lines = [
        "not json at all".to_string(),
        r#"{"schema_version": 2, "incident_id": "x"}"#.to_string(),
        serde_json::to_string(&good[0]).expect("json"),
        bad_status.to_string(),
        martians.to_string(),
        serde_json::to_string(&good[1]).expect("json"),
    ];
    // Published with kcat, a Kafka client we did not write: one record per line.
    let mut kcat = std::process::Command::new("kcat")
        .args(["-P", "-b", &brokers, "-t", &w.topic, "-p", "0"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("kcat must be installed (scripts/test installs it)");
    {
        use std::io::Write;
        let stdin = kcat.stdin.as_mut().expect("kcat stdin");
        for l in &lines {
            writeln!(stdin, "{l}").expect("write to kcat");
        }
    }
    assert!(kcat.wait().expect("kcat").success(), "kcat failed");

    assert!(
        rx.wait_until(WAIT, |r| r.len() >= 2).await,
        "good events after bad ones still flow"
    );
    let dead = read_all(&brokers, &w.dlq, 4, WAIT).await;
    let offsets = w.wait_committed(1).await;
    daemon.stop().await;

    let got: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.update_id().to_string())
        .collect();
    assert_eq!(
        got,
        vec![good[0].update_id.clone(), good[1].update_id.clone()]
    );
    // Events are processed concurrently, so dead letters may be written in any order.
    let mut dead = dead;
    dead.sort_by_key(|d| {
        d.headers["clarion.dlq.source.offset"]
            .parse::<i64>()
            .unwrap_or(-1)
    });
    let summary: Vec<(String, String, String)> = dead
        .iter()
        .map(|d| {
            (
                d.headers["clarion.dlq.source.offset"].clone(),
                d.headers["clarion.dlq.kind"].clone(),
                d.headers["clarion.dlq.reason"].clone(),
            )
        })
        .collect();
    let expected_kinds = [
        ("0", "malformed_event", "not valid JSON"),
        ("1", "malformed_event", "unsupported schema_version 2"),
        ("3", "malformed_event", "unknown variant `exploded`"),
        ("4", "unknown_audience", "martians"),
    ];
    assert_eq!(summary.len(), 4, "{summary:?}");
    for ((off, kind, reason), (eo, ek, er)) in summary.iter().zip(expected_kinds) {
        assert_eq!((off.as_str(), kind.as_str()), (eo, ek));
        assert!(
            reason.contains(er),
            "reason `{reason}` should mention `{er}`"
        );
    }
    assert_eq!(
        dead[0].payload,
        lines[0].as_bytes(),
        "the original bytes are kept"
    );
    assert_eq!(
        offsets,
        vec![(6, 6)],
        "the partition moved past every record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_then_restart_loses_nothing() {
    let Some(brokers) = clarion_tests::kafka("sigkill_mid_flight_then_restart_loses_nothing")
    else {
        return;
    };
    let w = Wiring::new(&brokers, "sigkill", 4).await;
    let a = Receiver::start(Behaviour::Jitter(Duration::from_millis(40))).await;
    let b = Receiver::start(Behaviour::Jitter(Duration::from_millis(40))).await;
    // Two deliveries at a time per target, so the run lasts long enough to be
    // killed in the middle of it.
    let targets = [
        webhook_target("a", "\"customers\"", &a.url) + "concurrency = 2\n",
        webhook_target("b", "\"employees\"", &b.url) + "concurrency = 2\n",
    ]
    .join("\n");
    let mut daemon = Process::start(&w.config(&targets), "sigkill");
    let updates = lifecycles("kill", 60, &["customers", "employees"]);
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;
    let n = updates.len();

    // Kill it hard once a third of the work is done.
    assert!(
        a.wait_until(WAIT, |r| r.len() >= n / 3).await,
        "daemon made no progress; log:\n{}",
        daemon.log_text()
    );
    daemon.signal("KILL");
    daemon.wait(Duration::from_secs(30)).await;
    let before_restart = a.received().len() + b.received().len();
    assert!(
        before_restart < 2 * n,
        "the kill must land mid-flight (all {before_restart} were already delivered)"
    );

    let mut again = daemon.restart();
    let all = |r: &[clarion_tests::receiver::Received]| {
        r.iter()
            .map(|x| x.update_id())
            .collect::<BTreeSet<_>>()
            .len()
            >= n
    };
    let ok_a = a.wait_until(WAIT, all).await;
    let ok_b = b.wait_until(WAIT, all).await;
    // Stop the second daemon only once it is up (signal handlers installed).
    let deadline = tokio::time::Instant::now() + WAIT;
    while again.log_text().matches("clarion started").count() < 2
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    again.signal("TERM");
    let code = again.wait(Duration::from_secs(60)).await;
    assert!(
        ok_a && ok_b,
        "not every update arrived after restart; log:\n{}",
        again.log_text()
    );
    assert_eq!(code, Some(0), "SIGTERM exits 0");

    let mut duplicates = 0;
    for (name, rx) in [("a", &a), ("b", &b)] {
        let got = rx.received();
        let unique: BTreeSet<&str> = got.iter().map(|r| r.update_id()).collect();
        assert_eq!(unique.len(), n, "{name} lost updates");
        duplicates += got.len() - unique.len();
        assert_in_order(name, &got);
    }
    eprintln!(
        "KILL TEST: {} deliveries expected, {} before SIGKILL, {} duplicates after restart ({:.1}%)",
        2 * n,
        before_restart,
        duplicates,
        100.0 * duplicates as f64 / (2 * n) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_deliveries_and_commits() {
    let Some(brokers) = clarion_tests::kafka("sigterm_drains_in_flight_deliveries_and_commits")
    else {
        return;
    };
    let w = Wiring::new(&brokers, "sigterm", 2).await;
    let slow = Receiver::start(Behaviour::Slow(Duration::from_secs(3))).await;
    let mut daemon = Process::start(
        &w.config(&webhook_target("slow", "\"customers\"", &slow.url)),
        "sigterm",
    );
    let updates: Vec<IncidentUpdate> = (0..6)
        .flat_map(|i| {
            lifecycles(&format!("term{i}"), 1, &["customers"])
                .into_iter()
                .take(1)
        })
        .collect();
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;

    // Every update is in flight (the receiver holds each for 3 s) when SIGTERM comes.
    let deadline = tokio::time::Instant::now() + WAIT;
    while slow.started() < updates.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries never started; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        slow.delivered().len() < updates.len(),
        "the deliveries must still be in flight at SIGTERM"
    );
    daemon.signal("TERM");
    let code = daemon.wait(Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "log:\n{}", daemon.log_text());
    assert_eq!(
        slow.delivered().len(),
        updates.len(),
        "in-flight deliveries completed"
    );
    // The target's stream, whose deliveries were in flight, committed them on its
    // way out. (The events stream may not even have read them before SIGTERM: it
    // reads them again after a restart, which costs nothing.)
    let slow_group = format!("{}.slow", w.group);
    let offsets = committed_and_end(&brokers, &slow_group, &w.topic, 2);
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "offsets committed at shutdown: {offsets:?}; log:\n{}",
        daemon.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_bounds_work_and_everything_still_arrives() {
    let Some(brokers) =
        clarion_tests::kafka("the_in_flight_limit_bounds_work_and_everything_still_arrives")
    else {
        return;
    };
    let w = Wiring::new(&brokers, "backpressure", 4).await;
    let slow = Receiver::start(Behaviour::Slow(Duration::from_millis(100))).await;
    // At most 3 updates in flight, whatever the target's own concurrency allows.
    let toml = w
        .config(&webhook_target("slow", "\"customers\"", &slow.url))
        .replace("[daemon]\n", "[daemon]\nmax_in_flight = 3\n");
    let daemon = InProcess::start(&toml);
    let updates = lifecycles("bp", 10, &["customers"]);
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;
    let n = updates.len();
    assert!(
        slow.wait_until(WAIT, |r| r.len() >= n).await,
        "got {} of {n}",
        slow.received().len()
    );
    let offsets = w.wait_committed(4).await;
    daemon.stop().await;
    assert!(
        slow.max_concurrent() <= 3,
        "{} deliveries ran at once with max_in_flight = 3",
        slow.max_concurrent()
    );
    assert!(
        slow.max_concurrent() >= 2,
        "deliveries of different incidents should overlap"
    );
    assert_eq!(slow.received().len(), n);
    assert_in_order("slow", &slow.received());
    assert!(clarion_tests::kafka::all_committed(&offsets), "{offsets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_templates_shape_what_each_target_receives() {
    let Some(brokers) = clarion_tests::kafka("rules_and_templates_shape_what_each_target_receives")
    else {
        return;
    };
    let w = Wiring::new(&brokers, "routing", 2).await;
    let templates = std::env::temp_dir().join(clarion_tests::unique_topic("routing-templates"));
    let body = templates.join("targets/chat/body.json.j2");
    std::fs::create_dir_all(body.parent().expect("parent")).expect("template dir");
    std::fs::write(
        &body,
        r#"{"text": {{ status_label ~ ": " ~ title }}, "incident": {{ incident_id }}, "update": {{ update_id }}, "audience": {{ audience }}}"#,
    )
    .expect("template");

    let receivers = [
        ("regulator", Receiver::start(Behaviour::Always(200)).await),
        ("critical", Receiver::start(Behaviour::Always(200)).await),
        ("chat", Receiver::start(Behaviour::Always(200)).await),
        ("teams", Receiver::start(Behaviour::Always(200)).await),
        ("status", Receiver::start(Behaviour::Always(200)).await),
    ];
    let url = |name: &str| {
        receivers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.url.clone())
            .expect("receiver")
    };
    let targets = format!(
        r#"
[templates]
dir = "{dir}"
[templates.webhook_presets]
teams = "teams"

{regulator}
[[targets.regulator.rules]]
name = "milestones"
first_and_final = true

{critical}
[[targets.critical.rules]]
name = "critical-always"
min_impact = "critical"
ignore_audiences = true

{chat}
{teams}
{status}
"#,
        dir = templates.display(),
        regulator = webhook_target("regulator", "\"regulators\"", &url("regulator")),
        critical = webhook_target("critical", "\"regulators\"", &url("critical")),
        chat = webhook_target("chat", "\"employees\"", &url("chat")),
        teams = webhook_target("teams", "\"employees\"", &url("teams")),
        status = webhook_target("status", "\"customers\"", &url("status")),
    );
    let daemon = InProcess::start(&w.config(&targets));
    // Incident A names everyone; incident B is critical but names only customers.
    let mut updates = lifecycles("route-a", 1, &["customers", "employees", "regulators"]);
    let mut b = lifecycles("route-b", 1, &["customers"]).remove(0);
    b.impact = clarion_core::Impact::Critical;
    updates.push(b.clone());
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;

    let got = |name: &str| {
        receivers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.clone())
            .expect("receiver")
    };
    assert!(
        got("status").wait_until(WAIT, |r| r.len() >= 5).await,
        "status got {:?}",
        got("status").received().len()
    );
    assert!(got("chat").wait_until(WAIT, |r| r.len() >= 4).await);
    assert!(got("teams").wait_until(WAIT, |r| r.len() >= 4).await);
    let offsets = w.wait_committed(2).await;
    daemon.stop().await;
    assert!(clarion_tests::kafka::all_committed(&offsets), "{offsets:?}");

    let ids = |name: &str| -> Vec<String> {
        got(name)
            .received()
            .iter()
            .map(|r| r.headers["webhook-id"].clone())
            .collect()
    };
    let key = |u: &IncidentUpdate, target: &str| {
        clarion_core::IdempotencyKey::new(&u.update_id, target).to_string()
    };
    // Rules: regulators hear the first and final updates of A, and B only through
    // `critical-always` although B does not name them.
    assert_eq!(
        ids("regulator"),
        vec![key(&updates[0], "regulator"), key(&updates[3], "regulator")]
    );
    assert_eq!(ids("critical"), vec![key(&b, "critical")]);
    // Templates: chat got its own JSON body, one per update of A, with consistent ids.
    let chat: Vec<serde_json::Value> = got("chat")
        .received()
        .iter()
        .map(|r| r.json.clone())
        .collect();
    assert_eq!(chat.len(), 4);
    for (c, u) in chat.iter().zip(&updates[..4]) {
        assert_eq!(c["update"], u.update_id.as_str(), "{c}");
        assert_eq!(c["incident"], u.incident_id.as_str());
        assert_eq!(c["audience"], "employees");
        assert!(c["text"].as_str().unwrap_or("").ends_with(&u.title), "{c}");
        assert!(
            c.get("payload_version").is_none(),
            "the template replaces the standard payload"
        );
    }
    // Teams preset: a card, not the standard payload, mentioning the update.
    for r in got("teams").received() {
        assert!(r.json.get("payload_version").is_none(), "{}", r.json);
        assert!(
            String::from_utf8_lossy(&r.body).contains(r#"route-a-0"#),
            "{}",
            r.json
        );
    }
    // No rules, no template: the standard payload, for A's four and for B.
    let status: Vec<u64> = got("status")
        .received()
        .iter()
        .map(|r| r.json["payload_version"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(status, vec![1; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joining_takes_partitions_after_the_first_drains_them() {
    let Some(brokers) = clarion_tests::kafka(
        "a_second_instance_joining_takes_partitions_after_the_first_drains_them",
    ) else {
        return;
    };
    let w = Wiring::new(&brokers, "rebalance", 4).await;
    let slow = Receiver::start(Behaviour::Slow(Duration::from_millis(800))).await;
    // Few updates in flight, so that most are still unconsumed when the second
    // instance joins and it has work to take over (about 13 s of work in all, while
    // joining a group takes a few seconds).
    let toml = w
        .config(&webhook_target("slow", "\"customers\"", &slow.url))
        .replace(
            "rebalance_drain = \"5s\"",
            "rebalance_drain = \"60s\"\nmax_in_flight = 4",
        );
    let first = InProcess::start(&toml);
    let updates = lifecycles("rb", 16, &["customers"]);
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;
    let n = updates.len();
    // The first instance is busy with every partition when the second one joins.
    let deadline = tokio::time::Instant::now() + WAIT;
    while slow.started() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first instance never started delivering"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = InProcess::start(&toml);
    let all = |r: &[clarion_tests::receiver::Received]| {
        r.iter()
            .map(|x| x.update_id())
            .collect::<BTreeSet<_>>()
            .len()
            >= n
    };
    assert!(
        slow.wait_until(WAIT, all).await,
        "got {} of {n}",
        slow.received().len()
    );
    let offsets = w.wait_committed(4).await;
    let a = first.stop().await;
    let b = second.stop().await;

    let got = slow.received();
    assert_in_order("slow", &got);
    assert!(clarion_tests::kafka::all_committed(&offsets), "{offsets:?}");
    // The revoked partitions were drained before the hand-over, so the second
    // instance started from their committed offsets: nothing was delivered twice.
    assert_eq!(got.len(), n, "duplicates after a cooperative rebalance");
    // Per stream: the target's group split the partitions between the two, and
    // each update was read by exactly one of its members.
    let group = format!("{}.slow", w.group);
    let (ca, cb) = (
        a.consumed_by_group.get(&group).copied().unwrap_or(0),
        b.consumed_by_group.get(&group).copied().unwrap_or(0),
    );
    assert_eq!(
        ca + cb,
        n as u64,
        "each update consumed once by the target's stream: first {ca} + second {cb}"
    );
    assert!(
        cb > 0,
        "the second instance never got a partition with work left"
    );
    eprintln!(
        "REBALANCE TEST: first instance consumed {}, second {}",
        a.consumed, b.consumed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_what_happened() {
    let Some(brokers) = clarion_tests::kafka("prometheus_metrics_count_what_happened") else {
        return;
    };
    let w = Wiring::new(&brokers, "metrics", 1).await;
    let ok = Receiver::start(Behaviour::Always(200)).await;
    let bad = Receiver::start(Behaviour::Always(400)).await;
    let port = clarion_tests::free_port();
    let targets = [
        webhook_target("ok", "\"customers\"", &ok.url),
        webhook_target("bad", "\"regulators\"", &bad.url),
    ]
    .join("\n");
    let toml = w.config(&targets).replace(
        "[daemon]\n",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[daemon]\n"),
    );
    let mut daemon = Process::start(&toml, "metrics");
    let updates = lifecycles("met", 1, &["customers", "regulators"]);
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;
    publish(&producer(&brokers), &w.topic, "junk", b"not json").await;
    let mut martians = lifecycles("met-x", 1, &["customers"]).remove(0);
    martians.audiences = vec!["martians".into()];
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &[martians]).await;
    assert!(
        ok.wait_until(WAIT, |r| r.len() >= 4).await,
        "log:\n{}",
        daemon.log_text()
    );
    let dead = read_all(&brokers, &w.dlq, 6, WAIT).await;
    assert_eq!(
        dead.len(),
        6,
        "4 refused deliveries, 1 malformed record, 1 unknown audience"
    );

    // Scrape the endpoint the way Prometheus does.
    let scrape = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
        use std::io::{Read, Write};
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .expect("request");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("response");
        body
    };
    let value = |text: &str, name: &str, labels: &[&str]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    // The counters are updated just before the dead letter is acknowledged; poll a
    // little rather than race them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape();
        if value(&text, "clarion_dead_letters_total", &[]) >= 6.0
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    daemon.signal("TERM");
    daemon.wait(Duration::from_secs(60)).await;

    assert_eq!(
        value(&text, "clarion_events_consumed_total", &[]),
        6.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "clarion_delivery_attempts_total",
            &["target=\"ok\"", "outcome=\"delivered\""]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "clarion_delivery_attempts_total",
            &["target=\"bad\"", "outcome=\"permanent\""]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "clarion_dead_letters_total",
            &["kind=\"delivery_failed\"", "target=\"bad\""]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "clarion_dead_letters_total",
            &["kind=\"malformed_event\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "clarion_events_rejected_total",
            &["kind=\"malformed_event\""]
        ),
        1.0,
        "{text}"
    );
    for metric in [
        "clarion_dead_letters_total",
        "clarion_events_rejected_total",
    ] {
        assert_eq!(
            value(&text, metric, &["kind=\"unknown_audience\""]),
            1.0,
            "{metric}: {text}"
        );
    }
    assert_eq!(
        value(
            &text,
            "clarion_delivery_latency_seconds_count",
            &["target=\"ok\""]
        ),
        4.0,
        "{text}"
    );
    assert!(!text.contains("met-0"), "no incident id in any label");
}
