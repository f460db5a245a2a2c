//! `--http-floor N`: what one webhook request costs the HTTP client alone, without
//! the daemon around it. N POSTs of a signed-webhook-sized body (about 1 KB, the
//! daemon's headers) to an axum receiver in a child process, 256 at a time over
//! keep-alive connections, through three clients in turn:
//!
//! - `reqwest`: reqwest 0.13 set up as the webhook channel had it (no redirects,
//!   timeouts);
//! - `hyper-pool`: hyper-util's pooled client with a timeout per request, as the
//!   webhook channel had it from 2026-12-01 until it got a pool of its own;
//! - `channel`: the webhook channel's whole `send` (`clarion_webhook`): the envelope
//!   of a sample update serialized, signed, and sent through the channel's own
//!   one-origin pool with its timeout. This one builds its own body and headers, so
//!   it does more than the others;
//! - `hyper-conn`: one bare hyper HTTP/1.1 connection per sender, no pool, no
//!   timeout: the floor.
//!
//! Reported per client: requests/s and this process's CPU (user + system, from
//! `/proc/self/stat`) per request. The kernel's loopback TCP is included: on
//! loopback the sender's CPU also carries the receiving side's network stack.

use anyhow::{Context, Result};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CONCURRENCY: u64 = 256;
const HEADERS: [(&str, &str); 4] = [
    ("content-type", "application/json"),
    ("webhook-id", "INC-1-u1:hook0"),
    ("webhook-timestamp", "1764547200"),
    (
        "webhook-signature",
        "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    ),
];

/// The receiver, run as a child process so that its CPU is not counted.
pub async fn sink(port: u16) -> Result<()> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|_body: Bytes| async { axum::http::StatusCode::NO_CONTENT }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

pub async fn run(n: u64) -> Result<()> {
    let port = clarion_tests::free_port();
    let _sink = clarion_tests::ChildGuard::listening(
        std::process::Command::new(std::env::current_exe()?)
            .args(["--brokers", "-", "--clarion", "-", "--http-sink"])
            .arg(port.to_string()),
        port,
        Duration::from_secs(10),
        "the HTTP floor's receiver",
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let body = Bytes::from(body());
    println!(
        "http floor: {n} POSTs of {} bytes, {CONCURRENCY} at a time",
        body.len()
    );
    for client in ["reqwest", "hyper-pool", "channel", "hyper-conn"] {
        // A warm-up, so that connecting is not measured.
        send(client, &url, &body, CONCURRENCY * 4).await?;
        let cpu = crate::cpu_seconds(std::process::id()).context("no /proc")?;
        let start = Instant::now();
        send(client, &url, &body, n).await?;
        let took = start.elapsed().as_secs_f64();
        let cpu = crate::cpu_seconds(std::process::id()).context("no /proc")? - cpu;
        println!(
            "{client:>12}: {:>7.0} requests/s, {:.1} µs CPU per request",
            n as f64 / took,
            cpu * 1e6 / n as f64
        );
    }
    Ok(())
}

/// About the size of a standard webhook envelope for a bench update.
fn body() -> Vec<u8> {
    let mut s = String::from(r#"{"audiences":["customers"],"data":{"#);
    while s.len() < 950 {
        s.push_str(r#""message":"We are investigating reports of failed calls.","#);
    }
    s.push_str(r#""sequence":1}}"#);
    s.into_bytes()
}

async fn send(client: &str, url: &str, body: &Bytes, n: u64) -> Result<()> {
    let left = Arc::new(AtomicU64::new(n));
    let reqwest = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let pool = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build_http::<Full<Bytes>>();
    let uri: hyper::Uri = url.parse()?;
    let channel = Arc::new(webhook_channel(url)?);
    let delivery = Arc::new(delivery());
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (left, body, client) = (left.clone(), body.clone(), client.to_string());
        let (reqwest, pool, uri, url) =
            (reqwest.clone(), pool.clone(), uri.clone(), url.to_string());
        let (channel, delivery) = (channel.clone(), delivery.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok()
            {
                let status = match client.as_str() {
                    "reqwest" => {
                        let mut request = reqwest.post(&url).body(body.clone());
                        for (k, v) in HEADERS {
                            request = request.header(k, v);
                        }
                        request.send().await?.status()
                    }
                    "hyper-pool" => {
                        let response = tokio::time::timeout(
                            Duration::from_secs(15),
                            pool.request(request(uri.clone(), &body)?),
                        )
                        .await??;
                        let status = response.status();
                        response.into_body().collect().await?;
                        status
                    }
                    "channel" => {
                        use clarion_core::Channel as _;
                        let outcome = channel.send(&delivery).await;
                        anyhow::ensure!(outcome.is_delivered(), "{outcome:?}");
                        hyper::StatusCode::NO_CONTENT
                    }
                    _ => {
                        if conn.is_none() {
                            let addr = uri.authority().context("authority")?.as_str();
                            let tcp = tokio::net::TcpStream::connect(addr).await?;
                            tcp.set_nodelay(true)?;
                            let (sender, connection) = hyper::client::conn::http1::handshake(
                                hyper_util::rt::TokioIo::new(tcp),
                            )
                            .await?;
                            tokio::spawn(connection);
                            conn = Some(sender);
                        }
                        let sender = conn.as_mut().context("connection")?;
                        sender.ready().await?;
                        let response = sender.send_request(request(uri.clone(), &body)?).await?;
                        let status = response.status();
                        response.into_body().collect().await?;
                        status
                    }
                };
                anyhow::ensure!(status.is_success(), "the receiver answered {status}");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The webhook channel as a signed target of the daemon's has it.
fn webhook_channel(url: &str) -> Result<clarion_webhook::WebhookChannel> {
    let config: clarion_webhook::WebhookConfig = serde_json::from_value(serde_json::json!({
        "url": url,
        "secrets": [{ "value": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD" }],
        "timeout": "15s",
    }))?;
    Ok(clarion_webhook::build(
        "floor",
        &config,
        &clarion::config::EnvSecrets,
    )?)
}

fn delivery() -> clarion_core::Delivery {
    let update = clarion_core::samples::lifecycle(
        "INC-FLOOR",
        "Calls failing in the north region",
        &["customers"],
        jiff::Timestamp::now(),
    )
    .remove(0);
    clarion_core::Delivery::new(
        Arc::new(update),
        Arc::from("floor"),
        Arc::from(vec!["customers".to_string()]),
    )
}

fn request(uri: hyper::Uri, body: &Bytes) -> Result<hyper::Request<Full<Bytes>>> {
    let mut builder = hyper::Request::post(uri.clone());
    if let Some(authority) = uri.authority() {
        builder = builder.header("host", authority.as_str());
    }
    for (k, v) in HEADERS {
        builder = builder.header(k, v);
    }
    Ok(builder.body(Full::new(body.clone()))?)
}
