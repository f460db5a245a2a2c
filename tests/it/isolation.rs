//! Issue 9's proof, against the real broker: one target's outage never holds back
//! another, and costs the down target no data; a SIGKILL, a rebalance or a killed
//! replica during an outage loses nothing and never shows a receiver an older status
//! after a newer one; an upgrade from the single-group daemon neither redelivers nor
//! skips; `clarion dlq replay --target` reaches that target only.
//!
//! A "down" target is a webhook URL on a loopback port where nothing listens
//! (connection refused, a target-level failure that opens its breaker); it comes
//! back when a receiver starts on that port.

use clarion_core::{IncidentUpdate, samples};
use clarion_tests::daemon::{InProcess, Process, Wiring};
use clarion_tests::kafka::{all_committed, committed_and_end, publish_updates, read_all};
use clarion_tests::receiver::{Behaviour, Received, Receiver};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A guard on every wait; never an assertion about speed.
const WAIT: Duration = Duration::from_secs(90);

/// Short breaker settings, so an outage is noticed and a recovery found within a
/// second or so.
const FAST_BREAKER: &str = "[targets.{name}.breaker]\nfailures = 3\nprobe_interval = \"200ms\"\nmax_probe_interval = \"1s\"\n";

fn hook(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[targets.{name}]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"{url}\"\n{extra}\n{}",
        FAST_BREAKER.replace("{name}", name)
    )
}

fn down_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/hook")
}

/// `incidents` incidents of four updates each (investigating → resolved), all for
/// customers.
fn lifecycles(prefix: &str, incidents: usize) -> Vec<IncidentUpdate> {
    (0..incidents)
        .flat_map(|i| {
            samples::lifecycle(
                &format!("{prefix}-{i}"),
                "Mobile data outage",
                &["customers"],
                jiff::Timestamp::now(),
            )
        })
        .collect()
}

/// The update ids a receiver accepted (2xx).
fn unique(rx: &Receiver) -> BTreeSet<String> {
    rx.delivered()
        .iter()
        .map(|r| r.update_id().to_string())
        .collect()
}

async fn wait_all(name: &str, rx: &Receiver, n: usize) {
    let ok = rx
        .wait_until(WAIT, |r| {
            r.iter()
                .filter(|x| (200..300).contains(&x.answered))
                .map(Received::update_id)
                .collect::<BTreeSet<_>>()
                .len()
                >= n
        })
        .await;
    assert!(ok, "{name} got {} of {n} updates", unique(rx).len());
}

/// The consumer group of a target's stream (`<group_id>.<target>`).
fn group_of(w: &Wiring, target: &str) -> String {
    format!("{}.{target}", w.group)
}

/// Waits until `target`'s group has committed the end of every partition.
async fn wait_group_committed(w: &Wiring, target: &str, partitions: i32) -> Vec<(i64, i64)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let offsets = committed_and_end(&w.brokers, &group_of(w, target), &w.topic, partitions);
        if all_committed(&offsets) || tokio::time::Instant::now() > deadline {
            return offsets;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What a receiver would show out of order, per incident. Two readings of the same
/// arrivals (2xx answers only), both required:
///
/// 1. **First arrivals.** A receiver that follows Standard Webhooks drops a message
///    whose `webhook-id` it already has, so what it shows is the first arrival of
///    each update. Those must come in sequence order.
/// 2. **Every arrival.** An arrival of an older update after a newer one of the same
///    incident is a violation unless it is an idempotent duplicate that cannot change
///    what anyone shows: the older update must already have arrived *before* the
///    newer one did (so a deduplicating receiver drops it), and the incident's last
///    arrival must be its newest update (so a receiver that just shows the last
///    message it got ends on the current status). A late copy from an old partition
///    owner, arriving after the new owner delivered a newer update, fails this
///    unless the newer one arrives again after it.
fn order_violations(received: &[Received]) -> Vec<String> {
    let mut violations = Vec::new();
    // Per incident: update id → (sequence, index of its first arrival).
    let mut first: BTreeMap<&str, BTreeMap<&str, (u64, usize)>> = BTreeMap::new();
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    let ok: Vec<&Received> = received
        .iter()
        .filter(|r| (200..300).contains(&r.answered))
        .collect();
    for (i, r) in ok.iter().enumerate() {
        let seen = first.entry(r.incident_id()).or_default();
        let newest_before = seen
            .values()
            .filter(|(s, _)| *s > r.sequence())
            .map(|(_, at)| *at)
            .min();
        match (seen.get(r.update_id()), newest_before) {
            (None, Some(_)) => violations.push(format!(
                "{}: first arrival of sequence {} after a newer update",
                r.incident_id(),
                r.sequence()
            )),
            (Some((_, own)), Some(newer)) if *own > newer => violations.push(format!(
                "{}: sequence {} arrived again after a newer update that arrived before it",
                r.incident_id(),
                r.sequence()
            )),
            _ => {}
        }
        seen.entry(r.update_id()).or_insert((r.sequence(), i));
        last.insert(r.incident_id(), r.sequence());
    }
    for (incident, seq) in last {
        let newest = first[incident].values().map(|(s, _)| *s).max().unwrap_or(0);
        if seq != newest {
            violations.push(format!(
                "{incident}: the last arrival is sequence {seq}, not the newest ({newest})"
            ));
        }
    }
    violations
}

fn assert_in_order(name: &str, rx: &Receiver) {
    let v = order_violations(&rx.received());
    assert!(
        v.is_empty(),
        "{name}: {} order violation(s): {:?}",
        v.len(),
        &v[..v.len().min(10)]
    );
}

async fn outage_then_recovery(supersede: bool) {
    let test = if supersede {
        "isolation::outage_supersede"
    } else {
        "isolation::outage"
    };
    let Some(brokers) = clarion_tests::kafka(test) else {
        return;
    };
    const PARTITIONS: i32 = 6;
    let w = Wiring::new(&brokers, "outage", PARTITIONS).await;
    let healthy = [
        ("status-page", Receiver::start(Behaviour::Always(200)).await),
        ("staff-chat", Receiver::start(Behaviour::Always(200)).await),
        ("partners", Receiver::start(Behaviour::Always(200)).await),
    ];
    let port = clarion_tests::free_port();
    let mut targets: Vec<String> = healthy
        .iter()
        .map(|(name, rx)| hook(name, &rx.url, ""))
        .collect();
    targets.push(hook(
        "down",
        &down_url(port),
        &format!("supersede = {supersede}"),
    ));
    let daemon = InProcess::start(&w.config(&targets.join("\n")));
    let incidents = if supersede { 200 } else { 500 };
    let updates = lifecycles("out", incidents);
    let n = updates.len();
    publish_updates(&brokers, &w.topic, &updates).await;

    // While the fourth target refuses every connection, the three others get every
    // update and their groups commit the end of the topic.
    for (name, rx) in &healthy {
        wait_all(name, rx, n).await;
        let offsets = wait_group_committed(&w, name, PARTITIONS).await;
        assert!(all_committed(&offsets), "{name}'s group: {offsets:?}");
    }
    let down_offsets = committed_and_end(&brokers, &group_of(&w, "down"), &w.topic, PARTITIONS);
    assert!(
        !all_committed(&down_offsets),
        "the down target's group cannot have reached the end: {down_offsets:?}"
    );
    for (name, rx) in &healthy {
        assert_eq!(rx.received().len(), n, "{name}: no duplicates, no retries");
        assert_in_order(name, rx);
    }

    // The target comes back.
    let back = Receiver::start_on(port, Behaviour::Always(200)).await;
    let offsets = if supersede {
        // Only the newest update of each incident is owed.
        let ok = back
            .wait_until(WAIT, |r| {
                r.iter()
                    .filter(|x| x.sequence() == 4 && x.answered == 200)
                    .map(Received::incident_id)
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= incidents
            })
            .await;
        assert!(
            ok,
            "down target got the resolved update of only some incidents"
        );
        wait_group_committed(&w, "down", PARTITIONS).await
    } else {
        wait_all("down", &back, n).await;
        wait_group_committed(&w, "down", PARTITIONS).await
    };
    daemon.stop().await;
    assert!(
        all_committed(&offsets),
        "down's group caught up: {offsets:?}"
    );
    assert_in_order("down", &back);
    let dead = read_all(&brokers, &w.dlq, 1, Duration::from_secs(3)).await;
    assert!(
        dead.is_empty(),
        "an outage within its budget dead-letters nothing"
    );
    let got = unique(&back).len();
    eprintln!(
        "OUTAGE TEST (supersede = {supersede}): {n} updates; healthy targets got all, the recovered target got {got} distinct ({} requests)",
        back.received().len()
    );
    if supersede {
        assert!(
            got < n,
            "supersede = true: a backlog of four updates per incident must not all be sent ({got} of {n})"
        );
    } else {
        assert_eq!(got, n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_holds_back_only_its_target_which_then_gets_its_whole_backlog_in_order() {
    outage_then_recovery(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_supersede_a_recovered_target_gets_the_newest_update_of_each_incident() {
    outage_then_recovery(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_an_outage_loses_nothing_and_replays_at_most_a_window() {
    let Some(brokers) = clarion_tests::kafka("isolation::sigkill_during_an_outage") else {
        return;
    };
    const PARTITIONS: i32 = 6;
    const WINDOW: usize = 64;
    let w = Wiring::new(&brokers, "outage-kill", PARTITIONS).await;
    let a = Receiver::start(Behaviour::Jitter(Duration::from_millis(20))).await;
    let b = Receiver::start(Behaviour::Jitter(Duration::from_millis(20))).await;
    let port = clarion_tests::free_port();
    // Eight at a time, so that the healthy targets take about a second over the
    // thousand updates and the kill lands mid-flight: at the default 64 they were
    // done in a fifth of a second, and once (CI) before the kill that followed the
    // 50 ms poll. The window (64) still fills: eight are sent while the rest wait.
    let targets = [
        hook("a", &a.url, "concurrency = 8"),
        hook("b", &b.url, "concurrency = 8"),
        hook("down", &down_url(port), ""),
    ]
    .join("\n");
    let toml = w.config(&targets).replace(
        "[daemon]\n",
        &format!("[daemon]\nmax_in_flight = {WINDOW}\n"),
    );
    let mut daemon = Process::start(&toml, "outage-kill");
    let updates = lifecycles("kill", 250);
    let n = updates.len();
    publish_updates(&brokers, &w.topic, &updates).await;
    let published = std::time::Instant::now();

    assert!(
        a.wait_until(WAIT, |r| r.len() >= n / 3).await,
        "no progress; log:\n{}",
        daemon.log_text()
    );
    daemon.signal("KILL");
    let running = published.elapsed().as_secs_f64();
    daemon.wait(Duration::from_secs(30)).await;
    let before = [a.received().len(), b.received().len()];
    assert!(
        before[0] < n,
        "the kill must land mid-flight (a already had all {n})"
    );

    let mut again = daemon.restart();
    wait_all("a", &a, n).await;
    wait_all("b", &b, n).await;
    // The outage ends after the restart: the down target's backlog survived the kill.
    let back = Receiver::start_on(port, Behaviour::Always(200)).await;
    wait_all("down", &back, n).await;
    again.signal("TERM");
    let code = again.wait(Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "SIGTERM exits 0");

    // A crash replays what was admitted past the last commit: at most the stream's
    // window of unstored updates, plus what it stored since the last auto-commit
    // (every 200 ms; docs/configuration.md). That bounds duplicates on a healthy
    // target by its own window and rate, whatever the down target's backlog. The
    // rate term gets a factor of two for the jitter of a shared machine.
    let mut over = Vec::new();
    for (i, (name, rx)) in [("a", &a), ("b", &b)].into_iter().enumerate() {
        let duplicates = rx.delivered().len() - unique(rx).len();
        let rate = before[i] as f64 / running.max(0.001);
        let bound = WINDOW + (rate * 0.2 * 2.0).ceil() as usize;
        eprintln!(
            "OUTAGE KILL TEST: {name}: {n} updates, {duplicates} delivered twice (window {WINDOW}, {rate:.0}/s, bound {bound}); the down target's backlog: {n}"
        );
        if duplicates > bound {
            over.push(format!("{name}: {duplicates} > {bound}"));
        }
        assert_eq!(unique(rx).len(), n, "{name} lost updates");
        assert_in_order(name, rx);
    }
    assert!(
        over.is_empty(),
        "duplicates after a SIGKILL above the window of {WINDOW} plus 200 ms of deliveries: {over:?}"
    );
    assert_eq!(unique(&back).len(), n, "down target lost updates");
    assert_in_order("down", &back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_with_a_down_target_never_shows_an_older_update_after_a_newer() {
    let Some(brokers) = clarion_tests::kafka("isolation::rebalance_with_a_down_target") else {
        return;
    };
    const PARTITIONS: i32 = 6;
    let w = Wiring::new(&brokers, "outage-rebalance", PARTITIONS).await;
    let a = Receiver::start(Behaviour::Jitter(Duration::from_millis(30))).await;
    let b = Receiver::start(Behaviour::Jitter(Duration::from_millis(30))).await;
    let port = clarion_tests::free_port();
    let targets = [
        hook("a", &a.url, "concurrency = 4"),
        hook("b", &b.url, "concurrency = 4"),
        hook("down", &down_url(port), ""),
    ]
    .join("\n");
    let toml = w
        .config(&targets)
        .replace("rebalance_drain = \"5s\"", "rebalance_drain = \"1s\"");
    let first = InProcess::start(&toml);
    let updates = lifecycles("rb", 150);
    let n = updates.len();
    publish_updates(&brokers, &w.topic, &updates).await;
    assert!(
        a.wait_until(WAIT, |r| r.len() >= n / 5).await,
        "the first instance made no progress"
    );
    // The second instance joins while the first is mid-run and the down target's
    // stream holds work that cannot finish within the 1 s drain.
    let second = InProcess::start(&toml);
    // Bring the target back only once the second instance has had time to join its
    // groups (session 6 s), so the hand-over happens with its work stuck.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let back = Receiver::start_on(port, Behaviour::Jitter(Duration::from_millis(10))).await;
    wait_all("a", &a, n).await;
    wait_all("b", &b, n).await;
    wait_all("down", &back, n).await;
    let offsets = w.wait_committed(PARTITIONS).await;
    first.stop().await;
    second.stop().await;
    assert!(all_committed(&offsets), "{offsets:?}");
    for (name, rx) in [("a", &a), ("b", &b), ("down", &back)] {
        assert_in_order(name, rx);
        eprintln!(
            "REBALANCE OUTAGE TEST: {name}: {n} updates, {} deliveries",
            rx.delivered().len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_one_killed_lose_nothing_for_any_target() {
    let Some(brokers) = clarion_tests::kafka("isolation::three_replicas_one_killed") else {
        return;
    };
    const PARTITIONS: i32 = 6;
    let w = Wiring::new(&brokers, "replicas", PARTITIONS).await;
    let a = Receiver::start(Behaviour::Jitter(Duration::from_millis(20))).await;
    let b = Receiver::start(Behaviour::Jitter(Duration::from_millis(20))).await;
    let port = clarion_tests::free_port();
    let targets = [
        hook("a", &a.url, "concurrency = 4"),
        hook("b", &b.url, "concurrency = 4"),
        hook("down", &down_url(port), ""),
    ]
    .join("\n");
    let toml = w.config(&targets);
    // The first replica sets up the deployment's groups alone; the other two join
    // it. (Three first starts at once are the next test.)
    let first = Process::start(&toml, "replica0");
    wait_started(&first).await;
    let mut replicas = [
        first,
        Process::start(&toml, "replica1"),
        Process::start(&toml, "replica2"),
    ];
    let updates = lifecycles("rep", 200);
    let n = updates.len();
    publish_updates(&brokers, &w.topic, &updates).await;
    assert!(
        a.wait_until(WAIT, |r| r.len() >= n / 3).await,
        "no progress; log:\n{}",
        replicas[0].log_text()
    );
    replicas[1].signal("KILL");
    replicas[1].wait(Duration::from_secs(30)).await;
    let before = a.received().len();
    assert!(before < n, "the kill must land mid-flight");
    let back = Receiver::start_on(port, Behaviour::Always(200)).await;
    wait_all("a", &a, n).await;
    wait_all("b", &b, n).await;
    if unique(&back).len() < n
        && !back
            .wait_until(WAIT, |r| {
                r.iter()
                    .map(Received::update_id)
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= n
            })
            .await
    {
        panic!(
            "down got {} of {n}; its group's (committed, end): {:?}; logs:\n{}",
            unique(&back).len(),
            committed_and_end(&brokers, &group_of(&w, "down"), &w.topic, PARTITIONS),
            replicas
                .iter()
                .map(|r| r
                    .log_text()
                    .lines()
                    .filter(|l| l.contains("down") && !l.contains("INFO clarion::engine::dispatch"))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
    }
    let offsets = w.wait_committed(PARTITIONS).await;
    for i in [0, 2] {
        replicas[i].signal("TERM");
        let code = replicas[i].wait(Duration::from_secs(60)).await;
        assert_eq!(code, Some(0), "replica {i} exits 0 on SIGTERM");
    }
    assert!(all_committed(&offsets), "{offsets:?}");
    for (name, rx) in [("a", &a), ("b", &b), ("down", &back)] {
        assert_eq!(unique(rx).len(), n, "{name} lost updates");
        assert_in_order(name, rx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_one_group_starts_every_target_where_that_group_had_committed() {
    let Some(brokers) = clarion_tests::kafka("isolation::upgrade_from_one_group") else {
        return;
    };
    const PARTITIONS: i32 = 3;
    let w = Wiring::new(&brokers, "upgrade", PARTITIONS).await;
    let updates = lifecycles("up", 30);
    publish_updates(&brokers, &w.topic, &updates).await;
    let records = read_all(&brokers, &w.topic, updates.len(), WAIT).await;
    assert_eq!(records.len(), updates.len());
    // The old single-group daemon had committed about half of each partition.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    for r in &records {
        let e = ends.entry(r.partition).or_default();
        *e = (*e).max(r.offset + 1);
    }
    let committed: Vec<(i32, i64)> = ends.iter().map(|(p, end)| (*p, end / 2)).collect();
    clarion_tests::kafka::commit_group(&brokers, &w.group, &w.topic, &committed);
    let k: BTreeMap<i32, i64> = committed.iter().copied().collect();
    let expected: BTreeSet<String> = records
        .iter()
        .filter(|r| r.offset >= k[&r.partition])
        .map(|r| {
            serde_json::from_slice::<IncidentUpdate>(&r.payload)
                .expect("update")
                .update_id
        })
        .collect();
    assert!(!expected.is_empty() && expected.len() < updates.len());

    let a = Receiver::start(Behaviour::Always(200)).await;
    let b = Receiver::start(Behaviour::Always(200)).await;
    let targets = [hook("a", &a.url, ""), hook("b", &b.url, "")].join("\n");
    let daemon = InProcess::start(&w.config(&targets));
    wait_all("a", &a, expected.len()).await;
    wait_all("b", &b, expected.len()).await;
    let offsets = w.wait_committed(PARTITIONS).await;
    daemon.stop().await;
    assert!(all_committed(&offsets), "{offsets:?}");
    for (name, rx) in [("a", &a), ("b", &b)] {
        assert_eq!(
            unique(rx),
            expected,
            "{name}: exactly the updates from the old group's commit on"
        );
        assert_eq!(rx.received().len(), expected.len(), "{name}: no duplicates");
    }
}

/// Runs `clarion dlq replay` with `args`; returns the exit code and stdout.
fn replay(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(clarion_tests::daemon::binary())
        .args(["dlq", "replay", "-c"])
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run clarion dlq replay");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("dlq replay {args:?}:\n{stdout}{stderr}");
    (out.status.code(), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_redelivers_to_that_target_only_with_the_same_idempotency_keys() {
    let Some(brokers) = clarion_tests::kafka("isolation::dlq_replay") else {
        return;
    };
    let w = Wiring::new(&brokers, "replay", 2).await;
    let ok = Receiver::start(Behaviour::Always(200)).await;
    let strict = Receiver::start(Behaviour::Always(400)).await;
    let fixed = Receiver::start(Behaviour::Always(200)).await;
    let config_with =
        |url: &str| w.config(&[hook("ok", &ok.url, ""), hook("strict", url, "")].join("\n"));
    let daemon = InProcess::start(&config_with(&strict.url));
    let updates = lifecycles("rp", 3);
    let n = updates.len();
    publish_updates(&brokers, &w.topic, &updates).await;
    let dead = read_all(&brokers, &w.dlq, n, WAIT).await;
    assert_eq!(dead.len(), n, "strict's 400s are dead-lettered");
    wait_all("ok", &ok, n).await;
    let offsets = w.wait_committed(2).await;
    daemon.stop().await;
    assert!(all_committed(&offsets), "{offsets:?}");
    let first_ids: BTreeMap<String, String> = strict
        .received()
        .iter()
        .map(|r| (r.update_id().to_string(), r.headers["webhook-id"].clone()))
        .collect();
    assert_eq!(first_ids.len(), n);

    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("replay"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("clarion.toml");

    // Still rejecting: every one is dead-lettered again, and the exit code says so.
    std::fs::write(&config, config_with(&strict.url)).expect("config");
    let (code, out) = replay(&config, &["--target", "strict"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("0 delivered, {n} dead-lettered again")),
        "{out}"
    );
    assert_eq!(strict.received().len(), 2 * n);
    let again = read_all(&brokers, &w.dlq, 2 * n, WAIT).await;
    assert_eq!(again.len(), 2 * n, "failed replays are dead-lettered again");

    // Fixed: a dry run lists them (once each, though each is now dead-lettered
    // twice) and sends nothing.
    std::fs::write(&config, config_with(&fixed.url)).expect("config");
    let (code, out) = replay(&config, &["--target", "strict", "--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("{n} dead letter(s) of target `strict`")),
        "{out}"
    );
    for u in &updates {
        assert_eq!(
            out.matches(&format!("update {} ", u.update_id)).count(),
            1,
            "{out}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fixed.received().is_empty(), "a dry run sends nothing");

    // --incident narrows it to one incident.
    let (code, out) = replay(
        &config,
        &["--target", "strict", "--incident", "rp-1", "--dry-run"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("4 dead letter(s)"), "{out}");

    let (code, out) = replay(&config, &["--target", "strict", "--since", "1h"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("{n} delivered, 0 dead-lettered again")),
        "{out}"
    );
    let got = fixed.received();
    assert_eq!(got.len(), n, "each dead-lettered update exactly once");
    for r in &got {
        assert_eq!(
            Some(&r.headers["webhook-id"]),
            first_ids.get(r.update_id()),
            "the replay carries the first try's idempotency key"
        );
    }
    assert_in_order("strict (replayed)", &fixed);
    assert_eq!(ok.received().len(), n, "the other target gets nothing more");
    assert_eq!(
        read_all(&brokers, &w.dlq, 2 * n + 1, Duration::from_secs(3))
            .await
            .len(),
        2 * n,
        "a delivered replay writes no dead letter"
    );
}

/// Waits until a daemon process has started its streams.
async fn wait_started(p: &Process) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !p.log_text().contains("clarion started") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon did not start; log:\n{}",
            p.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_started_together_for_the_first_time_skip_nothing() {
    let Some(brokers) = clarion_tests::kafka("isolation::three_replicas_started_together") else {
        return;
    };
    const PARTITIONS: i32 = 6;
    let w = Wiring::new(&brokers, "replicas-first", PARTITIONS).await;
    let a = Receiver::start(Behaviour::Always(200)).await;
    let b = Receiver::start(Behaviour::Always(200)).await;
    let c = Receiver::start(Behaviour::Always(200)).await;
    let targets = [
        hook("a", &a.url, ""),
        hook("b", &b.url, ""),
        hook("c", &c.url, ""),
    ]
    .join("\n");
    let toml = w.config(&targets);
    // A new deployment rolled out with three replicas at once, while ops publish:
    // every replica sets up the target groups' starting points at the same time, and
    // none may mistake a target another replica just set up for one "added later"
    // (which starts at the end of the topic, skipping what was published).
    let updates = lifecycles("rf", 150);
    let n = updates.len();
    let publishing = tokio::spawn({
        let (brokers, topic) = (brokers.clone(), w.topic.clone());
        async move { publish_updates(&brokers, &topic, &updates).await }
    });
    let mut replicas: Vec<Process> = (0..3)
        .map(|i| Process::start(&toml, &format!("first-replica{i}")))
        .collect();
    publishing.await.expect("publishing");
    for (name, rx) in [("a", &a), ("b", &b), ("c", &c)] {
        let ok = rx
            .wait_until(WAIT, |r| {
                r.iter()
                    .map(Received::update_id)
                    .collect::<BTreeSet<_>>()
                    .len()
                    >= n
            })
            .await;
        let seeded: Vec<String> = replicas
            .iter()
            .flat_map(|p| {
                p.log_text()
                    .lines()
                    .filter(|l| l.contains("new target stream starts"))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert!(
            ok,
            "{name} got {} of {n} updates; the replicas seeded the groups so:\n{}",
            unique(rx).len(),
            seeded.join("\n")
        );
    }
    for p in &mut replicas {
        p.signal("TERM");
        assert_eq!(p.wait(Duration::from_secs(60)).await, Some(0));
    }
    for (name, rx) in [("a", &a), ("b", &b), ("c", &c)] {
        assert_eq!(unique(rx).len(), n, "{name} lost updates");
        assert_in_order(name, rx);
    }
}
