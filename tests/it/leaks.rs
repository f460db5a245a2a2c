//! The last check of the suite: no secret that any test configured appears in any
//! daemon log or in any dead-letter or dead-recipient record. Ignored in the ordinary
//! run because it must see everything the other tests left: `scripts/test` runs it
//! after them (`--ignored leaks::`), with `CLARION_TEST_CAPTURE` set.

use clarion_tests::capture;
use clarion_tests::kafka::read_all;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

/// Dead-letter and dead-recipient topics made by the suite's wiring.
fn is_dead_letter_topic(name: &str) -> bool {
    name.contains("dlq") || name.contains("dead")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run last by scripts/test, after the suite it checks"]
async fn no_configured_secret_reaches_a_log_or_a_dead_letter() {
    let Some(brokers) = clarion_tests::kafka("no_configured_secret_reaches_a_log_or_a_dead_letter")
    else {
        return;
    };
    let Some(dir) = capture::dir() else {
        eprintln!("SKIPPED leaks: {} is not set", capture::CAPTURE_ENV);
        return;
    };
    let (secrets, logs) = capture::read(&dir);
    // A check over nothing would pass whatever leaked: insist on material.
    assert!(
        secrets.len() >= 5,
        "too few secrets captured ({}): is the suite recording its configs?",
        secrets.len()
    );
    assert!(
        logs.iter().map(|(_, t)| t.len()).sum::<usize>() > 10_000,
        "too little log captured: is the suite teeing its daemons' logs?"
    );

    let mut texts: Vec<(String, String)> = logs
        .into_iter()
        .map(|(p, t)| (p.display().to_string(), t))
        .collect();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("metadata client");
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(30))
        .expect("metadata");
    let mut dead_topics = 0;
    for t in md
        .topics()
        .iter()
        .filter(|t| is_dead_letter_topic(t.name()))
    {
        let mut records = 0;
        for p in t.partitions() {
            let (lo, hi) = consumer
                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(30))
                .expect("watermarks");
            records += (hi - lo).max(0) as usize;
        }
        if records == 0 {
            continue;
        }
        dead_topics += 1;
        for r in read_all(&brokers, t.name(), records, Duration::from_secs(60)).await {
            let mut text = format!("key={:?}\n", r.key);
            for (k, v) in &r.headers {
                text.push_str(&format!("{k}: {v}\n"));
            }
            text.push_str(&String::from_utf8_lossy(&r.payload));
            texts.push((format!("{}/{}@{}", t.name(), r.partition, r.offset), text));
        }
    }
    assert!(dead_topics > 0, "no dead-letter record to check");

    let mut leaks = Vec::new();
    for s in &secrets {
        for (where_, text) in &texts {
            if text.contains(s.as_str()) {
                leaks.push(format!("`{s}` in {where_}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} secret(s) leaked, checked {} secrets over {} logs and records:\n{}",
        leaks.len(),
        secrets.len(),
        texts.len(),
        leaks.join("\n")
    );
    eprintln!(
        "leaks: {} secrets, {} logs and dead-letter records, none leaked",
        secrets.len(),
        texts.len()
    );
}
