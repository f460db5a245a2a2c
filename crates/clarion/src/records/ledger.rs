//! The delivery ledger and the incident-state topic: the record of who was told what
//! and when, kept in Kafka beside the dead-letter topic (docs/ledger.md).
//!
//! Both are written with the dead letters' guarantee (`DeadLetterWriter`'s produce
//! loop: acks=all, idempotent, retried until acknowledged): a delivery counts as
//! resolved, and its update's offset may be committed, only once its ledger record
//! is acknowledged. This module must never let a delivery resolve on a record that
//! was not written, and never write a full recipient address (they are masked).

use crate::config::{KafkaConfig, Settings};
use crate::records::deadlines::DeadlineTracker;
use crate::records::dlq::{Abandoned, DeadLetterWriter, Source, Written};
use anyhow::{Context as _, Result, anyhow, bail};
use clarion_core::{IncidentUpdate, SecretResolver};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The ledger record's shape this daemon writes; docs/ledger.schema.json describes
/// version 2 (docs/ledger.schema.v1.json the version 1 that older daemons wrote).
pub const SCHEMA_VERSION: u32 = 2;

/// The versions readers take: 1 recorded final outcomes only, 2 also what is due
/// and pending.
pub const READABLE_VERSIONS: [u32; 2] = [1, 2];

/// The `outcome` values (docs/ledger.md). `due` and `pending` are not final: a
/// notice they describe is still to be delivered.
pub mod outcome {
    /// The events stream found that a target takes the update (routing).
    pub const DUE: &str = "due";
    /// An attempt failed and another follows, or the delivery waits for its
    /// target's breaker.
    pub const PENDING: &str = "pending";
    pub const DELIVERED: &str = "delivered";
    pub const DEAD_LETTERED: &str = "dead_lettered";
    pub const SUPERSEDED: &str = "superseded";
    /// A delivery to recipients has ended: every recipient's own record is above.
    pub const RESOLVED: &str = "resolved";
}

/// How long a reason may be in a ledger record; longer ones are cut (the dead letter
/// keeps the whole text), so that a record always fits the topic.
const MAX_REASON_CHARS: usize = 2000;

/// One outcome of one delivery: a final one (per recipient for channels with
/// recipients), or, from version 2, a state on the way (`due`, `pending`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerRecord {
    pub schema_version: u32,
    pub incident_id: String,
    pub update_id: String,
    pub sequence: u64,
    pub status: String,
    pub impact: String,
    pub target: String,
    pub channel: String,
    pub audiences: Vec<String>,
    /// Masked (`telemetry::mask`); `None` for webhooks and whole-delivery outcomes.
    pub recipient: Option<String>,
    /// Tells recipients apart whose masks collide: see [`recipient_ref`].
    pub recipient_ref: Option<String>,
    /// One of [`outcome`]'s values.
    pub outcome: String,
    pub attempts: u32,
    pub first_attempt_at: Option<jiff::Timestamp>,
    /// When the outcome was decided; `None` for `due` and `pending`, which are not
    /// final (version 1 records are all final and always have it).
    pub final_at: Option<jiff::Timestamp>,
    /// When the record was written (version 2; absent from version 1 records).
    #[serde(default)]
    pub recorded_at: Option<jiff::Timestamp>,
    pub occurred_at: jiff::Timestamp,
    /// The update's Kafka record timestamp.
    pub published_at: Option<jiff::Timestamp>,
    pub latency_ms: u64,
    /// The provider of the last attempt (the one that delivered, or failed last).
    #[serde(default)]
    pub provider: Option<String>,
    /// A drill's delivery (to `drill_recipients`), not an incident notice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
    pub provider_id: Option<String>,
    pub error: Option<LedgerError>,
    pub superseded_by: Option<String>,
    pub idempotency_key: String,
    pub source: SourceRef,
    /// For `pending`: when the next attempt is due (the next probe, while the
    /// target's breaker is open); `None` when not known.
    #[serde(default)]
    pub next_attempt_at: Option<jiff::Timestamp>,
    /// For `due` and `pending`: the target's breaker (`closed`, `open`,
    /// `half_open`) as the daemon saw it when it wrote the record.
    #[serde(default)]
    pub breaker: Option<String>,
    /// For `pending`: how many recipients the next attempt is for; `None` when the
    /// channel has none (webhooks) or the attempt did not say.
    #[serde(default)]
    pub recipients_pending: Option<u32>,
    /// Written by `clarion dlq replay`, not by the daemon.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

/// Why a delivery was dead-lettered, or, for `pending` and `due`, the last error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerError {
    /// `retryable` (ran out of attempts or time), `permanent`, `recipient_gone`.
    pub class: String,
    pub code: Option<String>,
    pub reason: String,
}

impl LedgerError {
    /// A delivery error as the ledger records it.
    pub fn of(e: &clarion_core::DeliveryError) -> Self {
        LedgerError {
            class: e.class.as_str().to_string(),
            code: e.code.clone(),
            reason: e.reason.clone(),
        }
    }
}

/// Where an update was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl SourceRef {
    pub fn of(source: &Source) -> Self {
        SourceRef {
            topic: source.topic.clone(),
            partition: source.partition,
            offset: source.offset,
        }
    }
}

impl LedgerRecord {
    /// A record of `update` for `target`, with nothing tried yet: the base that the
    /// daemon's writers fill in.
    pub fn of_update(
        update: &IncidentUpdate,
        source: &Source,
        target: &str,
        channel: &str,
        audiences: Vec<String>,
        outcome: &str,
    ) -> Self {
        let now = jiff::Timestamp::now();
        let published_at = source
            .timestamp_ms
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());
        let latency_ms = published_at
            .map(|p| now.duration_since(p).as_millis().max(0) as u64)
            .unwrap_or(0);
        LedgerRecord {
            schema_version: SCHEMA_VERSION,
            incident_id: update.incident_id.clone(),
            update_id: update.update_id.clone(),
            sequence: update.sequence,
            status: update.status.as_str().to_string(),
            impact: update.impact.as_str().to_string(),
            target: target.to_string(),
            channel: channel.to_string(),
            audiences,
            recipient: None,
            recipient_ref: None,
            outcome: outcome.to_string(),
            attempts: 0,
            first_attempt_at: None,
            final_at: None,
            recorded_at: Some(now),
            occurred_at: update.occurred_at,
            published_at,
            latency_ms,
            provider: None,
            drill: update.drill,
            provider_id: None,
            error: None,
            superseded_by: None,
            idempotency_key: clarion_core::IdempotencyKey::new(&update.update_id, target)
                .as_str()
                .to_string(),
            source: SourceRef::of(source),
            next_attempt_at: None,
            breaker: None,
            recipients_pending: None,
            replayed: false,
        }
    }

    pub fn is_delivered(&self) -> bool {
        self.outcome == outcome::DELIVERED
    }

    /// Whether the outcome is final (delivered, dead-lettered, superseded, or the
    /// end of a delivery to recipients), as opposed to `due` or `pending`.
    pub fn is_final(&self) -> bool {
        !matches!(self.outcome.as_str(), outcome::DUE | outcome::PENDING)
    }

    /// When this record's state began: its final time, else when it was written.
    pub fn at(&self) -> jiff::Timestamp {
        self.final_at
            .or(self.recorded_at)
            .unwrap_or(self.occurred_at)
    }
}

/// 16 hex digits of SHA-256 over (recipient, idempotency key), length-prefixed: the
/// same recipient of the same delivery always gets the same value (so redeliveries
/// de-duplicate), and different deliveries give unrelated values. The idempotency
/// key's own hashing is reused, so that there is one home for it.
pub fn recipient_ref(recipient: &str, idempotency_key: &str) -> String {
    let key = clarion_core::IdempotencyKey::new(recipient, idempotency_key);
    key.as_str()["msg_".len()..].chars().take(16).collect()
}

/// Cuts `s` to at most `max` characters, saying so.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push_str(" […]");
    out
}

/// Appends records to `kafka.ledger_topic`, keyed by incident id.
#[derive(Debug, Clone)]
pub struct LedgerWriter {
    out: DeadLetterWriter,
    topic: String,
}

impl LedgerWriter {
    /// `out` is the dead-letter writer, whose producer (acks=all, idempotent) and
    /// produce loop the ledger shares.
    pub fn new(out: DeadLetterWriter, topic: String) -> Self {
        LedgerWriter { out, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The record's value and headers, its reason cut to fit.
    fn encode(record: &LedgerRecord) -> (Vec<u8>, [(String, Vec<u8>); 1]) {
        let mut record = record.clone();
        if let Some(e) = &mut record.error {
            e.reason = cut(&e.reason, MAX_REASON_CHARS);
        }
        let headers = [(
            "clarion.ledger.schema_version".to_string(),
            SCHEMA_VERSION.to_string().into_bytes(),
        )];
        // Serializing a struct of strings and numbers cannot fail.
        (serde_json::to_vec(&record).unwrap_or_default(), headers)
    }

    /// Hands a record that no delivery waits on (`pending`) to the producer and
    /// returns at once. It takes its place in the producer's queue now, so it is
    /// written before any record of its incident written after it; a full queue or
    /// a refusal drops it (logged and counted: readers then show the previous
    /// state, never a wrong final one).
    pub fn enqueue(&self, record: &LedgerRecord) {
        let (payload, headers) = Self::encode(record);
        self.out.enqueue(
            &self.topic,
            record.incident_id.as_bytes(),
            &payload,
            &headers,
            "ledger_pending",
        );
    }

    /// Writes one record and returns once the broker acknowledged it; `Abandoned`
    /// when `abort` fires first (the delivery is then redelivered, and its record
    /// written when it ends).
    pub async fn write(
        &self,
        record: &LedgerRecord,
        abort: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let (payload, headers) = Self::encode(record);
        let written = self
            .out
            .write_acknowledged(
                &self.topic,
                record.incident_id.as_bytes(),
                &payload,
                &headers,
                abort,
                "ledger",
            )
            .await?;
        if written == Written::GivenUp {
            // A record of a few kilobytes at most (the reason is cut) can only be
            // too large for a topic whose max.message.bytes is absurdly small. The
            // dead letter and the logs hold the same facts; the delivery resolves
            // rather than freezing its partition for ever.
            tracing::error!(
                topic = %self.topic,
                incident_id = %record.incident_id,
                update_id = %record.update_id,
                "ledger record refused as too large by the topic; not recorded (raise the topic's max.message.bytes)"
            );
        }
        Ok(())
    }
}

/// What the streams record besides deliveries: the ledger, the incident state and
/// the deadline clocks, each present only when configured.
#[derive(Debug, Clone, Default)]
pub struct Records {
    pub ledger: Option<LedgerWriter>,
    pub state: Option<Arc<StateWriter>>,
    pub deadlines: Option<Arc<DeadlineTracker>>,
}

impl Records {
    /// `out` is the dead-letter writer, whose producer the records share.
    pub fn new(settings: &Settings, out: &DeadLetterWriter) -> Self {
        let kafka = &settings.kafka;
        Records {
            ledger: kafka
                .ledger_topic
                .clone()
                .map(|t| LedgerWriter::new(out.clone(), t)),
            state: kafka
                .incident_state_topic
                .clone()
                .map(|t| Arc::new(StateWriter::new(out.clone(), t))),
            // Always present, so that a reload that brings deadlines has clocks to
            // apply them to; without deadlines it takes no lock.
            deadlines: Some(Arc::new(DeadlineTracker::new(settings.deadlines.clone()))),
        }
    }
}

/// The incident-state record's shape (docs/ledger.md): unchanged since version 1,
/// whatever the ledger's.
pub const STATE_SCHEMA_VERSION: u32 = 1;

/// The value written to `kafka.incident_state_topic`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentState {
    pub schema_version: u32,
    pub update: IncidentUpdate,
    pub source: SourceRef,
    pub consumed_at: jiff::Timestamp,
}

/// How many incidents' last written sequence the state writer remembers; past it,
/// the map is cleared (an older update may then be written once more, which readers
/// tolerate: see docs/ledger.md).
const STATE_MEMORY: usize = 100_000;

/// Keeps the latest update per incident in the compacted state topic.
#[derive(Debug)]
pub struct StateWriter {
    out: DeadLetterWriter,
    topic: String,
    /// The highest sequence written per incident, so that a late, older update does
    /// not replace a newer one. The events stream handles records concurrently, so
    /// each incident's slot is an async lock held across its write: two updates of
    /// one incident are written one after the other, the older one not at all if the
    /// newer one was first.
    written: Mutex<HashMap<String, Arc<tokio::sync::Mutex<u64>>>>,
}

impl StateWriter {
    pub fn new(out: DeadLetterWriter, topic: String) -> Self {
        StateWriter {
            out,
            topic,
            written: Mutex::default(),
        }
    }

    /// Writes `update` as its incident's latest, unless a higher sequence was
    /// already written; returns once acknowledged.
    pub async fn write(
        &self,
        update: &IncidentUpdate,
        source: &Source,
        abort: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let slot = {
            let mut map = self.written.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() >= STATE_MEMORY && !map.contains_key(&update.incident_id) {
                map.clear();
            }
            map.entry(update.incident_id.clone()).or_default().clone()
        };
        let mut last = tokio::select! {
            l = slot.lock() => l,
            _ = abort.cancelled() => return Err(Abandoned),
        };
        if *last > update.sequence {
            return Ok(());
        }
        let state = IncidentState {
            schema_version: STATE_SCHEMA_VERSION,
            update: update.clone(),
            source: SourceRef::of(source),
            consumed_at: jiff::Timestamp::now(),
        };
        let payload = serde_json::to_vec(&state).unwrap_or_default();
        let written = self
            .out
            .write_acknowledged(
                &self.topic,
                update.incident_id.as_bytes(),
                &payload,
                &[],
                abort,
                "incident_state",
            )
            .await?;
        if written == Written::GivenUp {
            tracing::error!(
                topic = %self.topic,
                incident_id = %update.incident_id,
                "incident state refused as too large by the topic; not recorded"
            );
            return Ok(());
        }
        *last = (*last).max(update.sequence);
        Ok(())
    }
}

/// Reads every record of `topic` whose key is `key`, from the beginning to the end
/// it had when the read started. Blocking: call from `spawn_blocking` or a CLI.
///
/// It scans every partition rather than computing the key's one, so that it finds
/// the records whatever partitioner wrote them; for a ledger of a few million
/// records that is seconds, and the scan stops at the end, not at a timeout.
pub fn read_key(
    kafka: &KafkaConfig,
    secrets: &dyn SecretResolver,
    topic: &str,
    key: &str,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: BaseConsumer =
        crate::kafka::reader_config(kafka, secrets, "clarion-ledger-reader")?
            .create()
            .context("cannot create a Kafka consumer")?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot reach the Kafka brokers at {}", kafka.brokers))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic `{topic}` not found");
    };
    if t.error().is_some() || t.partitions().is_empty() {
        bail!("topic `{topic}` not found on the brokers");
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in t.partitions() {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .with_context(|| format!("cannot read the end of `{topic}` [{}]", p.id()))?;
        if hi > lo {
            tpl.add_partition_offset(topic, p.id(), Offset::Offset(lo))?;
            ends.insert(p.id(), hi);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + timeout;
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(anyhow!(
                "reading `{topic}` took longer than {}; partitions {:?} not read to their end",
                humantime::format_duration(timeout),
                ends.keys().collect::<Vec<_>>()
            ));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.with_context(|| format!("reading `{topic}`"))?;
        if m.key() == Some(key.as_bytes())
            && let Some(v) = m.payload()
        {
            out.push(v.to_vec());
        }
        if ends
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            ends.remove(&m.partition());
        }
    }
    Ok(out)
}

/// The ledger records of one incident, in the order they were written (one
/// incident's records share a partition), duplicates of a final outcome (a
/// redelivery after a crash writes a second `delivered`) removed. Records that are
/// not final are all kept: readers fold them to each notice's latest state
/// (`records::notices`).
pub fn read_incident(
    kafka: &KafkaConfig,
    secrets: &dyn SecretResolver,
    incident: &str,
    timeout: Duration,
) -> Result<Vec<LedgerRecord>> {
    let Some(topic) = &kafka.ledger_topic else {
        bail!(
            "no ledger: kafka.ledger_topic is not set in the config, so deliveries are not recorded (docs/ledger.md)"
        );
    };
    let raw = read_key(kafka, secrets, topic, incident, timeout)?;
    let mut out = Vec::new();
    for (i, bytes) in raw.iter().enumerate() {
        match parse(bytes) {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {}
            Err(v) => bail!(
                "ledger record {i} of `{incident}` has schema_version {v}; this clarion reads versions {READABLE_VERSIONS:?}: upgrade it"
            ),
        }
    }
    Ok(dedupe(out))
}

/// One ledger value: the record, `None` for a value that is not a record this
/// clarion can read (logged, skipped), or the unknown schema version it has.
pub fn parse(bytes: &[u8]) -> std::result::Result<Option<LedgerRecord>, u64> {
    // Confirmation records share the topic; `records::confirmations` reads them.
    if serde_json::from_slice::<serde_json::Value>(bytes)
        .is_ok_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some("confirmation"))
    {
        return Ok(None);
    }
    match serde_json::from_slice::<LedgerRecord>(bytes) {
        Ok(r) if READABLE_VERSIONS.contains(&r.schema_version) => Ok(Some(r)),
        Ok(r) => Err(u64::from(r.schema_version)),
        Err(e) => {
            let version = serde_json::from_slice::<serde_json::Value>(bytes)
                .ok()
                .and_then(|v| v.get("schema_version").and_then(|s| s.as_u64()));
            match version {
                Some(v) if !READABLE_VERSIONS.iter().any(|r| u64::from(*r) == v) => Err(v),
                _ => {
                    tracing::warn!(error = %e, "skipping a ledger value that is not a valid ledger record");
                    Ok(None)
                }
            }
        }
    }
}

/// Removes repeated final outcomes (same delivery, recipient, outcome and replay),
/// keeping the first; keeps every record that is not final.
pub fn dedupe(records: Vec<LedgerRecord>) -> Vec<LedgerRecord> {
    let mut seen = std::collections::HashSet::new();
    records
        .into_iter()
        .filter(|r| {
            !r.is_final()
                || seen.insert((
                    r.idempotency_key.clone(),
                    r.recipient_ref.clone(),
                    r.outcome.clone(),
                    r.replayed,
                ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_and_say_so() {
        assert_eq!(cut("short", 10), "short");
        let long = "é".repeat(20);
        assert_eq!(cut(&long, 5), format!("{} […]", "é".repeat(5)));
    }
}
