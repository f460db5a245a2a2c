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
//!
//! A walk is part of dispatch (it is how a people target's delivery is tried); the
//! directory it walks is kept by `people.rs`, which knows nothing of walks.

use super::{Dispatcher, LaneEntry, LegSink, Resolution, Target};
use crate::directory::{AddressKind, Person};
use crate::people::{PeopleSupport, Walked};
use crate::records::dlq::Source;
use clarion_core::{Content, Delivery, DeliveryError, ErrorClass};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
        mut delivery: Delivery,
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
        // A people target that asks for confirmation: one case for the update,
        // each person's way handed to every leg's delivery (docs/confirmations.md).
        if self.confirm.is_some() {
            match self.open_case(target, &delivery, source, cancel).await {
                Ok(ways) => delivery.confirm = ways,
                Err(_) => return Resolution::Abandoned,
            }
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
            d.confirm = delivery.confirm.clone();
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
