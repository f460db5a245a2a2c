//! The supervisor: builds what the streams share (the dead-letter producer, the
//! channels), checks the topics, brings per-target groups to their starting point,
//! starts one stream per target plus the events stream, and stops them. It does no
//! consuming or delivering itself (`stream.rs` does).

use crate::config::{EnvSecrets, KafkaConfig, Settings, StartAt};
use crate::engine::dispatch::{DeliveryReport, Dispatcher, Outputs, Target};
use crate::engine::stream::{self, Role, Spec, StreamSummary};
use crate::kafka::{consumer_config, producer_config};
use crate::records::dlq::DeadLetterWriter;
use anyhow::{Context as _, Result, anyhow};
use clarion_core::SecretResolver;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a run did, for the last log line.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Records read by the busiest stream (each stream reads every record).
    pub consumed: u64,
    /// Updates abandoned at shutdown, over all streams (redelivered after restart).
    pub abandoned: usize,
    /// Times a stream paused consumption because its window was full or its target
    /// down.
    pub pauses: u64,
    /// Records read, per stream (by consumer group).
    pub consumed_by_group: std::collections::BTreeMap<String, u64>,
}

/// The consumer group of a target's stream.
pub fn target_group(kafka: &KafkaConfig, target: &str) -> String {
    format!("{}.{target}", kafka.group_id)
}

/// Runs the daemon until `shutdown` is cancelled, then drains and commits.
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
    let (_keep, reloads) = mpsc::channel(1);
    run_reloadable(settings, secrets, shutdown, observer, reloads).await
}

/// A stream that is running: how to stop it, and its task.
struct Running {
    fingerprint: String,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<StreamSummary>>,
}

/// What every stream of one run shares.
struct Shared<'a> {
    secrets: &'a dyn SecretResolver,
    base: ClientConfig,
    outputs: Outputs,
    /// The delivery ledger, the incident-state writer and the deadline clocks
    /// (docs/ledger.md), shared by every stream.
    records: crate::records::ledger::Records,
    /// Records parsed once for every stream.
    parses: Arc<stream::Parses>,
    /// The directory and walk progress of people targets, with `[directory]`.
    people: Option<Arc<crate::people::PeopleSupport>>,
    /// The status page's state, with `[status_page]`.
    pages: Option<Arc<crate::statuspage::PageSupport>>,
    /// Confirmation requests' state and engine, with `[confirm]`.
    confirm: Option<Confirming>,
}

/// What confirmations run with (docs/confirmations.md).
struct Confirming {
    store: Arc<crate::confirm::ConfirmStore>,
    ledger: Option<crate::records::confirmations::ConfirmationLedger>,
    engine: Arc<crate::engine::escalation::Engine>,
}

impl Confirming {
    /// Starts following the confirmation topic, the escalation engine and the
    /// inbound listener.
    async fn start(
        settings: &Settings,
        outputs: &Outputs,
        secrets: &dyn SecretResolver,
        shutdown: &CancellationToken,
    ) -> Result<Option<Confirming>> {
        let Some(listener) = &settings.confirmations.listener else {
            return Ok(None);
        };
        let store = crate::confirm::ConfirmStore::start(
            listener,
            &settings.kafka,
            secrets,
            outputs.dlq.clone(),
            shutdown.clone(),
        )?;
        let ledger = settings.kafka.ledger_topic.clone().map(|t| {
            crate::records::confirmations::ConfirmationLedger::new(outputs.dlq.clone(), t)
        });
        let Some(engine_ledger) = ledger.clone() else {
            return Err(anyhow!(
                "kafka.ledger_topic: confirmations are recorded in the ledger; set it"
            ));
        };
        let engine = crate::engine::escalation::Engine::start(
            settings,
            store.clone(),
            engine_ledger,
            outputs.clone(),
            secrets,
            shutdown.clone(),
        )?;
        tokio::spawn(engine.clone().run(shutdown.clone()));
        crate::inbound::serve(listener, store.clone(), shutdown.clone()).await?;
        Ok(Some(Confirming {
            store,
            ledger,
            engine,
        }))
    }

    /// What a target stream's dispatcher asks confirmations with, under `settings`.
    fn hook(&self, settings: &Settings) -> Arc<crate::confirm::store::ConfirmHook> {
        Arc::new(crate::confirm::store::ConfirmHook {
            store: self.store.clone(),
            confirmations: Arc::new(settings.confirmations.clone()),
            ledger: self.ledger.clone(),
        })
    }
}

/// Like [`run_with_secrets`], and applies each validated config received on
/// `reloads` (SIGHUP): streams of targets whose config did not change keep running
/// undisturbed; added targets start (at `start`), removed ones drain and stop,
/// changed ones drain and restart with the new config; audiences' deadlines and
/// `[health]` apply at once. `[kafka]`, `[daemon]`, `[metrics]` and the directory's
/// settings are read once: a reload that changes them is refused, loudly, and
/// nothing of it applies (they need a restart). A reload never reports success
/// for a change it did not apply.
pub async fn run_reloadable(
    settings: Settings,
    secrets: &dyn SecretResolver,
    shutdown: CancellationToken,
    observer: Option<mpsc::Sender<DeliveryReport>>,
    mut reloads: mpsc::Receiver<Settings>,
) -> Result<Summary> {
    let kafka = &settings.kafka;
    // Clarion's context de-duplicates the producer's librdkafka errors with the
    // streams'; its statistics tell when it is connected.
    let producer: FutureProducer<crate::ops::health::ProducerCtx> =
        producer_config(kafka, secrets)?
            .set("statistics.interval.ms", "5000")
            .create_with_context(crate::ops::health::ProducerCtx)
            .context("cannot create the dead-letter producer")?;
    let mut shared = Shared {
        secrets,
        base: consumer_config(kafka, secrets)?,
        outputs: Outputs {
            dlq: DeadLetterWriter::new(producer.clone(), kafka.dead_letter_topic.clone())
                .with_max_record_bytes(
                    kafka
                        .producer
                        .get("message.max.bytes")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(crate::records::dlq::DEFAULT_MAX_RECORD_BYTES),
                ),
            dead_recipient_topic: kafka.dead_recipient_topic.clone(),
            observer,
        },
        records: crate::records::ledger::Records::default(),
        // Enough for every stream's window at the default, so that streams a
        // little apart still share their parses.
        parses: Arc::new(stream::Parses::new(
            settings.daemon.max_in_flight.saturating_mul(4),
        )),
        people: None,
        pages: None,
        confirm: None,
    };
    shared.records = crate::records::ledger::Records::new(&settings, &shared.outputs.dlq);
    if let Some(clocks) = shared.records.deadlines.clone() {
        tokio::spawn(clocks.run(shutdown.clone()));
    }
    check_topics(&shared.base, &settings).await?;
    if let Some(directory) = &settings.directory {
        shared.people = Some(crate::people::PeopleSupport::start(
            directory,
            &settings.audiences,
            kafka,
            secrets,
            shutdown.clone(),
        )?);
    }
    if let Some(page) = &settings.status_page {
        shared.pages = Some(crate::statuspage::PageSupport::start(
            page,
            kafka,
            secrets,
            shared.outputs.dlq.clone(),
            shared.outputs.dlq.max_record_bytes(),
            shutdown.clone(),
        )?);
    }
    shared.confirm = Confirming::start(&settings, &shared.outputs, secrets, &shutdown).await?;
    // Build every channel before anything starts: a bad target stops the start.
    let specs = specs(&settings, &shared)?;
    seed_target_groups(&shared.base, &settings, false).await;
    tracing::info!(
        topic = %kafka.topic,
        group = %kafka.group_id,
        dead_letter_topic = %kafka.dead_letter_topic,
        streams = %specs.iter().map(|(s, _)| s.group_id.as_str()).collect::<Vec<_>>().join(", "),
        "clarion started: one stream per target, each in its own consumer group"
    );
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    for (spec, fingerprint) in specs {
        let group = spec.group_id.clone();
        running.insert(
            group,
            start(spec, fingerprint, &shared.base, kafka, &shutdown),
        );
    }
    crate::ops::health::global().started();
    let mut current = settings;
    let mut summary = Summary::default();
    let mut failed: Option<anyhow::Error> = None;
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(new) = reloads.recv() => {
                match reload(&mut running, &current, &new, &shared, &shutdown, &mut summary).await {
                    Ok(()) => {
                        reload_metrics(true);
                        current = new;
                    }
                    Err(e) => {
                        reload_metrics(false);
                        tracing::error!(error = %format!("{e:#}"), "config reload refused; the running config stays in force");
                    }
                }
            }
            _ = check.tick() => {
                // A stream that ended on its own failed to start or lost its
                // consumer: stop the daemon rather than deliver to some targets and
                // silently not to others.
                if let Some(group) = running.iter().find(|(_, r)| r.handle.is_finished()).map(|(g, _)| g.clone())
                    && let Some(r) = running.remove(&group)
                {
                    finish(&group, r.handle.await, &mut summary, &mut failed);
                    shutdown.cancel();
                    break;
                }
            }
        }
    }
    shutdown.cancel();
    for (group, r) in std::mem::take(&mut running) {
        finish(&group, r.handle.await, &mut summary, &mut failed);
    }
    let flushed = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(5)))
    });
    let _ = tokio::time::timeout(Duration::from_secs(6), flushed).await;
    if let Some(e) = failed {
        return Err(e);
    }
    tracing::info!(
        consumed = summary.consumed,
        abandoned = summary.abandoned,
        pauses = summary.pauses,
        "clarion stopped"
    );
    Ok(summary)
}

/// Adds a finished stream to the summary, or keeps its error.
fn finish(
    group: &str,
    joined: Result<Result<StreamSummary>, tokio::task::JoinError>,
    summary: &mut Summary,
    failed: &mut Option<anyhow::Error>,
) {
    match joined {
        Ok(Ok(s)) => {
            *summary
                .consumed_by_group
                .entry(group.to_string())
                .or_default() += s.consumed;
            summary.consumed = summary.consumed.max(s.consumed);
            summary.abandoned += s.abandoned;
            summary.pauses += s.pauses;
        }
        Ok(Err(e)) => {
            failed.get_or_insert(e.context(format!("stream of group `{group}`")));
        }
        Err(e) => {
            failed.get_or_insert(anyhow!("the stream of group `{group}` failed: {e}"));
        }
    }
}

fn reload_metrics(ok: bool) {
    metrics::gauge!("clarion_config_last_reload_success").set(if ok { 1.0 } else { 0.0 });
    if ok {
        metrics::gauge!("clarion_config_last_reload_success_timestamp_seconds")
            .set(jiff::Timestamp::now().as_second() as f64);
    }
}

/// The streams of a config, each with its fingerprint: the events stream (which
/// changes whenever any target does, because it routes over all of them) and one per
/// target.
fn specs(settings: &Settings, shared: &Shared<'_>) -> Result<Vec<(Spec, String)>> {
    let kafka = &settings.kafka;
    let mut out = Vec::new();
    let routes = settings
        .targets
        .iter()
        .map(crate::engine::dispatch::Route::of)
        .collect();
    out.push((
        Spec {
            name: "events".into(),
            group_id: kafka.group_id.clone(),
            max_in_flight: settings.daemon.max_in_flight,
            max_event_bytes: settings.daemon.max_event_bytes,
            rebalance_drain: settings.daemon.rebalance_drain,
            shutdown_grace: settings.daemon.shutdown_grace,
            parses: shared.parses.clone(),
            role: Role::Events {
                dispatcher: Arc::new(
                    Dispatcher::new(
                        Vec::new(),
                        settings.audiences.clone(),
                        settings.templates.clone(),
                        shared.outputs.clone(),
                        CancellationToken::new(),
                    )
                    .with_state(shared.records.state.clone())
                    .with_ledger(shared.records.ledger.clone())
                    .with_pages(shared.pages.clone()),
                ),
                routes,
            },
        },
        settings
            .fingerprints
            .values()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
    ));
    if let Some(pages) = &shared.pages {
        pages.attach(&settings.targets);
    }
    for t in &settings.targets {
        let target = Target::build(t.clone(), shared.secrets)
            .with_context(|| format!("targets.{}", t.name))?;
        let name = t.name.to_string();
        out.push((
            Spec {
                group_id: target_group(kafka, &name),
                max_in_flight: t.max_in_flight.unwrap_or(settings.daemon.max_in_flight),
                max_event_bytes: settings.daemon.max_event_bytes,
                rebalance_drain: settings.daemon.rebalance_drain,
                shutdown_grace: settings.daemon.shutdown_grace,
                parses: shared.parses.clone(),
                role: Role::Target {
                    dispatcher: Arc::new(
                        Dispatcher::new(
                            vec![target],
                            settings.audiences.clone(),
                            settings.templates.clone(),
                            shared.outputs.clone(),
                            CancellationToken::new(),
                        )
                        .with_ledger(shared.records.ledger.clone())
                        .with_deadlines(shared.records.deadlines.clone())
                        .with_people(shared.people.clone())
                        .with_confirm(shared.confirm.as_ref().map(|c| c.hook(settings))),
                    ),
                },
                name: name.clone(),
            },
            settings
                .fingerprints
                .get(&name)
                .cloned()
                .unwrap_or_default(),
        ));
    }
    Ok(out)
}

fn start(
    spec: Spec,
    fingerprint: String,
    base: &ClientConfig,
    kafka: &KafkaConfig,
    shutdown: &CancellationToken,
) -> Running {
    let config = stream_config(base, kafka, &spec.name, &spec.group_id);
    let kafka = kafka.clone();
    let stop = shutdown.child_token();
    let token = stop.clone();
    // Readiness follows the streams that run; a target's breaker open is degraded.
    let breaker = match &spec.role {
        Role::Target { dispatcher } => dispatcher.targets().first().map(|t| t.breakers.clone()),
        Role::Events { .. } => None,
    };
    let registration = crate::ops::health::global().register_stream(
        &spec.name,
        breaker.map(|b| b as Arc<dyn crate::ops::health::TargetBreaker>),
    );
    Running {
        fingerprint,
        shutdown: stop,
        handle: tokio::spawn(async move {
            let name = spec.name.clone();
            let r = stream::run(spec, config, &kafka, token).await;
            crate::ops::health::global().stream_ended(&name, registration);
            r
        }),
    }
}

/// Applies a new config to the running streams.
async fn reload(
    running: &mut BTreeMap<String, Running>,
    current: &Settings,
    new: &Settings,
    shared: &Shared<'_>,
    shutdown: &CancellationToken,
    summary: &mut Summary,
) -> Result<()> {
    if format!("{:?}", current.kafka) != format!("{:?}", new.kafka)
        || format!("{:?}", current.daemon) != format!("{:?}", new.daemon)
    {
        return Err(anyhow!(
            "[kafka] or [daemon] changed: those are read at start; restart the daemon to apply them"
        ));
    }
    if format!("{:?}", current.metrics) != format!("{:?}", new.metrics) {
        return Err(anyhow!(
            "[metrics] changed: its listener is bound at start; restart the daemon to apply it"
        ));
    }
    let source = |s: &Settings| {
        s.directory.as_ref().map(|d| {
            (
                d.source.clone(),
                d.progress_topic.clone(),
                d.batch_size,
                d.batches_in_flight,
            )
        })
    };
    if current.status_page != new.status_page {
        return Err(anyhow!(
            "[status_page] changed: it is read at start; restart the daemon to apply it"
        ));
    }
    if format!("{:?}", current.confirmations.listener)
        != format!("{:?}", new.confirmations.listener)
    {
        return Err(anyhow!(
            "[confirm] changed: the listener and its topic are read at start; restart the daemon to apply them"
        ));
    }
    if source(current) != source(new) {
        return Err(anyhow!(
            "[directory] changed: it is read at start (a file's contents are read again on reload, its settings are not); restart the daemon to apply them"
        ));
    }
    // Build the new streams first: a target that cannot be built refuses the whole
    // reload, and nothing running is touched.
    let specs = specs(new, shared)?;
    // The escalation engine's channels: built before anything changes, too.
    if let Some(c) = &shared.confirm {
        c.engine.reload(new, shared.secrets)?;
    }
    // From here on the reload applies. Deadlines and health first: they change no
    // stream.
    let deadlines = shared
        .records
        .deadlines
        .as_ref()
        .and_then(|d| d.reconfigure(new.deadlines.clone()));
    crate::ops::health::global().configure(new.health.max_unresolved_age);
    if let (Some(people), Some(directory)) = (&shared.people, &new.directory) {
        people.reload(directory);
    }
    // The deployment is running: a target that a reload brings is added later,
    // whatever the groups have committed so far (a running stream may not have
    // committed its first delivery yet).
    seed_target_groups(&shared.base, new, true).await;
    let wanted: BTreeMap<String, (Spec, String)> = specs
        .into_iter()
        .map(|(s, f)| (s.group_id.clone(), (s, f)))
        .collect();
    let mut stopped = Vec::new();
    let mut started = Vec::new();
    let mut kept = Vec::new();
    // Stop what was removed or changed; each drains within its grace period.
    let stale: Vec<String> = running
        .iter()
        .filter(|(g, r)| wanted.get(*g).is_none_or(|(_, f)| *f != r.fingerprint))
        .map(|(g, _)| g.clone())
        .collect();
    for group in stale {
        if let Some(r) = running.remove(&group) {
            r.shutdown.cancel();
            let mut failed = None;
            finish(&group, r.handle.await, summary, &mut failed);
            if let Some(e) = failed {
                tracing::warn!(group = %group, error = %format!("{e:#}"), "a stream stopped for the reload had failed");
            }
            stopped.push(group);
        }
    }
    for (group, (spec, fingerprint)) in wanted {
        if running.contains_key(&group) {
            kept.push(group);
            continue;
        }
        running.insert(
            group.clone(),
            start(spec, fingerprint, &shared.base, &new.kafka, shutdown),
        );
        started.push(group);
    }
    tracing::info!(
        started = ?started,
        stopped = ?stopped,
        unchanged = ?kept,
        deadlines = deadlines.as_deref().unwrap_or("unchanged"),
        "config reloaded"
    );
    Ok(())
}

/// A stream's consumer configuration: the base, its own group, and its identity.
fn stream_config(
    base: &ClientConfig,
    kafka: &KafkaConfig,
    stream: &str,
    group: &str,
) -> ClientConfig {
    let mut c = base.clone();
    c.set("group.id", group);
    if c.get("client.id").is_none() {
        c.set("client.id", format!("clarion-{stream}"));
    }
    if let Some(id) = &kafka.instance_id {
        c.set("group.instance.id", id);
    }
    c
}

/// A consumer of `group` that never subscribes: for reading and writing the group's
/// committed offsets and for metadata.
fn group_client(
    base: &ClientConfig,
    group: &str,
) -> Result<BaseConsumer<crate::ops::health::AdminCtx>, KafkaError> {
    let mut c = base.clone();
    c.set("group.id", group);
    c.create_with_context(crate::ops::health::AdminCtx)
}

/// Checks the topics at start-up. The dead-letter and dead-recipient topics must
/// exist: a mistyped name would otherwise be found only when the first dead letter
/// cannot be written, in the middle of an incident, freezing its partition. The
/// source topic may be created later (the streams pick it up), so a missing one is
/// a warning. Brokers that cannot be reached yet are a warning too: librdkafka keeps
/// trying, and nothing is consumed (so nothing needs a dead letter) until they answer.
async fn check_topics(base: &ClientConfig, settings: &Settings) -> Result<()> {
    let kafka = &settings.kafka;
    let base = base.clone();
    let mut topics = vec![kafka.topic.clone(), kafka.dead_letter_topic.clone()];
    topics.extend(kafka.dead_recipient_topic.clone());
    topics.extend(kafka.ledger_topic.clone());
    topics.extend(kafka.incident_state_topic.clone());
    topics.extend(settings.status_page.as_ref().map(|p| p.topic.clone()));
    if let Some(c) = &settings.confirmations.listener {
        topics.push(c.topic.clone());
    }
    if let Some(d) = &settings.directory {
        topics.push(d.progress_topic.clone());
        if let crate::config::DirectorySource::Topic(t) = &d.source {
            topics.push(t.clone());
        }
    }
    let r = tokio::task::spawn_blocking(move || {
        let c = group_client(&base, "clarion-topic-check")?;
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
                    "topic(s) {} not found on the brokers: create them (or fix kafka.dead_letter_topic / kafka.dead_recipient_topic / kafka.ledger_topic / kafka.incident_state_topic / status_page.topic / directory.topic / directory.progress_topic / confirm.topic) before starting, or failed deliveries would have nowhere to go",
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

/// Gives every target group without a committed position its starting point, before
/// any stream joins:
/// - when no target group has any position yet (an upgrade from the single-group
///   daemon, or a new deployment), each starts where the deployment's group
///   (`kafka.group_id`) has committed, so an upgrade neither redelivers history nor
///   skips anything; with nothing committed anywhere, at the beginning, as before;
/// - a target added to a deployment with history starts at the end of the topic
///   (`start = "latest"`, the default) or at its beginning (`start = "earliest"`);
///   a target that a SIGHUP reload brings (`reload`) is always one added later.
///
/// Failures are logged, not fatal: a group that could not be seeded reads from the
/// beginning (`auto.offset.reset = earliest`), which redelivers but loses nothing.
async fn seed_target_groups(base: &ClientConfig, settings: &Settings, reload: bool) {
    let base = base.clone();
    let kafka = settings.kafka.clone();
    let targets: Vec<(String, StartAt)> = settings
        .targets
        .iter()
        .map(|t| (t.name.to_string(), t.start))
        .collect();
    let r =
        tokio::task::spawn_blocking(move || seed_blocking(&base, &kafka, &targets, reload)).await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot set the starting offsets of new target streams; they read from the beginning")
        }
        Err(e) => tracing::warn!(error = %e, "offset seeding did not run"),
    }
}

type Positions = BTreeMap<i32, i64>;

/// The commit metadata of a starting position written by `seed_target_groups`, so
/// that a seed is never taken for a stream's own progress.
const SEED_MARK: &str = "clarion:seed";

fn seed_blocking(
    base: &ClientConfig,
    kafka: &KafkaConfig,
    targets: &[(String, StartAt)],
    reload: bool,
) -> Result<()> {
    let timeout = Duration::from_secs(10);
    let meta = group_client(base, &kafka.group_id)?;
    let md = meta.fetch_metadata(Some(&kafka.topic), timeout)?;
    let Some(topic) = md
        .topics()
        .iter()
        .find(|t| t.name() == kafka.topic && t.error().is_none())
    else {
        return Ok(());
    };
    let partitions: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Ok(());
    }
    // A group's committed positions, and whether any of them was written by a
    // stream (rather than by this seeding, which marks its commits).
    let committed = |group: &str| -> Result<(Positions, bool)> {
        let c = group_client(base, group)?;
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(&kafka.topic, *p);
        }
        let got = c.committed_offsets(tpl, timeout)?;
        let mut positions = Positions::new();
        let mut by_a_stream = false;
        for e in got.elements() {
            if let Offset::Offset(o) = e.offset()
                && o >= 0
            {
                positions.insert(e.partition(), o);
                by_a_stream |= e.metadata() != SEED_MARK;
            }
        }
        Ok((positions, by_a_stream))
    };
    let (deployment, _) = committed(&kafka.group_id)?;
    let mut positions = Vec::new();
    for (name, start) in targets {
        let (have, _) = committed(&target_group(kafka, name))?;
        positions.push((name, *start, have));
    }
    // "Added later" needs a deployment with history whose target streams have
    // run: seeds written by a replica starting at the same moment do not count, so
    // replicas starting together all make the same choice.
    let mut any_target_started = reload;
    if !any_target_started && !deployment.is_empty() {
        for (name, _) in targets {
            any_target_started |= committed(&target_group(kafka, name))?.1;
        }
    }
    for (name, start, have) in &positions {
        if !have.is_empty() {
            continue;
        }
        let group = target_group(kafka, name);
        let watermarks = |high: bool| -> Result<Positions> {
            let mut out = Positions::new();
            for p in &partitions {
                let (lo, hi) = meta.fetch_watermarks(&kafka.topic, *p, timeout)?;
                out.insert(*p, if high { hi } else { lo });
            }
            Ok(out)
        };
        // Every target group gets a position at its first start, even when it is
        // the topic's beginning: "no position" then always means "never ran here",
        // and a target whose stream had not committed yet when the deployment
        // restarted is never mistaken for a new one.
        let (seed, why): (Positions, &str) = if !any_target_started {
            if deployment.is_empty() {
                (
                    watermarks(false)?,
                    "at the beginning of the topic (a new deployment)",
                )
            } else {
                let mut seed = watermarks(false)?;
                seed.extend(deployment.iter());
                (
                    seed,
                    "where the deployment's group had committed (upgrade from one group)",
                )
            }
        } else {
            match start {
                StartAt::Earliest => (
                    watermarks(false)?,
                    "at the beginning of the topic (a target added later; start = \"earliest\")",
                ),
                StartAt::Latest => (
                    watermarks(true)?,
                    "at the end of the topic (a target added later; start = \"latest\")",
                ),
            }
        };
        // Another replica may have seeded it meanwhile: its choice stands.
        if !committed(&group)?.0.is_empty() {
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &seed {
            tpl.add_partition_offset(&kafka.topic, *p, Offset::Offset(*o))?;
            if let Some(mut e) = tpl.find_partition(&kafka.topic, *p) {
                e.set_metadata(SEED_MARK);
            }
        }
        let c = group_client(base, &group)?;
        c.assign(&tpl)?;
        match c.commit(&tpl, CommitMode::Sync) {
            Ok(()) => tracing::info!(
                stream = %name,
                group = %group,
                offsets = ?seed,
                "new target stream starts {why}"
            ),
            // Another replica may have seeded it, or its stream already joined.
            Err(e) => {
                tracing::info!(stream = %name, group = %group, error = %e, "target stream's starting offsets not written (another replica may have)")
            }
        }
    }
    Ok(())
}
