//! A webhook receiver on loopback that records everything it gets and answers as a
//! test scripts it: a fixed status, a sequence of statuses per message id, or slowly.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub json: serde_json::Value,
    /// The status this receiver answered.
    pub answered: u16,
    pub at: std::time::Instant,
}

impl Received {
    pub fn update_id(&self) -> &str {
        self.json["update_id"].as_str().unwrap_or("")
    }
    pub fn incident_id(&self) -> &str {
        self.json["incident_id"].as_str().unwrap_or("")
    }
    pub fn sequence(&self) -> u64 {
        self.json["sequence"].as_u64().unwrap_or(0)
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Always this status.
    Always(u16),
    /// The n-th attempt of each message id gets the n-th status; later ones the last.
    PerMessage(Vec<u16>),
    /// 200 after sleeping this long.
    Slow(Duration),
    /// 200 after a random wait of up to this long, so that concurrent deliveries
    /// finish out of order unless something keeps them in order.
    Jitter(Duration),
}

#[derive(Debug)]
struct Inner {
    behaviour: Behaviour,
    log: Mutex<Vec<Received>>,
    started: std::sync::atomic::AtomicUsize,
    /// Requests being handled now, and the most ever at once.
    busy: std::sync::atomic::AtomicUsize,
    max_busy: std::sync::atomic::AtomicUsize,
}

/// A running receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Inner>,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Receiver {
        Self::start_on(0, behaviour).await
    }

    /// A receiver on a given port of 127.0.0.1: for a target that was down (nothing
    /// listening on its URL) and comes back. Port 0 picks a free one.
    pub async fn start_on(port: u16, behaviour: Behaviour) -> Receiver {
        let inner = Arc::new(Inner {
            behaviour,
            log: Mutex::new(Vec::new()),
            started: std::sync::atomic::AtomicUsize::new(0),
            busy: std::sync::atomic::AtomicUsize::new(0),
            max_busy: std::sync::atomic::AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/hook", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            inner,
        }
    }

    /// Requests that arrived, including those not answered yet.
    pub fn started(&self) -> usize {
        self.inner.started.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most requests this receiver was handling at once.
    pub fn max_concurrent(&self) -> usize {
        self.inner
            .max_busy
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.log.lock().expect("log").clone()
    }

    /// Only the requests answered 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }

    /// Waits until `pred` holds for the received log, or `timeout` passes.
    pub async fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Received]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.received()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    use std::sync::atomic::Ordering::SeqCst;
    inner.started.fetch_add(1, SeqCst);
    let busy = inner.busy.fetch_add(1, SeqCst) + 1;
    inner.max_busy.fetch_max(busy, SeqCst);
    let id = headers.get("webhook-id").cloned().unwrap_or_default();
    let status = match &inner.behaviour {
        Behaviour::Always(s) => *s,
        Behaviour::PerMessage(seq) => {
            let log = inner.log.lock().expect("log");
            let n = log
                .iter()
                .filter(|r| r.headers.get("webhook-id") == Some(&id))
                .count();
            seq.get(n).or(seq.last()).copied().unwrap_or(200)
        }
        Behaviour::Slow(d) => {
            tokio::time::sleep(*d).await;
            200
        }
        Behaviour::Jitter(max) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let wait = max.mul_f64(f64::from(nanos % 1000) / 1000.0);
            tokio::time::sleep(wait).await;
            200
        }
    };
    inner.busy.fetch_sub(1, SeqCst);
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    inner.log.lock().expect("log").push(Received {
        headers,
        body: body.to_vec(),
        json,
        answered: status,
        at: std::time::Instant::now(),
    });
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}
