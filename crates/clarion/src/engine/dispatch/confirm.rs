//! Where a delivery meets its confirmation request (docs/confirmations.md): a
//! target that asks opens the update's case before sending (its header written
//! and acknowledged), hands each recipient their way to confirm with the
//! delivery, and records each recipient whose delivery ended (reached, or not);
//! an escalation target's delivery is opening its case, with its policy and
//! people fixed there and then.

use super::{Dispatcher, Resolution, Target};
use crate::confirm::records::{Asked, CasePerson, Escalation, Header, Item, VERSION};
use crate::records::dlq::{Abandoned, Source};
use clarion_core::{ConfirmWays, Delivery};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn plus(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

impl Dispatcher {
    /// The name cases of this dispatcher's deliveries are opened under: its
    /// target (a people target's, for its legs' deliveries).
    fn case_target(&self) -> Option<&Target> {
        self.targets.first()
    }

    /// Opens the case of `delivery` when its target asks for confirmation, and
    /// returns the recipients' ways; `None` when it does not ask, or when the
    /// case is already past its deadline (a replay long after).
    pub(crate) async fn open_case(
        &self,
        target: &Target,
        delivery: &Delivery,
        source: &Source,
        cancel: &CancellationToken,
    ) -> Result<Option<Arc<dyn ConfirmWays>>, Abandoned> {
        let Some(hook) = &self.confirm else {
            return Ok(None);
        };
        let Some(request) = hook
            .confirmations
            .request_for(&target.config, &delivery.audiences)
        else {
            return Ok(None);
        };
        let header = self.header(target, delivery, source, request, None);
        let case = hook
            .store
            .minter
            .keys
            .case_id(&[&delivery.update.update_id, &target.config.name]);
        if header.deadline <= jiff::Timestamp::now() {
            tracing::warn!(
                incident_id = %delivery.update.incident_id,
                update_id = %delivery.update.update_id,
                target = %target.config.name,
                "the update's confirmation window has already closed; delivered without a way to confirm"
            );
            return Ok(None);
        }
        let expires = header.deadline.as_second().max(0) as u64;
        if hook
            .store
            .read(|v| v.case(&case).is_none_or(|c| c.header.is_none()))
        {
            hook.store
                .write(&case, Item::Header, &header, cancel)
                .await?;
            crate::ops::telemetry::ConfirmationRequested {
                target: &target.config.name,
                require: &request.require.label(),
            }
            .emit();
        }
        Ok(Some(Arc::new(crate::confirm::ways::TargetWays {
            minter: hook.store.minter.clone(),
            case,
            expires,
        })))
    }

    fn header(
        &self,
        target: &Target,
        delivery: &Delivery,
        source: &Source,
        request: crate::config::ConfirmRequest,
        escalation: Option<Escalation>,
    ) -> Header {
        // The update's publication, so that every writer of the header (a
        // redelivery, another leg) writes the same one.
        let opened_at = source
            .timestamp_ms
            .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
            .unwrap_or_else(jiff::Timestamp::now);
        Header {
            v: VERSION,
            update: (*delivery.update).clone(),
            source: crate::records::ledger::SourceRef::of(source),
            published_ms: source.timestamp_ms,
            target: target.config.name.to_string(),
            audiences: delivery.audiences.to_vec(),
            require: request.require.label(),
            within_ms: request.within.as_millis().min(u128::from(u64::MAX)) as u64,
            opened_at,
            deadline: plus(opened_at, request.within),
            drill: delivery.update.drill,
            escalation,
        }
    }

    /// Records that a delivery of a confirmation request ended for `recipient`
    /// (`reached`: delivered; else every provider failed), before the delivery
    /// resolves.
    pub(crate) async fn record_asked(
        &self,
        target: &Target,
        d: &Delivery,
        recipient: Option<&str>,
        provider: Option<&str>,
        reached: bool,
        cancel: &CancellationToken,
    ) -> Resolution {
        let (Some(hook), Some(_), Some(owner)) = (&self.confirm, &d.confirm, self.case_target())
        else {
            return Resolution::Resolved;
        };
        let keys = &hook.store.minter.keys;
        let case = keys.case_id(&[&d.update.update_id, &owner.config.name]);
        // A delivery that ends after its notice closed (a long retry) records
        // nothing: its case is gone, and an item without one would stay for ever.
        if hook.store.read(|v| {
            v.case(&case)
                .is_none_or(|c| c.header.is_none() || c.closed.is_some())
        }) {
            return Resolution::Resolved;
        }
        let rid = keys.recipient_id(&case, recipient.unwrap_or(""));
        let asked = Asked {
            v: VERSION,
            recipient: recipient.map_or_else(|| "-".to_string(), |r| clarion_core::mask(Some(r))),
            target: d.target.to_string(),
            channel: target.config.kind.ledger_channel().to_string(),
            provider: provider.map(str::to_string),
            audience: d.audiences.first().cloned(),
            reached,
            at: jiff::Timestamp::now(),
        };
        if let (Some(ledger), Some(h)) = (
            &hook.ledger,
            hook.store
                .read(|v| v.case(&case).and_then(|c| c.header.clone())),
        ) {
            let mut r = h.ledger_record(
                &case,
                crate::records::confirmations::Event::Requested,
                &rid.to_hex(),
            );
            r.recipient = Some(asked.recipient.clone());
            r.recipient_ref = Some(rid.to_hex());
            r.channel = Some(asked.channel.clone());
            r.via_target = Some(asked.target.clone());
            r.provider.clone_from(&asked.provider);
            if !reached {
                r.detail = Some("unreachable: every provider failed".into());
            }
            if ledger.write(&r, cancel).await.is_err() {
                return Resolution::Abandoned;
            }
        }
        match hook
            .store
            .write(&case, Item::Asked(rid), &asked, cancel)
            .await
        {
            Ok(()) => Resolution::Resolved,
            Err(_) => Resolution::Abandoned,
        }
    }

    /// An escalation target's delivery: opens the update's case with the policy
    /// and the people of every step as they are now, and resolves. The engine
    /// (`engine/escalation`) runs it from there.
    pub(crate) async fn open_escalation(
        &self,
        target: &Target,
        delivery: &Delivery,
        source: &Source,
        cancel: &CancellationToken,
    ) -> Resolution {
        let (Some(hook), Some(policy), Some(request)) = (
            &self.confirm,
            target.config.escalation.as_deref(),
            target.config.confirm,
        ) else {
            let e = clarion_core::DeliveryError::permanent(
                "an escalation target runs without [confirm]",
            )
            .with_code("no_confirm");
            return self
                .dead_letter(
                    target,
                    delivery,
                    source,
                    None,
                    e,
                    Default::default(),
                    cancel,
                )
                .await;
        };
        let Some(steps) = hook.confirmations.escalations.get(policy).cloned() else {
            let e = clarion_core::DeliveryError::permanent(format!(
                "escalation policy `{policy}` is not configured"
            ))
            .with_code("no_policy");
            return self
                .dead_letter(
                    target,
                    delivery,
                    source,
                    None,
                    e,
                    Default::default(),
                    cancel,
                )
                .await;
        };
        let keys = &hook.store.minter.keys;
        let case = keys.case_id(&[&delivery.update.update_id, &target.config.name]);
        if hook
            .store
            .read(|v| v.case(&case).is_some_and(|c| c.header.is_some()))
        {
            // Opened before a restart: fixed then, not now.
            return Resolution::Resolved;
        }
        let Some(people) = self.people.clone() else {
            let e = clarion_core::DeliveryError::permanent(
                "an escalation target runs without a directory",
            )
            .with_code("no_directory");
            return self
                .dead_letter(
                    target,
                    delivery,
                    source,
                    None,
                    e,
                    Default::default(),
                    cancel,
                )
                .await;
        };
        if !people.ready(cancel).await {
            return Resolution::Abandoned;
        }
        let directory = people.directory();
        let mut step_people = Vec::new();
        let mut everyone: BTreeMap<String, CasePerson> = BTreeMap::new();
        for step in &steps {
            let (found, missing) =
                crate::confirm::people::resolve(&directory, &step.who, keys, &case);
            for id in missing {
                tracing::warn!(
                    incident_id = %delivery.update.incident_id,
                    target = %target.config.name,
                    person = %id,
                    "an escalation step names a person the directory does not have; the step goes on without them"
                );
            }
            step_people.push(found.iter().map(|(id, _)| id.clone()).collect());
            everyone.extend(found);
        }
        let escalation = Escalation {
            policy: policy.to_string(),
            steps,
            step_people,
            people: everyone,
        };
        let header = self.header(target, delivery, source, request, Some(escalation));
        if header.deadline <= jiff::Timestamp::now() {
            tracing::warn!(
                incident_id = %delivery.update.incident_id,
                update_id = %delivery.update.update_id,
                target = %target.config.name,
                "the update's confirmation window has already closed; no escalation started"
            );
            return Resolution::Resolved;
        }
        if hook
            .store
            .write(&case, Item::Header, &header, cancel)
            .await
            .is_err()
        {
            return Resolution::Abandoned;
        }
        crate::ops::telemetry::ConfirmationRequested {
            target: &target.config.name,
            require: &request.require.label(),
        }
        .emit();
        tracing::info!(
            incident_id = %delivery.update.incident_id,
            update_id = %delivery.update.update_id,
            target = %target.config.name,
            policy,
            people = header.escalation.as_ref().map_or(0, |e| e.people.len()),
            "escalation opened"
        );
        Resolution::Resolved
    }
}
