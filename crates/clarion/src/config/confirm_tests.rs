//! Tests of confirmations' configuration: `[confirm]`, `confirm = { … }`,
//! `[escalations]` and escalation targets, and the shipped example.

use crate::config::{ChannelKind, parse_str};

fn check(toml: &str) -> Result<crate::config::Settings, String> {
    parse_str(toml)
        .and_then(|raw| raw.validate_for_preview("/nowhere/clarion.toml"))
        .map_err(|e| format!("{e:#}"))
}

const BASE: &str = r#"
[kafka]
brokers = "k:9092"
topic = "t"
dead_letter_topic = "d"
ledger_topic = "l"

[directory]
topic = "people"
progress_topic = "p"

[targets.reach]
type = "people"
audiences = ["employees"]
fallback = ["sms", "email"]
[targets.reach.sms]
provider = "twilio"
account_sid = "AC1"
auth_token = { value = "x" }
from = "+15005550006"
[targets.reach.email]
host = "127.0.0.1"
from = "a@b.example"
"#;

const CONFIRM: &str = r#"
[confirm]
listen = "127.0.0.1:0"
public_url = "https://notify.example.com"
secret = { value = "0123456789abcdef0123456789abcdef" }
topic = "c"
"#;

const POLICY: &str = r#"
[[escalations.crisis.steps]]
who = { person = "ann" }
channels = ["reach.sms", "reach.email"]
wait = "5m"

[targets.crisis]
type = "escalation"
audiences = ["business"]
escalation = "crisis"
confirm = { require = "any", within = "30m" }
"#;

#[test]
fn the_shipped_example_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/confirmations.toml"
    );
    let toml = std::fs::read_to_string(path).expect("config/confirmations.toml");
    let s = parse_str(&toml)
        .and_then(|raw| raw.validate_for_preview(path))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let c = &s.confirmations;
    assert!(c.listener.is_some());
    assert_eq!(c.escalations["crisis"].len(), 2);
    assert!(c.by_audience.contains_key("regulators"));
    let t = s
        .targets
        .iter()
        .find(|t| &*t.name == "crisis-team")
        .expect("target");
    assert_eq!(t.kind, ChannelKind::Escalation);
    assert!(t.channels().is_empty());
}

#[test]
fn an_escalation_is_checked_against_the_targets() {
    let s = check(&format!("{BASE}{CONFIRM}{POLICY}")).expect("valid");
    let t = s
        .targets
        .iter()
        .find(|t| &*t.name == "crisis")
        .expect("target");
    assert_eq!(t.escalation.as_deref(), Some("crisis"));
    for (change, error) in [
        (
            ("reach.email", "reach.voice"),
            "`reach.voice` is not a target",
        ),
        (
            ("escalation = \"crisis\"", "escalation = \"other\""),
            "`other` is not an `[escalations.NAME]` policy",
        ),
        (
            ("confirm = { require = \"any\", within = \"30m\" }", ""),
            "confirm: missing",
        ),
        (
            ("wait = \"5m\"", "wait = \"0s\""),
            "wait: must be at least 1s",
        ),
        (
            (
                "who = { person = \"ann\" }",
                "who = { audience = \"nobody\" }",
            ),
            "`nobody` is not a known audience",
        ),
    ] {
        let e = check(&format!(
            "{BASE}{CONFIRM}{}",
            POLICY.replace(change.0, change.1)
        ))
        .expect_err(change.1);
        assert!(e.contains(error), "{e}");
    }
}

#[test]
fn asking_needs_the_listener_and_the_ledger() {
    let e = check(&format!("{BASE}{POLICY}")).expect_err("no [confirm]");
    assert!(e.contains("needs the `[confirm]` section"), "{e}");
    let e = check(&format!(
        "{}{CONFIRM}{POLICY}",
        BASE.replace("ledger_topic = \"l\"\n", "")
    ))
    .expect_err("no ledger");
    assert!(e.contains("kafka.ledger_topic"), "{e}");
    let e = check(&format!(
        "{BASE}{}{POLICY}",
        CONFIRM.replace("https://", "http://")
    ))
    .expect_err("http");
    assert!(e.contains("use https"), "{e}");
    let e = check(&format!(
        "{BASE}{}{POLICY}",
        CONFIRM.replace("topic = \"c\"", "topic = \"t\"")
    ))
    .expect_err("shared topic");
    assert!(e.contains("must be a topic of its own"), "{e}");
    // A people target's confirm applies to its legs.
    let s = check(&format!(
        "{}{CONFIRM}",
        BASE.replace(
            "fallback = [",
            "confirm = { within = \"10m\" }\nfallback = ["
        )
    ))
    .expect("valid");
    let reach = &s.targets[0];
    assert!(reach.confirm.is_some());
    assert!(
        reach
            .people
            .iter()
            .flat_map(|p| &p.legs)
            .all(|l| l.target.confirm.is_some())
    );
}
