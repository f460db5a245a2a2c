//! Logs and metrics. Everything that happens to an update is one typed event whose
//! `emit` writes the log line and updates the metrics together, so the two never
//! disagree (the pattern of Vector's `internal_events`).
//!
//! Levels: ERROR = an update did not reach someone, or an operator must act; WARN =
//! degraded but handled (a retry); INFO = lifecycle; DEBUG = per-request detail.
//! Metric labels are low-cardinality only (channel, target, outcome, class): never an
//! incident id.

use clarion_core::{ErrorClass, IncidentUpdate};

use std::time::Duration;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// A dependency whose log lines repeat ours (see `init_logs`).
const QUIET_TARGET: &str = "rustls_platform_verifier";

static DEFAULT_FILTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Changes the filter used when `RUST_LOG` is unset (the demo uses `warn`).
pub fn set_default_filter(filter: &str) {
    let _ = DEFAULT_FILTER.set(filter.to_string());
}

/// Installs the global subscriber. `RUST_LOG` overrides the default filter (`info`);
/// the certificate verifier's own log lines stay off unless it names them.
pub fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = DEFAULT_FILTER.get().map(String::as_str).unwrap_or("info");
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // rustls-platform-verifier logs every failed certificate check at ERROR (through
    // the `log` bridge), on every attempt, inside the delivery's span; the delivery's
    // own WARN line already carries the same error with the target, the attempt and
    // what happens next. A wrong certificate for an hour would double the log, and
    // at the wrong level. Off unless `RUST_LOG` names the verifier.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains(QUIET_TARGET))
        && let Ok(directive) = format!("{QUIET_TARGET}=off").parse()
    {
        filter = filter.add_directive(directive);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests running the daemon twice in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .with_target(false)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

/// Installs the Prometheus recorder and serves `/metrics`, `/livez` and `/readyz`
/// on `listen` (e.g. `0.0.0.0:9464`) until `shutdown`; every other path is 404.
/// Every metric is registered first, with zero values, so `/metrics` is complete
/// before any traffic (and alerts on `absent()` or `rate()` work from the start).
pub async fn serve(
    listen: &str,
    settings: &crate::config::Settings,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| anyhow::anyhow!("metrics.listen: `{listen}` is not host:port: {e}"))?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ],
        )?
        .install_recorder()?;
    describe();
    register(settings);
    crate::ops::health::global().configure(settings.health.max_unresolved_age);
    // Bound before the daemon starts, so a port in use fails the start.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.listen: cannot listen on {addr}: {e}"))?;
    tokio::spawn(heartbeat(Some(handle.clone()), shutdown.clone()));
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move {
                    // The gauge is what /readyz would answer now, not at the last
                    // heartbeat, so a scrape never contradicts a probe.
                    publish_ready();
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        )
        .route("/livez", axum::routing::get(livez))
        .route("/readyz", axum::routing::get(readyz))
        .fallback(|| async {
            (
                axum::http::StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({
                    "error": "not found; the paths are /metrics, /livez and /readyz"
                })),
            )
        });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics and health listener stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics, /livez and /readyz");
    Ok(())
}

/// Starts the runtime's heartbeat without a metrics listener ([`serve`] starts it
/// otherwise), so that systemd's watchdog is fed either way.
pub fn start_heartbeat(shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(heartbeat(None, shutdown));
}

/// The runtime's heartbeat: a task that must be scheduled every second for
/// `/livez` to pass and for systemd's watchdog to be fed, so a wedged runtime (every
/// worker blocked) fails both. It also publishes `clarion_ready` and keeps the
/// recorder's histograms drained.
async fn heartbeat(
    handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let health = crate::ops::health::global();
    let watchdog = crate::ops::health::watchdog_interval();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut turns: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => health.stopping(),
        }
        health.beat();
        publish_ready();
        if watchdog.is_some() {
            crate::ops::health::sd_notify("WATCHDOG=1");
        }
        turns += 1;
        if let Some(handle) = &handle
            && turns % 5 == 0
        {
            handle.run_upkeep();
        }
        if shutdown.is_cancelled() {
            // Keep beating while the daemon drains, without spinning.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Sets `clarion_ready` from the current readiness verdict.
fn publish_ready() {
    let ready = crate::ops::health::global().readiness().ready();
    metrics::gauge!("clarion_ready").set(if ready { 1.0 } else { 0.0 });
}

async fn livez() -> impl axum::response::IntoResponse {
    let age = crate::ops::health::global().heartbeat_age();
    let alive = age < crate::ops::health::LIVENESS_STALE;
    let status = if alive {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({
            "status": if alive { "alive" } else { "runtime stalled" },
            "heartbeat_age_ms": age.as_millis() as u64,
        })),
    )
}

async fn readyz() -> impl axum::response::IntoResponse {
    let r = crate::ops::health::global().readiness();
    let status = if r.ready() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r))
}

/// The build, for `clarion_build_info`: the crate version and the git revision
/// `build.rs` found ("unknown" outside a git checkout).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("CLARION_GIT_REVISION");

/// Every delivery outcome label of `clarion_delivery_attempts_total`.
const ATTEMPT_OUTCOMES: &[&str] = &["delivered", "retryable", "permanent", "recipient_gone"];
/// Every outcome label of `clarion_notifications_total`.
const FINAL_OUTCOMES: &[&str] = &["delivered", "dead_lettered", "superseded"];
/// Every `reason` label of `clarion_notifications_failed_total`.
const FAILURE_REASONS: &[&str] = &[
    "permanent",
    "recipient_gone",
    "retries_exhausted",
    "outage",
    "template",
    "panic",
];

/// Registers every series with zero values: label-less ones, and per target and
/// per stream those whose labels are known at start. Partition lag series appear
/// when partitions are assigned.
pub fn register(settings: &crate::config::Settings) {
    use metrics::{counter, gauge, histogram};
    gauge!("clarion_build_info", "version" => VERSION, "revision" => REVISION).set(1.0);
    gauge!("clarion_ready").set(0.0);
    // Reserved for config reload, which sets them on every SIGHUP: the config the
    // process started with is a successful load.
    gauge!("clarion_config_last_reload_success").set(1.0);
    gauge!("clarion_config_last_reload_success_timestamp_seconds")
        .set(jiff::Timestamp::now().as_millisecond() as f64 / 1000.0);
    counter!("clarion_events_consumed_total").absolute(0);
    counter!("clarion_key_mismatches_total").absolute(0);
    if settings.status_page.is_some() {
        counter!("clarion_status_page_records_total").absolute(0);
    }
    for kind in ["malformed_event", "unknown_audience"] {
        counter!("clarion_events_rejected_total", "kind" => kind).absolute(0);
        counter!("clarion_dead_letters_total", "kind" => kind, "target" => "-", "channel" => "-")
            .absolute(0);
    }
    for record in ["dead_letter", "dead_recipient"] {
        for class in ["transient", "too_large", "permanent"] {
            counter!("clarion_dead_letter_write_failures_total", "record" => record, "class" => class).absolute(0);
        }
    }
    counter!("clarion_records_dropped_total", "record" => "ledger_pending").absolute(0);
    gauge!("clarion_kafka_connected", "client" => crate::ops::health::PRODUCER).set(0.0);
    counter!("clarion_panics_total", "target" => "events").absolute(0);
    let mut streams = vec!["events".to_string()];
    for t in &settings.targets {
        let target = t.name.to_string();
        let channel = t.kind.as_str();
        streams.push(target.clone());
        gauge!("clarion_breaker_state", "target" => target.clone()).set(0.0);
        for to in ["closed", "half_open", "open"] {
            counter!("clarion_breaker_transitions_total", "target" => target.clone(), "to" => to)
                .absolute(0);
        }
        for outcome in ATTEMPT_OUTCOMES {
            counter!("clarion_delivery_attempts_total", "channel" => channel, "target" => target.clone(), "outcome" => *outcome).absolute(0);
        }
        for outcome in FINAL_OUTCOMES {
            counter!("clarion_notifications_total", "target" => target.clone(), "outcome" => *outcome).absolute(0);
            let _ = histogram!("clarion_end_to_end_latency_seconds", "target" => target.clone(), "outcome" => *outcome);
        }
        for reason in FAILURE_REASONS {
            counter!("clarion_notifications_failed_total", "target" => target.clone(), "channel" => channel, "reason" => *reason).absolute(0);
        }
        counter!("clarion_dead_letters_total", "kind" => "delivery_failed", "target" => target.clone(), "channel" => channel).absolute(0);
        counter!("clarion_panics_total", "target" => target.clone()).absolute(0);
        let providers: Vec<String> = std::iter::once(t.provider_name.to_string())
            .chain(t.backups.iter().map(|b| b.name.to_string()))
            .collect();
        if providers.len() > 1 {
            for provider in &providers {
                gauge!("clarion_provider_breaker_state", "target" => target.clone(), "provider" => provider.clone()).set(0.0);
            }
        }
        if t.drill.is_some() {
            // 0: no successful drill since this process started.
            for provider in &providers {
                gauge!("clarion_drill_last_success_timestamp_seconds", "target" => target.clone(), "provider" => provider.clone()).set(0.0);
            }
        }
        let _ = histogram!("clarion_send_duration_seconds", "target" => target.clone(), "channel" => channel);
        let _ = histogram!("clarion_delivery_latency_seconds", "channel" => channel, "target" => target.clone());
    }
    // Targets that ask for confirmation (docs/confirmations.md).
    if settings.confirmations.listener.is_some() {
        for t in &settings.targets {
            let asks = t.confirm.is_some()
                || t.audiences
                    .iter()
                    .any(|a| settings.confirmations.by_audience.contains_key(a));
            if !asks {
                continue;
            }
            let target = t.name.to_string();
            counter!("clarion_confirmation_requests_total", "target" => target.clone()).absolute(0);
            for met in ["true", "false"] {
                counter!("clarion_confirmation_notices_total", "target" => target.clone(), "met" => met).absolute(0);
            }
            for outcome in ["confirmed", "not_confirmed", "unreachable"] {
                counter!("clarion_confirmation_outcomes_total", "target" => target.clone(), "outcome" => outcome).absolute(0);
            }
            for via in ["link", "sms", "voice"] {
                counter!("clarion_confirmations_total", "target" => target.clone(), "via" => via)
                    .absolute(0);
            }
            gauge!("clarion_confirmations_open", "target" => target.clone()).set(0.0);
            gauge!("clarion_confirmations_overdue", "target" => target.clone()).set(0.0);
            let _ = histogram!("clarion_time_to_confirm_seconds", "target" => target.clone());
        }
    }
    for stream in streams {
        for name in [
            "clarion_stream_lag_records",
            "clarion_stream_in_flight",
            "clarion_stream_window",
            "clarion_oldest_unresolved_age_seconds",
            "clarion_stream_assigned_partitions",
            "clarion_kafka_connected",
        ] {
            let label = if name == "clarion_kafka_connected" {
                "client"
            } else {
                "stream"
            };
            gauge!(name, label => stream.clone()).set(0.0);
        }
        counter!("clarion_stream_pauses_total", "stream" => stream.clone()).absolute(0);
        counter!("clarion_commit_failures_total", "stream" => stream.clone()).absolute(0);
        for kind in ["assign", "revoke"] {
            counter!("clarion_rebalances_total", "stream" => stream.clone(), "kind" => kind)
                .absolute(0);
        }
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "clarion_events_consumed_total",
        "Incident updates read from Kafka."
    );
    describe_counter!(
        "clarion_events_rejected_total",
        "Records that were not valid incident updates (dead-lettered), by reason."
    );
    describe_counter!(
        "clarion_delivery_attempts_total",
        "Delivery attempts per target, by outcome (delivered, retryable, permanent, recipient_gone)."
    );
    describe_counter!(
        "clarion_dead_letters_total",
        "Records written to the dead-letter topic, by kind and target."
    );
    describe_histogram!(
        "clarion_delivery_latency_seconds",
        Unit::Seconds,
        "Time from the update's Kafka timestamp to its delivery, per target."
    );
    describe_counter!(
        "clarion_dead_letter_write_failures_total",
        "Failed writes to the dead-letter and dead-recipient topics, by record and error class."
    );
    describe_counter!(
        "clarion_records_dropped_total",
        "Records nothing waited on (ledger `pending` records) that the producer could not write, by record."
    );
    describe_counter!(
        "clarion_panics_total",
        "Deliveries that panicked (a bug), dead-lettered with the panic message."
    );
    describe_counter!(
        "clarion_key_mismatches_total",
        "Records whose Kafka key is not their incident id."
    );
    describe_counter!(
        "clarion_status_page_records_total",
        "Updates recorded in their incident's public timeline on the status page topic."
    );
    describe_histogram!(
        "clarion_status_page_render_seconds",
        Unit::Seconds,
        "Time to render the status page, for an origin or the daemon's listener."
    );
    describe_counter!(
        "clarion_notifications_total",
        "Deliveries ended per target, by final outcome (delivered, dead_lettered, superseded)."
    );
    describe_counter!(
        "clarion_notifications_failed_total",
        "Deliveries given up per target and channel, by reason."
    );
    describe_histogram!(
        "clarion_send_duration_seconds",
        Unit::Seconds,
        "How long one attempt's send took: the target's own speed, without backoff."
    );
    describe_histogram!(
        "clarion_end_to_end_latency_seconds",
        Unit::Seconds,
        "Time from the update's Kafka timestamp to the end of its delivery, by outcome."
    );
    describe_gauge!(
        "clarion_stream_lag_records",
        "Records of the source topic not yet consumed by this stream's partitions (librdkafka statistics)."
    );
    describe_gauge!(
        "clarion_partition_lag_records",
        "Consumer lag per assigned partition, per stream (0 once the partition is revoked)."
    );
    describe_gauge!(
        "clarion_oldest_unresolved_age_seconds",
        Unit::Seconds,
        "Age of the stream's oldest admitted and unresolved update (0 when none)."
    );
    describe_gauge!(
        "clarion_stream_in_flight",
        "Updates admitted by the stream and not yet resolved."
    );
    describe_gauge!(
        "clarion_stream_window",
        "Admitted updates whose offsets are not committed yet (the backpressure window)."
    );
    describe_gauge!(
        "clarion_stream_assigned_partitions",
        "Partitions currently assigned to this replica's stream."
    );
    describe_counter!(
        "clarion_stream_pauses_total",
        "Times a stream paused fetching (window full or target down)."
    );
    describe_counter!(
        "clarion_rebalances_total",
        "Consumer-group rebalances seen by a stream, by kind (assign, revoke)."
    );
    describe_counter!(
        "clarion_commit_failures_total",
        "Offset commits that failed, per stream."
    );
    describe_gauge!(
        "clarion_breaker_state",
        "Circuit breaker per target: 0 closed, 1 half-open (probing), 2 open."
    );
    describe_counter!(
        "clarion_breaker_transitions_total",
        "Breaker state changes per target, by the state entered."
    );
    describe_gauge!(
        "clarion_provider_breaker_state",
        "Circuit breaker per provider of a target with backups: 0 closed, 1 half-open, 2 open (clarion_breaker_state is the best of them)."
    );
    describe_counter!(
        "clarion_provider_breaker_transitions_total",
        "Breaker state changes per provider of a target with backups, by the state entered."
    );
    describe_counter!(
        "clarion_failovers_total",
        "Deliveries that moved from one provider of a target to another (from, to)."
    );
    describe_counter!(
        "clarion_fallbacks_total",
        "People a people target could not reach on one channel and tries on their next (from, to)."
    );
    describe_counter!(
        "clarion_people_reached_total",
        "People reached by people targets, by the channel that reached them."
    );
    describe_counter!(
        "clarion_directory_pruned_total",
        "Dead addresses removed from the stakeholder directory, by kind (push, sms, email)."
    );
    describe_gauge!(
        "clarion_directory_people",
        "People in the stakeholder directory this process holds."
    );
    describe_gauge!(
        "clarion_drill_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last drill delivered through each provider of a target; 0: none since this process started."
    );
    describe_counter!(
        "clarion_confirmation_requests_total",
        "Notices sent that their recipients must confirm (cases opened), per target."
    );
    describe_counter!(
        "clarion_confirmations_total",
        "Recipients' first confirmations, per target, by how they came (link, sms, voice)."
    );
    describe_histogram!(
        "clarion_time_to_confirm_seconds",
        Unit::Seconds,
        "From a notice going out to a recipient's confirmation, per target."
    );
    describe_counter!(
        "clarion_confirmation_notices_total",
        "Notices whose confirmation window closed, per target, by whether they got what they require (met)."
    );
    describe_counter!(
        "clarion_confirmation_outcomes_total",
        "Recipients of closed notices, per target, by outcome (confirmed, not_confirmed, unreachable)."
    );
    describe_gauge!(
        "clarion_confirmations_open",
        "Notices whose confirmation window is open, per target (as this replica's view has them)."
    );
    describe_gauge!(
        "clarion_confirmations_overdue",
        "Notices past their confirmation window without what they require and not closed yet, per target."
    );
    describe_counter!(
        "clarion_inbound_requests_total",
        "Requests to the inbound listener, by route (page, confirm, keypress, call_status, sms, other, any) and outcome."
    );
    describe_gauge!(
        "clarion_build_info",
        "Always 1; the version and git revision of the running binary are its labels."
    );
    describe_gauge!(
        "clarion_ready",
        "1 when /readyz answers 200 (ready or degraded), else 0."
    );
    describe_gauge!(
        "clarion_kafka_connected",
        "1 when the Kafka client (a stream's consumer, or the producer) has a broker connection."
    );
    describe_gauge!(
        "clarion_config_last_reload_success",
        "1 when the last config load (start or SIGHUP) succeeded, else 0."
    );
    describe_gauge!(
        "clarion_config_last_reload_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the last successful config load."
    );
}

/// A record that is not a valid incident update.
#[derive(Debug)]
pub struct EventRejected<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub reason: &'a str,
    pub kind: &'static str,
}

impl EventRejected<'_> {
    pub fn emit(&self) {
        tracing::error!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            reason = self.reason,
            "rejected a record that is not a valid incident update; it goes to the dead-letter topic"
        );
        metrics::counter!("clarion_events_rejected_total", "kind" => self.kind).increment(1);
    }
}

/// A drill delivery succeeded through `provider` of `target`.
pub fn drill_succeeded(target: &str, provider: &str) {
    let now = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    metrics::gauge!("clarion_drill_last_success_timestamp_seconds", "target" => target.to_string(), "provider" => provider.to_string()).set(now);
}

/// A delivery moves from one of its target's providers to another.
#[derive(Debug)]
pub struct FailedOver<'a> {
    pub update: &'a IncidentUpdate,
    pub target: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub why: &'a str,
}

impl FailedOver<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            incident_id = %self.update.incident_id,
            update_id = %self.update.update_id,
            target = self.target,
            from = self.from,
            to = self.to,
            why = self.why,
            "delivery goes to another provider"
        );
        metrics::counter!("clarion_failovers_total", "target" => self.target.to_string(), "from" => self.from.to_string(), "to" => self.to.to_string()).increment(1);
    }
}

/// A person a people target could not reach on one channel is tried on the next.
#[derive(Debug)]
pub struct FellBack<'a> {
    pub update: &'a IncidentUpdate,
    pub target: &'a str,
    pub person: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    /// The error class of the last failure on `from` (`permanent`, `recipient_gone`,
    /// `retryable` when its budget ran out or the leg is down).
    pub class: &'a str,
    pub reason: &'a str,
}

impl FellBack<'_> {
    pub fn emit(&self) {
        tracing::info!(
            incident_id = %self.update.incident_id,
            update_id = %self.update.update_id,
            target = self.target,
            person = self.person,
            from = self.from,
            to = self.to,
            class = self.class,
            reason = self.reason,
            "person falls back to their next channel"
        );
        metrics::counter!("clarion_fallbacks_total", "target" => self.target.to_string(), "from" => self.from.to_string(), "to" => self.to.to_string()).increment(1);
    }
}

/// One attempt's result for one recipient (or the whole target).
///
/// Every line about a delivery carries the incident, update, sequence, status,
/// target, channel, masked recipient, attempt, outcome (the error class) and next
/// step as fields of its own, so a WARN-only log still says which incident it is
/// about (the `delivery` span's fields vanish when INFO is filtered out).
#[derive(Debug)]
pub struct DeliveryAttempted<'a> {
    pub update: &'a IncidentUpdate,
    pub channel: &'static str,
    pub target: &'a str,
    /// The provider the attempt went through (`primary` unless named).
    pub provider: &'a str,
    pub recipient: Option<&'a str>,
    pub attempt: u32,
    /// `Ok(provider id)` or the error.
    pub result: Result<Option<&'a str>, (&'a ErrorClass, &'a str)>,
    /// Time since the update's Kafka timestamp.
    pub latency: Duration,
    /// The retry wait that follows, for retryable failures.
    pub next_retry: Option<Duration>,
    /// The provider the delivery fails over to for its next try, if it does.
    pub failover_to: Option<&'a str>,
}

impl DeliveryAttempted<'_> {
    pub fn emit(&self) {
        let latency_ms = self.latency.as_millis() as u64;
        let recipient = clarion_core::mask(self.recipient);
        let recipient = recipient.as_str();
        let u = self.update;
        match self.result {
            Ok(provider_id) => {
                tracing::info!(
                    incident_id = %u.incident_id,
                    update_id = %u.update_id,
                    sequence = u.sequence,
                    status = u.status.as_str(),
                    target = self.target,
                    channel = self.channel,
                    provider = self.provider,
                    attempt = self.attempt,
                    recipient,
                    outcome = "delivered",
                    latency_ms,
                    provider_id = provider_id.unwrap_or("-"),
                    "delivered"
                );
                metrics::counter!("clarion_delivery_attempts_total", "channel" => self.channel, "target" => self.target.to_string(), "outcome" => "delivered").increment(1);
                metrics::histogram!("clarion_delivery_latency_seconds", "channel" => self.channel, "target" => self.target.to_string()).record(self.latency.as_secs_f64());
            }
            Err((class, reason)) => {
                let outcome = class.as_str();
                let next = match self.next_retry {
                    Some(_) if let Some(p) = self.failover_to => {
                        format!("fail over to provider {p}")
                    }
                    Some(w) if w.is_zero() => "wait for the target (breaker)".to_string(),
                    Some(w) => format!("retry in {}", humantime::format_duration(round_ms(w))),
                    None => "dead-letter".to_string(),
                };
                tracing::warn!(
                    incident_id = %u.incident_id,
                    update_id = %u.update_id,
                    sequence = u.sequence,
                    status = u.status.as_str(),
                    target = self.target,
                    channel = self.channel,
                    provider = self.provider,
                    attempt = self.attempt,
                    recipient,
                    outcome,
                    latency_ms,
                    next = next.as_str(),
                    reason,
                    "{}",
                    if self.next_retry.is_some() { "delivery failed, will retry" } else { "delivery failed" }
                );
                metrics::counter!("clarion_delivery_attempts_total", "channel" => self.channel, "target" => self.target.to_string(), "outcome" => outcome).increment(1);
            }
        }
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A delivery that ended in the dead-letter topic.
#[derive(Debug)]
pub struct DeliveryDeadLettered<'a> {
    pub update: &'a IncidentUpdate,
    pub channel: &'static str,
    pub target: &'a str,
    pub recipient: Option<&'a str>,
    pub attempts: u32,
    pub reason: &'a str,
    /// The `reason` label: permanent, recipient_gone, retries_exhausted, outage,
    /// template, panic.
    pub failure: &'static str,
}

impl DeliveryDeadLettered<'_> {
    pub fn emit(&self) {
        let u = self.update;
        tracing::error!(
            incident_id = %u.incident_id,
            update_id = %u.update_id,
            sequence = u.sequence,
            status = u.status.as_str(),
            target = self.target,
            channel = self.channel,
            attempt = self.attempts,
            recipient = clarion_core::mask(self.recipient).as_str(),
            outcome = "dead_lettered",
            failure = self.failure,
            reason = self.reason,
            "delivery given up; written to the dead-letter topic"
        );
        metrics::counter!("clarion_dead_letters_total", "kind" => "delivery_failed", "target" => self.target.to_string(), "channel" => self.channel).increment(1);
        metrics::counter!("clarion_notifications_failed_total", "target" => self.target.to_string(), "channel" => self.channel, "reason" => self.failure).increment(1);
        crate::ops::health::global().dead_letter_written();
    }
}

/// A delivery that a newer update of its incident made unnecessary.
#[derive(Debug)]
pub struct DeliverySuperseded<'a> {
    pub update: &'a IncidentUpdate,
    pub target: &'a str,
    pub channel: &'static str,
    pub by: &'a str,
}

impl DeliverySuperseded<'_> {
    pub fn emit(&self) {
        let u = self.update;
        tracing::info!(
            incident_id = %u.incident_id,
            update_id = %u.update_id,
            sequence = u.sequence,
            status = u.status.as_str(),
            target = self.target,
            channel = self.channel,
            outcome = "superseded",
            superseded_by = self.by,
            "superseded by update {}; not sent",
            self.by
        );
    }
}

/// The final outcome of one delivery (per recipient), as Alertmanager's
/// `notifications_total` counts notifications.
#[derive(Debug)]
pub struct DeliveryEnded<'a> {
    pub target: &'a str,
    /// delivered, dead_lettered, superseded.
    pub outcome: &'static str,
    /// Since the update's Kafka timestamp.
    pub latency: Duration,
}

impl DeliveryEnded<'_> {
    pub fn emit(&self) {
        metrics::counter!("clarion_notifications_total", "target" => self.target.to_string(), "outcome" => self.outcome).increment(1);
        metrics::histogram!("clarion_end_to_end_latency_seconds", "target" => self.target.to_string(), "outcome" => self.outcome).record(self.latency.as_secs_f64());
    }
}

/// How long one attempt's `send` took: the target's own speed, apart from the time
/// spent waiting in backoff or for the breaker.
pub fn send_duration(target: &str, channel: &'static str, took: Duration) {
    metrics::histogram!("clarion_send_duration_seconds", "target" => target.to_string(), "channel" => channel).record(took.as_secs_f64());
}

/// Records that a rejected record was dead-lettered (the metric side of
/// [`EventRejected`], once the record is safely written); `kind` is the dead-letter
/// kind (`malformed_event`, `unknown_audience`).
pub fn record_dead_lettered(kind: &'static str) {
    metrics::counter!("clarion_dead_letters_total", "kind" => kind, "target" => "-", "channel" => "-").increment(1);
    crate::ops::health::global().dead_letter_written();
}

/// A write to the dead-letter or dead-recipient topic failed.
#[derive(Debug)]
pub struct DeadLetterWriteFailed<'a> {
    pub topic: &'a str,
    /// `dead_letter` or `dead_recipient`.
    pub what: &'static str,
    /// `transient`, `too_large`, `permanent`.
    pub class: &'static str,
    pub error: &'a str,
    /// When it is tried again; `None` when it is not (truncated, or given up).
    pub retry_in: Option<Duration>,
}

impl DeadLetterWriteFailed<'_> {
    pub fn emit(&self) {
        match self.retry_in {
            Some(wait) => tracing::error!(
                topic = self.topic,
                record = self.what,
                class = self.class,
                error = self.error,
                retry_in_ms = wait.as_millis() as u64,
                "cannot write to Kafka; the update stays unresolved until it can"
            ),
            None if self.class == "too_large" => tracing::warn!(
                topic = self.topic,
                record = self.what,
                error = self.error,
                "record too large for the topic; writing it again truncated"
            ),
            None => tracing::error!(
                topic = self.topic,
                record = self.what,
                class = self.class,
                error = self.error,
                "Kafka refused the record for good; not written (the dead letter carries the same facts)"
            ),
        }
        metrics::counter!("clarion_dead_letter_write_failures_total", "record" => self.what, "class" => self.class).increment(1);
        // A refusal for good (authorization, a deleted topic) is what readiness
        // reports; a transient failure is the broker outage, reported as such.
        if self.class == "permanent" && self.what == "dead_letter" {
            crate::ops::health::global().dead_letter_failed(self.error);
        }
    }
}

/// A record nothing waited on (a ledger `pending` record) could not be written: the
/// producer's queue was full or the broker refused it. Readers then show the state
/// before it; nothing is lost but the detail.
#[derive(Debug)]
pub struct RecordDropped<'a> {
    pub topic: &'a str,
    pub what: &'static str,
    pub error: &'a str,
}

impl RecordDropped<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            topic = %self.topic,
            record = self.what,
            error = %self.error,
            "record not written (it was not waited on; the ledger shows the state before it)"
        );
        metrics::counter!("clarion_records_dropped_total", "record" => self.what).increment(1);
    }
}

/// A delivery task panicked: a bug, contained to its delivery.
#[derive(Debug)]
pub struct DeliveryPanicked<'a> {
    pub target: &'a str,
    pub message: &'a str,
}

impl DeliveryPanicked<'_> {
    pub fn emit(&self) {
        tracing::error!(
            target_name = self.target,
            panic = self.message,
            "a delivery panicked; it is dead-lettered with the panic message (this is a bug: please report it)"
        );
        metrics::counter!("clarion_panics_total", "target" => self.target.to_string()).increment(1);
    }
}

/// A record whose Kafka key is not its incident id: per-incident order is then not
/// guaranteed, because another partitioner may put the incident's updates elsewhere.
#[derive(Debug)]
pub struct KeyMismatch<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub incident_id: &'a str,
    /// The key as text (lossy), or `None` when the record had no key.
    pub key: Option<&'a str>,
}

impl KeyMismatch<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            incident_id = self.incident_id,
            key = self.key.unwrap_or("(none)"),
            "record key is not the incident id; this incident's updates may land on several partitions and lose their order (publish with key = incident_id)"
        );
        metrics::counter!("clarion_key_mismatches_total").increment(1);
    }
}

/// Counts a consumed record.
pub fn consumed() {
    metrics::counter!("clarion_events_consumed_total").increment(1);
}

/// An update recorded in its incident's public timeline on the status page topic.
#[derive(Debug)]
pub struct StatusPageRecorded<'a> {
    pub incident_id: &'a str,
    pub update_id: &'a str,
    /// Updates the incident's timeline holds now.
    pub updates: usize,
    pub bytes: usize,
}

impl StatusPageRecorded<'_> {
    pub fn emit(&self) {
        tracing::info!(
            incident_id = self.incident_id,
            update_id = self.update_id,
            updates = self.updates,
            bytes = self.bytes,
            "update recorded for the status page"
        );
        metrics::counter!("clarion_status_page_records_total").increment(1);
    }
}

/// The status page rendered, for an origin or for the daemon's own listener.
#[derive(Debug)]
pub struct StatusPageRendered {
    pub files: usize,
    pub took: Duration,
}

impl StatusPageRendered {
    pub fn emit(&self) {
        tracing::debug!(
            files = self.files,
            took_ms = self.took.as_secs_f64() * 1000.0,
            "status page rendered"
        );
        metrics::histogram!("clarion_status_page_render_seconds").record(self.took.as_secs_f64());
    }
}

/// A notice went out that its recipients must confirm: its case was opened.
#[derive(Debug)]
pub struct ConfirmationRequested<'a> {
    pub target: &'a str,
    /// `each`, `any`, `quorum:N`.
    pub require: &'a str,
}

impl ConfirmationRequested<'_> {
    pub fn emit(&self) {
        tracing::info!(target_name = %self.target, require = %self.require, "confirmation requested");
        metrics::counter!("clarion_confirmation_requests_total", "target" => self.target.to_string())
            .increment(1);
    }
}

/// A recipient confirmed a notice (their first confirmation).
#[derive(Debug)]
pub struct ConfirmationReceived<'a> {
    pub incident_id: &'a str,
    pub target: &'a str,
    /// `link`, `sms`, `voice`.
    pub via: &'a str,
    /// From the notice's opening to the confirmation.
    pub took: Duration,
    pub drill: bool,
}

impl ConfirmationReceived<'_> {
    pub fn emit(&self) {
        tracing::info!(
            incident_id = %self.incident_id,
            target_name = %self.target,
            via = %self.via,
            took_ms = self.took.as_millis() as u64,
            drill = self.drill,
            "notice confirmed"
        );
        metrics::counter!("clarion_confirmations_total", "target" => self.target.to_string(), "via" => self.via.to_string())
            .increment(1);
        metrics::histogram!("clarion_time_to_confirm_seconds", "target" => self.target.to_string())
            .record(self.took.as_secs_f64());
    }
}

/// A notice's confirmation window closed.
#[derive(Debug)]
pub struct ConfirmationClosed<'a> {
    pub incident_id: &'a str,
    pub target: &'a str,
    /// It got what it required.
    pub met: bool,
    pub confirmed: usize,
    pub not_confirmed: usize,
    pub unreachable: usize,
    pub drill: bool,
}

impl ConfirmationClosed<'_> {
    pub fn emit(&self) {
        let (confirmed, not, unreachable) = (self.confirmed, self.not_confirmed, self.unreachable);
        for (o, n) in [
            ("confirmed", confirmed),
            ("not_confirmed", not),
            ("unreachable", unreachable),
        ] {
            metrics::counter!("clarion_confirmation_outcomes_total", "target" => self.target.to_string(), "outcome" => o)
                .increment(n as u64);
        }
        metrics::counter!("clarion_confirmation_notices_total", "target" => self.target.to_string(), "met" => if self.met { "true" } else { "false" })
            .increment(1);
        if self.met || self.drill {
            tracing::info!(incident_id = %self.incident_id, target_name = %self.target, met = self.met, confirmed, not_confirmed = not, unreachable, drill = self.drill, "confirmation window closed");
        } else {
            // An operator must act: someone who had to know may not.
            tracing::error!(incident_id = %self.incident_id, target_name = %self.target, confirmed, not_confirmed = not, unreachable, "confirmation window closed without the confirmations the notice requires");
        }
    }
}

/// Sets the open and overdue confirmation gauges per target.
pub fn confirmation_gauges(
    open: &std::collections::HashMap<String, u64>,
    overdue: &std::collections::HashMap<String, u64>,
) {
    static SEEN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.extend(open.keys().cloned());
    for t in seen.iter() {
        metrics::gauge!("clarion_confirmations_open", "target" => t.clone())
            .set(open.get(t).copied().unwrap_or(0) as f64);
        metrics::gauge!("clarion_confirmations_overdue", "target" => t.clone())
            .set(overdue.get(t).copied().unwrap_or(0) as f64);
    }
}
