//! `clarion-bench`: the driver behind `scripts/bench`. Publishes incident updates to
//! a real Kafka broker, runs the `clarion` binary (release build) against it with
//! four webhook targets on loopback, and reports sustained deliveries per second,
//! produce-to-delivery latency, and the daemon's peak RSS.
//!
//! Two modes: `--updates N` publishes N updates as fast as possible (throughput);
//! `--rate R --seconds S` publishes R updates/s for S seconds (latency without
//! saturation).

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use clap::Parser;
use clarion_core::{Impact, IncidentUpdate, SCHEMA_VERSION, Status};
use clarion_tests::daemon::Wiring;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// Kafka bootstrap address of the broker to use.
    #[arg(long, env = "CLARION_TEST_KAFKA")]
    brokers: String,
    /// The clarion binary (use a release build).
    #[arg(long)]
    clarion: std::path::PathBuf,
    /// Updates to publish in throughput mode.
    #[arg(long, default_value_t = 100_000)]
    updates: u64,
    /// Fixed-rate mode: updates per second (0 = throughput mode).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Fixed-rate mode: how long to publish.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Webhook targets (each gets every update).
    #[arg(long, default_value_t = 4)]
    targets: usize,
    /// Partitions of the source topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
}

/// Latencies in microseconds, as received.
#[derive(Default)]
struct Sink {
    latencies: Mutex<Vec<u64>>,
    count: AtomicU64,
    last_ns: AtomicU64,
}

async fn receive(State(s): State<Arc<Sink>>, body: Bytes) -> StatusCode {
    let now = jiff::Timestamp::now();
    // The update's occurred_at was set to its publish time.
    let occurred = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v["data"]["occurred_at"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        });
    if let Some(t) = occurred {
        let us = now.duration_since(t).as_micros().max(0) as u64;
        s.latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(us);
    }
    s.count.fetch_add(1, Ordering::Relaxed);
    s.last_ns
        .store(now.as_nanosecond() as u64, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

fn update(i: u64) -> IncidentUpdate {
    let incident = i / 4;
    let seq = i % 4 + 1;
    IncidentUpdate {
        schema_version: SCHEMA_VERSION,
        incident_id: format!("BENCH-{incident}"),
        update_id: format!("BENCH-{incident}-u{seq}"),
        sequence: seq,
        status: [Status::Investigating, Status::Identified, Status::Monitoring, Status::Resolved][(seq - 1) as usize],
        impact: Impact::Major,
        title: "Mobile data outage in the north region".into(),
        message: "We are investigating reports of failed calls and mobile data in the affected regions. Next update in 30 minutes.".into(),
        audience_messages: Default::default(),
        components: vec!["mobile-data".into()],
        regions: vec!["north".into()],
        audiences: vec!["customers".into()],
        occurred_at: jiff::Timestamp::now(),
        links: vec![],
        locales: Default::default(),
    }
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let w = Wiring::new(&args.brokers, "bench", args.partitions).await;
    let mut targets = String::new();
    let mut sinks = Vec::new();
    for t in 0..args.targets {
        let sink = Arc::new(Sink::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        targets.push_str(&format!(
            "[targets.hook{t}]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"http://{addr}/hook\"\nsecrets = [{{ value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }}]\n\n"
        ));
        sinks.push(sink);
    }
    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("clarion-bench"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("clarion.toml");
    std::fs::write(
        &config,
        w.config(&targets).replace(
            "shutdown_grace = \"20s\"",
            "shutdown_grace = \"20s\"\nmax_in_flight = 4096",
        ),
    )?;
    let log = std::fs::File::create(dir.join("clarion.log"))?;
    let mut daemon = std::process::Command::new(&args.clarion)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting clarion")?;
    let pid = daemon.id();

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    // Let the daemon join its group before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let total = if args.rate > 0 {
        args.rate * args.seconds
    } else {
        args.updates
    };
    let started = Instant::now();
    let start_ns = jiff::Timestamp::now().as_nanosecond() as u64;
    let mut pending = Vec::with_capacity(10_000);
    let interval = if args.rate > 0 {
        Some(Duration::from_secs_f64(1.0 / args.rate as f64))
    } else {
        None
    };
    for i in 0..total {
        if let Some(iv) = interval {
            let due = started + iv.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let u = update(i);
        let body = serde_json::to_vec(&u)?;
        let fut = producer.send_result(
            FutureRecord::to(&w.topic)
                .key(&u.incident_id)
                .payload(&body),
        );
        match fut {
            Ok(f) => pending.push(f),
            Err((e, _)) => bail!("produce: {e}"),
        }
        // Acknowledgements are awaited in batches, never one by one: waiting for each
        // would hold the publisher to one update per broker round trip.
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                let _ = f.await;
            }
        }
    }
    for f in pending.drain(..) {
        let _ = f.await;
    }
    producer.flush(Duration::from_secs(30))?;
    let produced_in = started.elapsed();

    let expected = total * args.targets as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let got: u64 = sinks.iter().map(|s| s.count.load(Ordering::Relaxed)).sum();
        if got >= expected {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {got} of {expected} deliveries after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_ns = sinks
        .iter()
        .map(|s| s.last_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(start_ns);
    let rss = peak_rss_kib(pid);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = daemon.wait();

    let mut lat: Vec<u64> = sinks
        .iter()
        .flat_map(|s| {
            s.latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
        .collect();
    lat.sort_unstable();
    let span = Duration::from_nanos(last_ns.saturating_sub(start_ns));
    println!(
        "mode:              {}",
        if args.rate > 0 {
            format!("fixed rate {} updates/s for {} s", args.rate, args.seconds)
        } else {
            "throughput".to_string()
        }
    );
    println!(
        "updates published: {total} in {:.2} s",
        produced_in.as_secs_f64()
    );
    println!(
        "targets:           {} webhooks on loopback (signed)",
        args.targets
    );
    println!(
        "deliveries:        {expected} in {:.2} s (first publish to last delivery)",
        span.as_secs_f64()
    );
    println!(
        "sustained:         {:.0} deliveries/s",
        expected as f64 / span.as_secs_f64()
    );
    println!(
        "latency (ms):      p50 {:.1}  p99 {:.1}  max {:.1}  (publish to receiver, n={})",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        lat.len()
    );
    println!(
        "daemon peak RSS:   {} MiB",
        rss.map(|k| format!("{:.1}", k as f64 / 1024.0))
            .unwrap_or_else(|| "?".into())
    );
    Ok(())
}
