//! What the process knows about its own health, for `/livez`, `/readyz`,
//! `clarion_ready`, `clarion_kafka_connected` and systemd's notify protocol; and
//! the quieting of librdkafka's own error and log callbacks.
//!
//! The streams, the producer and the dead-letter writer report here (rebalances,
//! librdkafka statistics and errors, the oldest unresolved update, dead-letter write
//! failures); the metrics listener (`telemetry::serve`) reads it. The state is one
//! per process, because one process runs one daemon (the in-process test daemons
//! share it, and no test reads their readiness).
//!
//! It must never block: every callback here runs inside librdkafka's polling or on a
//! runtime worker, and only takes short `std::sync` locks, never across an await.
//!
//! Readiness means "this replica is doing its share": connected to the cluster,
//! every stream holding partitions or legitimately holding none, no stream stalled,
//! and the dead-letter topic writable. A target whose breaker is open is *degraded*,
//! not unready: its stream waits in Kafka by design, and restarting or
//! de-scheduling the replica would not bring a regulator's endpoint back.

use crate::kafka::Tp;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// `/livez` fails when the runtime's heartbeat task has not run for this long.
pub const LIVENESS_STALE: Duration = Duration::from_secs(10);
/// A repeated librdkafka error or log line is written at most once per this long.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

static HEALTH: LazyLock<Health> = LazyLock::new(Health::default);

/// The process's health.
pub fn global() -> &'static Health {
    &HEALTH
}

/// A Kafka client's connection, as its statistics and errors tell it.
/// The state, for metrics: 0 closed, 1 half-open (a probe is out), 2 open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    pub fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// What health reads of a target's circuit breakers: their combined state. The
/// engine's `Breakers` implement it; a trait, so that health, which the engine and
/// the records both report to, depends on neither.
pub trait TargetBreaker: Send + Sync + std::fmt::Debug {
    fn state(&self) -> BreakerState;
    /// The error that keeps it open, while it is.
    fn last_error(&self) -> Option<String> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// No statistics or error yet (a client that just started).
    Unknown,
    Up,
    Down(Instant),
}

/// One stream as readiness sees it.
#[derive(Debug, Default)]
struct StreamHealth {
    /// Which start of the stream this is (a reload restarts a stream under its name).
    registration: u64,
    breaker: Option<Arc<dyn TargetBreaker>>,
    assigned: BTreeSet<Tp>,
    /// librdkafka's consumer-group state and join state, from the last statistics.
    group: Option<(String, String)>,
    oldest_unresolved: Option<Duration>,
}

#[derive(Debug, Default)]
struct Inner {
    streams: BTreeMap<String, StreamHealth>,
    clients: BTreeMap<String, Conn>,
    /// Since when the process has been cut off from the brokers (any client down).
    outage: Option<(jiff::Timestamp, Instant)>,
    /// The last dead-letter write that Kafka refused for good, while no later one
    /// succeeded.
    dead_letter_failure: Option<String>,
    /// Repeated librdkafka lines: when last written, and how many were held back.
    repeats: HashMap<String, (Instant, u64)>,
}

/// The process's health state. See the module docs.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<Inner>,
    started: Instant,
    /// Milliseconds since `started` at the heartbeat task's last turn.
    heartbeat_ms: AtomicU64,
    max_unresolved_age_ms: AtomicU64,
    stopping: AtomicBool,
    registrations: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            inner: Mutex::default(),
            started: Instant::now(),
            heartbeat_ms: AtomicU64::new(0),
            max_unresolved_age_ms: AtomicU64::new(
                crate::config::DEFAULT_MAX_UNRESOLVED_AGE.as_millis() as u64,
            ),
            stopping: AtomicBool::new(false),
            registrations: AtomicU64::new(0),
        }
    }
}

/// What `/readyz` answers.
#[derive(Debug, serde::Serialize)]
pub struct Readiness {
    /// `ready`, `degraded` (ready, but something needs a look) or `unready`.
    pub status: &'static str,
    /// Why the replica is not ready (empty when ready).
    pub problems: Vec<String>,
    /// What is wrong without making the replica unready (a target that is down).
    pub degraded: Vec<String>,
    pub streams: BTreeMap<String, serde_json::Value>,
    pub kafka: BTreeMap<String, &'static str>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.status != "unready"
    }
}

impl Health {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets `health.max_unresolved_age`.
    pub fn configure(&self, max_unresolved_age: Duration) {
        self.max_unresolved_age_ms
            .store(max_unresolved_age.as_millis() as u64, Ordering::Relaxed);
    }

    /// A stream is about to start. `breaker` is its target's (none for `events`).
    /// Returns the registration to hand to [`Health::stream_ended`].
    pub fn register_stream(&self, name: &str, breaker: Option<Arc<dyn TargetBreaker>>) -> u64 {
        let registration = self.registrations.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.streams.insert(
            name.to_string(),
            StreamHealth {
                registration,
                breaker,
                ..StreamHealth::default()
            },
        );
        inner.clients.insert(name.to_string(), Conn::Unknown);
        registration
    }

    /// A stream stopped (shutdown, or a target removed or restarted by a reload).
    /// A newer start of the same name keeps its place.
    pub fn stream_ended(&self, name: &str, registration: u64) {
        let mut inner = self.lock();
        if inner
            .streams
            .get(name)
            .is_some_and(|s| s.registration == registration)
        {
            inner.streams.remove(name);
            inner.clients.remove(name);
        }
    }

    /// The breaker of the target stream `name` in this process, with its last error
    /// while open; `None` when no such stream runs here. For the ledger's `due`
    /// records, which the events stream writes without owning the target.
    pub fn target_breaker(&self, name: &str) -> Option<(BreakerState, Option<String>)> {
        let breaker = self.lock().streams.get(name)?.breaker.clone()?;
        // Read outside the health lock: the breaker takes its own.
        let state = breaker.state();
        let error = (state != BreakerState::Closed)
            .then(|| breaker.last_error())
            .flatten();
        Some((state, error))
    }

    /// Every stream has started: tells systemd the daemon is up.
    pub fn started(&self) {
        sd_notify("READY=1\nSTATUS=streams started");
    }

    /// Shutdown began: unready from now on, and systemd is told.
    pub fn stopping(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            sd_notify("STOPPING=1");
        }
    }

    /// Partitions assigned to a stream (incremental).
    pub fn assigned(&self, stream: &str, tps: &[Tp]) {
        let mut inner = self.lock();
        let s = inner.streams.entry(stream.to_string()).or_default();
        s.assigned.extend(tps.iter().cloned());
        assigned_gauge(stream, s.assigned.len());
        drop(inner);
        // Registered at once (at 0 until the next statistics), so that a
        // partition's series exists from its assignment on.
        for (topic, partition) in tps {
            partition_lag(stream, topic, *partition, 0);
        }
    }

    /// Partitions revoked from a stream (incremental).
    pub fn revoked(&self, stream: &str, tps: &[Tp]) {
        let mut inner = self.lock();
        if let Some(s) = inner.streams.get_mut(stream) {
            for tp in tps {
                s.assigned.remove(tp);
            }
            assigned_gauge(stream, s.assigned.len());
        }
        drop(inner);
        // The lag of a partition another replica now owns is that replica's to
        // report: left at its last value here, it would alert forever.
        for (topic, partition) in tps {
            partition_lag(stream, topic, *partition, 0);
        }
    }

    /// The age of a stream's oldest unresolved update (published every second).
    pub fn oldest_unresolved(&self, stream: &str, age: Option<Duration>) {
        if let Some(s) = self.lock().streams.get_mut(stream) {
            s.oldest_unresolved = age;
        }
    }

    /// A dead-letter write that Kafka refused for good (`class` = `permanent`).
    pub fn dead_letter_failed(&self, error: &str) {
        self.lock().dead_letter_failure = Some(error.to_string());
    }

    /// A dead letter was written: the topic is writable, and the producer connected.
    pub fn dead_letter_written(&self) {
        self.lock().dead_letter_failure = None;
        self.client_state(PRODUCER, Conn::Up, "");
    }

    /// Records the heartbeat of the runtime task that serves it.
    pub fn beat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the runtime's heartbeat task last ran.
    pub fn heartbeat_age(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)))
    }

    /// The readiness verdict, with every reason.
    pub fn readiness(&self) -> Readiness {
        let max_age = Duration::from_millis(self.max_unresolved_age_ms.load(Ordering::Relaxed));
        let inner = self.lock();
        let mut problems = Vec::new();
        let mut degraded = Vec::new();
        if self.stopping.load(Ordering::SeqCst) {
            problems.push("shutting down".to_string());
        }
        if inner.streams.is_empty() {
            problems.push("starting: no stream is running yet".to_string());
        }
        if let Some((since, _)) = inner.outage {
            problems.push(format!("Kafka brokers unreachable since {since}"));
        }
        for (name, conn) in &inner.clients {
            if *conn == Conn::Unknown && inner.streams.contains_key(name) {
                problems.push(format!("stream `{name}`: not connected to the cluster yet"));
            }
        }
        if let Some(e) = &inner.dead_letter_failure {
            problems.push(format!(
                "the dead-letter topic refuses writes: {e} (failed deliveries cannot be dead-lettered, so their partitions stand still)"
            ));
        }
        let mut streams = BTreeMap::new();
        for (name, s) in &inner.streams {
            let breaker = s.breaker.as_ref().map(|b| b.state());
            let steady = s
                .group
                .as_ref()
                .is_some_and(|(state, join)| state == "up" && join == "steady");
            // A member with no partitions is ready when its group is steady: the
            // assignor gave the partitions to the other replicas (or there are more
            // replicas than partitions). While it is still joining, or its group
            // coordinator is not reachable, it is not doing its share.
            if s.assigned.is_empty() && !steady {
                problems.push(format!(
                    "stream `{name}`: no partitions assigned and its consumer group is not steady ({})",
                    s.group
                        .as_ref()
                        .map_or("no group state yet".to_string(), |(st, j)| format!(
                            "state {st}, join state {j}"
                        ))
                ));
            }
            if breaker == Some(BreakerState::Open) {
                degraded.push(format!(
                    "target `{name}` is down (breaker open): its updates wait in Kafka and are delivered when it is back; restarting Clarion does not help"
                ));
            } else if let Some(age) = s.oldest_unresolved
                && age > max_age
            {
                problems.push(format!(
                    "stream `{name}`: oldest unresolved update is {} old (health.max_unresolved_age = {})",
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(max_age)
                ));
            }
            streams.insert(
                name.clone(),
                serde_json::json!({
                    "partitions": s.assigned.len(),
                    "group": s.group.as_ref().map(|(st, j)| format!("{st}/{j}")),
                    "oldest_unresolved_s": s.oldest_unresolved.map(|d| d.as_secs()),
                    "breaker": breaker.map(BreakerState::as_str),
                }),
            );
        }
        let kafka = inner
            .clients
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    match c {
                        Conn::Unknown => "unknown",
                        Conn::Up => "connected",
                        Conn::Down(_) => "unreachable",
                    },
                )
            })
            .collect();
        let status = if !problems.is_empty() {
            "unready"
        } else if !degraded.is_empty() {
            "degraded"
        } else {
            "ready"
        };
        Readiness {
            status,
            problems,
            degraded,
            streams,
            kafka,
        }
    }

    /// A client's connection changed (or was confirmed). Writes one Clarion line
    /// for the whole process when the first client loses the brokers and one when
    /// the last gets them back, however many clients and retries there are.
    fn client_state(&self, client: &str, to: Conn, detail: &str) {
        let mut inner = self.lock();
        let from = inner
            .clients
            .insert(client.to_string(), to)
            .unwrap_or(Conn::Unknown);
        let changed = !matches!(
            (from, to),
            (Conn::Up, Conn::Up) | (Conn::Down(_), Conn::Down(_))
        );
        let connected = if matches!(to, Conn::Up) { 1.0 } else { 0.0 };
        if changed {
            metrics::gauge!("clarion_kafka_connected", "client" => client.to_string())
                .set(connected);
        }
        let any_down = inner.clients.values().any(|c| matches!(c, Conn::Down(_)));
        match (inner.outage, any_down) {
            (None, true) => {
                let since = jiff::Timestamp::now();
                inner.outage = Some((since, Instant::now()));
                drop(inner);
                tracing::error!(
                    client,
                    detail,
                    "Kafka brokers unreachable since {since}; consumption and dead-letter writes wait until they answer (librdkafka keeps reconnecting; repeats are not logged)"
                );
            }
            (Some((since, at)), false) => {
                inner.outage = None;
                drop(inner);
                tracing::warn!(
                    down_for_s = at.elapsed().as_secs(),
                    "Kafka brokers reachable again after {} (unreachable since {since})",
                    humantime::format_duration(Duration::from_secs(at.elapsed().as_secs()))
                );
            }
            _ => {}
        }
    }

    /// A librdkafka statistics report: connection and consumer-group state.
    pub fn stats(&self, client: &str, stats: &rdkafka::Statistics) {
        let up = stats.brokers.values().any(|b| b.state == "UP");
        if up {
            self.client_state(client, Conn::Up, "");
        } else if !stats.brokers.is_empty()
            && stats
                .brokers
                .values()
                .all(|b| b.state == "DOWN" || b.state == "CONNECT" || b.state == "TRY_CONNECT")
            && self.lock().clients.get(client) == Some(&Conn::Up)
        {
            // Statistics only confirm an outage that an error already reported, or
            // a client that was connected and is no longer: a client that is still
            // connecting for the first time shows the same broker states.
            self.client_state(client, Conn::Down(Instant::now()), "no broker connection");
        }
        if let Some(cgrp) = &stats.cgrp
            && let Some(s) = self.lock().streams.get_mut(client)
        {
            s.group = Some((cgrp.state.clone(), cgrp.join_state.clone()));
        }
    }

    /// librdkafka's error callback, de-duplicated and rate-limited.
    pub fn kafka_error(&self, client: &str, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        match code {
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.client_state(client, Conn::Down(Instant::now()), reason);
                tracing::debug!(client, error = %error, reason, "librdkafka error");
            }
            // One broker's connection failing is what the state line reports (when
            // all of them fail) and what librdkafka retries by itself.
            Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve) => {
                tracing::debug!(client, error = %error, reason, "librdkafka error")
            }
            _ => {
                if let Some(held_back) = self.first_in_window(&format!("error {error}")) {
                    tracing::error!(
                        client,
                        error = %error,
                        reason,
                        repeats_not_logged = held_back,
                        "Kafka client error (repeats within {}s are not logged)",
                        REPEAT_WINDOW.as_secs()
                    );
                }
            }
        }
    }

    /// An error that a stream's `recv()` returned. The brokers being unreachable
    /// comes back from every poll (ten times a second per stream): it feeds the
    /// connection state and stays at DEBUG; anything else is rate-limited.
    pub fn consumer_error(&self, stream: &str, error: &KafkaError) {
        if is_unreachable(error) {
            if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
                self.client_state(stream, Conn::Down(Instant::now()), "all brokers down");
            }
            tracing::debug!(stream, error = %error, "kafka consumer error");
        } else if let Some(held_back) = self.first_in_window(&format!("consumer {stream} {error}"))
        {
            tracing::warn!(
                stream,
                error = %error,
                repeats_not_logged = held_back,
                "kafka consumer error (repeats within {}s are not logged)",
                REPEAT_WINDOW.as_secs()
            );
        }
    }

    /// librdkafka's log callback: connection chatter goes to DEBUG (the state
    /// lines say it once); other lines are rate-limited per facility and message.
    pub fn kafka_log(&self, client: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let connection_chatter = matches!(fac, "FAIL" | "BROKERFAIL" | "CONNECT" | "ERROR")
            || message.contains("Connection refused")
            || message.contains("brokers are down")
            || message.contains("Disconnected");
        if connection_chatter {
            tracing::debug!(client, fac, message, "librdkafka");
            return;
        }
        let key = format!("log {fac} {message}");
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                if let Some(n) = self.first_in_window(&key) {
                    tracing::error!(client, fac, repeats_not_logged = n, "librdkafka: {message}");
                }
            }
            RDKafkaLogLevel::Warning => {
                if let Some(n) = self.first_in_window(&key) {
                    tracing::warn!(client, fac, repeats_not_logged = n, "librdkafka: {message}");
                }
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(client, fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(client, fac, "librdkafka: {message}"),
        }
    }

    /// `Some(lines held back since the last one)` when `key` may be logged now.
    fn first_in_window(&self, key: &str) -> Option<u64> {
        let mut inner = self.lock();
        let now = Instant::now();
        // Bounded: old entries go once their window is over.
        if inner.repeats.len() > 256 {
            inner
                .repeats
                .retain(|_, (at, _)| now.duration_since(*at) < REPEAT_WINDOW);
        }
        match inner.repeats.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < REPEAT_WINDOW => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                inner.repeats.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// The `client` label of the dead-letter producer.
pub const PRODUCER: &str = "producer";

fn assigned_gauge(stream: &str, n: usize) {
    metrics::gauge!("clarion_stream_assigned_partitions", "stream" => stream.to_string())
        .set(n as f64);
}

fn partition_lag(stream: &str, topic: &str, partition: i32, lag: i64) {
    metrics::gauge!(
        "clarion_partition_lag_records",
        "stream" => stream.to_string(),
        "topic" => topic.to_string(),
        "partition" => partition.to_string()
    )
    .set(lag as f64);
}

/// The dead-letter producer's context: its librdkafka errors and logs go through
/// the same de-duplication as the streams', under `client = producer`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProducerCtx;

impl ClientContext for ProducerCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        global().kafka_log(PRODUCER, level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        global().kafka_error(PRODUCER, &error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        global().stats(PRODUCER, &statistics);
    }
}

/// The context of the short-lived clients that check topics and seed offsets at
/// start: their errors are the same outage the streams report, so they only reach
/// DEBUG (or a rate-limited line when they are something else); they never count
/// for readiness.
#[derive(Debug, Default, Clone, Copy)]
pub struct AdminCtx;

impl ClientContext for AdminCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        global().kafka_log("admin", level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if is_unreachable(&error) {
            tracing::debug!(client = "admin", error = %error, reason, "librdkafka error");
        } else {
            global().kafka_error("admin", &error, reason);
        }
    }

    fn stats(&self, _statistics: rdkafka::Statistics) {}
}

impl rdkafka::consumer::ConsumerContext for AdminCtx {}

/// Errors that mean "a broker cannot be reached", which librdkafka retries by
/// itself and the state lines report once.
fn is_unreachable(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
        )
    )
}

/// Sends a state to systemd's notify socket when run under `Type=notify`; does
/// nothing otherwise. A datagram to a local socket, sent non-blocking.
pub fn sd_notify(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let _ = sock.set_nonblocking(true);
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    // WATCHDOG_PID, when set, names the process the watchdog is for.
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_held_back_within_the_window_and_counted() {
        let h = Health::default();
        assert_eq!(h.first_in_window("k"), Some(0));
        assert_eq!(h.first_in_window("k"), None);
        assert_eq!(h.first_in_window("k"), None);
        assert_eq!(h.first_in_window("other"), Some(0));
        // Age the entry past the window: the next line says how many were held.
        if let Some((at, _)) = h.lock().repeats.get_mut("k") {
            *at -= REPEAT_WINDOW;
        }
        assert_eq!(h.first_in_window("k"), Some(2));
    }

    #[test]
    fn a_replica_without_partitions_is_ready_when_its_group_is_steady() {
        let h = Health::default();
        h.register_stream("events", None);
        h.client_state("events", Conn::Up, "");
        let r = h.readiness();
        assert_eq!(r.status, "unready", "{r:?}");
        if let Some(s) = h.lock().streams.get_mut("events") {
            s.group = Some(("up".into(), "steady".into()));
        }
        let r = h.readiness();
        assert_eq!(r.status, "ready", "{r:?}");
    }

    #[test]
    fn an_outage_makes_the_replica_unready_until_every_client_is_back() {
        let h = Health::default();
        h.register_stream("a", None);
        h.register_stream("b", None);
        h.assigned("a", &[("t".into(), 0)]);
        h.assigned("b", &[("t".into(), 0)]);
        h.client_state("a", Conn::Up, "");
        h.client_state("b", Conn::Up, "");
        assert!(h.readiness().ready());
        h.client_state("a", Conn::Down(Instant::now()), "");
        h.client_state("b", Conn::Down(Instant::now()), "");
        let r = h.readiness();
        assert!(!r.ready());
        assert!(
            r.problems.iter().any(|p| p.contains("unreachable since")),
            "{r:?}"
        );
        h.client_state("a", Conn::Up, "");
        assert!(!h.readiness().ready());
        h.client_state("b", Conn::Up, "");
        assert!(h.readiness().ready());
    }

    #[test]
    fn a_stalled_stream_is_unready_but_an_open_breaker_only_degraded() {
        let h = Health::default();
        h.configure(Duration::from_secs(60));
        let breaker = Arc::new(FakeBreaker::default());
        h.register_stream("t", Some(breaker.clone()));
        h.assigned("t", &[("x".into(), 0)]);
        h.client_state("t", Conn::Up, "");
        h.oldest_unresolved("t", Some(Duration::from_secs(61)));
        let r = h.readiness();
        assert_eq!(r.status, "unready", "{r:?}");
        assert!(r.problems[0].contains("oldest unresolved update"), "{r:?}");
        h.dead_letter_failed("topic authorization failed");
        assert!(
            h.readiness()
                .problems
                .iter()
                .any(|p| p.contains("dead-letter"))
        );
        h.dead_letter_written();
        h.oldest_unresolved("t", Some(Duration::from_secs(1)));
        assert_eq!(h.readiness().status, "ready");

        // The target goes down: its update waits in Kafka, as old as it gets, and
        // the replica stays in service, saying what is degraded.
        breaker.open.store(true, Ordering::Relaxed);
        h.oldest_unresolved("t", Some(Duration::from_secs(3600)));
        let r = h.readiness();
        assert_eq!(r.status, "degraded", "{r:?}");
        assert!(r.ready());
        assert!(r.degraded[0].contains("breaker open"), "{r:?}");
    }

    /// A breaker that is open when told: health only reads the state, and the
    /// engine's breakers test how they get there.
    #[derive(Debug, Default)]
    struct FakeBreaker {
        open: std::sync::atomic::AtomicBool,
    }

    impl TargetBreaker for FakeBreaker {
        fn state(&self) -> BreakerState {
            if self.open.load(Ordering::Relaxed) {
                BreakerState::Open
            } else {
                BreakerState::Closed
            }
        }
    }
}
