//! `clarion status` and `clarion report`: what the ledger says about one incident,
//! as a table for a terminal, JSON for scripts, or a self-contained HTML page for
//! the post-incident review and the regulator filing.
//!
//! Everything here is computed from the incident's notices (`records::notices`,
//! folded from the ledger: every notice that is due, final or not) and the config's
//! deadlines, judged by `records::deadlines::judge`, the daemon's own judgement;
//! nothing is read from logs. A notice not final yet is shown pending, with why: a
//! wrong "delivered" or "met" is worse than "not yet". The HTML must stay
//! self-contained (inline CSS and SVG, no script, no external URL) so that it
//! renders the same when filed months later, and every text from the ledger is
//! escaped.

use crate::cli::timeline::{self, Lane, Mark};
use crate::config::Deadlines;
use crate::records::deadlines::{Verdict, due, judge};
use crate::records::notices::{Notice, State, Tally, clock, error_text};
use clarion_render::html_escape;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

/// Exit codes of `status`, as docs/publishing.md lists them.
pub const EXIT_REACHED: u8 = 0;
pub const EXIT_DEAD_LETTERED: u8 = 1;
pub const EXIT_NOTHING: u8 = 2;
pub const EXIT_PENDING: u8 = 3;

/// The facts of one incident, as `report --json` and `status --json` print them.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentReport {
    pub incident_id: String,
    pub generated_at: jiff::Timestamp,
    /// How many notices are due, and in which state.
    pub tally: Tally,
    pub updates: Vec<UpdateRow>,
    pub audiences: Vec<AudienceRow>,
    /// Every notice due (one update to one target), in update then target order.
    pub notices: Vec<Notice>,
    /// Updates of which the daemon has not recorded yet what they owe each target
    /// (`records::notices::undeclared`): more notices may be due.
    pub undeclared: Vec<String>,
}

/// One update of the incident, as the ledger saw it.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateRow {
    pub update_id: String,
    pub sequence: u64,
    pub status: String,
    pub occurred_at: jiff::Timestamp,
    pub published_at: Option<jiff::Timestamp>,
    pub audiences: Vec<String>,
    /// Per audience, the first successful delivery of this update.
    pub first_delivered: BTreeMap<String, jiff::Timestamp>,
    /// The audiences with a notice of this update not final yet.
    pub pending: Vec<String>,
}

/// One audience: when it was first told, and how it did against its deadlines.
#[derive(Debug, Clone, Serialize)]
pub struct AudienceRow {
    pub audience: String,
    /// The `occurred_at` of the incident's first update due to this audience.
    pub first_update_at: jiff::Timestamp,
    /// The first successful delivery to this audience.
    pub first_notice_at: Option<jiff::Timestamp>,
    pub time_to_first_notice_s: Option<i64>,
    /// Final outcomes, per recipient (one per webhook delivery).
    pub delivered: usize,
    pub dead_lettered: usize,
    pub superseded: usize,
    /// Notices due to this audience and not final yet.
    pub pending: usize,
    /// Of those, the recipients still to reach, where the daemon said.
    pub pending_recipients: u64,
    pub deadlines: Vec<DeadlineRow>,
}

/// One deadline of an audience.
#[derive(Debug, Clone, Serialize)]
pub struct DeadlineRow {
    /// `first_notice` or a status (`resolved`).
    pub deadline: String,
    pub start: jiff::Timestamp,
    pub due: jiff::Timestamp,
    pub met_at: Option<jiff::Timestamp>,
    /// `met`, `missed` (met late, or not met and past due), `open`.
    pub verdict: String,
}

/// Builds the report of `notices` (one incident's), judging `deadlines` at `now`;
/// `undeclared` are the updates whose notices are not all known yet.
pub fn build(
    incident_id: &str,
    notices: Vec<Notice>,
    undeclared: Vec<String>,
    deadlines: &BTreeMap<String, Deadlines>,
    now: jiff::Timestamp,
) -> IncidentReport {
    let mut updates: BTreeMap<(u64, String), UpdateRow> = BTreeMap::new();
    for n in &notices {
        let u = updates
            .entry((n.sequence, n.update_id.clone()))
            .or_insert_with(|| UpdateRow {
                update_id: n.update_id.clone(),
                sequence: n.sequence,
                status: n.status.clone(),
                occurred_at: n.occurred_at,
                published_at: n.published_at,
                audiences: Vec::new(),
                first_delivered: BTreeMap::new(),
                pending: Vec::new(),
            });
        if u.published_at.is_none() {
            u.published_at = n.published_at;
        }
        for a in &n.audiences {
            if !u.audiences.contains(a) {
                u.audiences.push(a.clone());
            }
            if let Some(t) = n.first_delivered() {
                let first = u.first_delivered.entry(a.clone()).or_insert(t);
                *first = (*first).min(t);
            }
            if n.state == State::Pending && !u.pending.contains(a) {
                u.pending.push(a.clone());
            }
        }
    }
    let audiences: BTreeSet<&String> = notices.iter().flat_map(|n| &n.audiences).collect();
    let mut rows = Vec::new();
    for audience in audiences {
        let mine: Vec<&Notice> = notices.iter().filter(|n| n.serves(audience)).collect();
        let Some(first_update_at) = mine.iter().map(|n| n.occurred_at).min() else {
            continue;
        };
        let first_notice_at = mine.iter().filter_map(|n| n.first_delivered()).min();
        let count = |o: &str| mine.iter().map(|n| n.count(o)).sum();
        let pending: Vec<&&Notice> = mine.iter().filter(|n| n.state == State::Pending).collect();
        let mut dl = Vec::new();
        if let Some(d) = deadlines.get(audience) {
            let row = |name: String, start, within: Duration, met_at| {
                let verdict = judge(start, within, met_at, now);
                DeadlineRow {
                    deadline: name,
                    start,
                    due: due(start, within),
                    met_at,
                    verdict: verdict.as_str().to_string(),
                }
            };
            if let Some(within) = d.first_notice_within {
                dl.push(row(
                    "first_notice".into(),
                    first_update_at,
                    within,
                    first_notice_at,
                ));
            }
            for (status, within) in &d.by_status {
                let of_status: Vec<&&Notice> = mine
                    .iter()
                    .filter(|n| n.status == status.as_str())
                    .collect();
                let Some(start) = of_status.iter().map(|n| n.occurred_at).min() else {
                    continue;
                };
                let met = of_status.iter().filter_map(|n| n.first_delivered()).min();
                dl.push(row(status.as_str().to_string(), start, *within, met));
            }
        }
        rows.push(AudienceRow {
            audience: audience.clone(),
            first_update_at,
            first_notice_at,
            time_to_first_notice_s: first_notice_at
                .map(|t| t.duration_since(first_update_at).as_secs()),
            delivered: count("delivered"),
            dead_lettered: count("dead_lettered"),
            superseded: count("superseded"),
            pending: pending.len(),
            pending_recipients: pending
                .iter()
                .filter_map(|n| n.pending.as_ref().and_then(|p| p.recipients_pending))
                .map(u64::from)
                .sum(),
            deadlines: dl,
        });
    }
    IncidentReport {
        incident_id: incident_id.to_string(),
        generated_at: now,
        tally: Tally::of(&notices),
        updates: updates.into_values().collect(),
        audiences: rows,
        notices,
        undeclared,
    }
}

/// Keeps only the notices due to `audience`.
pub fn only_audience(notices: Vec<Notice>, audience: &str) -> Vec<Notice> {
    notices.into_iter().filter(|n| n.serves(audience)).collect()
}

/// `status`'s exit code for a report.
pub fn exit_code(r: &IncidentReport) -> u8 {
    let tally = &r.tally;
    if tally.due == 0 {
        EXIT_NOTHING
    } else if tally.dead_lettered > 0 {
        EXIT_DEAD_LETTERED
    } else if tally.pending > 0 || !r.undeclared.is_empty() {
        EXIT_PENDING
    } else {
        EXIT_REACHED
    }
}

fn time(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

fn secs(s: i64) -> String {
    humantime::format_duration(Duration::from_secs(s.unsigned_abs())).to_string()
}

/// One row of the table of notices: a final outcome, or a notice still pending.
struct Row<'a> {
    n: &'a Notice,
    recipient: String,
    outcome: &'static str,
    at: jiff::Timestamp,
    attempts: u32,
    provider: String,
    detail: String,
}

fn rows(notices: &[Notice]) -> Vec<Row<'_>> {
    let mut out = Vec::new();
    for n in notices {
        for f in &n.finals {
            let mut detail = match (&f.error, &f.superseded_by) {
                (Some(e), _) => error_text(e),
                (None, Some(by)) => format!("by {by}"),
                (None, None) => f.provider_id.clone().unwrap_or_else(|| "-".into()),
            };
            if f.replayed {
                detail.push_str(" (replayed)");
            }
            out.push(Row {
                n,
                recipient: f.recipient.clone().unwrap_or_else(|| "-".into()),
                outcome: match f.outcome.as_str() {
                    "delivered" => "delivered",
                    "dead_lettered" => "dead_lettered",
                    _ => "superseded",
                },
                at: f.at,
                attempts: f.attempts,
                provider: f.provider.clone().unwrap_or_else(|| "-".into()),
                detail,
            });
        }
        if let Some(p) = &n.pending {
            out.push(Row {
                n,
                recipient: if n.finals.is_empty() {
                    "-".into()
                } else {
                    "(the rest)".into()
                },
                outcome: "pending",
                at: p.updated_at,
                attempts: p.attempts,
                provider: p.provider.clone().unwrap_or_else(|| "-".into()),
                detail: p.why(&n.target),
            });
        }
    }
    out
}

/// The lines about deadlines: one per deadline, with its verdict.
fn deadline_lines(r: &IncidentReport) -> Vec<String> {
    let mut out = Vec::new();
    for a in &r.audiences {
        for d in &a.deadlines {
            let how = match (d.verdict.as_str(), d.met_at) {
                (_, Some(m)) => format!("first delivered {}", clock(m)),
                ("missed", None) => "no delivery yet".to_string(),
                _ => "not delivered yet".to_string(),
            };
            out.push(format!(
                "deadline {} {}: {} (due {}, {how})",
                a.audience,
                d.deadline,
                d.verdict.to_uppercase(),
                clock(d.due)
            ));
        }
    }
    out
}

/// `clarion status`: one row per update × target × recipient (and one for each
/// notice still pending), then "not yet, and why" per audience, and deadlines.
pub fn status_table(r: &IncidentReport) -> String {
    let mut table: Vec<[String; 11]> = vec![[
        "SEQ".into(),
        "STATUS".into(),
        "TARGET".into(),
        "CHANNEL".into(),
        "AUDIENCES".into(),
        "RECIPIENT".into(),
        "OUTCOME".into(),
        "AT (UTC)".into(),
        "ATTEMPTS".into(),
        "PROVIDER".into(),
        "PROVIDER ID / REASON".into(),
    ]];
    for row in rows(&r.notices) {
        table.push([
            row.n.sequence.to_string(),
            row.n.status.clone(),
            row.n.target.clone(),
            row.n.channel.clone(),
            row.n.audiences.join(","),
            row.recipient,
            row.outcome.to_string(),
            time(&row.at),
            row.attempts.to_string(),
            row.provider,
            row.detail,
        ]);
    }
    let widths: Vec<usize> = (0..11)
        .map(|i| {
            table
                .iter()
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!("incident {}: {}\n", r.incident_id, r.tally.line());
    for row in &table {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for a in &r.audiences {
        if a.pending == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "audience {}: NOT YET: {} notice(s) not final",
            a.audience, a.pending
        );
        for n in r
            .notices
            .iter()
            .filter(|n| n.state == State::Pending && n.serves(&a.audience))
        {
            let why = n
                .pending
                .as_ref()
                .map(|p| p.why(&n.target))
                .unwrap_or_default();
            let _ = writeln!(out, "  {} #{} ({}): {why}", n.target, n.sequence, n.status);
        }
    }
    for line in deadline_lines(r) {
        let _ = writeln!(out, "{line}");
    }
    if r.tally.dead_lettered > 0 {
        let _ = writeln!(
            out,
            "{} notice(s) dead-lettered: see the dead-letter topic for the full recipient and reason; `clarion dlq replay --target NAME` sends them again",
            r.tally.dead_lettered
        );
    }
    for u in &r.undeclared {
        let _ = writeln!(
            out,
            "update {u}: NOT YET KNOWN which targets it is due to: the daemon's events stream has not recorded it yet (it is behind); more notices may follow"
        );
    }
    if r.tally.pending > 0 {
        let _ = writeln!(
            out,
            "{} notice(s) not final yet: the daemon goes on trying; run `clarion status {}` again",
            r.tally.pending, r.incident_id
        );
    }
    out
}

const CSS: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em;color:#1d2330}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .5em}
.meta{color:#5b6472}table{border-collapse:collapse;width:100%;margin:.4em 0}
th,td{border-bottom:1px solid #dde1e7;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600}td.num{text-align:right}
.delivered{color:#17803d}.dead_lettered{color:#b42318;font-weight:600}.superseded{color:#6b7280}
.pending{color:#b45309;font-weight:600}
.met{color:#17803d}.missed{color:#b42318;font-weight:600}.open{color:#b45309}
.notyet{border-left:4px solid #b45309;padding:.4em .8em;background:#fff8eb}
svg{background:#fbfcfd;border:1px solid #dde1e7}svg text{font:11px system-ui,sans-serif;fill:#1d2330}
@media print{body{margin:1cm}}";

/// `clarion report --html`: a self-contained page.
pub fn html(r: &IncidentReport) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Incident {id}: notification report</title><style>{CSS}</style></head><body>\
         <h1>Incident {id}: who was told what, and when</h1>\
         <p class=\"meta\">Generated {gen} UTC by clarion {ver} from the delivery ledger. \
         {tally}; {u} update(s). Times are UTC.</p>",
        id = html_escape(&r.incident_id),
        gen = time(&r.generated_at),
        ver = env!("CARGO_PKG_VERSION"),
        tally = html_escape(&r.tally.line()),
        u = r.updates.len(),
    );
    if !r.undeclared.is_empty() {
        let _ = write!(
            h,
            "<p class=\"notyet\"><strong>Not complete:</strong> the daemon had not yet recorded which targets update(s) {} are due to; more notices may follow.</p>",
            html_escape(&r.undeclared.join(", "))
        );
    }
    if r.tally.pending > 0 {
        let _ = write!(
            h,
            "<p class=\"notyet\"><strong>Not final:</strong> {} notice(s) were still pending when this report was made; the counts and deadlines below are as of {} UTC.</p>",
            r.tally.pending,
            time(&r.generated_at)
        );
    }
    h.push_str("<h2>Timeline</h2>");
    h.push_str(&timeline::svg(&r.incident_id, &lanes(r)));
    h.push_str(
        "<h2>Time to first notice per audience</h2><table><tr><th>Audience</th>\
         <th>First update</th><th>First successful delivery</th><th>Time to first notice</th>\
         <th class=\"num\">Delivered</th><th class=\"num\">Dead-lettered</th>\
         <th class=\"num\">Superseded</th><th class=\"num\">Pending</th><th>Deadlines</th></tr>",
    );
    for a in &r.audiences {
        let deadlines: Vec<String> = a
            .deadlines
            .iter()
            .map(|d| {
                format!(
                    "<span class=\"{v}\">{name}: {v}</span> (due {due}{met})",
                    v = html_escape(&d.verdict),
                    name = html_escape(&d.deadline),
                    due = time(&d.due),
                    met = d
                        .met_at
                        .map(|m| format!(", met {}", time(&m)))
                        .unwrap_or_default()
                )
            })
            .collect();
        let pending = match (a.pending, a.pending_recipients) {
            (0, _) => "0".to_string(),
            (n, 0) => format!("<span class=\"pending\">{n} notice(s)</span>"),
            (n, k) => format!("<span class=\"pending\">{n} notice(s), {k} recipient(s)</span>"),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{pending}</td><td>{}</td></tr>",
            html_escape(&a.audience),
            time(&a.first_update_at),
            a.first_notice_at
                .as_ref()
                .map(time)
                .unwrap_or_else(|| if a.pending > 0 {
                    "not yet".into()
                } else {
                    "never".into()
                }),
            a.time_to_first_notice_s
                .map(secs)
                .unwrap_or_else(|| "-".into()),
            a.delivered,
            a.dead_lettered,
            a.superseded,
            if deadlines.is_empty() {
                "none configured".to_string()
            } else {
                deadlines.join("<br>")
            }
        );
    }
    h.push_str("</table>");
    h.push_str(
        "<h2>Every notice</h2><table><tr><th>#</th><th>Status</th><th>Target</th>\
         <th>Channel</th><th>Audiences</th><th>Recipient</th><th>Outcome</th>\
         <th>At</th><th class=\"num\">Attempts</th><th>Provider</th>\
         <th>Provider id / reason</th></tr>",
    );
    for row in rows(&r.notices) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"{o}\">{o}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            row.n.sequence,
            html_escape(&row.n.status),
            html_escape(&row.n.target),
            html_escape(&row.n.channel),
            html_escape(&row.n.audiences.join(", ")),
            html_escape(&row.recipient),
            time(&row.at),
            row.attempts,
            html_escape(&row.provider),
            html_escape(&row.detail),
            o = row.outcome,
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

/// The timeline's lanes: per audience, every update due to it (published), its
/// first successful delivery or, not delivered yet, a pending mark at the time of
/// the report, and the audience's deadlines.
fn lanes(r: &IncidentReport) -> Vec<Lane> {
    r.audiences
        .iter()
        .map(|a| {
            let mut marks = Vec::new();
            for u in r
                .updates
                .iter()
                .filter(|u| u.audiences.contains(&a.audience))
            {
                let published = u.published_at.unwrap_or(u.occurred_at);
                marks.push(Mark::Published {
                    at: published,
                    label: format!("#{} {}", u.sequence, u.status),
                    title: format!(
                        "#{} {} published {}",
                        u.sequence,
                        u.status,
                        time(&published)
                    ),
                });
                if let Some(d) = u.first_delivered.get(&a.audience) {
                    marks.push(Mark::Delivered {
                        from: published,
                        at: *d,
                        title: format!("#{} first delivered {}", u.sequence, time(d)),
                    });
                } else if u.pending.contains(&a.audience) {
                    marks.push(Mark::Pending {
                        from: published,
                        at: r.generated_at,
                        title: format!(
                            "#{} not delivered yet to {} at {}",
                            u.sequence,
                            a.audience,
                            time(&r.generated_at)
                        ),
                    });
                }
            }
            for d in &a.deadlines {
                marks.push(Mark::Deadline {
                    at: d.due,
                    met: d.verdict == Verdict::Met.as_str(),
                    label: format!("{} due", d.deadline),
                    title: format!("{} deadline {}: {}", d.deadline, time(&d.due), d.verdict),
                });
            }
            Lane {
                audience: a.audience.clone(),
                marks,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ledger::LedgerRecord;
    use crate::records::notices::fold;

    fn record(seq: u64, outcome: &str, at: i64) -> LedgerRecord {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).expect("time");
        let at = t0 + jiff::SignedDuration::from_secs(at);
        serde_json::from_value(serde_json::json!({
            "schema_version": 2, "incident_id": "INC-1", "update_id": format!("u{seq}"),
            "sequence": seq, "status": "investigating", "impact": "major",
            "target": "<regs>", "channel": "webhook", "audiences": ["regulators"],
            "recipient": null, "recipient_ref": null, "outcome": outcome,
            "attempts": 1, "first_attempt_at": t0,
            "final_at": if matches!(outcome, "due" | "pending") { serde_json::Value::Null } else { serde_json::json!(at) },
            "recorded_at": at, "occurred_at": t0, "published_at": t0, "latency_ms": 0,
            "provider": "primary", "provider_id": "HTTP 200", "error": null,
            "superseded_by": null, "idempotency_key": format!("k{seq}"),
            "source": {"topic": "t", "partition": 0, "offset": seq},
            "next_attempt_at": null, "breaker": null, "recipients_pending": null
        }))
        .expect("a ledger record")
    }

    fn deadlines(secs: u64) -> BTreeMap<String, Deadlines> {
        [(
            "regulators".to_string(),
            Deadlines {
                first_notice_within: Some(Duration::from_secs(secs)),
                by_status: BTreeMap::new(),
                warn_at: 0.8,
            },
        )]
        .into()
    }

    #[test]
    fn a_late_first_notice_is_a_missed_deadline_and_text_is_escaped() {
        let r = build(
            "INC-1",
            fold(&[record(1, "due", 0), record(1, "delivered", 90)]),
            Vec::new(),
            &deadlines(60),
            jiff::Timestamp::now(),
        );
        assert_eq!(r.audiences[0].time_to_first_notice_s, Some(90));
        assert_eq!(r.audiences[0].deadlines[0].verdict, "missed");
        assert_eq!(exit_code(&r), EXIT_REACHED);
        let unsure = build(
            "INC-1",
            r.notices.clone(),
            vec!["u2".into()],
            &deadlines(60),
            r.generated_at,
        );
        assert_eq!(
            exit_code(&unsure),
            EXIT_PENDING,
            "an update not declared yet may owe more"
        );
        assert!(status_table(&unsure).contains("update u2: NOT YET KNOWN"));
        let page = html(&r);
        assert!(page.contains("&lt;regs&gt;") && !page.contains("<regs>"));
        assert!(page.contains("<svg id=\"timeline\""));
    }

    #[test]
    fn a_pending_notice_has_its_lane_row_and_reason_and_is_missed_past_its_deadline() {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).expect("time");
        let mut p = record(1, "pending", 5);
        p.attempts = 4;
        p.breaker = Some("open".into());
        p.error = Some(crate::records::ledger::LedgerError {
            class: "retryable".into(),
            code: None,
            reason: "connection refused".into(),
        });
        let notices = fold(&[record(1, "due", 0), p]);
        let early = build(
            "INC-1",
            notices.clone(),
            Vec::new(),
            &deadlines(60),
            t0 + jiff::SignedDuration::from_secs(30),
        );
        assert_eq!(early.audiences[0].pending, 1);
        assert_eq!(early.audiences[0].deadlines[0].verdict, "open");
        assert_eq!(exit_code(&early), EXIT_PENDING);
        let late = build(
            "INC-1",
            notices,
            Vec::new(),
            &deadlines(60),
            t0 + jiff::SignedDuration::from_secs(90),
        );
        assert_eq!(late.audiences[0].deadlines[0].verdict, "missed");
        let text = status_table(&late);
        assert!(
            text.starts_with("incident INC-1: 1 notice(s) due: 1 pending"),
            "{text}"
        );
        assert!(text.contains("audience regulators: NOT YET"), "{text}");
        assert!(
            text.contains("connection refused") && text.contains("breaker open"),
            "{text}"
        );
        assert!(
            text.contains("deadline regulators first_notice: MISSED"),
            "{text}"
        );
        let page = html(&late);
        assert!(page.contains("data-audience=\"regulators\""));
        assert!(page.contains("class=\"pending\""));
    }
}
