//! The consumer loop: read updates in order, admit them within the in-flight bound,
//! hand them to the dispatcher, and store each partition's offset only behind
//! resolved work. Also rebalances and graceful shutdown.
//!
//! This module and `dlq` are the only places that talk to Kafka.

use crate::config::{EnvSecrets, KafkaConfig, Settings, build_channel};
use crate::dispatch::{DeliveryReport, Dispatcher, Outputs, Resolution, Target};
use crate::dlq::{DeadLetterWriter, DlqKind, Source, copy_headers};
use crate::offsets::{Tp, Tracker};
use crate::telemetry::{self, EventRejected};
use anyhow::{Context as _, Result, anyhow};
use clarion_core::{IncidentUpdate, SecretResolver};
use futures::FutureExt as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Consumer callbacks: rebalances drain revoked partitions before handing them over.
struct Ctx {
    tracker: Arc<Tracker>,
    drain: Duration,
    stopping: AtomicBool,
}

impl ClientContext for Ctx {}

fn tps(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

fn fmt_tps(tps: &[Tp]) -> String {
    tps.iter()
        .map(|(t, p)| format!("{t}/{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = tps(tpl);
        if revoked.is_empty() {
            return;
        }
        let stopping = self.stopping.load(Ordering::SeqCst);
        let timeout = if stopping { Duration::ZERO } else { self.drain };
        tracing::info!(
            partitions = %fmt_tps(&revoked),
            drain_ms = timeout.as_millis() as u64,
            "partitions revoked; draining their in-flight updates"
        );
        // Waiting here is the point: the partitions must not move while their work is
        // unfinished. Drain, then commit what the drain resolved, synchronously, while these
        // partitions are still ours: left to auto-commit, the commit can race the next
        // owner's offset fetch, and that owner would redeliver what was delivered.
        let drain_and_commit = || {
            let result = self.tracker.revoke(&revoked, timeout);
            if !result.commit.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for ((topic, partition), next) in &result.commit {
                    let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
                }
                if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                    tracing::warn!(error = %e, "commit of revoked partitions failed; their next owner may redeliver some updates");
                }
            }
            result
        };
        // The callback runs inside `recv()` on a runtime worker; both the wait and the
        // commit block, so tell tokio to move other tasks off this thread first.
        let result = match tokio::runtime::Handle::try_current() {
            Ok(h)
                if !stopping
                    && h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(drain_and_commit)
            }
            _ => drain_and_commit(),
        };
        for ((topic, partition), offsets) in result.abandoned {
            if !stopping {
                tracing::warn!(
                    topic,
                    partition,
                    unresolved = offsets.len(),
                    from_offset = offsets.first().copied().unwrap_or_default(),
                    "partition handed over with updates still in flight; its next owner redelivers them"
                );
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = tps(tpl);
                self.tracker.assign(&assigned);
                if !assigned.is_empty() {
                    tracing::info!(partitions = %fmt_tps(&assigned), "partitions assigned");
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
        }
    }
}

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

/// The consumer configuration: at-least-once with offsets stored by us.
pub fn consumer_config(kafka: &KafkaConfig, secrets: &dyn SecretResolver) -> Result<ClientConfig> {
    // Validation already refused overrides of OWNED_KAFKA_PROPERTIES, and they are
    // set after the pass-through ones anyway.
    let mut c = base_client(kafka, secrets)?;
    c.set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky");
    for (k, v) in &kafka.consumer {
        c.set(k, v);
    }
    c.set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false");
    Ok(c)
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

/// After the grace period, how long cancelled deliveries get to return.
const ABORT_WAIT: Duration = Duration::from_secs(5);
/// How long the final commit, the producer flush and leaving the group may take
/// together.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// What a run did, for the last log line.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub consumed: u64,
    pub abandoned: usize,
}

/// Runs the daemon until `shutdown` is cancelled, then drains and commits.
/// `observer` receives a report per finished delivery (the demo and the benchmark
/// use it; the daemon proper passes `None`).
pub async fn run(
    settings: Settings,
    shutdown: CancellationToken,
    observer: Option<mpsc::Sender<DeliveryReport>>,
) -> Result<Summary> {
    run_with_secrets(settings, &EnvSecrets, shutdown, observer).await
}

pub async fn run_with_secrets(
    settings: Settings,
    secrets: &dyn SecretResolver,
    shutdown: CancellationToken,
    observer: Option<mpsc::Sender<DeliveryReport>>,
) -> Result<Summary> {
    let tracker = Arc::new(Tracker::new());
    let ctx = Ctx {
        tracker: tracker.clone(),
        drain: settings.daemon.rebalance_drain,
        stopping: AtomicBool::new(false),
    };
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        consumer_config(&settings.kafka, secrets)?
            .create_with_context(ctx)
            .context("cannot create the Kafka consumer")?,
    );
    let producer: FutureProducer = producer_config(&settings.kafka, secrets)?
        .create()
        .context("cannot create the dead-letter producer")?;
    let mut targets = Vec::new();
    for t in &settings.targets {
        let channel = build_channel(t, secrets).with_context(|| format!("targets.{}", t.name))?;
        targets.push(Target::new(t.clone(), channel));
    }
    let abort = CancellationToken::new();
    let dispatcher = Arc::new(Dispatcher::new(
        targets,
        settings.audiences.clone(),
        settings.templates.clone(),
        Outputs {
            dlq: DeadLetterWriter::new(producer.clone(), settings.kafka.dead_letter_topic.clone())
                .with_max_record_bytes(
                    settings
                        .kafka
                        .producer
                        .get("message.max.bytes")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(crate::dlq::DEFAULT_MAX_RECORD_BYTES),
                ),
            dead_recipient_topic: settings.kafka.dead_recipient_topic.clone(),
            observer,
        },
        abort.clone(),
    ));
    check_topics(&consumer, &settings.kafka).await?;
    consumer
        .subscribe(&[&settings.kafka.topic])
        .with_context(|| format!("cannot subscribe to {}", settings.kafka.topic))?;
    tracing::info!(
        topic = %settings.kafka.topic,
        group = %settings.kafka.group_id,
        dead_letter_topic = %settings.kafka.dead_letter_topic,
        targets = dispatcher.targets().len(),
        "clarion started"
    );

    let capacity = Arc::new(Semaphore::new(settings.daemon.max_in_flight));
    let tasks = TaskTracker::new();
    let mut summary = Summary::default();
    let mut paused = false;
    let max_bytes = settings.daemon.max_event_bytes;
    let mut restore = tokio::time::interval(Duration::from_secs(1));
    restore.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let permit = capacity.clone().try_acquire_owned().ok();
        if permit.is_some() && paused {
            // Only a resume that worked ends the pause: otherwise the next turn of
            // the loop tries again.
            paused = !set_paused(&consumer, false);
        } else if permit.is_none() && !paused {
            // Full: stop fetching but keep polling, so rebalances are served and the
            // group does not evict us (max.poll.interval.ms).
            tracing::warn!(
                max_in_flight = settings.daemon.max_in_flight,
                "at the in-flight limit; pausing consumption until deliveries finish"
            );
            // A pause that failed is tried again on the next turn; meanwhile a
            // record that arrives without a permit is admitted over the bound and
            // pauses again (below), so the overshoot stays at a few records.
            paused = set_paused(&consumer, true);
        }
        let msg = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = restore.tick() => {
                // Store again what was released: a store can fail transiently (and
                // is only logged where it happens), and the commit must not stay
                // behind finished work because of it.
                for ((topic, partition), next) in tracker.released() {
                    store(&consumer, &topic, partition, next);
                }
                continue;
            }
            _ = capacity.acquire(), if permit.is_none() => continue,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                kafka_error(&e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if permit.is_none() {
            // A record while paused comes from a partition assigned since the pause
            // (assignments start unpaused): admit it, and pause that one too.
            set_paused(&consumer, true);
        }
        summary.consumed += 1;
        telemetry::consumed();
        let source = Arc::new(Source {
            topic: msg.topic().to_string(),
            partition: msg.partition(),
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers: copy_headers(msg.headers()),
        });
        let tombstone = msg.payload().is_none();
        drop(msg);
        let ticket = tracker.admit(&source.topic, source.partition, source.offset);
        telemetry::in_flight(tracker.in_flight());
        let work = match parse(&source, tombstone, max_bytes) {
            Err(reason) => Err((DlqKind::MalformedEvent, reason)),
            Ok(update) => {
                let update = Arc::new(update);
                dispatcher
                    .plan(&update)
                    .map_err(|reason| (DlqKind::UnknownAudience, reason))
                    .map(|plans| (update, plans))
            }
        };
        let dispatcher = dispatcher.clone();
        let consumer = consumer.clone();
        let tracker = tracker.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let handle = async {
                match work {
                    Err((kind, reason)) => {
                        EventRejected {
                            topic: &source.topic,
                            partition: source.partition,
                            offset: source.offset,
                            reason: &reason,
                            kind: kind.as_str(),
                        }
                        .emit();
                        dispatcher.reject(&source, kind, reason).await
                    }
                    Ok((update, plans)) => {
                        if plans.is_empty() {
                            tracing::warn!(
                                incident_id = %update.incident_id,
                                update_id = %update.update_id,
                                audiences = ?update.audiences,
                                "no target serves this update's audiences; nothing to deliver"
                            );
                        }
                        let runs = plans.into_iter().map(|p| dispatcher.run(p, &source));
                        let results = futures::future::join_all(runs).await;
                        if results.iter().all(|r| *r == Resolution::Resolved) {
                            Resolution::Resolved
                        } else {
                            Resolution::Abandoned
                        }
                    }
                }
            };
            // A panic here is a bug in the daemon itself (channel panics are caught
            // per delivery). Left alone, it would leave the update unresolved and
            // freeze its partition's commit point until a restart, which would replay
            // it into the same panic. It is contained instead: the update goes to
            // the dead-letter topic with the panic message.
            let resolution = match std::panic::AssertUnwindSafe(handle).catch_unwind().await {
                Ok(r) => r,
                Err(panic) => {
                    let message = crate::dispatch::panic_message(&*panic);
                    crate::telemetry::DeliveryPanicked {
                        target: "-",
                        message: &message,
                    }
                    .emit();
                    let reason =
                        format!("the daemon panicked while handling this update: {message}");
                    dispatcher
                        .reject(&source, DlqKind::InternalError, reason)
                        .await
                }
            };
            if resolution == Resolution::Resolved {
                if let Some(next) = tracker.complete(&ticket) {
                    store(&consumer, &source.topic, source.partition, next);
                }
            }
            telemetry::in_flight(tracker.in_flight());
        });
    }

    // Shutdown: stop taking work, give in-flight deliveries the grace period, then
    // abandon what is left (its offsets stay uncommitted, so it is redelivered).
    let in_flight = tracker.in_flight();
    tracing::info!(
        in_flight,
        grace_ms = settings.daemon.shutdown_grace.as_millis() as u64,
        "shutting down: consumption stopped, finishing in-flight deliveries"
    );
    tasks.close();
    if tokio::time::timeout(settings.daemon.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        summary.abandoned = tracker.in_flight();
        tracing::warn!(
            abandoned = summary.abandoned,
            "grace period over; abandoning the updates still in flight (they will be redelivered)"
        );
        abort.cancel();
        // Cancelled work returns at its next await point; a channel stuck in a
        // blocking call cannot, and is left behind.
        let _ = tokio::time::timeout(ABORT_WAIT, tasks.wait()).await;
    }
    consumer.context().stopping.store(true, Ordering::SeqCst);
    drop(dispatcher);
    // Commit, flush and leave the group off the runtime: each can block for as long
    // as librdkafka's own timeouts when the brokers are gone. The whole step is
    // bounded, so a stop always fits in a service manager's stop timeout (the shipped
    // unit's TimeoutStopSec=60 > shutdown_grace 30 s + ABORT_WAIT + CLOSE_WAIT). If
    // it runs out, what was resolved since the last auto-commit is redelivered.
    let close = tokio::task::spawn_blocking(move || {
        let commit = consumer.commit_consumer_state(CommitMode::Sync);
        let _ = producer_flush(&producer);
        // Dropping the consumer closes it (leaves the group) on this blocking thread.
        drop(consumer);
        commit
    });
    match tokio::time::timeout(CLOSE_WAIT, close).await {
        Ok(Ok(Ok(()))) => tracing::info!("offsets of resolved updates committed"),
        Ok(Ok(Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)))) => {
            tracing::info!("no new offsets to commit")
        }
        Ok(Ok(Err(e))) => {
            tracing::error!(error = %e, "final offset commit failed; resolved updates since the last commit will be redelivered")
        }
        Ok(Err(e)) => tracing::error!(error = %e, "closing the Kafka clients failed"),
        Err(_) => tracing::error!(
            waited_s = CLOSE_WAIT.as_secs(),
            "the brokers did not answer the final commit and leave in time; stopping anyway (updates resolved since the last commit will be redelivered)"
        ),
    }
    tracing::info!(
        consumed = summary.consumed,
        abandoned = summary.abandoned,
        "clarion stopped"
    );
    Ok(summary)
}

fn producer_flush(p: &FutureProducer) -> rdkafka::error::KafkaResult<()> {
    use rdkafka::producer::Producer;
    p.flush(rdkafka::util::Timeout::After(Duration::from_secs(5)))
}

fn store(consumer: &StreamConsumer<Ctx>, topic: &str, partition: i32, next: i64) {
    let mut tpl = TopicPartitionList::new();
    // `store_offsets` stores the offset as given (the next one to read); unlike
    // `store_offset`, which adds one.
    if tpl
        .add_partition_offset(topic, partition, Offset::Offset(next))
        .is_err()
    {
        return;
    }
    if let Err(e) = consumer.store_offsets(&tpl) {
        // Expected after a revoke: the partition's next owner redelivers.
        tracing::debug!(topic, partition, offset = next, error = %e, "offset not stored");
    }
}

/// Pauses or resumes every assigned partition; true when it worked.
fn set_paused(consumer: &StreamConsumer<Ctx>, pause: bool) -> bool {
    let assignment = match consumer.assignment() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the assignment to pause/resume it");
            return false;
        }
    };
    let r = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, pause, "pause/resume failed; trying again");
            false
        }
    }
}

fn kafka_error(e: &KafkaError) {
    // librdkafka recovers from broker restarts and network errors by itself; these
    // are reported so an operator can see them, not acted on.
    tracing::warn!(error = %e, "kafka consumer error");
}

/// Parses a record into an update, with a reason a person can act on when it is not
/// one. Also warns when the record's key is not the incident id.
fn parse(
    source: &Source,
    tombstone: bool,
    max_bytes: usize,
) -> std::result::Result<IncidentUpdate, String> {
    if tombstone {
        return Err("the record has no value (a tombstone); an incident update is a JSON object, and deleting an incident is not something Clarion can deliver".to_string());
    }
    if source.payload.is_empty() {
        return Err("the record's value is empty; an incident update is a JSON object".to_string());
    }
    let update =
        IncidentUpdate::from_slice(&source.payload, max_bytes).map_err(|e| e.to_string())?;
    if source.key.as_deref() != Some(update.incident_id.as_bytes()) {
        let key = source.key.as_deref().map(String::from_utf8_lossy);
        telemetry::KeyMismatch {
            topic: &source.topic,
            partition: source.partition,
            offset: source.offset,
            incident_id: &update.incident_id,
            key: key.as_deref(),
        }
        .emit();
    }
    Ok(update)
}

/// Checks the topics at start-up. The dead-letter and dead-recipient topics must
/// exist: a mistyped name would otherwise be found only when the first dead letter
/// cannot be written, in the middle of an incident, freezing its partition. The
/// source topic may be created later (the consumer picks it up), so a missing one is
/// a warning. Brokers that cannot be reached yet are a warning too: librdkafka keeps
/// trying, and nothing is consumed (so nothing needs a dead letter) until they answer.
async fn check_topics(consumer: &Arc<StreamConsumer<Ctx>>, kafka: &KafkaConfig) -> Result<()> {
    let c = consumer.clone();
    let mut topics = vec![kafka.topic.clone(), kafka.dead_letter_topic.clone()];
    topics.extend(kafka.dead_recipient_topic.clone());
    let r = tokio::task::spawn_blocking(move || {
        let mut missing = Vec::new();
        for t in topics {
            let md = c.fetch_metadata(Some(&t), Duration::from_secs(10))?;
            if md
                .topics()
                .iter()
                .any(|mt| mt.error().is_some() || mt.partitions().is_empty())
            {
                missing.push(t);
            }
        }
        Ok::<_, KafkaError>(missing)
    })
    .await;
    match r {
        Ok(Ok(missing)) => {
            let required: Vec<&String> = missing.iter().filter(|t| **t != kafka.topic).collect();
            if !required.is_empty() {
                return Err(anyhow!(
                    "topic(s) {} not found on the brokers: create them (or fix kafka.dead_letter_topic / kafka.dead_recipient_topic) before starting, or failed deliveries would have nowhere to go",
                    required
                        .iter()
                        .map(|t| format!("`{t}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if !missing.is_empty() {
                tracing::warn!(
                    topic = %kafka.topic,
                    "the source topic does not exist yet; consumption starts when it is created"
                );
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, brokers = %kafka.brokers, "cannot reach the Kafka brokers yet; will keep trying")
        }
        Err(e) => tracing::warn!(error = %e, "topic check did not run"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(key: Option<&[u8]>, payload: &[u8]) -> Source {
        Source {
            topic: "t".into(),
            partition: 0,
            offset: 7,
            timestamp_ms: None,
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
            headers: Vec::new(),
        }
    }

    /// A log sink the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with logs captured; returns what was logged.
    fn logs_of(f: impl FnOnce()) -> String {
        let sink = Captured::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn a_key_that_is_not_the_incident_id_is_delivered_but_warned_about() {
        let update =
            clarion_core::samples::lifecycle("INC-7", "u", &["customers"], jiff::Timestamp::now())
                .remove(0);
        let body = serde_json::to_vec(&update).expect("json");
        let log = logs_of(|| {
            assert!(parse(&source(Some(b"INC-7"), &body), false, 1 << 20).is_ok());
        });
        assert!(!log.contains("key is not the incident id"), "{log}");
        for key in [Some(&b"other"[..]), None] {
            let log = logs_of(|| {
                assert!(parse(&source(key, &body), false, 1 << 20).is_ok());
            });
            assert!(log.contains("WARN"), "{log}");
            assert!(log.contains("record key is not the incident id"), "{log}");
            assert!(log.contains("INC-7"), "{log}");
        }
    }

    #[test]
    fn tombstones_and_empty_values_get_their_own_reason() {
        let tomb = parse(&source(Some(b"k"), b""), true, 1024).expect_err("tombstone");
        assert!(tomb.contains("tombstone"), "{tomb}");
        assert!(!tomb.contains("EOF"), "{tomb}");
        let empty = parse(&source(Some(b"k"), b""), false, 1024).expect_err("empty");
        assert!(empty.contains("empty"), "{empty}");
    }
}
