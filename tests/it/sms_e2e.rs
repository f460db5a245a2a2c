//! End to end from a real Apache Kafka broker to two SMS targets: ops publish incident
//! lifecycles, the daemon (in process) sends them through a Twilio target (the axum
//! stand-in of `tests/it/sms.rs`) to customers and through an SMPP target to the
//! `smpp34` SMSC (`tests/peers/smsc.py`) for employees.
//!
//! What a user cares about: every accepted number gets every update exactly once, in
//! sequence order per incident, with the incident id, status and update id in the text;
//! a number that opted out (Twilio error 21610) is dead-lettered once per update as
//! `recipient_gone`, published to the dead-recipient topic so the address book can be
//! pruned, and does not hold up the others; and the consumer's offsets reach the end.

use crate::sms::{Seen, Smsc, Stub, hex, reply};
use clarion_core::{IdempotencyKey, IncidentUpdate, samples};
use clarion_sms::compose;
use clarion_tests::daemon::{InProcess, Wiring};
use clarion_tests::kafka::{committed_and_end, create_topic, publish_updates, read_all};
use clarion_tests::unique_topic;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 2;
const TWILIO_TARGET: &str = "sms-customers";
const SMPP_TARGET: &str = "sms-staff";
/// The customers' numbers Twilio accepts.
const CUSTOMERS: [&str; 2] = ["+447700900101", "+447700900102"];
/// A customer number that replied STOP: Twilio answers error 21610.
const OPTED_OUT: &str = "+447700900103";
/// The employees' numbers, sent to over SMPP.
const EMPLOYEES: [&str; 2] = ["+447700900201", "+447700900202"];
/// The default `max_segments`, which `compose` needs to reproduce the text.
const MAX_SEGMENTS: usize = 3;
/// With incident ids this long, the first two updates of the sample lifecycle take two
/// segments (docs/channels/sms.md), so the SMSC sees concatenated parts too.
const INCIDENTS: [&str; 2] = ["INC-2026-0101", "INC-2026-0102"];
const TITLE: &str = "Mobile data outage in the north";

/// Twilio as it answers: 201 with a fresh `SM…` sid, or 400 with error 21610 for the
/// number that opted out; 200 for the health check's account fetch.
async fn twilio() -> Stub {
    let sids = AtomicUsize::new(0);
    Stub::start(move |req: &Seen| {
        if req.method.as_str() == "GET" {
            return reply(200, json!({"sid": "AC123", "status": "active"}));
        }
        let to = req.form().get("To").cloned().unwrap_or_default();
        if to == OPTED_OUT {
            return reply(
                400,
                json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "more_info": "https://www.twilio.com/docs/errors/21610", "status": 400}),
            );
        }
        let n = sids.fetch_add(1, Ordering::Relaxed) + 1;
        reply(
            201,
            json!({"sid": format!("SM{n:032}"), "status": "queued", "to": to}),
        )
    })
    .await
}

/// Both `[targets…]` tables as an operator would write them.
fn targets(twilio: &Stub, smsc: &Smsc) -> String {
    format!(
        r#"[targets.{TWILIO_TARGET}]
type = "sms"
audiences = ["customers"]
provider = "twilio"
account_sid = "AC123"
auth_token = {{ value = "tok" }}
from = "+15005550006"
base_url = "{base}"
rate_per_second = 1000
recipients = {{ customers = ["{c0}", "{gone}", "{c1}"] }}

[targets.{SMPP_TARGET}]
type = "sms"
audiences = ["employees"]
provider = "smpp"
address = "127.0.0.1:{port}"
system_id = "clarion"
password = {{ value = "e2eSmpp7" }}
source_addr = "ACME"
reconnect_backoff = "100ms"
response_timeout = "20s"
rate_per_second = 1000
recipients = {{ employees = ["{e0}", "{e1}"] }}
"#,
        base = twilio.base,
        port = smsc.port,
        c0 = CUSTOMERS[0],
        c1 = CUSTOMERS[1],
        gone = OPTED_OUT,
        e0 = EMPLOYEES[0],
        e1 = EMPLOYEES[1],
    )
}

/// GSM-7 (one octet per septet, as the SMPP channel sends it) back to text, for the
/// characters `compose` uses on the sample lifecycle: letters, digits, common
/// punctuation and the escaped `[` and `]`. Anything else shows as `?`, which the
/// exact comparison with `compose` then reports.
fn gsm7_to_text(septets: &[u8]) -> String {
    let mut out = String::new();
    let mut it = septets.iter();
    while let Some(&b) = it.next() {
        let c = match b {
            0x1B => match it.next() {
                Some(0x3C) => '[',
                Some(0x3E) => ']',
                _ => '?',
            },
            0x00 => '@',
            0x0A => '\n',
            0x20..=0x23 | 0x25..=0x3F | 0x41..=0x5A | 0x61..=0x7A => char::from(b),
            _ => '?',
        };
        out.push(c);
    }
    out
}

/// The update a text is about, read from its `[INCIDENT status]` prefix and `(ref
/// UPDATE_ID)` suffix and checked against the published update.
pub(crate) fn update_of<'a>(
    text: &str,
    by_id: &BTreeMap<&str, &'a IncidentUpdate>,
    audience: &str,
) -> &'a IncidentUpdate {
    let update_id = text
        .rsplit_once("(ref ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no `(ref UPDATE_ID)` at the end of {text:?}"));
    let u = by_id
        .get(update_id)
        .unwrap_or_else(|| panic!("a text for no published update: {text:?}"));
    let prefix = format!("[{} {}] ", u.incident_id, u.status);
    assert!(
        text.starts_with(&prefix),
        "{text:?} should start with {prefix:?}"
    );
    assert_eq!(
        text,
        compose(u, audience, MAX_SEGMENTS),
        "the composed text"
    );
    u
}

/// The SMSC's record reassembled into messages, in the order their first part arrived:
/// `(destination with +, text)`. Parts of one message share the destination and the
/// UDH reference; parts of different messages can interleave (numbers and incidents
/// are sent to concurrently).
pub(crate) fn smpp_messages(submits: &[Value]) -> Vec<(String, String)> {
    // (destination, reference) → (first index, total, parts by sequence).
    type Partial = (usize, u8, BTreeMap<u8, Vec<u8>>);
    let mut whole: Vec<(usize, String, Vec<u8>)> = Vec::new();
    let mut open: BTreeMap<(String, u8), Partial> = BTreeMap::new();
    for (i, s) in submits.iter().enumerate() {
        assert_eq!(s["result"], "accepted", "{s}");
        assert_eq!(s["source_addr"], "ACME", "{s}");
        assert_eq!(s["dest_addr_ton"], 1, "{s}");
        assert_eq!(s["data_coding"], 0, "GSM-7: {s}");
        let to = format!("+{}", s["destination_addr"].as_str().unwrap_or_default());
        let sm = hex(s["short_message"].as_str().unwrap_or_default());
        if s["esm_class"] == 0 {
            whole.push((i, to, sm));
            continue;
        }
        assert_eq!(s["esm_class"], 0x40, "{s}");
        assert!(
            sm.len() > 6 && sm[..3] == [0x05, 0x00, 0x03],
            "a 6-octet concatenation UDH: {s}"
        );
        let (reference, total, seq) = (sm[3], sm[4], sm[5]);
        let key = (to.clone(), reference);
        let entry = open
            .entry(key.clone())
            .or_insert((i, total, BTreeMap::new()));
        assert_eq!(entry.1, total, "one total for all parts: {s}");
        assert!(
            entry.2.insert(seq, sm[6..].to_vec()).is_none(),
            "part {seq} of {key:?} twice"
        );
        if entry.2.len() == usize::from(total) {
            if let Some((first, _, parts)) = open.remove(&key) {
                assert_eq!(
                    parts.keys().copied().collect::<Vec<_>>(),
                    (1..=total).collect::<Vec<_>>(),
                    "parts 1..={total} of {key:?}"
                );
                whole.push((first, to, parts.into_values().flatten().collect()));
            }
        }
    }
    assert!(open.is_empty(), "incomplete multi-part messages: {open:?}");
    whole.sort_by_key(|(first, _, _)| *first);
    whole
        .into_iter()
        .map(|(_, to, septets)| (to, gsm7_to_text(&septets)))
        .collect()
}

/// Asserts each number got each incident's updates 1, 2, 3, 4 once, in that order.
fn assert_in_order(
    name: &str,
    got: &BTreeMap<(String, String), Vec<u64>>,
    numbers: &[&str],
    incidents: &BTreeSet<&str>,
) {
    for number in numbers {
        for incident in incidents {
            assert_eq!(
                got.get(&(number.to_string(), incident.to_string()))
                    .map(Vec::as_slice),
                Some(&[1, 2, 3, 4][..]),
                "{name}: {number} gets every update of {incident} once, in sequence order: {got:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_reach_sms_numbers_once_in_order_and_opt_outs_are_reported() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let twilio = twilio().await;
    let smsc = Smsc::start(&py, &[]).await;
    let w = Wiring::new(&brokers, "sms-e2e", PARTITIONS).await;
    let dead_topic = unique_topic("sms-e2e-dead-recipients");
    create_topic(&brokers, &dead_topic, 1).await;
    let base = w.config(&targets(&twilio, &smsc));
    let dlq_line = format!("dead_letter_topic = \"{}\"\n", w.dlq);
    assert!(base.contains(&dlq_line), "Wiring::config changed: {base}");
    let config = base.replacen(
        &dlq_line,
        &format!("{dlq_line}dead_recipient_topic = \"{dead_topic}\"\n"),
        1,
    );
    let daemon = InProcess::start(&config);

    let updates: Vec<IncidentUpdate> = INCIDENTS
        .iter()
        .flat_map(|i| {
            samples::lifecycle(
                i,
                TITLE,
                &["customers", "employees"],
                jiff::Timestamp::now(),
            )
        })
        .collect();
    publish_updates(&brokers, &w.topic, &updates).await;
    let n = updates.len();
    let by_id: BTreeMap<&str, &IncidentUpdate> =
        updates.iter().map(|u| (u.update_id.as_str(), u)).collect();
    let incidents: BTreeSet<&str> = updates.iter().map(|u| u.incident_id.as_str()).collect();

    // An update's offset is committed only once every delivery of it has finished and
    // every dead letter and dead recipient has been written: after this, nothing is in
    // flight.
    let offsets = w.wait_committed(PARTITIONS).await;
    let letters = read_all(&brokers, &w.dlq, n, WAIT).await;
    let dead = read_all(&brokers, &dead_topic, n, WAIT).await;
    let summary = daemon.stop().await;
    eprintln!("sms e2e: daemon summary {summary:?}");
    // The daemon has stopped: this is all that will arrive.
    let letters_written = committed_and_end(&w.brokers, &w.group, &w.dlq, 1)[0].1;
    let dead_written = committed_and_end(&w.brokers, &w.group, &dead_topic, 1)[0].1;
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "all offsets committed: {offsets:?}"
    );

    // Twilio: every customer number tried once per update (the opted-out one too, and
    // never again), the accepted ones in order.
    let posts: Vec<Seen> = twilio
        .seen()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .collect();
    let mut twilio_got: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let mut opted_out_tries = BTreeSet::new();
    for req in &posts {
        assert_eq!(req.path, "/2010-04-01/Accounts/AC123/Messages.json");
        assert_eq!(req.header("authorization"), "Basic QUMxMjM6dG9r");
        let form = req.form();
        assert_eq!(form.get("From").map(String::as_str), Some("+15005550006"));
        let to = form.get("To").cloned().unwrap_or_default();
        let text = form.get("Body").cloned().unwrap_or_default();
        let u = update_of(&text, &by_id, "customers");
        if to == OPTED_OUT {
            assert!(
                opted_out_tries.insert(u.update_id.clone()),
                "{OPTED_OUT} was tried twice for {}",
                u.update_id
            );
            continue;
        }
        assert!(CUSTOMERS.contains(&to.as_str()), "a text to {to}: {text:?}");
        twilio_got
            .entry((to, u.incident_id.clone()))
            .or_default()
            .push(u.sequence);
    }
    assert_in_order("twilio", &twilio_got, &CUSTOMERS, &incidents);
    assert_eq!(
        posts.len(),
        3 * n,
        "three customer numbers, once per update, no retries"
    );
    assert_eq!(
        opted_out_tries.len(),
        n,
        "{OPTED_OUT} tried for every update"
    );

    // SMPP: the employees' numbers, reassembled from the SMSC's record.
    let messages = smpp_messages(&smsc.submits());
    let mut smpp_got: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for (to, text) in &messages {
        assert!(EMPLOYEES.contains(&to.as_str()), "a text to {to}: {text:?}");
        let u = update_of(text, &by_id, "employees");
        smpp_got
            .entry((to.clone(), u.incident_id.clone()))
            .or_default()
            .push(u.sequence);
    }
    assert_in_order("smpp", &smpp_got, &EMPLOYEES, &incidents);
    assert_eq!(
        messages.len(),
        EMPLOYEES.len() * n,
        "one message per employee and update"
    );
    let submits = smsc.submits().len();
    assert!(
        submits > messages.len(),
        "some texts were sent in parts ({submits} submit_sm for {} messages)",
        messages.len()
    );

    // The opted-out number: dead-lettered once per update as recipient_gone, alone.
    assert_eq!(letters.len(), n, "one dead letter per update: {letters:#?}");
    assert_eq!(
        letters_written,
        i64::try_from(n).expect("small"),
        "no further dead letters were written"
    );
    let mut lettered = BTreeSet::new();
    for d in &letters {
        let h = &d.headers;
        // attempts 1: 21610 (opted out) is not retried.
        d.assert_dlq_headers(&[
            ("kind", "delivery_failed"),
            ("target", TWILIO_TARGET),
            ("channel", "sms"),
            ("recipient", OPTED_OUT),
            ("error.class", "recipient_gone"),
            ("error.code", "21610"),
            ("attempts", "1"),
            ("source.topic", &w.topic),
        ]);
        let original = d.original_update();
        assert_eq!(
            h["clarion.dlq.idempotency_key"],
            IdempotencyKey::new(&original.update_id, TWILIO_TARGET).as_str(),
            "{h:?}"
        );
        assert!(
            lettered.insert(original.update_id.clone()),
            "{} dead-lettered twice",
            original.update_id
        );
    }
    let all_ids: BTreeSet<String> = by_id.keys().map(|k| k.to_string()).collect();
    assert_eq!(
        lettered, all_ids,
        "every update is dead-lettered for {OPTED_OUT}"
    );

    // …and published to the dead-recipient topic, keyed by the number.
    assert_eq!(dead.len(), n, "one dead recipient per update: {dead:#?}");
    assert_eq!(
        dead_written,
        i64::try_from(n).expect("small"),
        "no further dead recipients were written"
    );
    let mut reported = BTreeSet::new();
    for d in &dead {
        assert_eq!(d.key.as_deref(), Some(OPTED_OUT), "{d:?}");
        let v: Value = serde_json::from_slice(&d.payload).expect("a JSON dead recipient");
        assert_eq!(v["recipient"], OPTED_OUT, "{v}");
        assert_eq!(v["channel"], "sms", "{v}");
        assert_eq!(v["target"], TWILIO_TARGET, "{v}");
        assert_eq!(v["code"], "21610", "{v}");
        let update_id = v["update_id"].as_str().unwrap_or_default();
        let u = by_id
            .get(update_id)
            .unwrap_or_else(|| panic!("a dead recipient for no published update: {v}"));
        assert_eq!(v["incident_id"], u.incident_id.as_str(), "{v}");
        assert!(
            v["time"]
                .as_str()
                .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
            "an RFC 3339 time: {v}"
        );
        reported.insert(update_id.to_string());
    }
    assert_eq!(reported, all_ids, "{OPTED_OUT} reported for every update");

    eprintln!(
        "SMS E2E: {} Twilio requests, {} SMPP submit_sm for {} messages, {} dead letters, {} dead recipients",
        posts.len(),
        submits,
        messages.len(),
        letters.len(),
        dead.len()
    );
}
