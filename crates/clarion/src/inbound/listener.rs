//! The inbound listener: every request is hostile until proven otherwise. Each
//! one takes a slot (a bounded number at once), is counted against its client's
//! rate (the peer, or behind a trusted proxy the address it forwarded for), is
//! routed by `clarion_confirm::route`, and has its body read only up to
//! `confirm.max_body_bytes`, within a time limit. Nothing it answers or logs
//! carries a token, a secret or an address.

use super::app::{Inbound, count, rate_key};
use super::page;
use crate::config::ConfirmSettings;
use crate::confirm::ConfirmStore;
use crate::confirm::records::{Answer, Item, VERSION, Via};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::Response;
use clarion_confirm::route::{self, Method, Route};
use governor::{Quota, RateLimiter};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Requests handled at once; more wait for none and get `503`.
const SLOTS: usize = 1024;
/// How long a request's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients whose rate is remembered at most; past it, the oldest are forgotten.
const MAX_CLIENTS: usize = 100_000;

/// Binds `confirm.listen` and serves until `shutdown`.
pub async fn serve(
    settings: &ConfirmSettings,
    store: Arc<ConfirmStore>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let per_minute = NonZeroU32::new(settings.rate_per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(settings.burst).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::per_minute(per_minute).allow_burst(burst);
    let app = Arc::new(Inbound {
        store,
        settings: settings.clone(),
        limiter: std::sync::RwLock::new(Arc::new(RateLimiter::keyed(quota))),
        quota,
        slots: Semaphore::new(SLOTS),
        cancel: shutdown.clone(),
    });
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            anyhow::anyhow!("confirm.listen: cannot listen on {}: {e}", settings.listen)
        })?;
    let addr = listener.local_addr()?;
    let forget = app.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let limiter = forget.limiter();
                    limiter.retain_recent();
                    if limiter.len() > MAX_CLIENTS {
                        // Everyone starts afresh rather than memory growing.
                        *forget.limiter.write().unwrap_or_else(|e| e.into_inner()) =
                            Arc::new(RateLimiter::keyed(forget.quota));
                    } else {
                        limiter.shrink_to_fit();
                    }
                }
                _ = stop.cancelled() => return,
            }
        }
    });
    let router = axum::Router::new()
        .fallback(handle)
        .with_state(app)
        .into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let serve =
            axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the inbound listener stopped");
        }
    });
    tracing::info!(%addr, public_url = %settings.public_url, "serving confirmation links and provider callbacks");
    Ok(addr)
}

fn forwarded_for(h: &HeaderMap) -> Vec<&str> {
    h.get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

async fn handle(
    State(app): State<Arc<Inbound>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response {
    let Ok(_slot) = app.slots.try_acquire() else {
        count("any", "busy");
        return page::text(StatusCode::SERVICE_UNAVAILABLE, "busy; try again shortly\n");
    };
    let client = app
        .settings
        .trusted_proxies
        .client(peer.ip(), &forwarded_for(req.headers()));
    if app.limiter().check_key(&rate_key(client)).is_err() {
        count("any", "limited");
        let mut r = page::text(StatusCode::TOO_MANY_REQUESTS, "too many requests\n");
        r.headers_mut().insert(
            header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("60"),
        );
        return r;
    }
    let method = match *req.method() {
        axum::http::Method::GET => Method::Get,
        axum::http::Method::HEAD => Method::Head,
        axum::http::Method::POST => Method::Post,
        _ => Method::Other,
    };
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = req.headers().clone();
    let routed = route::route(method, &path);
    let body = match &routed {
        Route::Confirm { .. }
        | Route::Keypress { .. }
        | Route::CallStatus { .. }
        | Route::Sms { .. } => match read_body(req, app.settings.max_body_bytes).await {
            Ok(b) => b,
            Err(r) => return r,
        },
        _ => Vec::new(),
    };
    match routed {
        Route::Page { token } => {
            let r = show(&app, token);
            if method == Method::Head {
                let (parts, _) = r.into_parts();
                return Response::from_parts(parts, Body::empty());
            }
            r
        }
        Route::Confirm { token } => confirm(&app, token).await,
        Route::Keypress { token, attempt } | Route::CallStatus { token, attempt } => {
            let keypress = path.contains("/key/");
            super::callbacks::call(
                &app,
                token,
                attempt,
                keypress,
                &path,
                query.as_deref(),
                &headers,
                &body,
            )
            .await
        }
        Route::Sms { target, provider } => {
            super::callbacks::sms(
                &app,
                target,
                provider,
                &path,
                query.as_deref(),
                &headers,
                &body,
            )
            .await
        }
        Route::MethodNotAllowed { allow } => {
            count("other", "method_not_allowed");
            let mut r = page::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            if let Ok(v) = axum::http::HeaderValue::from_str(allow) {
                r.headers_mut().insert(header::ALLOW, v);
            }
            r
        }
        Route::NotFound => {
            count("other", "not_found");
            page::text(StatusCode::NOT_FOUND, "not found\n")
        }
    }
}

/// Reads a body up to `max` bytes and [`BODY_TIMEOUT`]; an answer when it cannot.
async fn read_body(req: Request<Body>, max: usize) -> Result<Vec<u8>, Response> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        count("any", "too_large");
        return Err(page::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large\n",
        ));
    }
    let limited = http_body_util::Limited::new(req.into_body(), max);
    match tokio::time::timeout(BODY_TIMEOUT, http_body_util::BodyExt::collect(limited)).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes().to_vec()),
        Ok(Err(_)) => {
            count("any", "too_large");
            Err(page::text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large\n",
            ))
        }
        Err(_) => {
            count("any", "timeout");
            Err(page::text(StatusCode::REQUEST_TIMEOUT, "body too slow\n"))
        }
    }
}

fn unix_now() -> u64 {
    jiff::Timestamp::now().as_second().max(0) as u64
}

/// What the page shows, from the case the token names, when it is open.
fn notice_of(
    app: &Inbound,
    token: &str,
    route: &'static str,
) -> Result<(clarion_confirm::Token, page::Notice), Box<Response>> {
    let t = match app.store.minter.keys.verify(token, unix_now()) {
        Ok(t) => t,
        Err(e) => {
            count(route, "refused");
            tracing::debug!(why = e.why, "confirmation link refused");
            return Err(Box::new(page::refused()));
        }
    };
    let found = app.store.read(|v| {
        let c = v.case(&t.case)?;
        let h = c.header.clone()?;
        if c.closed.is_some() {
            return None;
        }
        let audience = c.audience_of(&t.recipient).unwrap_or_default();
        let confirmed_at = c
            .confirmed
            .get(&t.recipient)
            .map(|x| x.at)
            .or_else(|| c.answers.get(&t.recipient).map(|a| a.at));
        Some((h, audience, confirmed_at))
    });
    let Some((h, audience, confirmed_at)) = found else {
        count(route, "refused");
        return Err(Box::new(page::refused()));
    };
    let notice = page::Notice {
        title: h.update.title.clone(),
        message: h.update.message_for(&audience).to_string(),
        status: h.update.status.as_str(),
        occurred_at: h.update.occurred_at,
        deadline: h.deadline,
        drill: h.drill,
        confirmed_at,
    };
    Ok((t, notice))
}

fn show(app: &Inbound, token: &str) -> Response {
    match notice_of(app, token, "page") {
        Ok((_, n)) => {
            count("page", "ok");
            page::notice(&n)
        }
        Err(r) => *r,
    }
}

async fn confirm(app: &Inbound, token: &str) -> Response {
    let (t, mut n) = match notice_of(app, token, "confirm") {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if n.confirmed_at.is_none() {
        let answer = Answer {
            v: VERSION,
            via: Via::Link,
            provider: None,
            at: jiff::Timestamp::now(),
        };
        if app
            .store
            .write(&t.case, Item::Answer(t.recipient), &answer, &app.cancel)
            .await
            .is_err()
        {
            count("confirm", "unavailable");
            return page::text(StatusCode::SERVICE_UNAVAILABLE, "not recorded; try again\n");
        }
        n.confirmed_at = Some(answer.at);
    }
    count("confirm", "ok");
    page::confirmed(&n)
}
