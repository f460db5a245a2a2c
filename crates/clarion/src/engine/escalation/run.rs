//! Doing what `plan.rs` decided for one case, one action at a time, each written
//! (acknowledged) before the next is decided: the ledger record first, then the
//! state that says it was done, so that a crash between them writes the ledger
//! record again (with the same `id`) rather than never.

use super::plan::{self, Action};
use super::{Engine, address_kind};
use crate::confirm::records::*;
use crate::confirm::state::Case;
use crate::records::confirmations::{ConfirmationRecord, Event};

fn record(id: &CaseId, h: &Header, event: Event, fact: &str) -> ConfirmationRecord {
    h.ledger_record(id, event, fact)
}
use crate::records::dlq::{Abandoned, DeadLetter, DlqKind, FailedDelivery, Source};
use clarion_confirm::{CaseId, RecipientId};
use clarion_core::{Delivery, IdempotencyKey};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sends of one case under way at once (a step reaching an audience).
const SENDS_AT_ONCE: usize = 32;

fn plus(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

/// The update's source, as a dead letter or a delivery record names it.
fn source_of(h: &Header) -> Source {
    Source {
        topic: h.source.topic.clone(),
        partition: h.source.partition,
        offset: h.source.offset,
        timestamp_ms: h.published_ms,
        key: Some(h.update.incident_id.clone().into_bytes()),
        payload: serde_json::to_vec(&h.update).unwrap_or_default(),
        headers: Vec::new(),
    }
}

/// Fills in who a record is about: a person of an escalation, or a recipient.
fn about(mut r: ConfirmationRecord, case: &Case, rid: &RecipientId) -> ConfirmationRecord {
    r.recipient_ref = Some(rid.to_hex());
    if let Some((id, _)) = case.person(rid) {
        r.person = Some(id.to_string());
    } else if let Some(a) = case.asked.get(rid) {
        r.recipient = Some(a.recipient.clone());
        r.channel = Some(a.channel.clone());
        r.via_target = Some(a.target.clone());
        r.provider.clone_from(&a.provider);
    }
    r
}

impl Engine {
    /// Does what `id` needs until nothing more is due.
    pub(super) async fn work(&self, id: CaseId, cancel: &CancellationToken) {
        use futures::StreamExt as _;
        loop {
            let now = jiff::Timestamp::now();
            let Some((case, actions)) = self
                .store
                .read(|v| v.case(&id).map(|c| (c.clone(), plan::all(c, now))))
            else {
                return;
            };
            if actions.is_empty() {
                return;
            }
            // The people of a step are sent to at once, a bounded number at a time.
            let results: Vec<Result<(), Abandoned>> = futures::stream::iter(actions)
                .map(|a| self.act(&id, &case, a, cancel))
                .buffer_unordered(SENDS_AT_ONCE)
                .collect()
                .await;
            if results.iter().any(Result::is_err) {
                return;
            }
        }
    }

    async fn act(
        &self,
        id: &CaseId,
        case: &Case,
        action: Action,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let id = *id;
        {
            match action {
                Action::Finish => self.finish(&id, case, cancel).await,
                Action::Close => self.close(&id, case, cancel).await,
                Action::Confirm(rid) => self.confirm(&id, case, rid, cancel).await,
                Action::StartStep(step) => self.start_step(&id, case, step, cancel).await,
                Action::Send {
                    step,
                    person,
                    rid,
                    repeat,
                    channel,
                    attempt,
                } => {
                    self.send(
                        &id,
                        case,
                        step,
                        &person,
                        rid,
                        (repeat, channel, attempt),
                        cancel,
                    )
                    .await
                }
                Action::Done { step, rid } => {
                    let Some(mut c) = case.cursors.get(&(step, rid)).cloned() else {
                        return Ok(());
                    };
                    c.done = true;
                    self.store
                        .write(&id, Item::Cursor(step, rid), &c, cancel)
                        .await
                }
            }
        }
    }

    async fn confirm(
        &self,
        id: &CaseId,
        case: &Case,
        rid: RecipientId,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let (Some(h), Some(answer)) = (&case.header, case.answers.get(&rid)) else {
            return Ok(());
        };
        let took = answer.at.duration_since(h.opened_at);
        let took_ms = took.as_millis().max(0) as u64;
        let mut r = about(record(id, h, Event::Confirmed, &rid.to_hex()), case, &rid);
        r.via = Some(answer.via.as_str().to_string());
        r.provider.clone_from(&answer.provider);
        r.at = answer.at;
        r.time_to_confirm_ms = Some(took_ms);
        self.ledger.write(&r, cancel).await?;
        let confirmed = Confirmed {
            v: VERSION,
            via: answer.via,
            provider: answer.provider.clone(),
            at: answer.at,
        };
        self.store
            .write(id, Item::Confirmed(rid), &confirmed, cancel)
            .await?;
        crate::ops::telemetry::ConfirmationReceived {
            incident_id: &h.update.incident_id,
            target: &h.target,
            via: answer.via.as_str(),
            took: Duration::from_millis(took_ms),
            drill: h.drill,
        }
        .emit();
        Ok(())
    }

    async fn start_step(
        &self,
        id: &CaseId,
        case: &Case,
        step: usize,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let Some(h) = &case.header else {
            return Ok(());
        };
        let mut r = record(id, h, Event::Step, &step.to_string());
        r.step = Some(step as u32);
        r.detail = h
            .escalation
            .as_ref()
            .and_then(|e| e.step_people.get(step))
            .map(|p| format!("{} people", p.len()));
        self.ledger.write(&r, cancel).await?;
        let started = StepStarted {
            v: VERSION,
            at: jiff::Timestamp::now(),
        };
        self.store
            .write(id, Item::Step(step), &started, cancel)
            .await?;
        tracing::info!(
            incident_id = %h.update.incident_id,
            target = %h.target,
            step,
            "escalation step started"
        );
        Ok(())
    }

    /// One send to one person on one channel: its cursor first (`sending`),
    /// then the send, then the cursor with how it went and when the next is due.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        id: &CaseId,
        case: &Case,
        step: usize,
        person_id: &str,
        rid: RecipientId,
        (repeat, channel, attempt): (u32, usize, u32),
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let Some(h) = &case.header else {
            return Ok(());
        };
        let Some(e) = &h.escalation else {
            return Ok(());
        };
        let (Some(policy), Some(person)) = (e.steps.get(step), e.people.get(person_id)) else {
            return Ok(());
        };
        let wait = Duration::from_millis(policy.wait_ms);
        let reached_before = case.reached(&rid);
        let now = jiff::Timestamp::now();
        let mut cursor = Cursor {
            v: VERSION,
            repeat,
            channel,
            attempt,
            state: SendState::Sending,
            at: now,
            next_at: plus(now, wait),
            reached: reached_before,
            done: false,
        };
        self.store
            .write(id, Item::Cursor(step, rid), &cursor, cancel)
            .await?;
        let name = policy.channels.get(channel).cloned().unwrap_or_default();
        let sender = self.sender();
        let outcome = match sender.by_name.get(&name) {
            None => Err(format!("channel `{name}` is not configured now")),
            Some(&i) => {
                let target = &sender.dispatcher.targets()[i];
                let kind = address_kind(target.config.kind);
                let addresses: Vec<String> = kind
                    .and_then(|k| person.addresses.get(k))
                    .cloned()
                    .unwrap_or_default();
                if addresses.is_empty() {
                    Err(format!(
                        "no {} address for this person",
                        kind.unwrap_or(target.config.kind.as_str())
                    ))
                } else {
                    self.deliver(
                        &sender,
                        target,
                        h,
                        id,
                        rid,
                        step,
                        (repeat, channel, attempt),
                        addresses,
                        wait,
                        cancel,
                    )
                    .await?
                }
            }
        };
        let now = jiff::Timestamp::now();
        let mut r = record(id, h, Event::Requested, &format!("{rid}/{attempt}"));
        r = about(r, case, &rid);
        r.step = Some(step as u32);
        r.attempt = Some(attempt);
        r.via_target = Some(name.clone());
        match &outcome {
            Ok((channel_kind, provider)) => {
                cursor.state = SendState::Sent;
                cursor.reached = true;
                cursor.next_at = plus(now, wait);
                r.channel = Some(channel_kind.clone());
                r.provider.clone_from(provider);
            }
            Err(why) => {
                cursor.state = SendState::Failed;
                cursor.next_at = now;
                r.detail = Some(format!("unreachable: {why}"));
                tracing::warn!(
                    incident_id = %h.update.incident_id,
                    target = %h.target,
                    person = %person_id,
                    channel = %name,
                    step,
                    why = %why,
                    "escalation channel did not reach the person; moving on at once"
                );
            }
        }
        self.ledger.write(&r, cancel).await?;
        self.store
            .write(id, Item::Cursor(step, rid), &cursor, cancel)
            .await
    }

    /// Sends through a step's channel with the channel's own retries and
    /// failover, for at most the step's wait. `Ok(Ok((channel, provider)))`:
    /// delivered; `Ok(Err(why))`: not.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &self,
        sender: &super::Sender,
        target: &crate::engine::dispatch::Target,
        h: &Header,
        id: &CaseId,
        rid: RecipientId,
        step: usize,
        (repeat, channel, attempt): (u32, usize, u32),
        addresses: Vec<String>,
        wait: Duration,
        cancel: &CancellationToken,
    ) -> Result<Result<(String, Option<String>), String>, Abandoned> {
        let update = Arc::new(h.update.clone());
        let mut d = Delivery::new(
            update,
            target.config.name.clone(),
            h.audiences.clone().into(),
        )
        .with_direct(addresses);
        d.key = IdempotencyKey::new(
            &format!("{id}/{step}/{rid}/{repeat}/{channel}"),
            &target.config.name,
        );
        match sender.dispatcher.render(target, &d) {
            Ok(c) => d.content = Arc::new(c),
            Err(why) => return Ok(Err(why)),
        }
        d.confirm = Some(Arc::new(crate::confirm::ways::PersonWays {
            minter: self.store.minter.clone(),
            case: *id,
            rid,
            expires: h.deadline.as_second().max(0) as u64,
            attempt,
        }));
        let source = source_of(h);
        // A channel that cannot reach the person within the step's wait is as
        // good as down for this escalation: it moves on.
        let bounded = cancel.child_token();
        let mut sink = crate::engine::dispatch::LegSink::default();
        let resolution = tokio::select! {
            r = sender.dispatcher.retry_loop(target, &mut d, &source, &bounded, None, Some(&mut sink)) => r,
            _ = tokio::time::sleep(wait) => {
                bounded.cancel();
                crate::engine::dispatch::Resolution::Abandoned
            }
        };
        if cancel.is_cancelled() {
            return Err(Abandoned);
        }
        let provider = sink
            .tried
            .provider()
            .map(|i| target.providers[i].name.to_string());
        if !sink.delivered.is_empty() {
            return Ok(Ok((
                target.config.kind.ledger_channel().to_string(),
                provider,
            )));
        }
        if resolution == crate::engine::dispatch::Resolution::Abandoned {
            return Ok(Err(format!(
                "not delivered within the step's wait ({})",
                humantime::format_duration(wait)
            )));
        }
        Ok(Err(sink
            .failed
            .first()
            .map(|(_, e)| e.reason.clone())
            .unwrap_or_else(|| "not delivered".to_string())))
    }

    /// Records every recipient's outcome, then the closing.
    async fn close(
        &self,
        id: &CaseId,
        case: &Case,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let Some(h) = &case.header else {
            return Ok(());
        };
        let outcomes = case.outcomes();
        let met = case.met();
        for (rid, outcome) in &outcomes {
            let event = match outcome {
                Outcome::Confirmed => continue,
                Outcome::NotConfirmed => Event::NotConfirmed,
                Outcome::Unreachable => Event::Unreachable,
            };
            let r = about(record(id, h, event, &rid.to_hex()), case, rid);
            self.ledger.write(&r, cancel).await?;
            if *outcome == Outcome::Unreachable
                && let Some((person, _)) = case.person(rid)
            {
                // Nobody else will tell: every channel of every step failed.
                let source = source_of(h);
                let letter = DeadLetter {
                    source: &source,
                    kind: DlqKind::DeliveryFailed,
                    reason: format!(
                        "person `{person}` not reached on any channel of escalation `{}`",
                        h.escalation.as_ref().map_or("", |e| e.policy.as_str())
                    ),
                    delivery: Some(FailedDelivery {
                        target: &h.target,
                        channel: "escalation",
                        provider: None,
                        recipient: Some(&format!("person:{person}")),
                        attempts: case.cursors.iter().filter(|((_, r), _)| r == rid).count() as u32,
                        error_class: "permanent",
                        error_code: Some("unreachable"),
                        idempotency_key: &id.to_hex(),
                    }),
                };
                self.outputs.dlq.write(&letter, cancel).await?;
            }
        }
        let mut r = record(id, h, Event::Closed, "");
        r.met = Some(met);
        r.detail = Some(format!(
            "{} of {} confirmed",
            outcomes
                .values()
                .filter(|o| **o == Outcome::Confirmed)
                .count(),
            outcomes.len()
        ));
        self.ledger.write(&r, cancel).await?;
        let closed = Closed {
            v: VERSION,
            at: jiff::Timestamp::now(),
            outcomes: outcomes.iter().map(|(r, o)| (r.to_hex(), *o)).collect(),
            met,
        };
        self.store.write(id, Item::Closed, &closed, cancel).await?;
        crate::ops::telemetry::ConfirmationClosed {
            incident_id: &h.update.incident_id,
            target: &h.target,
            met,
            confirmed: outcomes
                .values()
                .filter(|o| **o == Outcome::Confirmed)
                .count(),
            not_confirmed: outcomes
                .values()
                .filter(|o| **o == Outcome::NotConfirmed)
                .count(),
            unreachable: outcomes
                .values()
                .filter(|o| **o == Outcome::Unreachable)
                .count(),
            drill: h.drill,
        }
        .emit();
        Ok(())
    }

    /// Removes a closed case from the topic: every item, the header, and the
    /// closing last.
    async fn finish(
        &self,
        id: &CaseId,
        case: &Case,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let mut items: Vec<Item> = Vec::new();
        items.extend(case.asked.keys().map(|r| Item::Asked(*r)));
        items.extend(case.answers.keys().map(|r| Item::Answer(*r)));
        items.extend(case.confirmed.keys().map(|r| Item::Confirmed(*r)));
        items.extend(case.calls.keys().map(|(r, n)| Item::Call(*r, *n)));
        items.extend(case.cursors.keys().map(|(s, r)| Item::Cursor(*s, *r)));
        items.extend(case.steps.keys().map(|s| Item::Step(*s)));
        if case.header.is_some() {
            items.push(Item::Header);
        }
        items.push(Item::Closed);
        for item in items {
            self.store.remove(id, item, cancel).await?;
        }
        Ok(())
    }
}
