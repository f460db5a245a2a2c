//! One delivery stream: a consumer group of its own, reading the source topic, with
//! its own admission window, offsets, lanes and retries. Consume → admit → deliver →
//! commit, and nothing else.
//!
//! There are two kinds ([`Role`]):
//! - the **events** stream (group `kafka.group_id`) looks at every record once for
//!   the whole deployment: it dead-letters malformed records and unknown audiences,
//!   and warns when no target takes an update;
//! - one **target** stream per target (group `<group_id>.<target>`) delivers to that
//!   target only, skipping what the events stream rejects.
//!
//! A target that is down therefore holds back only its own stream: its group's
//! committed offset stays behind (Kafka lag, visible with `kafka-consumer-groups
//! --describe`), while every other stream commits on. A stream never stores an
//! offset past an unresolved update, and never holds more than its window of
//! admitted, uncommitted updates.

use crate::config::KafkaConfig;
use crate::engine::dispatch::{Dispatcher, Resolution};
use crate::engine::offsets::{Tp, Tracker};
use crate::ops::telemetry::{self, EventRejected};
use crate::records::dlq::{DlqKind, Source, copy_headers};
use anyhow::{Context as _, Result};
use clarion_core::IncidentUpdate;
use futures::FutureExt as _;
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// After the grace period, how long cancelled deliveries get to return.
pub const ABORT_WAIT: Duration = Duration::from_secs(5);
/// How long a full window may wait for room before the stream pauses its
/// partitions (see the consumer loop).
const SHORT_STALL: Duration = Duration::from_secs(2);

/// How long the final commit and leaving the group may take.
pub const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// What a stream does with the records it reads.
#[derive(Debug)]
pub enum Role {
    /// Event-level outcomes, once per deployment. The dispatcher has no targets; it
    /// writes dead letters, the incident state and the ledger's `due` records.
    /// `routes` are every target's routing: for the "no target takes this update"
    /// warning and for what is due.
    Events {
        dispatcher: Arc<Dispatcher>,
        routes: Vec<crate::engine::dispatch::Route>,
    },
    /// Deliveries to one target: the dispatcher has exactly that target.
    Target { dispatcher: Arc<Dispatcher> },
}

impl Role {
    fn dispatcher(&self) -> &Arc<Dispatcher> {
        match self {
            Role::Events { dispatcher, .. } | Role::Target { dispatcher } => dispatcher,
        }
    }
}

/// A stream to run.
#[derive(Debug)]
pub struct Spec {
    /// `events`, or the target's name.
    pub name: String,
    pub group_id: String,
    /// Admitted and uncommitted updates at most (the stream's window).
    pub max_in_flight: usize,
    pub max_event_bytes: usize,
    pub rebalance_drain: Duration,
    pub shutdown_grace: Duration,
    pub role: Role,
    /// Parsed records, shared with the daemon's other streams.
    pub parses: Arc<Parses>,
}

/// Records parsed by one stream, for the others: every stream reads every record,
/// and parsing it once instead of once per stream is most of the CPU that
/// per-target streams would otherwise add. Keyed by where the record is (partition,
/// offset, timestamp), which does not change; bounded, oldest out first.
#[derive(Debug)]
pub struct Parses {
    inner: Mutex<ParsesInner>,
}

#[derive(Debug, Default)]
struct ParsesInner {
    map: HashMap<(i32, i64, Option<i64>), Parsed>,
    order: std::collections::VecDeque<(i32, i64, Option<i64>)>,
    capacity: usize,
}

/// A record's parse: the update, or why it is not one.
type Parsed = std::result::Result<Arc<IncidentUpdate>, String>;

impl Parses {
    pub fn new(capacity: usize) -> Self {
        Parses {
            inner: Mutex::new(ParsesInner {
                capacity: capacity.max(1),
                ..ParsesInner::default()
            }),
        }
    }

    fn get_or_parse(&self, source: &Source, tombstone: bool, max_bytes: usize) -> Parsed {
        let key = (source.partition, source.offset, source.timestamp_ms);
        if let Some(hit) = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .get(&key)
        {
            return hit.clone();
        }
        // Parsed outside the lock; two streams may both parse a record, which is
        // harmless.
        let parsed = parse(source, tombstone, max_bytes, false).map(Arc::new);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.map.insert(key, parsed.clone()).is_none() {
            inner.order.push_back(key);
            while inner.order.len() > inner.capacity {
                if let Some(old) = inner.order.pop_front() {
                    inner.map.remove(&old);
                }
            }
        }
        parsed
    }
}

/// What a stream did, for the last log line.
#[derive(Debug, Default, Clone)]
pub struct StreamSummary {
    pub consumed: u64,
    pub abandoned: usize,
    pub pauses: u64,
}

/// Consumer callbacks: rebalances drain revoked partitions before handing them over
/// and cancel what the drain could not finish; statistics become lag metrics.
#[derive(Debug)]
pub struct Ctx {
    stream: String,
    tracker: Arc<Tracker>,
    drain: Duration,
    stopping: AtomicBool,
    /// One token per owned partition: cancelled when the partition is handed over
    /// with work still running, so the old owner never delivers after the new one.
    cancels: Mutex<HashMap<Tp, CancellationToken>>,
    abort: CancellationToken,
}

impl Ctx {
    fn cancels(&self) -> std::sync::MutexGuard<'_, HashMap<Tp, CancellationToken>> {
        self.cancels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token of a partition's work (created on first use).
    fn cancel_for(&self, tp: &Tp) -> CancellationToken {
        self.cancels()
            .entry(tp.clone())
            .or_insert_with(|| self.abort.child_token())
            .clone()
    }
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut total = 0i64;
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a lag of -1
                // means not known yet.
                if *id < 0 || !p.desired || p.consumer_lag < 0 {
                    continue;
                }
                total += p.consumer_lag;
                metrics::gauge!(
                    "clarion_partition_lag_records",
                    "stream" => self.stream.clone(),
                    "topic" => topic.clone(),
                    "partition" => id.to_string()
                )
                .set(p.consumer_lag as f64);
            }
        }
        metrics::gauge!("clarion_stream_lag_records", "stream" => self.stream.clone())
            .set(total as f64);
        crate::ops::health::global().stats(&self.stream, &statistics);
    }

    // librdkafka's own errors and logs: with the brokers down it repeats the same
    // lines several times a second per client; health de-duplicates them into one
    // Clarion line per state change.
    fn error(&self, error: KafkaError, reason: &str) {
        crate::ops::health::global().kafka_error(&self.stream, &error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        crate::ops::health::global().kafka_log(&self.stream, level, fac, log_message);
    }
}

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
        metrics::counter!("clarion_rebalances_total", "stream" => self.stream.clone(), "kind" => "revoke").increment(1);
        crate::ops::health::global().revoked(&self.stream, &revoked);
        let stopping = self.stopping.load(Ordering::SeqCst);
        let timeout = if stopping { Duration::ZERO } else { self.drain };
        tracing::info!(
            stream = %self.stream,
            partitions = %fmt_tps(&revoked),
            drain_ms = timeout.as_millis() as u64,
            "partitions revoked; draining their in-flight updates"
        );
        // Waiting here is the point: the partitions must not move while their work is
        // unfinished. Drain, then commit what the drain resolved, synchronously, while
        // these partitions are still ours: left to auto-commit, the commit can race
        // the next owner's offset fetch, and that owner would redeliver it.
        let drain_and_commit = || {
            let result = self.tracker.revoke(&revoked, timeout);
            if !result.commit.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for ((topic, partition), next) in &result.commit {
                    let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
                }
                if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                    metrics::counter!("clarion_commit_failures_total", "stream" => self.stream.clone()).increment(1);
                    tracing::warn!(stream = %self.stream, error = %e, "commit of revoked partitions failed; their next owner may redeliver some updates");
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
        // Whatever is still running for these partitions stops now: the next owner
        // redelivers it, and must not be overtaken by an older copy.
        let mut cancels = self.cancels();
        for tp in &revoked {
            if let Some(token) = cancels.remove(tp) {
                token.cancel();
            }
        }
        drop(cancels);
        for ((topic, partition), offsets) in result.abandoned {
            if !stopping {
                tracing::warn!(
                    stream = %self.stream,
                    topic,
                    partition,
                    unresolved = offsets.len(),
                    from_offset = offsets.first().copied().unwrap_or_default(),
                    "partition handed over with updates still in flight; they were cancelled and its next owner redelivers them"
                );
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // librdkafka keeps a partition's pause across a revoke and a later
                // re-assignment to this consumer (librdkafka#1849): a partition revoked
                // while the stream was paused would come back paused for good. Start
                // every assignment unpaused; the loop pauses it again if it must.
                let _ = consumer.resume(tpl);
                let assigned = tps(tpl);
                self.tracker.assign(&assigned);
                crate::ops::health::global().assigned(&self.stream, &assigned);
                let mut cancels = self.cancels();
                for tp in &assigned {
                    if let Some(old) = cancels.insert(tp.clone(), self.abort.child_token()) {
                        old.cancel();
                    }
                }
                drop(cancels);
                if !assigned.is_empty() {
                    metrics::counter!("clarion_rebalances_total", "stream" => self.stream.clone(), "kind" => "assign").increment(1);
                    tracing::info!(stream = %self.stream, partitions = %fmt_tps(&assigned), "partitions assigned");
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => {
                tracing::error!(stream = %self.stream, error = %e, "rebalance failed")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(())
            | Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                metrics::counter!("clarion_commit_failures_total", "stream" => self.stream.clone())
                    .increment(1);
                tracing::warn!(stream = %self.stream, error = %e, "offset commit failed; it is retried with the next one");
            }
        }
    }
}

/// Runs a stream until `shutdown`, then drains within the grace period, abandons the
/// rest (not committed, so redelivered), commits and leaves its group.
pub async fn run(
    spec: Spec,
    config: ClientConfig,
    kafka: &KafkaConfig,
    shutdown: CancellationToken,
) -> Result<StreamSummary> {
    let tracker = Arc::new(Tracker::new());
    let abort = spec.role.dispatcher().abort().clone();
    let ctx = Ctx {
        stream: spec.name.clone(),
        tracker: tracker.clone(),
        drain: spec.rebalance_drain,
        stopping: AtomicBool::new(false),
        cancels: Mutex::default(),
        abort: abort.clone(),
    };
    let consumer: Arc<StreamConsumer<Ctx>> =
        Arc::new(config.create_with_context(ctx).with_context(|| {
            format!("stream `{}`: cannot create the Kafka consumer", spec.name)
        })?);
    consumer.subscribe(&[&kafka.topic]).with_context(|| {
        format!(
            "stream `{}`: cannot subscribe to {}",
            spec.name, kafka.topic
        )
    })?;
    let role = Arc::new(spec.role);
    let tasks = TaskTracker::new();
    let mut summary = StreamSummary::default();
    // Backpressure with hysteresis: stop fetching when the window is full, fetch
    // again only once a quarter of it is free, so that librdkafka's prefetch is not
    // thrown away and fetched again for every finished update.
    let high = spec.max_in_flight.max(1);
    let low = high - high.div_ceil(4);
    let mut paused = false;
    let mut restore = tokio::time::interval(Duration::from_secs(1));
    restore.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let breaker = match &*role {
        Role::Target { dispatcher } => dispatcher.targets().first().map(|t| t.breakers.clone()),
        Role::Events { .. } => None,
    };
    loop {
        let window = tracker.window();
        // A target that is down waits in Kafka: stop fetching while the breaker is
        // open, but let one update in when nothing is in flight, to be the probe.
        let target_down = breaker.as_ref().is_some_and(|b| b.is_open()) && window > 0;
        let full = window >= high || target_down;
        if full && !paused && !target_down {
            // Leave what librdkafka prefetched in its bounded queue and wait a
            // little for room without polling: pausing would throw the prefetch
            // away and fetch it again on resume, once per cycle. Only a stall that
            // lasts (a slow or down target) pauses, so that the consumer goes on
            // polling for rebalances and max.poll.interval.ms.
            let room = tracker.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if tracker.window() >= high {
                tokio::select! {
                    _ = &mut room => continue,
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(SHORT_STALL) => {}
                }
            } else {
                continue;
            }
        }
        if full && !paused {
            // Full: stop fetching but keep polling, so rebalances are served and the
            // group does not evict us (max.poll.interval.ms).
            paused = set_paused(&consumer, true);
            if paused {
                summary.pauses += 1;
                metrics::counter!("clarion_stream_pauses_total", "stream" => spec.name.clone())
                    .increment(1);
                tracing::debug!(stream = %spec.name, window, target_down, "pausing consumption");
            }
        } else if paused && window <= low && !target_down {
            // Only a resume that worked ends the pause: otherwise the next turn of
            // the loop tries again.
            paused = !set_paused(&consumer, false);
        }
        let msg = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = restore.tick() => {
                // Store again what was released: a store can fail transiently (and
                // is only logged where it happens), and the commit must not stay
                // behind finished work because of it.
                for ((topic, partition), next) in tracker.released() {
                    store(&consumer, &spec.name, &topic, partition, next);
                }
                publish_gauges(&spec.name, &tracker);
                continue;
            }
            _ = tracker.room.notified(), if paused => continue,
            _ = async { match &breaker { Some(b) => b.changed().await, None => std::future::pending().await } }, if paused => continue,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                crate::ops::health::global().consumer_error(&spec.name, &e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if paused {
            // A record while paused comes from a partition assigned since the pause
            // (assignments start unpaused): admit it, and pause that one too.
            set_paused(&consumer, true);
        }
        summary.consumed += 1;
        if matches!(*role, Role::Events { .. }) {
            telemetry::consumed();
        }
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
        let tp = (source.topic.clone(), source.partition);
        let cancel = consumer.context().cancel_for(&tp);
        let ticket = tracker.admit(&source.topic, source.partition, source.offset);
        let work = prepare(
            &role,
            &source,
            tombstone,
            spec.max_event_bytes,
            &spec.parses,
        );
        let role = role.clone();
        let consumer = consumer.clone();
        let tracker = tracker.clone();
        let name = spec.name.clone();
        tasks.spawn(async move {
            // Boxed: the delivery's state machine is large, and a task that holds it
            // inline is moved whole at every spawn and state change (a tenth of the
            // CPU under a backlog, profiled).
            let handle = Box::pin(handle(&role, work, &source, &cancel));
            // A panic here is a bug in the daemon itself (channel panics are caught
            // per delivery). Left alone, it would leave the update unresolved and
            // freeze its partition's commit point until a restart, which would
            // replay it into the same panic. It is contained instead: the update goes
            // to the dead-letter topic with the panic message.
            let resolution = match std::panic::AssertUnwindSafe(handle).catch_unwind().await {
                Ok(r) => r,
                Err(panic) => {
                    let message = crate::engine::dispatch::retry::panic_message(&*panic);
                    crate::ops::telemetry::DeliveryPanicked {
                        target: &name,
                        message: &message,
                    }
                    .emit();
                    let reason =
                        format!("the daemon panicked while handling this update: {message}");
                    role.dispatcher()
                        .reject(&source, DlqKind::InternalError, reason)
                        .await
                }
            };
            if resolution == Resolution::Resolved
                && let Some(next) = tracker.complete(&ticket).store
            {
                store(&consumer, &name, &source.topic, source.partition, next);
            }
        });
    }

    // Shutdown: stop taking work, give in-flight deliveries the grace period, then
    // abandon what is left (its offsets stay uncommitted, so it is redelivered).
    tracing::info!(
        stream = %spec.name,
        in_flight = tracker.in_flight(),
        grace_ms = spec.shutdown_grace.as_millis() as u64,
        "shutting down: consumption stopped, finishing in-flight deliveries"
    );
    tasks.close();
    if tokio::time::timeout(spec.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        summary.abandoned = tracker.in_flight();
        tracing::warn!(
            stream = %spec.name,
            abandoned = summary.abandoned,
            "grace period over; abandoning the updates still in flight (they will be redelivered)"
        );
        abort.cancel();
        // Cancelled work returns at its next await point; a channel stuck in a
        // blocking call cannot, and is left behind.
        let _ = tokio::time::timeout(ABORT_WAIT, tasks.wait()).await;
    }
    consumer.context().stopping.store(true, Ordering::SeqCst);
    // Commit and leave the group off the runtime: each can block for as long as
    // librdkafka's own timeouts when the brokers are gone. The whole step is bounded,
    // so a stop always fits in a service manager's stop timeout (the shipped unit's
    // TimeoutStopSec=60 > shutdown_grace 30 s + ABORT_WAIT + CLOSE_WAIT). If it runs
    // out, what was resolved since the last auto-commit is redelivered.
    let name = spec.name.clone();
    let close = tokio::task::spawn_blocking(move || {
        let commit = consumer.commit_consumer_state(CommitMode::Sync);
        // Dropping the consumer closes it (leaves the group) on this blocking thread.
        drop(consumer);
        commit
    });
    match tokio::time::timeout(CLOSE_WAIT, close).await {
        Ok(Ok(Ok(()))) => tracing::info!(stream = %name, "offsets of resolved updates committed"),
        Ok(Ok(Err(KafkaError::ConsumerCommit(rdkafka::types::RDKafkaErrorCode::NoOffset)))) => {
            tracing::info!(stream = %name, "no new offsets to commit")
        }
        Ok(Ok(Err(e))) => {
            tracing::error!(stream = %name, error = %e, "final offset commit failed; resolved updates since the last commit will be redelivered")
        }
        Ok(Err(e)) => {
            tracing::error!(stream = %name, error = %e, "closing the Kafka consumer failed")
        }
        Err(_) => tracing::error!(
            stream = %name,
            waited_s = CLOSE_WAIT.as_secs(),
            "the brokers did not answer the final commit and leave in time; stopping anyway (updates resolved since the last commit will be redelivered)"
        ),
    }
    Ok(summary)
}

/// What a record needs, decided in the consumer loop. Planning happens there, in
/// consumption order, because that is what places each delivery behind the previous
/// one of its incident; only the running is left to the spawned task.
enum Work {
    /// Nothing to do (a record the events stream handles, or no matching target).
    Nothing,
    /// The events stream's check: dead-letter it, or warn that nobody takes it.
    Check(std::result::Result<Arc<IncidentUpdate>, (DlqKind, String)>),
    /// Deliveries to run.
    Deliver(Vec<crate::engine::dispatch::Planned>),
}

fn prepare(
    role: &Role,
    source: &Source,
    tombstone: bool,
    max_bytes: usize,
    parses: &Parses,
) -> Work {
    let parsed = parses.get_or_parse(source, tombstone, max_bytes);
    match role {
        Role::Events { dispatcher, .. } => Work::Check(
            parsed
                .map_err(|reason| (DlqKind::MalformedEvent, reason))
                .and_then(|update| {
                    check_key(source, &update);
                    dispatcher
                        .check(&update)
                        .map(|()| update)
                        .map_err(|reason| (DlqKind::UnknownAudience, reason))
                }),
        ),
        Role::Target { dispatcher } => {
            // What the events stream rejects is none of this stream's business.
            let Ok(update) = parsed else {
                return Work::Nothing;
            };
            match dispatcher.plan(&update) {
                Ok(plans) if !plans.is_empty() => Work::Deliver(plans),
                _ => Work::Nothing,
            }
        }
    }
}

/// Runs what [`prepare`] decided.
async fn handle(
    role: &Role,
    work: Work,
    source: &Source,
    cancel: &CancellationToken,
) -> Resolution {
    match (role, work) {
        (_, Work::Nothing) => Resolution::Resolved,
        (Role::Events { dispatcher, routes }, Work::Check(checked)) => match checked {
            Ok(update) => {
                let taken = routes.iter().any(|r| r.takes(&update).is_some());
                if !taken && update.drill {
                    // A drill is routed by `drill_targets` and `drill_recipients`, not
                    // by audiences and rules (`dispatch::drill_audiences`).
                    tracing::warn!(
                        incident_id = %update.incident_id,
                        update_id = %update.update_id,
                        drill_targets = ?update.drill_targets,
                        "no target takes this drill: none of its drill_targets has drill_recipients; nothing to deliver"
                    );
                } else if !taken {
                    tracing::warn!(
                        incident_id = %update.incident_id,
                        update_id = %update.update_id,
                        audiences = ?update.audiences,
                        "no target serves this update's audiences; nothing to deliver"
                    );
                }
                // The incident's latest update, for `clarion publish`, and what it
                // owes each target, for `clarion status`: acknowledged before the
                // update resolves, like a dead letter.
                let (state, due) = futures::join!(
                    dispatcher.record_state(&update, source, cancel),
                    dispatcher.record_due(&update, source, routes, cancel)
                );
                if state == Resolution::Abandoned || due == Resolution::Abandoned {
                    Resolution::Abandoned
                } else {
                    Resolution::Resolved
                }
            }
            Err((kind, reason)) => {
                EventRejected {
                    topic: &source.topic,
                    partition: source.partition,
                    offset: source.offset,
                    reason: &reason,
                    kind: kind.as_str(),
                }
                .emit();
                dispatcher.reject(source, kind, reason).await
            }
        },
        (Role::Target { dispatcher }, Work::Deliver(plans)) => {
            let mut resolution = Resolution::Resolved;
            for p in plans {
                if dispatcher.run(p, source, cancel).await == Resolution::Abandoned {
                    resolution = Resolution::Abandoned;
                }
            }
            resolution
        }
        // Each role prepares only its own kind of work.
        _ => Resolution::Resolved,
    }
}

/// Parses a record into an update, with a reason a person can act on when it is not
/// one. With `check_key`, also warns when the record's key is not the incident id.
pub fn parse(
    source: &Source,
    tombstone: bool,
    max_bytes: usize,
    check_key: bool,
) -> std::result::Result<IncidentUpdate, String> {
    if tombstone {
        return Err("the record has no value (a tombstone); an incident update is a JSON object, and deleting an incident is not something Clarion can deliver".to_string());
    }
    if source.payload.is_empty() {
        return Err("the record's value is empty; an incident update is a JSON object".to_string());
    }
    let update =
        IncidentUpdate::from_slice(&source.payload, max_bytes).map_err(|e| e.to_string())?;
    if check_key {
        self::check_key(source, &update);
    }
    Ok(update)
}

/// Warns (once per record, from the events stream) when a record's key is not its
/// incident id.
fn check_key(source: &Source, update: &IncidentUpdate) {
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
}

fn publish_gauges(stream: &str, tracker: &Tracker) {
    metrics::gauge!("clarion_stream_in_flight", "stream" => stream.to_string())
        .set(tracker.in_flight() as f64);
    metrics::gauge!("clarion_stream_window", "stream" => stream.to_string())
        .set(tracker.window() as f64);
    let oldest = tracker.oldest_unresolved();
    metrics::gauge!("clarion_oldest_unresolved_age_seconds", "stream" => stream.to_string())
        .set(oldest.map_or(0.0, |d| d.as_secs_f64()));
    crate::ops::health::global().oldest_unresolved(stream, oldest);
}

fn store(consumer: &StreamConsumer<Ctx>, stream: &str, topic: &str, partition: i32, next: i64) {
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
        tracing::debug!(stream, topic, partition, offset = next, error = %e, "offset not stored");
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
            assert!(parse(&source(Some(b"INC-7"), &body), false, 1 << 20, true).is_ok());
        });
        assert!(!log.contains("key is not the incident id"), "{log}");
        for key in [Some(&b"other"[..]), None] {
            let log = logs_of(|| {
                assert!(parse(&source(key, &body), false, 1 << 20, true).is_ok());
            });
            assert!(log.contains("WARN"), "{log}");
            assert!(log.contains("record key is not the incident id"), "{log}");
            assert!(log.contains("INC-7"), "{log}");
        }
    }

    #[test]
    fn a_record_is_parsed_once_for_every_stream_and_the_cache_stays_bounded() {
        let update =
            clarion_core::samples::lifecycle("INC-8", "u", &["customers"], jiff::Timestamp::now())
                .remove(0);
        let body = serde_json::to_vec(&update).expect("json");
        let parses = Parses::new(2);
        let at = |offset: i64| Source {
            offset,
            ..source(Some(b"INC-8"), &body)
        };
        let first = parses.get_or_parse(&at(1), false, 1 << 20).expect("parses");
        let again = parses.get_or_parse(&at(1), false, 1 << 20).expect("parses");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second stream gets the same parse"
        );
        let bad = parses.get_or_parse(&source(Some(b"k"), b"{"), false, 1 << 20);
        assert!(bad.is_err(), "failures are shared too");
        let _ = parses.get_or_parse(&at(2), false, 1 << 20);
        let _ = parses.get_or_parse(&at(3), false, 1 << 20);
        let inner = parses.inner.lock().expect("lock");
        assert_eq!(
            (inner.map.len(), inner.order.len()),
            (2, 2),
            "oldest out first"
        );
    }

    #[test]
    fn tombstones_and_empty_values_get_their_own_reason() {
        let tomb = parse(&source(Some(b"k"), b""), true, 1024, true).expect_err("tombstone");
        assert!(tomb.contains("tombstone"), "{tomb}");
        assert!(!tomb.contains("EOF"), "{tomb}");
        let empty = parse(&source(Some(b"k"), b""), false, 1024, true).expect_err("empty");
        assert!(empty.contains("empty"), "{empty}");
    }
}
