//! Shared helpers for the integration tests: where the real peers are, free ports,
//! child processes that die with the test.
//!
//! Tests that need a real peer read its address from an environment variable that
//! `scripts/test` sets after starting the peer. When the variable is absent the test
//! prints a loud `SKIPPED` line and returns; CI always sets them.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};

/// Address of the real Apache Kafka broker started by `scripts/test`.
pub const KAFKA_ENV: &str = "CLARION_TEST_KAFKA";
/// A Python interpreter with the test peers installed (standardwebhooks, aiosmtpd,
/// smpp34, hypercorn): the venv made by `scripts/test`.
pub const PYTHON_ENV: &str = "CLARION_TEST_PYTHON";
/// The folder where `scripts/test` installed tests/peers/statuspage's npm
/// packages (a published Statuspage client, a JSON Schema generator).
pub const NODE_PEERS_ENV: &str = "CLARION_TEST_NODE_PEERS";

/// Reads a peer's environment variable, or prints why the test is skipped.
pub fn peer_env(var: &str, test: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            eprintln!(
                "SKIPPED {test}: {var} is not set (run ./scripts/test to start the real peers)"
            );
            None
        }
    }
}

/// Skips the calling test unless the environment variable is set; evaluates to its
/// value.
#[macro_export]
macro_rules! require_peer {
    ($var:expr) => {
        match $crate::peer_env($var, module_path!()) {
            Some(v) => v,
            None => return,
        }
    };
}

/// The Kafka bootstrap address, or `None` (with a SKIPPED line).
pub fn kafka(test: &str) -> Option<String> {
    peer_env(KAFKA_ENV, test)
}

/// The Python interpreter that has the test peers, or `None` (with a SKIPPED line).
pub fn python(test: &str) -> Option<PathBuf> {
    peer_env(PYTHON_ENV, test).map(PathBuf::from)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A child process that is killed when the guard drops, so a failing test never
/// leaves a peer running.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        cmd.spawn().map(ChildGuard)
    }

    /// Starts a peer and waits up to `wait` for it to accept connections on
    /// `127.0.0.1:port`; panics naming `what` if it does not start or never listens.
    pub async fn listening(
        cmd: &mut Command,
        port: u16,
        wait: std::time::Duration,
        what: &str,
    ) -> Self {
        let child = Self::spawn(cmd).unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        assert!(
            wait_for_port(port, wait).await,
            "{what} did not listen on port {port} within {wait:?}"
        );
        child
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts TCP connections on `127.0.0.1:port`.
pub async fn wait_for_port(port: u16, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// A topic name no other test (or earlier run) uses.
pub fn unique_topic(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub mod broker;
pub mod capture;
pub mod daemon;
pub mod kafka;
pub mod receiver;
