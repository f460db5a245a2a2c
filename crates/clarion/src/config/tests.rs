use super::*;
use std::collections::BTreeSet;
use std::time::Duration;

const MINIMAL: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
topic = "incident-updates"
dead_letter_topic = "clarion-dlq"

[targets.StatusPage]
type = "webhook"
audiences = ["customers"]
url = "http://127.0.0.1:1/hook"
secrets = [{ value = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD" }]
"#;

fn check(toml: &str, expected: &str) {
    let got = parse_str(toml)
        .and_then(|raw| raw.validate("test.toml", &EnvSecrets))
        .map(|s| format!("ok: {} target(s)", s.targets.len()))
        .unwrap_or_else(|e| format!("{e:#}"));
    assert_eq!(got, expected);
}

const SMS_WITH_BACKUP: &str = r#"
[kafka]
brokers = "127.0.0.1:9092"
topic = "incident-updates"
dead_letter_topic = "clarion-dlq"

[targets.sms]
type = "sms"
audiences = ["customers"]
provider = "twilio"
provider_name = "twilio-main"
account_sid = "AC123"
auth_token = { value = "tok" }
from = "+15005550006"
recipients = { customers = ["+447700900101"] }
failover_after = "10s"

[[targets.sms.backups]]
name = "smsc"
provider = "smpp"
address = "127.0.0.1:2775"
system_id = "clarion"
password = { env = "CLARION_TEST_UNSET_SMPP_PASSWORD" }
source_addr = "ACME"
"#;

/// A people target with three legs, and a directory file written for it.
fn people_config(extra: &str) -> (String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "clarion-people-config-{}-{}",
        std::process::id(),
        PEOPLE_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("people.csv"),
        "id,audiences,push,sms,email\n\
         p1,customers,tok-1,+15005550001,p1@example.com\n\
         p2,customers;business,,+15005550002,\n\
         p3,business,,,p3@example.com\n",
    )
    .expect("csv");
    let toml = format!(
        r#"
[kafka]
brokers = "127.0.0.1:9092"
topic = "incident-updates"
dead_letter_topic = "clarion-dlq"

[directory]
file = "people.csv"
progress_topic = "clarion-people-progress"

[targets.reach]
type = "people"
audiences = ["customers"]
fallback = ["push", "sms", "email"]
retry = {{ max_attempts = 3 }}
{extra}

[targets.reach.push]
type = "apns"
team_id = "TEAM123456"
key_id = "KEY1234567"
signing_key = {{ file = "{key}" }}
topic = "com.example.status"

[targets.reach.sms]
provider = "twilio"
account_sid = "AC123"
auth_token = {{ value = "tok" }}
from = "+15005550006"

[targets.reach.email]
host = "127.0.0.1"
port = 2525
tls = "none"
from = "status@example.com"
"#,
        key = dir.join("apns.p8").display(),
    );
    let pem = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .output()
        .expect("the tests need the `openssl` command (Debian package openssl)");
    std::fs::write(dir.join("apns.p8"), pem.stdout).expect("key");
    (toml, dir.join("clarion.toml"))
}

static PEOPLE_DIRS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn check_people(toml: &str, path: &std::path::Path) -> String {
    parse_str(toml)
        .and_then(|raw| raw.validate(&path.display().to_string(), &EnvSecrets))
        .map(|s| {
            let t = &s.targets[0];
            let p = t.people.as_ref().expect("a people target");
            let legs: Vec<String> = p
                .legs
                .iter()
                .map(|l| format!("{}={}", l.target.name, l.target.kind.as_str()))
                .collect();
            let d = s.directory.as_ref().expect("directory");
            format!(
                "ok: {} {} [{}] {} people, {} customers",
                t.name,
                t.kind.as_str(),
                legs.join(" "),
                d.people.as_ref().map_or(0, |p| p.len()),
                d.people.as_ref().map_or(0, |p| p.members("customers")),
            )
        })
        .unwrap_or_else(|e| format!("{e:#}"))
}

#[test]
fn a_people_target_builds_its_legs_as_channels_without_recipients_of_their_own() {
    let (toml, path) = people_config("");
    let got = check_people(&toml, &path);
    assert_eq!(
        got,
        "ok: reach people [reach.push=apns reach.sms=sms reach.email=email] 3 people, 2 customers"
    );
    let raw = parse_str(&toml).expect("parses");
    let s = raw
        .validate(&path.display().to_string(), &EnvSecrets)
        .expect("valid");
    let legs = &s.targets[0].people.as_ref().expect("people").legs;
    // Each leg inherits the people target's retry policy.
    assert!(legs.iter().all(|l| l.target.retry.max_attempts == 3));
    assert!(
        legs.iter()
            .all(|l| l.target.audiences == BTreeSet::from(["customers".to_string()]))
    );
}

#[test]
fn people_targets_are_checked_for_their_audience_fallback_and_legs() {
    let (toml, path) = people_config("");
    let at = |t: &str| check_people(t, &path);
    let source = path.display().to_string();
    assert_eq!(
        at(&toml.replace(
            r#"audiences = ["customers"]"#,
            r#"audiences = ["customers", "business"]"#
        )),
        format!(
            "{source}: targets.reach: audiences: a people target addresses the members of one audience, not 2; use one people target per audience"
        )
    );
    assert_eq!(
        at(&toml.replace(
            r#"fallback = ["push", "sms", "email"]"#,
            r#"fallback = ["push", "fax"]"#
        )),
        format!(
            "{source}: targets.reach: fallback: `fax` is not an address kind (expected `push`, `sms` or `email`)"
        )
    );
    assert_eq!(
        at(&toml.replace(
            r#"fallback = ["push", "sms", "email"]"#,
            r#"fallback = ["push", "sms"]"#
        )),
        format!(
            "{source}: targets.reach: email: a leg that `fallback` does not list would never be used; add it to fallback or remove it"
        )
    );
    assert_eq!(
        at(&toml.replace(
            "[targets.reach.sms]",
            "[targets.reach.sms]\nrecipients = { customers = [\"+15005550009\"] }"
        )),
        format!(
            "{source}: targets.reach: sms: target `reach.sms`: invalid `recipients`: a people target's channel addresses the directory's members; static recipients belong to an ordinary target"
        )
    );
    assert_eq!(
        at(&toml.replace("type = \"apns\"", "type = \"sms\"")),
        format!(
            "{source}: targets.reach: push.type: `sms` cannot carry push addresses (one of: apns, fcm)"
        )
    );
    assert_eq!(
        at(&toml.replace(
            "[targets.reach.push]",
            "[targets.reach.push]\nsupersede = true"
        )),
        format!(
            "{source}: targets.reach: push.supersede: belongs to the people target, not to one of its legs"
        )
    );
    let (supersede, _) = people_config("supersede = true");
    assert_eq!(
        at(&supersede),
        format!(
            "{source}: targets.reach: supersede: a people target walks every member for every update; skipping updates would leave people with an older one"
        )
    );
    assert_eq!(
        at(&toml.replace(
            "[directory]\nfile = \"people.csv\"\nprogress_topic = \"clarion-people-progress\"\n",
            ""
        )),
        format!(
            "{source}: targets.reach: a people target needs a `[directory]` to take its people from"
        )
    );
    assert_eq!(
        at(&toml.replace("progress_topic = \"clarion-people-progress\"\n", "")),
        format!(
            "{source}: directory.progress_topic: missing (a compacted topic where each walk's progress is kept, so that a restart does not send to everyone again)"
        )
    );
    assert_eq!(
        at(&toml.replace(
            "file = \"people.csv\"",
            "file = \"people.csv\"\ntopic = \"clarion-directory\""
        )),
        format!(
            "{source}: directory: set `file` or `topic`, not both (the topic is the address book that can change without a restart)"
        )
    );
    // A broken row in the file is reported with its line.
    std::fs::write(
        path.parent().expect("dir").join("people.csv"),
        "id,audiences,sms\np1,customers,+15005550001\np2,partners,+15005550002\n",
    )
    .expect("csv");
    let got = at(&toml);
    assert!(
        got.contains("directory.file:") && got.contains("people.csv:3") && got.contains("partners"),
        "{got}"
    );
}

#[test]
fn backups_take_the_targets_recipients_and_report_their_missing_secrets_at_their_key() {
    let raw = parse_str(SMS_WITH_BACKUP).expect("parses");
    let s = raw.validate_for_preview("test.toml").expect("valid keys");
    let t = &s.targets[0];
    assert_eq!(&*t.provider_name, "twilio-main");
    assert_eq!(t.failover_after, Duration::from_secs(10));
    assert_eq!(t.backups.len(), 1);
    let ChannelConfig::Sms(clarion_sms::SmsConfig::Smpp(backup)) = &t.backups[0].channel else {
        panic!("an SMPP backup: {:?}", t.backups[0]);
    };
    assert_eq!(
        backup.recipients["customers"],
        vec!["+447700900101".to_string()]
    );
    check(
        SMS_WITH_BACKUP,
        "test.toml: targets.sms: backups[0].password: environment variable CLARION_TEST_UNSET_SMPP_PASSWORD is not set",
    );
}

#[test]
fn backups_are_checked_for_names_and_keys_that_belong_to_the_target() {
    let with = |from: &str, to: &str| SMS_WITH_BACKUP.replace(from, to);
    // The backup's password is not set either: every problem of the target is
    // reported in the same run, the secret after the key.
    let unset = "\n  - targets.sms: backups[0].password: environment variable CLARION_TEST_UNSET_SMPP_PASSWORD is not set";
    check(
        &with("name = \"smsc\"", "name = \"twilio-main\""),
        &format!(
            "test.toml: 2 problems:\n  - targets.sms: backups[0].name: `twilio-main` is used twice in this target (`provider_name` is `twilio-main`){unset}"
        ),
    );
    check(
        &with("name = \"smsc\"\n", ""),
        &format!(
            "test.toml: 2 problems:\n  - targets.sms: backups[0].name: missing (the name the provider goes by in logs, dead letters and the ledger){unset}"
        ),
    );
    check(
        &with(
            "name = \"smsc\"",
            "name = \"smsc\"\nretry = { max_attempts = 2 }",
        ),
        &format!(
            "test.toml: 2 problems:\n  - targets.sms: backups[0].retry: belongs to the target, not to one of its providers{unset}"
        ),
    );
    let unknown = format!(
        "{:#}",
        parse_str(&with(
            "system_id = \"clarion\"",
            "system_id = \"clarion\"\naccount_sid = \"AC1\""
        ))
        .and_then(|r| r.validate_for_preview("test.toml"))
        .expect_err("an SMPP backup has no account_sid")
    );
    assert!(
        unknown.starts_with(
            "test.toml: targets.sms: backups[0] (`smsc`): unknown field `account_sid`"
        ),
        "{unknown}"
    );
    let no_backups = &SMS_WITH_BACKUP[..SMS_WITH_BACKUP.find("[[targets").expect("backups")];
    check(
        no_backups,
        "test.toml: targets.sms: failover_after: only means something with `backups` (providers to fail over to)",
    );
}

#[test]
fn a_bad_number_and_a_missing_secret_in_one_target_are_both_reported() {
    let toml = SMS_WITH_BACKUP
        .replace("\"+447700900101\"", "\"02025550123\"")
        .replace(
            "auth_token = { value = \"tok\" }",
            "auth_token = { env = \"CLARION_TEST_UNSET_TWILIO\" }",
        );
    let toml = &toml[..toml.find("[[targets").expect("backups")];
    let toml = toml.replace("failover_after = \"10s\"\n", "");
    check(
        &toml,
        "test.toml: 2 problems:\n  - targets.sms: target `sms`: invalid `recipients.customers[0]`: `02025550123` is not an E.164 number (`+` then 8-15 digits, e.g. +447700900123)\n  - targets.sms: auth_token: environment variable CLARION_TEST_UNSET_TWILIO is not set",
    );
}

#[test]
fn minimal_config_is_valid_and_keeps_case() {
    let s = parse_str(MINIMAL)
        .and_then(|r| r.validate("test.toml", &EnvSecrets))
        .expect("valid");
    assert_eq!(&*s.targets[0].name, "StatusPage");
    assert_eq!(s.targets[0].retry, RetryPolicy::default());
}

#[test]
fn errors_name_the_key() {
    check(
        &MINIMAL.replace("brokers", "brokerz"),
        "unknown field `brokerz`, expected one of `brokers`, `topic`, `group_id`, `instance_id`, `dead_letter_topic`, `dead_recipient_topic`, `ledger_topic`, `incident_state_topic`, `properties`, `secret_properties`, `consumer`, `producer` for key `kafka`",
    );
    check(
        &MINIMAL.replace("url =", "uri ="),
        "test.toml: targets.StatusPage: unknown field `uri`, expected one of `url`, `secrets`, `headers`, `timeout`, `format`, `statuspage`",
    );
    check(
        &MINIMAL.replace("\"customers\"", "\"customer\""),
        "test.toml: targets.StatusPage: audiences: `customer` is not a standard audience nor listed in the top-level `audiences`",
    );
    check(
        &MINIMAL.replace("type = \"webhook\"", "type = \"pigeon\""),
        "test.toml: targets.StatusPage: unknown variant `pigeon`, expected one of `webhook`, `email`, `sms`, `fcm`, `apns`, `people`, `status_page`, `escalation`",
    );
    check(
        &MINIMAL.replace(
            "{ value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }",
            "{ env = \"CLARION_TEST_SURELY_UNSET\" }",
        ),
        "test.toml: targets.StatusPage: secrets[0]: environment variable CLARION_TEST_SURELY_UNSET is not set",
    );
    check(
        &format!("{MINIMAL}\n[targets.StatusPage.retry]\nmax_attempts = 0\n"),
        "test.toml: targets.StatusPage: retry.max_attempts: must be at least 1",
    );
}

const GATEWAY: &str = r#"
[targets.noc-sms]
type = "sms"
audiences = ["employees"]
provider = "http"
url = "https://sms.example.com/send"
recipients = { employees = ["+12025550123"] }
"#;

#[test]
fn the_gateway_status_list_is_retry_statuses_and_never_the_retry_policy() {
    // Before the rename, `retry = [429]` was read as the retry policy written as a
    // sequence: max_attempts = 429, and the gateway kept its default statuses.
    check(
        &format!("{MINIMAL}{GATEWAY}retry = [429]\n"),
        "test.toml: targets.noc-sms: retry: is this target's retry policy, a table \
         (max_attempts, max_elapsed, initial_backoff, max_backoff, attempt_timeout); \
         the HTTP gateway's statuses to retry are `retry_statuses`, e.g. retry_statuses = [429, 503]",
    );
    // Any other target: the key is named, and a sequence is never a policy.
    check(
        &format!("{MINIMAL}retry = [429]\n"),
        "test.toml: targets.StatusPage: retry: must be a table \
         (max_attempts, max_elapsed, initial_backoff, max_backoff, attempt_timeout), not [429]",
    );
    check(
        &format!("retry = [429]\n{MINIMAL}"),
        "invalid type: sequence, expected a table of retry policy keys \
         (max_attempts, max_elapsed, initial_backoff, max_backoff, attempt_timeout) for key `retry`",
    );
    let s = parse_str(&format!("{MINIMAL}{GATEWAY}retry_statuses = [429, 503]\n"))
        .and_then(|r| r.validate("test.toml", &EnvSecrets))
        .expect("valid");
    let Some(ChannelConfig::Sms(clarion_sms::SmsConfig::Http(gw))) = s
        .targets
        .iter()
        .find(|t| &*t.name == "noc-sms")
        .map(|t| &t.channel)
    else {
        panic!("noc-sms is an HTTP gateway: {s:?}");
    };
    assert_eq!(
        gw.retry_statuses,
        [
            clarion_sms::StatusSpec::Code(429),
            clarion_sms::StatusSpec::Code(503)
        ]
    );
    assert_eq!(s.targets[0].retry.max_attempts, 10);
}

#[test]
fn zero_limits_are_refused() {
    for (key, value) in [
        ("max_elapsed", "\"0s\""),
        ("attempt_timeout", "\"0s\""),
        ("max_attempts", "0"),
    ] {
        let expected = if key == "max_attempts" {
            "must be at least 1"
        } else {
            "must be more than zero"
        };
        check(
            &format!("[retry]\n{key} = {value}\n{MINIMAL}"),
            &format!("test.toml: retry.{key}: {expected}"),
        );
        check(
            &format!("{MINIMAL}[targets.StatusPage.retry]\n{key} = {value}\n"),
            &format!("test.toml: targets.StatusPage: retry.{key}: {expected}"),
        );
    }
}

#[test]
fn the_dead_letter_guarantees_cannot_be_overridden() {
    for (section, key, value) in [
        ("producer", "acks", "1"),
        ("producer", "request.required.acks", "1"),
        ("producer", "enable.idempotence", "false"),
        ("properties", "acks", "0"),
        ("properties", "enable.idempotence", "false"),
    ] {
        let toml = MINIMAL.replace(
            "[targets.StatusPage]",
            &format!("[kafka.{section}]\n\"{key}\" = \"{value}\"\n\n[targets.StatusPage]"),
        );
        check(
            &toml,
            &format!(
                "test.toml: kafka.{section}.{key}: Clarion sets this itself \
                 (acks=all and enable.idempotence=true: a dead letter counts only once \
                 every in-sync replica has it, exactly once); remove it"
            ),
        );
    }
}

#[test]
fn every_missing_secret_is_reported_at_once() {
    let toml = format!(
        "{}{GATEWAY}key = {{ env = \"CLARION_TEST_UNSET_GW\" }}\n\
         [kafka.secret_properties]\n\"sasl.password\" = {{ env = \"CLARION_TEST_UNSET_SASL\" }}\n",
        MINIMAL.replace(
            "secrets = [{ value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }]",
            "secrets = [{ env = \"CLARION_TEST_UNSET_A\" }, { value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }, { file = \"/nonexistent/b.whsec\" }]",
        )
    );
    check(
        &toml,
        "test.toml: 4 problems:\n  \
         - kafka.secret_properties.sasl.password: environment variable CLARION_TEST_UNSET_SASL is not set\n  \
         - targets.StatusPage: secrets[0]: environment variable CLARION_TEST_UNSET_A is not set\n  \
         - targets.StatusPage: secrets[2]: cannot read secret file /nonexistent/b.whsec: No such file or directory (os error 2)\n  \
         - targets.noc-sms: key: environment variable CLARION_TEST_UNSET_GW is not set",
    );
    // A preview resolves none of them and builds no channel.
    let s = parse_str(&toml)
        .and_then(|raw| raw.validate_for_preview("test.toml"))
        .expect("a preview needs no secrets");
    assert_eq!(s.targets.len(), 2);
}

#[test]
fn audiences_as_a_table_declare_audiences_and_their_deadlines() {
    let toml = MINIMAL.replace(
        "[targets.StatusPage]",
        "[audiences.regulators]\nfirst_notice_within = \"120m\"\n\n\
         [audiences.regulators.deadlines]\nresolved = \"30m\"\n\n\
         [audiences.partners]\n\n[targets.StatusPage]",
    );
    let settings = parse_str(&toml)
        .and_then(|raw| raw.validate("test.toml", &EnvSecrets))
        .expect("valid");
    assert!(settings.audiences.contains("partners"));
    let regs = &settings.deadlines["regulators"];
    assert_eq!(regs.first_notice_within, Some(Duration::from_secs(7200)));
    assert_eq!(
        regs.by_status.get(&clarion_core::Status::Resolved),
        Some(&Duration::from_secs(1800))
    );
    assert_eq!(regs.warn_at, DEFAULT_WARN_AT);
    assert!(
        !settings.deadlines.contains_key("partners"),
        "no deadline, no clock"
    );
    // A typo in a deadline key is named, not "did not match any variant".
    let typo = toml.replace("first_notice_within", "first_notice_in");
    let err = parse_str(&typo).map(|_| ()).expect_err("refused");
    assert!(
        format!("{err:#}").contains("unknown field `first_notice_in`"),
        "{err:#}"
    );
    check(
        &toml.replace(
            "[audiences.partners]",
            "[audiences.partners]\nwarn_at = 1.5",
        ),
        "test.toml: audiences.partners.warn_at: must be between 0 and 1 (e.g. 0.8), not 1.5",
    );
}

/// A status page with one directory origin, `public` declared or not.
fn status_page_config(declare_public: bool, page: &str, origin: &str) -> String {
    format!(
        r#"
{audiences}
[kafka]
brokers = "127.0.0.1:9092"
topic = "incident-updates"
dead_letter_topic = "clarion-dlq"

{page}

[targets.site]
type = "status_page"
directory = "/var/www/status"
{origin}
"#,
        audiences = if declare_public {
            "audiences = [\"public\"]"
        } else {
            ""
        },
    )
}

const PAGE: &str = r#"[status_page]
id = "example"
name = "Example Status"
url = "https://status.example.com"
topic = "clarion-status-page"
[[status_page.components]]
id = "mobile-data"
name = "Mobile data""#;

#[test]
fn a_status_page_is_checked_against_its_audiences_and_origins() {
    check(
        &status_page_config(true, PAGE, "audiences = [\"public\"]"),
        "ok: 1 target(s)",
    );
    check(
        &status_page_config(false, PAGE, "audiences = [\"customers\"]"),
        "test.toml: status_page.audiences: `public` is not a standard audience nor listed in the top-level `audiences` (add it there, e.g. audiences = [\"public\"])",
    );
    check(
        &status_page_config(true, PAGE, "audiences = [\"customers\"]"),
        "test.toml: targets.site.audiences: `customers` is not one the page shows (status_page.audiences = [\"public\"]); an origin publishes the page, which shows only those",
    );
    check(
        &status_page_config(true, "", "audiences = [\"public\"]"),
        "test.toml: targets.site: a status_page target publishes the page that `[status_page]` describes; add that section",
    );
    check(
        &status_page_config(
            true,
            &PAGE.replace("https://status.example.com", "https://status.example.com/"),
            "audiences = [\"public\"]",
        ),
        "test.toml: status_page.url: `https://status.example.com/` must be an http(s) URL without a trailing `/`, e.g. https://status.example.com",
    );
    check(
        &status_page_config(
            true,
            PAGE,
            "audiences = [\"public\"]\ndrill_recipients = [\"x\"]",
        ),
        "test.toml: targets.site: drill_recipients: a status page origin publishes the public page, which a drill never reaches",
    );
}
