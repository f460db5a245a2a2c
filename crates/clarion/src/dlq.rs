//! The dead-letter topic: where every update that could not be delivered ends, with
//! the reason. A record here is never lost data: it is data waiting for a person.
//!
//! Record layout (documented in `docs/dead-letter.md`), following Kafka Connect's
//! convention so that existing tooling can replay it:
//! - key: the original record's key (the incident id);
//! - value: the original record's bytes, unchanged;
//! - headers: the original headers, then `clarion.dlq.*` headers saying why.

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
}

impl DlqKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DlqKind::MalformedEvent => "malformed_event",
            DlqKind::UnknownAudience => "unknown_audience",
            DlqKind::DeliveryFailed => "delivery_failed",
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
#[derive(Clone)]
pub struct DeadLetterWriter {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("topic", &self.topic)
            .finish()
    }
}

/// The write was abandoned because the daemon is stopping.
#[derive(Debug)]
pub struct Abandoned;

impl DeadLetterWriter {
    pub fn new(producer: FutureProducer, topic: String) -> Self {
        DeadLetterWriter { producer, topic }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub async fn write(
        &self,
        letter: &DeadLetter<'_>,
        abort: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &letter.source.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        for (k, v) in letter.headers() {
            headers = headers.insert(Header {
                key: &k,
                value: Some(&v),
            });
        }
        self.produce(
            &self.topic,
            letter.source.key.as_deref(),
            &letter.source.payload,
            headers,
            abort,
        )
        .await
    }

    /// Publishes a recipient the provider declared dead to `topic` (the
    /// `kafka.dead_recipient_topic`), keyed by the recipient.
    pub async fn write_dead_recipient(
        &self,
        topic: &str,
        record: &DeadRecipient<'_>,
        abort: &CancellationToken,
    ) -> Result<(), Abandoned> {
        // Serializing a struct of strings cannot fail.
        let payload = serde_json::to_vec(record).unwrap_or_default();
        self.produce(
            topic,
            Some(record.recipient.as_bytes()),
            &payload,
            OwnedHeaders::new(),
            abort,
        )
        .await
    }

    /// Produces one record, retrying until the broker acknowledges it or `abort`.
    async fn produce(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
        abort: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let mut wait = Duration::from_millis(200);
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(k) = key {
                record = record.key(k);
            }
            let send = self
                .producer
                .send(record, Timeout::After(Duration::from_secs(30)));
            let result = tokio::select! {
                r = send => r,
                _ = abort.cancelled() => return Err(Abandoned),
            };
            match result {
                Ok(_) => return Ok(()),
                Err((e, _)) => {
                    tracing::error!(
                        topic,
                        error = %e,
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot write to Kafka; the update stays unresolved until it can"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = abort.cancelled() => return Err(Abandoned),
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
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
