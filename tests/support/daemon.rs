//! Running the real daemon from tests: in process (fast, for behaviour) or as the
//! `clarion` binary (for signals: SIGKILL and SIGTERM).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A test's Kafka wiring: unique topics and group, so tests never see each other.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub brokers: String,
    pub topic: String,
    pub dlq: String,
    pub group: String,
}

impl Wiring {
    pub async fn new(brokers: &str, name: &str, partitions: i32) -> Wiring {
        let w = Wiring {
            brokers: brokers.to_string(),
            topic: crate::unique_topic(name),
            dlq: crate::unique_topic(&format!("{name}-dlq")),
            group: crate::unique_topic(&format!("{name}-group")),
        };
        crate::kafka::create_topic(brokers, &w.topic, partitions).await;
        crate::kafka::create_topic(brokers, &w.dlq, 1).await;
        w
    }

    /// Waits (up to two minutes) until every stream of the deployment (the events
    /// group and each target's group) has committed the end of every partition of
    /// the topic; returns the last (lowest committed, end) pairs either way.
    pub async fn wait_committed(&self, partitions: i32) -> Vec<(i64, i64)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let offsets = crate::kafka::deployment_committed_and_end(
                &self.brokers,
                &self.group,
                &self.topic,
                partitions,
            );
            if crate::kafka::all_committed(&offsets) || tokio::time::Instant::now() > deadline {
                return offsets;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A full config: this wiring, fast retries, and the given `[targets…]` TOML.
    pub fn config(&self, targets: &str) -> String {
        format!(
            r#"
[kafka]
brokers = "{brokers}"
topic = "{topic}"
dead_letter_topic = "{dlq}"
group_id = "{group}"

[daemon]
shutdown_grace = "20s"
rebalance_drain = "5s"

[retry]
initial_backoff = "50ms"
max_backoff = "300ms"
max_attempts = 6

{targets}
"#,
            brokers = self.brokers,
            topic = self.topic,
            dlq = self.dlq,
            group = self.group,
        )
    }
}

/// The daemon running inside the test process.
#[derive(Debug)]
pub struct InProcess {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<clarion::Summary>>,
}

impl InProcess {
    pub fn start(toml: &str) -> InProcess {
        // The daemon's logs go to the test's captured output, which libtest shows
        // when the test fails.
        crate::capture::record_config(toml);
        // Also appended to one file per test process under the capture directory,
        // for the leak check at the end of the suite.
        let file = crate::capture::log_path("in-process").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(
            tracing_subscriber::fmt::writer::MakeWriterExt::and(
                tracing_subscriber::fmt::TestWriter::new(),
                std::sync::Arc::new(CaptureFile(file)),
            ),
        );
        let _ = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .try_init();
        let settings = clarion::config::parse_str(toml)
            .and_then(|raw| raw.validate("test config", &clarion::config::EnvSecrets))
            .expect("test config is valid");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(clarion::run(settings, shutdown.clone(), None));
        InProcess { shutdown, handle }
    }

    /// Waits for the daemon to end by itself (a start-up error) and returns how.
    pub async fn result(self) -> anyhow::Result<clarion::Summary> {
        match tokio::time::timeout(Duration::from_secs(60), self.handle).await {
            Ok(joined) => joined.expect("daemon task"),
            Err(_) => {
                self.shutdown.cancel();
                panic!("the daemon did not stop by itself within 60 s")
            }
        }
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(self) -> clarion::Summary {
        self.shutdown.cancel();
        self.handle.await.expect("daemon task").expect("daemon run")
    }
}

/// The capture file, when capturing (writes to nowhere otherwise).
#[derive(Debug)]
struct CaptureFile(Option<std::fs::File>);

impl std::io::Write for &CaptureFile {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match &self.0 {
            Some(f) => {
                let mut f: &std::fs::File = f;
                f.write(b)
            }
            None => Ok(b.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `clarion` binary built next to this test binary (`cargo build` puts it in
/// the target directory's profile folder; `scripts/test` builds it first).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CLARION_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/it-<hash> → target/<profile>/clarion
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("clarion"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p clarion` first (scripts/test does)",
        bin.display()
    );
    bin
}

/// The daemon as a child process, with its config written to a temp file and its
/// logs to another.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
    config: PathBuf,
    /// Extra environment, given again to a restarted daemon.
    env: Vec<(String, String)>,
}

impl Process {
    pub fn start(toml: &str, name: &str) -> Process {
        Self::start_env(toml, name, &[])
    }

    /// [`Process::start`] with extra environment variables for the daemon.
    pub fn start_env(toml: &str, name: &str, env: &[(&str, &str)]) -> Process {
        let dir = std::env::temp_dir().join(crate::unique_topic(name));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("clarion.toml");
        std::fs::write(&config, toml).expect("write config");
        crate::capture::record_config(toml);
        let log = crate::capture::log_path(name).unwrap_or_else(|| dir.join("clarion.log"));
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_with(config, log, env)
    }

    fn start_with(config: PathBuf, log: PathBuf, env: Vec<(String, String)>) -> Process {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn clarion");
        Process {
            child,
            log,
            config,
            env,
        }
    }

    /// The config file the daemon reads (and re-reads on SIGHUP).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Starts another daemon with the same config, log and environment.
    pub fn restart(&self) -> Process {
        Self::start_with(self.config.clone(), self.log.clone(), self.env.clone())
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for exit; returns the exit code (None if killed by a signal).
    pub async fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "daemon did not exit in time; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The daemon's log so far. Read as lossy UTF-8: one invalid byte must not make
    /// the whole log look empty in an assertion's message.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
