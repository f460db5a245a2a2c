//! The daemon's own status page listener (`status_page.listen`): the current
//! page, served from memory.
//!
//! It is a public surface, so it does little: GET and HEAD of the files the page
//! is made of, looked up by exact path (nothing is read from disk, so there is no
//! path to traverse), each with its content type, an ETag, `Cache-Control:
//! max-age=60`, and a 304 for a matching `If-None-Match`. Requests being served
//! are bounded, and each is cut after a few seconds. Unlike the other origins it
//! is no target: its copy is rendered from the page's state whenever that changes
//! (and each minute, so that "N minutes ago" stays current), which also gives it
//! the whole page right after a restart.

use anyhow::{Context as _, Result};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use sha2::Digest as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Requests served at once; more get a 503 at once rather than a queue.
const MAX_REQUESTS: usize = 256;
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the page is rendered again without a change.
const REFRESH: Duration = Duration::from_secs(60);

/// One file as served.
struct Served {
    body: bytes::Bytes,
    etag: HeaderValue,
    content_type: &'static str,
}

#[derive(Clone)]
struct State {
    files: Arc<RwLock<Option<HashMap<String, Served>>>>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// What the listener serves from: the page rendered whole, when the state is
/// ready and whenever it changes.
pub(crate) struct Feed {
    pub(crate) render: Arc<dyn Fn() -> Result<clarion_statuspage::Site, String> + Send + Sync>,
    pub(crate) ready: tokio::sync::watch::Receiver<bool>,
    pub(crate) changes: tokio::sync::watch::Receiver<u64>,
}

/// Binds `addr` (an error now if it cannot) and serves until `cancel`.
pub(crate) fn start(addr: SocketAddr, feed: Feed, cancel: CancellationToken) -> Result<()> {
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("status_page.listen: cannot listen on {addr}"))?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let state = State {
        files: Arc::default(),
        permits: Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS)),
    };
    tokio::spawn(refresh(feed, state.files.clone(), cancel.clone()));
    let app = axum::Router::new().fallback(serve).with_state(state);
    tracing::info!(%addr, "status page listener started");
    tokio::spawn(async move {
        let server = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
        if let Err(e) = server.await {
            tracing::error!(%addr, error = %e, "status page listener stopped");
        }
    });
    Ok(())
}

/// Keeps the served copy current.
async fn refresh(
    feed: Feed,
    files: Arc<RwLock<Option<HashMap<String, Served>>>>,
    cancel: CancellationToken,
) {
    let Feed {
        render,
        mut ready,
        mut changes,
    } = feed;
    tokio::select! {
        r = ready.wait_for(|r| *r) => if r.is_err() { return },
        _ = cancel.cancelled() => return,
    }
    loop {
        let render = render.clone();
        match tokio::task::spawn_blocking(move || render()).await {
            Ok(Ok(site)) => {
                let map = site
                    .files
                    .into_iter()
                    .map(|f| {
                        let etag = format!("\"{}\"", hex(&sha2::Sha256::digest(&f.body)[..16]));
                        let served = Served {
                            body: bytes::Bytes::copy_from_slice(&f.body),
                            etag: HeaderValue::from_str(&etag)
                                .unwrap_or(HeaderValue::from_static("\"0\"")),
                            content_type: f.content_type,
                        };
                        (f.path, served)
                    })
                    .collect();
                *files.write().unwrap_or_else(|e| e.into_inner()) = Some(map);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the status page listener cannot render the page")
            }
            Err(e) => tracing::error!(error = %e, "the status page listener's rendering failed"),
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(REFRESH) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn serve(
    axum::extract::State(state): axum::extract::State<State>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let Ok(_permit) = state.permits.try_acquire() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "busy, try again\n");
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, async {
        answer(&state, &method, &uri, &headers)
    })
    .await
    {
        Ok(r) => r,
        Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "timed out\n"),
    }
}

fn answer(state: &State, method: &Method, uri: &axum::http::Uri, headers: &HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let Some(path) = site_path(uri.path()) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let files = state.files.read().unwrap_or_else(|e| e.into_inner());
    let Some(files) = files.as_ref() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the page is being read, try again in a moment\n",
        );
    };
    let Some(file) = files.get(path) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let matched = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t.as_bytes() == file.etag.as_bytes());
    let (status, body) = if matched {
        (StatusCode::NOT_MODIFIED, Body::empty())
    } else if method == Method::HEAD {
        (StatusCode::OK, Body::empty())
    } else {
        (StatusCode::OK, Body::from(file.body.clone()))
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::ETAG, file.etag.clone());
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    if status == StatusCode::OK {
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(file.body.len()));
    }
    security_headers(h);
    r
}

/// The site's path for a request path: `/` is the index; anything but a plain
/// relative path of letters, digits and `-_.` segments is not a file here.
fn site_path(path: &str) -> Option<&str> {
    let p = path.strip_prefix('/')?;
    if p.is_empty() {
        return Some("index.html");
    }
    let plain = p.split('/').all(|seg| {
        !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    plain.then_some(p)
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    // The page's own inline style and script; nothing from anywhere else.
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    security_headers(h);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_of_the_site_are_files() {
        assert_eq!(site_path("/"), Some("index.html"));
        assert_eq!(
            site_path("/api/v2/summary.json"),
            Some("api/v2/summary.json")
        );
        assert_eq!(
            site_path("/incidents/INC-1.html"),
            Some("incidents/INC-1.html")
        );
        for bad in [
            "/../etc/passwd",
            "/a/../b",
            "/.git/config",
            "//x",
            "/a%2F..",
            "/a\\b",
            "x",
        ] {
            assert_eq!(site_path(bad), None, "{bad}");
        }
    }
}
