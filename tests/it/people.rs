//! People targets end to end, against the real broker and the real binary: the
//! members of a directory audience, each reached once per update on the first of
//! their channels that works (push through the Hypercorn APNs stand-in, SMS through
//! the Twilio stand-in, email through the aiosmtpd peer).
//!
//! What a user cares about: every member gets every update exactly once, in order,
//! on their first working channel, and nobody outside the audience gets anything; a
//! dead push token or an opted-out number moves that person to their next channel,
//! is removed from the directory (its topic gets the corrected record) and is
//! reported on the dead-recipient topic, so it is never tried again; a change to the
//! directory topic applies to the next update without a restart; and a daemon
//! killed in the middle of a walk resumes it, sending again at most the batch that
//! was under way.

use crate::email::SmtpPeer;
use crate::ops::{get, wait_for, with_metrics};
use crate::push::{KEY_ID, TEAM_ID, TOPIC, device, start_peer};
use crate::sms::{Seen, Stub, reply};
use clarion_core::{IncidentUpdate, samples};
use clarion_tests::daemon::{Process, Wiring};
use clarion_tests::kafka::{committed_and_end, create_topic, producer, publish, read_all};
use clarion_tests::unique_topic;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
const PARTITIONS: i32 = 2;
/// The people target of every test here; its legs are `reach.push`, `reach.sms`
/// and `reach.email`.
const TARGET: &str = "reach";

/// A person record as the directory topic holds it.
fn person(
    id: &str,
    audience: &str,
    push: &[&str],
    sms: Option<&str>,
    email: Option<&str>,
) -> Value {
    let mut p = json!({"id": id, "audiences": [audience], "push": push});
    if let Some(n) = sms {
        p["sms"] = json!(n);
    }
    if let Some(e) = email {
        p["email"] = json!(e);
    }
    p
}

/// Produces a person to the directory topic, keyed by their id.
async fn put_person(p: &FutureProducer, topic: &str, person: &Value) {
    let id = person["id"].as_str().expect("a person has an id");
    publish(p, topic, id, person.to_string().as_bytes()).await;
}

/// Produces a tombstone for `id`: the person leaves the directory.
async fn delete_person(p: &FutureProducer, topic: &str, id: &str) {
    p.send(
        FutureRecord::<str, [u8]>::to(topic).key(id),
        Duration::from_secs(30),
    )
    .await
    .map_err(|(e, _)| e)
    .expect("produce a tombstone");
}

/// Two updates of one incident, for the customers.
fn two_updates(incident: &str) -> Vec<IncidentUpdate> {
    let mut u = samples::lifecycle(
        incident,
        "Mobile data outage",
        &["customers"],
        jiff::Timestamp::now(),
    );
    u.truncate(2);
    u
}

/// The wiring's config with a dead-recipient topic (when given), a `[directory]`
/// table of `directory` keys, and `targets`.
fn config(w: &Wiring, dead_recipients: Option<&str>, directory: &str, targets: &str) -> String {
    let base = w.config(&format!("[directory]\n{directory}\n\n{targets}"));
    let Some(dead) = dead_recipients else {
        return base;
    };
    let line = format!("dead_letter_topic = \"{}\"\n", w.dlq);
    assert!(base.contains(&line), "Wiring::config changed: {base}");
    base.replacen(
        &line,
        &format!("{line}dead_recipient_topic = \"{dead}\"\n"),
        1,
    )
}

/// The SMS leg's keys for the Twilio stand-in at `base`.
fn twilio_leg(base: &str) -> String {
    format!(
        r#"provider = "twilio"
account_sid = "AC123"
auth_token = {{ value = "tok" }}
from = "+15005550006"
base_url = "{base}"
rate_per_second = 1000"#
    )
}

/// The update a Twilio request's text is about: its `(ref UPDATE_ID)` suffix.
fn text_ref(req: &Seen) -> (String, String) {
    let form = req.form();
    let body = form.get("Body").cloned().unwrap_or_default();
    let update = body
        .rsplit_once("(ref ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no `(ref UPDATE_ID)` at the end of {body:?}"))
        .to_string();
    (form.get("To").cloned().unwrap_or_default(), update)
}

/// The texts the Twilio stand-in was asked to send: per number, the updates in
/// arrival order.
fn texts(stub: &Stub) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for req in stub.seen().iter().filter(|r| r.method.as_str() == "POST") {
        let (to, update) = text_ref(req);
        out.entry(to).or_default().push(update);
    }
    out
}

/// A sample's value on a `/metrics` page: the series `name` whose labels include
/// every one of `labels`, in whatever order the exporter writes them.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let matches = n == name
            && labels.iter().all(|(k, v)| {
                let want = format!("{k}=\"{v}\"");
                rest.split(',').any(|kv| kv == want)
            });
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// Starts the binary with metrics on a free port and waits until it is ready.
async fn start_ready(config: &str, name: &str) -> (Process, u16) {
    let port = clarion_tests::free_port();
    let daemon = Process::start(&with_metrics(config, port), name);
    let ready = wait_for(port, "/readyz", WAIT, |s, _| s == 200).await;
    assert!(
        matches!(ready, Some((200, _))),
        "never ready: {ready:?}; log:\n{}",
        daemon.log_text()
    );
    (daemon, port)
}

/// Polls `/metrics` until `name{labels}` is `want`; returns the last page.
async fn wait_for_sample(port: u16, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    let last = wait_for(port, "/metrics", WAIT, |s, page| {
        s == 200 && sample(page, name, labels) == Some(want)
    })
    .await;
    let page = last.map(|(_, page)| page).unwrap_or_default();
    assert_eq!(
        sample(&page, name, labels),
        Some(want),
        "{name}{labels:?} on /metrics:\n{page}"
    );
    page
}

/// The number of records in a one-partition topic.
fn records_in(brokers: &str, topic: &str) -> i64 {
    committed_and_end(brokers, &unique_topic("count"), topic, 1)[0].1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_fall_back_from_a_dead_push_token_to_sms_to_email_each_reached_once() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(python) = clarion_tests::python(module_path!()) else {
        return;
    };
    let apns = start_peer(python.clone()).await;
    let smtp = SmtpPeer::start(&python, &[]).await;
    // Twilio accepts every number but the opted-out ones, which get error 21610.
    const OPTED_OUT: &str = "+447700900103";
    const ALSO_OPTED_OUT: &str = "+447700900106";
    let twilio = Stub::start(|req: &Seen| {
        if req.method.as_str() == "GET" {
            return reply(200, json!({"sid": "AC123", "status": "active"}));
        }
        let to = req.form().get("To").cloned().unwrap_or_default();
        if to == OPTED_OUT || to == ALSO_OPTED_OUT {
            return reply(
                400,
                json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient", "status": 400}),
            );
        }
        reply(201, json!({"sid": "SM0001", "status": "queued", "to": to}))
    })
    .await;

    // The stand-in answers 410 Unregistered for `d`…, 200 for `a`… and `c`….
    let (live, dead_token, business_token) = (device('a'), device('d'), device('c'));
    let p1 = person(
        "p1",
        "customers",
        &[&live],
        Some("+447700900101"),
        Some("p1@customers.example"),
    );
    let p2 = person(
        "p2",
        "customers",
        &[&dead_token],
        Some("+447700900102"),
        None,
    );
    let p3 = person(
        "p3",
        "customers",
        &[],
        Some(OPTED_OUT),
        Some("p3@customers.example"),
    );
    let p4 = person("p4", "customers", &[], None, Some("p4@customers.example"));
    let p5 = person(
        "p5",
        "business",
        &[&business_token],
        Some("+447700900105"),
        Some("p5@business.example"),
    );
    // Both of p6's first two addresses are dead (a tablet shared with p2, and a
    // number that opted out): each must stay removed once the other is.
    let p6 = person(
        "p6",
        "customers",
        &[&dead_token],
        Some(ALSO_OPTED_OUT),
        Some("p6@customers.example"),
    );

    let w = Wiring::new(&brokers, "people-fallback", PARTITIONS).await;
    let (directory, progress, dead) = (
        unique_topic("people-directory"),
        unique_topic("people-progress"),
        unique_topic("people-dead"),
    );
    for t in [&directory, &progress, &dead] {
        create_topic(&brokers, t, 1).await;
    }
    let p = producer(&brokers);
    for person in [&p1, &p2, &p3, &p4, &p5, &p6] {
        put_person(&p, &directory, person).await;
    }
    let targets = format!(
        r#"[targets.{TARGET}]
type = "people"
audiences = ["customers"]
fallback = ["push", "sms", "email"]
retry = {{ initial_backoff = "50ms", max_backoff = "300ms", max_attempts = 3 }}

[targets.{TARGET}.push]
type = "apns"
signing_key = {{ file = "{p8}" }}
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
topic = "{TOPIC}"
environment = "sandbox"
base_url = "https://127.0.0.1:{apns_port}"
ca_file = "{ca}"

[targets.{TARGET}.sms]
{sms}

[targets.{TARGET}.email]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Acme Status <status@acme.example>"
"#,
        p8 = apns.dir.join("apns.p8").display(),
        apns_port = apns.port,
        ca = apns.dir.join("ca.pem").display(),
        sms = twilio_leg(&twilio.base),
        smtp_port = smtp.port,
    );
    let config = config(
        &w,
        Some(&dead),
        &format!("topic = \"{directory}\"\nprogress_topic = \"{progress}\""),
        &targets,
    );
    let (daemon, port) = start_ready(&config, "people-fallback").await;

    let updates = two_updates("PEOPLE-1");
    let ids: Vec<String> = updates.iter().map(|u| u.update_id.clone()).collect();
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates).await;
    // An update is committed only once its walk ended, every dead address was
    // written back and reported: after this, nothing is in flight.
    let offsets = w.wait_committed(PARTITIONS).await;
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "offsets must reach the end: {offsets:?}; log:\n{}",
        daemon.log_text()
    );

    // What the real peers received, per address, in arrival order.
    let stats = apns.stats();
    assert_eq!(
        stats["problems"],
        json!([]),
        "the APNs stand-in found faults"
    );
    let mut pushes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in stats["first_requests"].as_array().into_iter().flatten() {
        pushes
            .entry(r["device"].as_str().unwrap_or("-").to_string())
            .or_default()
            .push(
                r["payload"]["update_id"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
            );
    }
    let mut mails: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in smtp.received(6).await {
        let to = match m["rcpt_tos"].as_array().map(Vec::as_slice) {
            Some([one]) => one.as_str().unwrap_or_default().to_string(),
            _ => panic!("one envelope recipient per message: {m}"),
        };
        let update = m["headers"]["x-clarion-update-id"]
            .as_str()
            .unwrap_or("-")
            .to_string();
        mails.entry(to).or_default().push(update);
    }
    let both = vec![ids[0].clone(), ids[1].clone()];
    let first = vec![ids[0].clone()];
    // p1 on push; the dead token was tried for the first update only (the stand-in
    // answered 410 once, for p2 and p6 in one batch, then the token was gone from
    // the directory); p5 nothing.
    assert_eq!(
        pushes,
        BTreeMap::from([(live, both.clone()), (dead_token, first.clone())]),
        "pushes per device token"
    );
    assert_eq!(stats["statuses"]["410"], 1, "{stats}");
    assert_eq!(stats["statuses"]["200"], 2, "{stats}");
    // p2 by SMS. Twilio's 21610 is classified RecipientGone (clarion-sms
    // twilio.rs), so the opted-out numbers were removed and tried once, not twice.
    assert_eq!(
        texts(&twilio),
        BTreeMap::from([
            ("+447700900102".to_string(), both.clone()),
            (OPTED_OUT.to_string(), first.clone()),
            (ALSO_OPTED_OUT.to_string(), first),
        ]),
        "texts per number"
    );
    // p3, p4 and p6 by email; p1 (reached by push) and p5 get none.
    assert_eq!(
        mails,
        BTreeMap::from([
            ("p3@customers.example".to_string(), both.clone()),
            ("p4@customers.example".to_string(), both.clone()),
            ("p6@customers.example".to_string(), both),
        ]),
        "mails per address"
    );

    // The directory topic got p2 without the dead token, p3 without the number,
    // and p6 without either (after one correction each).
    let records = read_all(&brokers, &directory, 10, WAIT).await;
    let latest = |id: &str| -> Value {
        records
            .iter()
            .rev()
            .find(|r| r.key.as_deref() == Some(id))
            .map(|r| serde_json::from_slice(&r.payload).expect("a person's JSON"))
            .unwrap_or_else(|| panic!("no record for {id}"))
    };
    assert_eq!(records.len(), 10, "six people and four corrections");
    assert_eq!(records_in(&brokers, &directory), 10, "no other correction");
    assert_eq!(
        latest("p2"),
        json!({"id": "p2", "audiences": ["customers"], "sms": "+447700900102"})
    );
    assert_eq!(
        latest("p3"),
        json!({"id": "p3", "audiences": ["customers"], "email": "p3@customers.example"})
    );
    assert_eq!(
        latest("p6"),
        json!({"id": "p6", "audiences": ["customers"], "email": "p6@customers.example"})
    );

    // The dead token (once per person holding it) and numbers were reported for
    // whoever owns the address book; nobody was dead-lettered (each was reached on
    // another channel).
    let reported = read_all(&brokers, &dead, 4, WAIT).await;
    let mut gone: Vec<(String, String)> = reported
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.payload).expect("dead-recipient JSON");
            (
                v["target"].as_str().unwrap_or("-").to_string(),
                v["recipient"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    gone.sort();
    assert_eq!(
        gone,
        [
            ("reach.push".to_string(), device('d')),
            ("reach.push".to_string(), device('d')),
            ("reach.sms".to_string(), OPTED_OUT.to_string()),
            ("reach.sms".to_string(), ALSO_OPTED_OUT.to_string()),
        ]
    );
    assert_eq!(
        records_in(&brokers, &dead),
        4,
        "each dead address once per person"
    );
    assert_eq!(records_in(&brokers, &w.dlq), 0, "nothing dead-lettered");

    let (_, page) = get(port, "/metrics").await.expect("/metrics answers");
    // p2 and p6 from push to SMS, p3 and p6 from SMS to email, all on update 1.
    for (from, to) in [("push", "sms"), ("sms", "email")] {
        let labels = [("target", TARGET), ("from", from), ("to", to)];
        assert_eq!(
            sample(&page, "clarion_fallbacks_total", &labels),
            Some(2.0),
            "{labels:?}:\n{page}"
        );
    }
    for (channel, n) in [("push", 2.0), ("sms", 2.0), ("email", 6.0)] {
        let labels = [("target", TARGET), ("channel", channel)];
        assert_eq!(
            sample(&page, "clarion_people_reached_total", &labels),
            Some(n),
            "{labels:?}:\n{page}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_change_through_the_topic_takes_effect_without_a_restart() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let twilio = Stub::start(|req: &Seen| {
        if req.method.as_str() == "GET" {
            return reply(200, json!({"sid": "AC123", "status": "active"}));
        }
        reply(201, json!({"sid": "SM0001", "status": "queued"}))
    })
    .await;
    let (n1, n2) = ("+447700900201", "+447700900202");
    let w = Wiring::new(&brokers, "people-directory-change", PARTITIONS).await;
    let (directory, progress) = (
        unique_topic("people-directory"),
        unique_topic("people-progress"),
    );
    for t in [&directory, &progress] {
        create_topic(&brokers, t, 1).await;
    }
    let p = producer(&brokers);
    put_person(
        &p,
        &directory,
        &person("p1", "customers", &[], Some(n1), None),
    )
    .await;
    let targets = format!(
        "[targets.{TARGET}]\ntype = \"people\"\naudiences = [\"customers\"]\nfallback = [\"sms\"]\n\n[targets.{TARGET}.sms]\n{}\n",
        twilio_leg(&twilio.base)
    );
    let config = config(
        &w,
        None,
        &format!("topic = \"{directory}\"\nprogress_topic = \"{progress}\""),
        &targets,
    );
    let (mut daemon, port) = start_ready(&config, "people-directory-change").await;
    let pid = daemon.child.id();
    wait_for_sample(port, "clarion_directory_people", &[], 1.0).await;

    let updates = two_updates("PEOPLE-2");
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates[..1]).await;
    let offsets = w.wait_committed(PARTITIONS).await;
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "update 1 resolved: {offsets:?}; log:\n{}",
        daemon.log_text()
    );

    // p2 joins, then p1 leaves; each step is seen by the running daemon.
    put_person(
        &p,
        &directory,
        &person("p2", "customers", &[], Some(n2), None),
    )
    .await;
    wait_for_sample(port, "clarion_directory_people", &[], 2.0).await;
    delete_person(&p, &directory, "p1").await;
    wait_for_sample(port, "clarion_directory_people", &[], 1.0).await;

    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates[1..]).await;
    let offsets = w.wait_committed(PARTITIONS).await;
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "update 2 resolved: {offsets:?}; log:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        texts(&twilio),
        BTreeMap::from([
            (n1.to_string(), vec![updates[0].update_id.clone()]),
            (n2.to_string(), vec![updates[1].update_id.clone()]),
        ]),
        "texts per number"
    );
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none() && daemon.child.id() == pid,
        "the same daemon process throughout; log:\n{}",
        daemon.log_text()
    );
    assert_eq!(records_in(&brokers, &w.dlq), 0, "nothing dead-lettered");
}

/// A Twilio stand-in that answers each message after `delay` and counts the
/// messages per number as they arrive (before answering).
async fn slow_twilio(delay: Duration) -> (String, Arc<Mutex<BTreeMap<String, usize>>>) {
    use axum::extract::{Form, State};
    type Counts = Arc<Mutex<BTreeMap<String, usize>>>;
    async fn message(
        State((counts, delay)): State<(Counts, Duration)>,
        Form(form): Form<BTreeMap<String, String>>,
    ) -> axum::response::Response {
        let to = form.get("To").cloned().unwrap_or_default();
        *counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(to.clone())
            .or_default() += 1;
        tokio::time::sleep(delay).await;
        reply(201, json!({"sid": "SM0001", "status": "queued", "to": to}))
    }
    let counts: Counts = Arc::default();
    let app = axum::Router::new()
        .route(
            "/2010-04-01/Accounts/AC123/Messages.json",
            axum::routing::post(message),
        )
        .fallback(|| async { reply(200, json!({"sid": "AC123", "status": "active"})) })
        .with_state((Arc::clone(&counts), delay));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_resumes_after_a_sigkill_without_sending_to_those_already_reached() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    const PEOPLE: usize = 400;
    const PER_BATCH: usize = 20;
    const IN_FLIGHT: usize = 1;
    let (base, counts) = slow_twilio(Duration::from_millis(20)).await;
    let total = || -> usize {
        counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    };

    let scratch = crate::push::Scratch::new("clarion-people-walk");
    let dir = scratch.0.clone();
    let numbers: Vec<String> = (0..PEOPLE).map(|i| format!("+4477009{i:05}")).collect();
    let mut csv = String::from("id,audiences,sms\n");
    for (i, n) in numbers.iter().enumerate() {
        csv.push_str(&format!("p{i:04},customers,{n}\n"));
    }
    let file = dir.join("people.csv");
    std::fs::write(&file, csv).expect("write the directory file");

    let w = Wiring::new(&brokers, "people-walk", PARTITIONS).await;
    let progress = unique_topic("people-progress");
    create_topic(&brokers, &progress, 1).await;
    let targets = format!(
        "[targets.{TARGET}]\ntype = \"people\"\naudiences = [\"customers\"]\nfallback = [\"sms\"]\npeople_per_batch = {PER_BATCH}\n\n[targets.{TARGET}.sms]\n{}\n",
        twilio_leg(&base)
    );
    let config = config(
        &w,
        None,
        &format!(
            "file = \"{}\"\nprogress_topic = \"{progress}\"\nbatches_in_flight = {IN_FLIGHT}",
            file.display()
        ),
        &targets,
    );
    assert!(Path::new(&file).is_absolute());
    let mut daemon = Process::start(&config, "people-walk");
    let updates = two_updates("PEOPLE-3");
    clarion_tests::kafka::publish_updates(&brokers, &w.topic, &updates[..1]).await;

    // Killed in the middle of the walk.
    let deadline = tokio::time::Instant::now() + WAIT;
    while total() < 150 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} messages arrived; log:\n{}",
            total(),
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.signal("KILL");
    assert_eq!(daemon.wait(WAIT).await, None, "killed by the signal");
    let at_kill = total();
    assert!(
        at_kill < PEOPLE,
        "the walk ended before the kill ({at_kill} messages): nothing to resume"
    );

    let restarted = daemon.restart();
    let offsets = w.wait_committed(PARTITIONS).await;
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "offsets must reach the end: {offsets:?}; log:\n{}",
        restarted.log_text()
    );
    let counts = counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let missed: Vec<&String> = numbers
        .iter()
        .filter(|n| !counts.contains_key(*n))
        .collect();
    assert!(missed.is_empty(), "never reached: {missed:?}");
    assert_eq!(counts.len(), PEOPLE, "texts only to the directory's people");
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    eprintln!(
        "people walk: killed after {at_kill} of {PEOPLE} texts; {duplicates} sent again after the restart"
    );
    assert!(
        duplicates <= PER_BATCH * IN_FLIGHT,
        "{duplicates} texts sent twice: more than the batch under way at the kill"
    );
    assert_eq!(records_in(&brokers, &w.dlq), 0, "nothing dead-lettered");
}
