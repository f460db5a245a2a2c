//! How a delivery ends: recorded in the ledger as delivered, dead-lettered (with the
//! recipient's dead address, when it is one), superseded by a newer update of its
//! incident, or a rejected record dead-lettered whole. Every ending is written, and
//! acknowledged, before the delivery resolves.

use super::retry::{failure_reason, since_kafka_timestamp};
use super::*;

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
