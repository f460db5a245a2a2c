//! Configuration: parse (no I/O beyond reading the file), then validate and resolve
//! secrets, then build the targets. Every error names the key it is about and the
//! file it came from, because the person reading it is fixing a config at 3 a.m.
//!
//! Layout: one TOML file (see `config/clarion.toml`), overridden by environment
//! variables `CLARION__SECTION__KEY` (double underscores separate levels). Unknown
//! keys are errors everywhere, so a typo never silently falls back to a default.

use anyhow::{Context, Result, anyhow, bail};
use clarion_core::{Channel, Secret, SecretRef, SecretResolver};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use clarion_core::STANDARD_AUDIENCES;

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

/// The whole file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// The default retry policy of every target; a target's own `retry` table
    /// overrides it key by key.
    #[serde(default)]
    pub retry: RetryOverride,
    /// Audiences beyond the standard four (`customers`, `business`, `employees`,
    /// `regulators`), e.g. `["partners", "wholesale"]`. An update naming an audience
    /// that is neither standard nor listed here is dead-lettered. Written as a table
    /// instead, `[audiences.NAME]` both declares an audience and gives it deadlines
    /// (`first_notice_within`, `[audiences.NAME.deadlines]`, `warn_at`).
    #[serde(default)]
    pub audiences: AudiencesConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// What `/readyz` on the metrics listener checks (docs/runbook.md).
    #[serde(default)]
    pub health: HealthConfig,
    /// Message templates (docs/templates.md): a directory of minijinja files, the
    /// time zone and default locale they render in.
    #[serde(default)]
    pub templates: clarion_render::TemplatesConfig,
    /// Pre-approved holding statements for `clarion publish --statement NAME`: a
    /// directory of `NAME.toml` files (docs/publishing.md), relative to this file's
    /// directory. Default: `statements` beside this file, when it exists.
    #[serde(default)]
    pub statements: Option<PathBuf>,
    /// The stakeholder directory that `type = "people"` targets address
    /// (docs/backups.md#the-directory).
    #[serde(default)]
    pub directory: Option<DirectoryConfig>,
    /// Named destinations, `[targets.NAME]`. Each has a `type` (`webhook`), the
    /// `audiences` it serves, an optional `retry` table, and its channel's own keys.
    #[serde(default)]
    pub targets: BTreeMap<String, serde_json::Value>,
}

/// `[directory]`: who the people targets reach, and where their walks' progress
/// is kept.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// A CSV, JSON or JSON Lines file, relative to the config file's directory;
    /// read at start-up and on SIGHUP.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A compacted topic keyed by person id, the person's JSON as the value and a
    /// tombstone to remove them; followed while the daemon runs. Dead addresses
    /// found by a delivery are removed from it.
    #[serde(default)]
    pub topic: Option<String>,
    /// A compacted topic where each people target records how far its walk of
    /// each update got, so that a restart resumes there. Required.
    #[serde(default)]
    pub progress_topic: Option<String>,
    /// People per batch: each batch is one delivery per leg (default 500).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches of one update under way at once, per people target (default 4).
    #[serde(default = "default_batches_in_flight")]
    pub batches_in_flight: usize,
}

fn default_batch_size() -> usize {
    500
}

fn default_batches_in_flight() -> usize {
    4
}

/// Where the directory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorySource {
    /// The file, resolved against the config file's directory.
    File(PathBuf),
    Topic(String),
}

/// The validated `[directory]`.
#[derive(Clone)]
pub struct DirectorySettings {
    pub source: DirectorySource,
    pub progress_topic: String,
    pub batch_size: usize,
    pub batches_in_flight: usize,
    /// The file's people, read and validated (a file source, with secrets
    /// resolved: `run` and `check-config`; not for previews).
    pub people: Option<Arc<crate::directory::Directory>>,
}

impl std::fmt::Debug for DirectorySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorySettings")
            .field("source", &self.source)
            .field("progress_topic", &self.progress_topic)
            .field("batch_size", &self.batch_size)
            .field("batches_in_flight", &self.batches_in_flight)
            .field("people", &self.people.as_ref().map(|d| d.len()))
            .finish()
    }
}

/// The top-level `audiences`: a list of extra names, or a table of audiences with
/// their deadlines (a table also declares each audience it names).
#[derive(Debug, Clone)]
pub enum AudiencesConfig {
    List(Vec<String>),
    Table(BTreeMap<String, AudienceConfig>),
}

impl Default for AudiencesConfig {
    fn default() -> Self {
        AudiencesConfig::List(Vec::new())
    }
}

impl AudiencesConfig {
    pub fn names(&self) -> Vec<&String> {
        match self {
            AudiencesConfig::List(l) => l.iter().collect(),
            AudiencesConfig::Table(t) => t.keys().collect(),
        }
    }
}

// By hand rather than `#[serde(untagged)]`, whose only error is "did not match any
// variant": a typo in a deadline key must be named.
impl<'de> Deserialize<'de> for AudiencesConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AudiencesConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of audience names, or a table `[audiences.NAME]`")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    out.push(name);
                }
                Ok(AudiencesConfig::List(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((name, config)) = map.next_entry::<String, AudienceConfig>()? {
                    out.insert(name, config);
                }
                Ok(AudiencesConfig::Table(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[audiences.NAME]`: an audience and its notification deadlines
/// (docs/configuration.md#deadlines).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceConfig {
    /// The longest time from the incident's first update (its `occurred_at`) to the
    /// first successful delivery to this audience, e.g. `"120m"` for the FCC's
    /// outage notification. Unset: no first-notice deadline.
    #[serde(default, with = "humantime_serde")]
    pub first_notice_within: Option<Duration>,
    /// Deadlines per status, e.g. `resolved = "30m"`: from the `occurred_at` of the
    /// incident's first update with that status to the first successful delivery of
    /// an update with that status to this audience.
    #[serde(default)]
    pub deadlines: BTreeMap<clarion_core::Status, humantime_serde::Serde<Duration>>,
    /// The share of a deadline after which it is "at risk": the daemon warns and
    /// counts it in `clarion_deadline_at_risk`. Between 0 and 1; default 0.8.
    #[serde(default)]
    pub warn_at: Option<f64>,
}

/// An audience's validated deadlines.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadlines {
    pub first_notice_within: Option<Duration>,
    pub by_status: BTreeMap<clarion_core::Status, Duration>,
    pub warn_at: f64,
}

/// The default warning lead: at 80 % of a deadline.
pub const DEFAULT_WARN_AT: f64 = 0.8;

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

fn default_group() -> String {
    "clarion".into()
}

/// How much work the daemon holds and how it stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Updates held at once (consumed, not yet resolved). When full, the consumer
    /// pauses its partitions: this is the backpressure that keeps memory bounded.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Largest event accepted, in bytes; larger ones are dead-lettered.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// On SIGTERM/SIGINT, how long in-flight deliveries may take to finish before
    /// they are abandoned (not committed, so redelivered after restart).
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// When a rebalance takes partitions away, how long to wait for their in-flight
    /// updates before handing them over (the new owner redelivers what is left).
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub rebalance_drain: Duration,
}

fn default_max_in_flight() -> usize {
    // Per stream: each target has its own window, so four targets hold four times
    // this. 96 keeps a target's `concurrency` (64) busy with a third to spare for
    // updates waiting behind their incident's previous one, and bounds what a crash
    // replays to that target. Measured (docs/benchmarks.md): a larger window
    // drains a backlog no faster on this machine, and each doubling costs about
    // 20 MiB of peak RSS with four targets.
    96
}
fn default_max_event_bytes() -> usize {
    256 * 1024
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            max_in_flight: default_max_in_flight(),
            max_event_bytes: default_max_event_bytes(),
            shutdown_grace: default_grace(),
            rebalance_drain: default_drain(),
        }
    }
}

/// Prometheus metrics endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `"0.0.0.0:9464"`. Unset: no endpoint.
    pub listen: Option<String>,
}

/// What readiness (`/readyz`) checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// A stream whose oldest unresolved update is older than this is stalled, and
    /// the replica unready (default `"15m"`). A stream whose target's breaker is
    /// open is only reported as degraded: its updates wait in Kafka by design.
    #[serde(with = "humantime_serde", default = "default_max_unresolved_age")]
    pub max_unresolved_age: Duration,
}

fn default_max_unresolved_age() -> Duration {
    DEFAULT_MAX_UNRESOLVED_AGE
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            max_unresolved_age: default_max_unresolved_age(),
        }
    }
}

/// A retry policy as written: every key optional, so a target can override one.
///
/// Only a table is accepted. serde's derived struct parsing would also take a
/// sequence (`retry = [429]` as `max_attempts = 429`), which is how the SMS
/// gateway's old status list was silently read as a policy; `remote = "Self"` keeps
/// the derived parser as an inherent function that [`Deserialize`] below calls only
/// for a table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RetryOverride {
    /// Attempts in all, the first included (default 10).
    pub max_attempts: Option<u32>,
    /// Give up once this long has passed since the first attempt (default 1h).
    #[serde(default, with = "humantime_serde")]
    pub max_elapsed: Option<Duration>,
    /// Ceiling of the first backoff (default 1s); each retry doubles it.
    #[serde(default, with = "humantime_serde")]
    pub initial_backoff: Option<Duration>,
    /// Largest backoff ceiling (default 5m). The actual wait is drawn uniformly
    /// between zero and the ceiling ("full jitter"), or the peer's `Retry-After` if
    /// that is longer.
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
    /// How long an attempt may go without progress before it is cut (default 60s):
    /// a safety net over the channel's own timeouts. Each recipient a channel
    /// finishes restarts it, so a long recipient list paced by a provider is never
    /// cut while it moves. A cut attempt keeps what it achieved: the recipients it
    /// reached are not sent to again, and only the rest is retried.
    #[serde(default, with = "humantime_serde")]
    pub attempt_timeout: Option<Duration>,
}

/// The keys of a retry policy table, for error messages.
const RETRY_KEYS: &str =
    "(max_attempts, max_elapsed, initial_backoff, max_backoff, attempt_timeout)";

impl<'de> Deserialize<'de> for RetryOverride {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Table;
        impl<'de> serde::de::Visitor<'de> for Table {
            type Value = RetryOverride;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a table of retry policy keys {RETRY_KEYS}")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RetryOverride, A::Error> {
                RetryOverride::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Table)
    }
}

/// A complete, checked retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            max_elapsed: Duration::from_secs(3600),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    fn apply(&self, o: &RetryOverride, key: &str) -> Result<RetryPolicy> {
        let p = RetryPolicy {
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            max_elapsed: o.max_elapsed.unwrap_or(self.max_elapsed),
            initial_backoff: o.initial_backoff.unwrap_or(self.initial_backoff),
            max_backoff: o.max_backoff.unwrap_or(self.max_backoff),
            attempt_timeout: o.attempt_timeout.unwrap_or(self.attempt_timeout),
        };
        if p.max_attempts == 0 {
            bail!("{key}.max_attempts: must be at least 1");
        }
        // Zero would dead-letter every delivery whose first attempt fails, however
        // retryable, which nobody means by writing a time limit.
        if p.max_elapsed.is_zero() {
            bail!("{key}.max_elapsed: must be more than zero");
        }
        if p.initial_backoff.is_zero() || p.initial_backoff > p.max_backoff {
            bail!("{key}.initial_backoff: must be more than zero and at most max_backoff");
        }
        if p.attempt_timeout.is_zero() {
            bail!("{key}.attempt_timeout: must be more than zero");
        }
        Ok(p)
    }
}

/// The keys of `[targets.NAME]` that belong to the daemon, not to the channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetCommon {
    #[serde(rename = "type")]
    kind: ChannelKind,
    audiences: Vec<String>,
    #[serde(default)]
    retry: RetryOverride,
    /// Deliveries to this target at once (default 64).
    #[serde(default)]
    concurrency: Option<usize>,
    /// Routing rules (docs/routing.md); none: every update naming one of
    /// `audiences`.
    #[serde(default)]
    rules: Vec<clarion_render::Rule>,
    /// The language this target's recipients read (e.g. `fr-CA`); wins over the
    /// update's per-audience locale.
    #[serde(default)]
    locale: Option<String>,
    /// When a newer update of an incident arrives while an older one still waits
    /// or retries for this target, skip the older one ("superseded by update X").
    /// For status pages and push; never for regulators, who must see every notice.
    #[serde(default)]
    supersede: bool,
    /// Where this target's stream starts when it has no committed position and the
    /// deployment already has history (a target added later): `latest` (default,
    /// the end of the topic) or `earliest` (replay the whole topic to it).
    #[serde(default)]
    start: StartAt,
    /// Stop hammering a target that is down (docs/configuration.md, "breaker").
    #[serde(default)]
    breaker: BreakerConfig,
    /// Updates this target's stream holds at once (default: `daemon.max_in_flight`).
    #[serde(default)]
    max_in_flight: Option<usize>,
    /// The name the target's own provider goes by in logs, dead letters, the ledger
    /// and metrics (default `primary`).
    #[serde(default)]
    provider_name: Option<String>,
    /// Providers of the same kind tried in order when the one before cannot
    /// complete a delivery (docs/backups.md).
    #[serde(default)]
    backups: Vec<serde_json::Value>,
    /// How long a delivery may keep failing transiently at one provider before it
    /// moves to the next (default 30s). Only with `backups`.
    #[serde(default, with = "humantime_serde")]
    failover_after: Option<Duration>,
    /// Who a drill (`clarion drill`) reaches through this target, instead of its
    /// audiences: addresses, numbers or device tokens; for a webhook, one URL.
    #[serde(default)]
    drill_recipients: Vec<String>,
}

/// The default `failover_after`: long enough that one slow answer or one retry
/// does not send a second copy through another provider, short enough that a
/// provider that is down costs recipients half a minute, not the breaker's
/// five failures and probes.
pub const DEFAULT_FAILOVER_AFTER: Duration = Duration::from_secs(30);

/// Channel keys a backup provider takes from the target when it does not set them:
/// who the target reaches does not change with the provider that reaches them.
const INHERITED_BY_BACKUPS: [&str; 4] = ["recipients", "device_tokens", "lists", "topics"];

/// Channel keys that reach people other than `recipients`/`device_tokens` (an
/// email list per audience, an FCM topic): a drill's channels have none.
const AUDIENCE_WIDE_KEYS: [&str; 2] = ["lists", "topics"];

/// One provider of a target: its own or a backup (`[[targets.NAME.backups]]`).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: Arc<str>,
    pub channel: ChannelConfig,
}

/// Where a new target's stream starts (`start`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    Earliest,
    #[default]
    Latest,
}

const COMMON_KEYS: [&str; 14] = [
    "type",
    "audiences",
    "retry",
    "concurrency",
    "rules",
    "locale",
    "supersede",
    "start",
    "breaker",
    "max_in_flight",
    "provider_name",
    "backups",
    "failover_after",
    "drill_recipients",
];

/// The closed set of channel kinds. Adding one means adding a variant here and an
/// arm in `build_one`, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Webhook,
    Email,
    Sms,
    Fcm,
    Apns,
    /// Not a channel: the members of a directory audience, reached through the
    /// target's legs (`fallback`), each leg a channel of its own.
    People,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 6] = [
        ChannelKind::Webhook,
        ChannelKind::Email,
        ChannelKind::Sms,
        ChannelKind::Fcm,
        ChannelKind::Apns,
        ChannelKind::People,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Email => "email",
            ChannelKind::Sms => "sms",
            ChannelKind::Fcm => "fcm",
            ChannelKind::Apns => "apns",
            ChannelKind::People => "people",
        }
    }

    /// The ledger's `channel` (docs/ledger.schema.json): push for both push
    /// providers, `people` for what a people target records itself (a member it
    /// has no address for).
    pub fn ledger_channel(self) -> &'static str {
        match self {
            ChannelKind::Fcm | ChannelKind::Apns => "push",
            other => other.as_str(),
        }
    }
}

/// A target's channel config, validated as its kind's struct.
#[derive(Debug, Clone)]
pub enum ChannelConfig {
    Webhook(clarion_webhook::WebhookConfig),
    Email(clarion_email::EmailConfig),
    Sms(clarion_sms::SmsConfig),
    Fcm(clarion_push::FcmConfig),
    Apns(clarion_push::ApnsConfig),
}

/// One validated target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: Arc<str>,
    pub kind: ChannelKind,
    pub audiences: BTreeSet<String>,
    pub retry: RetryPolicy,
    pub concurrency: usize,
    pub rules: Vec<clarion_render::Rule>,
    pub locale: Option<String>,
    /// Skip an older update of an incident when a newer one is waiting behind it.
    pub supersede: bool,
    /// Where a target added to a running deployment starts.
    pub start: StartAt,
    pub breaker: BreakerConfig,
    /// This target's in-flight bound, if it has its own.
    pub max_in_flight: Option<usize>,
    /// The target's own provider: `channel` under the name `provider_name`.
    pub channel: ChannelConfig,
    pub provider_name: Arc<str>,
    /// Providers tried in order after the target's own (docs/backups.md).
    pub backups: Vec<ProviderConfig>,
    pub failover_after: Duration,
    /// What a drill goes through, when the target has `drill_recipients`.
    pub drill: Option<DrillConfig>,
    /// A `type = "people"` target's audience and legs. Its own `channel` is then
    /// its first leg's, and unused: every delivery goes through a leg.
    pub people: Option<PeopleConfig>,
}

/// A people target: the members of one directory audience, each reached on the
/// first of their channels that works, in `fallback` order (docs/backups.md).
#[derive(Debug, Clone)]
pub struct PeopleConfig {
    pub audience: String,
    pub legs: Vec<LegConfig>,
    /// People per batch, when the target sets its own (`people_per_batch`); else
    /// the directory's `batch_size`.
    pub per_batch: Option<usize>,
}

/// One leg of a people target: the person's addresses of one kind, reached
/// through a channel built like an ordinary target's (named `TARGET.KIND`), with
/// its own providers, backups, retry budget and breaker.
#[derive(Debug, Clone)]
pub struct LegConfig {
    pub kind: crate::directory::AddressKind,
    pub target: TargetConfig,
}

/// A target's drill: its providers' channels with `drill_recipients` in place of
/// every audience's recipients (a webhook's URL in place of its own).
#[derive(Debug, Clone)]
pub struct DrillConfig {
    pub recipients: Vec<String>,
    /// The target's own channel, then its backups', in the same order.
    pub channels: Vec<ChannelConfig>,
}

impl TargetConfig {
    /// What delivers for this target: itself, or a people target's legs.
    pub fn channels(&self) -> Vec<&TargetConfig> {
        match &self.people {
            Some(p) => p.legs.iter().map(|l| &l.target).collect(),
            None => vec![self],
        }
    }

    /// The locale this target writes to `audience` in: its own `locale`, else the
    /// one the update asks for that audience.
    pub fn locale_for<'a>(
        &'a self,
        update: &'a clarion_core::IncidentUpdate,
        audience: &str,
    ) -> Option<&'a str> {
        self.locale.as_deref().or(update.locale_for(audience))
    }

    /// This target's message for one audience of an update: the one rendering the
    /// daemon delivers and `clarion render` shows.
    pub fn render(
        &self,
        templates: &clarion_render::TemplateSet,
        update: &clarion_core::IncidentUpdate,
        audience: &str,
    ) -> Result<clarion_render::Message, clarion_render::TemplateError> {
        let ctx = clarion_render::RenderContext {
            update,
            audience,
            locale: self.locale_for(update, audience),
            target: &self.name,
        };
        templates.render_all(self.render_kind(), &ctx)
    }

    /// Which templates this target renders with.
    pub fn render_kind(&self) -> clarion_render::ChannelKind {
        match self.kind {
            ChannelKind::Webhook => clarion_render::ChannelKind::Webhook,
            ChannelKind::Email => clarion_render::ChannelKind::Email,
            ChannelKind::Sms => clarion_render::ChannelKind::Sms,
            ChannelKind::Fcm | ChannelKind::Apns => clarion_render::ChannelKind::Push,
            // Never rendered as such: its legs render (`TargetConfig::channels`).
            ChannelKind::People => clarion_render::ChannelKind::Webhook,
        }
    }
}

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: String,
    pub kafka: KafkaConfig,
    pub daemon: DaemonConfig,
    pub metrics: MetricsConfig,
    pub health: HealthConfig,
    pub audiences: BTreeSet<String>,
    pub targets: Vec<TargetConfig>,
    pub templates: Arc<clarion_render::TemplateSet>,
    /// What each target was built from, as written, together with everything
    /// shared that shapes its deliveries (default retry, audiences, templates): a
    /// reload restarts a target's stream only when this changed.
    pub fingerprints: BTreeMap<String, String>,
    /// Deadlines per audience (only audiences that have one).
    pub deadlines: BTreeMap<String, Deadlines>,
    /// The holding statements' directory (`statements`), resolved against the
    /// config file's directory; `None` when not set and `statements/` is absent.
    pub statements: Option<PathBuf>,
    /// The stakeholder directory, when `[directory]` is set.
    pub directory: Option<DirectorySettings>,
}

impl Settings {
    /// The targets' names, comma-separated, for a message about an unknown one.
    pub fn target_names(&self) -> String {
        self.targets
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A rendered message as the channels receive it (`Delivery.content`), by part name.
pub fn content_of(message: &clarion_render::Message) -> clarion_core::Content {
    clarion_core::Content {
        parts: message
            .parts
            .iter()
            .map(|(part, text)| (part.as_str().to_string(), text.clone()))
            .collect(),
    }
}

/// Reads the file and the `CLARION__…` environment into a [`RawConfig`].
pub fn load(path: &Path) -> Result<RawConfig> {
    if !path.exists() {
        bail!("config file {} does not exist", path.display());
    }
    // The config library would call a directory "not found", which sends the reader
    // looking for a typo in a path that is there.
    if path.is_dir() {
        bail!(
            "config file {} is a directory; give the TOML file in it, e.g. {}",
            path.display(),
            path.join("clarion.toml").display()
        );
    }
    let cfg = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("CLARION")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .with_context(|| format!("cannot read {}", path.display()))?;
    cfg.try_deserialize::<RawConfig>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Parses a TOML string (tests, the demo).
pub fn parse_str(toml: &str) -> Result<RawConfig> {
    let cfg = config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml))
        .build()?;
    Ok(cfg.try_deserialize::<RawConfig>()?)
}

impl RawConfig {
    /// Checks every value, resolves every secret reference and builds every channel;
    /// `source` names the file in error messages. Missing secrets and broken targets
    /// are reported together, so that they are not fixed one run at a time.
    pub fn validate(self, source: &str, secrets: &dyn SecretResolver) -> Result<Settings> {
        self.check(source, Some(secrets))
    }

    /// Checks what `clarion route` and `clarion render` need (routing, templates,
    /// each target's own keys) but resolves no secret and builds no channel, so that
    /// a channel owner can preview a template without production credentials.
    /// `check-config` and `run` use [`RawConfig::validate`].
    pub fn validate_for_preview(self, source: &str) -> Result<Settings> {
        self.check(source, None)
    }

    fn check(self, source: &str, secrets: Option<&dyn SecretResolver>) -> Result<Settings> {
        let at = |e: anyhow::Error| anyhow!("{source}: {e}");
        if self.kafka.brokers.trim().is_empty() {
            return Err(at(anyhow!("kafka.brokers: must not be empty")));
        }
        if self.kafka.topic.trim().is_empty() {
            return Err(at(anyhow!("kafka.topic: must not be empty")));
        }
        if self.kafka.dead_letter_topic == self.kafka.topic {
            return Err(at(anyhow!(
                "kafka.dead_letter_topic: must differ from kafka.topic, or failures would be consumed again"
            )));
        }
        for (key, t) in [
            ("ledger_topic", &self.kafka.ledger_topic),
            ("incident_state_topic", &self.kafka.incident_state_topic),
        ] {
            if t.as_ref().is_some_and(|t| *t == self.kafka.topic) {
                return Err(at(anyhow!(
                    "kafka.{key}: must differ from kafka.topic, or its records would be consumed as updates"
                )));
            }
        }
        let sections: [(&str, Vec<&String>); 4] = [
            ("properties", self.kafka.properties.keys().collect()),
            ("consumer", self.kafka.consumer.keys().collect()),
            ("producer", self.kafka.producer.keys().collect()),
            (
                "secret_properties",
                self.kafka.secret_properties.keys().collect(),
            ),
        ];
        for (section, keys) in sections {
            for k in keys {
                // `consumer` is not the producer's: its acks would be harmless.
                if OWNED_KAFKA_PROPERTIES.contains(&k.as_str()) && section != "producer" {
                    return Err(at(anyhow!(
                        "kafka.{section}.{k}: Clarion sets this itself (at-least-once delivery depends on it); remove it"
                    )));
                }
                if OWNED_PRODUCER_PROPERTIES.contains(&k.as_str()) && section != "consumer" {
                    return Err(at(anyhow!(
                        "kafka.{section}.{k}: Clarion sets this itself (acks=all and \
                         enable.idempotence=true: a dead letter counts only once every \
                         in-sync replica has it, exactly once); remove it"
                    )));
                }
            }
        }
        // Problems found from here on are collected, not returned one at a time.
        let mut problems: Vec<String> = Vec::new();
        if let Some(secrets) = secrets {
            for (k, r) in &self.kafka.secret_properties {
                if let Err(e) = secrets.resolve(r) {
                    problems.push(format!("kafka.secret_properties.{k}: {e}"));
                }
            }
        }
        if self.daemon.max_in_flight == 0 {
            return Err(at(anyhow!("daemon.max_in_flight: must be at least 1")));
        }
        let mut audiences: BTreeSet<String> =
            STANDARD_AUDIENCES.iter().map(|s| s.to_string()).collect();
        for a in self.audiences.names() {
            if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(at(anyhow!("audiences: `{a}` is not a valid audience name")));
            }
            audiences.insert(a.clone());
        }
        let deadlines = validate_deadlines(&self.audiences).map_err(at)?;
        let default_retry = RetryPolicy::default()
            .apply(&self.retry, "retry")
            .map_err(at)?;
        if self.targets.is_empty() {
            return Err(at(anyhow!(
                "targets: no target is configured, nothing would be delivered"
            )));
        }
        // Everything shared that shapes a target's deliveries, for reloads.
        let shared = format!(
            "{:?}|{:?}|{:?}|{:?}",
            self.retry,
            audiences,
            self.templates,
            self.templates.dir.as_ref().map(|d| read_templates(
                &Path::new(source).parent().unwrap_or(Path::new(".")).join(d)
            )
            .ok())
        );
        let fingerprints: BTreeMap<String, String> = self
            .targets
            .iter()
            .map(|(name, value)| (name.clone(), format!("{value}|{shared}")))
            .collect();
        let mut targets = Vec::new();
        for (name, value) in self.targets {
            match validate_target(&name, value, &audiences, &default_retry, secrets) {
                Ok(t) => targets.push(t),
                Err(TargetError::Other(e)) => problems.push(format!("targets.{name}: {e}")),
                Err(TargetError::Secrets(list)) => problems.extend(
                    list.into_iter()
                        .map(|(key, e)| format!("targets.{name}: {key}: {e}")),
                ),
            }
        }
        match problems.len() {
            0 => {}
            1 => return Err(anyhow!("{source}: {}", problems[0])),
            n => {
                let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
                return Err(anyhow!("{source}: {n} problems:\n{}", list.join("\n")));
            }
        }
        let directory = match &self.directory {
            None => {
                if let Some(t) = targets.iter().find(|t| t.people.is_some()) {
                    return Err(at(anyhow!(
                        "targets.{}: a people target needs a `[directory]` to take its people from",
                        t.name
                    )));
                }
                None
            }
            Some(d) => Some(
                validate_directory(source, d, &self.kafka, &audiences, secrets.is_some())
                    .map_err(at)?,
            ),
        };
        let templates = build_templates(source, &self.templates, &targets)?;
        // Statements are read by `publish` and `check-config` only; here the
        // directory is just located, so that the daemon never depends on it.
        let base = Path::new(source).parent().unwrap_or(Path::new("."));
        let statements = match &self.statements {
            Some(dir) if !base.join(dir).is_dir() => {
                return Err(at(anyhow!(
                    "statements: {} is not a directory",
                    base.join(dir).display()
                )));
            }
            Some(dir) => Some(base.join(dir)),
            None => Some(base.join("statements")).filter(|d| d.is_dir()),
        };
        Ok(Settings {
            source: source.to_string(),
            kafka: self.kafka,
            daemon: self.daemon,
            metrics: self.metrics,
            health: self.health,
            audiences,
            targets,
            templates: Arc::new(templates),
            fingerprints,
            deadlines,
            statements,
            directory,
        })
    }
}

/// Checks `[directory]`, and reads and validates its file when `load` (`run` and
/// `check-config`; previews do not need the people).
fn validate_directory(
    source: &str,
    d: &DirectoryConfig,
    kafka: &KafkaConfig,
    audiences: &BTreeSet<String>,
    load: bool,
) -> Result<DirectorySettings> {
    let base = Path::new(source).parent().unwrap_or(Path::new("."));
    let src = match (&d.file, &d.topic) {
        (Some(_), Some(_)) => bail!(
            "directory: set `file` or `topic`, not both (the topic is the address book that can change without a restart)"
        ),
        (None, None) => bail!("directory: set `file` (CSV, JSON or JSON Lines) or `topic`"),
        (Some(f), None) => DirectorySource::File(base.join(f)),
        (None, Some(t)) if t.trim().is_empty() => bail!("directory.topic: must not be empty"),
        (None, Some(t)) => DirectorySource::Topic(t.clone()),
    };
    let Some(progress) = d.progress_topic.clone().filter(|t| !t.trim().is_empty()) else {
        bail!(
            "directory.progress_topic: missing (a compacted topic where each walk's progress is kept, so that a restart does not send to everyone again)"
        );
    };
    let ours = [
        Some(&kafka.topic),
        Some(&kafka.dead_letter_topic),
        kafka.ledger_topic.as_ref(),
        kafka.incident_state_topic.as_ref(),
        d.topic.as_ref(),
    ];
    if ours.iter().flatten().any(|t| **t == progress) {
        bail!("directory.progress_topic: `{progress}` must be a topic of its own");
    }
    if let DirectorySource::Topic(t) = &src {
        let others = [
            Some(&kafka.topic),
            Some(&kafka.dead_letter_topic),
            kafka.ledger_topic.as_ref(),
            kafka.incident_state_topic.as_ref(),
        ];
        if others.iter().flatten().any(|o| *o == t) {
            bail!("directory.topic: `{t}` must be a topic of its own");
        }
    }
    if !(1..=10_000).contains(&d.batch_size) {
        bail!("directory.batch_size: must be from 1 to 10000");
    }
    if !(1..=64).contains(&d.batches_in_flight) {
        bail!("directory.batches_in_flight: must be from 1 to 64");
    }
    let people = match (&src, load) {
        (DirectorySource::File(path), true) => Some(Arc::new(
            crate::directory::load_file(path, audiences)
                .map_err(|e| anyhow!("directory.file: {e:#}"))?,
        )),
        _ => None,
    };
    Ok(DirectorySettings {
        source: src,
        progress_topic: progress,
        batch_size: d.batch_size,
        batches_in_flight: d.batches_in_flight,
        people,
    })
}

/// Checks `[audiences.NAME]` deadlines: positive durations, `warn_at` in (0, 1).
fn validate_deadlines(config: &AudiencesConfig) -> Result<BTreeMap<String, Deadlines>> {
    let AudiencesConfig::Table(table) = config else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (name, a) in table {
        let warn_at = a.warn_at.unwrap_or(DEFAULT_WARN_AT);
        if !(warn_at > 0.0 && warn_at < 1.0) {
            bail!("audiences.{name}.warn_at: must be between 0 and 1 (e.g. 0.8), not {warn_at}");
        }
        if a.first_notice_within.is_some_and(|d| d.is_zero()) {
            bail!("audiences.{name}.first_notice_within: must be more than zero");
        }
        let mut by_status = BTreeMap::new();
        for (status, d) in &a.deadlines {
            if d.is_zero() {
                bail!("audiences.{name}.deadlines.{status}: must be more than zero");
            }
            by_status.insert(*status, **d);
        }
        if a.first_notice_within.is_none() && by_status.is_empty() {
            continue;
        }
        out.insert(
            name.clone(),
            Deadlines {
                first_notice_within: a.first_notice_within,
                by_status,
                warn_at,
            },
        );
    }
    Ok(out)
}

/// Reads the template files, compiles them, and renders every one against sample
/// updates of every status and impact, holding each target to its channel's budget.
fn build_templates(
    source: &str,
    config: &clarion_render::TemplatesConfig,
    targets: &[TargetConfig],
) -> Result<clarion_render::TemplateSet> {
    let files = match &config.dir {
        None => Vec::new(),
        Some(dir) => {
            // A relative directory is relative to the config file.
            let base = Path::new(source).parent().unwrap_or(Path::new("."));
            let dir = base.join(dir);
            read_templates(&dir)
                .map_err(|e| anyhow!("{source}: templates.dir: {}: {e}", dir.display()))?
        }
    };
    // A people target's legs render, each as the channel it is.
    let targets: Vec<&TargetConfig> = targets.iter().flat_map(|t| t.channels()).collect();
    let plan: Vec<clarion_render::TargetTemplates> = targets
        .iter()
        .map(|t| clarion_render::TargetTemplates {
            name: t.name.to_string(),
            kind: t.render_kind(),
            audiences: t.audiences.clone(),
            locales: t.locale.iter().cloned().collect(),
        })
        .collect();
    let limit = |t: &clarion_render::TargetTemplates,
                 m: &clarion_render::Message|
     -> Result<(), String> {
        let Some(target) = targets.iter().find(|x| *x.name == *t.name) else {
            return Ok(());
        };
        match &target.channel {
            ChannelConfig::Sms(c) => {
                let text = m.get(clarion_render::Part::Text).unwrap_or("");
                let a = clarion_sms::encoding::analyze(text.trim());
                if a.segments > c.max_segments() {
                    return Err(format!(
                        "SMS text takes {} {:?} segments, over this target's max_segments = {} (it would be cut)",
                        a.segments,
                        a.encoding,
                        c.max_segments()
                    ));
                }
                Ok(())
            }
            ChannelConfig::Fcm(_) | ChannelConfig::Apns(_) => {
                let bytes = m.get(clarion_render::Part::Title).map_or(0, str::len)
                    + m.get(clarion_render::Part::Body).map_or(0, str::len);
                // Providers take 4096 bytes of payload; keep room for the data fields.
                if bytes > PUSH_TEXT_BUDGET {
                    return Err(format!(
                        "push title and body take {bytes} bytes, over the {PUSH_TEXT_BUDGET} that fit a 4 KB payload with its data fields"
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    };
    clarion_render::TemplateSet::validate(config, files, &plan, &limit).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
        anyhow!(
            "{source}: templates: {} problem(s):\n{}",
            problems.len(),
            list.join("\n")
        )
    })
}

/// Title and body bytes that fit a push payload next to Clarion's data fields.
const PUSH_TEXT_BUDGET: usize = 3500;

/// Every `*.j2` file under `dir`, as (path relative to `dir` with `/`, contents).
fn read_templates(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "j2") {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((rel.join("/"), std::fs::read_to_string(&path)?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Why a target is invalid: its secret references that cannot be resolved (each
/// with its key, all of them), or the first other problem.
#[derive(Debug)]
enum TargetError {
    Secrets(Vec<(String, String)>),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for TargetError {
    fn from(e: anyhow::Error) -> Self {
        TargetError::Other(e)
    }
}

/// Checks one target's keys and, given `secrets`, builds its channel.
fn validate_target(
    name: &str,
    value: serde_json::Value,
    audiences: &BTreeSet<String>,
    default_retry: &RetryPolicy,
    secrets: Option<&dyn SecretResolver>,
) -> Result<TargetConfig, TargetError> {
    let (target, channel_keys) = validate_target_keys(name, value, audiences, default_retry)?;
    if let Some(secrets) = secrets {
        check_build(&target, &channel_keys, secrets)?;
    }
    Ok(target)
}

/// Builds the channel as `run` would, and, if secrets are missing, reports every
/// one of them with its key rather than only the first the channel asked for.
///
/// The channel crates stop at their first error, so the build runs with a
/// resolver that records each reference it cannot resolve and hands the channel a
/// placeholder instead, letting it go on to ask for the next. The channel built
/// that way is dropped at once: a placeholder never reaches a peer.
fn check_build(
    target: &TargetConfig,
    channel_keys: &serde_json::Value,
    secrets: &dyn SecretResolver,
) -> Result<(), TargetError> {
    let recorder = Recorder {
        inner: secrets,
        failed: Mutex::new(Vec::new()),
    };
    // Building resolves secrets and checks channel-specific values; it does no I/O
    // beyond reading files the config names, so check-config can use it.
    let built = match &target.people {
        None => build_providers(target, &recorder).map(drop),
        Some(p) => p.legs.iter().try_for_each(|l| {
            build_providers(&l.target, &recorder)
                .map(drop)
                .map_err(|e| anyhow!("{}: {e:#}", l.kind.as_str()))
        }),
    };
    let failed = recorder
        .failed
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if failed.is_empty() {
        // Every secret resolved: the build's verdict is the real one.
        return built.map_err(TargetError::Other);
    }
    // The build may also have failed on a placeholder (not a valid key, say); that
    // says nothing about the real secret, so only the unresolved ones are reported.
    let mut list = Vec::new();
    // The drill's copies of a channel ask for the same secrets: report each once.
    let mut unique: Vec<(SecretRef, String)> = Vec::new();
    for f in failed {
        if !unique.iter().any(|(r, _)| *r == f.0) {
            unique.push(f);
        }
    }
    for (reference, error) in unique {
        let mut keys = Vec::new();
        find_reference(channel_keys, &reference, String::new(), &mut keys);
        if keys.is_empty() {
            keys.push(reference.to_string());
        }
        for key in keys {
            list.push((key, error.clone()));
        }
    }
    Err(TargetError::Secrets(list))
}

/// A stand-in secret that passes the channels' format checks (it is a valid
/// Standard Webhooks secret: `whsec_` and 32 zero bytes), so that building goes on
/// to the next reference. Only [`check_build`] uses it, and never sends with it.
const PLACEHOLDER_SECRET: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// Resolves through `inner`, recording every reference that fails.
struct Recorder<'a> {
    inner: &'a dyn SecretResolver,
    failed: Mutex<Vec<(SecretRef, String)>>,
}

impl SecretResolver for Recorder<'_> {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        self.inner.resolve(reference).or_else(|e| {
            // Never skip the record: an unrecorded failure would let the build pass
            // on a placeholder. A poisoned lock still holds a usable list.
            self.failed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((reference.clone(), e));
            Ok(Secret::new(PLACEHOLDER_SECRET))
        })
    }
}

/// The keys (`secrets[0]`, `auth_token`) at which `reference` is written in a
/// target's channel keys.
fn find_reference(
    value: &serde_json::Value,
    reference: &SecretRef,
    at: String,
    out: &mut Vec<String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            let is_it = map.len() == 1
                && match reference {
                    SecretRef::Env(v) => map.get("env").and_then(|x| x.as_str()) == Some(v),
                    SecretRef::File(p) => map.get("file").and_then(|x| x.as_str()) == Some(p),
                    SecretRef::Value(_) => false,
                };
            if is_it {
                out.push(at);
                return;
            }
            for (k, v) in map {
                let key = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                find_reference(v, reference, key, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                find_reference(v, reference, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks one target's keys without resolving secrets; returns the target and its
/// keys as written.
fn validate_target_keys(
    name: &str,
    value: serde_json::Value,
    audiences: &BTreeSet<String>,
    default_retry: &RetryPolicy,
) -> Result<(TargetConfig, serde_json::Value)> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("target names must be non-empty without whitespace");
    }
    let serde_json::Value::Object(mut map) = value else {
        bail!("must be a table");
    };
    // As written, so that a missing secret is reported at its key, in a backup too.
    let written = serde_json::Value::Object(map.clone());
    if map.get("type").and_then(|t| t.as_str()) == Some("people") {
        let target = validate_people(name, map, audiences, default_retry)?;
        return Ok((target, written));
    }
    // Split the daemon's keys from the channel's, so that each side can reject
    // unknown keys with its own list of what is allowed.
    let mut common = serde_json::Map::new();
    for k in COMMON_KEYS {
        if let Some(v) = map.remove(k) {
            common.insert(k.to_string(), v);
        }
    }
    if !common.contains_key("type") {
        let kinds: Vec<&str> = ChannelKind::ALL.iter().map(|k| k.as_str()).collect();
        bail!("type: missing (one of: {})", kinds.join(", "));
    }
    // `retry` is the daemon's policy table. The SMS HTTP gateway's list of statuses
    // used to be called `retry` too and was read as a policy (`retry = [429]` meant
    // max_attempts = 429); say where that list lives now.
    if let Some(retry) = common.get("retry").filter(|r| !r.is_object()) {
        if common.get("type").and_then(|t| t.as_str()) == Some("sms") {
            bail!(
                "retry: is this target's retry policy, a table {RETRY_KEYS}; the HTTP \
                 gateway's statuses to retry are `retry_statuses`, e.g. retry_statuses = [429, 503]"
            );
        }
        bail!("retry: must be a table {RETRY_KEYS}, not {retry}");
    }
    let common: TargetCommon = serde_json::from_value(serde_json::Value::Object(common))?;
    if common.audiences.is_empty() {
        bail!("audiences: must list at least one audience");
    }
    for a in &common.audiences {
        if !audiences.contains(a) {
            bail!(
                "audiences: `{a}` is not a standard audience nor listed in the top-level `audiences`"
            );
        }
    }
    let retry = default_retry.apply(&common.retry, "retry")?;
    let concurrency = common.concurrency.unwrap_or(64);
    if concurrency == 0 {
        bail!("concurrency: must be at least 1");
    }
    if common.max_in_flight == Some(0) {
        bail!("max_in_flight: must be at least 1");
    }
    if common.breaker.failures == 0 {
        bail!("breaker.failures: must be at least 1");
    }
    if common.breaker.probe_interval.is_zero() || common.breaker.outage_budget.is_zero() {
        bail!("breaker: probe_interval and outage_budget must be more than zero");
    }
    let rest = serde_json::Value::Object(map);
    let channel = channel_config(common.kind, rest.clone())?;
    // The channel keys of each provider, for the drill's copies of them.
    let mut written_channels = vec![rest.clone()];
    let provider_name: Arc<str> = Arc::from(common.provider_name.as_deref().unwrap_or("primary"));
    let mut backups = Vec::new();
    let mut names = BTreeSet::from([provider_name.to_string()]);
    for (i, b) in common.backups.into_iter().enumerate() {
        let at = format!("backups[{i}]");
        let serde_json::Value::Object(mut b) = b else {
            bail!("{at}: must be a table");
        };
        let name = match b.remove("name") {
            Some(serde_json::Value::String(n)) if valid_provider_name(&n) => n,
            Some(n) => {
                bail!("{at}.name: `{n}` is not a provider name (letters, digits, `-`, `_`, `.`)")
            }
            None => bail!(
                "{at}.name: missing (the name the provider goes by in logs, dead letters and the ledger)"
            ),
        };
        if !names.insert(name.clone()) {
            bail!(
                "{at}.name: `{name}` is used twice in this target (`provider_name` is `{provider_name}`)"
            );
        }
        if let Some(k) = COMMON_KEYS.iter().find(|k| b.contains_key(**k)) {
            bail!("{at}.{k}: belongs to the target, not to one of its providers");
        }
        for key in INHERITED_BY_BACKUPS {
            if let (false, Some(v)) = (b.contains_key(key), rest.get(key)) {
                b.insert(key.to_string(), v.clone());
            }
        }
        let keys = serde_json::Value::Object(b);
        let channel = channel_config(common.kind, keys.clone())
            .map_err(|e| anyhow!("{at} (`{name}`): {e}"))?;
        written_channels.push(keys);
        backups.push(ProviderConfig {
            name: Arc::from(name.as_str()),
            channel,
        });
    }
    if !valid_provider_name(&provider_name) {
        bail!(
            "provider_name: `{provider_name}` is not a provider name (letters, digits, `-`, `_`, `.`)"
        );
    }
    if common.failover_after.is_some() && backups.is_empty() {
        bail!("failover_after: only means something with `backups` (providers to fail over to)");
    }
    if let Some(l) = &common.locale {
        if l.is_empty()
            || !l
                .split('-')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            bail!("locale: `{l}` is not a language tag like `fr` or `fr-CA`");
        }
    }
    let target = TargetConfig {
        name: Arc::from(name),
        kind: common.kind,
        audiences: common.audiences.into_iter().collect(),
        retry,
        concurrency,
        rules: common.rules,
        locale: common.locale,
        supersede: common.supersede,
        start: common.start,
        breaker: common.breaker,
        max_in_flight: common.max_in_flight,
        channel,
        provider_name,
        backups,
        failover_after: common.failover_after.unwrap_or(DEFAULT_FAILOVER_AFTER),
        drill: None,
        people: None,
    };
    let drill = drill_config(&target, common.drill_recipients, written_channels)?;
    Ok((TargetConfig { drill, ..target }, written))
}

/// The keys of a `type = "people"` target (docs/backups.md#people-targets): the
/// daemon's own, `fallback`, and one table per leg.
const PEOPLE_KEYS: [&str; 11] = [
    "type",
    "audiences",
    "retry",
    "concurrency",
    "rules",
    "locale",
    "start",
    "breaker",
    "max_in_flight",
    "fallback",
    "people_per_batch",
];

/// What a people target's legs take from it unless they set their own.
const INHERITED_BY_LEGS: [&str; 3] = ["retry", "concurrency", "breaker"];

/// Keys of an ordinary target that a leg may not set: they belong to the people
/// target, which decides who is addressed and when.
const NOT_IN_A_LEG: [&str; 7] = [
    "audiences",
    "rules",
    "supersede",
    "start",
    "max_in_flight",
    "drill_recipients",
    "locale",
];

/// Checks a `type = "people"` target: its audience (exactly one), its `fallback`
/// order, and each leg as an ordinary target of the leg's channel (named
/// `TARGET.KIND`) whose channel addresses directory members only.
fn validate_people(
    name: &str,
    mut map: serde_json::Map<String, serde_json::Value>,
    audiences: &BTreeSet<String>,
    default_retry: &RetryPolicy,
) -> Result<TargetConfig> {
    use crate::directory::AddressKind;
    for (key, why) in [
        (
            "supersede",
            "a people target walks every member for every update; skipping updates would leave people with an older one",
        ),
        (
            "backups",
            "backups belong to a leg: `[[targets.NAME.sms.backups]]`",
        ),
        (
            "provider_name",
            "provider names belong to a leg: `[targets.NAME.sms] provider_name = …`",
        ),
        (
            "failover_after",
            "failover belongs to a leg: `[targets.NAME.sms] failover_after = …`",
        ),
        (
            "drill_recipients",
            "a people target is not drilled itself; drill the channels its legs use through ordinary targets",
        ),
    ] {
        if map.contains_key(key) {
            bail!("{key}: {why}");
        }
    }
    let fallback: Vec<AddressKind> = match map.remove("fallback") {
        None => bail!(
            "fallback: missing (the channels to try for each person, in order, e.g. fallback = [\"push\", \"sms\", \"email\"])"
        ),
        Some(serde_json::Value::Array(list)) => {
            let mut kinds = Vec::new();
            for v in list {
                let Some(k) = v.as_str() else {
                    bail!("fallback: `{v}` is not one of push, sms, email");
                };
                let kind: AddressKind = k.parse().map_err(|e| anyhow!("fallback: {e}"))?;
                if kinds.contains(&kind) {
                    bail!("fallback: `{k}` is listed twice");
                }
                kinds.push(kind);
            }
            if kinds.is_empty() {
                bail!("fallback: must list at least one of push, sms, email");
            }
            kinds
        }
        Some(v) => bail!("fallback: must be a list like [\"push\", \"sms\", \"email\"], not {v}"),
    };
    let mut legs_written = BTreeMap::new();
    for kind in AddressKind::ALL {
        if let Some(v) = map.remove(kind.as_str()) {
            if !fallback.contains(&kind) {
                bail!(
                    "{}: a leg that `fallback` does not list would never be used; add it to fallback or remove it",
                    kind.as_str()
                );
            }
            legs_written.insert(kind, v);
        }
    }
    if let Some(k) = map.keys().find(|k| !PEOPLE_KEYS.contains(&k.as_str())) {
        bail!(
            "{k}: unknown key for a people target (known: {}, and one table per leg: push, sms, email)",
            PEOPLE_KEYS.join(", ")
        );
    }
    let people_audience = match map.get("audiences") {
        Some(serde_json::Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(serde_json::Value::Array(a)) if a.len() > 1 => bail!(
            "audiences: a people target addresses the members of one audience, not {}; use one people target per audience",
            a.len()
        ),
        _ => bail!("audiences: must name the one directory audience this target addresses"),
    };
    let batch = match map.remove("people_per_batch") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=10_000) => Some(n as usize),
            _ => bail!("people_per_batch: must be a whole number from 1 to 10000, not {v}"),
        },
    };
    let mut legs = Vec::new();
    for kind in &fallback {
        let at = kind.as_str();
        let Some(leg) = legs_written.remove(kind) else {
            bail!(
                "{at}: `fallback` lists {at} but the target has no `[targets.{name}.{at}]` table for its channel"
            );
        };
        let serde_json::Value::Object(mut leg) = leg else {
            bail!("{at}: must be a table");
        };
        if let Some(k) = NOT_IN_A_LEG.iter().find(|k| leg.contains_key(**k)) {
            bail!("{at}.{k}: belongs to the people target, not to one of its legs");
        }
        let kinds: &[&str] = match kind {
            AddressKind::Push => &["apns", "fcm"],
            AddressKind::Sms => &["sms"],
            AddressKind::Email => &["email"],
        };
        match leg.get("type").and_then(|t| t.as_str()) {
            Some(t) if kinds.contains(&t) => {}
            None if kinds.len() == 1 => {
                leg.insert("type".into(), serde_json::json!(kinds[0]));
            }
            Some(t) => bail!(
                "{at}.type: `{t}` cannot carry {at} addresses (one of: {})",
                kinds.join(", ")
            ),
            None => bail!("{at}.type: missing (one of: {})", kinds.join(", ")),
        }
        leg.insert("audiences".into(), serde_json::json!([people_audience]));
        // The channel's own recipients key, which its config requires: empty, as
        // a leg's recipients come with each delivery.
        let own = match leg.get("type").and_then(|t| t.as_str()) {
            Some("apns") | Some("fcm") => "device_tokens",
            _ => "recipients",
        };
        leg.entry(own).or_insert_with(|| serde_json::json!({}));
        if let Some(l) = map.get("locale") {
            leg.insert("locale".into(), l.clone());
        }
        for key in INHERITED_BY_LEGS {
            if let (false, Some(v)) = (leg.contains_key(key), map.get(key)) {
                leg.insert(key.to_string(), v.clone());
            }
        }
        let leg_name = format!("{name}.{at}");
        let (mut target, _) = validate_target_keys(
            &leg_name,
            serde_json::Value::Object(leg),
            audiences,
            default_retry,
        )
        .map_err(|e| anyhow!("{at}: {e}"))?;
        mark_directory(&mut target.channel);
        for b in &mut target.backups {
            mark_directory(&mut b.channel);
        }
        legs.push(LegConfig {
            kind: *kind,
            target,
        });
    }
    // The people target's own keys, checked as an ordinary target's are.
    let mut common = map.clone();
    common.insert("type".into(), serde_json::json!("people"));
    let common: TargetCommon = serde_json::from_value(serde_json::Value::Object(common))?;
    let retry = default_retry.apply(&common.retry, "retry")?;
    let concurrency = common.concurrency.unwrap_or(64);
    if concurrency == 0 {
        bail!("concurrency: must be at least 1");
    }
    if common.max_in_flight == Some(0) {
        bail!("max_in_flight: must be at least 1");
    }
    if !audiences.contains(&people_audience) {
        bail!(
            "audiences: `{people_audience}` is not a standard audience nor listed in the top-level `audiences`"
        );
    }
    let first = &legs[0].target;
    Ok(TargetConfig {
        name: Arc::from(name),
        kind: ChannelKind::People,
        audiences: BTreeSet::from([people_audience.clone()]),
        retry,
        concurrency,
        rules: common.rules,
        locale: common.locale,
        supersede: false,
        start: common.start,
        breaker: common.breaker,
        max_in_flight: common.max_in_flight,
        channel: first.channel.clone(),
        provider_name: Arc::from("people"),
        backups: Vec::new(),
        failover_after: DEFAULT_FAILOVER_AFTER,
        drill: None,
        people: Some(PeopleConfig {
            audience: people_audience,
            legs,
            per_batch: batch,
        }),
    })
}

/// Marks a leg's channel as addressing directory members only: it may list no
/// recipients of its own.
fn mark_directory(channel: &mut ChannelConfig) {
    match channel {
        ChannelConfig::Email(c) => c.directory = true,
        ChannelConfig::Sms(c) => c.set_directory(true),
        ChannelConfig::Fcm(c) => c.directory = true,
        ChannelConfig::Apns(c) => c.directory = true,
        // Not a leg's channel kind (`validate_people` allows none).
        ChannelConfig::Webhook(_) => {}
    }
}

/// The drill's copy of each provider's channel: `drill_recipients` for every
/// audience the target serves, or, for a webhook, as its one URL.
fn drill_config(
    target: &TargetConfig,
    recipients: Vec<String>,
    channels: Vec<serde_json::Value>,
) -> Result<Option<DrillConfig>> {
    if recipients.is_empty() {
        return Ok(None);
    }
    let key = match target.kind {
        ChannelKind::Webhook => "url",
        ChannelKind::Email | ChannelKind::Sms => "recipients",
        ChannelKind::Fcm | ChannelKind::Apns => "device_tokens",
        ChannelKind::People => bail!(
            "drill_recipients: a people target is not drilled itself; drill the channels its legs use through ordinary targets"
        ),
    };
    let value = if target.kind == ChannelKind::Webhook {
        let [url] = recipients.as_slice() else {
            bail!(
                "drill_recipients: a webhook target's drill goes to one URL (a receiver that is not the real endpoint), not {}",
                recipients.len()
            );
        };
        serde_json::Value::String(url.clone())
    } else {
        serde_json::Value::Object(
            target
                .audiences
                .iter()
                .map(|a| (a.clone(), serde_json::json!(recipients)))
                .collect(),
        )
    };
    let mut out = Vec::new();
    for (i, keys) in channels.into_iter().enumerate() {
        let serde_json::Value::Object(mut keys) = keys else {
            continue;
        };
        keys.insert(key.to_string(), value.clone());
        for k in AUDIENCE_WIDE_KEYS {
            keys.remove(k);
        }
        let at = if i == 0 {
            "drill_recipients".to_string()
        } else {
            format!("drill_recipients (with backups[{}])", i - 1)
        };
        out.push(
            channel_config(target.kind, serde_json::Value::Object(keys))
                .map_err(|e| anyhow!("{at}: {e}"))?,
        );
    }
    Ok(Some(DrillConfig {
        recipients,
        channels: out,
    }))
}

/// A channel's keys, read as its kind's config (unknown keys rejected).
fn channel_config(kind: ChannelKind, keys: serde_json::Value) -> Result<ChannelConfig> {
    Ok(match kind {
        ChannelKind::Webhook => ChannelConfig::Webhook(serde_json::from_value(keys)?),
        ChannelKind::Email => ChannelConfig::Email(serde_json::from_value(keys)?),
        ChannelKind::Sms => ChannelConfig::Sms(serde_json::from_value(keys)?),
        ChannelKind::Fcm => ChannelConfig::Fcm(serde_json::from_value(keys)?),
        ChannelKind::Apns => ChannelConfig::Apns(serde_json::from_value(keys)?),
        ChannelKind::People => bail!("`people` has no channel of its own; its legs do"),
    })
}

fn valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A provider as built: its name, its channel, and its drill's channel.
#[derive(Debug, Clone)]
pub struct BuiltProvider {
    pub name: Arc<str>,
    pub channel: Arc<dyn Channel>,
    /// The same provider addressing the target's `drill_recipients` only.
    pub drill: Option<Arc<dyn Channel>>,
}

/// Builds every provider of a target, its own first, then its backups in order.
pub fn build_providers(
    target: &TargetConfig,
    secrets: &dyn SecretResolver,
) -> Result<Vec<BuiltProvider>> {
    if target.people.is_some() {
        bail!("a people target has no providers of its own; its legs do");
    }
    let names =
        std::iter::once(&target.provider_name).chain(target.backups.iter().map(|b| &b.name));
    let channels =
        std::iter::once(&target.channel).chain(target.backups.iter().map(|b| &b.channel));
    let mut out = Vec::new();
    for (i, (name, channel)) in names.zip(channels).enumerate() {
        // The target's own provider's errors read as before backups existed.
        let at = |e: anyhow::Error, what: &str| match (i, what) {
            (0, "") => e,
            (0, _) => anyhow!("{what}: {e:#}"),
            _ => anyhow!("backups `{name}`{what}: {e:#}"),
        };
        let built = build_one(&target.name, channel, secrets).map_err(|e| at(e, ""))?;
        let drill = match target.drill.as_ref().and_then(|d| d.channels.get(i)) {
            Some(c) => {
                Some(build_one(&target.name, c, secrets).map_err(|e| at(e, " drill_recipients"))?)
            }
            None => None,
        };
        out.push(BuiltProvider {
            name: name.clone(),
            channel: built,
            drill,
        });
    }
    Ok(out)
}

/// Builds one channel: the one place that matches on channel kinds.
fn build_one(
    name: &str,
    channel: &ChannelConfig,
    secrets: &dyn SecretResolver,
) -> Result<Arc<dyn Channel>> {
    Ok(match channel {
        ChannelConfig::Webhook(c) => Arc::new(clarion_webhook::build(name, c, secrets)?),
        ChannelConfig::Email(c) => Arc::new(clarion_email::build(name, c, secrets)?),
        ChannelConfig::Sms(c) => Arc::new(clarion_sms::build(name, c, secrets)?),
        ChannelConfig::Fcm(c) => Arc::new(clarion_push::build_fcm(name, c, secrets)?),
        ChannelConfig::Apns(c) => Arc::new(clarion_push::build_apns(name, c, secrets)?),
    })
}

/// Resolves `{ env = … }` from the process environment and `{ file = … }` from disk.
#[derive(Debug, Default)]
pub struct EnvSecrets;

impl SecretResolver for EnvSecrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        match reference {
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
                Ok(_) => Err(format!("environment variable {var} is empty")),
                Err(_) => Err(format!("environment variable {var} is not set")),
            },
            SecretRef::File(path) => {
                let p = PathBuf::from(path);
                match std::fs::read_to_string(&p) {
                    Ok(v) if !v.trim().is_empty() => {
                        Ok(Secret::new(v.trim_end_matches(['\n', '\r'])))
                    }
                    Ok(_) => Err(format!("secret file {path} is empty")),
                    Err(e) => Err(format!("cannot read secret file {path}: {e}")),
                }
            }
            SecretRef::Value(s) => Ok(s.clone()),
        }
    }
}

/// Default for `health.max_unresolved_age`.
pub const DEFAULT_MAX_UNRESOLVED_AGE: Duration = Duration::from_secs(15 * 60);

/// How a target's breaker behaves (`[targets.NAME.breaker]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive target-level failures that open the breaker.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Wait before the first probe once open; doubles after each failed probe.
    #[serde(default = "default_probe", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// The longest wait between two probes.
    #[serde(default = "default_max_probe", with = "humantime_serde")]
    pub max_probe_interval: Duration,
    /// How long an outage may last before the deliveries waiting for the target are
    /// dead-lettered ("target down since T"). Probes go on after it.
    #[serde(default = "default_outage_budget", with = "humantime_serde")]
    pub outage_budget: Duration,
}

fn default_failures() -> u32 {
    5
}
fn default_probe() -> Duration {
    Duration::from_secs(5)
}
fn default_max_probe() -> Duration {
    // Gentle on a peer that is down, yet a target that comes back is found within
    // half a minute.
    Duration::from_secs(30)
}
fn default_outage_budget() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: default_failures(),
            probe_interval: default_probe(),
            max_probe_interval: default_max_probe(),
            outage_budget: default_outage_budget(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
topic = "incident-updates"
dead_letter_topic = "clarion-dlq"

[targets.StatusPage]
type = "webhook"
audiences = ["customers"]
url = "http://127.0.0.1:1/hook"
secrets = [{ value = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD" }]
"#;

    fn check(toml: &str, expected: &str) {
        let got = parse_str(toml)
            .and_then(|raw| raw.validate("test.toml", &EnvSecrets))
            .map(|s| format!("ok: {} target(s)", s.targets.len()))
            .unwrap_or_else(|e| format!("{e:#}"));
        assert_eq!(got, expected);
    }

    const SMS_WITH_BACKUP: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
topic = "incident-updates"
dead_letter_topic = "clarion-dlq"

[targets.sms]
type = "sms"
audiences = ["customers"]
provider = "twilio"
provider_name = "twilio-main"
account_sid = "AC123"
auth_token = { value = "tok" }
from = "+15005550006"
recipients = { customers = ["+447700900101"] }
failover_after = "10s"

[[targets.sms.backups]]
name = "smsc"
provider = "smpp"
address = "127.0.0.1:2775"
system_id = "clarion"
password = { env = "CLARION_TEST_UNSET_SMPP_PASSWORD" }
source_addr = "ACME"
"#;

    /// A people target with three legs, and a directory file written for it.
    fn people_config(extra: &str) -> (String, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "clarion-people-config-{}-{}",
            std::process::id(),
            PEOPLE_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("people.csv"),
            "id,audiences,push,sms,email\n\
             p1,customers,tok-1,+15005550001,p1@example.com\n\
             p2,customers;business,,+15005550002,\n\
             p3,business,,,p3@example.com\n",
        )
        .expect("csv");
        let toml = format!(
            r#"
[kafka]
brokers = "127.0.0.1:9092"
topic = "incident-updates"
dead_letter_topic = "clarion-dlq"

[directory]
file = "people.csv"
progress_topic = "clarion-people-progress"

[targets.reach]
type = "people"
audiences = ["customers"]
fallback = ["push", "sms", "email"]
retry = {{ max_attempts = 3 }}
{extra}

[targets.reach.push]
type = "apns"
team_id = "TEAM123456"
key_id = "KEY1234567"
signing_key = {{ file = "{key}" }}
topic = "com.example.status"

[targets.reach.sms]
provider = "twilio"
account_sid = "AC123"
auth_token = {{ value = "tok" }}
from = "+15005550006"

[targets.reach.email]
host = "127.0.0.1"
port = 2525
tls = "none"
from = "status@example.com"
"#,
            key = dir.join("apns.p8").display(),
        );
        let pem = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .output()
            .expect("the tests need the `openssl` command (Debian package openssl)");
        std::fs::write(dir.join("apns.p8"), pem.stdout).expect("key");
        (toml, dir.join("clarion.toml"))
    }

    static PEOPLE_DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn check_people(toml: &str, path: &std::path::Path) -> String {
        parse_str(toml)
            .and_then(|raw| raw.validate(&path.display().to_string(), &EnvSecrets))
            .map(|s| {
                let t = &s.targets[0];
                let p = t.people.as_ref().expect("a people target");
                let legs: Vec<String> = p
                    .legs
                    .iter()
                    .map(|l| format!("{}={}", l.target.name, l.target.kind.as_str()))
                    .collect();
                let d = s.directory.as_ref().expect("directory");
                format!(
                    "ok: {} {} [{}] {} people, {} customers",
                    t.name,
                    t.kind.as_str(),
                    legs.join(" "),
                    d.people.as_ref().map_or(0, |p| p.len()),
                    d.people.as_ref().map_or(0, |p| p.members("customers")),
                )
            })
            .unwrap_or_else(|e| format!("{e:#}"))
    }

    #[test]
    fn a_people_target_builds_its_legs_as_channels_without_recipients_of_their_own() {
        let (toml, path) = people_config("");
        let got = check_people(&toml, &path);
        assert_eq!(
            got,
            "ok: reach people [reach.push=apns reach.sms=sms reach.email=email] 3 people, 2 customers"
        );
        let raw = parse_str(&toml).expect("parses");
        let s = raw
            .validate(&path.display().to_string(), &EnvSecrets)
            .expect("valid");
        let legs = &s.targets[0].people.as_ref().expect("people").legs;
        // Each leg inherits the people target's retry policy.
        assert!(legs.iter().all(|l| l.target.retry.max_attempts == 3));
        assert!(
            legs.iter()
                .all(|l| l.target.audiences == BTreeSet::from(["customers".to_string()]))
        );
    }

    #[test]
    fn people_targets_are_checked_for_their_audience_fallback_and_legs() {
        let (toml, path) = people_config("");
        let at = |t: &str| check_people(t, &path);
        let source = path.display().to_string();
        assert_eq!(
            at(&toml.replace(
                r#"audiences = ["customers"]"#,
                r#"audiences = ["customers", "business"]"#
            )),
            format!(
                "{source}: targets.reach: audiences: a people target addresses the members of one audience, not 2; use one people target per audience"
            )
        );
        assert_eq!(
            at(&toml.replace(
                r#"fallback = ["push", "sms", "email"]"#,
                r#"fallback = ["push", "fax"]"#
            )),
            format!(
                "{source}: targets.reach: fallback: `fax` is not an address kind (expected `push`, `sms` or `email`)"
            )
        );
        assert_eq!(
            at(&toml.replace(
                r#"fallback = ["push", "sms", "email"]"#,
                r#"fallback = ["push", "sms"]"#
            )),
            format!(
                "{source}: targets.reach: email: a leg that `fallback` does not list would never be used; add it to fallback or remove it"
            )
        );
        assert_eq!(
            at(&toml.replace(
                "[targets.reach.sms]",
                "[targets.reach.sms]\nrecipients = { customers = [\"+15005550009\"] }"
            )),
            format!(
                "{source}: targets.reach: sms: target `reach.sms`: invalid `recipients`: a people target's channel addresses the directory's members; static recipients belong to an ordinary target"
            )
        );
        assert_eq!(
            at(&toml.replace("type = \"apns\"", "type = \"sms\"")),
            format!(
                "{source}: targets.reach: push.type: `sms` cannot carry push addresses (one of: apns, fcm)"
            )
        );
        assert_eq!(
            at(&toml.replace(
                "[targets.reach.push]",
                "[targets.reach.push]\nsupersede = true"
            )),
            format!(
                "{source}: targets.reach: push.supersede: belongs to the people target, not to one of its legs"
            )
        );
        let (supersede, _) = people_config("supersede = true");
        assert_eq!(
            at(&supersede),
            format!(
                "{source}: targets.reach: supersede: a people target walks every member for every update; skipping updates would leave people with an older one"
            )
        );
        assert_eq!(
            at(&toml.replace("[directory]\nfile = \"people.csv\"\nprogress_topic = \"clarion-people-progress\"\n", "")),
            format!("{source}: targets.reach: a people target needs a `[directory]` to take its people from")
        );
        assert_eq!(
            at(&toml.replace("progress_topic = \"clarion-people-progress\"\n", "")),
            format!(
                "{source}: directory.progress_topic: missing (a compacted topic where each walk's progress is kept, so that a restart does not send to everyone again)"
            )
        );
        assert_eq!(
            at(&toml.replace(
                "file = \"people.csv\"",
                "file = \"people.csv\"\ntopic = \"clarion-directory\""
            )),
            format!(
                "{source}: directory: set `file` or `topic`, not both (the topic is the address book that can change without a restart)"
            )
        );
        // A broken row in the file is reported with its line.
        std::fs::write(
            path.parent().expect("dir").join("people.csv"),
            "id,audiences,sms\np1,customers,+15005550001\np2,partners,+15005550002\n",
        )
        .expect("csv");
        let got = at(&toml);
        assert!(
            got.contains("directory.file:")
                && got.contains("people.csv:3")
                && got.contains("partners"),
            "{got}"
        );
    }

    #[test]
    fn backups_take_the_targets_recipients_and_report_their_missing_secrets_at_their_key() {
        let raw = parse_str(SMS_WITH_BACKUP).expect("parses");
        let s = raw.validate_for_preview("test.toml").expect("valid keys");
        let t = &s.targets[0];
        assert_eq!(&*t.provider_name, "twilio-main");
        assert_eq!(t.failover_after, Duration::from_secs(10));
        assert_eq!(t.backups.len(), 1);
        let ChannelConfig::Sms(clarion_sms::SmsConfig::Smpp(backup)) = &t.backups[0].channel else {
            panic!("an SMPP backup: {:?}", t.backups[0]);
        };
        assert_eq!(
            backup.recipients["customers"],
            vec!["+447700900101".to_string()]
        );
        check(
            SMS_WITH_BACKUP,
            "test.toml: targets.sms: backups[0].password: environment variable CLARION_TEST_UNSET_SMPP_PASSWORD is not set",
        );
    }

    #[test]
    fn backups_are_checked_for_names_and_keys_that_belong_to_the_target() {
        let with = |from: &str, to: &str| SMS_WITH_BACKUP.replace(from, to);
        check(
            &with("name = \"smsc\"", "name = \"twilio-main\""),
            "test.toml: targets.sms: backups[0].name: `twilio-main` is used twice in this target (`provider_name` is `twilio-main`)",
        );
        check(
            &with("name = \"smsc\"\n", ""),
            "test.toml: targets.sms: backups[0].name: missing (the name the provider goes by in logs, dead letters and the ledger)",
        );
        check(
            &with(
                "name = \"smsc\"",
                "name = \"smsc\"\nretry = { max_attempts = 2 }",
            ),
            "test.toml: targets.sms: backups[0].retry: belongs to the target, not to one of its providers",
        );
        let unknown = format!(
            "{:#}",
            parse_str(&with(
                "system_id = \"clarion\"",
                "system_id = \"clarion\"\naccount_sid = \"AC1\""
            ))
            .and_then(|r| r.validate_for_preview("test.toml"))
            .expect_err("an SMPP backup has no account_sid")
        );
        assert!(
            unknown.starts_with(
                "test.toml: targets.sms: backups[0] (`smsc`): unknown field `account_sid`"
            ),
            "{unknown}"
        );
        let no_backups = &SMS_WITH_BACKUP[..SMS_WITH_BACKUP.find("[[targets").expect("backups")];
        check(
            no_backups,
            "test.toml: targets.sms: failover_after: only means something with `backups` (providers to fail over to)",
        );
    }

    #[test]
    fn minimal_config_is_valid_and_keeps_case() {
        let s = parse_str(MINIMAL)
            .and_then(|r| r.validate("test.toml", &EnvSecrets))
            .expect("valid");
        assert_eq!(&*s.targets[0].name, "StatusPage");
        assert_eq!(s.targets[0].retry, RetryPolicy::default());
    }

    #[test]
    fn errors_name_the_key() {
        check(
            &MINIMAL.replace("brokers", "brokerz"),
            "unknown field `brokerz`, expected one of `brokers`, `topic`, `group_id`, `instance_id`, `dead_letter_topic`, `dead_recipient_topic`, `ledger_topic`, `incident_state_topic`, `properties`, `secret_properties`, `consumer`, `producer` for key `kafka`",
        );
        check(
            &MINIMAL.replace("url =", "uri ="),
            "test.toml: targets.StatusPage: unknown field `uri`, expected one of `url`, `secrets`, `headers`, `timeout`",
        );
        check(
            &MINIMAL.replace("\"customers\"", "\"customer\""),
            "test.toml: targets.StatusPage: audiences: `customer` is not a standard audience nor listed in the top-level `audiences`",
        );
        check(
            &MINIMAL.replace("type = \"webhook\"", "type = \"pigeon\""),
            "test.toml: targets.StatusPage: unknown variant `pigeon`, expected one of `webhook`, `email`, `sms`, `fcm`, `apns`, `people`",
        );
        check(
            &MINIMAL.replace(
                "{ value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }",
                "{ env = \"CLARION_TEST_SURELY_UNSET\" }",
            ),
            "test.toml: targets.StatusPage: secrets[0]: environment variable CLARION_TEST_SURELY_UNSET is not set",
        );
        check(
            &format!("{MINIMAL}\n[targets.StatusPage.retry]\nmax_attempts = 0\n"),
            "test.toml: targets.StatusPage: retry.max_attempts: must be at least 1",
        );
    }

    const GATEWAY: &str = r#"
[targets.noc-sms]
type = "sms"
audiences = ["employees"]
provider = "http"
url = "https://sms.example.com/send"
recipients = { employees = ["+12025550123"] }
"#;

    #[test]
    fn the_gateway_status_list_is_retry_statuses_and_never_the_retry_policy() {
        // Before the rename, `retry = [429]` was read as the retry policy written as a
        // sequence: max_attempts = 429, and the gateway kept its default statuses.
        check(
            &format!("{MINIMAL}{GATEWAY}retry = [429]\n"),
            "test.toml: targets.noc-sms: retry: is this target's retry policy, a table \
             (max_attempts, max_elapsed, initial_backoff, max_backoff, attempt_timeout); \
             the HTTP gateway's statuses to retry are `retry_statuses`, e.g. retry_statuses = [429, 503]",
        );
        // Any other target: the key is named, and a sequence is never a policy.
        check(
            &format!("{MINIMAL}retry = [429]\n"),
            "test.toml: targets.StatusPage: retry: must be a table \
             (max_attempts, max_elapsed, initial_backoff, max_backoff, attempt_timeout), not [429]",
        );
        check(
            &format!("retry = [429]\n{MINIMAL}"),
            "invalid type: sequence, expected a table of retry policy keys \
             (max_attempts, max_elapsed, initial_backoff, max_backoff, attempt_timeout) for key `retry`",
        );
        let s = parse_str(&format!("{MINIMAL}{GATEWAY}retry_statuses = [429, 503]\n"))
            .and_then(|r| r.validate("test.toml", &EnvSecrets))
            .expect("valid");
        let Some(ChannelConfig::Sms(clarion_sms::SmsConfig::Http(gw))) = s
            .targets
            .iter()
            .find(|t| &*t.name == "noc-sms")
            .map(|t| &t.channel)
        else {
            panic!("noc-sms is an HTTP gateway: {s:?}");
        };
        assert_eq!(
            gw.retry_statuses,
            [
                clarion_sms::StatusSpec::Code(429),
                clarion_sms::StatusSpec::Code(503)
            ]
        );
        assert_eq!(s.targets[0].retry.max_attempts, 10);
    }

    #[test]
    fn zero_limits_are_refused() {
        for (key, value) in [
            ("max_elapsed", "\"0s\""),
            ("attempt_timeout", "\"0s\""),
            ("max_attempts", "0"),
        ] {
            let expected = if key == "max_attempts" {
                "must be at least 1"
            } else {
                "must be more than zero"
            };
            check(
                &format!("[retry]\n{key} = {value}\n{MINIMAL}"),
                &format!("test.toml: retry.{key}: {expected}"),
            );
            check(
                &format!("{MINIMAL}[targets.StatusPage.retry]\n{key} = {value}\n"),
                &format!("test.toml: targets.StatusPage: retry.{key}: {expected}"),
            );
        }
    }

    #[test]
    fn the_dead_letter_guarantees_cannot_be_overridden() {
        for (section, key, value) in [
            ("producer", "acks", "1"),
            ("producer", "request.required.acks", "1"),
            ("producer", "enable.idempotence", "false"),
            ("properties", "acks", "0"),
            ("properties", "enable.idempotence", "false"),
        ] {
            let toml = MINIMAL.replace(
                "[targets.StatusPage]",
                &format!("[kafka.{section}]\n\"{key}\" = \"{value}\"\n\n[targets.StatusPage]"),
            );
            check(
                &toml,
                &format!(
                    "test.toml: kafka.{section}.{key}: Clarion sets this itself \
                     (acks=all and enable.idempotence=true: a dead letter counts only once \
                     every in-sync replica has it, exactly once); remove it"
                ),
            );
        }
    }

    #[test]
    fn every_missing_secret_is_reported_at_once() {
        let toml = format!(
            "{}{GATEWAY}key = {{ env = \"CLARION_TEST_UNSET_GW\" }}\n\
             [kafka.secret_properties]\n\"sasl.password\" = {{ env = \"CLARION_TEST_UNSET_SASL\" }}\n",
            MINIMAL.replace(
                "secrets = [{ value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }]",
                "secrets = [{ env = \"CLARION_TEST_UNSET_A\" }, { value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }, { file = \"/nonexistent/b.whsec\" }]",
            )
        );
        check(
            &toml,
            "test.toml: 4 problems:\n  \
             - kafka.secret_properties.sasl.password: environment variable CLARION_TEST_UNSET_SASL is not set\n  \
             - targets.StatusPage: secrets[0]: environment variable CLARION_TEST_UNSET_A is not set\n  \
             - targets.StatusPage: secrets[2]: cannot read secret file /nonexistent/b.whsec: No such file or directory (os error 2)\n  \
             - targets.noc-sms: key: environment variable CLARION_TEST_UNSET_GW is not set",
        );
        // A preview resolves none of them and builds no channel.
        let s = parse_str(&toml)
            .and_then(|raw| raw.validate_for_preview("test.toml"))
            .expect("a preview needs no secrets");
        assert_eq!(s.targets.len(), 2);
    }

    #[test]
    fn audiences_as_a_table_declare_audiences_and_their_deadlines() {
        let toml = MINIMAL.replace(
            "[targets.StatusPage]",
            "[audiences.regulators]\nfirst_notice_within = \"120m\"\n\n\
             [audiences.regulators.deadlines]\nresolved = \"30m\"\n\n\
             [audiences.partners]\n\n[targets.StatusPage]",
        );
        let settings = parse_str(&toml)
            .and_then(|raw| raw.validate("test.toml", &EnvSecrets))
            .expect("valid");
        assert!(settings.audiences.contains("partners"));
        let regs = &settings.deadlines["regulators"];
        assert_eq!(regs.first_notice_within, Some(Duration::from_secs(7200)));
        assert_eq!(
            regs.by_status.get(&clarion_core::Status::Resolved),
            Some(&Duration::from_secs(1800))
        );
        assert_eq!(regs.warn_at, DEFAULT_WARN_AT);
        assert!(
            !settings.deadlines.contains_key("partners"),
            "no deadline, no clock"
        );
        // A typo in a deadline key is named, not "did not match any variant".
        let typo = toml.replace("first_notice_within", "first_notice_in");
        let err = parse_str(&typo).map(|_| ()).expect_err("refused");
        assert!(
            format!("{err:#}").contains("unknown field `first_notice_in`"),
            "{err:#}"
        );
        check(
            &toml.replace(
                "[audiences.partners]",
                "[audiences.partners]\nwarn_at = 1.5",
            ),
            "test.toml: audiences.partners.warn_at: must be between 0 and 1 (e.g. 0.8), not 1.5",
        );
    }
}
