//! `clarion publish`: one command from "we have an incident" to an update on the
//! topic, keyed, numbered and checked the way the daemon will check it.
//!
//! It exists because hand-written JSON piped through kcat gets the sequence, the
//! update id and the partitioner wrong under pressure. It builds the update from
//! flags, a file or a pre-approved holding statement (`statements/NAME.toml`), takes
//! the next `sequence` from what Kafka already holds for the incident, shows where
//! the update will go, asks, and produces it with the incident id as key, Java's
//! murmur2 partitioner, `acks=all` and idempotence, waiting out an unreachable
//! cluster up to `--timeout`. `--follow` then watches the ledger (`follow`).
//!
//! It must never publish an update the daemon would reject, never reuse or lower a
//! sequence it can see, and never publish without a confirmation (a TTY answer or
//! `--yes`).

use crate::cli::client::{
    Reporter, partition_count, partition_of, produce, reader, update_producer, wait_for_cluster,
};
use crate::cli::follow::{self, EXIT_ERROR, EXIT_REACHED, recipients};
use crate::cli::statements::load_statement;
use crate::config::{ChannelConfig, Settings};
use anyhow::{Context as _, Result, anyhow, bail};
use clarion_core::{Impact, IncidentUpdate, Status};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What ops asked for: each field set on the command line overrides the file's or
/// the statement's.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub incident: Option<String>,
    pub status: Option<Status>,
    pub impact: Option<Impact>,
    pub title: Option<String>,
    pub message: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub components: Option<Vec<String>>,
    pub regions: Option<Vec<String>>,
    /// An update JSON; `schema_version`, `update_id`, `sequence` and `occurred_at`
    /// may be left out (they are filled in).
    pub file: Option<PathBuf>,
    /// A holding statement's name (`statements/NAME.toml`).
    pub statement: Option<String>,
    /// Values for a statement's own placeholders (`--set eta="18:00 UTC"`).
    pub set: BTreeMap<String, String>,
    /// Allow an update after `resolved` (or `completed`).
    pub reopen: bool,
}

/// How `publish` behaves around the update.
#[derive(Debug, Clone)]
pub struct Options {
    /// Publish without asking.
    pub yes: bool,
    /// How long to keep trying an unreachable cluster.
    pub timeout: Duration,
    /// Watch the ledger after publishing.
    pub follow: bool,
    pub follow_timeout: Duration,
}

/// How many records from the end of the incident's partition of the source topic
/// are read to find its latest sequence (besides the incident-state topic, which
/// lags the source by the events stream's consumption, and is absent when not
/// configured or no daemon runs).
const SOURCE_TAIL: i64 = 5000;

/// Publishes one update; returns the exit code.
pub async fn run(settings: Settings, request: Request, options: Options) -> Result<u8> {
    if options.follow && settings.kafka.ledger_topic.is_none() {
        bail!(
            "--follow reads the delivery ledger, and {} sets no kafka.ledger_topic (docs/ledger.md); publish without --follow, or configure the ledger",
            settings.source
        );
    }
    let draft = draft(&settings, &request)?;
    let incident = draft
        .get("incident_id")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("say which incident: --incident ID (or incident_id in --file)"))?;
    let deadline = Instant::now() + options.timeout;
    let reporter = Arc::new(Reporter::new(&settings.kafka.brokers, options.timeout));
    let settings = Arc::new(settings);

    // Everything that talks to Kafka below is blocking librdkafka calls.
    let s = settings.clone();
    let r = reporter.clone();
    let id = incident.clone();
    let (known, partitions) = tokio::task::spawn_blocking(move || {
        wait_for_cluster(&s, &r, deadline)?;
        anyhow::Ok((
            latest(&s, &r, &id, deadline)?,
            partition_count(&s, &r, deadline)?,
        ))
    })
    .await
    .context("the Kafka reader stopped")??;

    let update = complete(draft, known.as_ref(), &request, jiff::Timestamp::now())?;
    let bytes = serde_json::to_vec(&update)?;
    let update = validate(&settings, &bytes)?;

    print!(
        "{}",
        preview(&settings, &update, known.as_ref(), partitions)?
    );
    if !confirmed(options.yes)? {
        eprintln!("not published");
        return Ok(EXIT_ERROR);
    }

    // Where the ledger ends now: every record of this update comes after it.
    let ledger_start = match (&settings.kafka.ledger_topic, options.follow) {
        (Some(topic), true) => {
            let s = settings.clone();
            let topic = topic.clone();
            let r = reporter.clone();
            Some(
                tokio::task::spawn_blocking(move || follow::ends(&s, &r, &topic, deadline))
                    .await
                    .context("the ledger reader stopped")??,
            )
        }
        _ => None,
    };

    let producer = update_producer(&settings, &reporter, deadline)?;
    match produce(&producer, &settings, &update, &bytes).await {
        Ok(delivery) => {
            reporter.reached();
            println!(
                "published {} (sequence {}) to {} partition {} at offset {}",
                update.update_id,
                update.sequence,
                settings.kafka.topic,
                delivery.partition,
                delivery.offset
            );
        }
        Err(e) => {
            bail!(
                "not published: {e} (gave up after --timeout {}; nothing was written, so running the same command again is safe)",
                humantime::format_duration(options.timeout)
            );
        }
    }

    let Some(start) = ledger_start else {
        return Ok(EXIT_REACHED);
    };
    let expected = follow::expected(&settings, &update);
    let s = settings.clone();
    let timeout = options.follow_timeout;
    tokio::task::spawn_blocking(move || follow::watch(&s, &update, expected, start, timeout))
        .await
        .context("the ledger reader stopped")?
}

/// The update as far as ops gave it: a JSON object built from the file or the
/// statement, then the flags.
fn draft(settings: &Settings, r: &Request) -> Result<serde_json::Map<String, serde_json::Value>> {
    use serde_json::Value;
    if r.file.is_some() && r.statement.is_some() {
        bail!("give either --file or --statement, not both");
    }
    let mut out = serde_json::Map::new();
    if let Some(path) = &r.file {
        let text =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        match serde_json::from_slice(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?
        {
            Value::Object(m) => out = m,
            _ => bail!("{}: an update is a JSON object", path.display()),
        }
    }
    if let Some(name) = &r.statement {
        let statement = load_statement(settings, name)?;
        let incident = r
            .incident
            .as_deref()
            .ok_or_else(|| anyhow!("--statement needs --incident ID"))?;
        let values = placeholder_values(incident, r);
        let filled = statement
            .fill(&values)
            .with_context(|| format!("statement `{name}`"))?;
        out = serde_json::to_value(filled)?
            .as_object()
            .cloned()
            .unwrap_or_default();
    }
    let mut set = |k: &str, v: Value| {
        out.insert(k.to_string(), v);
    };
    if let Some(v) = &r.incident {
        set("incident_id", Value::from(v.as_str()));
    }
    if let Some(v) = r.status {
        set("status", Value::from(v.as_str()));
    }
    if let Some(v) = r.impact {
        set("impact", Value::from(v.as_str()));
    }
    if let Some(v) = &r.title {
        set("title", Value::from(v.as_str()));
    }
    if let Some(v) = &r.message {
        set("message", Value::from(v.as_str()));
    }
    if let Some(v) = &r.audiences {
        set("audiences", Value::from(v.clone()));
    }
    if let Some(v) = &r.components {
        set("components", Value::from(v.clone()));
    }
    if let Some(v) = &r.regions {
        set("regions", Value::from(v.clone()));
    }
    Ok(out)
}

/// What Kafka already holds for an incident: its latest update.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    pub sequence: u64,
    pub status: Status,
    pub update_id: String,
    /// The update itself: what a new one leaves out is carried forward from it.
    pub update: Option<IncidentUpdate>,
}

/// What a new update takes from the incident's latest when ops leave it out: the
/// facts of the incident, not the news (`message` and `status` are always new).
const CARRIED: [&str; 7] = [
    "title",
    "impact",
    "audiences",
    "components",
    "regions",
    "links",
    "locales",
];

/// Fills `schema_version`, `update_id`, `sequence` and `occurred_at`, and refuses
/// what cannot follow `known`.
pub fn complete(
    mut draft: serde_json::Map<String, serde_json::Value>,
    known: Option<&Known>,
    request: &Request,
    now: jiff::Timestamp,
) -> Result<serde_json::Value> {
    use serde_json::Value;
    let incident = draft
        .get("incident_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(k) = known
        && matches!(k.status, Status::Resolved | Status::Completed)
        && !request.reopen
    {
        bail!(
            "incident {incident} is {} (update {}, sequence {}); an update after that reopens it: pass --reopen if that is what you mean",
            k.status,
            k.update_id,
            k.sequence
        );
    }
    // The first update of an incident is sequence 1 (the event parser refuses 0).
    let next = known.map_or(1, |k| k.sequence + 1);
    let sequence = match draft.get("sequence").and_then(Value::as_u64) {
        Some(given) if known.is_some_and(|k| given <= k.sequence) => bail!(
            "sequence {given} would go backwards: incident {incident} is already at sequence {} (update {}); leave `sequence` out and it is filled in",
            known.map_or(0, |k| k.sequence),
            known.map_or("", |k| k.update_id.as_str())
        ),
        Some(given) => given,
        None => next,
    };
    draft.insert("sequence".into(), Value::from(sequence));
    if let Some(previous) = known
        .and_then(|k| k.update.as_ref())
        .and_then(|u| serde_json::to_value(u).ok())
    {
        for key in CARRIED {
            if !draft.contains_key(key)
                && let Some(v) = previous.get(key)
            {
                draft.insert(key.into(), v.clone());
            }
        }
    }
    draft
        .entry("schema_version")
        .or_insert(Value::from(clarion_core::SCHEMA_VERSION));
    draft
        .entry("update_id")
        .or_insert_with(|| Value::from(format!("{incident}-u{sequence}")));
    draft
        .entry("occurred_at")
        .or_insert_with(|| Value::from(now.to_string()));
    Ok(Value::Object(draft))
}

/// Exactly the daemon's checks: the event parser with the configured size limit,
/// then the configured audiences (the events stream dead-letters the rest).
pub fn validate(settings: &Settings, bytes: &[u8]) -> Result<IncidentUpdate> {
    let update = IncidentUpdate::from_slice(bytes, settings.daemon.max_event_bytes)
        .map_err(|e| anyhow!("the daemon would reject this update: {e}"))?;
    if let Err(reason) = crate::engine::dispatch::check_audiences(&update, &settings.audiences) {
        bail!(
            "the daemon would dead-letter this update: {reason} (known: {})",
            settings
                .audiences
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(update)
}

/// The routing preview: the `clarion route` table, then one row per (target,
/// audience) with recipients and SMS segments of the rendered text.
pub fn preview(
    settings: &Settings,
    update: &IncidentUpdate,
    known: Option<&Known>,
    partitions: Option<i32>,
) -> Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "update {} of incident {}: sequence {} ({}), {}, impact {}",
        update.update_id,
        update.incident_id,
        update.sequence,
        match known {
            None => "a new incident".to_string(),
            Some(k) => format!("after {} ({})", k.update_id, k.status),
        },
        update.status,
        update.impact
    );
    let _ = writeln!(out, "title: {}", update.title);
    if let Some(n) = partitions {
        let _ = writeln!(
            out,
            "key {} -> partition {} of {} ({})",
            update.incident_id,
            partition_of(update.incident_id.as_bytes(), n),
            n,
            settings.kafka.topic
        );
    }
    let _ = writeln!(out);
    out.push_str(&crate::cli::preview::route(settings, update));
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:<12} {:>10}  NOTES",
        "TARGET", "AUDIENCE", "RECIPIENTS"
    );
    let mut any = false;
    // A people target renders through each of its legs, routed as the target is.
    for (t, c) in settings
        .targets
        .iter()
        .flat_map(|t| t.channels().into_iter().map(move |c| (t, c)))
    {
        let decision = clarion_render::route(update, &t.audiences, &t.rules);
        if !decision.matched {
            continue;
        }
        any = true;
        for audience in &decision.audiences {
            let message = c
                .render(&settings.templates, update, audience)
                .map_err(|e| {
                    anyhow!(
                        "target {}: audience {audience}: the template does not render ({e}); the daemon would dead-letter this delivery",
                        c.name
                    )
                })?;
            // A leg reaches the directory's members who have its kind of address
            // (a file directory: counted; a topic: unknown here).
            let count = match &t.people {
                Some(_) => settings
                    .directory
                    .as_ref()
                    .and_then(|d| d.people.as_ref())
                    .map_or("-".to_string(), |p| format!("≤{}", p.members(audience))),
                None => recipients(&c.channel, std::slice::from_ref(audience))
                    .map_or("-".to_string(), |n| n.to_string()),
            };
            let note = match &c.channel {
                ChannelConfig::Sms(c) => {
                    let text = message.get(clarion_render::Part::Text).unwrap_or("").trim();
                    let a = clarion_sms::encoding::analyze(text);
                    format!(
                        "SMS {:?}, {} segment(s) per recipient{}",
                        a.encoding,
                        a.segments,
                        if a.segments > c.max_segments() {
                            format!(", cut to {} (max_segments)", c.max_segments())
                        } else {
                            String::new()
                        }
                    )
                }
                _ => c.kind.as_str().to_string(),
            };
            let _ = writeln!(
                out,
                "{:<20} {:<12} {:>10}  {note}",
                &*c.name, audience, count
            );
        }
    }
    if !any {
        let _ = writeln!(
            out,
            "(no target takes this update: it is published, and nobody is notified)"
        );
    }
    let _ = writeln!(out);
    Ok(out)
}

/// The values a statement's placeholders take from the command line.
fn placeholder_values(incident: &str, r: &Request) -> BTreeMap<String, String> {
    let mut v = r.set.clone();
    v.insert("incident".into(), incident.to_string());
    if let Some(x) = &r.regions {
        v.insert("regions".into(), x.join(", "));
    }
    if let Some(x) = &r.components {
        v.insert("components".into(), x.join(", "));
    }
    v
}

/// Asks on the terminal; without one, only `--yes` publishes.
fn confirmed(yes: bool) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to publish without a confirmation: the input is not a terminal, so nobody can answer; read the preview above and pass --yes to publish from a script"
        );
    }
    print!("Publish this update? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// The incident's latest update: the higher of the incident-state topic's record
/// and the tail of the incident's partition of the source topic (the state topic
/// lags the source, and is written only while a daemon runs).
fn latest(
    settings: &Settings,
    reporter: &Reporter,
    incident: &str,
    deadline: Instant,
) -> Result<Option<Known>> {
    let mut best: Option<Known> = None;
    let mut consider = |u: &IncidentUpdate| {
        if u.incident_id == incident && best.as_ref().is_none_or(|b| u.sequence > b.sequence) {
            best = Some(Known {
                sequence: u.sequence,
                status: u.status,
                update_id: u.update_id.clone(),
                update: Some(u.clone()),
            });
        }
    };
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1))
    };
    if let Some(topic) = &settings.kafka.incident_state_topic {
        for bytes in crate::records::ledger::read_key(
            &settings.kafka,
            &crate::config::EnvSecrets,
            topic,
            incident,
            left(),
        )? {
            match serde_json::from_slice::<crate::records::ledger::IncidentState>(&bytes) {
                Ok(state) => consider(&state.update),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an incident-state record that does not parse")
                }
            }
        }
    }
    for update in source_tail(settings, reporter, incident, left())? {
        consider(&update);
    }
    Ok(best)
}

/// The incident's updates among the last [`SOURCE_TAIL`] records of its partition.
fn source_tail(
    settings: &Settings,
    reporter: &Reporter,
    incident: &str,
    timeout: Duration,
) -> Result<Vec<IncidentUpdate>> {
    let consumer = reader(settings, reporter.clone())?;
    let topic = &settings.kafka.topic;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of `{topic}`"))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len() as i32);
    if n == 0 {
        bail!("topic `{topic}` has no partitions");
    }
    let partition = partition_of(incident.as_bytes(), n);
    let (lo, hi) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .with_context(|| format!("cannot read the end of `{topic}` [{partition}]"))?;
    let mut out = Vec::new();
    if hi <= lo {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(lo.max(hi - SOURCE_TAIL)))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    loop {
        if Instant::now() > deadline {
            bail!("reading the end of `{topic}` [{partition}] took longer than {timeout:?}");
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.with_context(|| format!("reading `{topic}`"))?;
        if m.key() == Some(incident.as_bytes())
            && let Some(v) = m.payload()
            && let Ok(u) = IncidentUpdate::from_slice(v, usize::MAX)
        {
            out.push(u);
        }
        if m.offset() + 1 >= hi {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(sequence: u64, status: Status) -> Known {
        Known {
            sequence,
            status,
            update_id: format!("INC-1-u{sequence}"),
            update: None,
        }
    }

    fn draft() -> serde_json::Map<String, serde_json::Value> {
        serde_json::json!({"incident_id": "INC-1", "status": "identified"})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn sequences_follow_what_kafka_holds() {
        let now: jiff::Timestamp = "2026-11-30T14:00:00Z".parse().expect("time");
        let r = Request::default();
        let first = complete(draft(), None, &r, now).expect("first");
        assert_eq!(first["sequence"], 1);
        assert_eq!(first["update_id"], "INC-1-u1");
        assert_eq!(first["occurred_at"], "2026-11-30T14:00:00Z");
        assert_eq!(first["schema_version"], 1);
        let next = complete(draft(), Some(&known(4, Status::Identified)), &r, now).expect("next");
        assert_eq!(next["sequence"], 5);
        assert_eq!(next["update_id"], "INC-1-u5");
    }

    #[test]
    fn a_follow_up_carries_the_incidents_facts_but_not_its_news() {
        let previous = clarion_core::samples::lifecycle(
            "INC-1",
            "Calls failing",
            &["customers", "regulators"],
            jiff::Timestamp::UNIX_EPOCH,
        )
        .remove(0);
        let k = Known {
            update: Some(previous.clone()),
            ..known(1, Status::Investigating)
        };
        let mut d = draft();
        d.insert("message".into(), "Fixed the fibre.".into());
        let v = complete(
            d,
            Some(&k),
            &Request::default(),
            jiff::Timestamp::UNIX_EPOCH,
        )
        .expect("completes");
        assert_eq!(v["title"], previous.title.as_str());
        assert_eq!(v["impact"], previous.impact.as_str());
        assert_eq!(v["audiences"], serde_json::json!(previous.audiences));
        assert_eq!(v["message"], "Fixed the fibre.");
        assert_eq!(v["status"], "identified");
    }

    #[test]
    fn resolved_needs_reopen_and_sequences_never_go_back() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        let resolved = known(3, Status::Resolved);
        let e = complete(draft(), Some(&resolved), &Request::default(), now)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("--reopen") && e.contains("INC-1-u3"), "{e}");
        let reopen = Request {
            reopen: true,
            ..Request::default()
        };
        let v = complete(draft(), Some(&resolved), &reopen, now).expect("reopened");
        assert_eq!(v["sequence"], 4);
        let mut backwards = draft();
        backwards.insert("sequence".into(), 2.into());
        let e = complete(backwards, Some(&known(3, Status::Monitoring)), &reopen, now)
            .expect_err("backwards")
            .to_string();
        assert!(e.contains("go backwards"), "{e}");
    }
}
