//! What the page is made of: its configuration (`PageConfig`, `Component`), and each
//! incident's public timeline (`Timeline` of `PublicUpdate`s), which is all the page
//! ever knows of an incident.
//!
//! A `PublicUpdate` is cut from an `IncidentUpdate` by [`PublicUpdate::of`]: the
//! wording of the first audience the page serves, the title, status, impact,
//! components, links and time. Nothing else of the update (other audiences' text,
//! regions, locales) and nothing of the ledger is ever in it.

use clarion_core::{Impact, IncidentUpdate, Link, Status};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The shape of a [`Timeline`] as stored (the page topic's values).
pub const TIMELINE_VERSION: u32 = 1;

/// The most updates one incident's timeline keeps; older ones are dropped (and
/// counted in [`Timeline::dropped`]) so that a record always fits its topic.
pub const MAX_UPDATES: usize = 500;

/// The page as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageConfig {
    /// The page's id in the JSON API (`page.id`).
    pub id: String,
    /// The page's name, shown as its heading and in the API.
    pub name: String,
    /// Where the page is read, without a trailing `/` (e.g. `https://status.example.com`):
    /// incident links, the feed's links and the API's `url` and `shortlink` start with it.
    pub url: String,
    /// The IANA time zone name the API reports (`page.time_zone`); the page shows
    /// times in UTC.
    pub time_zone: String,
    /// The audiences whose updates the page shows, in order of preference for the
    /// wording: an update shows the text of the first of these it is published to.
    pub audiences: Vec<String>,
    /// The components, in display order.
    pub components: Vec<Component>,
    /// How many resolved incidents (and completed maintenances) the page lists.
    pub history: usize,
    /// How many entries `history.atom` holds (one per update, newest first).
    pub feed_entries: usize,
}

/// One configured component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    /// The name updates use in their `components` list, and the component's id in
    /// the API.
    pub id: String,
    /// What the page calls it.
    pub name: String,
    pub description: Option<String>,
    /// The group it is shown under, by the group's name.
    pub group: Option<String>,
    /// Shown only while it is not operational.
    pub only_show_if_degraded: bool,
}

impl PageConfig {
    /// The configured component named `id` in an update.
    pub fn component(&self, id: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.id == id)
    }

    /// Checks what the types cannot: ids unique and usable, a URL, sane bounds. The
    /// message names the key, for the config's error.
    pub fn check(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("id: must not be empty".into());
        }
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if !(self.url.starts_with("https://") || self.url.starts_with("http://"))
            || self.url.ends_with('/')
        {
            return Err(format!(
                "url: `{}` must be an http(s) URL without a trailing `/`, e.g. https://status.example.com",
                self.url
            ));
        }
        if self.audiences.is_empty() {
            return Err("audiences: must name at least one audience".into());
        }
        if self.history == 0 || self.history > 1000 {
            return Err(format!(
                "history: must be from 1 to 1000, not {}",
                self.history
            ));
        }
        if self.feed_entries == 0 || self.feed_entries > 1000 {
            return Err(format!(
                "feed_entries: must be from 1 to 1000, not {}",
                self.feed_entries
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.components {
            if c.id.is_empty() || c.id.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                return Err(format!(
                    "components: `{}` is not a component id (no whitespace)",
                    c.id
                ));
            }
            if !seen.insert(c.id.as_str()) {
                return Err(format!("components: `{}` is listed twice", c.id));
            }
            if c.name.trim().is_empty() {
                return Err(format!("components.{}.name: must not be empty", c.id));
            }
        }
        Ok(())
    }
}

/// One update as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicUpdate {
    pub update_id: String,
    pub sequence: u64,
    pub status: Status,
    pub impact: Impact,
    pub title: String,
    /// The wording of the audience the page shows it for.
    pub body: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    pub occurred_at: Timestamp,
}

impl PublicUpdate {
    /// The part of `update` a page serving `audiences` shows, or `None` when the
    /// update is published to none of them (or is a drill, which is no incident).
    pub fn of(update: &IncidentUpdate, audiences: &[String]) -> Option<PublicUpdate> {
        if update.drill {
            return None;
        }
        let audience = audiences.iter().find(|a| update.audiences.contains(a))?;
        Some(PublicUpdate {
            update_id: update.update_id.clone(),
            sequence: update.sequence,
            status: update.status,
            impact: update.impact,
            title: update.title.clone(),
            body: update.message_for(audience).to_string(),
            components: update.components.clone(),
            links: update.links.clone(),
            occurred_at: update.occurred_at,
        })
    }
}

/// One incident's public updates: the page topic's value, keyed by incident id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    pub schema_version: u32,
    pub incident_id: String,
    /// The first update's time; fixed once set, so that ids made from it are stable.
    pub created_at: Timestamp,
    /// By sequence, oldest first; never empty.
    pub updates: Vec<PublicUpdate>,
    /// Older updates left out to keep the record within its bound.
    #[serde(default)]
    pub dropped: u64,
}

impl Timeline {
    /// A timeline of one update.
    pub fn new(incident_id: &str, first: PublicUpdate) -> Timeline {
        Timeline {
            schema_version: TIMELINE_VERSION,
            incident_id: incident_id.to_string(),
            created_at: first.occurred_at,
            updates: vec![first],
            dropped: 0,
        }
    }

    /// Adds an update (or replaces the one with its id); true when something
    /// changed. Order does not matter: merging the same updates in any order gives
    /// the same timeline, so two writers that each saw part of it agree once they
    /// have seen all of it.
    pub fn merge(&mut self, update: PublicUpdate) -> bool {
        if let Some(have) = self
            .updates
            .iter_mut()
            .find(|u| u.update_id == update.update_id)
        {
            if *have == update {
                return false;
            }
            *have = update;
        } else {
            self.created_at = self.created_at.min(update.occurred_at);
            self.updates.push(update);
        }
        self.updates
            .sort_by(|a, b| (a.sequence, &a.update_id).cmp(&(b.sequence, &b.update_id)));
        true
    }

    /// Merges every update of `other` (the same incident) into this one.
    pub fn merge_all(&mut self, other: Timeline) -> bool {
        let mut changed = false;
        self.created_at = self.created_at.min(other.created_at);
        self.dropped = self.dropped.max(other.dropped);
        for u in other.updates {
            changed |= self.merge(u);
        }
        changed
    }

    /// Drops the oldest updates until at most [`MAX_UPDATES`] remain and the
    /// serialized record is at most `max_bytes` (one update is always kept).
    pub fn bound(&mut self, max_bytes: usize) {
        while self.updates.len() > 1
            && (self.updates.len() > MAX_UPDATES || self.to_bytes().len() > max_bytes)
        {
            self.updates.remove(0);
            self.dropped += 1;
        }
    }

    /// The record's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings, numbers and timestamps: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a record, refusing another version with a reason.
    pub fn from_slice(bytes: &[u8]) -> Result<Timeline, String> {
        let t: Timeline = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if t.schema_version != TIMELINE_VERSION {
            return Err(format!(
                "schema_version {} (this build reads {TIMELINE_VERSION})",
                t.schema_version
            ));
        }
        if t.updates.is_empty() {
            return Err("a timeline without updates".into());
        }
        Ok(t)
    }

    /// The latest update (highest sequence).
    pub fn latest(&self) -> &PublicUpdate {
        // `updates` is never empty: `new` starts it with one and nothing removes
        // the last.
        &self.updates[self.updates.len() - 1]
    }

    pub fn title(&self) -> &str {
        &self.latest().title
    }

    pub fn status(&self) -> Status {
        self.latest().status
    }

    /// A scheduled maintenance rather than an incident: its latest status is one of
    /// the maintenance states.
    pub fn is_maintenance(&self) -> bool {
        self.status().is_maintenance()
    }

    /// Still going on: not resolved (an incident) or completed (a maintenance).
    pub fn is_open(&self) -> bool {
        !matches!(self.status(), Status::Resolved | Status::Completed)
    }

    /// When it was resolved or completed, if it was.
    pub fn closed_at(&self) -> Option<Timestamp> {
        (!self.is_open()).then(|| self.latest().occurred_at)
    }

    /// The time of its most recent update.
    pub fn updated_at(&self) -> Timestamp {
        self.updates
            .iter()
            .map(|u| u.occurred_at)
            .max()
            .unwrap_or(self.created_at)
    }

    /// The impact shown for the incident: its latest update's.
    pub fn impact(&self) -> Impact {
        self.latest().impact
    }

    /// The components it affects now: those named by its latest update that names
    /// any.
    pub fn components(&self) -> &[String] {
        self.updates
            .iter()
            .rev()
            .find(|u| !u.components.is_empty())
            .map(|u| u.components.as_slice())
            .unwrap_or(&[])
    }

    /// True when this timeline already holds `update_id`, or holds later updates
    /// and dropped the older ones it would be among.
    pub fn has(&self, update_id: &str, sequence: u64) -> bool {
        self.updates.iter().any(|u| u.update_id == update_id)
            || (self.dropped > 0 && self.updates.first().is_some_and(|u| u.sequence > sequence))
    }
}

/// A file name for an incident's page that is safe on every origin and in a URL:
/// the id itself when it is made of letters, digits, `-`, `_` and `.` (not
/// leading), else a slug of it with a short hash that keeps different ids apart.
pub fn slug(incident_id: &str) -> String {
    let plain = !incident_id.is_empty()
        && !incident_id.starts_with('.')
        && incident_id.len() <= 100
        && incident_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        return incident_id.to_string();
    }
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(incident_id.as_bytes());
    let mut s: String = incident_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(60)
        .collect();
    s = s.trim_matches('-').to_string();
    if s.is_empty() {
        s.push_str("incident");
    }
    format!("{s}-{}", &hex::encode(hash)[..10])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(seq: u64, audiences: &[&str]) -> IncidentUpdate {
        let start: Timestamp = "2026-11-28T10:00:00Z".parse().expect("ts");
        let mut u = clarion_core::samples::lifecycle("INC-1", "Outage", audiences, start)
            .remove(seq as usize - 1);
        u.audience_messages = [
            ("public".to_string(), format!("Public text {seq}")),
            ("regulators".to_string(), format!("Regulator text {seq}")),
        ]
        .into_iter()
        .filter(|(a, _)| u.audiences.contains(a))
        .collect();
        u
    }

    #[test]
    fn only_the_served_audience_wording_is_kept() {
        let served = vec!["public".to_string()];
        let u = update(1, &["public", "regulators"]);
        let p = PublicUpdate::of(&u, &served).expect("public");
        assert_eq!(p.body, "Public text 1");
        let text = serde_json::to_string(&p).expect("json");
        assert!(!text.contains("Regulator"), "{text}");
        assert!(!text.contains("north"), "regions stay out: {text}");
        assert_eq!(PublicUpdate::of(&update(1, &["regulators"]), &served), None);
        let mut drill = update(1, &["public"]);
        drill.drill = true;
        assert_eq!(PublicUpdate::of(&drill, &served), None);
        // No override: the general message, which is meant for every audience.
        let mut plain = update(2, &["public"]);
        plain.audience_messages.clear();
        assert_eq!(
            PublicUpdate::of(&plain, &served).map(|p| p.body),
            Some(plain.message.clone())
        );
    }

    #[test]
    fn merging_is_order_free_and_bounded() {
        let served = vec!["public".to_string()];
        let ups: Vec<PublicUpdate> = (1..=4)
            .map(|s| PublicUpdate::of(&update(s, &["public"]), &served).expect("public"))
            .collect();
        let mut a = Timeline::new("INC-1", ups[3].clone());
        for u in [&ups[1], &ups[0], &ups[2]] {
            assert!(a.merge(u.clone()));
        }
        let mut b = Timeline::new("INC-1", ups[0].clone());
        for u in &ups[1..] {
            b.merge(u.clone());
        }
        assert_eq!(a, b);
        assert!(
            !a.merge(ups[2].clone()),
            "the same update again changes nothing"
        );
        assert_eq!(a.created_at, ups[0].occurred_at);
        assert_eq!(a.status(), Status::Resolved);
        assert!(!a.is_open());
        let back = Timeline::from_slice(&a.to_bytes()).expect("round trip");
        assert_eq!(back, a);
        let mut small = a.clone();
        small.bound(a.to_bytes().len() - 1);
        assert_eq!(small.updates.len(), 3);
        assert_eq!(small.dropped, 1);
        assert!(small.has(&ups[0].update_id, 1), "dropped counts as held");
        assert!(small.to_bytes().len() < a.to_bytes().len());
    }

    #[test]
    fn slugs_are_safe_and_distinct() {
        assert_eq!(slug("INC-2026.11_7"), "INC-2026.11_7");
        let a = slug("../etc/passwd");
        assert!(a.starts_with("etc-passwd-"), "{a}");
        assert!(!a.contains('/') && !a.contains(".."));
        assert_ne!(slug("a/b"), slug("a?b"));
        assert!(slug("?").starts_with("incident-"));
    }
}
