//! `clarion dlq replay`: re-delivers dead-lettered updates to the one target they
//! failed for, and to no other.
//!
//! Re-publishing a dead letter to the source topic would send it to every target
//! again; this reads the dead-letter topic instead, picks the `delivery_failed`
//! records of one target, and runs each through the same [`Dispatcher`] code as the
//! daemon (same rendering, retries, breaker and idempotency key: update id + target),
//! so a receiver that already has the update can drop the copy. A delivery that fails
//! again is dead-lettered again, as the daemon would.
//!
//! It must never commit offsets or join a consumer group: it reads the dead-letter
//! topic by manual assignment, from each partition's low to its high watermark at
//! the time it starts.

use crate::config::{EnvSecrets, KafkaConfig, Settings, build_providers};
use crate::engine::dispatch::{DeliveryReport, Dispatcher, Outputs, Resolution, Target};
use crate::kafka::{consumer_config, producer_config};
use crate::records::dlq::{DeadLetterWriter, Source};
use anyhow::{Context as _, Result, anyhow, bail};
use clarion_core::{IncidentUpdate, SecretResolver};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Which dead letters to replay.
#[derive(Debug, Clone)]
pub struct Selection {
    /// The target whose failed deliveries are replayed (`clarion.dlq.target`).
    pub target: String,
    /// Only this incident (the dead letter's key).
    pub incident: Option<String>,
    /// Only dead letters written at or after this time (`clarion.dlq.at`).
    pub since: Option<jiff::Timestamp>,
}

/// Parses `--since`: an RFC 3339 time, or a duration such as `2h` meaning "that long
/// ago".
pub fn parse_since(text: &str, now: jiff::Timestamp) -> Result<jiff::Timestamp> {
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let d = humantime::parse_duration(text).map_err(|e| {
        anyhow!("--since {text:?}: neither an RFC 3339 time (2026-11-28T10:00:00Z) nor a duration (2h, 30m): {e}")
    })?;
    let span = jiff::SignedDuration::try_from(d)
        .map_err(|e| anyhow!("--since {text:?}: duration too large: {e}"))?;
    now.checked_sub(span)
        .map_err(|e| anyhow!("--since {text:?}: before the earliest time: {e}"))
}

/// One dead letter selected for replay.
#[derive(Debug, Clone)]
pub struct Letter {
    /// The original record, as the daemon read it (headers without `clarion.dlq.*`).
    pub source: Source,
    pub recipient: Option<String>,
    pub reason: String,
    /// When it was dead-lettered (as written in `clarion.dlq.at`).
    pub at: String,
    /// Why it cannot be replayed, when it cannot (a truncated value, not an update).
    pub unusable: Option<String>,
    pub update: Option<IncidentUpdate>,
}

/// What a dead letter's `clarion.dlq.*` headers and value say, or `None` when it is
/// not one this selection takes.
fn select(
    sel: &Selection,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: Vec<(String, Vec<u8>)>,
    max_event_bytes: usize,
) -> Option<Letter> {
    let text = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    if text("clarion.dlq.kind").as_deref() != Some("delivery_failed")
        || text("clarion.dlq.target").as_deref() != Some(sel.target.as_str())
    {
        return None;
    }
    if let Some(incident) = &sel.incident
        && key != Some(incident.as_bytes())
    {
        return None;
    }
    let at = text("clarion.dlq.at").unwrap_or_default();
    if let Some(since) = sel.since {
        // A dead letter whose time cannot be read is not known to be recent enough.
        match at.parse::<jiff::Timestamp>() {
            Ok(t) if t >= since => {}
            _ => return None,
        }
    }
    let number = |name: &str| text(name).and_then(|v| v.parse::<i64>().ok());
    let source = Source {
        topic: text("clarion.dlq.source.topic").unwrap_or_default(),
        partition: number("clarion.dlq.source.partition").unwrap_or(-1) as i32,
        offset: number("clarion.dlq.source.offset").unwrap_or(-1),
        timestamp_ms: number("clarion.dlq.source.timestamp_ms"),
        key: key.map(<[u8]>::to_vec),
        payload: payload.to_vec(),
        // Dead-lettered again, the record must carry the original headers and fresh
        // `clarion.dlq.*` ones, not two sets.
        headers: headers
            .iter()
            .filter(|(k, _)| !k.starts_with("clarion.dlq."))
            .cloned()
            .collect(),
    };
    let (update, unusable) = if text("clarion.dlq.truncated").as_deref() == Some("true") {
        (
            None,
            Some(format!(
                "the dead letter holds only the first bytes of the update; re-publish the original from {}/{}/{}",
                source.topic, source.partition, source.offset
            )),
        )
    } else {
        match IncidentUpdate::from_slice(payload, max_event_bytes) {
            Ok(u) => (Some(u), None),
            Err(e) => (
                None,
                Some(format!("the value is not an incident update: {e}")),
            ),
        }
    };
    Some(Letter {
        source,
        recipient: text("clarion.dlq.recipient"),
        reason: text("clarion.dlq.reason").unwrap_or_default(),
        at,
        unusable,
        update,
    })
}

/// Reads the dead-letter topic from each partition's low to its high watermark, and
/// keeps the selected dead letters, one per (source topic, partition, offset,
/// recipient): a delivery dead-lettered twice (an earlier replay that failed again)
/// is replayed once, with its latest reason. Sorted by source position, so that
/// updates of one incident are replayed in their original order.
fn read_letters(
    base: &ClientConfig,
    kafka: &KafkaConfig,
    sel: &Selection,
    max_event_bytes: usize,
) -> Result<Vec<Letter>> {
    let timeout = Duration::from_secs(10);
    let mut config = base.clone();
    // A group id is required by librdkafka even for manual assignment; this one
    // never joins, subscribes or commits.
    config
        .set("group.id", format!("{}.dlq-replay", kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = config
        .create()
        .context("cannot create the dead-letter reader")?;
    let topic = &kafka.dead_letter_topic;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        bail!("dead-letter topic `{topic}` not found on the brokers");
    }
    let mut tpl = TopicPartitionList::new();
    // Per partition, the offset where reading is done (the high watermark now).
    let mut ends = BTreeMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .with_context(|| format!("cannot read the watermarks of {topic}/{p}"))?;
        if high > low {
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))?;
            ends.insert(*p, high);
        }
    }
    let mut picked: BTreeMap<(String, i32, i64, Option<String>), Letter> = BTreeMap::new();
    if ends.is_empty() {
        return Ok(Vec::new());
    }
    consumer.assign(&tpl)?;
    let mut idle = 0;
    while !ends.is_empty() {
        let Some(msg) = consumer.poll(Duration::from_millis(500)) else {
            idle += 1;
            // Thirty seconds without a record while records are known to be there:
            // the broker is not answering.
            if idle > 60 {
                bail!(
                    "reading {topic} stalled with partitions {:?} unfinished",
                    ends.keys().collect::<Vec<_>>()
                );
            }
            continue;
        };
        idle = 0;
        let msg = msg.with_context(|| format!("reading {topic}"))?;
        if ends
            .get(&msg.partition())
            .is_some_and(|end| msg.offset() + 1 >= *end)
        {
            ends.remove(&msg.partition());
        }
        let headers = crate::records::dlq::copy_headers(msg.headers());
        if let Some(letter) = select(
            sel,
            msg.key(),
            msg.payload().unwrap_or_default(),
            headers,
            max_event_bytes,
        ) {
            let s = &letter.source;
            picked.insert(
                (
                    s.topic.clone(),
                    s.partition,
                    s.offset,
                    letter.recipient.clone(),
                ),
                letter,
            );
        }
    }
    Ok(picked.into_values().collect())
}

/// How one replayed dead letter ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Delivered,
    DeadLetteredAgain(String),
    /// Not tried: why.
    Skipped(String),
}

/// Runs `clarion dlq replay`; prints the plan and the outcome to stdout. Ok(true)
/// when every selected dead letter was delivered.
pub async fn run(settings: Settings, sel: Selection, dry_run: bool) -> Result<bool> {
    run_with_secrets(settings, &EnvSecrets, sel, dry_run).await
}

pub async fn run_with_secrets(
    settings: Settings,
    secrets: &dyn SecretResolver,
    sel: Selection,
    dry_run: bool,
) -> Result<bool> {
    if let Some(t) = settings
        .targets
        .iter()
        .find(|t| *t.name == *sel.target && t.people.is_some())
    {
        let legs: Vec<&str> = t.channels().iter().map(|l| &*l.name).collect();
        bail!(
            "--target {}: a people target's dead letters are replayed per leg, each to the address it names: --target {}",
            sel.target,
            legs.join(" | --target ")
        );
    }
    // A people target's leg goes by `TARGET.KIND` (push, sms, email).
    let leg = settings
        .targets
        .iter()
        .any(|t| t.people.is_some() && t.channels().iter().any(|l| *l.name == *sel.target));
    let Some(config) = settings
        .targets
        .iter()
        .flat_map(|t| t.channels())
        .find(|t| *t.name == *sel.target)
        .cloned()
    else {
        bail!(
            "--target {}: no such target in {} (targets: {})",
            sel.target,
            settings.source,
            settings.target_names()
        );
    };
    let kafka = settings.kafka.clone();
    let base = consumer_config(&kafka, secrets)?;
    let letters = {
        let (kafka, sel, max) = (kafka.clone(), sel.clone(), settings.daemon.max_event_bytes);
        tokio::task::spawn_blocking(move || read_letters(&base, &kafka, &sel, max))
            .await
            .context("the dead-letter reader did not finish")??
    };
    // A dead letter whose delivery later succeeded (a restart redelivered it, or an
    // earlier replay, which records its deliveries) is not sent again: the ledger
    // knows. A ledger that cannot be read stops the replay rather than send twice.
    let already = {
        let (kafka, incidents) = (
            kafka.clone(),
            letters
                .iter()
                .filter_map(|l| l.update.as_ref().map(|u| u.incident_id.clone()))
                .collect::<std::collections::BTreeSet<_>>(),
        );
        let target = sel.target.clone();
        let records = tokio::task::spawn_blocking(
            move || -> Result<Vec<crate::records::ledger::LedgerRecord>> {
                if kafka.ledger_topic.is_none() {
                    return Ok(Vec::new());
                }
                let mut out = Vec::new();
                for incident in &incidents {
                    out.extend(
                        crate::records::ledger::read_incident(
                            &kafka,
                            &EnvSecrets,
                            incident,
                            Duration::from_secs(60),
                        )
                        .with_context(|| {
                            format!("reading the ledger for what was delivered since (incident {incident})")
                        })?
                        .into_iter()
                        .filter(|r| r.target == target && r.is_delivered()),
                    );
                }
                Ok(out)
            },
        )
        .await
        .context("the ledger reader stopped")??;
        letters
            .iter()
            .map(|l| delivered_since(l, &sel.target, &records))
            .collect::<Vec<_>>()
    };
    println!(
        "{} dead letter(s) of target `{}` to replay from {}{}",
        letters.len(),
        sel.target,
        kafka.dead_letter_topic,
        if dry_run {
            " (dry run: nothing is sent)"
        } else {
            ""
        }
    );
    for (l, done) in letters.iter().zip(&already) {
        match done {
            Some(at) => println!(
                "  {} (the ledger shows it delivered at {at}, after it was dead-lettered: skipped)",
                describe(l)
            ),
            None => println!("  {}", describe(l)),
        }
    }
    if dry_run || letters.is_empty() {
        return Ok(true);
    }

    let mut target_config = config;
    // A replay is run by a person waiting for it: a target still down gives up after
    // the retry policy's time, not after the daemon's outage budget (24 h by default).
    target_config.breaker.outage_budget = target_config
        .breaker
        .outage_budget
        .min(target_config.retry.max_elapsed);
    let providers = build_providers(&target_config, secrets)
        .with_context(|| format!("targets.{}", target_config.name))?;
    let producer: rdkafka::producer::FutureProducer<crate::ops::health::ProducerCtx> =
        producer_config(&kafka, secrets)?
            .create_with_context(crate::ops::health::ProducerCtx)
            .context("cannot create the dead-letter producer")?;
    let (tx, mut rx) = mpsc::channel::<DeliveryReport>(64);
    let out = DeadLetterWriter::new(producer.clone(), kafka.dead_letter_topic.clone());
    let dispatcher = Dispatcher::new(
        vec![Target::with_providers(target_config, providers)],
        settings.audiences.clone(),
        settings.templates.clone(),
        Outputs {
            dlq: out.clone(),
            dead_recipient_topic: kafka.dead_recipient_topic.clone(),
            observer: Some(tx),
        },
        CancellationToken::new(),
    )
    // Its outcomes go to the ledger like the daemon's, marked `replayed`: `status`
    // then shows the notice delivered, and a second replay skips it.
    .with_ledger(
        kafka
            .ledger_topic
            .clone()
            .map(|t| crate::records::ledger::LedgerWriter::new(out, t)),
    )
    .replaying();
    let cancel = CancellationToken::new();
    let mut ended = Vec::new();
    // One at a time, in source order: the updates of an incident reach the target in
    // the order they were published, as they would from the daemon.
    let mut ledger_skipped = 0;
    for (l, done) in letters.iter().zip(&already) {
        if let Some(at) = done {
            ledger_skipped += 1;
            println!(
                "skipped              {}: the ledger shows it delivered at {at}",
                short(l)
            );
            continue;
        }
        let outcome = replay_one(&dispatcher, l, leg, &cancel, &mut rx).await;
        match &outcome {
            Ended::Delivered => println!("delivered            {}", short(l)),
            Ended::DeadLetteredAgain(why) => {
                println!("dead-lettered again  {}: {why}", short(l))
            }
            Ended::Skipped(why) => println!("skipped              {}: {why}", short(l)),
        }
        ended.push(outcome);
    }
    let flushed = tokio::task::spawn_blocking(move || {
        use rdkafka::producer::Producer;
        producer.flush(rdkafka::util::Timeout::After(Duration::from_secs(10)))
    })
    .await;
    if !matches!(flushed, Ok(Ok(()))) {
        eprintln!("warning: the dead-letter producer did not flush in 10 s");
    }
    let delivered = ended.iter().filter(|e| **e == Ended::Delivered).count();
    let again = ended
        .iter()
        .filter(|e| matches!(e, Ended::DeadLetteredAgain(_)))
        .count();
    let skipped = ended.len() - delivered - again;
    println!(
        "replayed {} to `{}`: {delivered} delivered, {again} dead-lettered again, {skipped} skipped, {ledger_skipped} already delivered (ledger)",
        ended.len(),
        sel.target
    );
    Ok(delivered == ended.len())
}

/// When the ledger shows this dead letter's delivery delivered after it was
/// dead-lettered: the time it was delivered.
fn delivered_since(
    l: &Letter,
    target: &str,
    records: &[crate::records::ledger::LedgerRecord],
) -> Option<jiff::Timestamp> {
    let update = l.update.as_ref()?;
    let dead_at: jiff::Timestamp = l.at.parse().ok()?;
    let key = clarion_core::IdempotencyKey::new(&update.update_id, target);
    let want_ref = l
        .recipient
        .as_deref()
        .map(|r| crate::records::ledger::recipient_ref(r, key.as_str()));
    records
        .iter()
        .filter(|r| {
            r.update_id == update.update_id
                && r.target == target
                && r.recipient_ref == want_ref
                && r.at() > dead_at
        })
        .map(|r| r.at())
        .max()
}

/// Runs one dead letter's delivery through the dispatcher and reads how it ended
/// from the dispatcher's reports.
async fn replay_one(
    dispatcher: &Dispatcher,
    l: &Letter,
    leg: bool,
    cancel: &CancellationToken,
    rx: &mut mpsc::Receiver<DeliveryReport>,
) -> Ended {
    let (Some(update), None) = (&l.update, &l.unusable) else {
        return Ended::Skipped(l.unusable.clone().unwrap_or_default());
    };
    let plans = match dispatcher.plan(&Arc::new(update.clone())) {
        Ok(p) => p,
        Err(why) => return Ended::Skipped(why),
    };
    let Some(mut planned) = plans.into_iter().next() else {
        return Ended::Skipped(
            "the target's audiences or rules no longer take this update".to_string(),
        );
    };
    match (&l.recipient, leg) {
        (Some(r), false) => planned.restrict_to(vec![r.clone()]),
        // A leg has no recipients of its own: the dead letter's address is it.
        (Some(r), true) => planned.delivery.direct = Some(vec![r.clone()].into()),
        (None, true) => {
            return Ended::Skipped(
                "a people target's dead letter without an address cannot be replayed".to_string(),
            );
        }
        (None, false) => {}
    }
    let mut reports = Vec::new();
    let run = dispatcher.run(planned, &l.source, cancel);
    tokio::pin!(run);
    // The reports are drained while the delivery runs: the channel is bounded, and a
    // delivery to many recipients reports once per recipient.
    let resolution = loop {
        tokio::select! {
            r = &mut run => break r,
            Some(rep) = rx.recv() => reports.push(rep),
        }
    };
    while let Ok(rep) = rx.try_recv() {
        reports.push(rep);
    }
    if resolution == Resolution::Abandoned {
        return Ended::Skipped("abandoned".to_string());
    }
    match reports.iter().find_map(|r| r.dead_letter_reason.clone()) {
        Some(why) => Ended::DeadLetteredAgain(why),
        None if reports.is_empty() => Ended::Skipped("no outcome reported".to_string()),
        None => Ended::Delivered,
    }
}

fn short(l: &Letter) -> String {
    match &l.update {
        Some(u) => format!(
            "incident {} update {} recipient {}",
            u.incident_id,
            u.update_id,
            l.recipient.as_deref().unwrap_or("-")
        ),
        None => format!(
            "{}/{}/{} recipient {}",
            l.source.topic,
            l.source.partition,
            l.source.offset,
            l.recipient.as_deref().unwrap_or("-")
        ),
    }
}

fn describe(l: &Letter) -> String {
    let mut s = format!(
        "{}  dead-lettered at {}  reason: {}",
        short(l),
        if l.at.is_empty() { "?" } else { &l.at },
        l.reason
    );
    if let Some(why) = &l.unusable {
        s.push_str(&format!("  (cannot replay: {why})"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn sel(target: &str) -> Selection {
        Selection {
            target: target.into(),
            incident: None,
            since: None,
        }
    }

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        let now: jiff::Timestamp = "2026-11-28T12:00:00Z".parse().expect("time");
        assert_eq!(
            parse_since("2h", now).expect("duration").to_string(),
            "2026-11-28T10:00:00Z"
        );
        assert_eq!(
            parse_since("2026-11-28T09:30:00Z", now)
                .expect("rfc3339")
                .to_string(),
            "2026-11-28T09:30:00Z"
        );
        assert!(parse_since("yesterday", now).is_err());
    }

    #[test]
    fn only_delivery_failures_of_the_target_and_window_are_selected() {
        let update =
            clarion_core::samples::lifecycle("INC-1", "t", &["customers"], jiff::Timestamp::now())
                .remove(0);
        let body = serde_json::to_vec(&update).expect("json");
        let h = |kind: &str, target: &str, at: &str| {
            headers(&[
                ("origin", "ops"),
                ("clarion.dlq.kind", kind),
                ("clarion.dlq.target", target),
                ("clarion.dlq.at", at),
                ("clarion.dlq.source.topic", "incidents"),
                ("clarion.dlq.source.partition", "2"),
                ("clarion.dlq.source.offset", "41"),
                ("clarion.dlq.recipient", "ops@example.com"),
            ])
        };
        let at = "2026-11-28T11:00:00Z";
        let l = select(
            &sel("x"),
            Some(b"INC-1"),
            &body,
            h("delivery_failed", "x", at),
            1 << 20,
        )
        .expect("selected");
        assert_eq!((l.source.partition, l.source.offset), (2, 41));
        assert_eq!(l.recipient.as_deref(), Some("ops@example.com"));
        assert_eq!(
            l.source.headers,
            headers(&[("origin", "ops")]),
            "only the original headers are kept"
        );
        assert!(l.update.is_some() && l.unusable.is_none());
        for (kind, target) in [("delivery_failed", "y"), ("malformed_event", "x")] {
            assert!(
                select(
                    &sel("x"),
                    Some(b"INC-1"),
                    &body,
                    h(kind, target, at),
                    1 << 20
                )
                .is_none()
            );
        }
        let mut other = sel("x");
        other.incident = Some("INC-2".into());
        assert!(
            select(
                &other,
                Some(b"INC-1"),
                &body,
                h("delivery_failed", "x", at),
                1 << 20
            )
            .is_none()
        );
        let mut late = sel("x");
        late.since = Some("2026-11-28T11:30:00Z".parse().expect("time"));
        assert!(
            select(
                &late,
                Some(b"INC-1"),
                &body,
                h("delivery_failed", "x", at),
                1 << 20
            )
            .is_none()
        );
        late.since = Some("2026-11-28T10:30:00Z".parse().expect("time"));
        assert!(
            select(
                &late,
                Some(b"INC-1"),
                &body,
                h("delivery_failed", "x", at),
                1 << 20
            )
            .is_some()
        );
    }

    #[test]
    fn a_truncated_dead_letter_is_shown_but_not_replayed() {
        let mut h = headers(&[
            ("clarion.dlq.kind", "delivery_failed"),
            ("clarion.dlq.target", "x"),
        ]);
        h.push(("clarion.dlq.truncated".into(), b"true".to_vec()));
        let l = select(&sel("x"), Some(b"k"), b"{\"schema", h, 1 << 20).expect("selected");
        assert!(l.update.is_none());
        assert!(
            l.unusable
                .as_deref()
                .is_some_and(|w| w.contains("re-publish"))
        );
    }

    #[test]
    fn a_dead_letter_delivered_later_is_found_in_the_ledger() {
        let update =
            clarion_core::samples::lifecycle("INC-L", "u", &["customers"], jiff::Timestamp::now())
                .remove(0);
        let body = serde_json::to_vec(&update).expect("json");
        let mut l = select(
            &sel("x"),
            Some(b"INC-L"),
            &body,
            headers(&[
                ("clarion.dlq.kind", "delivery_failed"),
                ("clarion.dlq.target", "x"),
                ("clarion.dlq.recipient", "+15550001111"),
                ("clarion.dlq.at", "2026-11-30T10:00:00Z"),
            ]),
            1 << 20,
        )
        .expect("selected");
        l.at = "2026-11-30T10:00:00Z".into();
        let key = clarion_core::IdempotencyKey::new(&update.update_id, "x");
        let record = |recipient: &str, at: &str| crate::records::ledger::LedgerRecord {
            schema_version: 1,
            incident_id: update.incident_id.clone(),
            update_id: update.update_id.clone(),
            sequence: update.sequence,
            status: "investigating".into(),
            impact: "major".into(),
            target: "x".into(),
            channel: "sms".into(),
            audiences: vec!["customers".into()],
            recipient: Some("+1***1111".into()),
            recipient_ref: Some(crate::records::ledger::recipient_ref(
                recipient,
                key.as_str(),
            )),
            outcome: "delivered".into(),
            attempts: 1,
            first_attempt_at: None,
            final_at: Some(at.parse().expect("time")),
            recorded_at: None,
            occurred_at: update.occurred_at,
            published_at: None,
            latency_ms: 0,
            provider: None,
            drill: false,
            provider_id: None,
            error: None,
            superseded_by: None,
            idempotency_key: key.as_str().to_string(),
            source: crate::records::ledger::SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            next_attempt_at: None,
            breaker: None,
            recipients_pending: None,
            replayed: false,
        };
        // Delivered before it was dead-lettered (an earlier update's attempt), or to
        // someone else: not this dead letter.
        assert_eq!(
            delivered_since(&l, "x", &[record("+15550001111", "2026-11-30T09:00:00Z")]),
            None
        );
        assert_eq!(
            delivered_since(&l, "x", &[record("+15550002222", "2026-11-30T11:00:00Z")]),
            None
        );
        let later = record("+15550001111", "2026-11-30T11:00:00Z");
        assert_eq!(
            delivered_since(&l, "x", std::slice::from_ref(&later)),
            later.final_at
        );
    }
}
