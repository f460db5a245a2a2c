//! Clarion's SMS channel: incident updates as text messages, through Twilio, Vonage,
//! an in-house HTTP gateway or an SMSC over SMPP 3.4.
//!
//! During an outage SMS is often the only way to reach people, and every extra segment
//! costs money and delivery time, so each message is measured ([`encoding`]) and cut to
//! the target's segment budget before it leaves, and each gateway's throughput limit
//! is respected by waiting, never by failing.
//!
//! A delivery may carry its own numbers (`Delivery::direct`, a directory's members)
//! instead of the configured ones; each is checked as a configured one is, and a
//! malformed one fails alone, for good.
//!
//! Like every channel, this crate tries each recipient once per [`Channel::send`] and
//! classifies every failure; it never retries on its own (the daemon does), never
//! panics on a provider's reply, and never logs a full phone number or a credential.

pub mod encoding;

mod config;
mod gateway;
mod http;
mod smpp;
mod twilio;
mod vonage;

pub use config::{
    BindMode, BodyFormat, HttpGatewayConfig, SmppConfig, SmsConfig, StatusSpec, TwilioConfig,
    VonageConfig, is_e164,
};

use clarion_core::{
    Channel, Delivery, DeliveryError, IdempotencyKey, IncidentUpdate, Outcome, Receipt,
    RecipientResult, Secret, SecretRef, SecretResolver,
};
use encoding::Analysis;
use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The longest segment budget a target may set: beyond this, a text message is the
/// wrong medium (and carriers start refusing to reassemble).
const MAX_SEGMENTS_LIMIT: usize = 10;
const MAX_RATE_PER_SECOND: f64 = 10_000.0;
const MAX_IN_FLIGHT_LIMIT: usize = 256;
/// Why a number is refused, configured or handed over with a delivery.
const NOT_E164: &str = "is not an E.164 number (`+` then 8-15 digits, e.g. +447700900123)";

/// Why an SMS target's configuration cannot be used. The text names the target and
/// the field, for the operator who wrote it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target `{target}`: invalid `{field}`: {reason}")]
pub struct SmsConfigError {
    pub target: String,
    pub field: String,
    pub reason: String,
}

/// Validates `config` and builds the channel. Resolves secrets, parses templates and
/// checks every phone number; does no network I/O.
pub fn build(
    target_name: &str,
    config: &SmsConfig,
    secrets: &dyn SecretResolver,
) -> Result<SmsChannel, SmsConfigError> {
    let err = |field: &str, reason: String| SmsConfigError {
        target: target_name.to_string(),
        field: field.to_string(),
        reason,
    };
    let common = config.common();
    if common.directory && !common.recipients.is_empty() {
        // Anything written here would be texted on top of the directory's members,
        // or never, depending on how the daemon addressed the delivery: refuse it.
        return Err(err(
            "recipients",
            "a people target's channel addresses the directory's members; static recipients belong to an ordinary target".into(),
        ));
    }
    let mut recipients = BTreeMap::new();
    for (audience, numbers) in common.recipients {
        for (i, number) in numbers.iter().enumerate() {
            if !is_e164(number) {
                return Err(err(
                    &format!("recipients.{audience}[{i}]"),
                    format!("`{number}` {NOT_E164}"),
                ));
            }
        }
        recipients.insert(audience.clone(), numbers.clone());
    }
    if common.max_segments == 0 || common.max_segments > MAX_SEGMENTS_LIMIT {
        return Err(err(
            "max_segments",
            format!(
                "must be between 1 and {MAX_SEGMENTS_LIMIT}, got {}",
                common.max_segments
            ),
        ));
    }
    let rate = common.rate_per_second;
    if !(rate.is_finite() && rate > 0.0 && rate <= MAX_RATE_PER_SECOND) {
        return Err(err(
            "rate_per_second",
            format!("must be above 0 and at most {MAX_RATE_PER_SECOND}, got {rate}"),
        ));
    }
    let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))
        .ok_or_else(|| err("rate_per_second", format!("{rate} is too high")))?;
    if common.max_in_flight == 0 || common.max_in_flight > MAX_IN_FLIGHT_LIMIT {
        return Err(err(
            "max_in_flight",
            format!(
                "must be between 1 and {MAX_IN_FLIGHT_LIMIT}, got {}",
                common.max_in_flight
            ),
        ));
    }
    let resolve = |field: &str, reference: &SecretRef| -> Result<Secret, SmsConfigError> {
        secrets
            .resolve(reference)
            .map_err(|reason| err(field, format!("cannot read secret {reference}: {reason}")))
    };
    let provider: Box<dyn Provider> = match config {
        SmsConfig::Twilio(c) => Box::new(
            twilio::Twilio::build(c, resolve("auth_token", &c.auth_token)?)
                .map_err(|(f, r)| err(f, r))?,
        ),
        SmsConfig::Vonage(c) => Box::new(
            vonage::Vonage::build(c, resolve("api_secret", &c.api_secret)?)
                .map_err(|(f, r)| err(f, r))?,
        ),
        SmsConfig::Http(c) => {
            let key = c.key.as_ref().map(|k| resolve("key", k)).transpose()?;
            Box::new(gateway::Gateway::build(c, key).map_err(|(f, r)| err(&f, r))?)
        }
        SmsConfig::Smpp(c) => Box::new(
            smpp::Smpp::build(c, resolve("password", &c.password)?).map_err(|(f, r)| err(f, r))?,
        ),
    };
    Ok(SmsChannel {
        target: target_name.to_string(),
        provider_name: config.provider(),
        recipients,
        max_segments: common.max_segments,
        max_in_flight: common.max_in_flight,
        limiter: Arc::new(RateLimiter::direct(quota)),
        provider,
    })
}

/// The SMS text for one audience of an update, at most `max_segments` segments long.
///
/// It starts with the incident id and status in brackets and ends with the update id,
/// so a recipient (or a script reading replies) can tell updates apart; when the text
/// is too long, only the middle (title and message) is shortened. This is the one
/// place the wording is decided, until templates replace it.
pub fn compose(update: &IncidentUpdate, audience: &str, max_segments: usize) -> String {
    let body = format!(
        "[{} {}] {}: {}",
        update.incident_id,
        update.status,
        update.title.trim(),
        update.message_for(audience).trim()
    );
    let suffix = format!(" (ref {})", update.update_id);
    encoding::truncate_keeping_suffix(&body, &suffix, max_segments)
}

/// A configured SMS target.
pub struct SmsChannel {
    target: String,
    provider_name: &'static str,
    recipients: BTreeMap<String, Vec<String>>,
    max_segments: usize,
    max_in_flight: usize,
    limiter: Arc<DefaultDirectRateLimiter>,
    provider: Box<dyn Provider>,
}

impl fmt::Debug for SmsChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmsChannel")
            .field("target", &self.target)
            .field("provider", &self.provider)
            .field("audiences", &self.recipients.keys().collect::<Vec<_>>())
            .field("max_segments", &self.max_segments)
            .finish_non_exhaustive()
    }
}

/// One message to one number, as a provider sends it.
#[derive(Debug)]
pub(crate) struct Sms<'a> {
    /// E.164, with `+`.
    pub to: &'a str,
    pub text: &'a str,
    pub analysis: Analysis,
    pub update: &'a IncidentUpdate,
    pub key: &'a IdempotencyKey,
}

/// What each gateway implements: one message, one try.
#[async_trait::async_trait]
pub(crate) trait Provider: Send + Sync + fmt::Debug {
    async fn submit(&self, sms: &Sms<'_>) -> Result<Receipt, DeliveryError>;
    async fn healthcheck(&self) -> Result<(), DeliveryError>;
}

impl SmsChannel {
    /// The numbers this delivery goes to, each with the audience whose text it gets,
    /// or the reason it cannot be sent to (a permanent failure for that number alone),
    /// de-duplicated; only those [`Delivery::wants`] (the requested ones, minus those
    /// that already ended in an earlier, timed-out attempt).
    ///
    /// Configured numbers come in config order, each with the first of the delivery's
    /// audiences that lists it. A delivery's direct numbers ([`Delivery::direct`])
    /// replace them: in the given order, all with the first audience's text.
    fn plan(&self, delivery: &Delivery) -> Vec<(String, Result<String, DeliveryError>)> {
        // `Delivery::wants` searches the retry's subset, which can be as long as the
        // list itself (a directory batch holds up to a thousand numbers): a set.
        let only: Option<HashSet<&str>> = delivery
            .recipients
            .as_ref()
            .map(|o| o.iter().map(String::as_str).collect());
        let wants = |number: &str| {
            only.as_ref().is_none_or(|o| o.contains(number)) && !delivery.skip.contains(number)
        };
        if let Some(direct) = &delivery.direct {
            return self.plan_direct(delivery, direct, wants);
        }
        let mut seen = HashSet::new();
        let mut plan = Vec::new();
        for audience in delivery.audiences.iter() {
            for number in self.recipients.get(audience).into_iter().flatten() {
                if wants(number) && seen.insert(number.as_str()) {
                    plan.push((number.clone(), Ok(audience.clone())));
                }
            }
        }
        // A retry may name a number that a config reload removed since: it gets a
        // result too, so the daemon is never left waiting for it.
        for number in delivery.recipients.iter().flatten() {
            if wants(number) && seen.insert(number.as_str()) {
                let gone = DeliveryError::permanent(format!(
                    "{} is no longer a recipient of target `{}` for these audiences",
                    mask(number),
                    self.target
                ));
                plan.push((number.clone(), Err(gone)));
            }
        }
        plan
    }

    /// The plan for a delivery's direct numbers. Each is checked as a configured
    /// number is at load; a malformed one is refused alone. A retry's subset naming a
    /// number the delivery does not carry gets no result: the daemon, not the config,
    /// says who a directory batch holds.
    fn plan_direct(
        &self,
        delivery: &Delivery,
        direct: &[String],
        wants: impl Fn(&str) -> bool,
    ) -> Vec<(String, Result<String, DeliveryError>)> {
        let audience = delivery.direct_audience();
        let mut seen = HashSet::with_capacity(direct.len());
        let mut plan = Vec::with_capacity(direct.len());
        for number in direct.iter() {
            if !wants(number) || !seen.insert(number.as_str()) {
                continue;
            }
            let step = if !is_e164(number) {
                Err(DeliveryError::permanent(format!(
                    "target `{}`: {} {NOT_E164}",
                    self.target,
                    mask(number)
                )))
            } else if let Some(audience) = audience {
                Ok(audience.to_string())
            } else {
                Err(DeliveryError::permanent(format!(
                    "target `{}`: the delivery serves no audience whose text {} could get",
                    self.target,
                    mask(number)
                )))
            };
            plan.push((number.clone(), step));
        }
        plan
    }

    /// Sends to one number and records the result in the delivery's progress the
    /// moment it is known, so that an attempt the daemon cuts short keeps it.
    async fn send_one(
        &self,
        delivery: &Delivery,
        number: String,
        audience: Result<String, DeliveryError>,
    ) -> RecipientResult {
        let result = self.try_one(delivery, number, audience).await;
        delivery.finish(result)
    }

    async fn try_one(
        &self,
        delivery: &Delivery,
        number: String,
        audience: Result<String, DeliveryError>,
    ) -> RecipientResult {
        let audience = match audience {
            Ok(audience) => audience,
            Err(refused) => {
                return RecipientResult {
                    result: Err(refused),
                    recipient: Some(number),
                };
            }
        };
        // The rendered template when the daemon supplied one, cut to the segment
        // budget like the built-in wording; else the built-in wording.
        let text = match delivery.part(&audience, "text") {
            Some(t) => encoding::truncate_to_segments(t.trim(), self.max_segments),
            None => compose(&delivery.update, &audience, self.max_segments),
        };
        let analysis = encoding::analyze(&text);
        // The limit counts segments: wait for one cell per segment, so that a
        // three-part message uses three seconds' worth of a 1/s gateway.
        for _ in 0..analysis.segments {
            self.limiter.until_ready().await;
        }
        let sms = Sms {
            to: &number,
            text: &text,
            analysis,
            update: &delivery.update,
            key: &delivery.key,
        };
        let result = self.provider.submit(&sms).await;
        match &result {
            Ok(receipt) => tracing::debug!(
                target_name = %self.target,
                provider = self.provider_name,
                recipient = %mask(&number),
                provider_id = receipt.provider_id.as_deref().unwrap_or(""),
                encoding = %analysis.encoding,
                segments = analysis.segments,
                "sms accepted"
            ),
            Err(e) => tracing::warn!(
                target_name = %self.target,
                provider = self.provider_name,
                recipient = %mask(&number),
                class = e.class.as_str(),
                code = e.code.as_deref().unwrap_or(""),
                reason = %e.reason,
                "sms not accepted"
            ),
        }
        RecipientResult {
            recipient: Some(number),
            result,
        }
    }
}

#[async_trait::async_trait]
impl Channel for SmsChannel {
    async fn send(&self, delivery: &Delivery) -> Outcome {
        let plan = self.plan(delivery);
        let results = futures::stream::iter(plan)
            .map(|(number, audience)| self.send_one(delivery, number, audience))
            .buffered(self.max_in_flight)
            .collect()
            .await;
        Outcome { results }
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        self.provider.healthcheck().await
    }
}

/// A phone number as logs and errors show it: the one masking of a recipient
/// everywhere (`clarion_core::mask`), so that a number reads the same in every line.
pub(crate) fn mask(number: &str) -> String {
    clarion_core::mask(Some(number))
}

#[cfg(test)]
mod tests;
