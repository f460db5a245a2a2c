//! What the ledger's confirmation records say about one incident
//! (docs/confirmations.md#status-and-report): for `clarion status`, who
//! confirmed, who did not and who was unreachable, per notice; for `clarion
//! report`, the time to confirm per audience and the confirmation deadline.
//!
//! A section of its own beside `report.rs`, from confirmation records only
//! (`records::confirmations`); nothing here reads the delivery records.

use crate::config::Require;
use crate::records::confirmations::{ConfirmationRecord, Event};
use clarion_render::html_escape;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

/// One notice that had to be confirmed: one update to one target.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub update_id: String,
    pub sequence: u64,
    pub target: String,
    pub audiences: Vec<String>,
    pub require: String,
    pub opened_at: jiff::Timestamp,
    /// Closed, and whether it got what it required; `None` while open.
    pub met: Option<bool>,
    /// When the requirement was met, if it was.
    pub met_at: Option<jiff::Timestamp>,
    pub recipients: Vec<Recipient>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
}

/// One recipient of a notice.
#[derive(Debug, Clone, Serialize)]
pub struct Recipient {
    /// The masked address, or the escalation's person.
    pub who: String,
    /// `confirmed`, `not_confirmed`, `unreachable`, or while open `waiting`.
    pub state: String,
    /// How they confirmed: `link`, `sms`, `voice`.
    pub via: Option<String>,
    pub confirmed_at: Option<jiff::Timestamp>,
    pub time_to_confirm_s: Option<u64>,
    /// The channels they were asked on, in order.
    pub channels: Vec<String>,
}

/// The notices of `records` (one incident's), in sequence then target order.
pub fn notices(records: &[ConfirmationRecord]) -> Vec<Notice> {
    let mut by_case: BTreeMap<(u64, String, String), Vec<&ConfirmationRecord>> = BTreeMap::new();
    for r in records {
        by_case
            .entry((r.sequence, r.target.clone(), r.case.clone()))
            .or_default()
            .push(r);
    }
    let mut out = Vec::new();
    for ((sequence, target, _), mut rs) in by_case {
        rs.sort_by_key(|r| r.at);
        let first = rs[0];
        let closed = rs.iter().find(|r| r.event == Event::Closed);
        let mut who: BTreeMap<String, Recipient> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for r in &rs {
            let Some(key) = r.recipient_ref.clone() else {
                continue;
            };
            let name = r
                .person
                .clone()
                .or_else(|| r.recipient.clone())
                .unwrap_or_else(|| "-".into());
            let entry = who.entry(key.clone()).or_insert_with(|| {
                order.push(key.clone());
                Recipient {
                    who: name,
                    state: "waiting".into(),
                    via: None,
                    confirmed_at: None,
                    time_to_confirm_s: None,
                    channels: Vec::new(),
                }
            });
            match r.event {
                Event::Requested => {
                    if let Some(c) = r.via_target.clone().or_else(|| r.channel.clone()) {
                        entry.channels.push(c);
                    }
                }
                Event::Confirmed => {
                    entry.state = "confirmed".into();
                    entry.via.clone_from(&r.via);
                    entry.confirmed_at = Some(r.at);
                    entry.time_to_confirm_s = r.time_to_confirm_ms.map(|ms| ms / 1000);
                }
                Event::NotConfirmed if entry.state != "confirmed" => {
                    entry.state = "not_confirmed".into()
                }
                Event::Unreachable if entry.state != "confirmed" => {
                    entry.state = "unreachable".into()
                }
                _ => {}
            }
        }
        let recipients: Vec<Recipient> = order.iter().filter_map(|k| who.remove(k)).collect();
        // When the requirement was met: at the confirmation that made it so.
        let require = Require::from_label(&first.require);
        let asked = recipients.len();
        let mut times: Vec<jiff::Timestamp> =
            recipients.iter().filter_map(|r| r.confirmed_at).collect();
        times.sort();
        let met_at = require.and_then(|req| {
            times
                .iter()
                .enumerate()
                .find(|(i, _)| req.met(i + 1, asked))
                .map(|(_, t)| *t)
        });
        out.push(Notice {
            update_id: first.update_id.clone(),
            sequence,
            target,
            audiences: first.audiences.clone(),
            require: first.require.clone(),
            opened_at: first.opened_at,
            met: closed.and_then(|c| c.met),
            met_at,
            recipients,
            drill: first.drill,
        });
    }
    out
}

/// `clarion status`'s confirmation section.
pub fn status_section(records: &[ConfirmationRecord]) -> String {
    let notices = notices(records);
    if notices.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nconfirmations:\n");
    for n in &notices {
        let state = match n.met {
            None => "open".to_string(),
            Some(true) => "closed, met".to_string(),
            Some(false) => "closed, NOT met".to_string(),
        };
        let count = |s: &str| n.recipients.iter().filter(|r| r.state == s).count();
        let _ = writeln!(
            out,
            "  seq {} {} (require {}, {}): {} confirmed, {} not confirmed, {} unreachable, {} waiting{}",
            n.sequence,
            n.target,
            n.require,
            state,
            count("confirmed"),
            count("not_confirmed"),
            count("unreachable"),
            count("waiting"),
            if n.drill { " [drill]" } else { "" }
        );
        let width = n
            .recipients
            .iter()
            .map(|r| r.who.chars().count())
            .max()
            .unwrap_or(0);
        for r in &n.recipients {
            let how = match (&r.via, r.time_to_confirm_s) {
                (Some(via), Some(s)) => format!(" by {via} after {}", secs(s)),
                (Some(via), None) => format!(" by {via}"),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "    {:<width$}  {}{how}  (asked on: {})",
                r.who,
                r.state,
                if r.channels.is_empty() {
                    "-".to_string()
                } else {
                    r.channels.join(", ")
                }
            );
        }
    }
    out
}

fn secs(s: u64) -> String {
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// Time to confirm for one audience, as `clarion report` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AudienceConfirmations {
    pub audience: String,
    pub notices: usize,
    pub asked: usize,
    pub confirmed: usize,
    pub not_confirmed: usize,
    pub unreachable: usize,
    /// The first notice to this audience that had to be confirmed.
    pub first_asked_at: jiff::Timestamp,
    /// When the first of them got what it required.
    pub first_met_at: Option<jiff::Timestamp>,
    pub time_to_first_met_s: Option<u64>,
    /// The median of recipients' times to confirm.
    pub median_time_to_confirm_s: Option<u64>,
    pub slowest_time_to_confirm_s: Option<u64>,
    /// `confirmed_within`, judged: `met`, `missed`, `open`.
    pub deadline: Option<String>,
}

/// Per audience, from the notices of one incident.
pub fn per_audience(
    records: &[ConfirmationRecord],
    deadlines: &BTreeMap<String, Duration>,
    now: jiff::Timestamp,
) -> Vec<AudienceConfirmations> {
    let notices = notices(records);
    let audiences: BTreeSet<&String> = notices.iter().flat_map(|n| &n.audiences).collect();
    let mut out = Vec::new();
    for a in audiences {
        let mine: Vec<&Notice> = notices.iter().filter(|n| n.audiences.contains(a)).collect();
        let Some(first_asked_at) = mine.iter().map(|n| n.opened_at).min() else {
            continue;
        };
        let everyone: Vec<&Recipient> = mine.iter().flat_map(|n| &n.recipients).collect();
        let count = |s: &str| everyone.iter().filter(|r| r.state == s).count();
        let mut times: Vec<u64> = everyone
            .iter()
            .filter_map(|r| r.time_to_confirm_s)
            .collect();
        times.sort();
        let first_met_at = mine.iter().filter_map(|n| n.met_at).min();
        let deadline = deadlines.get(a).map(|within| {
            let due = jiff::SignedDuration::try_from(*within)
                .ok()
                .and_then(|d| first_asked_at.checked_add(d).ok())
                .unwrap_or(jiff::Timestamp::MAX);
            match first_met_at {
                Some(t) if t <= due => "met",
                Some(_) => "missed",
                None if now > due => "missed",
                None => "open",
            }
            .to_string()
        });
        out.push(AudienceConfirmations {
            audience: a.clone(),
            notices: mine.len(),
            asked: everyone.len(),
            confirmed: count("confirmed"),
            not_confirmed: count("not_confirmed"),
            unreachable: count("unreachable"),
            first_asked_at,
            first_met_at,
            time_to_first_met_s: first_met_at
                .map(|t| t.duration_since(first_asked_at).as_secs().max(0) as u64),
            median_time_to_confirm_s: times.get(times.len() / 2).copied(),
            slowest_time_to_confirm_s: times.last().copied(),
            deadline,
        });
    }
    out
}

/// `clarion report --html`'s confirmation section (empty when none was asked).
pub fn html_section(rows: &[AudienceConfirmations]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut h = String::from(
        "<h2>Time to confirm per audience</h2><table><tr><th>Audience</th><th class=\"num\">Notices</th>\
         <th class=\"num\">Asked</th><th class=\"num\">Confirmed</th><th class=\"num\">Not confirmed</th>\
         <th class=\"num\">Unreachable</th><th>First met</th><th>Median to confirm</th>\
         <th>Slowest</th><th>Deadline</th></tr>",
    );
    let opt = |s: Option<u64>| s.map_or_else(|| "-".to_string(), secs);
    for r in rows {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            html_escape(&r.audience),
            r.notices,
            r.asked,
            r.confirmed,
            r.not_confirmed,
            r.unreachable,
            opt(r.time_to_first_met_s),
            opt(r.median_time_to_confirm_s),
            opt(r.slowest_time_to_confirm_s),
            r.deadline
                .as_deref()
                .map(|v| format!("<span class=\"{v}\">{v}</span>"))
                .unwrap_or_else(|| "-".into()),
        );
    }
    h.push_str("</table>");
    h
}
