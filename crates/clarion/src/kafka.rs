//! librdkafka settings for the daemon's consumers and its producer, and for the
//! readers and producers of the commands. Every Kafka client of the crate starts
//! from these; the streams (`engine/stream.rs`) consume, the supervisor
//! (`engine/supervisor.rs`) starts and stops them.
//!
//! Settings only: this module creates no client that talks to a broker (the
//! `check_clients` probe builds them offline), and depends on nothing but `config`.

use crate::config::KafkaConfig;
use anyhow::{Result, anyhow};
use clarion_core::SecretResolver;
use rdkafka::config::ClientConfig;

/// A topic-partition.
pub type Tp = (String, i32);

fn base_client(kafka: &KafkaConfig, secrets: &dyn SecretResolver) -> Result<ClientConfig> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.properties {
        c.set(k, v);
    }
    for (k, r) in &kafka.secret_properties {
        let s = secrets
            .resolve(r)
            .map_err(|e| anyhow!("kafka.secret_properties.{k}: {e}"))?;
        c.set(k, s.expose());
    }
    Ok(c)
}

/// The consumer configuration every stream starts from: at-least-once with offsets
/// stored by us, quick hand-over, bounded prefetch. Each stream adds its own
/// `group.id` (and `group.instance.id`).
pub fn consumer_config(kafka: &KafkaConfig, secrets: &dyn SecretResolver) -> Result<ClientConfig> {
    // Validation already refused overrides of OWNED_KAFKA_PROPERTIES, and they are
    // set after the pass-through ones anyway.
    let mut c = base_client(kafka, secrets)?;
    // Stored offsets are committed every 200 ms: what a crash replays beyond the
    // window is what a stream resolved in that time.
    c.set("auto.commit.interval.ms", "200")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // A dead replica's partitions wait for its session to expire: 6 s (the
        // broker's minimum by default) instead of 45 s, with heartbeats at a third.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "2000")
        // Each stream is a consumer of its own: cap what librdkafka prefetches per
        // consumer (its default is 64 MiB), so memory does not grow with the number
        // of targets. 512 KiB holds hundreds of updates, more than a window; one
        // fetch response is at most 1 MiB (librdkafka refuses less than
        // `message.max.bytes`, 1,000,000). A queue over its cap postpones the next
        // fetch by `fetch.queue.backoff.ms`, 1 s by default: that second is what made
        // small queues slow (6,207 against 21,105 deliveries/s, docs/benchmarks.md),
        // so the stream fetches again 10 ms after it has made room.
        .set("queued.max.messages.kbytes", "512")
        .set("fetch.max.bytes", "1048576")
        .set("fetch.queue.backoff.ms", "10")
        // With a consumer per stream, a fetch could wait the broker's default
        // 500 ms for data a sibling stream's fetch had just taken: measured at
        // 1,000 updates/s, p99 went from 315 ms to 11 ms with 100 ms here (20 ms
        // gave 9 ms, at five times the idle fetch requests).
        .set("fetch.wait.max.ms", "100")
        // Lag per partition and per stream comes from librdkafka's statistics.
        .set("statistics.interval.ms", "5000");
    for (k, v) in &kafka.consumer {
        c.set(k, v);
    }
    // librdkafka refuses a fetch size below `message.max.bytes`: an operator who
    // raised that alone gets fetches that large, not a client that will not start.
    if !kafka.consumer.contains_key("fetch.max.bytes")
        && let Some(max) = kafka.consumer.get("message.max.bytes")
        && max.parse::<u64>().is_ok_and(|m| m > 1_048_576)
    {
        c.set("fetch.max.bytes", max);
    }
    c.set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    Ok(c)
}

/// A consumer for reading a topic by assigning its partitions: never subscribed, so
/// no group membership, and nothing committed (`group` only names it to the
/// brokers). For one-off reads and for following Clarion's own compacted topics.
pub fn reader_config(
    kafka: &KafkaConfig,
    secrets: &dyn SecretResolver,
    group: &str,
) -> Result<ClientConfig> {
    let mut c = consumer_config(kafka, secrets)?;
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .remove("statistics.interval.ms");
    Ok(c)
}

/// An admin client's configuration (`clarion topics create`, `check-config
/// --connect`): the brokers and their security settings, nothing else.
pub fn admin_config(kafka: &KafkaConfig, secrets: &dyn SecretResolver) -> Result<ClientConfig> {
    base_client(kafka, secrets)
}

/// The dead-letter producer: idempotent, acknowledged by all in-sync replicas.
pub fn producer_config(kafka: &KafkaConfig, secrets: &dyn SecretResolver) -> Result<ClientConfig> {
    let mut c = base_client(kafka, secrets)?;
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5");
    for (k, v) in &kafka.producer {
        c.set(k, v);
    }
    Ok(c)
}

/// Creates (and drops) a consumer and the dead-letter producer from the config, as
/// the daemon will, without waiting for the brokers. librdkafka checks its
/// properties together only when a client is made: a `fetch.max.bytes` below
/// `message.max.bytes`, a CA file that is not there, a SASL mechanism this build
/// lacks. `check-config` finds those here, before a start-up in a crisis does.
pub fn check_clients(kafka: &KafkaConfig, secrets: &dyn SecretResolver) -> Result<()> {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;
    consumer_config(kafka, secrets)?
        .create::<BaseConsumer>()
        .map(drop)
        .map_err(|e| anyhow!("kafka.consumer: librdkafka refuses the consumer: {e}"))?;
    producer_config(kafka, secrets)?
        .create::<BaseProducer>()
        .map(drop)
        .map_err(|e| anyhow!("kafka.producer: librdkafka refuses the producer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EnvSecrets, parse_str};

    /// Whether librdkafka accepts the clients that the config with `extra` makes
    /// (`check_clients`, as check-config runs it; no broker needed).
    fn clients(extra: &str) -> std::result::Result<(), String> {
        let toml = format!(
            r#"
[kafka]
brokers = "127.0.0.1:9"
topic = "incident-updates"
dead_letter_topic = "clarion-dlq"
{extra}

[targets.hook]
type = "webhook"
audiences = ["customers"]
url = "http://127.0.0.1:1/hook"
secrets = [{{ value = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD" }}]
"#
        );
        parse_str(&toml)
            .and_then(|raw| raw.validate("test.toml", &EnvSecrets))
            .and_then(|settings| check_clients(&settings.kafka, &EnvSecrets))
            .map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn the_shipped_kafka_properties_make_clients_librdkafka_accepts() {
        clients("").expect("the defaults");
    }

    #[test]
    fn a_larger_message_max_bytes_alone_raises_the_fetch_size_with_it() {
        clients("consumer = { \"message.max.bytes\" = \"4000000\" }")
            .expect("fetch.max.bytes follows message.max.bytes");
        // An explicit fetch size below it is the operator's own contradiction, and
        // librdkafka's error says so.
        let err = clients(
            "consumer = { \"message.max.bytes\" = \"4000000\", \"fetch.max.bytes\" = \"2000000\" }",
        )
        .expect_err("refused");
        assert!(err.contains("fetch.max.bytes"), "{err}");
    }
}
