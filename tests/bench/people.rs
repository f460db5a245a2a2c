//! `clarion-bench --people N`: one update to an N-person directory audience, by
//! email to Postfix's `smtp-sink`, walked by a people target in bounded batches.
//!
//! Reported: the time from publish to the last message, messages/s, the daemon's
//! peak RSS, and, with `--kill-at K`, the duplicates a SIGKILL after K messages
//! causes (the daemon is started again at once and resumes from the progress
//! topic). `smtp-sink -c` counts the messages it accepted (`mesg=`): with one
//! message per recipient, everything beyond N is a duplicate.

use anyhow::{Context, Result, bail};
use clarion_tests::daemon::Wiring;
use std::io::{BufRead, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

/// Runs the people benchmark.
pub async fn run(
    brokers: &str,
    clarion: &std::path::Path,
    people: u64,
    kill_at: Option<u64>,
) -> Result<()> {
    if !std::path::Path::new(SMTP_SINK).exists() {
        bail!("{SMTP_SINK} is missing (Debian package postfix)");
    }
    let w = Wiring::new(brokers, "bench-people", 1).await;
    let progress = clarion_tests::unique_topic("bench-people-progress");
    clarion_tests::kafka::create_topic(brokers, &progress, 1).await;
    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("clarion-bench-people"));
    std::fs::create_dir_all(&dir)?;

    // The directory: N customers with one address each.
    let started = Instant::now();
    let csv = dir.join("people.csv");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv)?);
        writeln!(f, "id,audiences,email")?;
        for i in 0..people {
            writeln!(f, "p{i:08},customers,person{i}@example.com")?;
        }
    }
    eprintln!(
        "bench: directory of {people} people written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // smtp-sink: accepts everything, counts messages (`-c`).
    let port = clarion_tests::free_port();
    let mut sink = std::process::Command::new(SMTP_SINK)
        .args(["-c", "-u", "nobody"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("1024")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting smtp-sink")?;
    let messages = Arc::new(AtomicU64::new(0));
    let last_change = Arc::new(std::sync::Mutex::new(Instant::now()));
    {
        let mut out = sink.stdout.take().context("smtp-sink stdout")?;
        let (messages, last_change) = (messages.clone(), last_change.clone());
        std::thread::spawn(move || {
            // `sess=N quit=N mesg=N\r`, rewritten after each message.
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while out.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
                if byte[0] == b'\r' || byte[0] == b'\n' {
                    let line = String::from_utf8_lossy(&buf);
                    if let Some(n) = line
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix("mesg="))
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        messages.store(n, Ordering::Relaxed);
                        *last_change.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    }
                    buf.clear();
                } else {
                    buf.push(byte[0]);
                }
            }
        });
    }
    if !clarion_tests::wait_for_port(port, Duration::from_secs(10)).await {
        bail!("smtp-sink did not start on {port}");
    }

    let targets = format!(
        r#"[directory]
file = "people.csv"
progress_topic = "{progress}"

[targets.reach]
type = "people"
audiences = ["customers"]
fallback = ["email"]

[targets.reach.email]
host = "127.0.0.1"
port = {port}
tls = "none"
from = "Example Telecom <status@example.com>"
"#
    );
    let config = dir.join("clarion.toml");
    std::fs::write(&config, w.config(&targets))?;
    let log_path = dir.join("clarion.log");
    let start_daemon = || -> Result<std::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        std::process::Command::new(clarion)
            .args(["run", "--config"])
            .arg(&config)
            .env(
                "RUST_LOG",
                "warn,clarion::engine::supervisor=info,clarion::engine::dispatch::walk=info",
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting clarion")
    };
    let mut daemon = start_daemon()?;
    let mut peak_kib = 0u64;
    // The daemon reads the directory and joins its groups before the update.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let update = crate::update(0);
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("partitioner", "murmur2_random")
        .create()?;
    // What loading the directory took, before any delivery.
    let loaded_kib = crate::peak_rss_kib(daemon.id()).unwrap_or(0);
    let published = Instant::now();
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&w.topic)
                .key(&update.incident_id)
                .payload(&serde_json::to_vec(&update)?),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    let mut killed_at = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(kib) = crate::peak_rss_kib(daemon.id()) {
            peak_kib = peak_kib.max(kib);
        }
        let n = messages.load(Ordering::Relaxed);
        if let (Some(k), None) = (kill_at, killed_at)
            && n >= k
        {
            daemon.kill()?;
            let _ = daemon.wait();
            killed_at = Some(messages.load(Ordering::Relaxed));
            eprintln!("bench: SIGKILL after {n} messages; starting the daemon again");
            daemon = start_daemon()?;
        }
        let quiet = last_change
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if n >= people && quiet > Duration::from_secs(10) && walk_done(&log_path)? {
            break;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            bail!(
                "the daemon exited ({status}); its log: {}",
                log_path.display()
            );
        }
        if Instant::now() > deadline {
            bail!("only {n} of {people} messages after an hour");
        }
    }
    let total = messages.load(Ordering::Relaxed);
    let took = {
        let last = *last_change.lock().unwrap_or_else(|e| e.into_inner());
        last.duration_since(published)
    };
    let cpu = crate::cpu_seconds(daemon.id());
    crate::stop(&mut daemon);
    let _ = sink.kill();
    println!(
        "mode:              one update to a directory audience of {people} people, email to smtp-sink"
    );
    println!("batches:           500 people per batch, 4 batches at once (the defaults)");
    println!(
        "time:              {:.1} s from publish to the last message ({:.0} messages/s)",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    println!(
        "messages:          {total} accepted by smtp-sink for {people} people: {} duplicate(s)",
        total.saturating_sub(people)
    );
    if let Some(k) = killed_at {
        println!(
            "sigkill:           after {k} messages; restarted at once, resumed from the progress topic"
        );
    }
    println!(
        "daemon peak RSS:   {:.1} MiB{}",
        peak_kib as f64 / 1024.0,
        if killed_at.is_some() {
            " (the larger of the two processes)"
        } else {
            ""
        }
    );
    println!(
        "  of which loading: {:.1} MiB peak before the update was published",
        loaded_kib as f64 / 1024.0
    );
    if let Some(cpu) = cpu {
        println!("daemon CPU:        {cpu:.1} s (the last process)");
    }
    Ok(())
}

/// True once the daemon logged the end of a walk.
fn walk_done(log: &std::path::Path) -> Result<bool> {
    let f = std::fs::File::open(log)?;
    Ok(std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("people target walked its audience")))
}
