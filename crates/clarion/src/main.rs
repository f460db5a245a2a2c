//! `clarion`: the command line. Parses arguments, sets up logging, and hands over to
//! the library; errors end here as a message and a non-zero exit code.

// Profiled (docs/benchmarks.md): with glibc's allocator, a third of the daemon's CPU
// under a backlog went to malloc and free, from four threads of librdkafka, tokio
// and hyper allocating small buffers per record and per request.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use clarion::config::{self, EnvSecrets};
use clarion::ops::telemetry::{self, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Turns transparent huge pages off for this process. mimalloc asks the kernel for
/// them (`MADV_HUGEPAGE`), and a 2 MiB page that still holds a few live objects stays
/// resident whole: under a 100,000-update backlog, a quarter of the daemon's peak RSS
/// was such pages (docs/benchmarks.md). The daemon's working set is tens of MiB, too
/// small for huge pages to save measurable TLB misses. Inherited by what it spawns.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        // Only a cost in memory; the daemon runs the same.
        eprintln!("note: cannot turn transparent huge pages off for this process: {e}");
    }
}

/// Incident communication daemon: Kafka in, every stakeholder channel out.
#[derive(Debug, Parser)]
#[command(name = "clarion", version, about)]
struct Cli {
    /// Log format: readable text, or JSON lines for log shippers.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "CLARION_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run {
        /// The config file.
        #[arg(
            long,
            short,
            default_value = DEFAULT_CONFIG,
            env = "CLARION_CONFIG"
        )]
        config: PathBuf,
    },
    /// Validate a config file (and the secrets it references) without running.
    CheckConfig {
        /// The config file [default: $CLARION_CONFIG, else config/clarion.toml].
        // The default and the environment variable are applied in `dispatch`: clap
        // counts a value from `env` as given, which would make FILE conflict with an
        // exported CLARION_CONFIG.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The config file, the older way (`check-config FILE`); same as --config.
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Also connect to every target and check it answers (no message is sent).
        #[arg(long)]
        connect: bool,
    },
    /// Work with the dead-letter topic.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// The Kafka topics the config names.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Run a self-contained demo: embedded Kafka, local receivers, a sample incident.
    Demo,
    /// Prove the channels work before an incident needs them: publish a drill
    /// through the running daemon to each target's drill_recipients and report
    /// PASS/FAIL per target and provider (docs/backups.md). Exit 0 all passed, 1 a
    /// target failed or timed out, 2 the drill cannot be run as asked.
    Drill {
        /// Drill this target only.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        target: Option<String>,
        /// Drill every target (each must have drill_recipients).
        #[arg(long)]
        all: bool,
        /// Skip each target's own provider as if it were down, so its backups are
        /// the ones proven.
        #[arg(long)]
        failover: bool,
        /// How long the whole drill may take: reaching Kafka, publishing, and every
        /// target's outcome.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// The config file (the daemon's).
        #[arg(
            long,
            short,
            default_value = DEFAULT_CONFIG,
            env = "CLARION_CONFIG"
        )]
        config: PathBuf,
    },
    /// Publish an incident update: fills update_id, sequence and occurred_at, shows
    /// where it goes, asks, and produces it keyed by incident (docs/publishing.md).
    /// Exit 0 published (with --follow: every target reached), 2 some delivery
    /// dead-lettered, 3 --follow timed out, 1 error or refused.
    Publish(Box<PublishArgs>),
    /// Show which targets would take an update, and the rule that decided (needs no
    /// secrets).
    Route {
        /// The update, as JSON (docs/events.md).
        #[arg(long)]
        event: PathBuf,
        /// The config file.
        #[arg(
            long,
            short,
            default_value = DEFAULT_CONFIG,
            env = "CLARION_CONFIG"
        )]
        config: PathBuf,
    },
    /// Print exactly what each target would receive for an update, without sending
    /// (needs no secrets).
    Render {
        /// The update, as JSON (docs/events.md).
        #[arg(long)]
        event: PathBuf,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// The config file.
        #[arg(
            long,
            short,
            default_value = DEFAULT_CONFIG,
            env = "CLARION_CONFIG"
        )]
        config: PathBuf,
    },
    /// What the delivery ledger says about one incident: every notice due (update ×
    /// target), one row per recipient, pending ones with why; deadlines. Exit 0
    /// when every notice is final and delivered (or superseded), 1 when some were
    /// dead-lettered, 2 when the ledger has nothing on it, 3 when some are not
    /// final yet (docs/publishing.md).
    Status {
        /// The incident id.
        incident: String,
        /// Only deliveries to this audience (e.g. `regulators`).
        #[arg(long)]
        audience: Option<String>,
        /// The ledger records as JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// The config file (for the brokers and kafka.ledger_topic).
        #[arg(
            long,
            short,
            default_value = DEFAULT_CONFIG,
            env = "CLARION_CONFIG"
        )]
        config: PathBuf,
    },
    /// The post-incident notification report of one incident: a timeline per
    /// audience, every notice, time to first notice and deadlines (docs/publishing.md).
    Report {
        /// The incident id.
        incident: String,
        /// Write a self-contained HTML page here.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Print the report's data as JSON.
        #[arg(long)]
        json: bool,
        /// The config file (brokers, kafka.ledger_topic, audiences' deadlines).
        #[arg(
            long,
            short,
            default_value = DEFAULT_CONFIG,
            env = "CLARION_CONFIG"
        )]
        config: PathBuf,
    },
}

/// `clarion publish`'s flags; each one set overrides the --file's or the
/// --statement's value.
#[derive(Debug, clap::Args)]
struct PublishArgs {
    /// The incident id (the record key; every update of an incident carries it).
    #[arg(long)]
    incident: Option<String>,
    /// investigating, identified, monitoring, resolved, scheduled, in_progress,
    /// verifying or completed.
    #[arg(long, value_parser = parse_enum::<clarion_core::Status>)]
    status: Option<clarion_core::Status>,
    /// none, minor, major or critical.
    #[arg(long, value_parser = parse_enum::<clarion_core::Impact>)]
    impact: Option<clarion_core::Impact>,
    #[arg(long)]
    title: Option<String>,
    #[arg(long)]
    message: Option<String>,
    /// Who hears it, comma-separated: customers,business,employees,regulators,…
    #[arg(long, value_delimiter = ',')]
    audiences: Option<Vec<String>>,
    /// Affected components, comma-separated.
    #[arg(long, value_delimiter = ',')]
    components: Option<Vec<String>>,
    /// Affected regions, comma-separated.
    #[arg(long, value_delimiter = ',')]
    regions: Option<Vec<String>>,
    /// An update as JSON (docs/events.md); update_id, sequence, occurred_at and
    /// schema_version may be left out.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// A pre-approved holding statement: statements/NAME.toml beside the config.
    #[arg(long, value_name = "NAME", conflicts_with = "file")]
    statement: Option<String>,
    /// A statement placeholder's value, `NAME=VALUE` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE", value_parser = parse_pair)]
    set: Vec<(String, String)>,
    /// Allow an update after the incident was resolved (reopens it).
    #[arg(long)]
    reopen: bool,
    /// Publish without asking (for scripts; without a terminal it is required).
    #[arg(long, short)]
    yes: bool,
    /// How long to keep trying while Kafka is unreachable.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
    /// Then follow the deliveries in the ledger (needs kafka.ledger_topic).
    #[arg(long)]
    follow: bool,
    /// How long --follow waits for every delivery to be final.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    follow_timeout: std::time::Duration,
    /// The config file (the same as `run`'s).
    #[arg(
        long,
        short,
        default_value = DEFAULT_CONFIG,
        env = "CLARION_CONFIG"
    )]
    config: PathBuf,
}

/// A status or impact, by its name in the event schema.
fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::from(s)).map_err(|e| e.to_string())
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}`: expected NAME=VALUE"))
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the topics the config names that the brokers lack (the source,
    /// dead-letter, ledger, incident-state, directory… topics), each with the
    /// settings the docs give it; topics that exist are left alone. Exit 0 when
    /// every one exists afterwards.
    Create {
        /// Only these topics (of the config's); all when none is given.
        #[arg(value_name = "TOPIC")]
        topics: Vec<String>,
        /// Partitions of each new topic [default: the source topic's, else 6].
        #[arg(long)]
        partitions: Option<i32>,
        /// Replicas of each new topic [default: the brokers' default].
        #[arg(long)]
        replication_factor: Option<i32>,
        /// The config file (the same as `run`'s).
        #[arg(
            long,
            short,
            default_value = DEFAULT_CONFIG,
            env = "CLARION_CONFIG"
        )]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Re-deliver one target's dead-lettered updates to that target only, with the
    /// same idempotency keys (docs/dead-letter.md, "Replaying"). Exits 0 when every
    /// one was delivered, 1 otherwise.
    Replay {
        /// The target whose failed deliveries are replayed.
        #[arg(long)]
        target: String,
        /// Only this incident's dead letters.
        #[arg(long)]
        incident: Option<String>,
        /// Only dead letters written since then: an RFC 3339 time, or a duration
        /// such as `2h` meaning "two hours ago".
        #[arg(long)]
        since: Option<String>,
        /// Print what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// The config file.
        #[arg(
            long,
            short,
            default_value = DEFAULT_CONFIG,
            env = "CLARION_CONFIG"
        )]
        config: PathBuf,
    },
}

/// The config file when none is named, relative to the working directory.
const DEFAULT_CONFIG: &str = "config/clarion.toml";

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Demo) && std::env::var_os("RUST_LOG").is_none() {
        // The demo's output is its table; keep the logs to what went wrong.
        telemetry::set_default_filter("warn");
    }
    telemetry::init_logs(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    // Dropping the runtime would wait for every blocking task, including a Kafka
    // close that the daemon already gave up on after its bounded wait: don't.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let settings = load(&config)?;
            let shutdown = CancellationToken::new();
            // Health and metrics are up before the streams start, so a probe sees
            // "starting" rather than a refused connection.
            match &settings.metrics.listen {
                Some(listen) => telemetry::serve(listen, &settings, shutdown.clone()).await?,
                None => telemetry::start_heartbeat(shutdown.clone()),
            }
            tokio::spawn(signals(shutdown.clone()));
            let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
            tokio::spawn(reload_on_sighup(config.clone(), reload_tx));
            clarion::engine::supervisor::run_reloadable(
                settings,
                &clarion::config::EnvSecrets,
                shutdown,
                None,
                reloads,
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig {
            config,
            file,
            connect,
        } => {
            // clap refuses FILE together with --config.
            let config = config
                .or(file)
                .or_else(|| std::env::var_os("CLARION_CONFIG").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
            let settings = load(&config)?;
            let ok = clarion::cli::check_config::run(&config, &settings, connect).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Dlq {
            command:
                DlqCommand::Replay {
                    target,
                    incident,
                    since,
                    dry_run,
                    config,
                },
        } => {
            let since = since
                .map(|s| clarion::cli::replay::parse_since(&s, jiff::Timestamp::now()))
                .transpose()?;
            let settings = load(&config)?;
            let selection = clarion::cli::replay::Selection {
                target,
                incident,
                since,
            };
            let all_delivered = clarion::cli::replay::run(settings, selection, dry_run).await?;
            Ok(if all_delivered {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Topics {
            command:
                TopicsCommand::Create {
                    topics,
                    partitions,
                    replication_factor,
                    config,
                },
        } => {
            // Like `publish`: only Kafka's own secrets are needed.
            let settings = load_for_preview(&config)?;
            let ask = clarion::cli::topics::Create {
                only: topics,
                partitions,
                replication_factor,
            };
            let ok = clarion::cli::topics::create(&settings, &ask).await?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Demo => {
            clarion::cli::demo::run().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            incident,
            audience,
            json,
            config,
        } => {
            use clarion::cli::report;
            let (settings, records) = ledger_of(&config, &incident).await?;
            let mut notices = clarion::records::notices::fold(&records);
            if let Some(a) = &audience {
                notices = report::only_audience(notices, a);
            }
            let r = report::build(
                &incident,
                notices,
                clarion::records::notices::undeclared(&records),
                &settings.deadlines,
                jiff::Timestamp::now(),
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if r.notices.is_empty() {
                println!(
                    "incident {incident}: no notice due in the ledger{}",
                    audience
                        .as_deref()
                        .map(|a| format!(" for audience `{a}`"))
                        .unwrap_or_default()
                );
            } else {
                print!("{}", report::status_table(&r));
            }
            // Who confirmed, who did not, who was unreachable (docs/confirmations.md).
            if !json {
                let (_, confirmations) = confirmations_of(&config, &incident).await?;
                print!(
                    "{}",
                    clarion::cli::confirmations::status_section(&confirmations)
                );
            }
            Ok(ExitCode::from(report::exit_code(&r)))
        }
        Command::Report {
            incident,
            html,
            json,
            config,
        } => {
            if html.is_none() && !json {
                anyhow::bail!("say what to produce: --html FILE, --json, or both");
            }
            let (settings, records) = ledger_of(&config, &incident).await?;
            let notices = clarion::records::notices::fold(&records);
            if notices.is_empty() {
                eprintln!("incident {incident}: no notice in the ledger; no report written");
                return Ok(ExitCode::from(2));
            }
            let report = clarion::cli::report::build(
                &incident,
                notices,
                clarion::records::notices::undeclared(&records),
                &settings.deadlines,
                jiff::Timestamp::now(),
            );
            let (_, confirmations) = confirmations_of(&config, &incident).await?;
            let per_audience = clarion::cli::confirmations::per_audience(
                &confirmations,
                &settings.confirmations.deadlines,
                jiff::Timestamp::now(),
            );
            if let Some(path) = &html {
                // The confirmation section goes before the page's end.
                let page = clarion::cli::report::html(&report).replacen(
                    "</body>",
                    &format!(
                        "{}</body>",
                        clarion::cli::confirmations::html_section(&per_audience)
                    ),
                    1,
                );
                std::fs::write(path, page)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!(
                    "report of incident {incident} written to {} ({}{})",
                    path.display(),
                    report.tally.line(),
                    if report.tally.pending > 0 || !report.undeclared.is_empty() {
                        "; not final: some notices are still pending"
                    } else {
                        ""
                    }
                );
            }
            if json {
                let mut value = serde_json::to_value(&report)?;
                if !per_audience.is_empty()
                    && let Some(map) = value.as_object_mut()
                {
                    map.insert(
                        "confirmations".into(),
                        serde_json::json!({
                            "audiences": per_audience,
                            "notices": clarion::cli::confirmations::notices(&confirmations),
                        }),
                    );
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Publish(args) => {
            let a = *args;
            // Like `route`: the targets' secrets are not needed to publish, only
            // Kafka's own (resolved when the clients are built).
            let settings = load_for_preview(&a.config)?;
            let request = clarion::cli::publish::Request {
                incident: a.incident,
                status: a.status,
                impact: a.impact,
                title: a.title,
                message: a.message,
                audiences: a.audiences,
                components: a.components,
                regions: a.regions,
                file: a.file,
                statement: a.statement,
                set: a.set.into_iter().collect(),
                reopen: a.reopen,
            };
            let options = clarion::cli::publish::Options {
                yes: a.yes,
                timeout: a.timeout,
                follow: a.follow,
                follow_timeout: a.follow_timeout,
            };
            let code = clarion::cli::publish::run(settings, request, options).await?;
            Ok(ExitCode::from(code))
        }
        Command::Drill {
            target,
            all,
            failover,
            timeout,
            config,
        } => {
            use clarion::cli::drill;
            // Any reason the drill cannot run as asked is exit 2, not a failed drill.
            let unusable = |e: anyhow::Error| {
                eprintln!("error: {e:#}");
                Ok(ExitCode::from(drill::EXIT_UNUSABLE))
            };
            let settings = match load_for_preview(&config) {
                Ok(s) => s,
                Err(e) => return unusable(e),
            };
            let options = drill::Options {
                target,
                all,
                failover,
                timeout,
            };
            match drill::run(settings, options).await {
                Ok(code) => Ok(ExitCode::from(code)),
                Err(e) if e.downcast_ref::<drill::Unusable>().is_some() => unusable(e),
                Err(e) => Err(e),
            }
        }
        Command::Route { event, config } => {
            let settings = load_for_preview(&config)?;
            let update = clarion::cli::preview::read_event(&event, &settings)?;
            print!("{}", clarion::cli::preview::route(&settings, &update));
            Ok(ExitCode::SUCCESS)
        }
        Command::Render {
            event,
            target,
            config,
        } => {
            let settings = load_for_preview(&config)?;
            let update = clarion::cli::preview::read_event(&event, &settings)?;
            print!(
                "{}",
                clarion::cli::preview::render(&settings, update, target.as_deref())?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long `status` and `report` may take to read the ledger.
const LEDGER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The ledger records of `incident` (for `status` and `report`), read without
/// resolving the targets' secrets: only Kafka's own are needed.
async fn ledger_of(
    config: &std::path::Path,
    incident: &str,
) -> Result<(
    config::Settings,
    Vec<clarion::records::ledger::LedgerRecord>,
)> {
    let settings = load_for_preview(config)?;
    let kafka = settings.kafka.clone();
    let id = incident.to_string();
    let records = tokio::task::spawn_blocking(move || {
        clarion::records::ledger::read_incident(&kafka, &EnvSecrets, &id, LEDGER_READ_TIMEOUT)
    })
    .await
    .context("the ledger reader stopped")??;
    Ok((settings, records))
}

/// The confirmation records of `incident` (for `status` and `report`).
async fn confirmations_of(
    config: &std::path::Path,
    incident: &str,
) -> Result<(
    config::Settings,
    Vec<clarion::records::confirmations::ConfirmationRecord>,
)> {
    let settings = load_for_preview(config)?;
    let kafka = settings.kafka.clone();
    let id = incident.to_string();
    let records = tokio::task::spawn_blocking(move || {
        clarion::records::confirmations::read_incident(
            &kafka,
            &EnvSecrets,
            &id,
            LEDGER_READ_TIMEOUT,
        )
    })
    .await
    .context("the ledger reader stopped")??;
    Ok((settings, records))
}

fn load(path: &std::path::Path) -> Result<config::Settings> {
    let raw = config::load(path)?;
    raw.validate(&path.display().to_string(), &EnvSecrets)
        .context("invalid configuration")
}

/// For `route` and `render`: no secret is resolved and no channel built, so that a
/// template can be previewed without production credentials.
fn load_for_preview(path: &std::path::Path) -> Result<config::Settings> {
    let raw = config::load(path)?;
    raw.validate_for_preview(&path.display().to_string())
        .context("invalid configuration")
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit now (in-flight updates are
/// not committed, so they are redelivered on restart).
/// SIGHUP: read and validate the config file again; hand a valid one to the
/// supervisor, refuse an invalid one (the running config stays in force).
async fn reload_on_sighup(
    config: std::path::PathBuf,
    reloads: tokio::sync::mpsc::Sender<clarion::config::Settings>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; config reload is unavailable");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!(config = %config.display(), "SIGHUP received: reloading the config");
        match load(&config) {
            Ok(settings) => {
                if reloads.send(settings).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                metrics::gauge!("clarion_config_last_reload_success").set(0.0);
                tracing::error!(
                    error = %format!("{e:#}"),
                    "config reload refused: the new config is invalid; the running config stays in force"
                );
            }
        }
    }
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!(
            "cannot install signal handlers; stop the daemon with SIGKILL (nothing resolved is lost)"
        );
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting now; unresolved updates will be redelivered on restart");
    std::process::exit(130);
}
