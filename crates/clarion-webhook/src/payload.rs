//! The webhook body: a versioned envelope around the update (documented in
//! `docs/webhooks.md`).
//!
//! A target hears only what is meant for the audiences it serves: the envelope's
//! `data` carries the update scoped to those audiences, so a customers-only status
//! page never receives the wording written for regulators.

use clarion_core::{Delivery, Impact, IncidentUpdate, Status};
use serde::Serialize;
use std::borrow::Cow;

/// Bumped when the envelope changes incompatibly.
pub const PAYLOAD_VERSION: u32 = 1;

/// The envelope, serialized straight to bytes (no `serde_json::Value` tree in
/// between: building one cost an allocation per key and per string, for every
/// delivery). Fields are declared in alphabetical order, the order the envelope
/// had when it was built as a `Value`.
#[derive(Serialize)]
struct Envelope<'a> {
    audiences: &'a [String],
    data: Cow<'a, IncidentUpdate>,
    /// A drill says so at the top, where a receiver looks before acting on it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    drill: bool,
    idempotency_key: &'a str,
    impact: Impact,
    incident_id: &'a str,
    payload_version: u32,
    sequence: u64,
    status: Status,
    target: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    update_id: &'a str,
}

/// The exact bytes POSTed for a delivery. They depend only on the delivery, never on
/// the time of the attempt, so every retry sends identical bytes under the same
/// `webhook-id`.
pub fn payload(delivery: &Delivery) -> Vec<u8> {
    // A custom body template (Slack, Teams, an in-house format) replaces the
    // standard envelope; the daemon has checked it renders valid JSON.
    if let Some(body) = delivery
        .audiences
        .first()
        .and_then(|a| delivery.part(a, "body"))
    {
        return body.as_bytes().to_vec();
    }
    let u = &delivery.update;
    let envelope = Envelope {
        audiences: &delivery.audiences,
        data: scoped(u, &delivery.audiences),
        drill: u.drill,
        idempotency_key: delivery.key.as_str(),
        impact: u.impact,
        incident_id: &u.incident_id,
        payload_version: PAYLOAD_VERSION,
        sequence: u.sequence,
        status: u.status,
        target: &delivery.target,
        kind: "incident.update",
        update_id: &u.update_id,
    };
    // Strings, numbers and string-keyed maps: serializing cannot fail.
    let mut body = Vec::with_capacity(1024);
    let _ = serde_json::to_writer(&mut body, &envelope);
    body
}

/// The update as this target may see it: `audiences`, `audience_messages` and
/// `locales` keep only the audiences the target serves. Everything else (title,
/// the general `message`, links) is meant for every audience and stays. The result
/// is still a valid event (every `audience_messages` key is in `audiences`), so a
/// receiver can validate `data` against docs/event.schema.json. Borrowed, not
/// copied, when the target serves every audience the update names (the usual case).
fn scoped<'a>(update: &'a IncidentUpdate, served: &[String]) -> Cow<'a, IncidentUpdate> {
    let serves = |audience: &String| served.contains(audience);
    if update.audiences.iter().all(serves)
        && update.audience_messages.keys().all(serves)
        && update.locales.keys().all(serves)
    {
        return Cow::Borrowed(update);
    }
    let mut u = update.clone();
    u.audiences.retain(serves);
    u.audience_messages.retain(|audience, _| serves(audience));
    u.locales.retain(|audience, _| serves(audience));
    Cow::Owned(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    /// An update for customers and regulators, each with their own wording.
    fn update() -> IncidentUpdate {
        let start = "2026-11-28T09:00:00Z".parse().expect("timestamp");
        let mut u = clarion_core::samples::lifecycle(
            "INC-7",
            "Mobile data outage",
            &["customers", "regulators"],
            start,
        )
        .remove(0);
        u.audience_messages
            .insert("customers".into(), "Sorry, mobile data is down.".into());
        u.audience_messages.insert(
            "regulators".into(),
            "Formal notice under article 40: 120,000 subscribers affected.".into(),
        );
        u.locales.insert("customers".into(), "fr-CA".into());
        u.locales.insert("regulators".into(), "en-GB".into());
        u
    }

    #[test]
    fn a_target_receives_only_the_texts_of_the_audiences_it_serves() {
        let delivery = Delivery::new(
            Arc::new(update()),
            "status-page".into(),
            vec!["customers".to_string()].into(),
        );
        let bytes = payload(&delivery);
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(
            !text.contains("article 40"),
            "regulators' text leaked: {text}"
        );
        assert!(!text.contains("regulators"), "{text}");
        assert!(!text.contains("en-GB"), "{text}");

        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert_eq!(body["audiences"], json!(["customers"]));
        assert_eq!(body["data"]["audiences"], json!(["customers"]));
        assert_eq!(
            body["data"]["audience_messages"],
            json!({"customers": "Sorry, mobile data is down."})
        );
        assert_eq!(body["data"]["locales"], json!({"customers": "fr-CA"}));
        // `data` is still an event Clarion itself would accept.
        let data = serde_json::to_vec(&body["data"]).expect("serialize");
        IncidentUpdate::from_slice(&data, 1 << 20).expect("data is a valid event");
    }

    #[test]
    fn a_target_serving_every_audience_receives_every_text() {
        let delivery = Delivery::new(
            Arc::new(update()),
            "regulator-gateway".into(),
            vec!["customers".to_string(), "regulators".to_string()].into(),
        );
        let body: serde_json::Value = serde_json::from_slice(&payload(&delivery)).expect("JSON");
        assert_eq!(
            body["data"]["audience_messages"]["regulators"],
            "Formal notice under article 40: 120,000 subscribers affected."
        );
        assert_eq!(
            body["data"]["audiences"],
            json!(["customers", "regulators"])
        );
    }
}
