//! Escalation end to end (issue 23): an escalation target's policy runs against
//! the real broker, the Twilio stand-in (SMS) and aiosmtpd (email), with people
//! from a directory file.
//!
//! What a user cares about: with no confirmation within a step's wait, the next
//! channel goes out, then the next step (the deputy), in that order and at those
//! times; a confirmation stops every other channel and step; and an escalation
//! resumes where it was after the daemon is killed, its next step sent once, at
//! its time.

use crate::confirm::{Setup, events_of};
use crate::email::SmtpPeer;
use crate::sms::{Seen, Stub, reply};
use clarion_core::{IncidentUpdate, samples};
use clarion_tests::daemon::{InProcess, Process};
use clarion_tests::kafka::{create_topic, publish_updates};
use clarion_tests::unique_topic;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);
/// Each step's wait: long enough that a busy machine sends well within it.
const STEP_WAIT_S: u64 = 6;
const ANN_SMS: &str = "+447700900101";
const ANN_MAIL: &str = "ann@acme.example";
const DEPUTY_MAIL: &str = "deputy@acme.example";
const BEN_SMS: &str = "+447700900102";

/// The directory file: Ann (SMS and email), Ben (SMS, email), the deputy (email).
fn directory(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("people.json");
    let people = json!([
        {"id": "ann", "audiences": ["employees"], "sms": ANN_SMS, "email": ANN_MAIL},
        {"id": "ben", "audiences": ["employees"], "sms": BEN_SMS, "email": "ben@acme.example"},
        {"id": "deputy", "audiences": ["employees"], "email": DEPUTY_MAIL},
    ]);
    std::fs::write(&path, people.to_string()).expect("write the directory");
    path
}

/// The people target whose legs the steps use, the policy and the escalation
/// target; `first` is who the first step reaches.
fn targets(twilio: &str, smtp: u16, first: &str, require: &str) -> String {
    format!(
        r#"[targets.reach]
type = "people"
audiences = ["employees"]
fallback = ["sms", "email"]

[targets.reach.sms]
provider = "twilio"
account_sid = "AC123"
auth_token = {{ value = "tok" }}
from = "+15005550006"
base_url = "{twilio}"
rate_per_second = 1000

[targets.reach.email]
host = "127.0.0.1"
port = {smtp}
tls = "none"
from = "Acme Crisis <crisis@acme.example>"

[[escalations.crisis.steps]]
who = {first}
channels = ["reach.sms", "reach.email"]
wait = "{STEP_WAIT_S}s"

[[escalations.crisis.steps]]
who = {{ person = "deputy" }}
channels = ["reach.email"]
wait = "{STEP_WAIT_S}s"

[targets.crisis]
type = "escalation"
audiences = ["business"]
escalation = "crisis"
confirm = {{ require = {require}, within = "90s" }}
"#
    )
}

/// The Twilio stand-in: every message accepted.
async fn twilio() -> Stub {
    Stub::start(|req: &Seen| {
        if req.method.as_str() == "GET" {
            return reply(200, json!({"sid": "AC123", "status": "active"}));
        }
        reply(201, json!({"sid": "SM0001", "status": "queued"}))
    })
    .await
}

/// Everything sent, as (when, channel, to), in the order it arrived.
#[derive(Debug, Default)]
struct Sent(Vec<(Instant, &'static str, String)>);

impl Sent {
    /// Adds what the peers received since the last look (time of first sight for
    /// mail, which the peer does not stamp).
    async fn look(&mut self, sms: &Stub, smtp: &SmtpPeer) {
        for s in sms.seen().iter().filter(|r| r.method.as_str() == "POST") {
            let to = s.form().get("To").cloned().unwrap_or_default();
            if !self
                .0
                .iter()
                .any(|(at, c, t)| *c == "sms" && *t == to && *at == s.at())
            {
                self.0.push((s.at(), "sms", to));
            }
        }
        let mails = smtp.received(0).await;
        let seen_mail = self.0.iter().filter(|(_, c, _)| *c == "email").count();
        for m in mails.iter().skip(seen_mail) {
            let to = m["rcpt_tos"][0].as_str().unwrap_or_default().to_string();
            self.0.push((Instant::now(), "email", to));
        }
        self.0.sort_by_key(|(at, _, _)| *at);
    }

    fn to(&self) -> Vec<(&'static str, &str)> {
        self.0.iter().map(|(_, c, t)| (*c, t.as_str())).collect()
    }

    /// Watches for `until` or `timeout`.
    async fn watch(
        &mut self,
        sms: &Stub,
        smtp: &SmtpPeer,
        timeout: Duration,
        until: impl Fn(&Sent) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !until(self) {
            self.look(sms, smtp).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn update(incident: &str) -> IncidentUpdate {
    samples::lifecycle(
        incident,
        "Core network outage",
        &["business"],
        jiff::Timestamp::now(),
    )
    .remove(0)
}

/// The link that confirms for a person of an escalation.
fn person_link(base: &str, update_id: &str, person: &str) -> String {
    crate::confirm::link(
        base,
        update_id,
        "crisis",
        &format!("person:{person}"),
        jiff::Timestamp::now().as_second() as u64 + 3600,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_confirmation_moves_to_the_next_channel_then_the_deputy_and_a_confirmation_stops_it() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let sms = twilio().await;
    let smtp = SmtpPeer::start(&py, &[]).await;
    let s = Setup::new(&brokers, "escalate").await;
    let progress = unique_topic("escalate-progress");
    create_topic(&brokers, &progress, 1).await;
    let dir = std::env::temp_dir().join(unique_topic("escalate-dir"));
    std::fs::create_dir_all(&dir).expect("dir");
    let people = directory(&dir);
    let config = s.config(&format!(
        "[directory]\nfile = \"{}\"\nprogress_topic = \"{progress}\"\n\n{}",
        people.display(),
        targets(&sms.base, smtp.port, r#"{ person = "ann" }"#, r#""any""#)
    ));
    let daemon = InProcess::start(&config);
    let u = update("ESC-1");
    publish_updates(&brokers, &s.w.topic, std::slice::from_ref(&u)).await;

    let mut sent = Sent::default();
    sent.watch(&sms, &smtp, WAIT, |s| s.0.len() >= 3).await;
    assert_eq!(
        sent.to(),
        [
            ("sms", ANN_SMS),
            ("email", ANN_MAIL),
            ("email", DEPUTY_MAIL)
        ],
        "Ann's SMS, then her email, then the deputy"
    );
    let at = |i: usize| sent.0[i].0;
    let wait = Duration::from_secs(STEP_WAIT_S);
    // Each waited out its step's wait (the margin: the peers are polled every
    // 100 ms), and came without waiting much longer.
    for (a, b) in [(0, 1), (1, 2)] {
        let gap = at(b).duration_since(at(a));
        assert!(
            gap + Duration::from_millis(300) >= wait && gap < wait + Duration::from_secs(10),
            "between send {a} and {b}: {gap:?}, the wait is {wait:?}"
        );
    }
    // The deputy confirms: `any` is met, nothing more goes out.
    let r = reqwest::Client::new()
        .post(person_link(&s.base(), &u.update_id, "deputy"))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    s.wait_for("the deputy's confirmation", |r| {
        r["event"] == "confirmed" && r["person"] == "deputy"
    })
    .await;
    sent.watch(&sms, &smtp, 3 * wait, |_| false).await;
    assert_eq!(
        sent.0.len(),
        3,
        "something went out after the confirmation: {:?}",
        sent.to()
    );
    let records = s.wait_for("the closing", |r| r["event"] == "closed").await;
    daemon.stop().await;
    let steps: Vec<&Value> = records.iter().filter(|r| r["event"] == "step").collect();
    assert_eq!(steps.len(), 2, "{records:#?}");
    assert_eq!(events_of(&records, "deputy"), ["requested", "confirmed"]);
    assert_eq!(
        events_of(&records, "ann"),
        ["requested", "requested", "not_confirmed"]
    );
    let closed = records
        .iter()
        .find(|r| r["event"] == "closed")
        .expect("closed");
    assert_eq!(closed["met"], true);
    crate::confirm::assert_confirmations_valid(&py, &records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_survives_a_sigkill_and_sends_its_next_step_once_on_time() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let sms = twilio().await;
    let smtp = SmtpPeer::start(&py, &[]).await;
    let s = Setup::new(&brokers, "escalate-kill").await;
    let progress = unique_topic("escalate-kill-progress");
    create_topic(&brokers, &progress, 1).await;
    let dir = std::env::temp_dir().join(unique_topic("escalate-kill-dir"));
    std::fs::create_dir_all(&dir).expect("dir");
    let people = directory(&dir);
    let config = s
        .config(&format!(
            "[directory]\nfile = \"{}\"\nprogress_topic = \"{progress}\"\n\n{}",
            people.display(),
            targets(&sms.base, smtp.port, r#"{ person = "ann" }"#, r#""any""#)
        ))
        // Longer steps: the kill and the restart must fit inside the first one.
        .replace(&format!("wait = \"{STEP_WAIT_S}s\""), "wait = \"20s\"");
    let mut daemon = Process::start(&config, "escalate-kill");
    let u = update("ESC-KILL");
    publish_updates(&brokers, &s.w.topic, std::slice::from_ref(&u)).await;
    let mut sent = Sent::default();
    sent.watch(&sms, &smtp, WAIT, |s| !s.0.is_empty()).await;
    assert_eq!(sent.to(), [("sms", ANN_SMS)], "log:\n{}", daemon.log_text());
    let first = sent.0[0].0;
    // Killed between the first send and the next: nothing of the daemon's memory
    // survives, only what it wrote.
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.signal("KILL");
    daemon.wait(Duration::from_secs(30)).await;
    let restarted = daemon.restart();
    sent.watch(&sms, &smtp, WAIT, |s| s.0.len() >= 2).await;
    assert_eq!(
        sent.to(),
        [("sms", ANN_SMS), ("email", ANN_MAIL)],
        "log:\n{}",
        restarted.log_text()
    );
    let gap = sent.0[1].0.duration_since(first);
    assert!(
        gap + Duration::from_millis(300) >= Duration::from_secs(20)
            && gap < Duration::from_secs(20 + 8),
        "the next channel went out {gap:?} after the first; due at 20 s"
    );
    // And once: nothing more until the next step is due.
    sent.watch(&sms, &smtp, Duration::from_secs(10), |_| false)
        .await;
    assert_eq!(
        sent.to(),
        [("sms", ANN_SMS), ("email", ANN_MAIL)],
        "sent twice after the restart"
    );
    let records = s.confirmations(0).await;
    let ann_requests = records
        .iter()
        .filter(|r| r["event"] == "requested" && r["person"] == "ann")
        .count();
    assert_eq!(ann_requests, 2, "{records:#?}");
}
