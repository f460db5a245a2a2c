//! What both providers' clients need from HTTP: a bounded fan-out and a clock that
//! tests can move. Reading `Retry-After`, bounded reply bodies and classifying a
//! request that never got an answer come from `clarion-http`, shared with the webhook
//! and SMS channels; its error text never carries a URL's path (an APNs path holds the
//! device token) or query.

use clarion_core::RecipientResult;
pub(crate) use clarion_http::{error_chain, retry_after, transport_error};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// The reply body, at most [`clarion_http::DEFAULT_BODY_LIMIT`] bytes of it; an error
/// body larger than that is cut, not held.
pub(crate) async fn read_limited(reply: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    clarion_http::read_limited(reply, clarion_http::DEFAULT_BODY_LIMIT).await
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
    pub(crate) fn offset() -> (Self, Arc<std::sync::Mutex<std::time::Duration>>) {
        let offset = Arc::new(std::sync::Mutex::new(std::time::Duration::ZERO));
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
