//! `clarion drill`: proves, before an incident needs them, that the channels work.
//!
//! It publishes one drill update (`drill: true`, docs/events.md) through the real
//! path: the topic, the running daemon, each target's provider, the peer. The daemon
//! delivers a drill only to each target's `drill_recipients` and marks it in every
//! channel. `drill` then reads the outcomes from the delivery ledger and prints one
//! PASS or FAIL line per target and provider, with the latency. `--failover` also
//! proves every backup: the drill is repeated once per backup position, each time
//! with the providers before it skipped as if they were down.
//!
//! Exit codes: 0 every target passed; 1 a target failed or gave no outcome in time;
//! 2 the drill could not be run as asked (config, usage). See docs/backups.md.

use crate::cli::client::{Reporter, produce, update_producer, wait_for_cluster};
use crate::cli::follow;
use crate::cli::publish::validate;
use crate::config::{ChannelKind, Settings, TargetConfig};
use crate::records::ledger::LedgerRecord;
use crate::records::notices::{self, Final, Notice};
use anyhow::{Context as _, Result, anyhow};
use clarion_core::{Impact, IncidentUpdate, Status};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const EXIT_PASSED: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_UNUSABLE: u8 = 2;

/// What `clarion drill` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// One target; `None` with `all`.
    pub target: Option<String>,
    pub all: bool,
    /// Also every backup provider (`drill_skip_providers` 1, 2, …).
    pub failover: bool,
    /// For the whole drill: reaching Kafka, publishing, and every outcome.
    pub timeout: Duration,
}

/// A drill that cannot be run as asked (exit 2), as opposed to one that failed.
#[derive(Debug)]
pub struct Unusable(pub String);

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unusable {}

fn unusable(message: String) -> anyhow::Error {
    anyhow!(Unusable(message))
}

/// One provider of one target to prove: what the ledger owes for it.
#[derive(Debug, Clone)]
struct Check {
    target: String,
    kind: ChannelKind,
    /// Final records that end it: one per drill recipient (one for a webhook).
    records: usize,
    /// Providers skipped as if down (`drill_skip_providers`): 0 is the target's own.
    skip: usize,
    /// The provider that should deliver: the one at `skip`.
    provider: String,
    /// The providers skipped, for the line.
    skipped: Vec<String>,
    /// The drill update this check reads (set once the updates are made).
    update_id: String,
}

/// What a drill proves, checked against the config: each chosen target's own
/// provider, and with `--failover` each of its backups.
fn checks(settings: &Settings, options: &Options) -> Result<Vec<Check>> {
    let chosen: Vec<&TargetConfig> = match (&options.target, options.all) {
        (Some(name), false) => {
            let t = settings
                .targets
                .iter()
                .find(|t| *t.name == **name)
                .ok_or_else(|| {
                    unusable(format!(
                        "{}: no target `{name}` (targets: {})",
                        settings.source,
                        settings.target_names()
                    ))
                })?;
            vec![t]
        }
        (None, true) => settings.targets.iter().collect(),
        _ => return Err(unusable("say which targets: --target NAME or --all".into())),
    };
    let without: Vec<&str> = chosen
        .iter()
        .filter(|t| t.drill.is_none())
        .map(|t| &*t.name)
        .collect();
    if !without.is_empty() {
        return Err(unusable(format!(
            "{}: no drill_recipients for target(s) {}: a drill never goes to a real audience, so each target needs drill_recipients (docs/backups.md)",
            settings.source,
            without.join(", ")
        )));
    }
    if options.failover
        && let [t] = chosen.as_slice()
        && t.backups.is_empty()
    {
        return Err(unusable(format!(
            "{}: target `{}` has no backups to fail over to (targets.{}.backups, docs/backups.md)",
            settings.source, t.name, t.name
        )));
    }
    let mut out = Vec::new();
    for t in chosen {
        let providers: Vec<String> = std::iter::once(t.provider_name.to_string())
            .chain(t.backups.iter().map(|b| b.name.to_string()))
            .collect();
        let records = match t.kind {
            ChannelKind::Webhook => 1,
            _ => t.drill.as_ref().map_or(1, |d| {
                d.recipients.iter().collect::<BTreeSet<_>>().len().max(1)
            }),
        };
        let levels = if options.failover { providers.len() } else { 1 };
        for skip in 0..levels {
            out.push(Check {
                target: t.name.to_string(),
                kind: t.kind,
                records,
                skip,
                provider: providers[skip].clone(),
                skipped: providers[..skip].to_vec(),
                update_id: String::new(),
            });
        }
    }
    Ok(out)
}

/// The drill's updates, one per provider position, all of one drill incident: the
/// first for every check with `skip` 0, the next for those with `skip` 1, and so on.
/// Sets each check's `update_id`.
fn drill_updates(
    settings: &Settings,
    checks: &mut [Check],
    now: jiff::Timestamp,
) -> Result<Vec<IncidentUpdate>> {
    let incident = format!(
        "DRILL-{}-{:04x}",
        now.strftime("%Y%m%dT%H%M%SZ"),
        rand::random::<u16>()
    );
    let levels = checks.iter().map(|c| c.skip + 1).max().unwrap_or(0);
    let mut updates = Vec::new();
    for skip in 0..levels {
        let sequence = skip + 1;
        let update_id = format!("{incident}-u{sequence}");
        let targets: Vec<String> = checks
            .iter_mut()
            .filter(|c| c.skip == skip)
            .map(|c| {
                c.update_id = update_id.clone();
                c.target.clone()
            })
            .collect();
        let audiences: BTreeSet<String> = settings
            .targets
            .iter()
            .filter(|t| targets.iter().any(|n| *n == *t.name))
            .flat_map(|t| t.audiences.iter().cloned())
            .collect();
        let json = serde_json::json!({
            "schema_version": clarion_core::SCHEMA_VERSION,
            "incident_id": incident,
            "update_id": update_id,
            "sequence": sequence,
            "status": Status::Investigating,
            "impact": Impact::None,
            "title": "Clarion drill",
            "message": "This is a drill of the incident notification channels, not an incident. No action is needed.",
            "audiences": audiences,
            "occurred_at": now,
            "drill": true,
            "drill_targets": targets,
            "drill_skip_providers": skip,
        });
        updates.push(validate(settings, &serde_json::to_vec(&json)?)?);
    }
    Ok(updates)
}

/// Runs the drill; the exit code (`EXIT_*`). An [`Unusable`] error means exit 2.
pub async fn run(settings: Settings, options: Options) -> Result<u8> {
    let Some(ledger) = settings.kafka.ledger_topic.clone() else {
        return Err(unusable(format!(
            "{}: clarion drill reads the outcomes from the delivery ledger, and no kafka.ledger_topic is set (docs/ledger.md)",
            settings.source
        )));
    };
    let mut checks = checks(&settings, &options)?;
    let updates = drill_updates(&settings, &mut checks, jiff::Timestamp::now())?;
    let deadline = Instant::now() + options.timeout;
    let reporter = Arc::new(Reporter::new(&settings.kafka.brokers, options.timeout));
    let settings = Arc::new(settings);

    let (s, r, topic) = (settings.clone(), reporter.clone(), ledger.clone());
    let start = tokio::task::spawn_blocking(move || {
        wait_for_cluster(&s, &r, deadline)?;
        follow::ends(&s, &r, &topic, deadline)
    })
    .await
    .context("the Kafka reader stopped")??;

    let targets: BTreeSet<&str> = checks.iter().map(|c| c.target.as_str()).collect();
    println!(
        "drill {} for {} target(s), {} provider(s): {}",
        updates[0].incident_id,
        targets.len(),
        checks.len(),
        targets.into_iter().collect::<Vec<_>>().join(", ")
    );
    let producer = update_producer(&settings, &reporter, deadline)?;
    for update in &updates {
        let bytes = serde_json::to_vec(update)?;
        if let Err(e) = produce(&producer, &settings, update, &bytes).await {
            println!(
                "FAIL  the drill was not published to {}: {e}",
                settings.kafka.topic
            );
            return Ok(EXIT_FAILED);
        }
    }
    reporter.reached();

    let (s, c) = (settings.clone(), checks.clone());
    let incident = updates[0].incident_id.clone();
    let (records, timed_out) =
        tokio::task::spawn_blocking(move || collect(&s, &ledger, &incident, &c, start, deadline))
            .await
            .context("the ledger reader stopped")??;
    let lines = verdicts(&checks, &records, timed_out.then_some(options.timeout));
    let failed = lines.iter().any(|l| l.starts_with("FAIL"));
    for line in lines {
        println!("{line}");
    }
    Ok(if failed { EXIT_FAILED } else { EXIT_PASSED })
}

/// The notice of one check, folded from the drill's records.
fn notice_of(check: &Check, records: &[LedgerRecord]) -> Option<Notice> {
    notices::fold(records)
        .into_iter()
        .find(|n| n.target == check.target && n.update_id == check.update_id)
}

/// Whether a check's delivery has ended: its notice is final (or, from a daemon
/// that records final outcomes only, one per drill recipient or one for the whole
/// delivery).
fn complete(check: &Check, records: &[LedgerRecord]) -> bool {
    let Some(n) = notice_of(check, records) else {
        return false;
    };
    if !n.legacy {
        return n.state.is_final();
    }
    n.finals.iter().any(|f| f.recipient_ref.is_none())
        || n.finals
            .iter()
            .map(|f| &f.recipient_ref)
            .collect::<BTreeSet<_>>()
            .len()
            >= check.records
}

/// Reads the ledger from `start` until every check is complete or the deadline
/// passes; returns the drill's records and whether it timed out.
fn collect(
    settings: &Settings,
    topic: &str,
    incident: &str,
    checks: &[Check],
    start: BTreeMap<i32, i64>,
    deadline: Instant,
) -> Result<(Vec<LedgerRecord>, bool)> {
    let consumer: BaseConsumer<Reporter> = crate::cli::client::reader(
        settings,
        Reporter::new(
            &settings.kafka.brokers,
            deadline.saturating_duration_since(Instant::now()),
        ),
    )?;
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in &start {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))?;
    }
    consumer.assign(&tpl)?;
    let mut records: Vec<LedgerRecord> = Vec::new();
    let mut seen = BTreeSet::new();
    loop {
        if checks.iter().all(|c| complete(c, &records)) {
            return Ok((records, false));
        }
        if Instant::now() >= deadline {
            return Ok((records, true));
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.with_context(|| format!("reading the ledger `{topic}`"))?;
        if m.key() != Some(incident.as_bytes()) {
            continue;
        }
        let Some(Ok(Some(r))) = m.payload().map(crate::records::ledger::parse) else {
            continue;
        };
        // Final outcomes once each: a redelivery writes its final record again.
        let key = (
            r.update_id.clone(),
            r.target.clone(),
            r.recipient_ref.clone(),
            r.outcome.clone(),
        );
        if !r.is_final() || seen.insert(key) {
            records.push(r);
        }
    }
}

/// One line per check: PASS, or FAIL with why.
fn verdicts(
    checks: &[Check],
    records: &[LedgerRecord],
    timed_out: Option<Duration>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for c in checks {
        let notice = notice_of(c, records);
        let mine: Vec<&Final> = notice.iter().flat_map(|n| &n.finals).collect();
        let note = if c.skipped.is_empty() {
            String::new()
        } else {
            format!(" (failover: {} skipped)", c.skipped.join(", "))
        };
        let head = format!("{} ({}) provider {}", c.target, c.kind.as_str(), c.provider);
        // Not delivered yet, and the daemon said why: say that, not "is a daemon
        // running".
        let waiting = notice
            .as_ref()
            .and_then(|n| n.pending.as_ref().map(|p| p.why(&n.target)));
        if mine.is_empty() {
            match (&waiting, timed_out) {
                (Some(why), t) => lines.push(format!(
                    "FAIL  {head}: not delivered{}{note}: {why}",
                    t.map(|t| format!(" within --timeout {}", humantime::format_duration(t)))
                        .unwrap_or_default()
                )),
                (None, t) => lines.push(format!(
                    "FAIL  {head}: no outcome{}{note}; is a daemon running with this config, and is the target's stream keeping up?",
                    t.map(|t| format!(" within --timeout {}", humantime::format_duration(t)))
                        .unwrap_or_default()
                )),
            }
            continue;
        }
        let delivered = mine.iter().filter(|r| r.is_delivered()).count();
        let latency = mine.iter().map(|r| r.latency_ms).max().unwrap_or(0);
        let latency = humantime::format_duration(Duration::from_millis(latency));
        let failed: Vec<String> = mine
            .iter()
            .filter(|r| r.outcome != "delivered")
            .map(|r| {
                format!(
                    "{} through {}: {}",
                    r.recipient.as_deref().unwrap_or("-"),
                    r.provider.as_deref().unwrap_or("-"),
                    r.error
                        .as_ref()
                        .map_or(r.outcome.clone(), |e| e.reason.clone())
                )
            })
            .collect();
        // Delivered, but by another provider: the one drilled could not, and the
        // delivery failed over. The target works; this provider does not.
        let elsewhere: BTreeSet<&str> = mine
            .iter()
            .filter(|r| r.outcome == "delivered")
            .filter_map(|r| r.provider.as_deref())
            .filter(|p| *p != c.provider)
            .collect();
        let missing = if timed_out.is_some() && !complete(c, records) {
            format!(
                "; {} of {} drill recipient(s) have no outcome within the timeout{}",
                c.records.saturating_sub(mine.len()),
                c.records,
                waiting.map(|w| format!(" ({w})")).unwrap_or_default()
            )
        } else {
            String::new()
        };
        if !failed.is_empty() || !elsewhere.is_empty() || !missing.is_empty() {
            let mut why = failed;
            if !elsewhere.is_empty() {
                why.push(format!(
                    "it could not deliver, and the drill failed over to {} (the daemon's log has its errors)",
                    elsewhere.into_iter().collect::<Vec<_>>().join(", ")
                ));
            }
            lines.push(format!(
                "FAIL  {head}: {delivered}/{} delivered, latency {latency}{note}{}{missing}",
                c.records,
                if why.is_empty() {
                    String::new()
                } else {
                    format!("; {}", why.join("; "))
                }
            ));
        } else {
            lines.push(format!(
                "PASS  {head}: {delivered}/{} delivered, latency {latency}{note}",
                c.records
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target: &str, provider: &str, recipient: &str, outcome: &str) -> LedgerRecord {
        serde_json::from_value(record_json(target, provider, recipient, outcome))
            .expect("a ledger record")
    }

    fn record_json(
        target: &str,
        provider: &str,
        recipient: &str,
        outcome: &str,
    ) -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1, "incident_id": "DRILL-1", "update_id": "DRILL-1-u1",
            "sequence": 1, "status": "investigating", "impact": "none",
            "target": target, "channel": "sms", "audiences": ["customers"],
            "recipient": recipient, "recipient_ref": recipient, "outcome": outcome,
            "attempts": 1, "first_attempt_at": null, "final_at": "2026-11-30T10:00:01Z",
            "occurred_at": "2026-11-30T10:00:00Z", "published_at": null,
            "latency_ms": 1500, "provider": provider, "provider_id": null,
            "error": if outcome == "delivered" { serde_json::Value::Null } else {
                serde_json::json!({"class": "retryable", "code": null, "reason": "connection refused"})
            },
            "superseded_by": null, "idempotency_key": "k", "drill": true,
            "source": {"topic": "t", "partition": 0, "offset": 0}
        })
    }

    fn sms(skip: usize) -> Check {
        let providers = ["twilio", "smsc"];
        Check {
            target: "sms".into(),
            kind: ChannelKind::Sms,
            records: 2,
            skip,
            provider: providers[skip].into(),
            skipped: providers[..skip].iter().map(|p| p.to_string()).collect(),
            update_id: "DRILL-1-u1".into(),
        }
    }

    #[test]
    fn a_delivery_that_failed_over_fails_the_provider_drilled() {
        let records = [
            record("sms", "smsc", "a", "delivered"),
            record("sms", "smsc", "b", "delivered"),
        ];
        let lines = verdicts(&[sms(0)], &records, None);
        assert_eq!(
            lines,
            vec![
                "FAIL  sms (sms) provider twilio: 2/2 delivered, latency 1s 500ms; it could not deliver, and the drill failed over to smsc (the daemon's log has its errors)"
            ]
        );
        // Skipping the primary, the backup is the provider drilled: a plain pass.
        let lines = verdicts(&[sms(1)], &records, None);
        assert_eq!(
            lines,
            vec![
                "PASS  sms (sms) provider smsc: 2/2 delivered, latency 1s 500ms (failover: twilio skipped)"
            ]
        );
    }

    #[test]
    fn dead_letters_and_missing_outcomes_fail_with_the_reason() {
        let records = [
            record("sms", "twilio", "a", "delivered"),
            record("sms", "twilio", "b", "dead_lettered"),
        ];
        let lines = verdicts(&[sms(0)], &records, None);
        assert_eq!(
            lines,
            vec![
                "FAIL  sms (sms) provider twilio: 1/2 delivered, latency 1s 500ms; b through twilio: connection refused"
            ]
        );
        let lines = verdicts(&[sms(0)], &records[..1], Some(Duration::from_secs(60)));
        assert_eq!(
            lines,
            vec![
                "FAIL  sms (sms) provider twilio: 1/2 delivered, latency 1s 500ms; 1 of 2 drill recipient(s) have no outcome within the timeout"
            ]
        );
        let lines = verdicts(&[sms(0)], &[], Some(Duration::from_secs(60)));
        assert!(
            lines[0]
                .starts_with("FAIL  sms (sms) provider twilio: no outcome within --timeout 1m;"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_drill_waiting_for_a_target_that_is_down_says_so_not_is_a_daemon_running() {
        let mut due = record_json("sms", "twilio", "a", "delivered");
        due["schema_version"] = serde_json::json!(2);
        due["outcome"] = serde_json::json!("due");
        due["recipient"] = serde_json::Value::Null;
        due["recipient_ref"] = serde_json::Value::Null;
        due["final_at"] = serde_json::Value::Null;
        due["recorded_at"] = serde_json::json!("2026-11-30T10:00:00Z");
        due["attempts"] = serde_json::json!(0);
        due["breaker"] = serde_json::json!("open");
        due["error"] = serde_json::json!({"class": "retryable", "code": null, "reason": "gateway: cannot connect: Connection refused"});
        let due: LedgerRecord = serde_json::from_value(due).expect("a due record");
        let lines = verdicts(&[sms(0)], &[due], Some(Duration::from_secs(45)));
        assert_eq!(
            lines,
            vec![
                "FAIL  sms (sms) provider twilio: not delivered within --timeout 45s: not tried yet: target `sms` is down (breaker open); last error: retryable: gateway: cannot connect: Connection refused"
            ]
        );
    }
}
