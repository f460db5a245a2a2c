//! `clarion publish --follow`: watches the delivery ledger for the update just
//! published and shows each target's deliveries landing, until every expected
//! delivery is final or the timeout passes.
//!
//! It reads the ledger from the ends it had before the update was produced (nothing
//! of this update can be older), by manual assignment: it joins no group and commits
//! nothing. On a terminal the view is redrawn in place; otherwise it prints one line
//! per change, so a log of it reads as a timeline.

use crate::config::{ChannelConfig, Settings};
use crate::records::ledger::LedgerRecord;
use crate::records::notices::{self, Notice};
use anyhow::{Context as _, Result, bail};
use clarion_core::IncidentUpdate;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

/// Exit codes of `publish` and `drill`, as docs/publishing.md lists them.
pub const EXIT_REACHED: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_DEAD_LETTERED: u8 = 2;
pub const EXIT_TIMED_OUT: u8 = 3;

/// How many distinct recipients `channel` lists for `audiences` (as the channels
/// de-duplicate them across audiences); `None` for channels without a list
/// (webhooks, status page origins).
pub fn recipients(channel: &ChannelConfig, audiences: &[String]) -> Option<usize> {
    let union = |map: &BTreeMap<String, Vec<String>>, expand: &dyn Fn(&str) -> Vec<String>| {
        let mut seen = BTreeSet::new();
        for a in audiences {
            for entry in map.get(a).into_iter().flatten() {
                seen.extend(expand(entry));
            }
        }
        seen.len()
    };
    let plain = |e: &str| vec![e.to_string()];
    Some(match channel {
        ChannelConfig::Webhook(_) | ChannelConfig::StatusPage(_) => return None,
        ChannelConfig::Email(c) => {
            // `list:NAME` entries expand to the list; addresses compare without
            // regard to case, by the address inside `Name <address>`.
            let address = |e: &str| {
                let inner = e
                    .rsplit_once('<')
                    .and_then(|(_, rest)| rest.split_once('>'))
                    .map_or(e, |(addr, _)| addr);
                inner.trim().to_lowercase()
            };
            union(&c.recipients, &|e: &str| match e.strip_prefix("list:") {
                Some(name) => c
                    .lists
                    .get(name)
                    .into_iter()
                    .flatten()
                    .map(|e| address(e))
                    .collect(),
                None => vec![address(e)],
            })
        }
        ChannelConfig::Sms(c) => {
            let map = match c {
                clarion_sms::SmsConfig::Twilio(c) => &c.recipients,
                clarion_sms::SmsConfig::Vonage(c) => &c.recipients,
                clarion_sms::SmsConfig::Http(c) => &c.recipients,
                clarion_sms::SmsConfig::Smpp(c) => &c.recipients,
            };
            union(map, &plain)
        }
        ChannelConfig::Fcm(c) => union(&c.device_tokens, &plain) + union(&c.topics, &plain),
        ChannelConfig::Apns(c) => union(&c.device_tokens, &plain),
    })
}

/// What one target should write to the ledger for the update.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub target: String,
    pub channel: String,
    pub audiences: Vec<String>,
    /// Final records that make the target done: its distinct recipients, or 1 for a
    /// channel without a recipient list (webhooks). A whole-delivery record (no
    /// recipient: superseded, a template failure) ends it too.
    pub records: usize,
}

/// The targets that take `update`, and how many final records each owes.
pub fn expected(settings: &Settings, update: &IncidentUpdate) -> Vec<Expected> {
    settings
        .targets
        .iter()
        .filter_map(|t| {
            let d = clarion_render::route(update, &t.audiences, &t.rules);
            d.matched.then(|| Expected {
                target: t.name.to_string(),
                channel: t.kind.as_str().to_string(),
                records: recipients(&t.channel, &d.audiences).unwrap_or(1).max(1),
                audiences: d.audiences,
            })
        })
        .collect()
}

/// The ledger's end offset per partition now.
pub fn ends(
    settings: &Settings,
    reporter: &crate::cli::client::Reporter,
    topic: &str,
    deadline: Instant,
) -> Result<BTreeMap<i32, i64>> {
    let consumer = crate::cli::client::reader(settings, reporter.clone())?;
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(5));
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of the ledger topic `{topic}`"))?;
    let Some(t) = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    else {
        bail!("the ledger topic `{topic}` (kafka.ledger_topic) does not exist");
    };
    let mut out = BTreeMap::new();
    for p in t.partitions() {
        let (_, hi) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .with_context(|| format!("cannot read the end of `{topic}` [{}]", p.id()))?;
        out.insert(p.id(), hi);
    }
    Ok(out)
}

/// What `--follow` knows of one target's notice.
#[derive(Debug, Default, Clone)]
struct Progress {
    notice: Option<Notice>,
}

impl Progress {
    fn count(&self, outcome: &str) -> usize {
        self.notice.as_ref().map_or(0, |n| n.count(outcome))
    }

    fn finals(&self) -> usize {
        self.notice.as_ref().map_or(0, |n| n.finals.len())
    }

    fn done(&self, e: &Expected) -> bool {
        match &self.notice {
            None => false,
            // An older daemon records final outcomes only: count them.
            Some(n) if n.legacy => {
                n.finals.iter().any(|f| f.recipient_ref.is_none()) || n.finals.len() >= e.records
            }
            Some(n) => n.state.is_final(),
        }
    }

    fn dead(&self) -> bool {
        self.count("dead_lettered") > 0
    }

    fn word(&self, e: &Expected) -> &'static str {
        match (self.done(e), self.dead()) {
            (false, _) if self.finals() == 0 => "waiting",
            (false, _) => "landing",
            (true, true) => "DEAD-LETTERED",
            (true, false) if self.count("delivered") == 0 => "superseded",
            (true, false) => "delivered",
        }
    }

    /// Why it is not done, when the daemon has said.
    fn why(&self, e: &Expected) -> Option<String> {
        if self.done(e) {
            return None;
        }
        let n = self.notice.as_ref()?;
        n.pending.as_ref().map(|p| p.why(&n.target))
    }
}

/// The view: one row per target (with its audiences, and below it why it waits),
/// one per audience, and a progress bar.
fn view(expected: &[Expected], progress: &BTreeMap<String, Progress>, elapsed: Duration) -> String {
    let mut out = String::new();
    let none = Progress::default();
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:<24} {:<14} {:>9} {:>5} {:>5}  PROVIDER",
        "TARGET", "CHANNEL", "AUDIENCES", "STATE", "DELIVERED", "DEAD", "SUPER"
    );
    for e in expected {
        let p = progress.get(&e.target).unwrap_or(&none);
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<24} {:<14} {:>9} {:>5} {:>5}  {}",
            e.target,
            e.channel,
            e.audiences.join(","),
            p.word(e),
            format!("{}/{}", p.count("delivered"), e.records),
            p.count("dead_lettered"),
            p.count("superseded"),
            p.notice
                .as_ref()
                .and_then(|n| n.provider.as_deref())
                .unwrap_or("-")
        );
        if let Some(why) = p.why(e) {
            let _ = writeln!(out, "  └ {why}");
        }
    }
    let mut audiences: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for e in expected {
        let p = progress.get(&e.target).unwrap_or(&none);
        for a in &e.audiences {
            let entry = audiences.entry(a).or_default();
            entry.1 += 1;
            if p.done(e) && !p.dead() {
                entry.0 += 1;
            }
        }
    }
    for (a, (reached, of)) in &audiences {
        let _ = writeln!(out, "audience {a:<12} {reached}/{of} targets reached");
    }
    let (done, total): (usize, usize) = expected.iter().fold((0, 0), |(d, t), e| {
        let p = progress.get(&e.target).unwrap_or(&none);
        let landed = if p.done(e) {
            e.records
        } else {
            p.finals().min(e.records)
        };
        (d + landed, t + e.records)
    });
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let _ = writeln!(
        out,
        "[{}{}] {done}/{total} deliveries final, {}s",
        "#".repeat(filled),
        "-".repeat(width - filled),
        elapsed.as_secs()
    );
    out
}

/// Follows the ledger until every expected delivery is final (exit 0, or 2 when
/// some were dead-lettered) or `timeout` passes (exit 3).
pub fn watch(
    settings: &Settings,
    update: &IncidentUpdate,
    expected: Vec<Expected>,
    start: BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<u8> {
    let Some(topic) = settings.kafka.ledger_topic.clone() else {
        bail!("no kafka.ledger_topic to follow");
    };
    let tty = std::io::stdout().is_terminal();
    if expected.is_empty() {
        println!("no target takes {}: nothing to follow", update.update_id);
        return Ok(EXIT_REACHED);
    }
    println!(
        "following {} in the ledger `{topic}` (up to --follow-timeout {})",
        update.update_id,
        humantime::format_duration(timeout)
    );
    let consumer: BaseConsumer<crate::cli::client::Reporter> = crate::cli::client::reader(
        settings,
        crate::cli::client::Reporter::new(&settings.kafka.brokers, timeout),
    )?;
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in &start {
        tpl.add_partition_offset(&topic, *p, Offset::Offset(*offset))?;
    }
    consumer.assign(&tpl)?;
    let began = Instant::now();
    let deadline = began + timeout;
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    let mut records: Vec<LedgerRecord> = Vec::new();
    let mut seen = HashSet::new();
    let mut said: BTreeMap<String, String> = BTreeMap::new();
    let mut drawn_lines = 0usize;
    let mut last_line = String::new();
    let mut last_second = u64::MAX;
    let all_done = |progress: &BTreeMap<String, Progress>| {
        expected
            .iter()
            .all(|e| progress.get(&e.target).is_some_and(|p| p.done(e)))
    };
    let mut stdout = std::io::stdout();
    loop {
        let mut changed = false;
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.with_context(|| format!("reading the ledger `{topic}`"))?;
            if m.key() == Some(update.incident_id.as_bytes())
                && let Some(bytes) = m.payload()
            {
                match crate::records::ledger::parse(bytes) {
                    Ok(Some(r)) if r.update_id == update.update_id => {
                        // A redelivery writes its final record again: once each.
                        let fresh = !r.is_final()
                            || seen.insert((
                                r.idempotency_key.clone(),
                                r.recipient_ref.clone(),
                                r.outcome.clone(),
                                r.replayed,
                            ));
                        if fresh {
                            changed = true;
                            if !tty && r.is_final() && r.outcome != "resolved" {
                                println!(
                                    "{} {} {} {}: {} after {} attempt(s){}{}",
                                    r.at(),
                                    r.target,
                                    r.audiences.join(","),
                                    r.recipient.as_deref().unwrap_or("-"),
                                    r.outcome,
                                    r.attempts,
                                    r.provider
                                        .as_deref()
                                        .map(|p| format!(" through {p}"))
                                        .unwrap_or_default(),
                                    r.provider_id
                                        .as_deref()
                                        .map(|p| format!(", provider id {p}"))
                                        .unwrap_or_default()
                                );
                            }
                            records.push(r);
                            for n in notices::fold(&records) {
                                let target = n.target.clone();
                                progress.entry(target).or_default().notice = Some(n);
                            }
                            if !tty {
                                for e in &expected {
                                    let p = progress.get(&e.target).cloned().unwrap_or_default();
                                    if let Some(why) = p.why(e)
                                        && said.get(&e.target) != Some(&why)
                                    {
                                        println!(
                                            "{} {} waiting: {why}",
                                            jiff::Timestamp::now(),
                                            e.target
                                        );
                                        said.insert(e.target.clone(), why);
                                    }
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(v) => tracing::debug!(
                        schema_version = v,
                        "skipping a ledger record this clarion does not read"
                    ),
                }
            }
        }
        let finished = all_done(&progress);
        let elapsed = began.elapsed();
        let timed_out = !finished && Instant::now() >= deadline;
        if tty {
            // Redraw in place once a second (the clock) or on any change.
            if changed || finished || timed_out || elapsed.as_secs() != last_second {
                last_second = elapsed.as_secs();
                let text = view(&expected, &progress, elapsed);
                let mut frame = String::new();
                if drawn_lines > 0 {
                    let _ = write!(frame, "\x1b[{drawn_lines}A");
                }
                for line in text.lines() {
                    let _ = writeln!(frame, "\x1b[2K{line}");
                }
                drawn_lines = text.lines().count();
                let _ = stdout.write_all(frame.as_bytes());
                let _ = stdout.flush();
            }
        } else if changed || finished || timed_out {
            let text = view(&expected, &progress, elapsed);
            let line = text.lines().last().unwrap_or("").to_string();
            let without_clock = line.rsplit_once(',').map_or(line.as_str(), |(l, _)| l);
            if without_clock != last_line {
                println!("{line}");
                last_line = without_clock.to_string();
            }
            if finished || timed_out {
                print!("{text}");
            }
        }
        if finished {
            let dead = progress.values().any(Progress::dead);
            return Ok(if dead {
                println!(
                    "some deliveries were dead-lettered: `clarion status {}` has the reasons",
                    update.incident_id
                );
                EXIT_DEAD_LETTERED
            } else {
                println!("every target reached");
                EXIT_REACHED
            });
        }
        if timed_out {
            println!(
                "timed out after --follow-timeout {}: not every delivery is final yet (the daemon goes on; `clarion status {}` shows where it stands)",
                humantime::format_duration(timeout),
                update.incident_id
            );
            return Ok(EXIT_TIMED_OUT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(target: &str, records: usize) -> Expected {
        Expected {
            target: target.into(),
            channel: "email".into(),
            audiences: vec!["customers".into()],
            records,
        }
    }

    fn record(target: &str, outcome: &str, recipient: Option<&str>) -> LedgerRecord {
        serde_json::from_value(serde_json::json!({
            "schema_version": 2, "incident_id": "I", "update_id": "I-u1",
            "sequence": 1, "status": "investigating", "impact": "none",
            "target": target, "channel": "email", "audiences": ["customers"],
            "recipient": recipient, "recipient_ref": recipient, "outcome": outcome,
            "attempts": 2, "first_attempt_at": null,
            "final_at": if matches!(outcome, "due" | "pending") { serde_json::Value::Null } else { serde_json::json!("2026-11-30T10:00:01Z") },
            "recorded_at": "2026-11-30T10:00:01Z",
            "occurred_at": "2026-11-30T10:00:00Z", "published_at": null,
            "latency_ms": 1500, "provider": "smtp-a", "provider_id": "Q1",
            "error": if outcome == "pending" {
                serde_json::json!({"class": "retryable", "code": null, "reason": "connection refused"})
            } else { serde_json::Value::Null },
            "superseded_by": if outcome == "superseded" { serde_json::json!("I-u2") } else { serde_json::Value::Null },
            "idempotency_key": "k", "breaker": if outcome == "pending" { serde_json::json!("open") } else { serde_json::Value::Null },
            "source": {"topic": "t", "partition": 0, "offset": 0}
        }))
        .expect("a ledger record")
    }

    fn progress(records: &[LedgerRecord]) -> Progress {
        Progress {
            notice: notices::fold(records).into_iter().next(),
        }
    }

    #[test]
    fn a_target_is_done_when_its_delivery_has_ended_and_says_why_until_then() {
        let mail = e("mail", 2);
        assert_eq!(Progress::default().word(&mail), "waiting");
        let mut records = vec![record("mail", "pending", None)];
        let p = progress(&records);
        assert_eq!(p.word(&mail), "waiting");
        let why = p.why(&mail).expect("a reason");
        assert!(
            why.contains("connection refused") && why.contains("breaker open"),
            "{why}"
        );
        records.push(record("mail", "delivered", Some("a")));
        assert_eq!(progress(&records).word(&mail), "landing");
        records.push(record("mail", "dead_lettered", Some("b")));
        assert!(
            !progress(&records).done(&mail),
            "not before the delivery's end"
        );
        records.push(record("mail", "resolved", None));
        let p = progress(&records);
        assert!(p.done(&mail));
        assert_eq!(p.word(&mail), "DEAD-LETTERED");
        assert_eq!(p.why(&mail), None);
        let hook = progress(&[record("hook", "superseded", None)]);
        assert!(hook.done(&e("hook", 1)));
        assert_eq!(hook.word(&e("hook", 1)), "superseded");
    }

    #[test]
    fn the_view_shows_the_provider_and_why_a_target_waits() {
        let expected = [e("mail-a", 1), e("mail-b", 1)];
        let mut progress_map = BTreeMap::new();
        progress_map.insert(
            "mail-a".to_string(),
            progress(&[
                record("mail-a", "delivered", Some("a")),
                record("mail-a", "resolved", None),
            ]),
        );
        progress_map.insert(
            "mail-b".to_string(),
            progress(&[record("mail-b", "pending", None)]),
        );
        let text = view(&expected, &progress_map, Duration::from_secs(3));
        assert!(
            text.contains("audience customers    1/2 targets reached"),
            "{text}"
        );
        assert!(text.contains("1/2 deliveries final, 3s"), "{text}");
        assert!(
            text.lines().any(|l| l.starts_with("mail-a")
                && l.contains("delivered")
                && l.ends_with("smtp-a")),
            "the provider, not the message id: {text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("  └ ") && l.contains("connection refused")),
            "{text}"
        );
    }
}
