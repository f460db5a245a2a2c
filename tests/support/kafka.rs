//! Talking to the real broker from tests: topics, producing, reading the
//! dead-letter topic, committed offsets.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::Duration;

/// Creates a topic with `partitions` partitions and waits until it is usable.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let r = admin
        .create_topics(
            [&t],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics request");
    for res in r {
        res.expect("topic created");
    }
}

/// An idempotent producer keyed like ops' producers (murmur2, as Java's default).
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .expect("producer")
}

/// Publishes one record and waits for the broker's acknowledgement.
pub async fn publish(p: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    p.send(
        FutureRecord::to(topic).key(key).payload(payload),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("publish");
}

/// Publishes updates as ops do: JSON, keyed by incident, in order.
pub async fn publish_updates(brokers: &str, topic: &str, updates: &[clarion_core::IncidentUpdate]) {
    let p = producer(brokers);
    for u in updates {
        let body = serde_json::to_vec(u).expect("json");
        publish(&p, topic, &u.incident_id, &body).await;
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub partition: i32,
    pub offset: i64,
}

impl Record {
    /// Asserts the `clarion.dlq.*` headers named here (without that prefix) have
    /// these values.
    pub fn assert_dlq_headers(&self, expected: &[(&str, &str)]) {
        for (name, value) in expected {
            let key = format!("clarion.dlq.{name}");
            assert_eq!(
                self.headers.get(&key).map(String::as_str),
                Some(*value),
                "header {key} of {:?}",
                self.headers
            );
        }
    }

    /// The original update a dead letter carries as its value, checked to be keyed
    /// by its incident, as the source record was.
    pub fn original_update(&self) -> clarion_core::IncidentUpdate {
        let original: clarion_core::IncidentUpdate =
            serde_json::from_slice(&self.payload).expect("the DLQ value is the original update");
        assert_eq!(
            self.key.as_deref(),
            Some(original.incident_id.as_str()),
            "dead letter keyed by incident"
        );
        original
    }
}

/// Reads every record of `topic` from the beginning until `want` were read or
/// `timeout` passed.
pub async fn read_all(brokers: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Record> {
    read_until(brokers, topic, timeout, |got| got.len() >= want).await
}

/// Reads every record of `topic` from the beginning until `done` says the records
/// read so far are enough, or `timeout` passed.
pub async fn read_until(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", crate::unique_topic("g")))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("reader consumer");
    c.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&out) {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                out.push(Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                    partition: m.partition(),
                    offset: m.offset(),
                });
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// The group's committed offset and the high watermark of each partition.
pub fn committed_and_end(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i64, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("offset reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| {
            let off = match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            };
            let (_, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            (off, high)
        })
        .collect()
}

/// The deployment's groups: `group` itself (the events stream) and every target
/// stream's `group.<target>` the broker knows.
pub fn deployment_groups(brokers: &str, group: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("group lister");
    let prefix = format!("{group}.");
    let mut groups = vec![group.to_string()];
    if let Ok(list) = c.fetch_group_list(None, Duration::from_secs(10)) {
        groups.extend(
            list.groups()
                .iter()
                .map(|g| g.name().to_string())
                .filter(|n| n.starts_with(&prefix)),
        );
    }
    groups
}

/// Per partition, the lowest committed offset over the deployment's groups (the
/// stream furthest behind), and the high watermark.
pub fn deployment_committed_and_end(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i64, i64)> {
    let mut out: Option<Vec<(i64, i64)>> = None;
    for g in deployment_groups(brokers, group) {
        let offsets = committed_and_end(brokers, &g, topic, partitions);
        out = Some(match out {
            None => offsets,
            Some(prev) => prev
                .into_iter()
                .zip(offsets)
                .map(|((a, end), (b, _))| (a.min(b), end))
                .collect(),
        });
    }
    out.unwrap_or_default()
}

/// True when a group's commit reached the end of every partition that has records
/// (`offsets` as from [`committed_and_end`]).
pub fn all_committed(offsets: &[(i64, i64)]) -> bool {
    offsets.iter().all(|(c, end)| *end == 0 || c == end)
}

/// Commits `offsets` (partition, next offset to read) for `group` on `topic`, as a
/// member of that group would: a consumer with manual assignment, never subscribed.
/// The group must have no active members.
pub fn commit_group(brokers: &str, group: &str, topic: &str, offsets: &[(i32, i64)]) {
    use rdkafka::consumer::CommitMode;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("committer");
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .expect("partition offset");
    }
    c.assign(&tpl).expect("assign");
    c.commit(&tpl, CommitMode::Sync).expect("commit");
}
