//! Config parsing, validation, recipient planning and message composition.

use super::*;
use clarion_core::{Status, samples};
use std::sync::Mutex;

struct Values;

impl SecretResolver for Values {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        match reference {
            SecretRef::Value(s) => Ok(s.clone()),
            other => Err(format!("{other} is not available in tests")),
        }
    }
}

fn parse(toml_text: &str) -> Result<SmsConfig, String> {
    toml::from_str(toml_text).map_err(|e| e.message().to_string())
}

fn build_str(toml_text: &str) -> String {
    match parse(toml_text) {
        Err(e) => format!("parse: {e}"),
        Ok(c) => match build("sms-customers", &c, &Values) {
            Ok(ch) => format!("ok {}", ch.provider_name),
            Err(e) => e.to_string(),
        },
    }
}

const TWILIO: &str = r#"
provider = "twilio"
account_sid = "AC0123456789abcdef0123456789abcdef"
auth_token = { value = "tok" }
from = "+15005550006"
recipients = { customers = ["+447700900123", "+447700900124"], employees = ["+447700900124", "+12025550123"] }
max_segments = 2
rate_per_second = 0.5
"#;

#[test]
fn parses_and_builds_every_provider() {
    assert_eq!(build_str(TWILIO), "ok twilio");
    assert_eq!(
        build_str(
            r#"
provider = "twilio"
account_sid = "AC1"
auth_token = { value = "tok" }
messaging_service_sid = "MG1"
status_callback = "https://hooks.example.com/twilio"
base_url = "http://127.0.0.1:9"
timeout = "5s"
recipients = {}
"#
        ),
        "ok twilio"
    );
    assert_eq!(
        build_str(
            r#"
provider = "vonage"
api_key = "k"
api_secret = { value = "s" }
from = "ACME"
recipients = { customers = ["+447700900123"] }
"#
        ),
        "ok vonage"
    );
    assert_eq!(
        build_str(
            r#"
provider = "http"
url = "https://sms.internal/send?ref={incident_id}"
headers = { Authorization = "Bearer {key}" }
key = { value = "k" }
from = "ACME"
body = "json"
fields = { to = "{to}", text = "{text}", from = "{from}" }
success = [200, 202]
retry_statuses = [429, "500-599"]
recipient_gone = [410]
message_id = "/id"
recipients = { customers = ["+447700900123"] }
"#
        ),
        "ok http"
    );
    assert_eq!(
        build_str(
            r#"
provider = "smpp"
address = "127.0.0.1:2775"
system_id = "clarion"
password = { value = "secret" }
bind = "transceiver"
source_addr = "ACME"
window = 20
enquire_link_interval = "15s"
recipients = { customers = ["+447700900123"] }
"#
        ),
        "ok smpp"
    );
}

#[test]
fn rejects_bad_config_naming_the_field() {
    let check = |from: &str, to: &str, expected: &str| {
        assert_eq!(build_str(&TWILIO.replace(from, to)), expected);
    };
    check(
        "\"+12025550123\"",
        "\"02025550123\"",
        "target `sms-customers`: invalid `recipients.employees[1]`: `02025550123` is not an E.164 number (`+` then 8-15 digits, e.g. +447700900123)",
    );
    check(
        "max_segments = 2",
        "max_segments = 0",
        "target `sms-customers`: invalid `max_segments`: must be between 1 and 10, got 0",
    );
    check(
        "rate_per_second = 0.5",
        "rate_per_second = 0",
        "target `sms-customers`: invalid `rate_per_second`: must be above 0 and at most 10000, got 0",
    );
    check(
        "from = \"+15005550006\"",
        "",
        "target `sms-customers`: invalid `from`: set either `from` or `messaging_service_sid`",
    );
    check(
        "auth_token = { value = \"tok\" }",
        "auth_token = { env = \"TWILIO_TOKEN\" }",
        "target `sms-customers`: invalid `auth_token`: cannot read secret env:TWILIO_TOKEN: env:TWILIO_TOKEN is not available in tests",
    );
    check(
        "max_segments = 2",
        "max_segment = 2",
        "parse: unknown field `max_segment`, expected one of `recipients`, `max_segments`, `rate_per_second`, `max_in_flight`, `account_sid`, `auth_token`, `from`, `messaging_service_sid`, `status_callback`, `base_url`, `timeout`",
    );
    check(
        "provider = \"twilio\"",
        "provider = \"pigeon\"",
        "parse: unknown variant `pigeon`, expected one of `twilio`, `vonage`, `http`, `smpp`",
    );

    let gateway = |extra: &str| {
        build_str(&format!(
            "provider = \"http\"\nurl = \"https://gw/send\"\nrecipients = {{}}\n{extra}"
        ))
    };
    assert_eq!(
        gateway("fields = { text = \"{message}\" }"),
        "target `sms-customers`: invalid `fields.text`: unknown placeholder `{message}` (known: {to}, {to_digits}, {text}, {from}, {key}, {incident_id}, {update_id}, {status}, {encoding}, {segments}, {idempotency_key}; write `{{` for a literal brace)"
    );
    assert_eq!(
        gateway("headers = { Authorization = \"Bearer {key}\" }"),
        "target `sms-customers`: invalid `headers.Authorization`: uses {key} but the target has no `key`"
    );
    assert_eq!(
        gateway("retry_statuses = [\"5xx\"]"),
        "target `sms-customers`: invalid `retry_statuses`: `5xx` is not a status code or a range like \"500-599\""
    );
    assert_eq!(
        build_str("provider = \"http\"\nurl = \"ftp://gw/{to}\"\nrecipients = {}"),
        "target `sms-customers`: invalid `url`: must be an http(s) URL, not ftp:"
    );
    assert_eq!(
        build_str(
            "provider = \"smpp\"\naddress = \"smsc\"\nsystem_id = \"x\"\npassword = { value = \"p\" }\nsource_addr = \"ACME\"\nrecipients = {}"
        ),
        "target `sms-customers`: invalid `address`: `smsc` is not host:port"
    );
    assert_eq!(
        build_str(
            "provider = \"smpp\"\naddress = \"smsc:2775\"\nsystem_id = \"x\"\npassword = { value = \"toolongpassword\" }\nsource_addr = \"ACME\"\nrecipients = {}"
        ),
        "target `sms-customers`: invalid `password`: SMPP 3.4 passwords are at most 8 ASCII characters"
    );
    assert_eq!(
        build_str(
            "provider = \"smpp\"\naddress = \"smsc:2775\"\nsystem_id = \"x\"\npassword = { value = \"p\" }\nsource_addr = \"ACME\"\nca_file = \"/etc/ca.pem\"\nrecipients = {}"
        ),
        "target `sms-customers`: invalid `ca_file`: is set but `tls` is false"
    );
    assert_eq!(
        build_str(
            "provider = \"smpp\"\naddress = \"smsc:2775\"\nsystem_id = \"x\"\npassword = { value = \"p\" }\nsource_addr = \"ACME\"\ntls = true\nca_file = \"/nonexistent/ca.pem\"\nrecipients = {}"
        ),
        "target `sms-customers`: invalid `ca_file`: cannot read PEM certificates from `/nonexistent/ca.pem`: I/O error: No such file or directory (os error 2)"
    );
}

/// A provider that records what it was asked to send and fails one number.
#[derive(Debug, Default)]
struct Recorder {
    sent: Mutex<Vec<(String, String)>>,
}

#[async_trait::async_trait]
impl Provider for Arc<Recorder> {
    async fn submit(&self, sms: &Sms<'_>) -> Result<Receipt, DeliveryError> {
        self.sent
            .lock()
            .map_err(|_| DeliveryError::permanent("poisoned"))?
            .push((sms.to.to_string(), sms.text.to_string()));
        if sms.to == "+12025550123" {
            return Err(DeliveryError::retryable("busy", None));
        }
        Ok(Receipt {
            provider_id: Some(format!("id-{}", sms.to)),
        })
    }
    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        Ok(())
    }
}

fn channel_with(recorder: Arc<Recorder>) -> SmsChannel {
    let config = parse(TWILIO).expect("valid config");
    let mut ch = build("sms-customers", &config, &Values).expect("builds");
    ch.provider = Box::new(recorder);
    // Fast enough that the test does not wait on the limiter noticeably.
    ch.limiter = Arc::new(RateLimiter::direct(Quota::per_second(
        std::num::NonZeroU32::MIN.saturating_add(9999),
    )));
    ch
}

fn delivery(audiences: &[&str], recipients: Option<Vec<&str>>) -> Delivery {
    let mut update = samples::lifecycle(
        "INC-7",
        "Mobile outage",
        &["customers", "employees"],
        jiff::Timestamp::UNIX_EPOCH,
    )
    .remove(0);
    update.audience_messages.insert(
        "employees".into(),
        "Staff: use the bridge on channel 4.".into(),
    );
    let mut d = Delivery::new(
        Arc::new(update),
        Arc::from("sms-customers"),
        audiences
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    d.recipients = recipients.map(|r| r.into_iter().map(String::from).collect());
    d
}

fn summary(outcome: &Outcome) -> Vec<String> {
    outcome
        .results
        .iter()
        .map(|r| match &r.result {
            Ok(receipt) => format!(
                "{} ok {}",
                r.recipient.as_deref().unwrap_or("-"),
                receipt.provider_id.as_deref().unwrap_or("-")
            ),
            Err(e) => format!(
                "{} {} {}",
                r.recipient.as_deref().unwrap_or("-"),
                e.class.as_str(),
                e.reason
            ),
        })
        .collect()
}

#[tokio::test]
async fn one_result_per_number_of_the_union() {
    let recorder = Arc::new(Recorder::default());
    let ch = channel_with(recorder.clone());
    let outcome = ch.send(&delivery(&["customers", "employees"], None)).await;
    assert_eq!(
        summary(&outcome),
        [
            "+447700900123 ok id-+447700900123",
            "+447700900124 ok id-+447700900124",
            "+12025550123 retryable busy",
        ]
    );
    let sent = recorder.sent.lock().expect("lock").clone();
    // A number in two audiences gets one message, in the first audience's wording.
    assert!(sent[1].1.contains("We are investigating"), "{:?}", sent[1]);
    assert!(sent[2].1.contains("Staff: use the bridge"), "{:?}", sent[2]);
    assert!(
        sent[2]
            .1
            .starts_with("[INC-7 investigating] Mobile outage: ")
    );
    assert!(sent[2].1.ends_with(" (ref INC-7-u1)"));
}

#[tokio::test]
async fn a_retry_goes_only_to_the_named_numbers() {
    let recorder = Arc::new(Recorder::default());
    let ch = channel_with(recorder.clone());
    let outcome = ch
        .send(&delivery(
            &["customers", "employees"],
            Some(vec!["+12025550123", "+447700900999"]),
        ))
        .await;
    assert_eq!(
        summary(&outcome),
        [
            "+12025550123 retryable busy",
            "+447700900999 permanent +4***0999 is no longer a recipient of target `sms-customers` for these audiences",
        ]
    );
    assert_eq!(recorder.sent.lock().expect("lock").len(), 1);
    // An audience the target has no numbers for: nothing to do, nothing failed.
    let outcome = ch.send(&delivery(&["regulators"], None)).await;
    assert!(outcome.results.is_empty());
}

#[test]
fn compose_carries_ids_and_fits_the_budget() {
    let mut update = samples::lifecycle(
        "INC-7",
        "Mobile outage",
        &["customers"],
        jiff::Timestamp::UNIX_EPOCH,
    )
    .remove(0);
    assert_eq!(
        compose(&update, "customers", 3),
        "[INC-7 investigating] Mobile outage: We are investigating reports of failed calls and mobile data in the affected regions. (ref INC-7-u1)"
    );
    update.message = "Ünïcode 🔥 ".repeat(40);
    update.status = Status::Identified;
    let text = compose(&update, "customers", 1);
    let a = encoding::analyze(&text);
    // 68 or 69 units: the cut never takes half an emoji and drops the space before
    // the ellipsis.
    assert_eq!((a.encoding, a.segments), (encoding::Encoding::Ucs2, 1));
    assert!(a.units >= 68 && a.units <= 70, "{text}");
    assert!(
        text.starts_with("[INC-7 identified] Mobile outage: Ünïcode"),
        "{text}"
    );
    assert!(text.ends_with("… (ref INC-7-u1)"), "{text}");
}

/// The segment cost of the sample lifecycle, per status, as the docs report it.
#[test]
fn lifecycle_segments() {
    let got: Vec<String> = samples::lifecycle(
        "INC-2026-0042",
        "Mobile data outage in the north",
        &["customers"],
        jiff::Timestamp::UNIX_EPOCH,
    )
    .iter()
    .map(|u| {
        let text = compose(u, "customers", 3);
        let a = encoding::analyze(&text);
        format!("{} {} {} {}", u.status, a.encoding, a.units, a.segments)
    })
    .collect();
    assert_eq!(
        got,
        [
            "investigating gsm7 173 2",
            "identified gsm7 173 2",
            "monitoring gsm7 155 1",
            "resolved gsm7 148 1",
        ]
    );
}

#[test]
fn masks_numbers_in_logs() {
    // The same as the daemon's ledger and log lines: one masking everywhere.
    assert_eq!(mask("+447700900123"), "+4***0123");
    assert_eq!(
        mask("+447700900123"),
        clarion_core::mask(Some("+447700900123"))
    );
    assert_eq!(mask("+1234"), "***");
}

/// A provider that accepts the first `answered` messages and never answers the rest,
/// like a gateway that stalls mid-attempt; it tells the test when it has stalled.
#[derive(Debug, Default)]
struct Stalls {
    answered: usize,
    sent: Mutex<Vec<String>>,
    stalled: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl Provider for Arc<Stalls> {
    async fn submit(&self, sms: &Sms<'_>) -> Result<Receipt, DeliveryError> {
        let n = {
            let mut sent = self
                .sent
                .lock()
                .map_err(|_| DeliveryError::permanent("poisoned"))?;
            sent.push(sms.to.to_string());
            sent.len()
        };
        if n > self.answered {
            self.stalled.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(Receipt {
            provider_id: Some(format!("id-{}", sms.to)),
        })
    }
    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        Ok(())
    }
}

fn stalling_channel(answered: usize) -> (SmsChannel, Arc<Stalls>) {
    let stalls = Arc::new(Stalls {
        answered,
        ..Stalls::default()
    });
    let mut ch = channel_with(Arc::new(Recorder::default()));
    ch.provider = Box::new(Arc::clone(&stalls));
    // One at a time, so "the first N" is well defined.
    ch.max_in_flight = 1;
    (ch, stalls)
}

#[tokio::test]
async fn a_number_that_ended_in_a_timed_out_attempt_is_not_sent_again() {
    let (ch, stalls) = stalling_channel(usize::MAX);
    let mut d = delivery(&["customers", "employees"], None);
    d.skip = Arc::new(["+447700900124".to_string()].into());
    let outcome = ch.send(&d).await;
    assert_eq!(
        summary(&outcome),
        [
            "+447700900123 ok id-+447700900123",
            "+12025550123 ok id-+12025550123",
        ]
    );
    // What the gateway received: the skipped number is not among them.
    assert_eq!(
        *stalls.sent.lock().expect("lock"),
        ["+447700900123", "+12025550123"]
    );
    // Also when the daemon names it in a retry's subset.
    let mut d = delivery(
        &["customers", "employees"],
        Some(vec!["+447700900124", "+12025550123"]),
    );
    d.skip = Arc::new(["+447700900124".to_string()].into());
    let outcome = ch.send(&d).await;
    assert_eq!(summary(&outcome), ["+12025550123 ok id-+12025550123"]);
}

#[tokio::test]
async fn progress_keeps_the_numbers_that_ended_when_the_attempt_is_dropped() {
    let (ch, stalls) = stalling_channel(2);
    let d = delivery(&["customers", "employees"], None);
    let send = ch.send(&d);
    // The daemon's attempt_timeout, in effect: the send is dropped while the third
    // number hangs. The outer timeout only guards against a broken test.
    let raced = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            _ = send => panic!("the third number never gets an answer"),
            _ = stalls.stalled.notified() => {}
        }
    })
    .await;
    assert!(raced.is_ok(), "the provider never stalled");
    let done: Vec<(String, bool)> = d
        .progress
        .take()
        .into_iter()
        .map(|r| (r.recipient.unwrap_or_default(), r.result.is_ok()))
        .collect();
    assert_eq!(
        done,
        [
            ("+447700900123".to_string(), true),
            ("+447700900124".to_string(), true),
        ]
    );
}

fn direct_delivery(audiences: &[&str], direct: &[&str]) -> Delivery {
    delivery(audiences, None).with_direct(direct.iter().map(|n| n.to_string()).collect())
}

#[tokio::test]
async fn direct_numbers_replace_the_configured_ones_and_a_malformed_one_fails_alone() {
    let recorder = Arc::new(Recorder::default());
    let ch = channel_with(recorder.clone());
    let d = direct_delivery(
        &["employees", "customers"],
        &[
            "+447700900555",
            "07700 900556",
            "+447700900555",
            "+12025550123",
            "+33612345678",
        ],
    );
    let outcome = ch.send(&d).await;
    assert_eq!(
        summary(&outcome),
        [
            "+447700900555 ok id-+447700900555",
            "07700 900556 permanent target `sms-customers`: 07***0556 is not an E.164 number (`+` then 8-15 digits, e.g. +447700900123)",
            "+12025550123 retryable busy",
            "+33612345678 ok id-+33612345678",
        ]
    );
    // What the gateway was asked to send: each valid direct number once, in the
    // first audience's wording; none of the configured numbers.
    let sent = recorder.sent.lock().expect("lock").clone();
    let to: Vec<&str> = sent.iter().map(|(to, _)| to.as_str()).collect();
    assert_eq!(to, ["+447700900555", "+12025550123", "+33612345678"]);
    assert!(
        sent.iter()
            .all(|(_, text)| text.contains("Staff: use the bridge")),
        "{sent:?}"
    );
    // Every result is in the progress too, the refused number's included.
    assert_eq!(d.progress.take().len(), 4);
}

#[tokio::test]
async fn a_retry_and_a_skip_restrict_direct_numbers() {
    let recorder = Arc::new(Recorder::default());
    let ch = channel_with(recorder.clone());
    let mut d = direct_delivery(
        &["customers"],
        &[
            "+447700900551",
            "+447700900552",
            "+447700900553",
            "+447700900554",
            "+4477009",
        ],
    );
    d.recipients = Some(
        [
            "+447700900552",
            "+447700900553",
            "+4477009",
            // Not in this batch: not this attempt's to answer for.
            "+447700900999",
            // Configured for `customers`: direct numbers replace those entirely.
            "+447700900123",
        ]
        .map(String::from)
        .to_vec(),
    );
    d.skip = Arc::new(["+447700900553".to_string()].into());
    let outcome = ch.send(&d).await;
    assert_eq!(
        summary(&outcome),
        [
            "+447700900552 ok id-+447700900552",
            "+4477009 permanent target `sms-customers`: +4***7009 is not an E.164 number (`+` then 8-15 digits, e.g. +447700900123)",
        ]
    );
    let sent = recorder.sent.lock().expect("lock").clone();
    assert_eq!(
        sent.iter().map(|(to, _)| to.as_str()).collect::<Vec<_>>(),
        ["+447700900552"]
    );
}

#[test]
fn a_directory_config_builds_without_recipients_and_refuses_them() {
    let directory = |toml_text: &str| match parse(toml_text) {
        Err(e) => format!("parse: {e}"),
        Ok(mut c) => {
            c.set_directory(true);
            match build("sms-customers", &c, &Values) {
                Ok(ch) => format!("ok {} {:?}", ch.provider_name, ch.recipients),
                Err(e) => e.to_string(),
            }
        }
    };
    let refused = "target `sms-customers`: invalid `recipients`: a people target's channel addresses the directory's members; static recipients belong to an ordinary target";
    let twilio_without = TWILIO.replace(
        "recipients = { customers = [\"+447700900123\", \"+447700900124\"], employees = [\"+447700900124\", \"+12025550123\"] }",
        "recipients = {}",
    );
    assert_eq!(directory(&twilio_without), "ok twilio {}");
    assert_eq!(directory(TWILIO), refused);
    let vonage =
        "provider = \"vonage\"\napi_key = \"k\"\napi_secret = { value = \"s\" }\nfrom = \"ACME\"\n";
    assert_eq!(
        directory(&format!("{vonage}recipients = {{}}")),
        "ok vonage {}"
    );
    assert_eq!(
        directory(&format!(
            "{vonage}recipients = {{ customers = [\"+447700900123\"] }}"
        )),
        refused
    );
    // Only the daemon says a channel is a directory leg: the file cannot.
    assert_eq!(
        build_str(&format!("{twilio_without}directory = true\n")),
        "parse: unknown field `directory`, expected one of `recipients`, `max_segments`, `rate_per_second`, `max_in_flight`, `account_sid`, `auth_token`, `from`, `messaging_service_sid`, `status_callback`, `base_url`, `timeout`"
    );
}
