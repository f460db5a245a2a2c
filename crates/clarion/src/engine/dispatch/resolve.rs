//! How a delivery ends: recorded in the ledger as delivered, dead-lettered (with the
//! recipient's dead address, when it is one), superseded by a newer update of its
//! incident, or a rejected record dead-lettered whole. Every ending is written, and
//! acknowledged, before the delivery resolves.

use super::retry::{failure_reason, since_kafka_timestamp};
use super::*;
use crate::records::ledger::outcome as ledger_outcome;

impl Dispatcher {
    /// Ends a delivery that a newer update of its incident made unnecessary.
    pub(super) async fn superseded(
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
        let final_at = jiff::Timestamp::now();
        if let Some(ledger) = &self.ledger {
            // Boxed: the record is large, and inline it made every delivery's
            // `report` (and so its retry loop) that much larger, though most
            // deployments write no ledger.
            let written = Box::pin(async {
                let mut record = self.ledger_record(target, d, source, outcome);
                record.recipient = recipient.as_deref().map(|r| clarion_core::mask(Some(r)));
                record.recipient_ref = recipient
                    .as_deref()
                    .map(|r| crate::records::ledger::recipient_ref(r, d.key.as_str()));
                record.attempts = tried.count;
                record.first_attempt_at = tried.first_at;
                record.final_at = Some(final_at);
                record.recorded_at = Some(final_at);
                record.provider = tried.provider.map(|i| target.providers[i].name.to_string());
                record.provider_id = provider_id.clone();
                record.error = error.as_ref().map(crate::records::ledger::LedgerError::of);
                record.superseded_by = superseded_by.clone();
                ledger.write(&record, cancel).await
            })
            .await;
            if written.is_err() {
                return Resolution::Abandoned;
            }
        }
        // A recipient of a confirmation request whose delivery ended: asked, and
        // reached or not (docs/confirmations.md).
        if d.confirm.is_some()
            && superseded_by.is_none()
            && (recipient.is_some() || target.config.kind == crate::config::ChannelKind::Webhook)
            && Box::pin(self.record_asked(
                target,
                d,
                recipient.as_deref(),
                tried.provider.map(|i| &*target.providers[i].name),
                error.is_none(),
                cancel,
            ))
            .await
                == Resolution::Abandoned
        {
            return Resolution::Abandoned;
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
            clocks.delivered(&d.update, &d.audiences, final_at);
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

    /// The ledger record of delivery `d` with `outcome`, nothing tried yet: what
    /// every record of a delivery shares.
    pub(super) fn ledger_record(
        &self,
        target: &Target,
        d: &Delivery,
        source: &Source,
        outcome: &str,
    ) -> LedgerRecord {
        let mut record = LedgerRecord::of_update(
            &d.update,
            source,
            &d.target,
            target.config.kind.ledger_channel(),
            d.audiences.to_vec(),
            outcome,
        );
        record.idempotency_key = d.key.as_str().to_string();
        record.replayed = self.replaying;
        record
    }

    /// Records that a delivery to recipients has ended (`resolved`): every
    /// recipient's record is written before it. Acknowledged before the delivery
    /// resolves, like the others: without it a reader could not tell the end from
    /// a pause between two recipients.
    pub(super) async fn resolved(
        &self,
        target: &Target,
        update: &Arc<IncidentUpdate>,
        name: &Arc<str>,
        audiences: &Arc<[String]>,
        source: &Source,
        cancel: &CancellationToken,
    ) -> Resolution {
        let Some(ledger) = &self.ledger else {
            return Resolution::Resolved;
        };
        let written = Box::pin(async {
            let mut record = LedgerRecord::of_update(
                update,
                source,
                name,
                target.config.kind.ledger_channel(),
                audiences.to_vec(),
                ledger_outcome::RESOLVED,
            );
            record.final_at = record.recorded_at;
            record.replayed = self.replaying;
            ledger.write(&record, cancel).await
        })
        .await;
        match written {
            Ok(()) => Resolution::Resolved,
            Err(_) => Resolution::Abandoned,
        }
    }

    /// Writes the `due` records of a checked update: one per target that takes it,
    /// so that `clarion status` knows what is owed before any target's stream has
    /// tried (or while one holds it in Kafka, its breaker open). Each carries the
    /// target's breaker as this process sees it. Acknowledged before the events
    /// stream resolves the update: a crash then reads it again and writes them
    /// again, so none is missing.
    pub async fn record_due(
        &self,
        update: &IncidentUpdate,
        source: &Source,
        routes: &[Route],
        cancel: &CancellationToken,
    ) -> Resolution {
        let Some(ledger) = &self.ledger else {
            return Resolution::Resolved;
        };
        let records: Vec<LedgerRecord> = routes
            .iter()
            .filter_map(|route| {
                let audiences = route.takes(update)?;
                let mut r = LedgerRecord::of_update(
                    update,
                    source,
                    &route.target,
                    route.channel,
                    audiences,
                    ledger_outcome::DUE,
                );
                if let Some((state, error)) =
                    crate::ops::health::global().target_breaker(&route.target)
                {
                    r.breaker = Some(state.as_str().to_string());
                    r.error = error.map(|reason| crate::records::ledger::LedgerError {
                        class: "retryable".to_string(),
                        code: None,
                        reason,
                    });
                }
                Some(r)
            })
            .collect();
        let written =
            futures::future::join_all(records.iter().map(|r| ledger.write(r, cancel))).await;
        if written.iter().any(Result::is_err) {
            Resolution::Abandoned
        } else {
            Resolution::Resolved
        }
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
