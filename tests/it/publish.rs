//! `clarion publish` against the real broker, run as ops run it: the binary, with
//! its exit code and its output. Sequences come from what Kafka holds, keys land
//! where Java's (and kcat's murmur2) partitioner puts them, impossible transitions
//! are refused, an unreachable cluster is waited out and reported once, and
//! `--follow` is watched on a real terminal (tmux) while a daemon delivers.

use clarion_tests::daemon::{Process, Wiring, binary};
use clarion_tests::kafka::{create_topic, read_all};
use clarion_tests::receiver::{Behaviour, Receiver};
use clarion_tests::unique_topic;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);

/// Writes `toml` as a config file of its own directory and returns its path.
fn write_config(toml: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_topic(name));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("clarion.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

/// One webhook target per (name, url), for `customers` and `regulators`.
fn hooks(targets: &[(&str, &str)]) -> String {
    targets
        .iter()
        .map(|(name, url)| {
            format!(
                "[targets.{name}]\ntype = \"webhook\"\naudiences = [\"customers\", \"regulators\"]\nurl = \"{url}\"\n"
            )
        })
        .collect()
}

/// Runs `clarion publish -c CONFIG ARGS…` with no terminal.
fn publish(config: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .arg("publish")
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run clarion publish")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The args of a complete update of `incident`.
fn update_args<'a>(incident: &'a str, status: &'a str) -> Vec<&'a str> {
    vec![
        "--incident",
        incident,
        "--status",
        status,
        "--impact",
        "major",
        "--title",
        "Calls failing in the North",
        "--message",
        "We are investigating failed calls.",
        "--audiences",
        "customers,regulators",
    ]
}

/// Every record of `topic` as (key, partition, value).
async fn records(brokers: &str, topic: &str, want: usize) -> Vec<(String, i32, Value)> {
    // publish exits only once the broker acknowledged (acks=all), so what it wrote
    // is readable at once; the wait is for an extra record that must not be there.
    read_all(brokers, topic, want, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.payload).expect("records are JSON");
            (r.key.unwrap_or_default(), r.partition, v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_numbers_updates_from_kafka_keys_them_and_refuses_after_resolved() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let w = Wiring::new(&brokers, "publish-seq", 3).await;
    let config = write_config(
        &w.config(&hooks(&[("hook", "http://127.0.0.1:9/hook")])),
        "publish-seq",
    );

    // Without a terminal and without --yes, nothing is published.
    let refused = publish(&config, &update_args("INC-P1", "investigating"));
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("pass --yes"),
        "{}",
        text(&refused)
    );

    let mut args = update_args("INC-P1", "investigating");
    args.push("--yes");
    let first = publish(&config, &args);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    // The next one leaves title, impact and audiences out: they carry forward.
    let second = publish(
        &config,
        &[
            "--incident",
            "INC-P1",
            "--status",
            "resolved",
            "--message",
            "Service is restored.",
            "--yes",
        ],
    );
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("published INC-P1-u2 (sequence 2)"),
        "{}",
        text(&second)
    );

    // After `resolved`, another update is refused unless it says --reopen.
    let mut after = update_args("INC-P1", "investigating");
    after.push("--yes");
    let refused = publish(&config, &after);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--reopen"),
        "{}",
        text(&refused)
    );
    after.push("--reopen");
    let reopened = publish(&config, &after);
    assert_eq!(reopened.status.code(), Some(0), "{}", text(&reopened));

    // What is on the topic: three updates, keyed by incident, numbered 1, 2, 3, on
    // one partition, and exactly what the daemon accepts.
    let got = records(&brokers, &w.topic, 4).await;
    assert_eq!(got.len(), 3, "{got:?}");
    for (i, (key, partition, v)) in got.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(key, "INC-P1");
        assert_eq!(*partition, got[0].1, "one incident, one partition");
        assert_eq!(v["sequence"], n);
        assert_eq!(v["update_id"], format!("INC-P1-u{n}"));
        clarion_core::IncidentUpdate::from_slice(&serde_json::to_vec(v).expect("json"), 1 << 20)
            .expect("the daemon accepts it");
    }
    assert_eq!(got[1].2["status"], "resolved");
    assert_eq!(got[1].2["title"], "Calls failing in the North");
    assert_eq!(
        got[1].2["audiences"],
        serde_json::json!(["customers", "regulators"])
    );
    assert_eq!(got[2].2["status"], "investigating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_with_murmur2_and_publish_put_an_incident_on_the_same_partition() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let w = Wiring::new(&brokers, "publish-partition", 12).await;
    let config = write_config(
        &w.config(&hooks(&[("hook", "http://127.0.0.1:9/hook")])),
        "publish-part",
    );
    let incidents: Vec<String> = (1..=8).map(|i| format!("INC-KEY-{i}")).collect();
    for id in &incidents {
        // The first update by hand, as ops did before `publish` existed.
        let update = serde_json::json!({
            "schema_version": 1, "incident_id": id, "update_id": format!("{id}-kcat"),
            "sequence": 1, "status": "investigating", "impact": "minor",
            "title": "Degraded", "message": "Looking into it.",
            "audiences": ["customers"], "occurred_at": "2026-11-30T10:00:00Z"
        });
        let mut kcat = Command::new("kcat")
            .args([
                "-P",
                "-b",
                &brokers,
                "-t",
                &w.topic,
                "-X",
                "partitioner=murmur2_random",
                "-k",
            ])
            .arg(id)
            .stdin(Stdio::piped())
            .spawn()
            .expect("kcat (Debian's kcat package; scripts/test installs it)");
        use std::io::Write as _;
        kcat.stdin
            .take()
            .expect("stdin")
            .write_all(format!("{update}\n").as_bytes())
            .expect("write to kcat");
        assert!(kcat.wait().expect("kcat").success(), "kcat failed");
    }
    for id in &incidents {
        let o = publish(
            &config,
            &[
                "--incident",
                id,
                "--status",
                "identified",
                "--message",
                "Found it.",
                "--yes",
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let got = records(&brokers, &w.topic, 2 * incidents.len()).await;
    assert_eq!(got.len(), 2 * incidents.len(), "{got:?}");
    let mut partitions = std::collections::BTreeSet::new();
    for id in &incidents {
        let mine: Vec<&(String, i32, Value)> = got.iter().filter(|(k, _, _)| k == id).collect();
        assert_eq!(mine.len(), 2, "{id}: {mine:?}");
        assert_eq!(
            mine[0].1, mine[1].1,
            "{id}: kcat's and publish's records on one partition"
        );
        // publish found kcat's update (sequence 1) and numbered its own after it.
        assert_eq!(mine[0].2["update_id"], format!("{id}-kcat"));
        assert_eq!(mine[1].2["sequence"], 2, "{id}");
        partitions.insert(mine[0].1);
    }
    // The ids spread over several partitions, so agreement is not an accident of
    // everything landing on one.
    assert!(partitions.len() >= 3, "partitions used: {partitions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_reported_once_and_waited_out_until_the_timeout() {
    // A port with nothing listening: every connection is refused at once, so
    // librdkafka retries many times within the timeout.
    let port = clarion_tests::free_port();
    let toml = format!(
        "[kafka]\nbrokers = \"127.0.0.1:{port}\"\ntopic = \"t\"\ndead_letter_topic = \"d\"\ngroup_id = \"g\"\n{}",
        hooks(&[("hook", "http://127.0.0.1:9/hook")])
    );
    let config = write_config(&toml, "publish-down");
    let mut args = update_args("INC-DOWN", "investigating");
    args.extend(["--yes", "--timeout", "4s"]);
    let o = publish(&config, &args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        err.matches("is unreachable").count(),
        1,
        "one line per state change, not per retry: {}",
        text(&o)
    );
    assert!(
        err.contains("gave up") && err.contains("nothing was published"),
        "{}",
        text(&o)
    );
}

/// The tmux pane's text now.
fn capture(session: &str) -> String {
    let o = Command::new("tmux")
        .args(["capture-pane", "-p", "-t", session])
        .output()
        .expect("tmux capture-pane");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Kills the tmux session when the test ends, however it ends.
struct Tmux(String);

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_on_a_terminal_shows_every_target_delivered() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!(
            "SKIPPED follow_on_a_terminal_shows_every_target_delivered: tmux is not installed (scripts/test installs it)"
        );
        return;
    }
    let w = Wiring::new(&brokers, "publish-follow", 2).await;
    let ledger = unique_topic("publish-ledger");
    let state = unique_topic("publish-state");
    create_topic(&brokers, &ledger, 2).await;
    create_topic(&brokers, &state, 1).await;
    let status_page = Receiver::start(Behaviour::Always(200)).await;
    // The regulator's endpoint fails twice per message first: the view shows it
    // landing late, after retries.
    let regulator = Receiver::start(Behaviour::PerMessage(vec![503, 503, 200])).await;
    let toml = w
        .config(&hooks(&[
            ("status-page", &status_page.url),
            ("regulator", &regulator.url),
        ]))
        .replacen(
            &format!("group_id = \"{}\"", w.group),
            &format!(
                "group_id = \"{}\"\nledger_topic = \"{ledger}\"\nincident_state_topic = \"{state}\"",
                w.group
            ),
            1,
        );
    let daemon = Process::start(&toml, "publish-follow");
    let config = daemon.config_path().to_path_buf();
    // Publish once the three streams (events and one per target) are in their
    // groups, so that what the screen shows is delivery, not the daemon's start.
    let deadline = tokio::time::Instant::now() + WAIT;
    while daemon.log_text().matches("partitions assigned").count() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon's streams did not join; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let session = unique_topic("clarion-follow");
    let _guard = Tmux(session.clone());
    let command = format!(
        "{bin} publish -c {config} --incident INC-FOLLOW --status investigating --impact major \
         --title 'Calls failing' --message 'We are investigating.' --audiences customers,regulators \
         --follow --follow-timeout 100s; echo \"EXIT=$?\"; sleep 600",
        bin = binary().display(),
        config = config.display()
    );
    let ok = Command::new("tmux")
        .args([
            "new-session",
            "-d",
            "-x",
            "150",
            "-y",
            "40",
            "-s",
            &session,
            &command,
        ])
        .status()
        .expect("tmux new-session")
        .success();
    assert!(ok, "tmux new-session failed");

    // On a terminal it asks, as it would ask ops; nothing is published before the
    // answer.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut screen = capture(&session);
    while !screen.contains("Publish this update? [y/N]") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no question on the terminal:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        screen = capture(&session);
    }
    assert!(!screen.contains("published INC-FOLLOW"), "{screen}");
    let answered = Command::new("tmux")
        .args(["send-keys", "-t", &session, "y", "Enter"])
        .status()
        .expect("tmux send-keys")
        .success();
    assert!(answered, "tmux send-keys failed");
    while !screen.contains("EXIT=") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        screen = capture(&session);
    }
    // Kept for docs/publishing.md and for whoever reads a failure.
    eprintln!("--- the terminal after --follow:\n{screen}");
    assert!(
        screen.contains("EXIT=0"),
        "exit 0 when every target is reached:\n{screen}\ndaemon log:\n{}",
        daemon.log_text()
    );
    for target in ["status-page", "regulator"] {
        assert!(
            screen
                .lines()
                .any(|l| l.starts_with(target) && l.contains(" delivered ") && l.contains("1/1")),
            "{target} delivered on screen:\n{screen}"
        );
    }
    assert!(screen.contains("every target reached"), "{screen}");
    assert!(screen.contains("2/2 deliveries final"), "{screen}");
    assert!(
        screen.contains("audience regulators   2/2 targets reached"),
        "{screen}"
    );
    // Redrawn in place: the table header is on the screen once, not once per change.
    assert_eq!(
        screen.matches("TARGET               CHANNEL").count(),
        1,
        "{screen}"
    );
    // And the receivers agree with the screen.
    assert_eq!(status_page.delivered().len(), 1);
    assert_eq!(regulator.delivered().len(), 1);
    assert_eq!(regulator.received().len(), 3, "two 503s, then 200");
}

/// Email and SMS targets that are never reached (no daemon runs): they only shape
/// the preview.
const LISTED_TARGETS: &str = r#"
[targets.regulator-mail]
type = "email"
audiences = ["regulators"]
host = "127.0.0.1"
port = 9
tls = "none"
from = "Incident Desk <incidents@example.com>"
[targets.regulator-mail.recipients]
regulators = ["duty@regulator.example", "Desk <DESK@regulator.example>", "list:eu"]
[targets.regulator-mail.lists]
eu = ["desk@regulator.example", "nis2@authority.example"]

[targets.customer-sms]
type = "sms"
audiences = ["customers"]
provider = "twilio"
account_sid = "AC00000000000000000000000000000000"
auth_token = { env = "G2_UNSET_TWILIO_TOKEN" }
messaging_service_sid = "MG00000000000000000000000000000000"
max_segments = 4
[targets.customer-sms.recipients]
customers = ["+15145550100", "+14185550101"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holding_statement_is_published_filled_in_and_checked_by_check_config() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let w = Wiring::new(&brokers, "publish-statement", 2).await;
    let config = write_config(&w.config(LISTED_TARGETS), "publish-statement");
    let dir = config.parent().expect("config dir").join("statements");
    std::fs::create_dir_all(&dir).expect("statements dir");
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/statements/carrier-outage.toml"
    );
    std::fs::copy(shipped, dir.join("carrier-outage.toml")).expect("copy the shipped statement");

    let base = [
        "--statement",
        "carrier-outage",
        "--incident",
        "INC-S1",
        "--regions",
        "North,East",
        "--components",
        "mobile-data",
    ];
    // A placeholder without a value is named, with the flag that gives it.
    let missing = publish(&config, &[&base[..], &["--yes"]].concat());
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("--set next_update="),
        "{}",
        text(&missing)
    );

    let o = publish(
        &config,
        &[&base[..], &["--set", "next_update=15:30 UTC", "--yes"]].concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // The preview: recipients as the channels count them (the email list's
    // duplicate of DESK@ counts once), and the SMS text's segments.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("regulator-mail") && l.split_whitespace().nth(2) == Some("3")),
        "3 distinct regulator addresses:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("customer-sms")
            && l.split_whitespace().nth(2) == Some("2")
            && l.contains("segment(s) per recipient")),
        "2 numbers and the segments:\n{out}"
    );

    let got = records(&brokers, &w.topic, 2).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let v = &got[0].2;
    assert_eq!(got[0].0, "INC-S1");
    assert_eq!(v["sequence"], 1);
    assert_eq!(v["title"], "Service disruption: mobile-data in North, East");
    let regulators = v["audience_messages"]["regulators"]
        .as_str()
        .unwrap_or_default();
    assert!(
        regulators.contains("INC-S1") && regulators.contains("15:30 UTC"),
        "{regulators}"
    );
    for placeholder in ["{incident}", "{regions}", "{components}", "{next_update}"] {
        assert!(
            !v.to_string().contains(placeholder),
            "{placeholder} left in {v}"
        );
    }

    // check-config reads every statement: a broken one (an audience the config
    // does not know) fails it, naming the statement.
    std::fs::write(
        dir.join("broken.toml"),
        "status = \"investigating\"\nimpact = \"minor\"\naudiences = [\"partners\"]\ntitle = \"t\"\nmessage = \"m\"\n",
    )
    .expect("write");
    let check = Command::new(binary())
        .args(["check-config", "-c"])
        .arg(&config)
        .env("G2_UNSET_TWILIO_TOKEN", "x")
        .output()
        .expect("check-config");
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(
        err.contains("statement `broken`") && err.contains("partners"),
        "{}",
        text(&check)
    );
    std::fs::remove_file(dir.join("broken.toml")).expect("remove");
    let check = Command::new(binary())
        .args(["check-config", "-c"])
        .arg(&config)
        .env("G2_UNSET_TWILIO_TOKEN", "x")
        .output()
        .expect("check-config");
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("ok      statement carrier-outage"),
        "{}",
        text(&check)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_without_a_terminal_prints_each_outcome_and_exits_2_on_a_dead_letter() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let w = Wiring::new(&brokers, "publish-follow-dead", 2).await;
    let ledger = unique_topic("publish-ledger");
    create_topic(&brokers, &ledger, 2).await;
    let good = Receiver::start(Behaviour::Always(200)).await;
    // 400 is permanent: dead-lettered on the first attempt.
    let bad = Receiver::start(Behaviour::Always(400)).await;
    let toml = w
        .config(&hooks(&[("good", &good.url), ("bad", &bad.url)]))
        .replacen(
            &format!("group_id = \"{}\"", w.group),
            &format!("group_id = \"{}\"\nledger_topic = \"{ledger}\"", w.group),
            1,
        );
    let daemon = Process::start(&toml, "publish-follow-dead");
    let mut args = update_args("INC-DEAD", "investigating");
    args.extend(["--yes", "--follow", "--follow-timeout", "100s"]);
    let o = publish(daemon.config_path(), &args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}\ndaemon log:\n{}",
        text(&o),
        daemon.log_text()
    );
    // One line per ledger record, and no terminal escapes in a pipe.
    assert!(
        out.lines().any(|l| l.contains(" good ")
            && l.ends_with("provider id HTTP 200")
            && l.contains("delivered after 1 attempt(s)")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(" bad ") && l.contains("dead_lettered")),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "{out}");
    assert!(out.contains("some deliveries were dead-lettered"), "{out}");
    assert_eq!(good.delivered().len(), 1);
    assert_eq!(bad.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_for_a_cluster_that_comes_back_and_says_so_once_each_way() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let w = Wiring::new(&brokers, "publish-late", 1).await;
    // The config names a bootstrap address where nothing listens yet; after a few
    // seconds a proxy to the real broker opens there (the broker's metadata then
    // names its own address, as after a real outage).
    let port = clarion_tests::free_port();
    let toml = w
        .config(&hooks(&[("hook", "http://127.0.0.1:9/hook")]))
        .replacen(
            &format!("brokers = \"{brokers}\""),
            &format!("brokers = \"127.0.0.1:{port}\""),
            1,
        );
    let config = write_config(&toml, "publish-late");
    // The proxy opens once publish has said the cluster is unreachable, however long
    // the process took to start (on a loaded machine, longer than any fixed delay).
    let (said_down, down) = tokio::sync::oneshot::channel::<()>();
    let upstream = brokers.clone();
    tokio::spawn(async move {
        let _ = down.await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the late proxy");
        while let Ok((mut inbound, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let mut args = update_args("INC-LATE", "investigating");
    args.extend(["--yes", "--timeout", "60s"]);
    let mut child = Command::new(binary())
        .arg("publish")
        .arg("-c")
        .arg(&config)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run clarion publish");
    let stderr = child.stderr.take().expect("piped stderr");
    let read_err = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut said_down = Some(said_down);
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("is unreachable")
                && let Some(tx) = said_down.take()
            {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let o = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("publish ran")
        .expect("publish output");
    let o = Output {
        stderr: read_err.join().expect("stderr reader").into_bytes(),
        ..o
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(err.matches("is unreachable").count(), 1, "{}", text(&o));
    assert_eq!(err.matches("is reachable again").count(), 1, "{}", text(&o));
    let got = records(&brokers, &w.topic, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].2["update_id"], "INC-LATE-u1");
}
