//! What both providers' clients need from HTTP: reading `Retry-After`, classifying a
//! request that never got an answer, a bounded fan-out, and a clock that tests can move.

use clarion_core::{DeliveryError, RecipientResult};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Semaphore;

/// The `Retry-After` hint of a reply: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
/// A date in the past means "now"; anything unreadable is ignored (the daemon's own
/// backoff applies).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    clarion_core::retry_after::parse(headers.get(RETRY_AFTER)?.to_str().ok()?, now)
}

/// A request that got no HTTP answer (refused, reset, timed out, TLS failed). Only a
/// request we could not even build is permanent; anything on the wire may work later.
pub(crate) fn transport_error(provider: &str, e: &reqwest::Error) -> DeliveryError {
    let reason = format!("{provider} request failed: {}", error_chain(e));
    if e.is_builder() {
        DeliveryError::permanent(reason)
    } else {
        DeliveryError::retryable(reason, None)
    }
}

/// Replies are read up to this size; an error body larger than this is cut, not held.
const MAX_REPLY: usize = 64 * 1024;

/// The reply body, at most [`MAX_REPLY`] bytes of it.
pub(crate) async fn read_limited(mut reply: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = reply.chunk().await? {
        let room = MAX_REPLY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_REPLY {
            break;
        }
    }
    Ok(body)
}

/// An error with its causes, `a: b: c`, because reqwest's own message ("error sending
/// request") hides the part an operator needs (connection refused, certificate unknown).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}

/// Runs `send` for every recipient, at most as many at once as `limit` has permits
/// (the permits are shared by every delivery in flight on the target), and returns the
/// results in the recipients' order.
pub(crate) async fn fan_out<T, F, Fut>(
    limit: &Semaphore,
    items: Vec<T>,
    send: F,
) -> Vec<RecipientResult>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = RecipientResult>,
{
    let futures = items.into_iter().map(|item| {
        let fut = send(item);
        async move {
            // The semaphore is never closed, so acquiring only fails if that changes;
            // sending without a permit then is still correct, just less polite.
            let _permit = limit.acquire().await.ok();
            fut.await
        }
    });
    futures::future::join_all(futures).await
}

/// The monotonic clock the token caches read. Production uses [`Instant::now`]; tests
/// move it forward to see a token expire without waiting an hour.
#[derive(Clone)]
pub(crate) struct Clock(Arc<dyn Fn() -> Instant + Send + Sync>);

impl Clock {
    pub(crate) fn system() -> Self {
        Clock(Arc::new(Instant::now))
    }

    pub(crate) fn now(&self) -> Instant {
        (self.0)()
    }

    /// A clock that runs with the system one plus an offset the test controls.
    #[cfg(test)]
    pub(crate) fn offset() -> (Self, Arc<std::sync::Mutex<Duration>>) {
        let offset = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let o = Arc::clone(&offset);
        let clock = Clock(Arc::new(move || {
            Instant::now() + *o.lock().unwrap_or_else(|e| e.into_inner())
        }));
        (clock, offset)
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn reads_retry_after_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let check = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_str(v).expect("header"));
            retry_after(&h, now)
        };
        assert_eq!(check("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            check("Sun, 06 Nov 1994 08:50:37 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(check("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(check("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }
}
