//! The commands' Kafka clients: the producer of updates (acks=all, idempotent,
//! Java's murmur2 partitioner, so an incident's updates land on the partition the
//! daemon and Java producers use), one-off readers that join no group and commit
//! nothing, and a client context that says once, not once per retry, whether Kafka
//! can be reached. `publish`, `drill` and `follow` share them.

use crate::config::Settings;
use anyhow::{Context as _, Result, bail};
use clarion_core::{IncidentUpdate, SecretResolver};
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The producer: the daemon's (acks=all, idempotent), with the partitioner set last
/// so that a `kafka.producer` override cannot split an incident across partitions,
/// and librdkafka's own retries bounded by what is left of `--timeout`.
pub fn producer_config(
    kafka: &crate::config::KafkaConfig,
    secrets: &dyn SecretResolver,
    timeout: Duration,
) -> Result<ClientConfig> {
    let mut c = crate::kafka::producer_config(kafka, secrets)?;
    // Idempotence makes librdkafka's retries safe: one produce call, retried inside
    // librdkafka until acknowledged or timed out, writes the record at most once.
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "0")
        .set(
            "message.timeout.ms",
            timeout.as_millis().clamp(1, i32::MAX as u128).to_string(),
        );
    Ok(c)
}

/// Java's murmur2 (Kafka's `Utils.murmur2`), which librdkafka's `murmur2_random`
/// partitioner implements too.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Java clients (and librdkafka's `murmur2_random`) choose for a key.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Says, once per change and not once per retry, whether Kafka can be reached.
/// Also the librdkafka client context, so that librdkafka's own per-retry
/// complaints become one line.
#[derive(Debug, Clone)]
pub struct Reporter {
    down: Arc<AtomicBool>,
    brokers: String,
    timeout: Duration,
    /// Whether librdkafka's error callback reports reachability. Not for the
    /// one-off readers: their callbacks are served only when they are polled or
    /// closed, so an error from before the cluster came back would say
    /// "unreachable" after "reachable again". Their own calls' results say it.
    from_callbacks: bool,
}

impl Reporter {
    pub(crate) fn new(brokers: &str, timeout: Duration) -> Self {
        Reporter {
            down: Arc::default(),
            brokers: brokers.to_string(),
            timeout,
            from_callbacks: true,
        }
    }

    /// The same reporter for a one-off reader (see `from_callbacks`).
    pub(crate) fn for_reader(&self) -> Self {
        Reporter {
            from_callbacks: false,
            ..self.clone()
        }
    }

    pub(crate) fn unreachable(&self, why: &str) {
        if !self.down.swap(true, Ordering::SeqCst) {
            eprintln!(
                "Kafka at {} is unreachable ({why}); still trying, for up to --timeout {} in all",
                self.brokers,
                humantime::format_duration(self.timeout)
            );
        }
    }

    pub(crate) fn reached(&self) {
        if self.down.swap(false, Ordering::SeqCst) {
            eprintln!("Kafka at {} is reachable again", self.brokers);
        }
    }
}

impl ClientContext for Reporter {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(?level, fac, message, "librdkafka");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        use rdkafka::types::RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            Some(C::AllBrokersDown | C::BrokerTransportFailure | C::Resolve)
                if self.from_callbacks =>
            {
                self.unreachable(reason);
            }
            _ => tracing::debug!(%error, reason, "librdkafka"),
        }
    }
}

impl ConsumerContext for Reporter {}

/// The producer of updates (`publish`, `drill`): idempotent, acks=all, murmur2
/// keys, giving up at `deadline`.
pub(crate) fn update_producer(
    settings: &Settings,
    reporter: &Reporter,
    deadline: Instant,
) -> Result<FutureProducer<Reporter>> {
    producer_config(
        &settings.kafka,
        &crate::config::EnvSecrets,
        deadline.saturating_duration_since(Instant::now()),
    )?
    .create_with_context(reporter.clone())
    .context("cannot create the Kafka producer")
}

/// Produces one update to the source topic, keyed by its incident, and waits for
/// the broker's acknowledgement (or the producer's timeout).
pub(crate) async fn produce(
    producer: &FutureProducer<Reporter>,
    settings: &Settings,
    update: &IncidentUpdate,
    bytes: &[u8],
) -> std::result::Result<rdkafka::producer::future_producer::Delivery, KafkaError> {
    producer
        .send(
            FutureRecord::to(&settings.kafka.topic)
                .key(&update.incident_id)
                .payload(bytes),
            rdkafka::util::Timeout::Never,
        )
        .await
        .map_err(|(e, _)| e)
}

/// A consumer for one-off reads: no group membership, nothing committed.
pub(crate) fn reader(settings: &Settings, reporter: Reporter) -> Result<BaseConsumer<Reporter>> {
    crate::kafka::reader_config(
        &settings.kafka,
        &crate::config::EnvSecrets,
        "clarion-publish",
    )?
    .create_with_context(reporter.for_reader())
    .context("cannot create a Kafka consumer")
}

/// Waits until the brokers answer and the topic exists, saying so once per state
/// change; gives up at `deadline`.
pub(crate) fn wait_for_cluster(
    settings: &Settings,
    reporter: &Reporter,
    deadline: Instant,
) -> Result<()> {
    let consumer = reader(settings, reporter.clone())?;
    let topic = &settings.kafka.topic;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "gave up: Kafka at {} did not answer within --timeout {}; nothing was published",
                settings.kafka.brokers,
                humantime::format_duration(reporter.timeout)
            );
        }
        match consumer.fetch_metadata(Some(topic), left.min(Duration::from_secs(5))) {
            Ok(md) => {
                reporter.reached();
                let found = md.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                });
                if !found {
                    bail!(
                        "topic `{topic}` (kafka.topic) does not exist on {}",
                        settings.kafka.brokers
                    );
                }
                return Ok(());
            }
            Err(e) => {
                reporter.unreachable(&e.to_string());
                std::thread::sleep(Duration::from_millis(500).min(left));
            }
        }
    }
}

/// The source topic's partition count, for the preview (`None` if it cannot be
/// read quickly: the preview then leaves the partition out).
pub(crate) fn partition_count(
    settings: &Settings,
    reporter: &Reporter,
    deadline: Instant,
) -> Result<Option<i32>> {
    let consumer = reader(settings, reporter.clone())?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(10));
    Ok(consumer
        .fetch_metadata(Some(&settings.kafka.topic), left)
        .ok()
        .and_then(|md| {
            md.topics()
                .iter()
                .find(|t| t.name() == settings.kafka.topic)
                .map(|t| t.partitions().len() as i32)
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_java_client() {
        // The vectors of Kafka's own UtilsTest.testMurmur2.
        for (key, want) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()), want, "murmur2({key:?})");
        }
    }

    #[test]
    fn the_producer_is_acknowledged_by_all_idempotent_and_murmur2_even_when_overridden() {
        let raw = crate::config::parse_str(
            r#"
[kafka]
brokers = "127.0.0.1:1"
topic = "incidents"
dead_letter_topic = "dlq"
group_id = "g"
[kafka.producer]
partitioner = "consistent_random"
"linger.ms" = "50"
"#,
        )
        .expect("parses");
        let c = producer_config(
            &raw.kafka,
            &crate::config::EnvSecrets,
            Duration::from_secs(90),
        )
        .expect("builds");
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("partitioner"), Some("murmur2_random"));
        assert_eq!(c.get("message.timeout.ms"), Some("90000"));
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:1"));
    }
}
