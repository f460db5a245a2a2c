//! `format = "statuspage"`: the body in Atlassian Statuspage's subscriber-webhook
//! shape (`{meta, page, incident}`), which chat integrations that subscribe to
//! Statuspage pages (Zulip's, for one) already parse.
//!
//! A webhook target sees one update at a time, so `page.status_indicator` is this
//! incident's (its impact while open, `none` once resolved), not a roll-up of every
//! open incident: the status page's own `api/v2/status.json` is that. The text is
//! the first served audience's wording, as in every other channel. Like the
//! standard envelope, the bytes depend only on the delivery.

use clarion_core::{Delivery, Impact, Status};
use clarion_statuspage::Indicator;
use serde::{Deserialize, Serialize};

/// `[targets.NAME.statuspage]`: what the subscriber shape says about the page.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatuspagePreset {
    /// `page.id` in the body.
    pub page_id: String,
    /// The status page's URL (no trailing `/`): each incident's `shortlink` is its
    /// page there. Unset: the update's first link, if any.
    #[serde(default)]
    pub page_url: Option<String>,
    /// `meta.unsubscribe`: where a subscriber stops these (unset: `null`).
    #[serde(default)]
    pub unsubscribe_url: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    meta: Meta<'a>,
    page: Page<'a>,
    incident: Incident<'a>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    drill: bool,
}

#[derive(Serialize)]
struct Meta<'a> {
    unsubscribe: Option<&'a str>,
    documentation: Option<&'a str>,
    generated_at: jiff::Timestamp,
}

#[derive(Serialize)]
struct Page<'a> {
    id: &'a str,
    status_indicator: &'static str,
    status_description: &'static str,
}

#[derive(Serialize)]
struct Incident<'a> {
    id: &'a str,
    name: &'a str,
    status: &'static str,
    impact: &'static str,
    created_at: jiff::Timestamp,
    updated_at: jiff::Timestamp,
    monitoring_at: Option<jiff::Timestamp>,
    resolved_at: Option<jiff::Timestamp>,
    shortlink: Option<String>,
    incident_updates: [Update<'a>; 1],
    components: Vec<ComponentRef<'a>>,
}

#[derive(Serialize)]
struct Update<'a> {
    id: &'a str,
    incident_id: &'a str,
    status: &'static str,
    body: &'a str,
    created_at: jiff::Timestamp,
    updated_at: jiff::Timestamp,
    display_at: jiff::Timestamp,
}

#[derive(Serialize)]
struct ComponentRef<'a> {
    id: &'a str,
    name: &'a str,
}

/// The body for one delivery.
pub(crate) fn body(delivery: &Delivery, preset: &StatuspagePreset) -> Vec<u8> {
    let u = &delivery.update;
    let audience = delivery.audiences.first().map(String::as_str).unwrap_or("");
    let open = !matches!(u.status, Status::Resolved | Status::Completed);
    let indicator = match (open, u.status, u.impact) {
        (false, _, _) => Indicator::None,
        (true, Status::InProgress | Status::Verifying, _) => Indicator::Maintenance,
        (true, s, _) if s.is_maintenance() => Indicator::None,
        (true, _, Impact::None) => Indicator::None,
        (true, _, Impact::Minor) => Indicator::Minor,
        (true, _, Impact::Major) => Indicator::Major,
        (true, _, Impact::Critical) => Indicator::Critical,
    };
    let at = u.occurred_at;
    let shortlink = match &preset.page_url {
        Some(base) => Some(format!(
            "{}/{}",
            base.trim_end_matches('/'),
            clarion_statuspage::incident_path(&u.incident_id)
        )),
        None => u.links.first().map(|l| l.url.clone()),
    };
    let b = Body {
        meta: Meta {
            unsubscribe: preset.unsubscribe_url.as_deref(),
            documentation: None,
            generated_at: at,
        },
        page: Page {
            id: &preset.page_id,
            status_indicator: indicator.as_str(),
            status_description: indicator.description(),
        },
        incident: Incident {
            id: &u.incident_id,
            name: &u.title,
            status: u.status.as_str(),
            impact: u.impact.as_str(),
            created_at: at,
            updated_at: at,
            monitoring_at: (u.status == Status::Monitoring).then_some(at),
            resolved_at: (!open).then_some(at),
            shortlink,
            incident_updates: [Update {
                id: &u.update_id,
                incident_id: &u.incident_id,
                status: u.status.as_str(),
                body: u.message_for(audience),
                created_at: at,
                updated_at: at,
                display_at: at,
            }],
            components: u
                .components
                .iter()
                .map(|c| ComponentRef { id: c, name: c })
                .collect(),
        },
        drill: u.drill,
    };
    // Strings, numbers and timestamps: serializing cannot fail.
    serde_json::to_vec(&b).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_subscriber_shape_carries_one_audience_and_the_incident() {
        let start = "2026-11-28T09:00:00Z".parse().expect("ts");
        let mut u = clarion_core::samples::lifecycle(
            "INC-7",
            "Mobile data outage",
            &["public", "regulators"],
            start,
        )
        .remove(0);
        u.audience_messages
            .insert("public".into(), "Sorry, data is down.".into());
        u.audience_messages
            .insert("regulators".into(), "Article 40 notice.".into());
        let d = Delivery::new(
            Arc::new(u),
            "chat".into(),
            vec!["public".to_string()].into(),
        );
        let preset = StatuspagePreset {
            page_id: "example".into(),
            page_url: Some("https://status.example.com".into()),
            unsubscribe_url: Some("https://status.example.com/unsubscribe".into()),
        };
        let bytes = body(&d, &preset);
        assert_eq!(bytes, body(&d, &preset), "the same bytes on every attempt");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["page"]["id"], "example");
        assert_eq!(v["page"]["status_indicator"], "major");
        assert_eq!(v["page"]["status_description"], "Partial System Outage");
        assert_eq!(
            v["meta"]["unsubscribe"],
            "https://status.example.com/unsubscribe"
        );
        assert_eq!(v["meta"]["generated_at"], "2026-11-28T09:00:00Z");
        assert_eq!(v["incident"]["name"], "Mobile data outage");
        assert_eq!(v["incident"]["status"], "investigating");
        assert_eq!(
            v["incident"]["shortlink"],
            "https://status.example.com/incidents/INC-7.html"
        );
        assert_eq!(
            v["incident"]["incident_updates"][0]["body"],
            "Sorry, data is down."
        );
        assert_eq!(v["incident"]["resolved_at"], serde_json::Value::Null);
        assert!(!String::from_utf8_lossy(&bytes).contains("Article 40"));
    }
}
