//! The `clarion` binary as a user runs it: the demo (README command one) and
//! `check-config` on good and broken files.

use clarion_tests::daemon::binary;
use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    for (k, v) in env {
        cmd.env(k, v);
    }
    for var in SHIPPED_SECRETS.iter().map(|(k, _)| k) {
        cmd.env_remove(var);
    }
    // The file must be the one each test names, not one from the caller's shell.
    cmd.env_remove("CLARION_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run clarion");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_delivers_every_update_including_retries() {
    let (code, stdout, stderr) = run(&["demo"], &[]);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("48 deliveries of 48 expected; 4 needed retries; 0 dead-lettered."),
        "{stdout}"
    );
    // Email went through the demo's SMTP capture, one message per recipient.
    assert!(
        stdout.contains("The SMTP capture received 20 messages."),
        "{stdout}"
    );
    // The receiver that fails twice shows three attempts on every row.
    let regulator_rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("regulator-portal"))
        .collect();
    assert_eq!(regulator_rows.len(), 4);
    assert!(
        regulator_rows
            .iter()
            .all(|l| l.split_whitespace().nth(5) == Some("3")),
        "{regulator_rows:?}"
    );
}

/// The secrets config/clarion.toml references.
const SHIPPED_SECRETS: [(&str, &str); 5] = [
    (
        "STATUSPAGE_WEBHOOK_SECRET",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ),
    (
        "REGULATOR_WEBHOOK_SECRET",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ),
    ("SMTP_PASSWORD", "example"),
    ("TWILIO_AUTH_TOKEN", "example"),
    ("VONAGE_API_SECRET", "example"),
];

#[test]
fn shipped_example_config_is_valid_when_its_secrets_are_set() {
    let (code, stdout, stderr) = run(&["check-config", "config/clarion.toml"], &SHIPPED_SECRETS);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("config/clarion.toml: valid (5 targets)"),
        "{stdout}"
    );

    let without_regulator: Vec<(&str, &str)> = SHIPPED_SECRETS
        .iter()
        .copied()
        .filter(|(k, _)| *k != "REGULATOR_WEBHOOK_SECRET")
        .collect();
    let (code, _, stderr) = run(&["check-config", "config/clarion.toml"], &without_regulator);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("targets.regulator: secrets[0]: environment variable REGULATOR_WEBHOOK_SECRET is not set"),
        "{stderr}"
    );
}

#[test]
fn shipped_status_page_config_is_valid() {
    let mut secrets = SHIPPED_SECRETS.to_vec();
    secrets.push(("STATUS_S3_KEY_ID", "AKIAEXAMPLEEXAMPLE00"));
    secrets.push((
        "STATUS_S3_SECRET",
        "example-secret-access-key-0000000000000",
    ));
    let (code, stdout, stderr) = run(
        &["check-config", "config/status-page/clarion.toml"],
        &secrets,
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("config/status-page/clarion.toml: valid (3 targets)"),
        "{stdout}"
    );
    let without: Vec<(&str, &str)> = secrets
        .iter()
        .copied()
        .filter(|(k, _)| *k != "STATUS_S3_SECRET")
        .collect();
    let (code, _, stderr) = run(
        &["check-config", "config/status-page/clarion.toml"],
        &without,
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("targets.status-s3: s3.secret_access_key: environment variable STATUS_S3_SECRET is not set"),
        "{stderr}"
    );
}

#[test]
fn shipped_people_config_and_its_directory_are_valid() {
    let (code, stdout, stderr) = run(
        &["check-config", "config/people/clarion.toml"],
        &SHIPPED_SECRETS,
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "customer-reach (people, audiences: customers), fallback: sms (sms) → email (email)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("directory config/people/people.csv: 4 people (customers: 3)"),
        "{stdout}"
    );
    // A broken row is reported with its line, and the config refused.
    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("clarion-people-cli"));
    std::fs::create_dir_all(&dir).expect("dir");
    let toml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/people/clarion.toml"
    ))
    .expect("config");
    std::fs::write(dir.join("clarion.toml"), toml).expect("config");
    std::fs::write(
        dir.join("people.csv"),
        "id,audiences,sms\nu-1,customers,+15145550100\nu-2,customers,0800 123\n",
    )
    .expect("csv");
    let path = dir.join("clarion.toml").display().to_string();
    let (code, stdout, stderr) = run(&["check-config", &path], &SHIPPED_SECRETS);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("directory.file:") && stderr.contains("people.csv:3: sms:"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("0800 123"),
        "a number is never echoed whole: {stderr}"
    );
}

#[test]
fn route_and_render_explain_the_sample_incident() {
    let (code, stdout, stderr) = run(
        &[
            "route",
            "--event",
            "docs/examples/investigating.json",
            "--config",
            "config/clarion.toml",
        ],
        &SHIPPED_SECRETS,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_string()
    };
    assert!(
        line("regulator-mail").contains("yes")
            && line("regulator-mail").contains("rule `milestones`"),
        "{stdout}"
    );
    assert!(line("quebec-sms").contains("rule `incidents`"), "{stdout}");

    let (code, stdout, stderr) = run(
        &[
            "render",
            "--event",
            "docs/examples/investigating.json",
            "--config",
            "config/clarion.toml",
        ],
        &SHIPPED_SECRETS,
    );
    assert_eq!(code, Some(0), "{stderr}");
    // Each target's own rendering, consistent ids everywhere.
    assert!(
        stdout.contains(
            "Incident notification INC-2026-0142 (initial): Mobile data outage in the north region"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("Enquête en cours : Mobile data outage in the north region."),
        "{stdout}"
    );
    assert!(stdout.contains("(SMS: Ucs2, "), "{stdout}");
    assert!(
        stdout.contains("\"blocks\""),
        "the Slack preset for ops-chat: {stdout}"
    );
    assert!(stdout.contains("[standard payload]"), "{stdout}");
    assert!(stdout.contains("INC-2026-0142-u1"), "{stdout}");
}

#[test]
fn check_config_rejects_broken_templates_naming_file_and_line() {
    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("templates"));
    let base = "[kafka]\nbrokers = \"b:9092\"\ntopic = \"t\"\ndead_letter_topic = \"d\"\n[templates]\ndir = \"templates\"\n\n\
        [targets.hook]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"https://example.com/h\"\n\n\
        [targets.text]\ntype = \"sms\"\naudiences = [\"customers\"]\nprovider = \"http\"\nurl = \"https://sms.example.com/send\"\nmax_segments = 1\nrecipients = { customers = [\"+447700900123\"] }\n";
    let check = |name: &str, file: &str, template: &str, expected: &[&str]| {
        let case = dir.join(name);
        let path = case.join("templates").join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
        std::fs::write(&path, template).expect("template");
        let config = case.join("clarion.toml");
        std::fs::write(&config, base).expect("config");
        let (code, _, stderr) = run(&["check-config", config.to_str().expect("utf-8")], &[]);
        assert_eq!(code, Some(1), "{name} must be rejected");
        for e in expected {
            assert!(stderr.contains(e), "{name}: expected `{e}` in:\n{stderr}");
        }
    };
    check(
        "syntax",
        "email/subject.j2",
        "{{ title ",
        &["email/subject.j2:1: syntax error"],
    );
    check(
        "unknown-field",
        "sms/text.j2",
        "{{ title }}\n{{ no_such_field }}",
        &["sms/text.j2:2", "no_such_field"],
    );
    check(
        "invalid-json",
        "targets/hook/body.json.j2",
        "{\"text\": {{ title }},}",
        &["body.json.j2", "JSON"],
    );
    check(
        "over-budget",
        "sms/text.j2",
        "{{ message }} {{ message }} {{ message }}",
        &["sms/text.j2", "max_segments = 1"],
    );
}

#[test]
fn check_config_names_the_file_and_key() {
    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("check-config"));
    std::fs::create_dir_all(&dir).expect("dir");
    let check = |name: &str, toml: &str, expected: &str| {
        let path = dir.join(name);
        std::fs::write(&path, toml).expect("write");
        let (code, _, stderr) = run(&["check-config", path.to_str().expect("utf-8 path")], &[]);
        assert_eq!(code, Some(1), "{name} must be rejected");
        assert!(
            stderr.contains(expected),
            "{name}: expected `{expected}` in:\n{stderr}"
        );
        assert!(
            stderr.contains(name),
            "{name}: the file is named in:\n{stderr}"
        );
    };
    let base = "[kafka]\nbrokers = \"b:9092\"\ntopic = \"t\"\ndead_letter_topic = \"d\"\n";
    let hook = "[targets.h]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"https://example.com/h\"\n";
    check(
        "typo.toml",
        &format!("{base}max_inflight = 3\n{hook}"),
        "unknown field `max_inflight`",
    );
    // Two parts, since whether the message repeats the URL is the webhook crate's
    // business (a URL may carry a credential).
    let ftp = format!(
        "{base}{}",
        hook.replace("https://example.com/h", "ftp://example.com/h")
    );
    check("url.toml", &ftp, "targets.h: url: ");
    check("url.toml", &ftp, "must be an http:// or https:// URL");
    check(
        "secret.toml",
        &format!("{base}{hook}secrets = [{{ value = \"not-a-secret\" }}]\n"),
        "targets.h: secrets[0]: must start with `whsec_`",
    );
    check(
        "same-topic.toml",
        &format!("{}{hook}", base.replace("\"d\"", "\"t\"")),
        "kafka.dead_letter_topic: must differ from kafka.topic",
    );
    check("no-targets.toml", base, "no target is configured");
    check(
        "owned.toml",
        &format!("{base}[kafka.consumer]\n\"enable.auto.offset.store\" = \"true\"\n{hook}"),
        "Clarion sets this itself",
    );
    check(
        "duration.toml",
        &format!("{base}[daemon]\nshutdown_grace = \"soon\"\n{hook}"),
        "shutdown_grace",
    );
    // The SMS gateway's status list was once `retry`, which is the retry policy's
    // key: `retry = [429]` passed and meant max_attempts = 429.
    let gateway = "[targets.s]\ntype = \"sms\"\naudiences = [\"employees\"]\nprovider = \"http\"\n\
        url = \"https://sms.example.com/send\"\nrecipients = { employees = [\"+12025550123\"] }\n";
    check(
        "gateway-retry.toml",
        &format!("{base}{gateway}retry = [429]\n"),
        "targets.s: retry: is this target's retry policy, a table (max_attempts, max_elapsed, \
         initial_backoff, max_backoff, attempt_timeout); the HTTP gateway's statuses to retry \
         are `retry_statuses`, e.g. retry_statuses = [429, 503]",
    );
    check(
        "max-elapsed.toml",
        &format!("{base}[retry]\nmax_elapsed = \"0s\"\n{hook}"),
        "retry.max_elapsed: must be more than zero",
    );
    check(
        "acks.toml",
        &format!("{base}[kafka.producer]\nacks = \"1\"\n{hook}"),
        "kafka.producer.acks: Clarion sets this itself (acks=all and enable.idempotence=true",
    );
    check(
        "idempotence.toml",
        &format!("{base}[kafka.producer]\n\"enable.idempotence\" = \"false\"\n{hook}"),
        "kafka.producer.enable.idempotence: Clarion sets this itself",
    );
    // Valid key by key, refused by librdkafka only together or when it makes a
    // client: found by check-config, not by the daemon's start.
    check(
        "fetch-size.toml",
        &format!(
            "{base}[kafka.consumer]\n\"message.max.bytes\" = \"4000000\"\n\"fetch.max.bytes\" = \"2000000\"\n{hook}"
        ),
        "kafka.consumer: librdkafka refuses the consumer: ",
    );
    check(
        "ca-file.toml",
        &format!(
            "{base}[kafka.producer]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"/nonexistent/ca.pem\"\n{hook}"
        ),
        "kafka.producer: librdkafka refuses the producer: ",
    );
    let path = dir.join("gateway-ok.toml");
    std::fs::write(
        &path,
        format!("{base}{gateway}retry_statuses = [429, 503]\n"),
    )
    .expect("write");
    let (code, stdout, stderr) = run(&["check-config", path.to_str().expect("utf-8")], &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    let (code, _, stderr) = run(&["check-config", "/nonexistent/clarion.toml"], &[]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("/nonexistent/clarion.toml does not exist"),
        "{stderr}"
    );
    // A directory is there: saying "not found" sends the reader hunting for a typo.
    let (code, _, stderr) = run(&["check-config", "config"], &[]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(
            "config file config is a directory; give the TOML file in it, e.g. config/clarion.toml"
        ),
        "{stderr}"
    );
}

#[test]
fn check_config_reports_every_missing_secret_at_once() {
    let (code, stdout, stderr) = run(&["check-config", "config/clarion.toml"], &[]);
    assert_eq!(code, Some(1), "{stdout}");
    let expected = "error: invalid configuration: config/clarion.toml: 5 problems:\n  \
        - targets.quebec-sms: auth_token: environment variable TWILIO_AUTH_TOKEN is not set\n  \
        - targets.quebec-sms: backups[0].api_secret: environment variable VONAGE_API_SECRET is not set\n  \
        - targets.regulator: secrets[0]: environment variable REGULATOR_WEBHOOK_SECRET is not set\n  \
        - targets.regulator-mail: password: environment variable SMTP_PASSWORD is not set\n  \
        - targets.status-page: secrets[0]: environment variable STATUSPAGE_WEBHOOK_SECRET is not set\n";
    assert_eq!(stderr, expected);
}

/// README's check-config command, read from README.md and run as written (with the
/// built binary in place of `target/release/clarion`), so the two cannot drift.
#[test]
fn readme_check_config_command_works_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let lines: Vec<&str> = readme.lines().collect();
    let end = lines
        .iter()
        .position(|l| l.contains("/clarion check-config"))
        .expect("README shows a check-config command of the built binary");
    // The command starts after the previous line that does not continue onto the next.
    let start = (0..end)
        .rev()
        .find(|&i| !lines[i].trim_end().ends_with('\\'))
        .map_or(0, |i| i + 1);
    let command: String = lines[start..=end]
        .iter()
        .map(|l| l.trim_end().trim_end_matches('\\'))
        .collect::<Vec<_>>()
        .join(" ");
    let command = command.split(" #").next().unwrap_or("");
    let words: Vec<&str> = command.split_whitespace().collect();
    let program = words
        .iter()
        .position(|w| w.ends_with("/clarion"))
        .unwrap_or_else(|| panic!("no clarion binary in `{command}`"));
    let env: Vec<(&str, &str)> = words[..program]
        .iter()
        .map(|w| {
            w.split_once('=')
                .unwrap_or_else(|| panic!("`{w}` in `{command}`"))
        })
        .collect();
    let (code, stdout, stderr) = run(&words[program + 1..], &env);
    assert_eq!(code, Some(0), "`{command}`:\n{stdout}{stderr}");
    assert!(
        stdout.contains("config/clarion.toml: valid (5 targets)"),
        "{stdout}"
    );
}

#[test]
fn check_config_takes_the_file_as_run_does_or_positionally() {
    for args in [
        &["check-config", "--config", "config/clarion.toml"][..],
        &["check-config", "-c", "config/clarion.toml"],
        &["check-config", "config/clarion.toml"],
    ] {
        let (code, stdout, stderr) = run(args, &SHIPPED_SECRETS);
        assert_eq!(code, Some(0), "{args:?}: {stdout}{stderr}");
        assert!(
            stdout.contains("config/clarion.toml: valid (5 targets)"),
            "{args:?}: {stdout}"
        );
    }
    // Given twice, the file would be ambiguous.
    let (code, _, stderr) = run(
        &["check-config", "-c", "config/clarion.toml", "other.toml"],
        &SHIPPED_SECRETS,
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("cannot be used with"), "{stderr}");
    // CLARION_CONFIG is the default, which a file named on the command line overrides.
    let mut env = SHIPPED_SECRETS.to_vec();
    env.push(("CLARION_CONFIG", "/nonexistent/clarion.toml"));
    let (code, stdout, stderr) = run(&["check-config", "config/clarion.toml"], &env);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

#[test]
fn previews_need_no_secrets() {
    // `run` strips every secret the shipped config names from the environment.
    for command in ["route", "render"] {
        let (code, stdout, stderr) = run(
            &[
                command,
                "--event",
                "docs/examples/investigating.json",
                "--config",
                "config/clarion.toml",
            ],
            &[],
        );
        assert_eq!(code, Some(0), "{command}: {stdout}{stderr}");
        assert!(stdout.contains("quebec-sms"), "{command}: {stdout}");
    }
}

#[test]
fn an_unknown_target_lists_the_configured_ones() {
    let (code, _, stderr) = run(
        &[
            "render",
            "--event",
            "docs/examples/investigating.json",
            "--target",
            "quebec",
        ],
        &[],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "error: no target named `quebec` in config/clarion.toml; its targets are: \
         ops-chat, quebec-sms, regulator, regulator-mail, status-page\n"
    );
}
