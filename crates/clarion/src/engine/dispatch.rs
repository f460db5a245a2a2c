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

use crate::config::{ChannelKind, RetryPolicy, TargetConfig};
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

mod confirm;
mod providers;
mod resolve;
pub(crate) mod retry;
#[cfg(test)]
mod tests;
mod walk;

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
    /// `clarion dlq replay`'s dispatcher: its ledger records say `replayed`.
    replaying: bool,
    /// The status page's timelines (the events stream's dispatcher only).
    pages: Option<Arc<crate::statuspage::PageSupport>>,
    /// Confirmation requests' state, for targets that ask (`confirm.rs`).
    pub(crate) confirm: Option<Arc<crate::confirm::store::ConfirmHook>>,
}

/// One target's routing, as the events stream sees it: enough to know that the
/// target takes an update, and to write the `due` record that says so.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: Arc<str>,
    /// The ledger's `channel` (`ConfigKind::ledger_channel`).
    pub channel: &'static str,
    pub audiences: BTreeSet<String>,
    pub rules: Vec<clarion_render::Rule>,
    /// The target has `drill_recipients`.
    pub drillable: bool,
}

impl Route {
    pub fn of(t: &TargetConfig) -> Self {
        Route {
            target: t.name.clone(),
            channel: t.kind.ledger_channel(),
            audiences: t.audiences.clone(),
            rules: t.rules.clone(),
            drillable: t.drill.is_some(),
        }
    }

    /// The audiences this target serves for `update`, when it takes it: routing for
    /// an update, `drill_targets` and `drill_recipients` for a drill (as
    /// [`drill_audiences`] decides in the target's own stream).
    pub fn takes(&self, update: &IncidentUpdate) -> Option<Vec<String>> {
        if !update.drill {
            let d = clarion_render::route(update, &self.audiences, &self.rules);
            return d.matched.then_some(d.audiences);
        }
        if !self.drillable
            || (!update.drill_targets.is_empty()
                && !update.drill_targets.iter().any(|t| **t == *self.target))
        {
            return None;
        }
        let mut served: Vec<String> = update
            .audiences
            .iter()
            .filter(|a| self.audiences.contains(*a))
            .cloned()
            .collect();
        if served.is_empty() {
            served.extend(self.audiences.iter().next().cloned());
        }
        Some(served)
    }
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

impl Tried {
    /// The provider (index into `Target::providers`) of the last attempt.
    pub(crate) fn provider(&self) -> Option<usize> {
        self.provider
    }
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
            replaying: false,
            pages: None,
            confirm: None,
        }
    }

    /// Lets the target ask its recipients to confirm (docs/confirmations.md).
    pub fn with_confirm(
        mut self,
        confirm: Option<Arc<crate::confirm::store::ConfirmHook>>,
    ) -> Self {
        self.confirm = confirm;
        self
    }

    /// Marks every ledger record this dispatcher writes as `replayed`
    /// (`clarion dlq replay`).
    pub fn replaying(mut self) -> Self {
        self.replaying = true;
        self
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

    /// Records each update the status page shows in its incident's public
    /// timeline (`statuspage.rs`) before the update resolves.
    pub fn with_pages(mut self, pages: Option<Arc<crate::statuspage::PageSupport>>) -> Self {
        self.pages = pages;
        self
    }

    /// Writes a checked update (not a drill) to the incident-state topic, when there is one,
    /// and to the status page's topic, when the page shows it;
    /// `Abandoned` when cancelled before the broker acknowledged it.
    pub async fn record_state(
        &self,
        update: &IncidentUpdate,
        source: &Source,
        cancel: &CancellationToken,
    ) -> Resolution {
        if let Some(pages) = self.pages.as_ref().filter(|_| !update.drill)
            && pages.record(update, cancel).await.is_err()
        {
            return Resolution::Abandoned;
        }
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
        // A delivery to recipients ends with a record of its own end, so that a
        // reader knows no more recipients' records follow; a webhook's one outcome
        // says it already.
        let ends =
            (self.ledger.is_some() && target.config.kind != ChannelKind::Webhook).then(|| {
                (
                    planned.delivery.target.clone(),
                    planned.delivery.audiences.clone(),
                )
            });
        let span = tracing::info_span!(
            "delivery",
            incident_id = %update.incident_id,
            update_id = %update.update_id,
            target = %target.config.name,
            channel = target.config.kind.as_str(),
        );
        let mut resolution = self
            .run_inner(planned, target, source, cancel)
            .instrument(span.clone())
            .await;
        if resolution == Resolution::Resolved
            && let Some((name, audiences)) = ends
        {
            resolution = self
                .resolved(target, &update, &name, &audiences, source, cancel)
                .await;
        }
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
        if target.config.kind == crate::config::ChannelKind::Escalation {
            if let Some(prev) = after {
                tokio::select! {
                    _ = prev => {}
                    _ = cancel.cancelled() => return Resolution::Abandoned,
                }
            }
            let _lane = lane;
            return Box::pin(self.open_escalation(target, &delivery, source, cancel)).await;
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
        if self.confirm.is_some() {
            match Box::pin(self.open_case(target, &delivery, source, cancel)).await {
                Ok(ways) => delivery.confirm = ways,
                Err(_) => return Resolution::Abandoned,
            }
        }
        self.retry_loop(target, &mut delivery, source, cancel, Some(&lane), None)
            .await
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
