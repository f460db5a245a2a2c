//! `clarion-bench`: the driver behind `scripts/bench`. Publishes incident updates to
//! a real Kafka broker, runs the `clarion` binary (release build) against it with
//! four webhook targets on loopback, and reports sustained deliveries per second,
//! produce-to-delivery latency, and the daemon's peak RSS.
//!
//! Modes:
//! - `--updates N` publishes N updates as fast as possible while the daemon runs
//!   (throughput);
//! - `--backlog N` publishes N updates first, then starts the daemon and times the
//!   drain (the backlog after an outage); with `--outage-seconds` (any value) the
//!   first target stays down until the other three have drained it, then comes
//!   back and catches up (the peak RSS of "a backlog with one target down");
//! - `--rate R --seconds S` publishes R updates/s for S seconds (latency without
//!   saturation); add `--outage-seconds D` to keep the first target down (nothing
//!   listening on its port) for the first D seconds, and measure how the healthy
//!   targets fare meanwhile and how long the down one takes to catch up.
//!
//! - `--people N [--kill-at K]` sends one update to an N-person directory
//!   audience by email to Postfix's `smtp-sink` (`people.rs`).
//! - `--confirm N` sends N notices that must be confirmed, then posts their N
//!   confirmations to the inbound listener (`confirm.rs`).
//! - `--http-floor N` measures the HTTP client alone: N webhook-sized POSTs through
//!   reqwest, hyper-util's pooled client, the webhook channel's own `send` and a
//!   bare hyper connection (`http_floor.rs`; needs no broker: pass `--brokers -`).
//!
//! The daemon runs with the shipped defaults unless `--max-in-flight` says
//! otherwise. Reported: deliveries/s, latency, the daemon's peak RSS, its CPU
//! seconds and CPU µs per delivery, and how many times its streams paused.

mod confirm;
mod http_floor;
mod people;

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
    /// Backlog mode: publish this many updates first, then start the daemon and
    /// time the drain.
    #[arg(long)]
    backlog: Option<u64>,
    /// Measure the HTTP client alone with this many requests (see `http_floor.rs`).
    #[arg(long)]
    http_floor: Option<u64>,
    /// Internal: serve the HTTP floor's receiver on this port.
    #[arg(long, hide = true)]
    http_sink: Option<u16>,
    /// `daemon.max_in_flight` (default: the shipped default).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Write the delivery ledger (`kafka.ledger_topic`, one record per delivery) and
    /// the incident-state topic, to measure what they cost.
    #[arg(long)]
    ledger: bool,
    /// Fixed-rate mode: the first target is down (refuses connections) for this
    /// many seconds from the start. Backlog mode: any value keeps the first target
    /// down until the others have drained the backlog, then brings it back.
    #[arg(long, default_value_t = 0)]
    outage_seconds: u64,
    /// Fixed-rate mode: measure a hand-over. `restart`: one daemon is SIGKILLed a
    /// third of the way through and started again at once; `replica`: three run,
    /// one is SIGKILLed and not restarted. Reports how long the updates published
    /// just after the kill waited.
    #[arg(long)]
    takeover: Option<Takeover>,
    /// Extra librdkafka consumer properties for the daemon, `key=value`, repeatable
    /// (to measure a setting without rebuilding).
    #[arg(long = "consumer-property")]
    consumer_properties: Vec<String>,
    /// People mode: one update to a directory audience of this many people, by
    /// email to Postfix's smtp-sink (docs/backups.md).
    #[arg(long)]
    people: Option<u64>,
    /// People mode: SIGKILL the daemon once this many messages arrived, start it
    /// again, and count the duplicates.
    #[arg(long)]
    kill_at: Option<u64>,
    /// Confirmation mode: N notices that must be confirmed, then N confirmations
    /// posted to the inbound listener (docs/confirmations.md).
    #[arg(long)]
    confirm: Option<u64>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Takeover {
    Restart,
    Replica,
}

/// Latencies in microseconds, as received.
#[derive(Default)]
struct Sink {
    latencies: Mutex<Vec<u64>>,
    /// (published at, in ns since the epoch; latency in µs), for the hand-over.
    arrivals: Mutex<Vec<(u64, u64)>>,
    count: AtomicU64,
    last_ns: AtomicU64,
    /// When a target that was down came back (outage mode).
    back_ns: AtomicU64,
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
        s.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((t.as_nanosecond() as u64, us));
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
        drill: false,
        drill_targets: vec![],
        drill_skip_providers: 0,
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
    if let Some(port) = args.http_sink {
        return http_floor::sink(port).await;
    }
    if let Some(n) = args.http_floor {
        return http_floor::run(n).await;
    }
    if let Some(n) = args.confirm {
        return confirm::run(&args.brokers, &args.clarion, n).await;
    }
    if let Some(n) = args.people {
        return people::run(&args.brokers, &args.clarion, n, args.kill_at).await;
    }
    let w = Wiring::new(&args.brokers, "bench", args.partitions).await;
    let mut targets = String::new();
    let mut sinks = Vec::new();
    // The first target's listener, kept back during an outage.
    let mut held_back = None;
    for t in 0..args.targets {
        let sink = Arc::new(Sink::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(sink.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        if t == 0 && args.outage_seconds > 0 {
            // Nothing listens on the port until the outage ends.
            drop(listener);
            held_back = Some((addr, app));
        } else {
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
        targets.push_str(&format!(
            "[targets.hook{t}]\ntype = \"webhook\"\naudiences = [\"customers\"]\nurl = \"http://{addr}/hook\"\nsecrets = [{{ value = \"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\" }}]\n\n"
        ));
        sinks.push(sink);
    }
    let dir = std::env::temp_dir().join(clarion_tests::unique_topic("clarion-bench"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("clarion.toml");
    let mut toml = w.config(&targets);
    if let Some(n) = args.max_in_flight {
        toml = toml.replace(
            "shutdown_grace = \"20s\"",
            &format!("shutdown_grace = \"20s\"\nmax_in_flight = {n}"),
        );
    }
    if args.ledger {
        let ledger = clarion_tests::unique_topic("bench-ledger");
        let state = clarion_tests::unique_topic("bench-state");
        clarion_tests::kafka::create_topic(&args.brokers, &ledger, args.partitions).await;
        clarion_tests::kafka::create_topic(&args.brokers, &state, args.partitions).await;
        toml = toml.replacen(
            &format!("group_id = \"{}\"", w.group),
            &format!(
                "group_id = \"{}\"\nledger_topic = \"{ledger}\"\nincident_state_topic = \"{state}\"",
                w.group
            ),
            1,
        );
    }
    if !args.consumer_properties.is_empty() {
        let pairs: Vec<String> = args
            .consumer_properties
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| format!("{k:?} = {v:?}"))
            .collect();
        toml = toml.replacen(
            "[kafka]\n",
            &format!("[kafka]\nconsumer = {{ {} }}\n", pairs.join(", ")),
            1,
        );
    }
    std::fs::write(&config, toml)?;
    let log_path = dir.join("clarion.log");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "2")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let start_daemon = || -> Result<std::process::Child> {
        let log = std::fs::File::create(&log_path)?;
        std::process::Command::new(&args.clarion)
            .args(["run", "--config"])
            .arg(&config)
            // The final line with the pause count is INFO.
            .env("RUST_LOG", "warn,clarion::engine::supervisor=info")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting clarion")
    };
    if let Some(n) = args.backlog {
        let started = Instant::now();
        publish(&producer, &w.topic, 0..n, None).await?;
        eprintln!(
            "bench: backlog of {n} updates published in {:.2} s; starting the daemon",
            started.elapsed().as_secs_f64()
        );
        let mut daemon = start_daemon()?;
        let pid = daemon.id();
        let started = Instant::now();
        let expected = n * args.targets as u64;
        if let Some((addr, app)) = held_back {
            // One target down for the whole drain: the healthy ones drain first,
            // then it comes back and catches up. Peak RSS covers both.
            wait_for(
                &sinks[1..],
                n * (args.targets as u64 - 1),
                Duration::from_secs(900),
                Some((&mut daemon, &log_path)),
            )
            .await?;
            let healthy = started.elapsed();
            println!(
                "healthy targets:   {} deliveries in {:.2} s with hook0 down ({:.0}/s); peak RSS so far {} MiB",
                n * (args.targets as u64 - 1),
                healthy.as_secs_f64(),
                (n * (args.targets as u64 - 1)) as f64 / healthy.as_secs_f64(),
                peak_rss_kib(pid).map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
            );
            let listener = tokio::net::TcpListener::bind(addr).await?;
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
        wait_for(
            &sinks,
            expected,
            Duration::from_secs(900),
            Some((&mut daemon, &log_path)),
        )
        .await?;
        let drained = started.elapsed();
        let (rss, cpu) = (peak_rss_kib(pid), cpu_seconds(pid));
        stop(&mut daemon);
        let pauses = pauses_in(&log_path);
        println!("mode:              backlog of {n} updates, drained from daemon start");
        println!(
            "targets:           {} webhooks on loopback (signed)",
            args.targets
        );
        report_throughput(expected, drained, rss, cpu, pauses, args.max_in_flight);
        return Ok(());
    }
    if let Some(mode) = args.takeover {
        return takeover(mode, &args, &w, &producer, &sinks, &start_daemon).await;
    }
    let mut daemon = start_daemon()?;
    let pid = daemon.id();
    // Let the daemon join its groups before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some((addr, app)) = held_back {
        let outage = Duration::from_secs(args.outage_seconds);
        let back = sinks[0].clone();
        tokio::spawn(async move {
            tokio::time::sleep(outage).await;
            match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    back.back_ns.store(
                        jiff::Timestamp::now().as_nanosecond() as u64,
                        Ordering::Relaxed,
                    );
                    let _ = axum::serve(listener, app).await;
                }
                Err(e) => eprintln!("bench: cannot bring the down target back on {addr}: {e}"),
            }
        });
    }

    let total = if args.rate > 0 {
        args.rate * args.seconds
    } else {
        args.updates
    };
    let started = Instant::now();
    let start_ns = jiff::Timestamp::now().as_nanosecond() as u64;
    let interval = if args.rate > 0 {
        Some(Duration::from_secs_f64(1.0 / args.rate as f64))
    } else {
        None
    };
    publish(&producer, &w.topic, 0..total, interval).await?;
    let produced_in = started.elapsed();

    let expected = total * args.targets as u64;
    wait_for(
        &sinks,
        expected,
        Duration::from_secs(900),
        Some((&mut daemon, &log_path)),
    )
    .await?;
    let last_ns = sinks
        .iter()
        .map(|s| s.last_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(start_ns);
    let (rss, cpu) = (peak_rss_kib(pid), cpu_seconds(pid));
    stop(&mut daemon);
    let pauses = pauses_in(&log_path);

    // During an outage, the healthy targets' latency is what matters; the down
    // target's own latency includes the outage.
    let healthy = if args.outage_seconds > 0 { 1 } else { 0 };
    let mut lat: Vec<u64> = sinks[healthy..]
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
        "targets:           {} webhooks on loopback (signed){}",
        args.targets,
        if args.outage_seconds > 0 {
            format!("; hook0 down for the first {} s", args.outage_seconds)
        } else {
            String::new()
        }
    );
    println!(
        "latency (ms):      p50 {:.1}  p99 {:.1}  max {:.1}  (publish to receiver, {}n={})",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
        if healthy > 0 {
            "healthy targets only, "
        } else {
            ""
        },
        lat.len()
    );
    if args.outage_seconds > 0 {
        // The backlog: what was published while the target was down. Recovered
        // when the last of it arrived.
        let back = sinks[0].back_ns.load(Ordering::Relaxed);
        let arrivals = sinks[0]
            .arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let backlog: Vec<u64> = arrivals
            .iter()
            .filter(|(published, _)| *published < back)
            .map(|(published, us)| published + us * 1000)
            .collect();
        let caught_up = backlog.iter().max().copied().unwrap_or(back);
        println!(
            "recovery:          the down target had its backlog of {} updates {:.1} s after it came back",
            backlog.len(),
            Duration::from_nanos(caught_up.saturating_sub(back)).as_secs_f64()
        );
    }
    report_throughput(expected, span, rss, cpu, pauses, args.max_in_flight);
    Ok(())
}

/// Hand-over: publishes at the fixed rate, SIGKILLs a daemon a third of the way
/// through, and reports how long the updates published in the second after the kill
/// waited for delivery (the partitions of the dead daemon wait for its session to
/// expire, or for its restart).
async fn takeover(
    mode: Takeover,
    args: &Args,
    w: &Wiring,
    producer: &FutureProducer,
    sinks: &[Arc<Sink>],
    start_daemon: &dyn Fn() -> Result<std::process::Child>,
) -> Result<()> {
    let replicas = match mode {
        Takeover::Restart => 1,
        Takeover::Replica => 3,
    };
    let mut daemons = Vec::new();
    for _ in 0..replicas {
        daemons.push(start_daemon()?);
    }
    // Let every replica join and the group settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let rate = args.rate.max(1);
    let total = rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let kill_after = Duration::from_secs(args.seconds / 3);
    let publishing = {
        let producer = producer.clone();
        let topic = w.topic.clone();
        tokio::spawn(async move { publish(&producer, &topic, 0..total, Some(interval)).await })
    };
    tokio::time::sleep(kill_after).await;
    let mut victim = daemons.remove(0);
    let killed_ns = jiff::Timestamp::now().as_nanosecond() as u64;
    let _ = victim.kill();
    let _ = victim.wait();
    if matches!(mode, Takeover::Restart) {
        daemons.push(start_daemon()?);
    }
    publishing.await??;
    wait_for(
        sinks,
        total * args.targets as u64,
        Duration::from_secs(300),
        None,
    )
    .await?;
    let window = Duration::from_secs(1).as_nanos() as u64;
    let waited: Vec<u64> = sinks
        .iter()
        .flat_map(|s| s.arrivals.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .filter(|(at, _)| *at >= killed_ns && *at < killed_ns + window)
        .map(|(_, us)| us)
        .collect();
    let worst = waited.iter().max().copied().unwrap_or(0);
    for mut d in daemons {
        stop(&mut d);
    }
    println!(
        "mode:              hand-over ({}), {rate} updates/s for {} s, SIGKILL at {} s",
        match mode {
            Takeover::Restart => "one daemon, SIGKILLed and restarted at once",
            Takeover::Replica => "three replicas, one SIGKILLed",
        },
        args.seconds,
        kill_after.as_secs()
    );
    println!(
        "takeover:          updates published in the second after the kill waited up to {:.1} s (n={})",
        worst as f64 / 1e6,
        waited.len()
    );
    Ok(())
}

/// Publishes updates `range` (at `interval` apart, or as fast as possible), keyed by
/// incident, and waits for every acknowledgement.
async fn publish(
    producer: &FutureProducer,
    topic: &str,
    range: std::ops::Range<u64>,
    interval: Option<Duration>,
) -> Result<()> {
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for i in range {
        if let Some(iv) = interval {
            let due = started + iv.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let u = update(i);
        let body = serde_json::to_vec(&u)?;
        let fut = producer.send_result(FutureRecord::to(topic).key(&u.incident_id).payload(&body));
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
    Ok(())
}

/// Waits until the sinks together received `expected` deliveries. Fails at once
/// when `daemon` exits first (a config librdkafka refuses, a crash), with its log.
async fn wait_for(
    sinks: &[Arc<Sink>],
    expected: u64,
    limit: Duration,
    mut daemon: Option<(&mut std::process::Child, &std::path::Path)>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let got: u64 = sinks.iter().map(|s| s.count.load(Ordering::Relaxed)).sum();
        if got >= expected {
            return Ok(());
        }
        if let Some((child, log)) = daemon.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            bail!(
                "the daemon exited ({status}) after {got} of {expected} deliveries; its log, {}:\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "only {got} of {expected} deliveries after {} s",
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stop(daemon: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
}

/// The daemon's CPU time so far (user + system), from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let tick = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    Some((utime + stime) / tick)
}

/// How many times the daemon paused consumption: the `pauses=` of its last line,
/// or, for daemons before per-target streams, its "pausing consumption" warnings.
fn pauses_in(log: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    if let Some(n) = text
        .lines()
        .filter(|l| l.contains("clarion stopped"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("pauses=").and_then(|v| v.parse().ok()))
        })
    {
        return Some(n);
    }
    Some(text.matches("pausing consumption").count() as u64)
}

fn report_throughput(
    expected: u64,
    span: Duration,
    rss: Option<u64>,
    cpu: Option<f64>,
    pauses: Option<u64>,
    max_in_flight: Option<usize>,
) {
    println!(
        "deliveries:        {expected} in {:.2} s",
        span.as_secs_f64()
    );
    println!(
        "sustained:         {:.0} deliveries/s",
        expected as f64 / span.as_secs_f64()
    );
    println!(
        "daemon peak RSS:   {} MiB (max_in_flight {})",
        rss.map(|k| format!("{:.1}", k as f64 / 1024.0))
            .unwrap_or_else(|| "?".into()),
        max_in_flight.map_or("default".to_string(), |n| n.to_string())
    );
    match cpu {
        Some(c) => println!(
            "daemon CPU:        {c:.2} s = {:.1} µs per delivery",
            c * 1e6 / expected as f64
        ),
        None => println!("daemon CPU:        ?"),
    }
    println!(
        "pauses:            {}",
        pauses.map_or("?".to_string(), |p| p.to_string())
    );
}
