//! A webhook target's connections. A target has one URL, so one origin, and its pool
//! is just that: a stack of idle HTTP/1.1 connections, and at most one HTTP/2
//! connection shared by every request while the receiver offers HTTP/2.
//!
//! hyper-util's general pool (`client::legacy`), which this replaces, keys its idle
//! lists by origin and, for every request, builds both a checkout and a lazy connect
//! and races them; that cost 3 to 4 µs of CPU per request against a bare hyper
//! connection (`clarion-bench --http-floor`, docs/benchmarks.md), a tenth of what a
//! whole delivery costs. The connections themselves are still hyper's
//! (`client::conn::http1`/`http2`), and what the legacy client did around them is
//! kept:
//! - HTTP/1.1 requests get a `Host` header and go in origin form (`POST /path`), or
//!   in absolute form through a forward proxy;
//! - a request that a reused connection closed before sending is sent again on
//!   another one (the receiver never saw it);
//! - a connection goes back to the pool only once its reply has been read to the
//!   end, and connections idle for longer than the idle timeout are closed.

use crate::Connector;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no reply.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection: refused, unreachable, TLS or the proxy failed.
    Connect(BoxError),
    /// The connection failed while the request was sent or its reply read.
    Request(hyper::Error),
}

pub(crate) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    /// The target's URI: what is connected to, what HTTP/2 and a forward proxy are
    /// sent, and where `origin_form` and `host` come from.
    uri: Uri,
    origin_form: Uri,
    host: HeaderValue,
    idle_timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Most recently used last, so the oldest are the first to expire.
    idle: Vec<Idle>,
    h2: Option<Shared>,
    reaping: bool,
}

struct Idle {
    tx: http1::SendRequest<Full<Bytes>>,
    forwarded: bool,
    since: Instant,
}

struct Shared {
    tx: http2::SendRequest<Full<Bytes>>,
    used: Instant,
}

enum Conn {
    H1 {
        tx: http1::SendRequest<Full<Bytes>>,
        forwarded: bool,
    },
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Pool {
    /// A pool for requests to `uri` (absolute, without userinfo), connected through
    /// `connector`.
    pub(crate) fn new(connector: Connector, uri: Uri, idle_timeout: Duration) -> Pool {
        let origin_form = uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        // As hyper-util sets it: the host, and the port when it is not the scheme's.
        let authority = uri.authority().map_or("", |a| a.as_str());
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let default_port = match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        };
        let host = match uri.port_u16() {
            Some(port) if port == default_port => uri.host().unwrap_or(host_port),
            _ => host_port,
        };
        let host = HeaderValue::from_str(host).unwrap_or_else(|_| HeaderValue::from_static(""));
        Pool {
            inner: Arc::new(Inner {
                connector,
                uri,
                origin_form,
                host,
                idle_timeout,
                state: Mutex::default(),
            }),
        }
    }

    /// Sends `request` (its URI is set here) and returns the reply's head. The body
    /// is the caller's to read: the connection is reused once it has been.
    pub(crate) async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Failure> {
        let inner = &self.inner;
        loop {
            let (conn, reused) = match inner.checkout() {
                Some(conn) => (conn, true),
                // Boxed: connecting (TCP, TLS, a proxy, the handshake) is most of
                // this future's size, and the usual request never connects.
                None => (Box::pin(self.connect()).await?, false),
            };
            let unsent = match conn {
                Conn::H2(mut tx) => {
                    *request.uri_mut() = inner.uri.clone();
                    match tx.try_send_request(request).await {
                        Ok(response) => return Ok(response),
                        Err(mut e) => {
                            // Whatever went wrong, the next request starts a new one.
                            inner.state().h2 = None;
                            match e.take_message() {
                                Some(unsent) if reused => unsent,
                                _ => return Err(Failure::Request(e.into_error())),
                            }
                        }
                    }
                }
                Conn::H1 { mut tx, forwarded } => {
                    *request.uri_mut() = if forwarded {
                        inner.uri.clone()
                    } else {
                        inner.origin_form.clone()
                    };
                    request
                        .headers_mut()
                        .entry(HOST)
                        .or_insert_with(|| inner.host.clone());
                    match tx.try_send_request(request).await {
                        Ok(response) => {
                            self.checkin(tx, forwarded);
                            return Ok(response);
                        }
                        Err(mut e) => match e.take_message() {
                            Some(unsent) if reused => unsent,
                            _ => return Err(Failure::Request(e.into_error())),
                        },
                    }
                }
            };
            // A reused connection closed before the request went out: the receiver
            // never saw it, so it goes on another connection. Each pass drops a
            // stale connection, and a new one is never retried.
            tracing::trace!("a pooled connection closed before sending; trying another");
            request = unsent;
        }
    }

    /// Puts an HTTP/1.1 connection back once its reply has been read: now, or when
    /// the reader is done with the body (it closes the connection if it gives up).
    fn checkin(&self, mut tx: http1::SendRequest<Full<Bytes>>, forwarded: bool) {
        if tx.is_ready() {
            self.inner.park(tx, forwarded);
        } else if !tx.is_closed() {
            let pool = Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                if tx.ready().await.is_ok()
                    && let Some(inner) = pool.upgrade()
                {
                    inner.park(tx, forwarded);
                }
            });
        }
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let inner = &self.inner;
        let mut connector = inner.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(Failure::Connect)?;
        let io = connector
            .call(inner.uri.clone())
            .await
            .map_err(Failure::Connect)?;
        let connected = io.connected();
        let handshake_failed = |e: hyper::Error| Failure::Connect(e.into());
        let conn = if connected.is_negotiated_h2() {
            let (mut tx, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(handshake_failed)?;
            drive(connection);
            tx.ready().await.map_err(handshake_failed)?;
            let mut state = inner.state();
            // Requests that raced to connect each made one; the first is shared, the
            // others close after their request.
            if state.h2.as_ref().is_none_or(|s| s.tx.is_closed()) {
                state.h2 = Some(Shared {
                    tx: tx.clone(),
                    used: Instant::now(),
                });
            }
            Conn::H2(tx)
        } else {
            let (mut tx, connection) = http1::handshake(io).await.map_err(handshake_failed)?;
            drive(connection);
            tx.ready().await.map_err(handshake_failed)?;
            Conn::H1 {
                tx,
                forwarded: connected.is_proxied(),
            }
        };
        let mut state = inner.state();
        if !state.reaping {
            state.reaping = true;
            tokio::spawn(reap(Arc::downgrade(inner), inner.idle_timeout));
        }
        Ok(conn)
    }

    /// Idle HTTP/1.1 connections, for tests.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.inner.state().idle.len()
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic (pushes and pops only).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts an HTTP/1.1 connection ready for a request on top of the idle stack:
    /// the next request takes it.
    fn park(&self, tx: http1::SendRequest<Full<Bytes>>, forwarded: bool) {
        self.state().idle.push(Idle {
            tx,
            forwarded,
            since: Instant::now(),
        });
    }

    /// The shared HTTP/2 connection, else the most recently used idle HTTP/1.1 one
    /// still open and not expired.
    fn checkout(&self) -> Option<Conn> {
        let mut state = self.state();
        if let Some(shared) = &mut state.h2 {
            if !shared.tx.is_closed() {
                shared.used = Instant::now();
                return Some(Conn::H2(shared.tx.clone()));
            }
            state.h2 = None;
        }
        while let Some(idle) = state.idle.pop() {
            if idle.tx.is_ready() && idle.since.elapsed() < self.idle_timeout {
                return Some(Conn::H1 {
                    tx: idle.tx,
                    forwarded: idle.forwarded,
                });
            }
            // Closed by the peer, or expired: dropping it closes it.
        }
        None
    }

    /// Closes the connections idle for longer than the timeout.
    fn expire(&self) {
        let mut state = self.state();
        let timeout = self.idle_timeout;
        state
            .idle
            .retain(|idle| idle.since.elapsed() < timeout && !idle.tx.is_closed());
        if state
            .h2
            .as_ref()
            .is_some_and(|s| s.used.elapsed() >= timeout || s.tx.is_closed())
        {
            state.h2 = None;
        }
    }
}

/// Runs a connection's I/O until it closes (its last sender dropped, or the peer
/// gone); why it closed is only worth a debug line, since a request on it has its
/// own error.
fn drive(connection: impl std::future::Future<Output = hyper::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "webhook connection ended");
        }
    });
}

/// Closes expired idle connections every half idle timeout, until the pool is gone.
async fn reap(pool: Weak<Inner>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval(idle_timeout / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(inner) => inner.expire(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    /// A receiver that answers every request with `204` and reports each connection's
    /// requests when the connection ends; with `close_after_reply` it hangs up after
    /// each reply without saying so (no `Connection: close`), as a peer does when its
    /// keep-alive timeout passes.
    async fn receiver(
        close_after_reply: bool,
    ) -> (Uri, tokio::sync::mpsc::UnboundedReceiver<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (ended, connections) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let ended = ended.clone();
                tokio::spawn(async move {
                    let mut requests = Vec::new();
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    'connection: loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        // Requests here have no body, or a small one read with them.
                        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if buffer.len() < end + 4 + length {
                                break;
                            }
                            buffer.drain(..end + 4 + length);
                            requests.push(head);
                            let _ = socket.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await;
                            if close_after_reply {
                                break 'connection;
                            }
                        }
                    }
                    let _ = ended.send(requests);
                });
            }
        });
        let uri = format!("http://{addr}/hooks/status?x=1")
            .parse()
            .expect("uri");
        (uri, connections)
    }

    fn pool(uri: &Uri, idle_timeout: Duration) -> Pool {
        let connector = crate::connector(Duration::from_secs(5), false, None).expect("connector");
        Pool::new(connector, uri.clone(), idle_timeout)
    }

    fn post() -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(Bytes::from_static(b"{}")));
        *request.method_mut() = hyper::Method::POST;
        request
    }

    /// Three POSTs, each answered 204, with `pause` after each.
    async fn send_three(pool: &Pool, pause: Duration) {
        for _ in 0..3 {
            let response = pool.send(post()).await.expect("reply");
            assert_eq!(response.status(), 204);
            tokio::time::sleep(pause).await;
        }
    }

    async fn next(
        connections: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    ) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(30), connections.recv())
            .await
            .expect("a connection ends")
            .expect("receiver runs")
    }

    /// `Host` is the URL's host, with its port unless that is the scheme's default,
    /// as hyper-util and curl send it; HTTP/1.1 requests go in origin form.
    #[test]
    fn host_and_origin_form_come_from_the_url() {
        let cases = [
            (
                "https://hooks.example.com/a?b=1",
                "hooks.example.com",
                "/a?b=1",
            ),
            ("https://hooks.example.com:443/a", "hooks.example.com", "/a"),
            (
                "https://hooks.example.com:8443/a",
                "hooks.example.com:8443",
                "/a",
            ),
            ("http://10.0.0.7:80", "10.0.0.7", "/"),
            ("http://[::1]:8080/hook", "[::1]:8080", "/hook"),
        ];
        for (url, host, origin_form) in cases {
            let pool = pool(&url.parse().expect("uri"), Duration::from_secs(60));
            assert_eq!(pool.inner.host, host, "{url}");
            assert_eq!(pool.inner.origin_form, origin_form, "{url}");
        }
    }

    /// Requests reuse one connection, in origin form with a `Host` header; once it
    /// has been idle for the idle timeout, the pool closes it.
    #[tokio::test]
    async fn requests_share_a_connection_that_closes_when_idle_too_long() {
        let (uri, mut connections) = receiver(false).await;
        let pool = pool(&uri, Duration::from_millis(300));
        send_three(&pool, Duration::ZERO).await;
        assert_eq!(pool.idle(), 1);
        // Nothing closes it but the pool's idle timeout: the receiver keeps it open.
        let requests = next(&mut connections).await;
        assert_eq!(requests.len(), 3, "{requests:?}");
        let port = uri.port_u16().expect("port");
        for head in &requests {
            assert!(
                head.starts_with("POST /hooks/status?x=1 HTTP/1.1\r\n"),
                "{head}"
            );
            assert!(
                head.contains(&format!("\r\nhost: 127.0.0.1:{port}")),
                "{head}"
            );
        }
        assert_eq!(pool.idle(), 0);
    }

    /// A peer that hangs up on idle connections: the pool does not send on them, and
    /// every request is delivered, once, on a connection of its own.
    #[tokio::test]
    async fn a_connection_the_peer_closed_is_not_used_again() {
        let (uri, mut connections) = receiver(true).await;
        let pool = pool(&uri, Duration::from_secs(60));
        // Time for the hang-up to reach the idle connection.
        send_three(&pool, Duration::from_millis(100)).await;
        let mut requests = Vec::new();
        for _ in 0..3 {
            requests.push(next(&mut connections).await.len());
        }
        assert_eq!(requests, [1, 1, 1]);
    }
}
