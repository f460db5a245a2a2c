//! `clarion demo`: the whole path on one machine with nothing installed. An embedded
//! Kafka-protocol broker (librdkafka's mock cluster), three local webhook receivers
//! (one fails twice per message before accepting, so retries show), the real daemon,
//! and a sample incident lifecycle; then a table of every delivery.

use crate::config::{self, EnvSecrets};
use crate::engine::dispatch::DeliveryReport;
use anyhow::{Context, Result, bail};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use clarion_core::samples;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "incident-updates";
const DLQ: &str = "clarion-dead-letters";

/// A webhook receiver that answers 503 to the first `failures` attempts of each
/// message id, then 200.
#[derive(Default)]
struct Receiver {
    failures: u32,
    attempts: Mutex<HashMap<String, u32>>,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    _body: axum::body::Bytes,
) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut seen = r.attempts.lock().unwrap_or_else(|e| e.into_inner());
    let n = seen.entry(id).or_insert(0);
    *n += 1;
    if *n <= r.failures {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn start_receiver(failures: u32) -> Result<String> {
    let state = Arc::new(Receiver {
        failures,
        ..Receiver::default()
    });
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/hook"))
}

/// What the demo's SMTP capture received: one entry per (recipient, message).
#[derive(Debug, Default)]
struct Mailbox {
    messages: Mutex<Vec<(String, String)>>,
}

/// A minimal SMTP server on loopback that accepts every message and keeps the
/// recipient and the `Subject:` line, so the demo needs no mail server installed.
/// It speaks just enough of RFC 5321 for a real client: EHLO/HELO, MAIL, RCPT,
/// DATA with dot-unstuffing, RSET, NOOP, QUIT.
async fn start_smtp_capture(mailbox: Arc<Mailbox>) -> Result<u16> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let mailbox = mailbox.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let mut rcpts: Vec<String> = Vec::new();
                if write
                    .write_all(b"220 clarion-demo ESMTP\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-clarion-demo\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
                        b"250 OK\r\n"
                    } else if upper.starts_with("MAIL FROM:") || upper.starts_with("RSET") {
                        rcpts.clear();
                        b"250 OK\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        rcpts.push(line[8..].trim().trim_matches(['<', '>']).to_string());
                        b"250 OK\r\n"
                    } else if upper.starts_with("DATA") {
                        if write.write_all(b"354 go ahead\r\n").await.is_err() {
                            return;
                        }
                        let mut subject = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            if subject.is_empty() && l.starts_with("Subject:") {
                                subject = l["Subject:".len()..].trim().to_string();
                            }
                        }
                        let mut m = mailbox.messages.lock().unwrap_or_else(|e| e.into_inner());
                        for r in rcpts.drain(..) {
                            m.push((r, subject.clone()));
                        }
                        b"250 OK queued\r\n"
                    } else if upper.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"502 not implemented\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// Runs the demo and prints the table. Returns an error if any delivery is missing.
pub async fn run() -> Result<()> {
    let cluster = MockCluster::new(1).context("cannot start the embedded Kafka broker")?;
    cluster.create_topic(TOPIC, 4, 1)?;
    cluster.create_topic(DLQ, 1, 1)?;
    let brokers = cluster.bootstrap_servers();

    let statuspage = start_receiver(0).await?;
    let regulator = start_receiver(2).await?;
    let ops_chat = start_receiver(0).await?;
    let mailbox = Arc::new(Mailbox::default());
    let smtp_port = start_smtp_capture(mailbox.clone()).await?;
    let toml = format!(
        r#"
[kafka]
brokers = "{brokers}"
topic = "{TOPIC}"
dead_letter_topic = "{DLQ}"
group_id = "clarion-demo"
[kafka.consumer]
"session.timeout.ms" = "6000"

[retry]
initial_backoff = "100ms"
max_backoff = "1s"

[targets.status-page]
type = "webhook"
audiences = ["customers", "business"]
url = "{statuspage}"
secrets = [{{ value = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD" }}]

[targets.regulator-portal]
type = "webhook"
audiences = ["regulators"]
url = "{regulator}"
secrets = [{{ value = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }}]

[targets.ops-chat]
type = "webhook"
audiences = ["employees"]
url = "{ops_chat}"

[targets.customer-email]
type = "email"
audiences = ["customers", "business"]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Acme Status <status@acme.example>"
[targets.customer-email.recipients]
customers = ["ann@example.com", "bob@example.net"]
business = ["noc@bigcorp.example"]
"#
    );
    let settings = config::parse_str(&toml)?.validate("demo config", &EnvSecrets)?;

    let start = jiff::Timestamp::now();
    let incidents = [
        (
            "INC-1001",
            "Mobile data outage in the north region",
            &["customers", "employees", "regulators"][..],
        ),
        (
            "INC-1002",
            "Degraded voice calls for business lines",
            &["business", "employees"][..],
        ),
        (
            "INC-1003",
            "SMS delivery delays",
            &["customers", "employees"][..],
        ),
    ];
    let mut updates = Vec::new();
    for (id, title, audiences) in incidents {
        updates.extend(samples::lifecycle(id, title, audiences, start));
    }
    let settings_targets = settings.targets.clone();
    let expected: usize = updates
        .iter()
        .map(|u| expected_for(&settings_targets, u))
        .sum();

    let (tx, mut rx) = mpsc::channel::<DeliveryReport>(1024);
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(crate::run(settings, shutdown.clone(), Some(tx)));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("partitioner", "murmur2_random")
        .create()?;
    println!(
        "Publishing {} updates of {} incidents to the embedded broker ({brokers}), topic {TOPIC}...\n",
        updates.len(),
        incidents.len()
    );
    let publish = |u: &clarion_core::IncidentUpdate| {
        let body = serde_json::to_vec(u);
        let producer = &producer;
        let key = u.incident_id.clone();
        async move {
            let body = body?;
            producer
                .send(
                    FutureRecord::to(TOPIC).key(&key).payload(&body),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .context("publishing a sample update")?;
            anyhow::Ok(())
        }
    };
    // The first update also waits for the consumer group to form (about 3 s on the
    // embedded broker); the rest show the steady-state latency.
    let mut reports = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let first_fanout = expected_for(&settings_targets, &updates[0]);
    publish(&updates[0]).await?;
    while reports.len() < first_fanout {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => reports.push(r),
            _ => break,
        }
    }
    for u in &updates[1..] {
        publish(u).await?;
    }

    while reports.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(r)) => reports.push(r),
            Ok(None) => break,
            Err(_) => break,
        }
    }
    shutdown.cancel();
    daemon.await??;
    drop(producer);
    drop(cluster);

    let mails = mailbox
        .messages
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len();
    reports.sort_by(|a, b| {
        (&a.incident_id, a.sequence, &a.target).cmp(&(&b.incident_id, b.sequence, &b.target))
    });
    print_table(&reports);
    println!("\nThe SMTP capture received {mails} messages.");
    let retried = reports.iter().filter(|r| r.attempts > 1).count();
    let dead = reports
        .iter()
        .filter(|r| r.dead_letter_reason.is_some())
        .count();
    println!(
        "\n{} deliveries of {} expected; {} needed retries; {} dead-lettered.\n\
         Latency runs from the update's Kafka timestamp to the receiver's 2xx; the first\n\
         update's includes the embedded broker's consumer-group join.",
        reports.len(),
        expected,
        retried,
        dead
    );
    if reports.len() != expected {
        bail!(
            "only {} of {expected} deliveries finished within 90 s",
            reports.len()
        );
    }
    Ok(())
}

/// How many targets an update fans out to.
fn expected_for(
    targets: &[crate::config::TargetConfig],
    u: &clarion_core::IncidentUpdate,
) -> usize {
    targets
        .iter()
        .map(|t| {
            let served: Vec<&String> = u
                .audiences
                .iter()
                .filter(|a| t.audiences.contains(*a))
                .collect();
            match &t.channel {
                _ if served.is_empty() => 0,
                // One report per recipient (the demo's lists are plain addresses).
                crate::config::ChannelConfig::Email(c) => served
                    .iter()
                    .filter_map(|a| c.recipients.get(*a))
                    .flatten()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
                _ => 1,
            }
        })
        .sum()
}

fn print_table(reports: &[DeliveryReport]) {
    println!(
        "{:<9} {:>3}  {:<13} {:<17} {:<20} {:>8}  {:<11} {:>9}",
        "INCIDENT", "SEQ", "STATUS", "TARGET", "RECIPIENT", "ATTEMPTS", "RESULT", "LATENCY"
    );
    for r in reports {
        let result = if r.dead_letter_reason.is_some() {
            "dead-letter"
        } else {
            "delivered"
        };
        println!(
            "{:<9} {:>3}  {:<13} {:<17} {:<20} {:>8}  {:<11} {:>7}ms",
            r.incident_id,
            r.sequence,
            r.status.as_str(),
            &*r.target,
            r.recipient.as_deref().unwrap_or("-"),
            r.attempts,
            result,
            r.latency.as_millis()
        );
    }
}
