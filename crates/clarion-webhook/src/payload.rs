//! The webhook body: a versioned envelope around the update (documented in
//! `docs/webhook-payload.md`).

use clarion_core::Delivery;
use serde_json::json;

/// Bumped when the envelope changes incompatibly.
pub const PAYLOAD_VERSION: u32 = 1;

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
    let body = json!({
        "type": "incident.update",
        "payload_version": PAYLOAD_VERSION,
        "idempotency_key": delivery.key.as_str(),
        "target": &*delivery.target,
        "audiences": &*delivery.audiences,
        "incident_id": u.incident_id,
        "update_id": u.update_id,
        "sequence": u.sequence,
        "status": u.status,
        "impact": u.impact,
        "data": &**u,
    });
    // Serializing a Value built from strings and numbers cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}
