//! What the SRE on call sees, against the real broker and the real binary:
//! `/readyz` follows the brokers (with one log line per outage, not librdkafka's
//! stream of them), `/metrics` is complete before any traffic, and WARN-level logs
//! say which incident and target every delivery failure is about.

use clarion_core::samples;
use clarion_tests::broker::OwnBroker;
use clarion_tests::daemon::{Process, Wiring};
use clarion_tests::receiver::{Behaviour, Receiver};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn webhook_target(url: &str) -> String {
    format!(
        "[targets.hook]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"{url}\"\ndrill_recipients = [\"http://127.0.0.1:9/drill\"]\n"
    )
}

/// A config serving metrics and health on `port`.
pub fn with_metrics(config: &str, port: u16) -> String {
    config.replacen(
        "[daemon]",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n[daemon]"),
        1,
    )
}

/// `GET path` on the daemon's metrics listener: (status, body), or None when
/// nothing answers.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// Polls `path` until `want` holds for (status, body), up to `timeout`; returns
/// the last answer either way.
pub async fn wait_for(
    port: u16,
    path: &str,
    timeout: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        last = get(port, path).await;
        if let Some((status, body)) = &last
            && want(*status, body)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    last
}

/// Every metric name an operator may alert or chart on (docs/runbook.md); each
/// must be on `/metrics` from the start.
pub const METRICS: &[&str] = &[
    "clarion_stream_lag_records",
    "clarion_partition_lag_records",
    "clarion_oldest_unresolved_age_seconds",
    "clarion_stream_in_flight",
    "clarion_stream_window",
    "clarion_stream_assigned_partitions",
    "clarion_stream_pauses_total",
    "clarion_rebalances_total",
    "clarion_commit_failures_total",
    "clarion_dead_letter_write_failures_total",
    "clarion_breaker_state",
    "clarion_breaker_transitions_total",
    "clarion_notifications_total",
    "clarion_notifications_failed_total",
    "clarion_send_duration_seconds",
    "clarion_end_to_end_latency_seconds",
    "clarion_delivery_attempts_total",
    "clarion_dead_letters_total",
    "clarion_events_consumed_total",
    "clarion_events_rejected_total",
    "clarion_key_mismatches_total",
    "clarion_panics_total",
    "clarion_build_info",
    "clarion_ready",
    "clarion_kafka_connected",
    "clarion_config_last_reload_success",
    "clarion_config_last_reload_success_timestamp_seconds",
    "clarion_drill_last_success_timestamp_seconds",
];

/// The metric names that have at least one sample on a `/metrics` page.
pub fn sampled_names(page: &str) -> std::collections::BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .flat_map(|n| {
            // A histogram's samples are NAME_bucket, NAME_sum and NAME_count.
            let base = n
                .strip_suffix("_bucket")
                .or_else(|| n.strip_suffix("_sum"))
                .or_else(|| n.strip_suffix("_count"));
            [Some(n.to_string()), base.map(str::to_string)]
        })
        .flatten()
        .collect()
}

/// Starts the binary against `brokers` with metrics on a free port, waits until it
/// is ready, and returns the daemon, its port and the `/metrics` page scraped then,
/// before anything is published.
pub async fn ready_daemon(brokers: &str, name: &str) -> (Process, u16, String) {
    let w = Wiring::new(brokers, name, 2).await;
    let port = clarion_tests::free_port();
    let config = with_metrics(&w.config(&webhook_target("http://127.0.0.1:9/")), port);
    let daemon = Process::start(&config, name);
    let ready = wait_for(port, "/readyz", Duration::from_secs(120), |s, _| s == 200).await;
    assert!(
        matches!(ready, Some((200, _))),
        "never ready: {ready:?}; log:\n{}",
        daemon.log_text()
    );
    let (status, page) = get(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200);
    (daemon, port, page)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_complete_before_any_traffic_and_other_paths_are_404() {
    let Some(brokers) = clarion_tests::kafka("metrics_are_complete_before_any_traffic") else {
        return;
    };
    let (mut daemon, port, page) = ready_daemon(&brokers, "ops-metrics").await;
    let names = sampled_names(&page);
    let missing: Vec<&&str> = METRICS.iter().filter(|m| !names.contains(**m)).collect();
    assert!(
        missing.is_empty(),
        "missing before traffic: {missing:?}\n{page}"
    );
    // Nothing was published: the counters are there, at zero.
    assert!(
        page.contains("\nclarion_events_consumed_total 0\n"),
        "{page}"
    );
    assert!(
        page.contains("clarion_notifications_total{target=\"hook\",outcome=\"delivered\"} 0"),
        "{page}"
    );
    assert!(page.contains("clarion_ready 1"), "{page}");
    assert!(
        page.contains("# HELP clarion_oldest_unresolved_age_seconds"),
        "{page}"
    );
    let (status, body) = get(port, "/livez").await.expect("/livez");
    assert_eq!(status, 200, "{body}");
    // Transparent huge pages are off for the daemon's process (main.rs,
    // docs/benchmarks.md): the kernel's own view of it.
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", daemon.child.id()))
        .expect("/proc/PID/status");
    if let Some(line) = proc_status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    for path in ["/", "/healthz", "/ready", "/metricsx"] {
        let (status, _) = get(port, path).await.expect("answers");
        assert_eq!(status, 404, "{path}");
    }
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(60)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_when_the_broker_stops_and_ready_when_it_is_back() {
    // Needs the shared broker only to know that this machine can run one.
    if clarion_tests::kafka("readyz_follows_the_broker").is_none() {
        return;
    }
    let mut broker = OwnBroker::start();
    let (mut daemon, port, _) = ready_daemon(&broker.addr, "ops-ready").await;

    broker.kill();
    let down = wait_for(port, "/readyz", Duration::from_secs(90), |s, _| s == 503).await;
    let log = daemon.log_text();
    let Some((503, body)) = down else {
        panic!("still ready with the broker gone: {down:?}\n{log}");
    };
    assert!(body.contains("unreachable"), "the body says why: {body}");
    // The runtime is fine: only readiness fails, so Kubernetes does not restart it.
    assert_eq!(get(port, "/livez").await.map(|(s, _)| s), Some(200));
    let (_, page) = get(port, "/metrics").await.expect("/metrics");
    assert!(page.contains("clarion_ready 0"), "{page}");
    // Readiness turns on the first client to lose the brokers; each client's own
    // gauge follows when that client notices (its error callback, or at the latest
    // its next statistics report, every 5 s), so the target's consumer may lag.
    let hook_down = wait_for(port, "/metrics", Duration::from_secs(30), |_, page| {
        page.contains("clarion_kafka_connected{client=\"hook\"} 0")
    })
    .await;
    assert!(
        hook_down
            .as_ref()
            .is_some_and(|(_, page)| page.contains("clarion_kafka_connected{client=\"hook\"} 0")),
        "the target's consumer never reported the brokers gone: {hook_down:?}"
    );

    broker.restart().await;
    let up = wait_for(port, "/readyz", Duration::from_secs(120), |s, _| s == 200).await;
    let log = daemon.log_text();
    assert!(
        matches!(up, Some((200, _))),
        "not ready again after the broker came back: {up:?}\n{log}"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(60)).await, Some(0));
    let log = daemon.log_text();
    // One line when the brokers went, one when they came back; librdkafka's own
    // per-retry errors (several a second, per client) are not in the log.
    assert_eq!(
        log.matches("Kafka brokers unreachable since").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("Kafka brokers reachable again after").count(),
        1,
        "{log}"
    );
    // What librdkafka itself said is rate-limited: no ERROR line from it, no line
    // twice (a single WARN such as a session timeout is worth reading), and no
    // per-poll consumer errors.
    let mut seen = std::collections::BTreeSet::new();
    for line in log.lines().filter(|l| l.contains("fac=")) {
        assert!(
            !line.contains(" ERROR "),
            "librdkafka error in the log: {line}"
        );
        let message = line.split_once(' ').map_or(line, |(_, rest)| rest);
        assert!(seen.insert(message), "repeated: {line}\n{log}");
    }
    assert!(!log.contains("kafka consumer error"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warn_logs_name_the_incident_and_target_of_every_delivery_failure() {
    let Some(brokers) = clarion_tests::kafka("warn_logs_name_the_incident_and_target") else {
        return;
    };
    let w = Wiring::new(&brokers, "ops-warn", 1).await;
    let rx = Receiver::start(Behaviour::Always(503)).await;
    let config = w
        .config(&webhook_target(&rx.url))
        .replace("max_attempts = 6", "max_attempts = 3");
    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("ops-warn"));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("clarion.toml"), &config).expect("config");
    clarion_tests::capture::record_config(&config);
    let log_path = clarion_tests::capture::log_path("ops-warn").unwrap_or_else(|| dir.join("log"));
    let out = std::fs::File::create(&log_path).expect("log");
    let mut child = clarion_tests::ChildGuard::spawn(
        std::process::Command::new(clarion_tests::daemon::binary())
            .args(["run", "--config"])
            .arg(dir.join("clarion.toml"))
            // What busy deployments and the benchmarks run with.
            .env("RUST_LOG", "warn")
            .stdout(out.try_clone().expect("log"))
            .stderr(out),
    )
    .expect("spawn clarion");
    let updates = samples::lifecycle("INC-OPSW", "opsw", &["customers"], jiff::Timestamp::now());
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates[..1]).await;
    let dead = clarion_tests::kafka::read_all(&brokers, &w.dlq, 1, Duration::from_secs(60)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = child.0.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(dead.len(), 1, "the update was dead-lettered; log:\n{log}");
    let failures: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("delivery failed") || l.contains("delivery given up"))
        .collect();
    // Three attempts: two "will retry" lines, then the last failure and the
    // dead-letter line.
    assert!(failures.len() >= 3, "failure lines:\n{log}");
    assert!(
        failures.iter().any(|l| l.contains("delivery given up")),
        "{log}"
    );
    for line in failures {
        for field in [
            "incident_id=INC-OPSW",
            &format!("update_id={}", updates[0].update_id),
            "target=\"hook\"",
            "channel=\"webhook\"",
            "attempt=",
        ] {
            assert!(line.contains(field), "`{field}` missing from: {line}");
        }
    }
}
