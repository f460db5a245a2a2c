//! What a push notification says, and how it is kept under the providers' 4 KB limit.
//!
//! [`compose`] is the one place that turns an update into notification text, so that
//! the templates work can replace it without touching either provider's client. [`fit`]
//! shortens the body (then, if it must, the title) until the provider's payload fits:
//! a push the provider would reject is never sent.

use clarion_core::{Delivery, DeliveryError, Impact, Status};
use sha2::{Digest, Sha256};

/// Both FCM and APNs reject a notification payload over 4096 bytes.
pub const PAYLOAD_LIMIT: usize = 4096;

/// APNs ignores (rejects, in fact) an `apns-collapse-id` over 64 bytes.
const MAX_COLLAPSE_ID: usize = 64;

/// The provider-neutral content of one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    /// Shown in bold on the lock screen: the status, then the incident's title.
    pub title: String,
    /// The update's text for the recipient's audience.
    pub body: String,
    pub incident_id: String,
    pub update_id: String,
    pub status: Status,
    pub sequence: u64,
    pub impact: Impact,
    /// The same for every update of one incident, so that the device shows only the
    /// newest (`android.collapse_key`, `apns-collapse-id`).
    pub collapse_id: String,
    /// High priority wakes the device at once; used for major and critical impact.
    pub high_priority: bool,
}

/// The notification for `audience` (whose text override, if any, is used).
pub fn compose(delivery: &Delivery, audience: &str) -> PushMessage {
    let u = &delivery.update;
    // The rendered templates when the daemon supplied them, else the built-in wording.
    let title = match delivery.part(audience, "title") {
        Some(t) => t.to_string(),
        None => format!("{}: {}", status_label(u.status), u.title),
    };
    let body = match delivery.part(audience, "body") {
        Some(b) => b.to_string(),
        None => u.message_for(audience).to_string(),
    };
    PushMessage {
        title,
        body,
        incident_id: u.incident_id.clone(),
        update_id: u.update_id.clone(),
        status: u.status,
        sequence: u.sequence,
        impact: u.impact,
        collapse_id: collapse_id(&u.incident_id),
        high_priority: u.impact >= Impact::Major,
    }
}

fn status_label(status: Status) -> &'static str {
    match status {
        Status::Investigating => "Investigating",
        Status::Identified => "Identified",
        Status::Monitoring => "Monitoring",
        Status::Resolved => "Resolved",
        Status::Scheduled => "Scheduled maintenance",
        Status::InProgress => "Maintenance in progress",
        Status::Verifying => "Maintenance: verifying",
        Status::Completed => "Maintenance completed",
    }
}

/// The incident id when it fits APNs' 64-byte limit; otherwise a stable digest of it,
/// so that every update of a long-named incident still collapses into one.
pub fn collapse_id(incident_id: &str) -> String {
    if incident_id.len() <= MAX_COLLAPSE_ID {
        incident_id.to_string()
    } else {
        let digest = Sha256::digest(incident_id.as_bytes());
        format!("inc-{}", hex::encode(&digest[..16]))
    }
}

/// Renders `msg` with `render`; when that is over `limit` bytes, keeps the longest
/// start of the body (ending it with `…`) that fits, and only if an empty body is still
/// too long, does the same to the title. Fails, permanently, only when even an empty
/// body and title do not fit (the ids alone would have to be near 4 KB).
pub fn fit<F>(msg: &mut PushMessage, limit: usize, render: F) -> Result<Vec<u8>, DeliveryError>
where
    F: Fn(&PushMessage) -> Result<Vec<u8>, serde_json::Error>,
{
    let bytes = encode(msg, &render)?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    let body = std::mem::take(&mut msg.body);
    if let Some(bytes) = shrink(msg, &body, limit, &render, |m, s| m.body = s)? {
        return Ok(bytes);
    }
    let title = std::mem::take(&mut msg.title);
    if let Some(bytes) = shrink(msg, &title, limit, &render, |m, s| m.title = s)? {
        return Ok(bytes);
    }
    Err(DeliveryError::permanent(format!(
        "the push payload for update {} does not fit in {limit} bytes even without its text",
        msg.update_id
    )))
}

fn encode<F>(msg: &PushMessage, render: &F) -> Result<Vec<u8>, DeliveryError>
where
    F: Fn(&PushMessage) -> Result<Vec<u8>, serde_json::Error>,
{
    render(msg)
        .map_err(|e| DeliveryError::permanent(format!("cannot encode the push payload: {e}")))
}

/// Sets the field (through `set`) to the longest start of `text` whose rendering fits,
/// by binary search over character boundaries: escaping makes the rendered size of a
/// character anything from 1 to 12 bytes, so it cannot be computed in one step.
fn shrink<F>(
    msg: &mut PushMessage,
    text: &str,
    limit: usize,
    render: &F,
    set: impl Fn(&mut PushMessage, String),
) -> Result<Option<Vec<u8>>, DeliveryError>
where
    F: Fn(&PushMessage) -> Result<Vec<u8>, serde_json::Error>,
{
    let cut = |end: usize| {
        let kept = text[..end].trim_end();
        if kept.is_empty() {
            String::new()
        } else {
            format!("{kept}…")
        }
    };
    let ends: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    // Find the last index into `ends` whose cut fits; index 0 is the empty text.
    let (mut lo, mut hi) = (0usize, ends.len());
    let mut best = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        set(msg, cut(ends[mid]));
        let bytes = encode(msg, render)?;
        if bytes.len() <= limit {
            best = Some((mid, bytes));
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    match best {
        Some((i, bytes)) => {
            set(msg, cut(ends[i]));
            Ok(Some(bytes))
        }
        None => {
            set(msg, String::new());
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn delivery(message: &str) -> Delivery {
        let mut u = clarion_core::samples::lifecycle(
            "INC-9",
            "Mobile data outage",
            &["customers"],
            jiff::Timestamp::UNIX_EPOCH,
        )
        .remove(0);
        u.message = message.to_string();
        Delivery::new(
            Arc::new(u),
            Arc::from("push"),
            Arc::from(vec!["customers".to_string()]),
        )
    }

    #[test]
    fn composes_status_title_and_ids() {
        let m = compose(&delivery("We are looking."), "customers");
        assert_eq!(m.title, "Investigating: Mobile data outage");
        assert_eq!(m.body, "We are looking.");
        assert_eq!(
            (m.incident_id.as_str(), m.update_id.as_str(), m.sequence),
            ("INC-9", "INC-9-u1", 1)
        );
        assert_eq!(m.collapse_id, "INC-9");
        assert!(m.high_priority);
    }

    #[test]
    fn long_incident_ids_get_a_stable_short_collapse_id() {
        let long = "x".repeat(100);
        assert_eq!(collapse_id(&long), collapse_id(&long));
        assert!(collapse_id(&long).len() <= 64);
        assert_ne!(collapse_id(&long), collapse_id(&"y".repeat(100)));
    }

    fn render(m: &PushMessage) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&serde_json::json!({"t": m.title, "b": m.body}))
    }

    #[test]
    fn fit_shortens_the_body_to_the_limit() {
        // Multi-byte characters and characters that JSON escapes (quotes, control
        // characters) both make the rendered payload longer than the text.
        for text in ["é".repeat(5000), "\"\u{1}".repeat(3000), "a".repeat(10_000)] {
            let mut m = compose(&delivery(&text), "customers");
            let bytes = fit(&mut m, PAYLOAD_LIMIT, render).expect("fits");
            assert!(bytes.len() <= PAYLOAD_LIMIT, "{}", bytes.len());
            assert!(
                bytes.len() > PAYLOAD_LIMIT - 16,
                "cut far too much: {}",
                bytes.len()
            );
            assert!(m.body.ends_with('…'));
            assert_eq!(m.title, "Investigating: Mobile data outage");
        }
    }

    #[test]
    fn fit_leaves_a_short_message_alone_and_gives_up_cleanly() {
        let mut m = compose(&delivery("Short."), "customers");
        fit(&mut m, PAYLOAD_LIMIT, render).expect("fits");
        assert_eq!(m.body, "Short.");
        let err = fit(&mut m, 5, render).expect_err("cannot fit");
        assert_eq!(err.class, clarion_core::ErrorClass::Permanent);
    }
}
