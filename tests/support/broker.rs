//! A broker of a test's own (scripts/kafka-broker), for tests that must stop it:
//! the shared broker is never touched. It can also be stopped and started again at
//! the same address with its data kept, which is what a broker restart or an
//! outage looks like to a client.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A broker started for one test; stopped (and its run dir removed) on drop.
#[derive(Debug)]
pub struct OwnBroker {
    pub addr: String,
    script: PathBuf,
    /// scripts/kafka-broker's record of the last broker started, which points at
    /// the shared broker a developer started by hand: put back when this one stops.
    current_env: Option<(PathBuf, Vec<u8>)>,
    /// The broker's command line and run dir, kept by [`OwnBroker::kill`] for
    /// [`OwnBroker::restart`].
    killed: Option<(Vec<String>, PathBuf)>,
    /// The broker process [`OwnBroker::restart`] started: reaped once stopped.
    restarted: Option<std::process::Child>,
}

fn cache() -> PathBuf {
    PathBuf::from(std::env::var("CLARION_CACHE").unwrap_or_else(|_| "/var/cache/clarion".into()))
}

impl OwnBroker {
    pub fn start() -> OwnBroker {
        let current = cache().join("run/current.env");
        let current_env = std::fs::read(&current).ok().map(|b| (current, b));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-broker");
        let out = std::process::Command::new(&script)
            .arg("start")
            .output()
            .expect("scripts/kafka-broker start");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        // Put the shared broker's record back at once: other tests running now read
        // it to find their broker.
        if let Some((path, bytes)) = &current_env {
            let _ = std::fs::write(path, bytes);
        }
        OwnBroker {
            addr,
            script,
            current_env,
            killed: None,
            restarted: None,
        }
    }

    /// The run dir scripts/kafka-broker made for this broker.
    fn run_dir(&self) -> PathBuf {
        let runs = std::fs::read_dir(cache().join("run")).expect("run dir");
        for entry in runs.flatten() {
            let env = entry.path().join("broker.env");
            if std::fs::read_to_string(&env)
                .is_ok_and(|s| s.contains(&format!("CLARION_TEST_KAFKA={}\n", self.addr)))
            {
                return entry.path();
            }
        }
        panic!("no run dir for the broker at {}", self.addr)
    }

    /// Stops the broker process (SIGTERM, then SIGKILL), keeping its data, so that
    /// [`OwnBroker::restart`] brings the same cluster back at the same address.
    pub fn kill(&mut self) {
        let dir = self.run_dir();
        let pid: i32 = std::fs::read_to_string(dir.join("broker.pid"))
            .expect("broker.pid")
            .trim()
            .parse()
            .expect("pid");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z"))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.killed = Some((argv, dir));
    }

    /// Starts the killed broker again with the same command line, data and ports.
    pub async fn restart(&mut self) {
        let (argv, dir) = self.killed.take().expect("kill() first");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("console.log"))
            .expect("console.log");
        let err = log.try_clone().expect("console.log");
        let child = std::process::Command::new("setsid")
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("restart the broker");
        // setsid execs java in place (the test is not a group leader), so this is
        // the broker's pid: scripts/kafka-broker stop finds and stops it by it.
        std::fs::write(dir.join("broker.pid"), child.id().to_string()).expect("broker.pid");
        self.restarted = Some(child);
        let port: u16 = self
            .addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        assert!(
            crate::wait_for_port(port, Duration::from_secs(120)).await,
            "the restarted broker did not listen on {}",
            self.addr
        );
    }

    pub fn stop(&self) {
        let _ = std::process::Command::new(&self.script)
            .args(["stop", &self.addr])
            .status();
        if let Some((path, bytes)) = &self.current_env {
            let _ = std::fs::write(path, bytes);
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
        // scripts/kafka-broker stop has ended it; reap it so no zombie is left.
        if let Some(mut child) = self.restarted.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
