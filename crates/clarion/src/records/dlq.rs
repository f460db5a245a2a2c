//! The dead-letter topic: where every update that could not be delivered ends, with
//! the reason. A record here is never lost data: it is data waiting for a person.
//!
//! Record layout (documented in `docs/dead-letter.md`), following Kafka Connect's
//! convention so that existing tooling can replay it:
//! - key: the original record's key (the incident id);
//! - value: the original record's bytes, unchanged;
//! - headers: the original headers, then `clarion.dlq.*` headers saying why.

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a record is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqKind {
    /// The record was not a valid incident update.
    MalformedEvent,
    /// The update named an audience the config does not define.
    UnknownAudience,
    /// A delivery failed permanently or ran out of retries.
    DeliveryFailed,
    /// The daemon panicked while handling the update (a bug); the reason holds the
    /// panic message.
    InternalError,
}

impl DlqKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqKind::MalformedEvent => "malformed_event",
            DlqKind::UnknownAudience => "unknown_audience",
            DlqKind::DeliveryFailed => "delivery_failed",
            DlqKind::InternalError => "internal_error",
        }
    }
}

/// Where the original record came from, and what it was.
#[derive(Debug, Clone)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// One dead-letter record about to be written.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub source: &'a Source,
    pub kind: DlqKind,
    pub reason: String,
    /// For delivery failures.
    pub delivery: Option<FailedDelivery<'a>>,
}

/// What was being delivered when it failed.
#[derive(Debug, Clone)]
pub struct FailedDelivery<'a> {
    pub target: &'a str,
    pub channel: &'static str,
    /// The provider of the last attempt, when one was made.
    pub provider: Option<&'a str>,
    pub recipient: Option<&'a str>,
    pub attempts: u32,
    pub error_class: &'static str,
    pub error_code: Option<&'a str>,
    pub idempotency_key: &'a str,
}

impl DeadLetter<'_> {
    /// The headers of the record: original ones first, then Clarion's.
    pub fn headers(&self) -> Vec<(String, String)> {
        let s = self.source;
        let mut h = vec![
            (
                "clarion.dlq.kind".to_string(),
                self.kind.as_str().to_string(),
            ),
            ("clarion.dlq.reason".to_string(), self.reason.clone()),
            ("clarion.dlq.source.topic".to_string(), s.topic.clone()),
            (
                "clarion.dlq.source.partition".to_string(),
                s.partition.to_string(),
            ),
            (
                "clarion.dlq.source.offset".to_string(),
                s.offset.to_string(),
            ),
            (
                "clarion.dlq.at".to_string(),
                jiff::Timestamp::now().to_string(),
            ),
        ];
        if let Some(ts) = s.timestamp_ms {
            h.push(("clarion.dlq.source.timestamp_ms".into(), ts.to_string()));
        }
        if let Some(d) = &self.delivery {
            h.push(("clarion.dlq.target".into(), d.target.to_string()));
            h.push(("clarion.dlq.channel".into(), d.channel.to_string()));
            if let Some(p) = d.provider {
                h.push(("clarion.dlq.provider".into(), p.to_string()));
            }
            if let Some(r) = d.recipient {
                h.push(("clarion.dlq.recipient".into(), r.to_string()));
            }
            h.push(("clarion.dlq.attempts".into(), d.attempts.to_string()));
            h.push(("clarion.dlq.error.class".into(), d.error_class.to_string()));
            if let Some(c) = d.error_code {
                h.push(("clarion.dlq.error.code".into(), c.to_string()));
            }
            h.push((
                "clarion.dlq.idempotency_key".into(),
                d.idempotency_key.to_string(),
            ));
        }
        h
    }
}

/// Writes dead letters, retrying until the broker takes them: a dead letter that is
/// not written would be a lost update, so the caller's event stays unresolved (and
/// its offset uncommitted) until this returns `Ok`.
///
/// Produce errors are classified ([`ProduceError`]):
/// - transient ones (broker down, timeouts, leader changes) are retried with backoff;
/// - a record too large for the producer or the topic is written again with its
///   original bytes truncated (the `clarion.dlq.truncated` and
///   `clarion.dlq.original_size` headers say so), so one huge malformed record cannot
///   freeze its partition;
/// - the rest (unknown topic, authorization refused) need an operator. A dead letter
///   keeps retrying them, because giving up would lose the update: the start-up check
///   refuses a missing topic, and the failures are logged at ERROR and counted in
///   `clarion_dead_letter_write_failures_total`. A dead-recipient record, which is
///   advice to the address book and whose facts the dead letter also carries, is given
///   up after such an error instead.
#[derive(Clone)]
pub struct DeadLetterWriter {
    /// With Clarion's client context, so its librdkafka errors are de-duplicated
    /// with the streams' (`health.rs`).
    producer: FutureProducer<crate::ops::health::ProducerCtx>,
    topic: String,
    /// The largest record the producer accepts (`message.max.bytes`).
    max_record_bytes: usize,
}

impl std::fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("topic", &self.topic)
            .field("max_record_bytes", &self.max_record_bytes)
            .finish()
    }
}

/// The write was abandoned because the daemon is stopping.
#[derive(Debug)]
pub struct Abandoned;

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// Room kept for the record's framing and for headers added by librdkafka, beyond
/// the key, value and header bytes counted here.
const RECORD_OVERHEAD: usize = 1024;

/// How a produce attempt failed, and so what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceError {
    /// The cluster is unavailable or busy: try again.
    Transient,
    /// The record is larger than the producer or the topic accepts.
    TooLarge,
    /// An operator must act (missing topic, authorization refused, invalid config).
    Permanent,
}

impl ProduceError {
    /// Classifies a produce error. Unknown codes count as transient: retrying a
    /// permanent error costs time, while giving up on a transient one loses data.
    pub fn classify(e: &KafkaError) -> ProduceError {
        use rdkafka::types::RDKafkaErrorCode as C;
        match e.rdkafka_error_code() {
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
                ProduceError::TooLarge
            }
            Some(
                C::UnknownTopic
                | C::UnknownTopicOrPartition
                | C::UnknownPartition
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::InvalidRecord
                | C::PolicyViolation
                | C::InvalidArgument
                | C::UnknownTopicId,
            ) => ProduceError::Permanent,
            _ => ProduceError::Transient,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProduceError::Transient => "transient",
            ProduceError::TooLarge => "too_large",
            ProduceError::Permanent => "permanent",
        }
    }
}

/// What [`DeadLetterWriter::write_dead_recipient`] achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// Refused for good by the cluster (logged and counted); the caller carries on.
    GivenUp,
}

impl DeadLetterWriter {
    pub fn new(producer: FutureProducer<crate::ops::health::ProducerCtx>, topic: String) -> Self {
        DeadLetterWriter {
            producer,
            topic,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Sets the largest record the producer accepts (its `message.max.bytes`).
    pub fn with_max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes.max(RECORD_OVERHEAD * 2);
        self
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The largest record's value this writer's producer takes, with room left
    /// for the key and headers.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes - RECORD_OVERHEAD
    }

    pub async fn write(
        &self,
        letter: &DeadLetter<'_>,
        abort: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let mut headers: Vec<(String, Vec<u8>)> = letter.source.headers.clone();
        headers.extend(
            letter
                .headers()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        let key = letter.source.key.as_deref();
        let payload = &letter.source.payload[..];
        let fixed = key.map_or(0, <[u8]>::len)
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + RECORD_OVERHEAD;
        // Truncate up front when the record cannot fit, and again (halving) whenever
        // the cluster still says it is too large (a topic's own max.message.bytes).
        let mut keep = self
            .max_record_bytes
            .saturating_sub(fixed)
            .min(payload.len());
        loop {
            let mut h = headers.clone();
            if keep < payload.len() {
                h.push(("clarion.dlq.truncated".into(), b"true".to_vec()));
                h.push((
                    "clarion.dlq.original_size".into(),
                    payload.len().to_string().into_bytes(),
                ));
            }
            match self
                .produce(
                    &self.topic,
                    key,
                    &payload[..keep],
                    to_owned_headers(&h),
                    abort,
                    "dead_letter",
                    false,
                )
                .await
            {
                Ok(()) => {
                    if keep < payload.len() {
                        tracing::warn!(
                            topic = %self.topic,
                            original_size = payload.len(),
                            written = keep,
                            "dead letter written truncated: the original record is larger than the producer or topic accepts"
                        );
                    }
                    return Ok(());
                }
                Err(Failure::Abandoned) => return Err(Abandoned),
                Err(Failure::TooLarge) => {
                    // Halving always ends: at zero bytes of payload only the headers
                    // remain, which are bounded by the reason's and the source's size.
                    keep /= 2;
                }
                // Not handed back when `give_up_permanent` is false; were it, writing
                // again is the reading that loses nothing.
                Err(Failure::Permanent) => {}
            }
        }
    }

    /// Publishes a recipient the provider declared dead to `topic` (the
    /// `kafka.dead_recipient_topic`), keyed by the recipient.
    pub async fn write_dead_recipient(
        &self,
        topic: &str,
        record: &DeadRecipient<'_>,
        abort: &CancellationToken,
    ) -> Result<Written, Abandoned> {
        // Serializing a struct of strings cannot fail.
        let payload = serde_json::to_vec(record).unwrap_or_default();
        match self
            .produce(
                topic,
                Some(record.recipient.as_bytes()),
                &payload,
                OwnedHeaders::new(),
                abort,
                "dead_recipient",
                true,
            )
            .await
        {
            Ok(()) => Ok(Written::Yes),
            Err(Failure::Abandoned) => Err(Abandoned),
            Err(Failure::TooLarge | Failure::Permanent) => Ok(Written::GivenUp),
        }
    }

    /// Publishes a record of another of Clarion's own topics (the delivery ledger,
    /// the incident state) with the dead letters' guarantee: retried, transient and
    /// permanent errors alike, until the broker acknowledges it or `abort`.
    /// `GivenUp` only when the record is too large, which the caller must shorten.
    pub async fn write_acknowledged(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &[(String, Vec<u8>)],
        abort: &CancellationToken,
        what: &'static str,
    ) -> Result<Written, Abandoned> {
        self.write_acknowledged_at(topic, None, key, payload, headers, abort, what)
            .await
    }

    /// [`DeadLetterWriter::write_acknowledged`] to a given partition (`None`: the
    /// partitioner's choice by key): for a compacted topic whose records are
    /// keyed per item but partitioned by what owns them (the confirmation state,
    /// `confirm.topic`). `None` for a tombstone's `payload`.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_acknowledged_at(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
        headers: &[(String, Vec<u8>)],
        abort: &CancellationToken,
        what: &'static str,
    ) -> Result<Written, Abandoned> {
        let headers = to_owned_headers(headers);
        match self
            .produce_to(
                topic,
                partition,
                Some(key),
                Some(payload),
                headers,
                abort,
                what,
                false,
            )
            .await
        {
            Ok(()) => Ok(Written::Yes),
            Err(Failure::Abandoned) => Err(Abandoned),
            Err(Failure::TooLarge | Failure::Permanent) => Ok(Written::GivenUp),
        }
    }

    /// Hands one record to the producer's queue and returns at once, without
    /// waiting for the broker: for records nothing waits on. Queued now, it keeps
    /// its place before every record produced after it to the same partition. A
    /// full queue or a failed delivery drops it, logged and counted
    /// (`clarion_records_dropped_total{record}`); it is never retried.
    pub fn enqueue(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: &[(String, Vec<u8>)],
        what: &'static str,
    ) {
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(to_owned_headers(headers));
        match self.producer.send_result(record) {
            Ok(delivery) => {
                let topic = topic.to_string();
                tokio::spawn(async move {
                    if let Ok(Err((e, _))) = delivery.await {
                        crate::ops::telemetry::RecordDropped {
                            topic: &topic,
                            what,
                            error: &e.to_string(),
                        }
                        .emit();
                    }
                });
            }
            Err((e, _)) => crate::ops::telemetry::RecordDropped {
                topic,
                what,
                error: &e.to_string(),
            }
            .emit(),
        }
    }

    /// Writes a tombstone (a record without a value) for `key` at `partition`,
    /// acknowledged: compaction then removes the key.
    pub async fn write_tombstone_at(
        &self,
        topic: &str,
        partition: i32,
        key: &[u8],
        abort: &CancellationToken,
        what: &'static str,
    ) -> Result<(), Abandoned> {
        match self
            .produce_to(
                topic,
                Some(partition),
                Some(key),
                None,
                OwnedHeaders::new(),
                abort,
                what,
                false,
            )
            .await
        {
            Err(Failure::Abandoned) => Err(Abandoned),
            _ => Ok(()),
        }
    }

    /// Produces one record, retrying transient errors until the broker acknowledges
    /// it or `abort`. A too-large record is handed back to the caller at once; other
    /// permanent errors are retried (`give_up_permanent == false`) or handed back.
    ///
    /// Boxed: every Kafka write of the daemon (dead letters, dead recipients, the
    /// ledger, incident state) comes through here, and this future is kilobytes.
    /// Inline, it made each delivery's state machine that much larger, and a
    /// delivery's future is copied whole whenever it is created or boxed (`memmove`
    /// led the profile under a backlog).
    #[allow(clippy::too_many_arguments)]
    fn produce<'a>(
        &'a self,
        topic: &'a str,
        key: Option<&'a [u8]>,
        payload: &'a [u8],
        headers: OwnedHeaders,
        abort: &'a CancellationToken,
        what: &'static str,
        give_up_permanent: bool,
    ) -> futures::future::BoxFuture<'a, Result<(), Failure>> {
        self.produce_to(
            topic,
            None,
            key,
            Some(payload),
            headers,
            abort,
            what,
            give_up_permanent,
        )
    }

    /// [`DeadLetterWriter::produce`] to a given partition, or a tombstone.
    #[allow(clippy::too_many_arguments)]
    fn produce_to<'a>(
        &'a self,
        topic: &'a str,
        partition: Option<i32>,
        key: Option<&'a [u8]>,
        payload: Option<&'a [u8]>,
        headers: OwnedHeaders,
        abort: &'a CancellationToken,
        what: &'static str,
        give_up_permanent: bool,
    ) -> futures::future::BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.produce_inline(
            topic,
            partition,
            key,
            payload,
            headers,
            abort,
            what,
            give_up_permanent,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    async fn produce_inline(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
        abort: &CancellationToken,
        what: &'static str,
        give_up_permanent: bool,
    ) -> Result<(), Failure> {
        let mut wait = Duration::from_millis(200);
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).headers(headers.clone());
            if let Some(p) = payload {
                record = record.payload(p);
            }
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            let send = self
                .producer
                .send(record, Timeout::After(Duration::from_secs(30)));
            let result = tokio::select! {
                r = send => r,
                _ = abort.cancelled() => return Err(Failure::Abandoned),
            };
            let e = match result {
                Ok(_) => return Ok(()),
                Err((e, _)) => e,
            };
            let class = ProduceError::classify(&e);
            crate::ops::telemetry::DeadLetterWriteFailed {
                topic,
                what,
                class: class.as_str(),
                error: &e.to_string(),
                retry_in: match class {
                    ProduceError::TooLarge => None,
                    ProduceError::Permanent if give_up_permanent => None,
                    _ => Some(wait),
                },
            }
            .emit();
            match class {
                ProduceError::TooLarge => return Err(Failure::TooLarge),
                ProduceError::Permanent if give_up_permanent => return Err(Failure::Permanent),
                ProduceError::Permanent | ProduceError::Transient => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = abort.cancelled() => return Err(Failure::Abandoned),
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
}

/// Why a produce ended without an acknowledgement.
#[derive(Debug)]
enum Failure {
    Abandoned,
    TooLarge,
    Permanent,
}

fn to_owned_headers(h: &[(String, Vec<u8>)]) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(h.len());
    for (k, v) in h {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    headers
}

/// A recipient a provider declared dead (unregistered device token, opted-out
/// number): the record published to `kafka.dead_recipient_topic`, documented in
/// `docs/dead-letter.md`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadRecipient<'a> {
    pub recipient: &'a str,
    /// The channel kind: `fcm`, `apns`, `sms`, `email`…
    pub channel: &'static str,
    pub target: &'a str,
    pub reason: &'a str,
    pub code: Option<&'a str>,
    pub incident_id: &'a str,
    pub update_id: &'a str,
    /// RFC 3339.
    pub time: String,
}

/// Copies a consumed record's headers.
pub fn copy_headers<H: Headers>(headers: Option<&H>) -> Vec<(String, Vec<u8>)> {
    let Some(h) = headers else { return Vec::new() };
    h.iter()
        .map(|hd| {
            (
                hd.key.to_string(),
                hd.value.map(<[u8]>::to_vec).unwrap_or_default(),
            )
        })
        .collect()
}
