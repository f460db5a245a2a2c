//! The escalation engine: drives the cases of the partitions this replica owns
//! (`owner.rs`) from the confirmation state (`confirm`): records confirmations,
//! runs an escalation's steps (`plan.rs` decides, `run.rs` does), and closes each
//! case at its deadline with every recipient's outcome in the ledger.
//!
//! Timers are the state: a person's next send is due at their cursor's `next_at`,
//! a case closes at its header's `deadline`, both in the topic; the engine only
//! looks at the clock. A send's cursor is written (acknowledged) before the send
//! and the send's idempotency key is the cursor's, so after a restart or a
//! takeover the same send is made again at most, never a second step.

mod owner;
pub mod plan;
mod run;

use crate::config::{Settings, step_channel};
use crate::confirm::ConfirmStore;
use crate::engine::dispatch::{Dispatcher, Outputs, Target};
use crate::records::confirmations::ConfirmationLedger;
use anyhow::{Context as _, Result};
use clarion_confirm::CaseId;
use clarion_core::SecretResolver;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often due timers are looked for (besides every change of the state).
const TICK: Duration = Duration::from_millis(250);

/// The channels steps send through: a dispatcher of the targets and legs the
/// policies name, built as the target streams build theirs.
#[derive(Debug)]
struct Sender {
    dispatcher: Dispatcher,
    by_name: HashMap<String, usize>,
}

/// The engine of one process.
#[derive(Debug)]
pub struct Engine {
    store: Arc<ConfirmStore>,
    ledger: ConfirmationLedger,
    outputs: Outputs,
    sender: RwLock<Arc<Sender>>,
    owned: Arc<owner::Owned>,
    busy: Mutex<HashSet<CaseId>>,
}

/// The consumer group that assigns cases to replicas.
pub fn group(settings: &Settings) -> String {
    format!("{}.confirm", settings.kafka.group_id)
}

impl Engine {
    /// Builds the steps' channels and joins the group; call [`Engine::run`].
    pub fn start(
        settings: &Settings,
        store: Arc<ConfirmStore>,
        ledger: ConfirmationLedger,
        outputs: Outputs,
        secrets: &dyn SecretResolver,
        cancel: CancellationToken,
    ) -> Result<Arc<Engine>> {
        let sender = build_sender(settings, &outputs, &ledger, secrets)?;
        let owned = Arc::new(owner::Owned::default());
        let mut config = crate::kafka::consumer_config(&settings.kafka, secrets)?;
        config
            .set("group.id", group(settings))
            .set("enable.auto.commit", "false")
            .remove("statistics.interval.ms");
        if let Some(id) = &settings.kafka.instance_id {
            config.set("group.instance.id", format!("{id}.confirm"));
        }
        owner::start(
            config,
            store.topic.clone(),
            owned.clone(),
            settings.daemon.rebalance_drain,
            cancel,
        )
        .context("cannot join the confirmation group")?;
        Ok(Arc::new(Engine {
            store,
            ledger,
            outputs,
            sender: RwLock::new(Arc::new(sender)),
            owned,
            busy: Mutex::default(),
        }))
    }

    /// Takes a reloaded config's channels for the sends from now on; running
    /// escalations keep their policy and people (fixed in their case).
    pub fn reload(&self, settings: &Settings, secrets: &dyn SecretResolver) -> Result<()> {
        let sender = build_sender(settings, &self.outputs, &self.ledger, secrets)?;
        *self.sender.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sender);
        Ok(())
    }

    fn sender(&self) -> Arc<Sender> {
        self.sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drives owned cases until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if !self.store.ready(&cancel).await {
            return;
        }
        tracing::info!(topic = %self.store.topic, "confirmation engine started");
        loop {
            let changed = self.store.changed.notified();
            let now = jiff::Timestamp::now();
            for (partition, token, busy) in self.owned.driven(|p| self.store.position(p)) {
                let due: Vec<CaseId> = self.store.read(|v| {
                    v.in_partition(partition)
                        .filter(|(_, c)| plan::next(c, now).is_some())
                        .map(|(id, _)| *id)
                        .collect()
                });
                for id in due {
                    if !self
                        .busy
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id)
                    {
                        continue;
                    }
                    busy.fetch_add(1, Ordering::SeqCst);
                    let engine = self.clone();
                    let token = token.clone();
                    let busy = busy.clone();
                    tokio::spawn(async move {
                        engine.work(id, &token).await;
                        engine
                            .busy
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                        busy.fetch_sub(1, Ordering::SeqCst);
                        engine.store.changed.notify_waiters();
                    });
                }
            }
            self.gauges();
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    /// `clarion_confirmations_open` and `clarion_confirmations_overdue` per target.
    fn gauges(&self) {
        let now = jiff::Timestamp::now();
        let (open, overdue) = self.store.read(|v| {
            let mut open: HashMap<String, u64> = HashMap::new();
            let mut overdue: HashMap<String, u64> = HashMap::new();
            for (_, c) in v.open() {
                if let Some(h) = &c.header {
                    *open.entry(h.target.clone()).or_default() += 1;
                    if now > h.deadline && !c.met() {
                        *overdue.entry(h.target.clone()).or_default() += 1;
                    }
                }
            }
            (open, overdue)
        });
        crate::ops::telemetry::confirmation_gauges(&open, &overdue);
    }
}

/// The kind of address a step's channel sends to, by its target's kind.
fn address_kind(kind: crate::config::ChannelKind) -> Option<&'static str> {
    use crate::config::ChannelKind as K;
    match kind {
        K::Email => Some("email"),
        K::Sms => Some("sms"),
        K::Fcm | K::Apns => Some("push"),
        _ => None,
    }
}

fn build_sender(
    settings: &Settings,
    outputs: &Outputs,
    _ledger: &ConfirmationLedger,
    secrets: &dyn SecretResolver,
) -> Result<Sender> {
    let mut names: Vec<&String> = settings
        .confirmations
        .escalations
        .values()
        .flat_map(|steps| steps.iter().flat_map(|s| s.channels.iter()))
        .collect();
    names.sort();
    names.dedup();
    let mut targets = Vec::new();
    let mut by_name = HashMap::new();
    for name in names {
        let Some(config) = step_channel(&settings.targets, name) else {
            continue;
        };
        let target = Target::build(config.clone(), secrets)
            .with_context(|| format!("escalation channel `{name}`"))?;
        by_name.insert(name.clone(), targets.len());
        targets.push(target);
    }
    let records = crate::records::ledger::Records::new(settings, &outputs.dlq);
    let dispatcher = Dispatcher::new(
        targets,
        settings.audiences.clone(),
        settings.templates.clone(),
        outputs.clone(),
        CancellationToken::new(),
    )
    .with_ledger(records.ledger);
    Ok(Sender {
        dispatcher,
        by_name,
    })
}
