//! Integration tests: the APNs channel against an HTTP/2 + TLS stand-in that is not
//! written in Rust (`tests/peers/apns_peer.py`, Hypercorn), with a CA, server
//! certificate and ES256 signing key made by `openssl` for each run. The stand-in
//! verifies every header and the provider token's signature, and counts TCP
//! connections. (FCM is tested against a loopback mock inside `clarion-push`.)

use clarion_core::{
    Channel, Delivery, ErrorClass, IncidentUpdate, Secret, SecretRef, SecretResolver, samples,
};
use clarion_push::{ApnsChannel, ApnsConfig, ApnsEnvironment, build_apns};
use clarion_tests::{ChildGuard, free_port, python, unique_topic, wait_for_port};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const KEY_ID: &str = "KEY1234567";
pub(crate) const TEAM_ID: &str = "TEAM123456";
pub(crate) const TOPIC: &str = "com.example.status";

pub(crate) fn device(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

/// Reads secrets the way the daemon does (files, trailing newline trimmed).
struct Files;

impl SecretResolver for Files {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        match reference {
            SecretRef::File(p) => std::fs::read_to_string(p)
                .map(|s| Secret::new(s.trim_end()))
                .map_err(|e| format!("{p}: {e}")),
            SecretRef::Value(s) => Ok(s.clone()),
            SecretRef::Env(v) => Err(format!("env {v} not used in tests")),
        }
    }
}

/// A scratch directory removed when the test ends.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    /// A fresh directory under the system's temp dir, named after `prefix`.
    pub(crate) fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique_topic(prefix));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the push tests need the `openssl` command (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 signed by it, and an APNs-style `.p8` key.
fn make_keys(dir: &Path) {
    make_server_certificate(dir);
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "apns.p8",
        ],
    );
    openssl(
        dir,
        &["pkey", "-in", "apns.p8", "-pubout", "-out", "apns.pub"],
    );
}

/// In `dir`: a CA (`ca.pem`) and a server certificate for 127.0.0.1 and localhost
/// signed by it (`server.pem`, `server.key`), made with the openssl command.
pub(crate) fn make_server_certificate(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Clarion test CA",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext.cnf");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

pub(crate) struct Peer {
    _child: ChildGuard,
    _scratch: Scratch,
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
}

impl Peer {
    pub(crate) fn stats(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join("stats.json")).expect("stats file");
        serde_json::from_str(&text).expect("stats JSON")
    }
}

pub(crate) async fn start_peer(python: PathBuf) -> Peer {
    let scratch = Scratch::new("clarion-apns");
    let dir = scratch.0.clone();
    make_keys(&dir);
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/apns_peer.py");
    let p = |f: &str| dir.join(f).display().to_string();
    let child = ChildGuard::spawn(
        Command::new(python)
            .arg(script)
            .args([
                "--port",
                &port.to_string(),
                "--cert",
                &p("server.pem"),
                "--key",
                &p("server.key"),
            ])
            .args([
                "--public-key",
                &p("apns.pub"),
                "--key-id",
                KEY_ID,
                "--team-id",
                TEAM_ID,
                "--topic",
                TOPIC,
            ])
            .args([
                "--gone-token",
                &device('d'),
                "--busy-token",
                &device('b'),
                "--stall-token",
                &device('5'),
                "--stats",
                &p("stats.json"),
            ]),
    )
    .expect("start the APNs stand-in");
    assert!(
        wait_for_port(port, Duration::from_secs(60)).await,
        "the APNs stand-in did not start"
    );
    Peer {
        _child: child,
        _scratch: scratch,
        dir,
        port,
    }
}

fn channel(peer: &Peer, tokens: Vec<String>) -> ApnsChannel {
    channel_limited(peer, tokens, 100)
}

fn channel_limited(peer: &Peer, tokens: Vec<String>, max_concurrent_sends: usize) -> ApnsChannel {
    let config = ApnsConfig {
        signing_key: SecretRef::File(peer.dir.join("apns.p8").display().to_string()),
        key_id: KEY_ID.into(),
        team_id: TEAM_ID.into(),
        topic: TOPIC.into(),
        environment: ApnsEnvironment::Sandbox,
        base_url: Some(
            format!("https://127.0.0.1:{}", peer.port)
                .parse()
                .expect("url"),
        ),
        ca_file: Some(peer.dir.join("ca.pem")),
        device_tokens: BTreeMap::from([("customers".to_string(), tokens)]),
        directory: false,
        ttl: Duration::from_secs(3600),
        max_concurrent_sends,
        request_timeout: Duration::from_secs(30),
    };
    build_apns("push-apns", &config, &Files).expect("build the APNs channel")
}

fn updates(incident: &str) -> Vec<IncidentUpdate> {
    samples::lifecycle(
        incident,
        "Mobile data outage",
        &["customers"],
        jiff::Timestamp::UNIX_EPOCH,
    )
}

fn delivery(update: &IncidentUpdate) -> Delivery {
    Delivery::new(
        Arc::new(update.clone()),
        Arc::from("push-apns"),
        Arc::from(vec!["customers".to_string()]),
    )
}

#[tokio::test]
async fn apns_classifies_replies_and_reuses_one_connection() {
    let Some(python) = python("push::apns") else {
        return;
    };
    let peer = start_peer(python).await;
    let (ok, gone, busy) = (device('a'), device('d'), device('b'));
    let ch = Arc::new(channel(&peer, vec![ok.clone(), gone.clone(), busy.clone()]));

    ch.healthcheck()
        .await
        .expect("healthcheck against the stand-in");

    // One delivery: accepted, dead token, throttled.
    let update = &updates("INC-42")[0];
    let d = delivery(update);
    let out = ch.send(&d).await;
    let classes: Vec<(&str, Result<(), ErrorClass>)> = out
        .results
        .iter()
        .map(|r| {
            (
                r.recipient.as_deref().unwrap_or("-"),
                r.result.as_ref().map(|_| ()).map_err(|e| e.class),
            )
        })
        .collect();
    assert_eq!(
        classes,
        [
            (ok.as_str(), Ok(())),
            (gone.as_str(), Err(ErrorClass::RecipientGone)),
            (
                busy.as_str(),
                Err(ErrorClass::Retryable { retry_after: None })
            ),
        ]
    );
    let gone_err = out.results[1].result.as_ref().expect_err("gone");
    assert_eq!(gone_err.code.as_deref(), Some("Unregistered"));
    assert_eq!(
        out.results[2]
            .result
            .as_ref()
            .expect_err("busy")
            .code
            .as_deref(),
        Some("TooManyRequests")
    );
    let receipt = out.results[0].result.as_ref().expect("accepted");
    assert_eq!(
        receipt.provider_id.as_deref(),
        Some(d.key.as_uuid().as_str())
    );

    // The daemon's retry of the throttled token alone succeeds.
    let mut retry = d.clone();
    retry.attempt = 2;
    retry.recipients = Some(vec![busy.clone()]);
    let out = ch.send(&retry).await;
    assert_eq!(out.results.len(), 1);
    assert!(out.is_delivered(), "{out:?}");

    let stats = peer.stats();
    assert_eq!(
        stats["problems"],
        serde_json::json!([]),
        "the stand-in found faults"
    );
    let first = stats["first_requests"]
        .as_array()
        .and_then(|seen| seen.iter().find(|r| r["device"] == ok.as_str()).cloned())
        .expect("the stand-in saw the accepted push");
    assert_eq!(first["apns-id"], d.key.as_uuid().as_str());
    assert_eq!(first["apns-collapse-id"], "INC-42");
    assert_eq!(first["apns-priority"], "10");
    assert_eq!(
        first["payload"]["aps"]["alert"]["title"],
        "Investigating: Mobile data outage"
    );
    assert_eq!(first["payload"]["incident_id"], "INC-42");
    assert_eq!(first["payload"]["update_id"], "INC-42-u1");
    assert_eq!(first["payload"]["status"], "investigating");
    let resolved_priority = {
        let out = ch.send(&delivery(&updates("INC-42")[3])).await;
        assert!(out.results[0].result.is_ok());
        peer.stats()["first_requests"]
            .as_array()
            .and_then(|a| a.last().cloned())
            .unwrap_or_default()
    };
    // A later update of the same incident carries the same collapse id, at low priority
    // once the impact is gone.
    assert_eq!(resolved_priority["apns-collapse-id"], "INC-42");
    assert_eq!(resolved_priority["apns-priority"], "5");

    // Throughput over the one connection: sequential, then concurrent (multiplexed).
    let many = Arc::new(channel(&peer, vec![ok.clone()]));
    let sequential = 300;
    let started = Instant::now();
    for i in 0..sequential {
        let u = &updates(&format!("SEQ-{i}"))[0];
        assert!(many.send(&delivery(u)).await.is_delivered());
    }
    let seq_rate = f64::from(sequential) / started.elapsed().as_secs_f64();
    let concurrent = 1000;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..concurrent {
        let ch = Arc::clone(&many);
        tasks.spawn(async move {
            let u = &updates(&format!("PAR-{i}"))[0];
            let out = ch.send(&delivery(u)).await;
            (!out.is_delivered()).then(|| format!("{out:?}"))
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        failed.extend(r.expect("task"));
    }
    let par_rate = f64::from(concurrent) / started.elapsed().as_secs_f64();
    assert_eq!(failed, Vec::<String>::new(), "concurrent sends that failed");

    let stats = peer.stats();
    eprintln!(
        "APNs stand-in (Hypercorn, HTTP/2 + TLS): {seq_rate:.0} pushes/s one at a time, {par_rate:.0} pushes/s with up to 100 in flight; {} requests over {} TCP connection(s) for two channels, {} provider token(s)",
        stats["requests"], stats["connections"], stats["provider_tokens"]
    );
    assert_eq!(
        stats["problems"],
        serde_json::json!([]),
        "the stand-in found faults"
    );
    // One connection per channel (each channel owns its client): never one per request.
    assert_eq!(stats["connections"], 2, "{stats}");
    assert_eq!(
        stats["provider_tokens"], 2,
        "one provider token per channel: {stats}"
    );
    // The dead token was tried twice (first and last update of INC-42), throttled once.
    assert_eq!(stats["statuses"]["410"], 2);
    assert_eq!(stats["statuses"]["429"], 1);
}

#[tokio::test]
async fn apns_skips_devices_that_ended_and_keeps_progress_when_the_attempt_is_dropped() {
    let Some(python) = python("push::apns_progress") else {
        return;
    };
    let peer = start_peer(python).await;
    let (a, b, c, stall) = (device('a'), device('c'), device('e'), device('5'));
    // One send at a time, in token order, so "the first two" is well defined.
    let ch = channel_limited(
        &peer,
        vec![a.clone(), b.clone(), c.clone(), stall.clone()],
        1,
    );

    // `c` ended in an earlier attempt that timed out: the stand-in never sees it.
    let update = &updates("INC-7")[0];
    let mut d = delivery(update);
    d.skip = Arc::new([c.clone()].into());
    let send = ch.send(&d);
    // The daemon's attempt_timeout, in effect: the send is dropped once the stand-in
    // holds the stalled token's request (the others were answered before it was sent).
    let stalled = async {
        while peer.stats()["stalled"] != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let raced = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            out = send => panic!("the stalled token never gets an answer: {out:?}"),
            () = stalled => {}
        }
    })
    .await;
    assert!(raced.is_ok(), "the stand-in never stalled");

    let done: Vec<(String, bool)> = d
        .progress
        .take()
        .into_iter()
        .map(|r| (r.recipient.unwrap_or_default(), r.result.is_ok()))
        .collect();
    assert_eq!(done, [(a.clone(), true), (b.clone(), true)]);
    let stats = peer.stats();
    let seen: Vec<&str> = stats["first_requests"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["device"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(seen, [a.as_str(), b.as_str(), stall.as_str()]);
    assert_eq!(
        stats["problems"],
        serde_json::json!([]),
        "the stand-in found faults"
    );
}
