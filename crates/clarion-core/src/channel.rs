//! The seam between the daemon and every delivery adapter.

use crate::{ConfirmWay, ConfirmWays, IdempotencyKey, IncidentUpdate};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A configured destination (one webhook endpoint, one SMTP relay with its recipient
/// lists, one SMS gateway, one push app). The daemon owns retries, ordering and
/// dead-lettering; a channel only tries once and says how that went.
#[async_trait::async_trait]
pub trait Channel: Send + Sync + fmt::Debug {
    /// Tries to deliver `delivery` once. Must not retry internally (the daemon's
    /// policy decides), must not panic on any reply, and must classify every failure.
    ///
    /// Channels with several recipients (email, SMS, push) report one result per
    /// recipient they tried, and try only the recipients for which
    /// [`Delivery::wants`] is true (a retry of the ones that failed). They also hand
    /// each recipient's result to [`Delivery::progress`] the moment it is known, so
    /// that an attempt cut short by the daemon's `attempt_timeout` keeps what it
    /// achieved: the recipients already reached are not sent to again.
    async fn send(&self, delivery: &Delivery) -> Outcome;

    /// Checks that the destination is reachable and accepts our credentials, without
    /// delivering anything. Used by `clarion check-config --connect`.
    async fn healthcheck(&self) -> Result<(), DeliveryError>;
}

/// One update on its way to one target.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub update: Arc<IncidentUpdate>,
    /// The target's name in config.
    pub target: Arc<str>,
    /// The audiences of the update that this target serves, in the update's order.
    pub audiences: Arc<[String]>,
    pub key: IdempotencyKey,
    /// 1 on the first try.
    pub attempt: u32,
    /// `None`: every recipient the target has for `audiences`. `Some`: only these,
    /// because the others already succeeded or failed for good.
    pub recipients: Option<Vec<String>>,
    /// Addresses handed over with the delivery (the members of a directory
    /// audience, one batch of them), used *instead of* the channel's configured
    /// recipients, lists and topics. Each gets the text of `audiences[0]`. A
    /// channel validates each one as it validates configured recipients: a
    /// malformed address is a permanent result for that address alone.
    /// `recipients` and `skip` restrict them on a retry as usual.
    pub direct: Option<Arc<[String]>>,
    /// Recipients that already ended (delivered, or failed for good) in an earlier
    /// attempt that timed out before it could report them all. Never tried again.
    pub skip: Arc<std::collections::BTreeSet<String>>,
    /// Where the channel records each recipient's result as soon as it is known.
    /// The daemon reads it when an attempt times out. A fresh one per attempt.
    pub progress: Arc<Progress>,
    /// The message rendered from the target's templates, per audience. Channels use
    /// it when present and fall back to their built-in wording otherwise.
    pub content: Arc<BTreeMap<String, Content>>,
    /// When the notice must be confirmed: each recipient's way to confirm it, which
    /// the channel puts into that recipient's message ([`Delivery::confirm_way`]).
    pub confirm: Option<Arc<dyn ConfirmWays>>,
}

/// Rendered text for one audience, by part: `subject`, `text`, `html` (email), `text`
/// (SMS), `title`, `body` (push), `body` (webhook: a JSON document replacing the
/// standard payload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    pub parts: BTreeMap<String, String>,
}

impl Content {
    pub fn get(&self, part: &str) -> Option<&str> {
        self.parts.get(part).map(String::as_str)
    }
}

impl Delivery {
    pub fn new(update: Arc<IncidentUpdate>, target: Arc<str>, audiences: Arc<[String]>) -> Self {
        let key = IdempotencyKey::new(&update.update_id, &target);
        Delivery {
            update,
            target,
            audiences,
            key,
            attempt: 1,
            recipients: None,
            direct: None,
            skip: Arc::default(),
            progress: Arc::default(),
            content: Arc::default(),
            confirm: None,
        }
    }

    /// How `recipient` confirms this delivery, when the notice asks for
    /// confirmation (see [`ConfirmWays::way`]).
    pub fn confirm_way(&self, recipient: Option<&str>) -> Option<ConfirmWay> {
        self.confirm.as_ref().and_then(|c| c.way(recipient))
    }

    /// True when this attempt should try `recipient`: it is among the requested
    /// recipients (all, on a first try) and did not already end in an earlier attempt.
    pub fn wants(&self, recipient: &str) -> bool {
        self.recipients
            .as_ref()
            .is_none_or(|only| only.iter().any(|r| r == recipient))
            && !self.skip.contains(recipient)
    }

    /// Records one recipient's result in [`Delivery::progress`] and returns it, for
    /// channels that collect their outcome as they go.
    pub fn finish(&self, result: RecipientResult) -> RecipientResult {
        self.progress.record(&result);
        result
    }

    /// The same delivery addressed to `addresses` instead of the channel's
    /// configured recipients (see [`Delivery::direct`]).
    pub fn with_direct(mut self, addresses: Vec<String>) -> Self {
        self.direct = Some(addresses.into());
        self
    }

    /// The audience whose text direct addresses get: the first one served.
    pub fn direct_audience(&self) -> Option<&str> {
        self.audiences.first().map(String::as_str)
    }

    /// The rendered part for one audience, if the templates produced it.
    pub fn part(&self, audience: &str, part: &str) -> Option<&str> {
        self.content.get(audience).and_then(|c| c.get(part))
    }
}

/// The results an attempt has produced so far, shared between the channel (which
/// records them) and the daemon (which reads them if the attempt times out).
#[derive(Debug, Default)]
pub struct Progress {
    done: std::sync::Mutex<Vec<RecipientResult>>,
}

impl Progress {
    /// Records one recipient's result. Results for a recipient-less channel (a
    /// webhook) are not kept: a single destination has no partial progress.
    pub fn record(&self, result: &RecipientResult) {
        if result.recipient.is_some() {
            self.lock().push(result.clone());
        }
    }

    /// How many results have been recorded: the daemon's sign that an attempt is
    /// still moving.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every result recorded so far.
    pub fn take(&self) -> Vec<RecipientResult> {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecipientResult>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one attempt achieved, per recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub results: Vec<RecipientResult>,
}

/// The result for one recipient. `recipient` is `None` for channels that have a
/// single destination (a webhook URL).
#[derive(Debug, Clone, PartialEq)]
pub struct RecipientResult {
    pub recipient: Option<String>,
    pub result: Result<Receipt, DeliveryError>,
}

impl Outcome {
    /// The outcome of a channel with a single destination.
    pub fn single(result: Result<Receipt, DeliveryError>) -> Self {
        Outcome {
            results: vec![RecipientResult {
                recipient: None,
                result,
            }],
        }
    }

    /// True when nothing failed.
    pub fn is_delivered(&self) -> bool {
        self.results.iter().all(|r| r.result.is_ok())
    }
}

/// Proof of acceptance by the next hop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id for the message, when it gives one (SMTP queue id, Twilio
    /// SID, FCM message name, HTTP status for webhooks).
    pub provider_id: Option<String>,
}

/// Why an attempt failed, in words a channel owner understands, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    pub class: ErrorClass,
    pub reason: String,
    /// The provider's own error code, if any (HTTP status, SMTP reply code, FCM
    /// `errorCode`), for dashboards and the dead-letter record.
    pub code: Option<String>,
}

impl DeliveryError {
    pub fn retryable(reason: impl Into<String>, retry_after: Option<Duration>) -> Self {
        DeliveryError {
            class: ErrorClass::Retryable { retry_after },
            reason: reason.into(),
            code: None,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        DeliveryError {
            class: ErrorClass::Permanent,
            reason: reason.into(),
            code: None,
        }
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self.class, ErrorClass::Retryable { .. })
    }
}

/// What the daemon should do with a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later; `retry_after` is the peer's own hint (`Retry-After`), which
    /// wins over the computed backoff when it is longer.
    Retryable { retry_after: Option<Duration> },
    /// Trying again cannot help (bad request, rejected recipient, auth refused).
    Permanent,
    /// Permanent, and the recipient itself is dead (unregistered device token,
    /// opted-out number): whoever owns the address book should prune it.
    RecipientGone,
}

impl ErrorClass {
    /// A short, fixed label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable { .. } => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::RecipientGone => "recipient_gone",
        }
    }
}
