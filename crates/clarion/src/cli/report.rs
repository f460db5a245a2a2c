//! `clarion status` and `clarion report`: what the ledger says about one incident,
//! as a table for a terminal, JSON for scripts, or a self-contained HTML page for
//! the post-incident review and the regulator filing.
//!
//! Everything here is computed from ledger records (docs/ledger.md) and the config's
//! deadlines; nothing is read from logs. The HTML must stay self-contained (inline
//! CSS and SVG, no script, no external URL) so that it renders the same when filed
//! months later, and every text from the ledger is escaped.

use crate::config::Deadlines;
use crate::records::ledger::LedgerRecord;
use clarion_render::html_escape;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

/// The facts of one incident, as `report --json` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct IncidentReport {
    pub incident_id: String,
    pub generated_at: jiff::Timestamp,
    pub updates: Vec<UpdateRow>,
    pub audiences: Vec<AudienceRow>,
    /// Every ledger record, in update then target then recipient order.
    pub notices: Vec<LedgerRecord>,
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
}

/// One audience: when it was first told, and how it did against its deadlines.
#[derive(Debug, Clone, Serialize)]
pub struct AudienceRow {
    pub audience: String,
    /// The `occurred_at` of the incident's first update to this audience.
    pub first_update_at: jiff::Timestamp,
    /// The first successful delivery to this audience.
    pub first_notice_at: Option<jiff::Timestamp>,
    pub time_to_first_notice_s: Option<i64>,
    pub delivered: usize,
    pub dead_lettered: usize,
    pub superseded: usize,
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

fn plus(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

/// Builds the report of `records` (one incident's), judging `deadlines` at `now`.
pub fn build(
    incident_id: &str,
    mut records: Vec<LedgerRecord>,
    deadlines: &BTreeMap<String, Deadlines>,
    now: jiff::Timestamp,
) -> IncidentReport {
    records.sort_by(|a, b| {
        (a.sequence, &a.target, &a.recipient, a.final_at).cmp(&(
            b.sequence,
            &b.target,
            &b.recipient,
            b.final_at,
        ))
    });
    let mut updates: BTreeMap<(u64, String), UpdateRow> = BTreeMap::new();
    for r in &records {
        let u = updates
            .entry((r.sequence, r.update_id.clone()))
            .or_insert_with(|| UpdateRow {
                update_id: r.update_id.clone(),
                sequence: r.sequence,
                status: r.status.clone(),
                occurred_at: r.occurred_at,
                published_at: r.published_at,
                audiences: Vec::new(),
                first_delivered: BTreeMap::new(),
            });
        for a in &r.audiences {
            if !u.audiences.contains(a) {
                u.audiences.push(a.clone());
            }
            if r.is_delivered() {
                let t = u.first_delivered.entry(a.clone()).or_insert(r.final_at);
                *t = (*t).min(r.final_at);
            }
        }
    }
    let audiences: BTreeSet<&String> = records.iter().flat_map(|r| &r.audiences).collect();
    let mut rows = Vec::new();
    for audience in audiences {
        let mine: Vec<&LedgerRecord> = records
            .iter()
            .filter(|r| r.audiences.contains(audience))
            .collect();
        let Some(first_update_at) = mine.iter().map(|r| r.occurred_at).min() else {
            continue;
        };
        let first_notice_at = mine
            .iter()
            .filter(|r| r.is_delivered())
            .map(|r| r.final_at)
            .min();
        let count = |o: &str| mine.iter().filter(|r| r.outcome == o).count();
        let mut dl = Vec::new();
        if let Some(d) = deadlines.get(audience) {
            let judge = |name: String, start: jiff::Timestamp, within: Duration, met_at| {
                let due = plus(start, within);
                let verdict = match met_at {
                    Some(m) if m <= due => "met",
                    Some(_) => "missed",
                    None if now > due => "missed",
                    None => "open",
                };
                DeadlineRow {
                    deadline: name,
                    start,
                    due,
                    met_at,
                    verdict: verdict.to_string(),
                }
            };
            if let Some(within) = d.first_notice_within {
                dl.push(judge(
                    "first_notice".into(),
                    first_update_at,
                    within,
                    first_notice_at,
                ));
            }
            for (status, within) in &d.by_status {
                let of_status: Vec<&&LedgerRecord> = mine
                    .iter()
                    .filter(|r| r.status == status.as_str())
                    .collect();
                let Some(start) = of_status.iter().map(|r| r.occurred_at).min() else {
                    continue;
                };
                let met = of_status
                    .iter()
                    .filter(|r| r.is_delivered())
                    .map(|r| r.final_at)
                    .min();
                dl.push(judge(status.as_str().to_string(), start, *within, met));
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
            deadlines: dl,
        });
    }
    IncidentReport {
        incident_id: incident_id.to_string(),
        generated_at: now,
        updates: updates.into_values().collect(),
        audiences: rows,
        notices: records,
    }
}

/// Whether every delivery in `records` reached its recipient (or was superseded).
pub fn all_reached(records: &[LedgerRecord]) -> bool {
    records.iter().all(|r| r.outcome != "dead_lettered")
}

/// Keeps only the records of deliveries to `audience`.
pub fn only_audience(records: Vec<LedgerRecord>, audience: &str) -> Vec<LedgerRecord> {
    records
        .into_iter()
        .filter(|r| r.audiences.iter().any(|a| a == audience))
        .collect()
}

fn time(t: &jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M:%S").to_string()
}

fn secs(s: i64) -> String {
    humantime::format_duration(Duration::from_secs(s.unsigned_abs())).to_string()
}

/// `clarion status`: one row per update × target × recipient.
pub fn status_table(incident_id: &str, records: &[LedgerRecord]) -> String {
    let mut rows: Vec<[String; 10]> = vec![[
        "SEQ".into(),
        "STATUS".into(),
        "TARGET".into(),
        "CHANNEL".into(),
        "AUDIENCES".into(),
        "RECIPIENT".into(),
        "OUTCOME".into(),
        "AT (UTC)".into(),
        "ATTEMPTS".into(),
        "PROVIDER ID / REASON".into(),
    ]];
    let mut sorted: Vec<&LedgerRecord> = records.iter().collect();
    sorted.sort_by(|a, b| {
        (a.sequence, &a.target, &a.recipient).cmp(&(b.sequence, &b.target, &b.recipient))
    });
    for r in sorted {
        let detail = match (&r.error, &r.superseded_by) {
            (Some(e), _) => format!(
                "{}{}: {}",
                e.class,
                e.code
                    .as_deref()
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default(),
                e.reason.chars().take(80).collect::<String>()
            ),
            (None, Some(by)) => format!("by {by}"),
            (None, None) => r.provider_id.clone().unwrap_or_else(|| "-".into()),
        };
        rows.push([
            r.sequence.to_string(),
            r.status.clone(),
            r.target.clone(),
            r.channel.clone(),
            r.audiences.join(","),
            r.recipient.clone().unwrap_or_else(|| "-".into()),
            r.outcome.clone(),
            time(&r.final_at),
            r.attempts.to_string(),
            detail,
        ]);
    }
    let widths: Vec<usize> = (0..10)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = format!("incident {incident_id}: {} notice(s)\n", records.len());
    for row in &rows {
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
    let failed = records
        .iter()
        .filter(|r| r.outcome == "dead_lettered")
        .count();
    if failed > 0 {
        let _ = writeln!(
            out,
            "{failed} notice(s) dead-lettered: see the dead-letter topic for the full recipient and reason"
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
.met{color:#17803d}.missed{color:#b42318;font-weight:600}.open{color:#b45309}
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
         {n} notice(s), {u} update(s). Times are UTC.</p>",
        id = html_escape(&r.incident_id),
        gen = time(&r.generated_at),
        ver = env!("CARGO_PKG_VERSION"),
        n = r.notices.len(),
        u = r.updates.len(),
    );
    h.push_str("<h2>Timeline</h2>");
    h.push_str(&timeline_svg(r));
    h.push_str(
        "<h2>Time to first notice per audience</h2><table><tr><th>Audience</th>\
         <th>First update</th><th>First successful delivery</th><th>Time to first notice</th>\
         <th class=\"num\">Delivered</th><th class=\"num\">Dead-lettered</th>\
         <th class=\"num\">Superseded</th><th>Deadlines</th></tr>",
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
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            html_escape(&a.audience),
            time(&a.first_update_at),
            a.first_notice_at
                .as_ref()
                .map(time)
                .unwrap_or_else(|| "never".into()),
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
         <th>First attempt</th><th>Final</th><th class=\"num\">Attempts</th>\
         <th>Provider id</th><th>Failure</th></tr>",
    );
    for n in &r.notices {
        let failure = match (&n.error, &n.superseded_by) {
            (Some(e), _) => format!(
                "{} {}: {}",
                html_escape(&e.class),
                html_escape(e.code.as_deref().unwrap_or("")),
                html_escape(&e.reason)
            ),
            (None, Some(by)) => format!("superseded by {}", html_escape(by)),
            _ => String::new(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"{o}\">{o}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td>{}</td><td>{}</td></tr>",
            n.sequence,
            html_escape(&n.status),
            html_escape(&n.target),
            html_escape(&n.channel),
            html_escape(&n.audiences.join(", ")),
            html_escape(n.recipient.as_deref().unwrap_or("-")),
            n.first_attempt_at
                .as_ref()
                .map(time)
                .unwrap_or_else(|| "-".into()),
            time(&n.final_at),
            n.attempts,
            html_escape(n.provider_id.as_deref().unwrap_or("-")),
            failure,
            o = html_escape(&n.outcome),
        );
    }
    h.push_str("</table></body></html>\n");
    h
}

/// The timeline: one lane per audience; on each, every update published (grey
/// circle), its first successful delivery to the audience (green diamond, joined to
/// the publication by a line) and the audience's deadlines (red or green marks).
fn timeline_svg(r: &IncidentReport) -> String {
    const LEFT: f64 = 130.0;
    const WIDTH: f64 = 1000.0;
    const LANE: f64 = 70.0;
    const TOP: f64 = 34.0;
    let mut times: Vec<jiff::Timestamp> = Vec::new();
    for u in &r.updates {
        times.push(u.published_at.unwrap_or(u.occurred_at));
        times.push(u.occurred_at);
        times.extend(u.first_delivered.values().copied());
    }
    for a in &r.audiences {
        for d in &a.deadlines {
            times.push(d.due);
        }
    }
    let (Some(t0), Some(t1)) = (times.iter().min().copied(), times.iter().max().copied()) else {
        return "<p>No notices recorded.</p>".to_string();
    };
    let span = (t1.as_millisecond() - t0.as_millisecond()).max(1) as f64;
    let x = |t: jiff::Timestamp| {
        LEFT + (t.as_millisecond() - t0.as_millisecond()) as f64 / span * (WIDTH - LEFT - 20.0)
    };
    let height = TOP + LANE * r.audiences.len() as f64 + 30.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"Notification timeline of incident {}\">",
        html_escape(&r.incident_id)
    );
    // Axis: start and end times, and a tick per quarter.
    for i in 0..=4 {
        let t = jiff::Timestamp::from_millisecond(
            t0.as_millisecond() + (span * f64::from(i) / 4.0) as i64,
        )
        .unwrap_or(t0);
        let px = x(t);
        let _ = write!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#e5e7eb\"/>\
             <text x=\"{px:.1}\" y=\"16\" text-anchor=\"middle\">{}</text>",
            TOP - 8.0,
            height - 24.0,
            t.strftime("%H:%M:%S")
        );
    }
    for (i, a) in r.audiences.iter().enumerate() {
        let y = TOP + LANE * i as f64 + LANE / 2.0;
        let _ = write!(
            s,
            "<g class=\"lane\" data-audience=\"{aud}\"><text x=\"8\" y=\"{ty:.1}\" font-weight=\"600\">{aud}</text>\
             <line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{x2}\" y2=\"{y:.1}\" stroke=\"#cbd5e1\" stroke-width=\"2\"/>",
            aud = html_escape(&a.audience),
            ty = y + 4.0,
            x2 = WIDTH - 20.0,
        );
        // Labels of updates published close together are staggered over three
        // rows, so that they stay readable.
        for (k, u) in r
            .updates
            .iter()
            .filter(|u| u.audiences.contains(&a.audience))
            .enumerate()
        {
            let published = u.published_at.unwrap_or(u.occurred_at);
            let px = x(published);
            let _ = write!(
                s,
                "<circle class=\"published\" cx=\"{px:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#64748b\">\
                 <title>#{seq} {st} published {t}</title></circle>\
                 <text x=\"{px:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\">#{seq} {st}</text>",
                seq = u.sequence,
                st = html_escape(&u.status),
                t = time(&published),
                ly = y - 9.0 - 9.0 * (k % 3) as f64,
            );
            if let Some(d) = u.first_delivered.get(&a.audience) {
                let dx = x(*d);
                let _ = write!(
                    s,
                    "<line x1=\"{px:.1}\" y1=\"{y:.1}\" x2=\"{dx:.1}\" y2=\"{y:.1}\" stroke=\"#17803d\" stroke-width=\"3\" opacity=\"0.5\"/>\
                     <path class=\"delivered\" d=\"M{dx:.1} {a:.1} L{r:.1} {y:.1} L{dx:.1} {b:.1} L{l:.1} {y:.1} Z\" fill=\"#17803d\">\
                     <title>#{seq} first delivered {t}</title></path>",
                    a = y - 6.0,
                    b = y + 6.0,
                    r = dx + 6.0,
                    l = dx - 6.0,
                    seq = u.sequence,
                    t = time(d),
                );
            }
        }
        for d in &a.deadlines {
            let dx = x(d.due);
            let color = if d.verdict == "met" {
                "#17803d"
            } else {
                "#b42318"
            };
            let _ = write!(
                s,
                "<line class=\"deadline\" x1=\"{dx:.1}\" y1=\"{a:.1}\" x2=\"{dx:.1}\" y2=\"{b:.1}\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"4 3\">\
                 <title>{name} deadline {t}: {v}</title></line>\
                 <text x=\"{dx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\" fill=\"{color}\">{name} due</text>",
                a = y - 18.0,
                b = y + 14.0,
                ty = y + 24.0,
                name = html_escape(&d.deadline),
                t = time(&d.due),
                v = html_escape(&d.verdict),
            );
        }
        s.push_str("</g>");
    }
    let _ = write!(
        s,
        "<text x=\"{LEFT}\" y=\"{ly:.1}\">● update published   ◆ first successful delivery   ┆ deadline</text></svg>",
        ly = height - 6.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, status: &str, outcome: &str, at: i64) -> LedgerRecord {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).expect("time");
        LedgerRecord {
            schema_version: 1,
            incident_id: "INC-1".into(),
            update_id: format!("u{seq}"),
            sequence: seq,
            status: status.into(),
            impact: "major".into(),
            target: "<regs>".into(),
            channel: "email".into(),
            audiences: vec!["regulators".into()],
            recipient: Some("no***x.eu".into()),
            recipient_ref: Some("0123456789abcdef".into()),
            outcome: outcome.into(),
            attempts: 1,
            first_attempt_at: Some(t0),
            final_at: plus(t0, Duration::from_secs(at as u64)),
            occurred_at: t0,
            published_at: Some(t0),
            latency_ms: 0,
            provider: None,
            drill: false,
            provider_id: Some("Q1".into()),
            error: None,
            superseded_by: None,
            idempotency_key: format!("k{seq}"),
            source: crate::records::ledger::SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: seq as i64,
            },
        }
    }

    #[test]
    fn a_late_first_notice_is_a_missed_deadline_and_text_is_escaped() {
        let deadlines = [(
            "regulators".to_string(),
            Deadlines {
                first_notice_within: Some(Duration::from_secs(60)),
                by_status: BTreeMap::new(),
                warn_at: 0.8,
            },
        )]
        .into();
        let r = build(
            "INC-1",
            vec![record(1, "investigating", "delivered", 90)],
            &deadlines,
            jiff::Timestamp::now(),
        );
        assert_eq!(r.audiences[0].time_to_first_notice_s, Some(90));
        assert_eq!(r.audiences[0].deadlines[0].verdict, "missed");
        let page = html(&r);
        assert!(page.contains("&lt;regs&gt;") && !page.contains("<regs>"));
        assert!(page.contains("<svg id=\"timeline\""));
    }
}
