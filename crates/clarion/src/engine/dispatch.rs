//! Retries for one target: an update becomes a delivery; each delivery is tried,
//! retried with backoff, and ends delivered, dead-lettered or superseded.
//!
//! Ordering: deliveries of one incident to one target run strictly one after the
//! other, in consumption order (a "lane"), so a target never sees `resolved` before
//! the `investigating` that preceded it. Different incidents run concurrently.
//!
//! Each target has its own dispatcher inside its own stream (`stream.rs`), and its
//! own breaker (`breaker.rs`): a target that is down makes its deliveries wait
//! without spending attempts, and delays no other target.

use crate::config::{RetryPolicy, TargetConfig};
use crate::engine::breaker::{Breakers, Pass, Verdict};
use crate::ops::telemetry::{
    DeliveryAttempted, DeliveryDeadLettered, DeliveryEnded, DeliverySuperseded,
};
use crate::records::deadlines::DeadlineTracker;
use crate::records::dlq::{
    DeadLetter, DeadLetterWriter, DeadRecipient, DlqKind, FailedDelivery, Source,
};
use crate::records::ledger::{LedgerRecord, LedgerWriter, StateWriter};
use backon::BackoffBuilder;
use clarion_core::{
    Channel, Content, Delivery, DeliveryError, IncidentUpdate, Outcome, RecipientResult, Status,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A configured target with its providers, its concurrency limit and their breakers.
#[derive(Debug)]
pub struct Target {
    pub config: TargetConfig,
    /// In failover order: the target's own provider first, then its backups.
    pub providers: Vec<Provider>,
    pub breakers: Arc<Breakers>,
    permits: Semaphore,
    /// A people target's legs, in `fallback` order (empty for any other target).
    pub legs: Vec<Leg>,
}

/// One leg of a people target: the kind of address it carries and the channel
/// target (with its providers and breakers) that carries it.
#[derive(Debug)]
pub struct Leg {
    pub kind: crate::directory::AddressKind,
    pub target: Target,
}

/// One way a target reaches its recipients: a channel under a provider's name.
#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    pub channel: Arc<dyn Channel>,
    /// The same provider addressing the target's `drill_recipients` only.
    pub drill: Option<Arc<dyn Channel>>,
}

impl Target {
    /// Builds a target's channels as `run` does: its providers, or a people
    /// target's legs and theirs.
    pub fn build(
        config: TargetConfig,
        secrets: &dyn clarion_core::SecretResolver,
    ) -> anyhow::Result<Target> {
        let Some(people) = config.people.clone() else {
            let providers = crate::config::build_providers(&config, secrets)?;
            return Ok(Target::with_providers(config, providers));
        };
        let mut legs = Vec::new();
        for leg in people.legs {
            let providers = crate::config::build_providers(&leg.target, secrets)
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", leg.kind.as_str()))?;
            legs.push(Leg {
                kind: leg.kind,
                target: Target::with_providers(leg.target, providers),
            });
        }
        // Its own breaker never opens: when a leg is down, people fall back to
        // the next leg, so the target's stream goes on fetching.
        let mut target = Target::with_providers(config, Vec::new());
        target.legs = legs;
        Ok(target)
    }

    /// A target with one provider, its own.
    pub fn new(config: TargetConfig, channel: Arc<dyn Channel>) -> Self {
        let name = config.provider_name.clone();
        Target::with_providers(
            config,
            vec![crate::config::BuiltProvider {
                name,
                channel,
                drill: None,
            }],
        )
    }

    /// A target with its providers in failover order (`config::build_providers`).
    pub fn with_providers(
        config: TargetConfig,
        providers: Vec<crate::config::BuiltProvider>,
    ) -> Self {
        let permits = Semaphore::new(config.concurrency);
        let mut names: Vec<Arc<str>> = providers.iter().map(|p| p.name.clone()).collect();
        if names.is_empty() {
            // A people target: a breaker that nothing records into, so never open.
            names.push(config.provider_name.clone());
        }
        let breakers = Arc::new(Breakers::new(&config.name, &names, &config.breaker));
        Target {
            config,
            providers: providers
                .into_iter()
                .map(|p| Provider {
                    name: p.name,
                    channel: p.channel,
                    drill: p.drill,
                })
                .collect(),
            breakers,
            permits,
            legs: Vec::new(),
        }
    }
}

/// How a delivery ended, for the demo's table, the benchmark and the tests.
#[derive(Debug, Clone)]
pub struct DeliveryReport {
    pub incident_id: String,
    pub update_id: String,
    pub sequence: u64,
    pub status: Status,
    pub target: Arc<str>,
    /// The provider of the last attempt (`None` when none was made).
    pub provider: Option<Arc<str>>,
    pub recipient: Option<String>,
    pub attempts: u32,
    /// `None` when delivered or superseded; the dead-letter reason otherwise.
    pub dead_letter_reason: Option<String>,
    /// The update that made this one unnecessary (`supersede = true` targets).
    pub superseded_by: Option<String>,
    /// From the update's Kafka timestamp to the end of the delivery.
    pub latency: Duration,
}

/// How a delivery (or a whole event) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Delivered to everyone, dead-lettered for those it could not reach, or
    /// superseded by a newer update of its incident.
    Resolved,
    /// Cut short by shutdown or by the loss of its partition; not resolved, so its
    /// offset is not committed.
    Abandoned,
}

/// One delivery planned in consumption order, with its place in its lane.
#[derive(Debug)]
pub struct Planned {
    target: usize,
    pub(crate) delivery: Delivery,
    after: Option<oneshot::Receiver<()>>,
    lane: LaneEntry,
}

/// What a people target's leg gives back instead of dead-lettering: who it
/// reached and who it could not (those then fall back to their next channel).
#[derive(Debug, Default)]
pub(crate) struct LegSink {
    /// Addresses delivered (each also recorded in the ledger as delivered).
    pub(crate) delivered: Vec<String>,
    /// Addresses that ended permanent, recipient-gone or out of budget; `None`
    /// for every address of the leg not delivered and not listed here.
    pub(crate) failed: Vec<(Option<String>, DeliveryError)>,
    /// The attempts made, for the dead letter of whoever has no channel left.
    pub(crate) tried: Tried,
}

impl Planned {
    /// Restricts the delivery to these recipients, as a retry does: for replaying a
    /// per-recipient dead letter to that recipient only (`clarion dlq replay`).
    pub fn restrict_to(&mut self, recipients: Vec<String>) {
        self.delivery.recipients = Some(recipients);
    }
}

/// The newest delivery planned in a lane, which older ones of a `supersede` target
/// compare themselves with.
#[derive(Debug, Default)]
struct LaneHead {
    newest: AtomicU64,
    newest_update: Mutex<String>,
    changed: Notify,
}

/// Holds a lane slot; dropping it lets the next delivery of the lane start and
/// removes the lane when nobody follows.
#[derive(Debug)]
pub(crate) struct LaneEntry {
    lanes: Arc<Lanes>,
    key: (String, usize),
    id: u64,
    head: Arc<LaneHead>,
    _done: oneshot::Sender<()>,
}

impl LaneEntry {
    /// The update id of a newer delivery in this lane, if one was planned.
    fn superseded_by(&self) -> Option<String> {
        if self.head.newest.load(Ordering::SeqCst) == self.id {
            return None;
        }
        let by = self
            .head
            .newest_update
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(by)
    }
}

impl Drop for LaneEntry {
    fn drop(&mut self) {
        let mut map = self.lanes.lock();
        if map.get(&self.key).is_some_and(|l| l.id == self.id) {
            map.remove(&self.key);
        }
    }
}

/// The last registered delivery of every busy (incident, target) lane: its id, the
/// receiver that fires when it is done (which the next delivery takes), and the
/// lane's head.
#[derive(Debug, Default)]
struct Lanes {
    map: Mutex<LaneMap>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Lane {
    id: u64,
    done: Option<oneshot::Receiver<()>>,
    head: Arc<LaneHead>,
}

type LaneMap = HashMap<(String, usize), Lane>;

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, LaneMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Turns updates into deliveries and runs them to resolution.
#[derive(Debug)]
pub struct Dispatcher {
    targets: Vec<Target>,
    audiences: BTreeSet<String>,
    lanes: Arc<Lanes>,
    pub(crate) dlq: DeadLetterWriter,
    dead_recipient_topic: Option<String>,
    templates: Arc<clarion_render::TemplateSet>,
    abort: CancellationToken,
    observer: Option<mpsc::Sender<DeliveryReport>>,
    /// Where every final outcome is recorded (`kafka.ledger_topic`).
    ledger: Option<LedgerWriter>,
    /// The clocks of audiences' notification deadlines.
    deadlines: Option<Arc<DeadlineTracker>>,
    /// The incident-state topic's writer (the events stream's dispatcher only).
    state: Option<Arc<StateWriter>>,
    /// The directory and walk progress of people targets (`people.rs`).
    pub(crate) people: Option<Arc<crate::people::PeopleSupport>>,
}

/// How a delivery (or one recipient of it) ended, for the ledger and the observer.
#[derive(Debug, Default)]
pub(crate) struct End {
    pub(crate) recipient: Option<String>,
    pub(crate) provider_id: Option<String>,
    pub(crate) error: Option<DeliveryError>,
    pub(crate) superseded_by: Option<String>,
    pub(crate) tried: Tried,
}

/// The attempts a delivery made, for the ledger: each request to the peer counts,
/// including those made while the breaker judged the target down (which do not
/// count against `max_attempts`, so `Delivery::attempt` does not show them).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tried {
    first_at: Option<jiff::Timestamp>,
    count: u32,
    /// The provider (index into `Target::providers`) of the last attempt.
    provider: Option<usize>,
}

/// The retry budget a delivery has at one provider (`retry` applies per provider:
/// a delivery that spends it at one moves to the next, and is given up only at
/// the last). Kept for the whole delivery: coming back to a provider (its breaker
/// let a probe through) goes on with what is left there, so that bouncing between
/// providers never starts a budget afresh.
#[derive(Default)]
struct Budget {
    /// Attempts made here that count against `max_attempts`.
    attempts: u32,
    /// The first attempt here.
    started: Option<Instant>,
    /// Time spent waiting for breakers: not this delivery's own.
    breaker_wait: Duration,
    /// The first transient failure here.
    failing_since: Option<Instant>,
}

/// Where a dispatcher's deliveries end up besides the targets.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub dlq: DeadLetterWriter,
    pub dead_recipient_topic: Option<String>,
    pub observer: Option<mpsc::Sender<DeliveryReport>>,
}

/// Why an update cannot be turned into deliveries at all (dead-lettered once, by the
/// event stream).
pub fn check_audiences(
    update: &IncidentUpdate,
    audiences: &BTreeSet<String>,
) -> Result<(), String> {
    let unknown: Vec<&str> = update
        .audiences
        .iter()
        .filter(|a| !audiences.contains(*a))
        .map(String::as_str)
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(format!(
        "unknown audience(s) {}: not standard and not listed in the config's `audiences`",
        unknown.join(", ")
    ))
}

impl Dispatcher {
    pub fn new(
        targets: Vec<Target>,
        audiences: BTreeSet<String>,
        templates: Arc<clarion_render::TemplateSet>,
        outputs: Outputs,
        abort: CancellationToken,
    ) -> Self {
        Dispatcher {
            targets,
            audiences,
            lanes: Arc::default(),
            dlq: outputs.dlq,
            dead_recipient_topic: outputs.dead_recipient_topic,
            templates,
            abort,
            observer: outputs.observer,
            ledger: None,
            deadlines: None,
            state: None,
            people: None,
        }
    }

    /// Records every final outcome in the ledger before the delivery resolves.
    pub fn with_ledger(mut self, ledger: Option<LedgerWriter>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Keeps the latest update per incident in `kafka.incident_state_topic`.
    pub fn with_state(mut self, state: Option<Arc<StateWriter>>) -> Self {
        self.state = state;
        self
    }

    /// Writes a checked update (not a drill) to the incident-state topic, when there is one;
    /// `Abandoned` when cancelled before the broker acknowledged it.
    pub async fn record_state(
        &self,
        update: &IncidentUpdate,
        source: &Source,
        cancel: &CancellationToken,
    ) -> Resolution {
        match &self.state {
            // A drill is not an incident: `clarion status` and `publish` never see it.
            _ if update.drill => Resolution::Resolved,
            Some(state) if state.write(update, source, cancel).await.is_err() => {
                Resolution::Abandoned
            }
            _ => Resolution::Resolved,
        }
    }

    /// Gives people targets their directory and walk progress (`people.rs`).
    pub fn with_people(mut self, people: Option<Arc<crate::people::PeopleSupport>>) -> Self {
        self.people = people;
        self
    }

    /// Reports planned and successful deliveries to the deadline clocks.
    pub fn with_deadlines(mut self, deadlines: Option<Arc<DeadlineTracker>>) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// Renders the target's templates for every audience of the delivery.
    pub(crate) fn render(
        &self,
        target: &Target,
        d: &Delivery,
    ) -> Result<BTreeMap<String, Content>, String> {
        let mut out = BTreeMap::new();
        for audience in d.audiences.iter() {
            let message = target
                .config
                .render(&self.templates, &d.update, audience)
                .map_err(|e| format!("template rendering failed for audience `{audience}`: {e}"))?;
            let mut content = crate::config::content_of(&message);
            if d.update.drill {
                mark_drill(target.config.kind, &mut content);
            }
            out.insert(audience.clone(), content);
        }
        Ok(out)
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Whether the update names only audiences the config knows.
    pub fn check(&self, update: &IncidentUpdate) -> Result<(), String> {
        check_audiences(update, &self.audiences)
    }

    /// The token that aborts every delivery of this dispatcher.
    pub fn abort(&self) -> &CancellationToken {
        &self.abort
    }

    /// Plans the deliveries of one update. Must be called in consumption order: it
    /// is what places each delivery behind the previous one of its lane. Fails with
    /// a reason when the update names an audience the config does not know.
    pub fn plan(&self, update: &Arc<IncidentUpdate>) -> Result<Vec<Planned>, String> {
        check_audiences(update, &self.audiences)?;
        let mut plans = Vec::new();
        for (idx, target) in self.targets.iter().enumerate() {
            let served = if update.drill {
                match drill_audiences(target, update) {
                    Ok(served) => served,
                    Err(why) => {
                        tracing::debug!(
                            incident_id = %update.incident_id,
                            update_id = %update.update_id,
                            target = %target.config.name,
                            why,
                            "target does not take this drill"
                        );
                        continue;
                    }
                }
            } else {
                let decision =
                    clarion_render::route(update, &target.config.audiences, &target.config.rules);
                if !decision.matched {
                    tracing::debug!(
                        incident_id = %update.incident_id,
                        update_id = %update.update_id,
                        target = %target.config.name,
                        why = %decision.explanation,
                        "target does not take this update"
                    );
                    continue;
                }
                decision.audiences
            };
            // A drill is no incident: no audience's deadline clock starts for it.
            if let Some(clocks) = self.deadlines.as_ref().filter(|_| !update.drill) {
                clocks.observe(update, &served);
            }
            let key = (update.incident_id.clone(), idx);
            let (tx, rx) = oneshot::channel();
            let id = self.lanes.next.fetch_add(1, Ordering::Relaxed);
            let (after, head) = {
                let mut map = self.lanes.lock();
                let head = map.get(&key).map(|l| l.head.clone()).unwrap_or_default();
                *head.newest_update.lock().unwrap_or_else(|e| e.into_inner()) =
                    update.update_id.clone();
                head.newest.store(id, Ordering::SeqCst);
                let prev = map.insert(
                    key.clone(),
                    Lane {
                        id,
                        done: Some(rx),
                        head: head.clone(),
                    },
                );
                (prev.and_then(|mut l| l.done.take()), head)
            };
            head.changed.notify_waiters();
            plans.push(Planned {
                target: idx,
                delivery: Delivery::new(update.clone(), target.config.name.clone(), served.into()),
                after,
                lane: LaneEntry {
                    lanes: self.lanes.clone(),
                    key,
                    id,
                    head,
                    _done: tx,
                },
            });
        }
        Ok(plans)
    }

    /// Runs one delivery to resolution: waits its turn in the lane, tries, retries
    /// per the target's policy, and dead-letters what cannot be delivered. `cancel`
    /// abandons it (shutdown, or its partition handed to another consumer).
    pub async fn run(
        &self,
        planned: Planned,
        source: &Source,
        cancel: &CancellationToken,
    ) -> Resolution {
        let target = &self.targets[planned.target];
        let update = planned.delivery.update.clone();
        let span = tracing::info_span!(
            "delivery",
            incident_id = %update.incident_id,
            update_id = %update.update_id,
            target = %target.config.name,
            channel = target.config.kind.as_str(),
        );
        let resolution = self
            .run_inner(planned, target, source, cancel)
            .instrument(span.clone())
            .await;
        if resolution == Resolution::Abandoned {
            span.in_scope(|| {
                tracing::warn!(
                    incident_id = %update.incident_id,
                    update_id = %update.update_id,
                    target_name = %target.config.name,
                    "delivery abandoned (shutdown or partition handed over); it will be redelivered"
                );
            });
        }
        resolution
    }

    async fn run_inner(
        &self,
        planned: Planned,
        target: &Target,
        source: &Source,
        cancel: &CancellationToken,
    ) -> Resolution {
        let Planned {
            mut delivery,
            after,
            lane,
            ..
        } = planned;
        if let Some(people) = &target.config.people {
            if let Some(prev) = after {
                tokio::select! {
                    _ = prev => {}
                    _ = cancel.cancelled() => return Resolution::Abandoned,
                }
            }
            // The lane is held for the whole walk: every member gets this update
            // before anyone gets the next one of the incident.
            // Boxed: a walk's state is large, and inline it would make every
            // delivery's future that large.
            return Box::pin(self.run_people(delivery, target, people, source, cancel, lane)).await;
        }
        // Rendering is deterministic: a template that fails now fails on every try,
        // so it is a permanent failure, dead-lettered with the template's error.
        let rendered = self.render(target, &delivery);
        if let Some(prev) = after {
            tokio::select! {
                _ = prev => {}
                _ = cancel.cancelled() => return Resolution::Abandoned,
            }
        }
        // From here on this delivery holds its lane: dropping `lane` lets the next
        // one of its incident start.
        match rendered {
            Ok(content) => delivery.content = Arc::new(content),
            Err(reason) => {
                let e = DeliveryError::permanent(reason).with_code("template");
                return self
                    .dead_letter(target, &delivery, source, None, e, Tried::default(), cancel)
                    .await;
            }
        }
        self.retry_loop(target, &mut delivery, source, cancel, Some(&lane), None)
            .await
    }

    /// Tries a delivery until it resolves: delivered, dead-lettered (or, for a
    /// people target's leg, handed back through `sink` for the next leg),
    /// superseded, or abandoned. `lane` is the delivery's place in its incident's
    /// lane (`None` for a leg: the people target holds the lane).
    pub(crate) async fn retry_loop(
        &self,
        target: &Target,
        delivery: &mut Delivery,
        source: &Source,
        cancel: &CancellationToken,
        lane: Option<&LaneEntry>,
        mut sink: Option<&mut LegSink>,
    ) -> Resolution {
        let policy = &target.config.retry;
        let last = target.providers.len() - 1;
        let mut tried = Tried::default();
        // The providers this delivery may still use are `floor..`: one whose retry
        // budget it spent is not tried again for it.
        // A failover drill treats the providers before the one it proves as down.
        let mut floor = if delivery.update.drill {
            (delivery.update.drill_skip_providers as usize).min(last)
        } else {
            0
        };
        let mut budgets: Vec<Budget> = (0..=last).map(|_| Budget::default()).collect();
        // The provider of the last attempt (or the first the delivery may use).
        let mut current = floor;
        loop {
            if target.config.supersede
                && let Some(by) = lane.and_then(LaneEntry::superseded_by)
            {
                return Box::pin(self.superseded(target, delivery, source, by, tried, cancel))
                    .await;
            }
            // A leg whose every provider is down hands its people to the next leg
            // at once: waiting for it would keep them from a channel that works.
            if let Some(sink) = sink.as_deref_mut()
                && target.breakers.is_open()
            {
                let e = DeliveryError::retryable(
                    format!(
                        "`{}` is down (every provider's breaker is open)",
                        target.config.name
                    ),
                    None,
                )
                .with_code("outage");
                sink.failed.push((None, e));
                sink.tried = tried;
                return Resolution::Resolved;
            }
            let waited = Instant::now();
            let (at, pass) = tokio::select! {
                p = choose(target, floor) => p,
                _ = changed(lane), if target.config.supersede => continue,
                _ = cancel.cancelled() => return Resolution::Abandoned,
            };
            if at != current {
                crate::ops::telemetry::FailedOver {
                    update: &delivery.update,
                    target: &target.config.name,
                    from: &target.providers[current].name,
                    to: &target.providers[at].name,
                    why: if at < current {
                        "back to a provider whose breaker let a probe through"
                    } else if floor > current {
                        "the retry budget at the previous provider was spent (failover_after, max_attempts or max_elapsed)"
                    } else {
                        "the previous provider's breaker is open"
                    },
                }
                .emit();
                current = at;
            }
            let budget = &mut budgets[at];
            budget.breaker_wait += waited.elapsed();
            let started = *budget.started.get_or_insert_with(Instant::now);
            tried.provider = Some(at);
            let provider = &target.providers[at];
            let breaker = target.breakers.get(at);
            // A drill goes through the provider's drill channel, never its own.
            let channel = if delivery.update.drill {
                let Some(channel) = &provider.drill else {
                    // Not an attempt: a probe this delivery was given goes back.
                    breaker.release_probe(pass);
                    let e = DeliveryError::permanent(format!(
                        "provider `{}` has no drill channel (the target has no drill_recipients)",
                        provider.name
                    ))
                    .with_code("no_drill_recipients");
                    return self
                        .dead_letter(target, delivery, source, None, e, tried, cancel)
                        .await;
                };
                channel
            } else {
                &provider.channel
            };
            if let Pass::OutageOver { since } = pass {
                let e = DeliveryError::retryable(
                    format!(
                        "target `{}` has been down since {since}, longer than its outage budget ({}); not tried again",
                        target.config.name,
                        humantime::format_duration(target.config.breaker.outage_budget)
                    ),
                    None,
                )
                .with_code("outage");
                return self
                    .dead_letter(target, delivery, source, None, e, tried, cancel)
                    .await;
            }
            tried.first_at.get_or_insert_with(jiff::Timestamp::now);
            tried.count += 1;
            let Some(attempt) = self
                .attempt(target, channel, delivery, policy, cancel)
                .await
            else {
                breaker.release_probe(pass);
                return Resolution::Abandoned;
            };
            let Attempt { outcome, timed_out } = attempt;
            if let Some(sink) = sink.as_deref_mut() {
                sink.tried = tried;
            }
            let verdict = verdict_of(&outcome);
            let first_error = outcome
                .results
                .iter()
                .find_map(|r| r.result.as_ref().err().map(|e| e.reason.clone()))
                .unwrap_or_default();
            let target_down =
                breaker.record(pass, verdict, &first_error) && verdict == Verdict::TargetDown;
            let latency = since_kafka_timestamp(source);
            let mut retry: Vec<(Option<String>, DeliveryError)> = Vec::new();
            let mut permanent: Vec<(Option<String>, DeliveryError)> = Vec::new();
            // Recipients that ended in this attempt (delivered or failed for good).
            let mut ended: Vec<String> = Vec::new();
            let mut delivered: Vec<End> = Vec::new();
            for r in outcome.results {
                if let (Some(who), false) = (
                    &r.recipient,
                    r.result.as_ref().is_err_and(DeliveryError::is_retryable),
                ) {
                    ended.push(who.clone());
                }
                match r.result {
                    Ok(receipt) => {
                        DeliveryAttempted {
                            update: &delivery.update,
                            channel: target.config.kind.as_str(),
                            target: &target.config.name,
                            provider: &provider.name,
                            recipient: r.recipient.as_deref(),
                            attempt: delivery.attempt,
                            result: Ok(receipt.provider_id.as_deref()),
                            latency,
                            next_retry: None,
                            failover_to: None,
                        }
                        .emit();
                        if let (Some(sink), Some(who)) = (sink.as_deref_mut(), &r.recipient) {
                            sink.delivered.push(who.clone());
                        }
                        delivered.push(End {
                            recipient: r.recipient,
                            provider_id: receipt.provider_id,
                            tried,
                            ..End::default()
                        });
                    }
                    Err(e) if e.is_retryable() => retry.push((r.recipient, e)),
                    Err(e) => permanent.push((r.recipient, e)),
                }
            }
            // The recipients of one attempt are recorded together: one at a time, a
            // list of thousands would wait for thousands of broker round trips.
            let recorded = futures::future::join_all(
                delivered
                    .into_iter()
                    .map(|end| self.report(target, delivery, source, end, cancel)),
            )
            .await;
            if recorded.contains(&Resolution::Abandoned) {
                return Resolution::Abandoned;
            }
            // Decide the wait before logging, so that the log line says when.
            let wait = if retry.is_empty() {
                None
            } else if target_down {
                // The target is down, not this delivery: the attempt does not count,
                // and the breaker decides when to try again.
                Some(Duration::ZERO)
            } else {
                let hint = retry
                    .iter()
                    .filter_map(|(_, e)| match e.class {
                        clarion_core::ErrorClass::Retryable { retry_after } => retry_after,
                        _ => None,
                    })
                    .max();
                let budget = &mut budgets[at];
                // The attempts counted here so far, this one included: the n-th
                // retry waits up to the n-th ceiling.
                let made = budget.attempts + 1;
                let ceiling = backoff_ceilings(policy)
                    .nth(made as usize - 1)
                    .unwrap_or(policy.max_backoff);
                let wait = full_jitter(ceiling).max(hint.unwrap_or_default());
                let out_of_attempts = made >= policy.max_attempts;
                // Saturating: a peer's `Retry-After` may be anything.
                let out_of_time = started
                    .elapsed()
                    .saturating_sub(budget.breaker_wait)
                    .saturating_add(wait)
                    > policy.max_elapsed;
                // With a provider after this one, the next try goes there at once
                // when waiting here would pass `failover_after`.
                let failing_for = budget
                    .failing_since
                    .get_or_insert_with(Instant::now)
                    .elapsed();
                if at < last
                    && (out_of_attempts
                        || out_of_time
                        || failing_for.saturating_add(wait) >= target.config.failover_after)
                {
                    floor = at + 1;
                    Some(Duration::ZERO)
                } else if out_of_attempts || out_of_time {
                    let why = if out_of_attempts {
                        format!("gave up after {} attempts", delivery.attempt)
                    } else {
                        format!(
                            "gave up after {} attempts: the next retry would pass max_elapsed ({})",
                            delivery.attempt,
                            humantime::format_duration(policy.max_elapsed)
                        )
                    };
                    for (recipient, e) in retry.drain(..) {
                        let reason = format!("{why}; last error: {}", e.reason);
                        permanent.push((recipient, DeliveryError { reason, ..e }));
                    }
                    None
                } else {
                    Some(wait)
                }
            };
            // Where the next try goes, when it leaves this provider.
            let failover_to = if floor > at {
                Some(&*target.providers[floor].name)
            } else if target_down && at < last {
                Some(&*target.providers[at + 1].name)
            } else {
                None
            };
            for (recipient, e) in &retry {
                DeliveryAttempted {
                    update: &delivery.update,
                    channel: target.config.kind.as_str(),
                    target: &target.config.name,
                    provider: &provider.name,
                    recipient: recipient.as_deref(),
                    attempt: delivery.attempt,
                    result: Err((&e.class, &e.reason)),
                    latency,
                    next_retry: wait,
                    failover_to,
                }
                .emit();
            }
            for (recipient, e) in permanent {
                DeliveryAttempted {
                    update: &delivery.update,
                    channel: target.config.kind.as_str(),
                    target: &target.config.name,
                    provider: &provider.name,
                    recipient: recipient.as_deref(),
                    attempt: delivery.attempt,
                    result: Err((&e.class, &e.reason)),
                    latency,
                    next_retry: None,
                    failover_to: None,
                }
                .emit();
                if let Some(sink) = sink.as_deref_mut() {
                    // Handed back to the people target: the next leg may reach
                    // this person, and it reports what is dead (`people.rs`).
                    sink.failed.push((recipient, e));
                    continue;
                }
                if self
                    .dead_letter(target, delivery, source, recipient, e, tried, cancel)
                    .await
                    == Resolution::Abandoned
                {
                    return Resolution::Abandoned;
                }
            }
            let Some(wait) = wait else {
                return Resolution::Resolved;
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed(lane), if target.config.supersede => {}
                    _ = cancel.cancelled() => return Resolution::Abandoned,
                }
            }
            if !target_down {
                delivery.attempt += 1;
                budgets[at].attempts += 1;
            }
            if timed_out {
                // The recipients this attempt did not report are unknown: keep the
                // same restriction and skip those that already ended.
                let mut skip = (*delivery.skip).clone();
                skip.extend(ended);
                delivery.skip = Arc::new(skip);
            } else {
                delivery.recipients = if retry.iter().any(|(r, _)| r.is_none()) {
                    None
                } else {
                    Some(retry.into_iter().filter_map(|(r, _)| r).collect())
                };
            }
        }
    }

    /// Makes one attempt: waits for a concurrency permit, then runs the channel's
    /// `send` until it answers, makes no progress for `attempt_timeout`, or panics.
    /// `None` when the delivery is cancelled first.
    ///
    /// `attempt_timeout` is an idle timeout: every recipient a channel reports as
    /// ended (through `Delivery::progress`) restarts it, so a list of thousands of
    /// recipients paced by a provider's rate limit is not cut short, while a peer
    /// that stops answering is. When it fires, the results reported so far are kept
    /// and only the rest is retried.
    ///
    /// A panic in a channel is a bug, but a deterministic one would come back on
    /// every redelivery: exiting would crash-loop the daemon and stall every target
    /// behind one poisoned update. So it is contained: the delivery ends permanently
    /// failed, dead-lettered with the panic message (code `panic`).
    async fn attempt(
        &self,
        target: &Target,
        channel: &Arc<dyn Channel>,
        delivery: &mut Delivery,
        policy: &RetryPolicy,
        cancel: &CancellationToken,
    ) -> Option<Attempt> {
        use futures::FutureExt as _;
        let _permit = tokio::select! {
            p = target.permits.acquire() => p,
            _ = cancel.cancelled() => return None,
        };
        delivery.progress = Arc::default();
        let delivery = &*delivery;
        let started = Instant::now();
        let send = std::panic::AssertUnwindSafe(channel.send(delivery)).catch_unwind();
        tokio::pin!(send);
        // Check for progress a few times per timeout, so an attempt that moves is
        // never cut, and one that stalls is cut within 1.25 × attempt_timeout.
        let tick = (policy.attempt_timeout / 4).max(Duration::from_millis(1));
        let mut seen = 0;
        let mut last_progress = Instant::now();
        let attempt = loop {
            tokio::select! {
                r = &mut send => {
                    let outcome = r.unwrap_or_else(|panic| {
                        let message = panic_message(&*panic);
                        crate::ops::telemetry::DeliveryPanicked {
                            target: &target.config.name,
                            message: &message,
                        }
                        .emit();
                        let e = DeliveryError::permanent(format!("the channel panicked: {message}"))
                            .with_code("panic");
                        stalled_outcome(delivery, e)
                    });
                    break Attempt { outcome, timed_out: false };
                }
                _ = tokio::time::sleep(tick) => {
                    let n = delivery.progress.len();
                    if n != seen {
                        seen = n;
                        last_progress = Instant::now();
                    } else if last_progress.elapsed() >= policy.attempt_timeout {
                        let e = DeliveryError::retryable(
                            format!(
                                "no answer for {}; {} recipient(s) had ended in this attempt",
                                humantime::format_duration(policy.attempt_timeout),
                                n
                            ),
                            None,
                        )
                        .with_code("timeout");
                        break Attempt { outcome: stalled_outcome(delivery, e), timed_out: true };
                    }
                }
                _ = cancel.cancelled() => return None,
            }
        };
        crate::ops::telemetry::send_duration(
            &target.config.name,
            target.config.kind.as_str(),
            started.elapsed(),
        );
        Some(attempt)
    }

    /// Ends a delivery that a newer update of its incident made unnecessary.
    async fn superseded(
        &self,
        target: &Target,
        delivery: &Delivery,
        source: &Source,
        by: String,
        tried: Tried,
        cancel: &CancellationToken,
    ) -> Resolution {
        DeliverySuperseded {
            update: &delivery.update,
            target: &target.config.name,
            channel: target.config.kind.as_str(),
            by: &by,
        }
        .emit();
        self.report(
            target,
            delivery,
            source,
            End {
                superseded_by: Some(by),
                tried,
                ..End::default()
            },
            cancel,
        )
        .await
    }

    /// Writes one failed delivery (or one recipient of it) to the dead-letter topic,
    /// and a dead recipient to its topic. `Abandoned` if cancelled first.
    ///
    /// Boxed: its state (the letter, the report, the Kafka writes) is large, and
    /// inline it would make every delivery's future that large, though most
    /// deliveries never dead-letter.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dead_letter<'a>(
        &'a self,
        target: &'a Target,
        delivery: &'a Delivery,
        source: &'a Source,
        recipient: Option<String>,
        e: DeliveryError,
        tried: Tried,
        cancel: &'a CancellationToken,
    ) -> futures::future::BoxFuture<'a, Resolution> {
        Box::pin(self.dead_letter_inline(target, delivery, source, recipient, e, tried, cancel))
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter_inline(
        &self,
        target: &Target,
        delivery: &Delivery,
        source: &Source,
        recipient: Option<String>,
        e: DeliveryError,
        tried: Tried,
        cancel: &CancellationToken,
    ) -> Resolution {
        let letter = DeadLetter {
            source,
            kind: DlqKind::DeliveryFailed,
            reason: e.reason.clone(),
            delivery: Some(FailedDelivery {
                target: &target.config.name,
                channel: target.config.kind.as_str(),
                provider: tried.provider.map(|i| &*target.providers[i].name),
                recipient: recipient.as_deref(),
                attempts: delivery.attempt,
                error_class: e.class.as_str(),
                error_code: e.code.as_deref(),
                idempotency_key: delivery.key.as_str(),
            }),
        };
        if self.dlq.write(&letter, cancel).await.is_err() {
            return Resolution::Abandoned;
        }
        if self
            .dead_recipient(target, delivery, recipient.as_deref(), &e, cancel)
            .await
            == Resolution::Abandoned
        {
            return Resolution::Abandoned;
        }
        DeliveryDeadLettered {
            update: &delivery.update,
            channel: target.config.kind.as_str(),
            target: &target.config.name,
            recipient: recipient.as_deref(),
            attempts: delivery.attempt,
            reason: &e.reason,
            failure: failure_reason(&e),
        }
        .emit();
        self.report(
            target,
            delivery,
            source,
            End {
                recipient,
                error: Some(e),
                tried,
                ..End::default()
            },
            cancel,
        )
        .await
    }

    /// Writes a dead recipient (a `RecipientGone` failure) to its topic, for
    /// whoever owns the address book. Nothing for any other failure.
    pub(crate) async fn dead_recipient(
        &self,
        target: &Target,
        delivery: &Delivery,
        recipient: Option<&str>,
        e: &DeliveryError,
        cancel: &CancellationToken,
    ) -> Resolution {
        let (clarion_core::ErrorClass::RecipientGone, Some(topic), Some(r)) =
            (e.class, &self.dead_recipient_topic, recipient)
        else {
            return Resolution::Resolved;
        };
        let record = DeadRecipient {
            recipient: r,
            channel: target.config.kind.as_str(),
            target: &target.config.name,
            reason: &e.reason,
            code: e.code.as_deref(),
            incident_id: &delivery.update.incident_id,
            update_id: &delivery.update.update_id,
            time: jiff::Timestamp::now().to_string(),
        };
        match self.dlq.write_dead_recipient(topic, &record, cancel).await {
            Ok(_) => Resolution::Resolved,
            Err(_) => Resolution::Abandoned,
        }
    }

    /// Records how a delivery (or one recipient of it) ended: first in the ledger,
    /// acknowledged, since only then does it count as resolved; then in the metrics,
    /// the deadline clocks and the observer. `Abandoned` when cancelled before the
    /// ledger took it (it is then redelivered and recorded when it ends).
    pub(crate) async fn report(
        &self,
        target: &Target,
        d: &Delivery,
        source: &Source,
        end: End,
        cancel: &CancellationToken,
    ) -> Resolution {
        let latency = since_kafka_timestamp(source);
        let End {
            recipient,
            provider_id,
            error,
            superseded_by,
            tried,
        } = end;
        let outcome = if error.is_some() {
            "dead_lettered"
        } else if superseded_by.is_some() {
            "superseded"
        } else {
            "delivered"
        };
        if let Some(ledger) = &self.ledger {
            // Boxed: the record is large, and inline it made every delivery's
            // `report` (and so its retry loop) that much larger, though most
            // deployments write no ledger.
            let written = Box::pin(async {
                let u = &d.update;
                let record = LedgerRecord {
                    schema_version: crate::records::ledger::SCHEMA_VERSION,
                    incident_id: u.incident_id.clone(),
                    update_id: u.update_id.clone(),
                    sequence: u.sequence,
                    status: u.status.as_str().to_string(),
                    impact: u.impact.as_str().to_string(),
                    target: d.target.to_string(),
                    channel: target.config.kind.ledger_channel().to_string(),
                    audiences: d.audiences.to_vec(),
                    recipient: recipient.as_deref().map(|r| clarion_core::mask(Some(r))),
                    recipient_ref: recipient
                        .as_deref()
                        .map(|r| crate::records::ledger::recipient_ref(r, d.key.as_str())),
                    outcome: outcome.to_string(),
                    attempts: tried.count,
                    first_attempt_at: tried.first_at,
                    final_at: jiff::Timestamp::now(),
                    occurred_at: u.occurred_at,
                    published_at: source
                        .timestamp_ms
                        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()),
                    latency_ms: latency.as_millis().min(u128::from(u64::MAX)) as u64,
                    provider: tried.provider.map(|i| target.providers[i].name.to_string()),
                    drill: u.drill,
                    provider_id: provider_id.clone(),
                    error: error.as_ref().map(|e| crate::records::ledger::LedgerError {
                        class: e.class.as_str().to_string(),
                        code: e.code.clone(),
                        reason: e.reason.clone(),
                    }),
                    superseded_by: superseded_by.clone(),
                    idempotency_key: d.key.as_str().to_string(),
                    source: crate::records::ledger::SourceRef::of(source),
                };
                ledger.write(&record, cancel).await
            })
            .await;
            if written.is_err() {
                return Resolution::Abandoned;
            }
        }
        if outcome == "delivered" && d.update.drill {
            if let Some(i) = tried.provider {
                crate::ops::telemetry::drill_succeeded(
                    &target.config.name,
                    &target.providers[i].name,
                );
            }
        } else if outcome == "delivered"
            && let Some(clocks) = &self.deadlines
        {
            clocks.delivered(&d.update, &d.audiences);
        }
        let dead = error.map(|e| e.reason);
        DeliveryEnded {
            target: &d.target,
            outcome: if dead.is_some() {
                "dead_lettered"
            } else if superseded_by.is_some() {
                "superseded"
            } else {
                "delivered"
            },
            latency,
        }
        .emit();
        if let Some(tx) = &self.observer {
            let _ = Box::pin(tx.send(DeliveryReport {
                incident_id: d.update.incident_id.clone(),
                update_id: d.update.update_id.clone(),
                sequence: d.update.sequence,
                status: d.update.status,
                target: d.target.clone(),
                provider: tried.provider.map(|i| target.providers[i].name.clone()),
                recipient,
                attempts: d.attempt,
                dead_letter_reason: dead,
                superseded_by,
                latency,
            }))
            .await;
        }
        Resolution::Resolved
    }

    /// Dead-letters a record that cannot be turned into deliveries.
    pub async fn reject(&self, source: &Source, kind: DlqKind, reason: String) -> Resolution {
        let letter = DeadLetter {
            source,
            kind,
            reason,
            delivery: None,
        };
        match self.dlq.write(&letter, &self.abort).await {
            Ok(()) => {
                crate::ops::telemetry::record_dead_lettered(kind.as_str());
                Resolution::Resolved
            }
            Err(_) => Resolution::Abandoned,
        }
    }
}

/// What a drill says first, wherever a person reads it.
const DRILL_MARK: &str = "[DRILL]";
const DRILL_NOTE: &str =
    "This is a drill of the incident notification channels, not an incident. No action is needed.";

/// Marks a drill's rendered message so that nobody takes it for an incident: the
/// subject, title and text begin with `[DRILL]` (an email's text and HTML also say
/// what a drill is), and a webhook's custom JSON body gains `"drill": true` (the
/// standard envelope has it already, `clarion_webhook::payload`).
fn mark_drill(kind: crate::config::ChannelKind, content: &mut Content) {
    use crate::config::ChannelKind as K;
    for (part, text) in content.parts.iter_mut() {
        match (kind, part.as_str()) {
            (K::Webhook, "body") => {
                if let Ok(serde_json::Value::Object(mut body)) = serde_json::from_str(text) {
                    body.insert("drill".into(), serde_json::Value::Bool(true));
                    *text = serde_json::Value::Object(body).to_string();
                }
            }
            (K::Email, "text") => *text = format!("{DRILL_MARK} {DRILL_NOTE}\n\n{text}"),
            (K::Email, "html") => {
                let note = format!("<p><strong>{DRILL_MARK}</strong> {DRILL_NOTE}</p>");
                // Right after `<body …>` when there is one, else first.
                let at = text
                    .find("<body")
                    .and_then(|b| text[b..].find('>').map(|e| b + e + 1))
                    .unwrap_or(0);
                text.insert_str(at, &note);
            }
            _ => *text = format!("{DRILL_MARK} {text}"),
        }
    }
}

/// The audiences a drill is delivered for through `target` (for its templates: the
/// recipients are the target's `drill_recipients` whatever the audience), or why the
/// target does not take it. Routing rules do not apply: a drill exercises the path.
fn drill_audiences(target: &Target, update: &IncidentUpdate) -> Result<Vec<String>, &'static str> {
    if target
        .providers
        .first()
        .and_then(|p| p.drill.as_ref())
        .is_none()
    {
        return Err("the target has no drill_recipients");
    }
    if !update.drill_targets.is_empty()
        && !update
            .drill_targets
            .iter()
            .any(|t| **t == *target.config.name)
    {
        return Err("the drill is for other targets (drill_targets)");
    }
    let mut served: Vec<String> = update
        .audiences
        .iter()
        .filter(|a| target.config.audiences.contains(*a))
        .cloned()
        .collect();
    if served.is_empty() {
        served.extend(target.config.audiences.iter().next().cloned());
    }
    Ok(served)
}

/// Resolves when the newest update of the delivery's lane changes (a newer one
/// may supersede it); never without a lane.
async fn changed(lane: Option<&LaneEntry>) {
    match lane {
        Some(l) => l.head.changed.notified().await,
        None => std::future::pending().await,
    }
}

/// The provider the next attempt goes to, from `floor` on: the first whose breaker
/// lets it through now (an open one lets a probe through when one is due, which is
/// how a delivery comes back to a provider that recovered). When every one of them
/// is open, waits for the last one's breaker, or for any change.
async fn choose(target: &Target, floor: usize) -> (usize, Pass) {
    let last = target.providers.len() - 1;
    loop {
        for i in floor..=last {
            if let Some(pass) = target.breakers.get(i).try_pass() {
                return (i, pass);
            }
        }
        tokio::select! {
            pass = target.breakers.get(last).pass() => return (last, pass),
            _ = target.breakers.changed() => {}
        }
    }
}

/// How an attempt went for the target as a whole: down when nothing got through
/// and every failure was transient.
fn verdict_of(outcome: &Outcome) -> Verdict {
    let all_transient = !outcome.results.is_empty()
        && outcome
            .results
            .iter()
            .all(|r| r.result.as_ref().is_err_and(DeliveryError::is_retryable));
    if all_transient {
        Verdict::TargetDown
    } else {
        Verdict::TargetUp
    }
}

/// The `reason` label of `clarion_notifications_failed_total`.
fn failure_reason(e: &DeliveryError) -> &'static str {
    match e.code.as_deref() {
        Some("template") => return "template",
        Some("panic") => return "panic",
        Some("outage") => return "outage",
        _ => {}
    }
    match e.class {
        clarion_core::ErrorClass::Permanent => "permanent",
        clarion_core::ErrorClass::RecipientGone => "recipient_gone",
        clarion_core::ErrorClass::Retryable { .. } => "retries_exhausted",
    }
}

/// What one attempt gave.
struct Attempt {
    outcome: Outcome,
    /// The attempt was cut by `attempt_timeout`: `outcome` holds only what the
    /// channel reported before, plus one recipient-less error for the rest.
    timed_out: bool,
}

/// The outcome of an attempt that did not finish: what the channel reported as
/// ended, plus `e` for every recipient it did not report. Recipients the channel
/// reported as retryable are dropped: the retry covers them with everyone else.
fn stalled_outcome(delivery: &Delivery, e: DeliveryError) -> Outcome {
    let mut results: Vec<RecipientResult> = delivery
        .progress
        .take()
        .into_iter()
        .filter(|r| !r.result.as_ref().is_err_and(DeliveryError::is_retryable))
        .collect();
    results.push(RecipientResult {
        recipient: None,
        result: Err(e),
    });
    Outcome { results }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// The ceilings of successive backoffs: exponential from `initial_backoff`, doubling,
/// capped at `max_backoff`, without end (the attempt and time limits end it).
fn backoff_ceilings(policy: &RetryPolicy) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(policy.initial_backoff)
        .with_max_delay(policy.max_backoff)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// "Full jitter" (AWS Architecture Blog, "Exponential Backoff and Jitter"): a wait
/// drawn uniformly from zero to the ceiling, which spreads the retries of many
/// deliveries that failed together. backon's own jitter only adds on top of the
/// ceiling, so the draw is done here.
fn full_jitter(ceiling: Duration) -> Duration {
    let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..=nanos))
}

fn since_kafka_timestamp(source: &Source) -> Duration {
    let now = jiff::Timestamp::now().as_millisecond();
    match source.timestamp_ms {
        Some(ts) if ts > 0 && now >= ts => Duration::from_millis((now - ts) as u64),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChannelConfig, ChannelKind, TargetConfig};
    use clarion_core::{Receipt, RecipientResult, samples};

    /// One scripted answer: per recipient, success or an error class.
    type Step = Vec<(Option<&'static str>, Result<(), ErrorClassKind>)>;
    /// What the channel was asked: update id, attempt, recipients restriction.
    type Call = (String, u32, Option<Vec<String>>);

    /// A channel that answers from a script and records what it was asked.
    #[derive(Debug, Default)]
    struct Scripted {
        /// Per call; the last repeats.
        script: Vec<Step>,
        calls: Mutex<Vec<Call>>,
        /// Make the first update of each incident slow, to tempt reordering.
        slow_first: bool,
        /// Update ids in the order their sends finished.
        finished: Mutex<Vec<String>>,
    }

    #[derive(Debug, Clone, Copy)]
    enum ErrorClassKind {
        Retry,
        Permanent,
    }

    #[async_trait::async_trait]
    impl Channel for Scripted {
        async fn send(&self, d: &Delivery) -> Outcome {
            let n = {
                let mut calls = self.calls.lock().expect("calls");
                calls.push((d.update.update_id.clone(), d.attempt, d.recipients.clone()));
                calls.len() - 1
            };
            if self.slow_first && d.update.sequence == 1 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            self.finished
                .lock()
                .expect("finished")
                .push(d.update.update_id.clone());
            let step = self
                .script
                .get(n)
                .or(self.script.last())
                .cloned()
                .unwrap_or_default();
            Outcome {
                results: step
                    .into_iter()
                    .filter(|(r, _)| match (&d.recipients, r) {
                        (Some(only), Some(r)) => only.iter().any(|o| o == r),
                        _ => true,
                    })
                    .map(|(r, res)| RecipientResult {
                        recipient: r.map(str::to_string),
                        result: match res {
                            Ok(()) => Ok(Receipt::default()),
                            Err(ErrorClassKind::Retry) => {
                                Err(DeliveryError::retryable("busy", None))
                            }
                            Err(ErrorClassKind::Permanent) => {
                                Err(DeliveryError::permanent("no such user"))
                            }
                        },
                    })
                    .collect(),
            }
        }
        async fn healthcheck(&self) -> Result<(), DeliveryError> {
            Ok(())
        }
    }

    fn dispatcher(
        channel: Arc<Scripted>,
        observer: mpsc::Sender<DeliveryReport>,
    ) -> (
        Dispatcher,
        rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    ) {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        let producer: rdkafka::producer::FutureProducer<crate::ops::health::ProducerCtx> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap_servers())
                .create_with_context(crate::ops::health::ProducerCtx)
                .expect("producer");
        let webhook: clarion_webhook::WebhookConfig =
            serde_json::from_value(serde_json::json!({"url": "http://127.0.0.1:1/"}))
                .expect("config");
        let config = TargetConfig {
            name: Arc::from("t"),
            kind: ChannelKind::Webhook,
            audiences: ["customers".to_string()].into(),
            retry: RetryPolicy {
                initial_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                ..RetryPolicy::default()
            },
            concurrency: 8,
            rules: Vec::new(),
            locale: None,
            supersede: false,
            start: crate::config::StartAt::Latest,
            breaker: crate::engine::breaker::BreakerConfig::default(),
            max_in_flight: None,
            channel: ChannelConfig::Webhook(webhook),
            provider_name: Arc::from("primary"),
            backups: Vec::new(),
            failover_after: crate::config::DEFAULT_FAILOVER_AFTER,
            drill: None,
            people: None,
        };
        let templates = clarion_render::TemplateSet::build(&Default::default(), Vec::new())
            .expect("built-in templates");
        let d = Dispatcher::new(
            vec![Target::new(config, channel)],
            ["customers".to_string()].into(),
            Arc::new(templates),
            Outputs {
                dlq: DeadLetterWriter::new(producer, "dlq".into()),
                dead_recipient_topic: None,
                observer: Some(observer),
            },
            CancellationToken::new(),
        );
        (d, cluster)
    }

    fn source() -> Source {
        Source {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            payload: b"{}".to_vec(),
            headers: vec![],
        }
    }

    #[tokio::test]
    async fn a_retry_goes_only_to_the_recipients_that_failed_transiently() {
        let channel = Arc::new(Scripted {
            script: vec![
                vec![
                    (Some("a"), Ok(())),
                    (Some("b"), Err(ErrorClassKind::Retry)),
                    (Some("c"), Err(ErrorClassKind::Permanent)),
                ],
                vec![(Some("b"), Ok(()))],
            ],
            ..Scripted::default()
        });
        let (tx, mut rx) = mpsc::channel(16);
        let (d, _cluster) = dispatcher(channel.clone(), tx);
        let update = Arc::new(
            samples::lifecycle("I", "t", &["customers"], jiff::Timestamp::now()).remove(0),
        );
        let plans = d.plan(&update).expect("plan");
        let src = source();
        let cancel = CancellationToken::new();
        let runs: Vec<_> = plans.into_iter().map(|p| d.run(p, &src, &cancel)).collect();
        assert_eq!(
            futures::future::join_all(runs).await,
            vec![Resolution::Resolved]
        );
        let calls = channel.calls.lock().expect("calls").clone();
        assert_eq!(
            calls
                .iter()
                .map(|(_, a, r)| (*a, r.clone()))
                .collect::<Vec<_>>(),
            vec![(1, None), (2, Some(vec!["b".to_string()]))]
        );
        drop(d);
        let mut reports = Vec::new();
        while let Some(r) = rx.recv().await {
            reports.push((
                r.recipient.unwrap_or_default(),
                r.attempts,
                r.dead_letter_reason.is_some(),
            ));
        }
        reports.sort();
        assert_eq!(
            reports,
            vec![
                ("a".into(), 1, false),
                ("b".into(), 2, false),
                ("c".into(), 1, true)
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_incident_reaches_a_target_in_order_even_when_the_first_is_slow() {
        let channel = Arc::new(Scripted {
            script: vec![vec![(None, Ok(()))]],
            slow_first: true,
            ..Scripted::default()
        });
        let (tx, _rx) = mpsc::channel(64);
        let (d, _cluster) = dispatcher(channel.clone(), tx);
        let d = Arc::new(d);
        let src = Arc::new(source());
        let mut handles = Vec::new();
        // Plan in consumption order (as the consumer loop does), run concurrently.
        for u in samples::lifecycle("I", "t", &["customers"], jiff::Timestamp::now()) {
            let plans = d.plan(&Arc::new(u)).expect("plan");
            for p in plans {
                let (d, src) = (d.clone(), src.clone());
                handles.push(tokio::spawn(async move {
                    d.run(p, &src, &CancellationToken::new()).await
                }));
            }
        }
        for h in handles {
            assert_eq!(h.await.expect("task"), Resolution::Resolved);
        }
        // Without lanes, u2..u4 would finish while u1 sleeps.
        let order = channel.finished.lock().expect("finished").clone();
        assert_eq!(order, vec!["I-u1", "I-u2", "I-u3", "I-u4"]);
        assert!(d.lanes.lock().is_empty(), "finished lanes are removed");
    }

    /// A channel whose peer hints an absurd `Retry-After`, or panics, or paces its
    /// recipients: the behaviours that used to freeze a partition.
    #[derive(Debug)]
    enum Odd {
        HugeRetryAfter,
        Panics,
        /// `n` recipients `r0..`, each taking `each`; records what it sent.
        Paced {
            n: usize,
            each: Duration,
            sent: Mutex<Vec<String>>,
        },
    }

    #[async_trait::async_trait]
    impl Channel for Odd {
        async fn send(&self, d: &Delivery) -> Outcome {
            match self {
                Odd::HugeRetryAfter => Outcome::single(Err(DeliveryError::retryable(
                    "503",
                    Some(Duration::from_secs(u64::MAX)),
                ))),
                Odd::Panics => panic!("peer said something unexpected"),
                Odd::Paced { n, each, sent } => {
                    let mut results = Vec::new();
                    for r in (0..*n).map(|i| format!("r{i}")) {
                        if !d.wants(&r) {
                            continue;
                        }
                        tokio::time::sleep(*each).await;
                        sent.lock().expect("sent").push(r.clone());
                        results.push(d.finish(RecipientResult {
                            recipient: Some(r),
                            result: Ok(Receipt::default()),
                        }));
                    }
                    Outcome { results }
                }
            }
        }
        async fn healthcheck(&self) -> Result<(), DeliveryError> {
            Ok(())
        }
    }

    async fn run_one(channel: Arc<dyn Channel>, retry: RetryPolicy) -> Vec<DeliveryReport> {
        run_failover(
            vec![("primary", channel)],
            retry,
            crate::config::DEFAULT_FAILOVER_AFTER,
            |_| {},
        )
        .await
    }

    #[tokio::test]
    async fn a_retry_after_of_u64_max_ends_in_a_dead_letter_not_a_panic() {
        let reports = run_one(Arc::new(Odd::HugeRetryAfter), RetryPolicy::default()).await;
        assert_eq!(reports.len(), 1);
        let reason = reports[0]
            .dead_letter_reason
            .as_deref()
            .expect("dead-lettered");
        assert!(reason.contains("max_elapsed"), "{reason}");
    }

    /// Runs one update through a target with these providers, in order.
    async fn run_failover(
        providers: Vec<(&str, Arc<dyn Channel>)>,
        retry: RetryPolicy,
        failover_after: Duration,
        before: impl FnOnce(&Target),
    ) -> Vec<DeliveryReport> {
        let (tx, mut rx) = mpsc::channel(4096);
        let (mut d, _cluster) = dispatcher(Arc::new(Scripted::default()), tx);
        let mut config = d.targets[0].config.clone();
        config.retry = retry;
        config.failover_after = failover_after;
        d.targets = vec![Target::with_providers(
            config,
            providers
                .into_iter()
                .map(|(n, c)| crate::config::BuiltProvider {
                    name: Arc::from(n),
                    channel: c,
                    drill: None,
                })
                .collect(),
        )];
        before(&d.targets[0]);
        let update = Arc::new(
            samples::lifecycle("I", "t", &["customers"], jiff::Timestamp::now()).remove(0),
        );
        let src = source();
        for p in d.plan(&update).expect("plan") {
            assert_eq!(
                d.run(p, &src, &CancellationToken::new()).await,
                Resolution::Resolved
            );
        }
        drop(d);
        let mut reports = Vec::new();
        while let Some(r) = rx.recv().await {
            reports.push(r);
        }
        reports.sort_by(|a, b| a.recipient.cmp(&b.recipient));
        reports
    }

    fn fast_retry(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        }
    }

    /// (recipient, provider, dead-lettered) per report.
    fn who_and_how(reports: &[DeliveryReport]) -> Vec<(String, String, bool)> {
        reports
            .iter()
            .map(|r| {
                (
                    r.recipient.clone().unwrap_or_default(),
                    r.provider.as_deref().unwrap_or("-").to_string(),
                    r.dead_letter_reason.is_some(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_transient_failure_past_failover_after_moves_on_but_a_permanent_one_does_not() {
        let primary = Arc::new(Scripted {
            script: vec![vec![
                (Some("a"), Err(ErrorClassKind::Retry)),
                (Some("b"), Ok(())),
                (Some("c"), Err(ErrorClassKind::Permanent)),
            ]],
            ..Scripted::default()
        });
        let backup = Arc::new(Scripted {
            script: vec![vec![(Some("a"), Ok(())), (Some("c"), Ok(()))]],
            ..Scripted::default()
        });
        let reports = run_failover(
            vec![("twilio", primary.clone()), ("smpp", backup.clone())],
            fast_retry(10),
            Duration::ZERO,
            |_| {},
        )
        .await;
        assert_eq!(
            who_and_how(&reports),
            vec![
                ("a".into(), "smpp".into(), false),
                ("b".into(), "twilio".into(), false),
                // A bad recipient is bad everywhere: not sent through the backup.
                ("c".into(), "twilio".into(), true),
            ]
        );
        assert_eq!(primary.calls.lock().expect("calls").len(), 1);
        let backup_calls = backup.calls.lock().expect("calls").clone();
        assert_eq!(backup_calls.len(), 1);
        assert_eq!(
            backup_calls[0].2,
            Some(vec!["a".to_string()]),
            "only a moves"
        );
    }

    #[tokio::test]
    async fn an_open_breaker_sends_the_delivery_to_the_backup_without_trying_the_primary() {
        let primary = Arc::new(Scripted {
            script: vec![vec![(None, Ok(()))]],
            ..Scripted::default()
        });
        let backup = Arc::new(Scripted {
            script: vec![vec![(None, Ok(()))]],
            ..Scripted::default()
        });
        let reports = run_failover(
            vec![("relay-a", primary.clone()), ("relay-b", backup.clone())],
            fast_retry(10),
            Duration::from_secs(3600),
            |t| {
                let b = t.breakers.get(0);
                for _ in 0..t.config.breaker.failures {
                    b.record(Pass::Go, Verdict::TargetDown, "connection refused");
                }
                assert!(b.is_open() && !t.breakers.is_open(), "one provider down");
            },
        )
        .await;
        assert_eq!(
            who_and_how(&reports),
            vec![("".into(), "relay-b".into(), false)]
        );
        assert!(primary.calls.lock().expect("calls").is_empty());
    }

    #[tokio::test]
    async fn the_retry_budget_applies_per_provider_and_the_last_one_dead_letters() {
        let failing = || {
            Arc::new(Scripted {
                script: vec![vec![(None, Err(ErrorClassKind::Retry))]],
                ..Scripted::default()
            })
        };
        let (primary, backup) = (failing(), failing());
        let reports = run_failover(
            vec![("one", primary.clone()), ("two", backup.clone())],
            fast_retry(2),
            Duration::from_secs(3600),
            |_| {},
        )
        .await;
        assert_eq!(who_and_how(&reports), vec![("".into(), "two".into(), true)]);
        assert_eq!(primary.calls.lock().expect("calls").len(), 2);
        assert_eq!(backup.calls.lock().expect("calls").len(), 2);
        assert_eq!(reports[0].attempts, 4, "attempts count across providers");
    }

    #[tokio::test]
    async fn a_panicking_channel_is_dead_lettered_with_the_panic_message() {
        let reports = run_one(Arc::new(Odd::Panics), RetryPolicy::default()).await;
        assert_eq!(reports.len(), 1);
        let reason = reports[0]
            .dead_letter_reason
            .as_deref()
            .expect("dead-lettered");
        assert!(
            reason.contains("peer said something unexpected"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn attempt_timeout_is_per_recipient_and_a_long_list_is_sent_once_each() {
        // 1,200 recipients at 1 ms or more each: well past a 400 ms attempt timeout
        // in all, yet each recipient answers well within it.
        let channel = Arc::new(Odd::Paced {
            n: 1200,
            each: Duration::from_millis(1),
            sent: Mutex::default(),
        });
        let retry = RetryPolicy {
            attempt_timeout: Duration::from_millis(400),
            ..RetryPolicy::default()
        };
        let reports = run_one(channel.clone(), retry).await;
        let Odd::Paced { sent, .. } = &*channel else {
            unreachable!()
        };
        let sent = sent.lock().expect("sent").clone();
        assert_eq!(sent.len(), 1200, "each recipient exactly once");
        assert_eq!(reports.len(), 1200);
        assert!(
            reports
                .iter()
                .all(|r| r.dead_letter_reason.is_none() && r.attempts == 1)
        );
    }

    #[tokio::test]
    async fn a_timed_out_attempt_keeps_its_progress_and_retries_only_the_rest() {
        // Recipients take 5 ms each with a 400 ms idle timeout, except that the
        // channel stalls for ever after the 5th on its first attempt.
        #[derive(Debug, Default)]
        struct StallsOnce {
            sent: Mutex<Vec<(u32, String)>>,
        }
        #[async_trait::async_trait]
        impl Channel for StallsOnce {
            async fn send(&self, d: &Delivery) -> Outcome {
                let mut results = Vec::new();
                for (i, r) in (0..10).map(|i| (i, format!("r{i}"))) {
                    if !d.wants(&r) {
                        continue;
                    }
                    if d.attempt == 1 && i == 5 {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    self.sent.lock().expect("sent").push((d.attempt, r.clone()));
                    results.push(d.finish(RecipientResult {
                        recipient: Some(r),
                        result: Ok(Receipt::default()),
                    }));
                }
                Outcome { results }
            }
            async fn healthcheck(&self) -> Result<(), DeliveryError> {
                Ok(())
            }
        }
        let channel = Arc::new(StallsOnce::default());
        let retry = RetryPolicy {
            attempt_timeout: Duration::from_millis(400),
            initial_backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        };
        let reports = run_one(channel.clone(), retry).await;
        let sent = channel.sent.lock().expect("sent").clone();
        let mut names: Vec<&str> = sent.iter().map(|(_, r)| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(sent.len(), 10, "nobody twice: {sent:?}");
        assert_eq!(names.len(), 10);
        assert!(sent.iter().take(5).all(|(a, _)| *a == 1));
        assert!(sent.iter().skip(5).all(|(a, _)| *a == 2));
        assert_eq!(reports.len(), 10);
        assert!(reports.iter().all(|r| r.dead_letter_reason.is_none()));
    }

    #[test]
    fn backoff_ceilings_double_and_cap() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let got: Vec<u64> = backoff_ceilings(&policy)
            .take(5)
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(got, vec![1, 2, 4, 5, 5]);
        for _ in 0..1000 {
            assert!(full_jitter(Duration::from_millis(10)) <= Duration::from_millis(10));
        }
    }
}
