//! Hardening against a real broker: records that used to freeze a partition (too
//! large to dead-letter, tombstones), a misnamed topic found at start-up instead of
//! mid-incident, and a stop that stays bounded with the brokers gone.

use clarion_core::samples;
use clarion_tests::broker::OwnBroker;
use clarion_tests::daemon::{InProcess, Process, Wiring};
use clarion_tests::kafka::read_all;
use clarion_tests::receiver::{Behaviour, Receiver};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn webhook_target(url: &str) -> String {
    format!("[targets.hook]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"{url}\"\n")
}

/// A producer that may send records up to 2 MB (librdkafka's own default limit is
/// 1,000,000 bytes; the broker takes up to about 1 MiB).
fn big_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "2000000")
        .create()
        .expect("producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_to_dead_letter_whole_is_written_truncated_and_the_partition_moves_on() {
    let Some(brokers) = clarion_tests::kafka("a_record_too_large_to_dead_letter_whole") else {
        return;
    };
    let w = Wiring::new(&brokers, "oversize", 1).await;
    let rx = Receiver::start(Behaviour::Always(200)).await;
    let daemon = InProcess::start(&w.config(&webhook_target(&rx.url)));

    let p = big_producer(&brokers);
    // The size measured in the issue: accepted by the broker, but with the
    // dead-letter headers over the producer's 1,000,000-byte limit.
    let huge = vec![b'x'; 1_040_031];
    let t = Duration::from_secs(30);
    p.send(FutureRecord::to(&w.topic).key("big").payload(&huge[..]), t)
        .await
        .expect("publish the large record");
    // A tombstone: a key and no value.
    p.send(FutureRecord::<str, [u8]>::to(&w.topic).key("INC-T"), t)
        .await
        .expect("publish a tombstone");
    let good = samples::lifecycle("OV", "ov", &["customers"], jiff::Timestamp::now()).remove(0);
    let body = serde_json::to_vec(&good).expect("json");
    p.send(FutureRecord::to(&w.topic).key("OV").payload(&body[..]), t)
        .await
        .expect("publish a good update");

    let mut dead = read_all(&brokers, &w.dlq, 2, WAIT).await;
    assert!(
        rx.wait_until(WAIT, |r| !r.is_empty()).await,
        "the good update behind them is delivered"
    );
    let offsets = w.wait_committed(1).await;
    daemon.stop().await;

    assert_eq!(
        offsets,
        vec![(3, 3)],
        "the commit moved past both bad records"
    );
    // By the source offset: the small dead letter may be written before the big one.
    dead.sort_by_key(|d| {
        d.headers
            .get("clarion.dlq.source.offset")
            .and_then(|o| o.parse::<i64>().ok())
            .unwrap_or(-1)
    });
    assert_eq!(
        dead.len(),
        2,
        "{:?}",
        dead.iter().map(|d| &d.headers).collect::<Vec<_>>()
    );
    let big = &dead[0];
    big.assert_dlq_headers(&[
        ("kind", "malformed_event"),
        ("source.offset", "0"),
        ("truncated", "true"),
        ("original_size", "1040031"),
    ]);
    assert!(
        big.payload.len() < 1_000_000 && big.payload.len() > 900_000,
        "{}",
        big.payload.len()
    );
    assert!(
        big.payload.iter().all(|b| *b == b'x'),
        "a prefix of the original bytes"
    );
    let tomb = &dead[1];
    tomb.assert_dlq_headers(&[("kind", "malformed_event"), ("source.offset", "1")]);
    let reason = &tomb.headers["clarion.dlq.reason"];
    assert!(reason.contains("tombstone"), "{reason}");
    assert!(!reason.contains("EOF"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_or_dead_recipient_topic_is_refused_at_start() {
    let Some(brokers) = clarion_tests::kafka("a_missing_dead_recipient_topic_is_refused_at_start")
    else {
        return;
    };
    let w = Wiring::new(&brokers, "missing-topic", 1).await;
    let typo = clarion_tests::unique_topic("dead-recipeints");
    let config = w.config(&webhook_target("http://127.0.0.1:9/")).replace(
        "[daemon]",
        &format!("dead_recipient_topic = \"{typo}\"\n\n[daemon]"),
    );
    let err = InProcess::start(&config)
        .result()
        .await
        .expect_err("a missing dead-recipient topic must stop the start");
    let msg = format!("{err:#}");
    assert!(msg.contains(&typo), "the error names the topic: {msg}");

    let mut missing_dlq = w.clone();
    missing_dlq.dlq = clarion_tests::unique_topic("no-such-dlq");
    let err = InProcess::start(&missing_dlq.config(&webhook_target("http://127.0.0.1:9/")))
        .result()
        .await
        .expect_err("a missing dead-letter topic must stop the start");
    assert!(format!("{err:#}").contains(&missing_dlq.dlq), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_gone_exits_within_the_units_stop_timeout() {
    // Needs the shared broker only to know that this machine can run one.
    if clarion_tests::kafka("sigterm_with_the_broker_gone").is_none() {
        return;
    }
    let broker = OwnBroker::start();
    let w = Wiring::new(&broker.addr, "sigterm-gone", 2).await;
    // Deliveries hang, so updates are in flight when the broker goes away.
    let rx = Receiver::start(Behaviour::Slow(Duration::from_secs(3600))).await;
    let config = w
        .config(&webhook_target(&rx.url))
        .replace("shutdown_grace = \"20s\"", "shutdown_grace = \"5s\"");
    let mut daemon = Process::start(&config, "sigterm-gone");
    let updates = samples::lifecycle("SG", "sg", &["customers"], jiff::Timestamp::now());
    clarion_tests::kafka::publish_updates(&broker.addr, &w.topic, &updates).await;
    assert!(
        rx.wait_until(WAIT, |_| rx.started() > 0).await,
        "a delivery is in flight"
    );

    broker.stop();
    daemon.signal("TERM");
    // The shipped systemd unit's TimeoutStopSec: past it, systemd SIGKILLs. Before
    // the fix this took the grace period plus about 55 s.
    let code = daemon.wait(Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "log:\n{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(
        log.contains("abandoning"),
        "in-flight work was abandoned, not committed:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_a_webhook_url_reaches_neither_the_logs_nor_the_dead_letter() {
    let Some(brokers) = clarion_tests::kafka("a_secret_in_a_webhook_url") else {
        return;
    };
    let w = Wiring::new(&brokers, "url-secret", 1).await;
    // An incoming-webhook URL (Slack, Teams) is itself the credential: its path and
    // its query. Nothing listens on the port, so every attempt fails to connect.
    let closed = clarion_tests::free_port();
    let url =
        format!("http://127.0.0.1:{closed}/services/T000/B000/s3cr3tPATHxyz?token=s3cr3tQUERYxyz");
    let config = w
        .config(&webhook_target(&url))
        .replace("max_attempts = 6", "max_attempts = 2");
    let mut daemon = Process::start(&config, "url-secret");
    let updates = samples::lifecycle("US", "us", &["customers"], jiff::Timestamp::now());
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates[..1]).await;
    let dead = read_all(&brokers, &w.dlq, 1, WAIT).await;
    daemon.signal("TERM");
    daemon.wait(Duration::from_secs(60)).await;
    let log = daemon.log_text();

    assert_eq!(dead.len(), 1, "the delivery is dead-lettered; log:\n{log}");
    let reason = &dead[0].headers["clarion.dlq.reason"];
    assert!(
        reason.contains("127.0.0.1"),
        "the reason still says where: {reason}"
    );
    assert!(
        log.contains("delivery failed"),
        "the failure was logged:\n{log}"
    );
    for secret in ["s3cr3tPATHxyz", "s3cr3tQUERYxyz"] {
        assert!(!log.contains(secret), "`{secret}` in the log:\n{log}");
        for (k, v) in &dead[0].headers {
            assert!(
                !v.contains(secret),
                "`{secret}` in dead-letter header {k}: {v}"
            );
        }
    }
}
