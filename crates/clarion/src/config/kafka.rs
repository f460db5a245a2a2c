//! `[kafka]`: brokers, topics, group, and librdkafka properties, with the ones
//! Clarion owns because at-least-once delivery depends on them.

use clarion_core::SecretRef;
use serde::Deserialize;
use std::collections::BTreeMap;

/// librdkafka properties Clarion sets itself because at-least-once depends on them.
pub const OWNED_KAFKA_PROPERTIES: [&str; 5] = [
    "enable.auto.offset.store",
    "enable.auto.commit",
    // librdkafka's older name for enable.auto.commit.
    "auto.commit.enable",
    "group.id",
    // Set per stream from `kafka.instance_id`.
    "group.instance.id",
];

/// librdkafka properties of the dead-letter producer that Clarion sets itself: a
/// dead letter resolves its update (and lets the offset be committed) only once
/// every in-sync replica has it, written once. `request.required.acks` is
/// librdkafka's alias of `acks`.
pub const OWNED_PRODUCER_PROPERTIES: [&str; 3] =
    ["acks", "request.required.acks", "enable.idempotence"];

/// Where updates come from and where failures go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic ops publish incident updates to, keyed by `incident_id`.
    pub topic: String,
    /// The deployment's consumer group. Every Clarion instance of one deployment
    /// shares it. The events stream (which dead-letters malformed records once) uses
    /// it as is; each target's stream uses `<group_id>.<target>`.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// This replica's stable identity for Kafka's static membership
    /// (`group.instance.id`): a replica restarted within the session timeout takes
    /// its partitions back without a rebalance. Unique per live replica (two with
    /// the same id fence each other); e.g. a StatefulSet pod name. Unset: dynamic
    /// membership.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Where malformed events and failed deliveries go, with the reason in headers.
    pub dead_letter_topic: String,
    /// Where recipients that a provider declared dead go (unregistered device
    /// tokens, opted-out numbers), one JSON record each, keyed by the recipient, so
    /// the owner of the address book can prune them. Unset: they are only logged and
    /// dead-lettered.
    #[serde(default)]
    pub dead_recipient_topic: Option<String>,
    /// The delivery ledger (docs/ledger.md): every final outcome of every delivery
    /// (delivered, dead-lettered, superseded) as one JSON record keyed by incident
    /// id, written with the dead letters' guarantee (an update resolves only once its
    /// records are acknowledged). Must exist at start-up. Unset: nothing is recorded,
    /// and `clarion status` / `clarion report` have nothing to show.
    #[serde(default)]
    pub ledger_topic: Option<String>,
    /// A compacted topic holding the latest update of every incident (key: incident
    /// id), written by the events stream; `clarion publish` reads it for the next
    /// sequence. Must exist at start-up. Unset: not kept.
    #[serde(default)]
    pub incident_state_topic: Option<String>,
    /// librdkafka properties for both consumer and producer (TLS, SASL, client.id…),
    /// passed through as written, e.g. `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties whose values are secrets, e.g.
    /// `"sasl.password" = { env = "KAFKA_PASSWORD" }`.
    #[serde(default)]
    pub secret_properties: BTreeMap<String, SecretRef>,
    /// Extra librdkafka properties for the consumer only.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties for the dead-letter producer only.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

pub(super) fn default_group() -> String {
    "clarion".into()
}
