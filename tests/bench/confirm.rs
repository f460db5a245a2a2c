//! `clarion-bench --confirm N`: N notices that must be confirmed (N updates to a
//! webhook target with `confirm`, one recipient each: N confirmation requests),
//! then N confirmations posted to the inbound listener (`POST /c/TOKEN`, 64 at
//! once), as a mass of recipients clicking their links would.
//!
//! Reported: the time to send the N requests, the callbacks per second the
//! listener took (all answered 200), how long the engine took to record every
//! confirmation in the ledger, and the daemon's RSS after the requests, after the
//! callbacks, and at its peak.

use anyhow::{Context, Result, bail};
use clarion_tests::daemon::Wiring;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "bench confirmation secret, thirty-two bytes or more";
const IN_FLIGHT: usize = 64;

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Counts the ledger's confirmation records of `event` until there are `want`.
async fn wait_records(
    brokers: &str,
    topic: &str,
    event: &str,
    want: u64,
    timeout: Duration,
) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = clarion_tests::kafka::read_all(brokers, topic, usize::MAX, Duration::from_secs(5))
            .await
            .into_iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
            .filter(|v| v["kind"] == "confirmation" && v["event"] == event)
            .count() as u64;
        if got >= want || Instant::now() > deadline {
            return Ok(got);
        }
    }
}

/// Runs the confirmation benchmark.
pub async fn run(brokers: &str, clarion: &std::path::Path, n: u64) -> Result<()> {
    let w = Wiring::new(brokers, "bench-confirm", 6).await;
    let ledger = clarion_tests::unique_topic("bench-confirm-ledger");
    let confirm_topic = clarion_tests::unique_topic("bench-confirm-state");
    clarion_tests::kafka::create_topic(brokers, &ledger, 6).await;
    clarion_tests::kafka::create_topic(brokers, &confirm_topic, 6).await;
    // The webhook's receiver: accepts everything.
    let hooks = Arc::new(AtomicU64::new(0));
    let count = hooks.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            count.fetch_add(1, Ordering::Relaxed);
            async { axum::http::StatusCode::NO_CONTENT }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let port = clarion_tests::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let targets = format!(
        "[targets.hook]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"http://{hook}/hook\"\nsecrets = [{{ value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }}]\nconfirm = {{ require = \"each\", within = \"2h\" }}\n"
    );
    let toml = w.config(&targets).replacen(
        &format!("group_id = \"{}\"", w.group),
        &format!("group_id = \"{}\"\nledger_topic = \"{ledger}\"", w.group),
        1,
    ) + &format!(
        "\n[confirm]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}\"\nsecret = {{ value = \"{SECRET}\" }}\ntopic = \"{confirm_topic}\"\n# One client posts every callback here: no per-client limit in the way.\nrate_per_minute = 100000000\nburst = 100000\n"
    );
    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("clarion-bench-confirm"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("clarion.toml");
    std::fs::write(&config, &toml)?;
    let updates: Vec<clarion_core::IncidentUpdate> = (0..n)
        .map(|i| {
            let mut u = super::update(i * 4);
            u.incident_id = format!("CONF-{i}");
            u.update_id = format!("CONF-{i}-u1");
            u
        })
        .collect();
    let started = Instant::now();
    clarion_tests::kafka::publish_updates(brokers, &w.topic, &updates).await;
    let mut daemon = std::process::Command::new(clarion)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("starting clarion")?;
    let pid = daemon.id();
    let requested =
        wait_records(brokers, &ledger, "requested", n, Duration::from_secs(600)).await?;
    let sent_in = started.elapsed();
    if requested < n {
        let _ = daemon.kill();
        bail!("only {requested} of {n} requests recorded");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_requests = rss_kib(pid, "VmRSS:").unwrap_or(0);
    eprintln!(
        "bench: {n} confirmation requests sent and recorded in {:.1} s ({} webhook deliveries); daemon RSS {} MiB",
        sent_in.as_secs_f64(),
        hooks.load(Ordering::Relaxed),
        rss_requests / 1024
    );

    // The callbacks: every recipient confirms by its link's button.
    let keys = clarion_confirm::Keys::new(SECRET.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let expires = jiff::Timestamp::now().as_second() as u64 + 3600;
    let links: Vec<String> = updates
        .iter()
        .map(|u| {
            let case = keys.case_id(&[&u.update_id, "hook"]);
            let rid = keys.recipient_id(&case, "");
            format!("{base}/c/{}", keys.mint(&case, &rid, expires))
        })
        .collect();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()?;
    let ok = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let links = Arc::new(links);
    let posting = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (http, ok, next, links) = (http.clone(), ok.clone(), next.clone(), links.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(link) = links.get(i) else { return };
                if let Ok(r) = http.post(link).send().await
                    && r.status() == 200
                {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let took = posting.elapsed();
    let answered = ok.load(Ordering::Relaxed);
    let rss_callbacks = rss_kib(pid, "VmRSS:").unwrap_or(0);
    eprintln!(
        "bench: {answered} of {n} callbacks answered 200 in {:.2} s: {:.0} callbacks/s; daemon RSS {} MiB",
        took.as_secs_f64(),
        answered as f64 / took.as_secs_f64(),
        rss_callbacks / 1024
    );
    let confirmed =
        wait_records(brokers, &ledger, "confirmed", n, Duration::from_secs(600)).await?;
    let recorded_in = posting.elapsed();
    let peak = rss_kib(pid, "VmHWM:").unwrap_or(0);
    let _ = daemon.kill();
    let _ = daemon.wait();
    println!(
        "confirm: {n} requests in {:.1} s; {answered} callbacks at {:.0}/s ({} in flight); {confirmed} confirmations in the ledger {:.1} s after the first callback; RSS {} MiB after the requests, {} MiB after the callbacks, peak {} MiB",
        sent_in.as_secs_f64(),
        answered as f64 / took.as_secs_f64(),
        IN_FLIGHT,
        recorded_in.as_secs_f64(),
        rss_requests / 1024,
        rss_callbacks / 1024,
        peak / 1024
    );
    if answered < n || confirmed < n {
        bail!("{answered} answered, {confirmed} recorded, of {n}");
    }
    Ok(())
}
