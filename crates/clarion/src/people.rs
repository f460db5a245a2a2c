//! People targets: the members of a directory audience, each reached once per
//! update on the first of their channels that works (docs/backups.md).
//!
//! A people target walks its audience's members in id order, in batches of
//! `batch_size`, a few batches at once. Each batch goes through the target's legs
//! in `fallback` order: one delivery per leg, addressed to the batch's addresses
//! of that kind (`Delivery::direct`), retried and failed over like any delivery.
//! Whoever a leg could not reach (permanent, recipient gone, out of budget, or the
//! leg down) is handed to their next leg; whoever has none left is dead-lettered.
//! Memory per update is the batches under way, whatever the audience's size.
//!
//! How far each walk got is written to the progress topic after each batch (in
//! order), so a restart resumes after the last batch that finished: at most the
//! batches under way at a crash are sent again. A dead address found on the way
//! is removed from the directory (and written back to its topic).

use crate::config::{DirectorySettings, DirectorySource, KafkaConfig};
use crate::directory::{AddressKind, Directory, Person};
use crate::engine::dispatch::{Dispatcher, LaneEntry, LegSink, Resolution, Target};
use crate::records::dlq::Source;
use anyhow::{Context, Result};
use clarion_core::{Content, Delivery, DeliveryError, ErrorClass, SecretResolver};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How far one people target's walk of one update got (`directory.progress_topic`,
/// keyed `TARGET/UPDATE_ID`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Walked {
    /// The id of the last person of the last batch that finished, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// People reached so far.
    #[serde(default)]
    pub reached: u64,
    /// Every member was walked: a redelivery of the update sends nothing.
    #[serde(default)]
    pub done: bool,
}

/// What the people targets share: the directory, the walks' progress, and where
/// to write both.
pub struct PeopleSupport {
    directory: RwLock<Arc<Directory>>,
    progress: Mutex<HashMap<String, Walked>>,
    progress_topic: String,
    /// The directory's topic, when it is one: dead addresses are written back.
    directory_topic: Option<String>,
    batch_size: usize,
    batches_in_flight: usize,
    /// True once the directory and the progress topics were read to their ends.
    ready: watch::Receiver<bool>,
    /// The config's audiences, which a directory topic's records are checked against.
    audiences: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for PeopleSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeopleSupport")
            .field("people", &self.directory().len())
            .field("progress_topic", &self.progress_topic)
            .finish()
    }
}

impl PeopleSupport {
    /// Starts following the directory topic (when it is one) and the progress
    /// topic; the people targets' walks wait until both were read to their end.
    pub fn start(
        settings: &DirectorySettings,
        audiences: &std::collections::BTreeSet<String>,
        kafka: &KafkaConfig,
        secrets: &dyn SecretResolver,
        cancel: CancellationToken,
    ) -> Result<Arc<PeopleSupport>> {
        let (ready_tx, ready) = watch::channel(false);
        let directory = match &settings.source {
            DirectorySource::File(_) => settings.people.clone().unwrap_or_default(),
            DirectorySource::Topic(_) => Arc::new(Directory::new()),
        };
        let support = Arc::new(PeopleSupport {
            directory: RwLock::new(directory),
            progress: Mutex::default(),
            progress_topic: settings.progress_topic.clone(),
            directory_topic: match &settings.source {
                DirectorySource::Topic(t) => Some(t.clone()),
                DirectorySource::File(_) => None,
            },
            batch_size: settings.batch_size,
            batches_in_flight: settings.batches_in_flight,
            ready,
            audiences: audiences.clone(),
        });
        let mut waits = Vec::new();
        let weak = Arc::downgrade(&support);
        waits.push(follow(
            kafka,
            secrets,
            &settings.progress_topic,
            move |key, value| {
                if let Some(s) = weak.upgrade() {
                    s.apply_progress(key, value);
                }
            },
            cancel.clone(),
        )?);
        if let Some(topic) = &support.directory_topic {
            let weak = Arc::downgrade(&support);
            let topic_name = topic.clone();
            waits.push(follow(
                kafka,
                secrets,
                topic,
                move |key, value| {
                    if let Some(s) = weak.upgrade() {
                        s.apply_person(&topic_name, key, value);
                    }
                },
                cancel.clone(),
            )?);
        }
        tokio::spawn(async move {
            for mut w in waits {
                if w.wait_for(|r| *r).await.is_err() {
                    return;
                }
            }
            let _ = ready_tx.send(true);
        });
        support.gauge();
        Ok(support)
    }

    /// The directory as it is now (a file's, until the next reload; a topic's,
    /// kept up to date as records arrive).
    pub fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes a reloaded file's people (SIGHUP). A topic's directory is not
    /// replaced: the topic is its source.
    pub fn reload(&self, settings: &DirectorySettings) {
        if let (None, Some(people)) = (&self.directory_topic, &settings.people) {
            *self.directory.write().unwrap_or_else(|e| e.into_inner()) = people.clone();
            tracing::info!(people = people.len(), "directory file read again");
            self.gauge();
        }
    }

    fn gauge(&self) {
        metrics::gauge!("clarion_directory_people").set(self.directory().len() as f64);
    }

    fn apply_progress(&self, key: &str, value: Option<&[u8]>) {
        let mut map = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        match value.map(serde_json::from_slice::<Walked>) {
            None => {
                map.remove(key);
            }
            Some(Ok(w)) => {
                // Replicas write in order for a key they own; a late copy of an
                // older record must not move a walk back.
                let entry = map.entry(key.to_string()).or_default();
                if w.done || (!entry.done && w.reached >= entry.reached) {
                    *entry = w;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(key, error = %e, topic = %self.progress_topic, "progress record is not one Clarion writes; ignored");
            }
        }
    }

    fn apply_person(&self, topic: &str, key: &str, value: Option<&[u8]>) {
        let dir = self.directory();
        match value {
            None => dir.remove(key),
            // Checked as a file's rows are. A person left with no address (every
            // one of them turned out dead: what `prune` writes) stays a member, to
            // be dead-lettered as unreachable until someone adds an address.
            Some(v) => match Person::from_record(key, v).and_then(|p| {
                let unreachable = AddressKind::ALL.iter().all(|k| p.addresses(*k).is_empty());
                match crate::directory::validate(&p, &self.audiences) {
                    Err(e) if !unreachable => Err(e),
                    _ => Ok(p),
                }
            }) {
                Ok(p) => dir.upsert(p),
                Err(e) => tracing::warn!(
                    topic,
                    key,
                    error = %e,
                    "directory record ignored, the person's previous record stays (docs/backups.md#the-directory)"
                ),
            },
        }
        self.gauge();
    }

    fn walked(&self, key: &str) -> Walked {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    async fn ready(&self, cancel: &CancellationToken) -> bool {
        let mut ready = self.ready.clone();
        tokio::select! {
            r = ready.wait_for(|r| *r) => r.is_ok(),
            _ = cancel.cancelled() => false,
        }
    }
}

/// Reads `topic` from its beginning and goes on following it, handing every
/// record to `apply` (key, value; `None` for a tombstone). The receiver turns
/// true once every partition was read to the end it had at start. Runs on a
/// thread of its own until `cancel`.
fn follow(
    kafka: &KafkaConfig,
    secrets: &dyn SecretResolver,
    topic: &str,
    apply: impl Fn(&str, Option<&[u8]>) + Send + 'static,
    cancel: CancellationToken,
) -> Result<watch::Receiver<bool>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::message::Message;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    // The end of each partition is signalled, for "read to its end".
    let consumer: BaseConsumer =
        crate::kafka::reader_config(kafka, secrets, &format!("{}.follow", kafka.group_id))?
            .set("enable.partition.eof", "true")
            .create()
            .context("cannot create a Kafka consumer")?;
    let (tx, rx) = watch::channel(false);
    let topic = topic.to_string();
    std::thread::Builder::new()
        .name(format!("follow-{topic}"))
        .spawn(move || {
            let partitions = loop {
                if cancel.is_cancelled() {
                    return;
                }
                match consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                    Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                            break t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
                        }
                        _ => tracing::warn!(topic, "topic not found on the brokers; people targets wait for it (create it compacted)"),
                    },
                    Err(e) => tracing::warn!(topic, error = %e, "cannot read the topic's metadata; retrying"),
                }
                std::thread::sleep(Duration::from_secs(2));
            };
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                let _ = tpl.add_partition_offset(&topic, *p, Offset::Beginning);
            }
            if let Err(e) = consumer.assign(&tpl) {
                tracing::error!(topic, error = %e, "cannot read the topic");
                return;
            }
            let mut behind: HashSet<i32> = partitions.iter().copied().collect();
            let mut records: u64 = 0;
            while !cancel.is_cancelled() {
                match consumer.poll(Duration::from_millis(200)) {
                    None => {}
                    Some(Ok(m)) => {
                        records += 1;
                        match m.key().map(std::str::from_utf8) {
                            Some(Ok(key)) => apply(key, m.payload()),
                            _ => tracing::warn!(
                                topic,
                                partition = m.partition(),
                                offset = m.offset(),
                                "record without a UTF-8 key ignored"
                            ),
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(p)))
                        if behind.remove(&p) && behind.is_empty() =>
                    {
                        tracing::info!(topic, records, "topic read to its end");
                        let _ = tx.send(true);
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(e)) => tracing::warn!(topic, error = %e, "reading the topic"),
                }
            }
        })
        .context("cannot start a thread")?;
    Ok(rx)
}

/// Who in a batch an address belongs to.
fn address_key(kind: AddressKind, address: &str) -> String {
    match kind {
        AddressKind::Email => address.to_lowercase(),
        _ => address.to_string(),
    }
}

impl Dispatcher {
    /// Walks a people target's audience for one update (the delivery holds the
    /// incident's lane until the walk ends).
    pub(crate) async fn run_people(
        &self,
        delivery: Delivery,
        target: &Target,
        people: &crate::config::PeopleConfig,
        source: &Source,
        cancel: &CancellationToken,
        _lane: LaneEntry,
    ) -> Resolution {
        // What cannot be walked at all is dead-lettered as the target's.
        let fail = |e: DeliveryError| {
            self.dead_letter(
                target,
                &delivery,
                source,
                None,
                e,
                Default::default(),
                cancel,
            )
        };
        let Some(support) = self.people.clone() else {
            return fail(
                DeliveryError::permanent("a people target runs without a directory")
                    .with_code("no_directory"),
            )
            .await;
        };
        // Each leg's text, once per update.
        let mut contents: Vec<Arc<BTreeMap<String, Content>>> = Vec::new();
        for leg in &target.legs {
            let d = Delivery::new(
                delivery.update.clone(),
                leg.target.config.name.clone(),
                delivery.audiences.clone(),
            );
            match self.render(&leg.target, &d) {
                Ok(c) => contents.push(Arc::new(c)),
                Err(reason) => {
                    return fail(DeliveryError::permanent(reason).with_code("template")).await;
                }
            }
        }
        if !support.ready(cancel).await {
            return Resolution::Abandoned;
        }
        let key = format!("{}/{}", target.config.name, delivery.update.update_id);
        let start = support.walked(&key);
        if start.done {
            tracing::info!(
                incident_id = %delivery.update.incident_id,
                update_id = %delivery.update.update_id,
                target = %target.config.name,
                reached = start.reached,
                "people target already walked this update; nothing sent again"
            );
            return Resolution::Resolved;
        }
        if start.after.is_some() {
            tracing::info!(
                incident_id = %delivery.update.incident_id,
                update_id = %delivery.update.update_id,
                target = %target.config.name,
                after = start.after.as_deref().unwrap_or(""),
                reached = start.reached,
                "resuming a walk where it stopped"
            );
        }
        let directory = support.directory();
        let per_batch = people.per_batch.unwrap_or(support.batch_size);
        let mut next_after = start.after.clone();
        let mut walked = start;
        let mut exhausted = false;
        let mut running = futures::stream::FuturesOrdered::new();
        loop {
            while !exhausted && running.len() < support.batches_in_flight {
                let batch =
                    directory.members_after(&people.audience, next_after.as_deref(), per_batch);
                let Some(last) = batch.last() else {
                    exhausted = true;
                    break;
                };
                let last = last.id.to_string();
                next_after = Some(last.clone());
                let contents = &contents;
                let delivery = &delivery;
                let support = &support;
                running.push_back(async move {
                    let r = self
                        .run_batch(target, delivery, contents, batch, support, source, cancel)
                        .await;
                    (r, last)
                });
            }
            let Some((result, last)) = running.next().await else {
                break;
            };
            let Ok(reached) = result else {
                return Resolution::Abandoned;
            };
            walked.after = Some(last);
            walked.reached += reached;
            if self
                .write_progress(&support, &key, &walked, cancel)
                .await
                .is_err()
            {
                return Resolution::Abandoned;
            }
        }
        walked.done = true;
        if self
            .write_progress(&support, &key, &walked, cancel)
            .await
            .is_err()
        {
            return Resolution::Abandoned;
        }
        tracing::info!(
            incident_id = %delivery.update.incident_id,
            update_id = %delivery.update.update_id,
            target = %target.config.name,
            audience = %people.audience,
            reached = walked.reached,
            "people target walked its audience"
        );
        Resolution::Resolved
    }

    async fn write_progress(
        &self,
        support: &PeopleSupport,
        key: &str,
        walked: &Walked,
        cancel: &CancellationToken,
    ) -> Result<(), crate::records::dlq::Abandoned> {
        let value = serde_json::to_vec(walked).unwrap_or_default();
        self.dlq
            .write_acknowledged(
                &support.progress_topic,
                key.as_bytes(),
                &value,
                &[],
                cancel,
                "walk progress",
            )
            .await?;
        support.apply_progress(key, Some(&value));
        Ok(())
    }

    /// Reaches one batch of people: each leg in turn, with whoever the legs
    /// before could not reach. `Ok(n)`: n people reached (the others are
    /// dead-lettered); `Err` when abandoned.
    #[allow(clippy::too_many_arguments)]
    async fn run_batch(
        &self,
        target: &Target,
        delivery: &Delivery,
        contents: &[Arc<BTreeMap<String, Content>>],
        batch: Vec<Arc<Person>>,
        support: &PeopleSupport,
        source: &Source,
        cancel: &CancellationToken,
    ) -> Result<u64, crate::records::dlq::Abandoned> {
        let abandoned = |r: Resolution| {
            if r == Resolution::Abandoned {
                Err(crate::records::dlq::Abandoned)
            } else {
                Ok(())
            }
        };
        let mut reached = 0u64;
        let mut pending = batch;
        let legs = &target.legs;
        for (i, leg) in legs.iter().enumerate() {
            let kind = leg.kind;
            let (here, later): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|p| !p.addresses(kind).is_empty());
            pending = later;
            if here.is_empty() {
                continue;
            }
            let mut owner: HashMap<String, usize> = HashMap::new();
            let mut addresses = Vec::new();
            for (n, p) in here.iter().enumerate() {
                for a in p.addresses(kind) {
                    if owner.insert(address_key(kind, a), n).is_none() {
                        addresses.push(a.to_string());
                    }
                }
            }
            let mut d = Delivery::new(
                delivery.update.clone(),
                leg.target.config.name.clone(),
                delivery.audiences.clone(),
            )
            .with_direct(addresses);
            d.content = contents[i].clone();
            let mut sink = LegSink::default();
            abandoned(
                self.retry_loop(&leg.target, &mut d, source, cancel, None, Some(&mut sink))
                    .await,
            )?;
            let delivered: HashSet<String> = sink
                .delivered
                .iter()
                .map(|a| address_key(kind, a))
                .collect();
            let mut failed: HashMap<String, DeliveryError> = HashMap::new();
            let mut everyone_else: Option<DeliveryError> = None;
            for (who, e) in sink.failed {
                match who {
                    Some(a) => {
                        failed.insert(address_key(kind, &a), e);
                    }
                    None => everyone_else = Some(e),
                }
            }
            for person in here {
                let mine = person.addresses(kind);
                let was_reached = mine
                    .iter()
                    .any(|a| delivered.contains(&address_key(kind, a)));
                // Each of this person's addresses that did not work, with why.
                let mut errors: Vec<(String, DeliveryError)> = Vec::new();
                for a in &mine {
                    let k = address_key(kind, a);
                    if delivered.contains(&k) {
                        continue;
                    }
                    let e = failed
                        .get(&k)
                        .cloned()
                        .or_else(|| everyone_else.clone())
                        .unwrap_or_else(|| {
                            DeliveryError::permanent(format!(
                                "the {} channel gave no result for this address",
                                kind.as_str()
                            ))
                        });
                    errors.push((a.to_string(), e));
                }
                // Dead addresses leave the directory, reached or not. What is
                // pruned is the directory's record as it is now, not the batch's
                // copy: an earlier leg of this batch (or the topic) may have
                // changed it since, and writing the copy back would restore an
                // address already removed, or a person already deleted.
                let mut current = support.directory().get(&person.id);
                for (a, e) in &errors {
                    if e.class == ErrorClass::RecipientGone {
                        if let Some(pruned) = current.as_deref().and_then(|c| c.without(kind, a)) {
                            abandoned(self.prune(support, pruned.clone(), kind, cancel).await)?;
                            current = Some(Arc::new(pruned));
                        }
                        if was_reached
                            || legs[i + 1..]
                                .iter()
                                .any(|l| !person.addresses(l.kind).is_empty())
                        {
                            abandoned(
                                self.dead_recipient(&leg.target, &d, Some(a), e, cancel)
                                    .await,
                            )?;
                        }
                    }
                }
                if was_reached {
                    reached += 1;
                    metrics::counter!("clarion_people_reached_total", "target" => target.config.name.to_string(), "channel" => kind.as_str()).increment(1);
                    continue;
                }
                let next = legs[i + 1..]
                    .iter()
                    .find(|l| !person.addresses(l.kind).is_empty());
                if let Some(next) = next {
                    let (_, last) = errors.last().cloned().unwrap_or_else(|| {
                        (String::new(), DeliveryError::permanent("not reached"))
                    });
                    crate::ops::telemetry::FellBack {
                        update: &delivery.update,
                        target: &target.config.name,
                        person: &person.id,
                        from: kind.as_str(),
                        to: next.kind.as_str(),
                        class: last.class.as_str(),
                        reason: &last.reason,
                    }
                    .emit();
                    pending.push(person);
                    continue;
                }
                // No channel left for this person: each address that failed is
                // dead-lettered, as an ordinary target's recipient would be.
                for (a, e) in errors {
                    let reason = format!(
                        "person `{}` not reached on any channel ({}); last: {}",
                        person.id,
                        legs[..=i]
                            .iter()
                            .filter(|l| !person.addresses(l.kind).is_empty())
                            .map(|l| l.kind.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                        e.reason
                    );
                    let e = DeliveryError { reason, ..e };
                    abandoned(
                        self.dead_letter(&leg.target, &d, source, Some(a), e, sink.tried, cancel)
                            .await,
                    )?;
                }
            }
        }
        // Members with no address on any of the target's channels.
        for person in pending {
            let e = DeliveryError::permanent(format!(
                "person `{}` has no address on any of this target's channels ({})",
                person.id,
                legs.iter()
                    .map(|l| l.kind.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .with_code("no_address");
            abandoned(
                self.dead_letter(
                    target,
                    delivery,
                    source,
                    Some(format!("person:{}", person.id)),
                    e,
                    Default::default(),
                    cancel,
                )
                .await,
            )?;
        }
        Ok(reached)
    }

    /// Removes a dead address from the directory: at once in memory, and in the
    /// directory's topic when it is one (so no replica and no restart tries it).
    async fn prune(
        &self,
        support: &PeopleSupport,
        person: Person,
        kind: AddressKind,
        cancel: &CancellationToken,
    ) -> Resolution {
        metrics::counter!("clarion_directory_pruned_total", "kind" => kind.as_str()).increment(1);
        tracing::info!(person = %person.id, kind = kind.as_str(), "dead address removed from the directory");
        if let Some(topic) = &support.directory_topic {
            let value = person.to_json();
            if self
                .dlq
                .write_acknowledged(
                    topic,
                    person.id.as_bytes(),
                    &value,
                    &[],
                    cancel,
                    "directory",
                )
                .await
                .is_err()
            {
                return Resolution::Abandoned;
            }
        }
        support.directory().upsert(person);
        Resolution::Resolved
    }
}
