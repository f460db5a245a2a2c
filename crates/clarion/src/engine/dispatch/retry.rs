//! The retry loop: one delivery tried, classified, waited on and tried again until
//! it resolves, and one attempt's bounds (concurrency permit, idle timeout, a
//! contained panic). Which provider an attempt goes to is `providers.rs`; how a
//! delivery ends (recorded, dead-lettered, superseded) is `resolve.rs`.

use super::providers::{choose, failover_why, next_provider};
use super::*;

impl Dispatcher {
    /// Tries a delivery until it resolves: delivered, dead-lettered (or, for a
    /// people target's leg, handed back through `sink` for the next leg),
    /// superseded, or abandoned. `lane` is the delivery's place in its incident's
    /// lane (`None` for a leg: the people target holds the lane).
    pub(crate) async fn retry_loop(
        &self,
        target: &Target,
        delivery: &mut Delivery,
        source: &Source,
        cancel: &CancellationToken,
        lane: Option<&LaneEntry>,
        mut sink: Option<&mut LegSink>,
    ) -> Resolution {
        let policy = &target.config.retry;
        let last = target.providers.len() - 1;
        let mut tried = Tried::default();
        // The providers this delivery may still use are `floor..`: one whose retry
        // budget it spent is not tried again for it.
        // A failover drill treats the providers before the one it proves as down.
        let mut floor = if delivery.update.drill {
            (delivery.update.drill_skip_providers as usize).min(last)
        } else {
            0
        };
        let mut budgets: Vec<Budget> = (0..=last).map(|_| Budget::default()).collect();
        // The provider of the last attempt (or the first the delivery may use).
        let mut current = floor;
        // The last `pending` record written, to write the next only on a change.
        let mut noted = Noted::default();
        loop {
            if target.config.supersede
                && let Some(by) = lane.and_then(LaneEntry::superseded_by)
            {
                return Box::pin(self.superseded(target, delivery, source, by, tried, cancel))
                    .await;
            }
            // A leg whose every provider is down hands its people to the next leg
            // at once: waiting for it would keep them from a channel that works.
            if let Some(sink) = sink.as_deref_mut()
                && target.breakers.is_open()
            {
                let e = DeliveryError::retryable(
                    format!(
                        "`{}` is down (every provider's breaker is open)",
                        target.config.name
                    ),
                    None,
                )
                .with_code("outage");
                sink.failed.push((None, e));
                sink.tried = tried;
                return Resolution::Resolved;
            }
            // Waiting for a target that is down: say so in the ledger, once.
            if self.ledger.is_some() && target.breakers.is_open() {
                self.note_pending(
                    target, delivery, source, &tried, &mut noted, None, None, None,
                );
            }
            let waited = Instant::now();
            let (at, pass) = tokio::select! {
                p = choose(target, floor) => p,
                _ = changed(lane), if target.config.supersede => continue,
                _ = cancel.cancelled() => return Resolution::Abandoned,
            };
            if at != current {
                crate::ops::telemetry::FailedOver {
                    update: &delivery.update,
                    target: &target.config.name,
                    from: &target.providers[current].name,
                    to: &target.providers[at].name,
                    why: failover_why(at, current, floor),
                }
                .emit();
                current = at;
            }
            let budget = &mut budgets[at];
            budget.breaker_wait += waited.elapsed();
            let started = *budget.started.get_or_insert_with(Instant::now);
            tried.provider = Some(at);
            let provider = &target.providers[at];
            let breaker = target.breakers.get(at);
            // A drill goes through the provider's drill channel, never its own.
            let channel = if delivery.update.drill {
                let Some(channel) = &provider.drill else {
                    // Not an attempt: a probe this delivery was given goes back.
                    breaker.release_probe(pass);
                    let e = DeliveryError::permanent(format!(
                        "provider `{}` has no drill channel (the target has no drill_recipients)",
                        provider.name
                    ))
                    .with_code("no_drill_recipients");
                    return self
                        .dead_letter(target, delivery, source, None, e, tried, cancel)
                        .await;
                };
                channel
            } else {
                &provider.channel
            };
            if let Pass::OutageOver { since } = pass {
                let e = DeliveryError::retryable(
                    format!(
                        "target `{}` has been down since {since}, longer than its outage budget ({}); not tried again",
                        target.config.name,
                        humantime::format_duration(target.config.breaker.outage_budget)
                    ),
                    None,
                )
                .with_code("outage");
                return self
                    .dead_letter(target, delivery, source, None, e, tried, cancel)
                    .await;
            }
            tried.first_at.get_or_insert_with(jiff::Timestamp::now);
            tried.count += 1;
            let Some(attempt) = self
                .attempt(target, channel, delivery, policy, cancel)
                .await
            else {
                breaker.release_probe(pass);
                return Resolution::Abandoned;
            };
            let Attempt { outcome, timed_out } = attempt;
            if let Some(sink) = sink.as_deref_mut() {
                sink.tried = tried;
            }
            let verdict = verdict_of(&outcome);
            let first_error = outcome
                .results
                .iter()
                .find_map(|r| r.result.as_ref().err().map(|e| e.reason.clone()))
                .unwrap_or_default();
            let target_down =
                breaker.record(pass, verdict, &first_error) && verdict == Verdict::TargetDown;
            let latency = since_kafka_timestamp(source);
            let mut retry: Vec<(Option<String>, DeliveryError)> = Vec::new();
            let mut permanent: Vec<(Option<String>, DeliveryError)> = Vec::new();
            // Recipients that ended in this attempt (delivered or failed for good).
            let mut ended: Vec<String> = Vec::new();
            let mut delivered: Vec<End> = Vec::new();
            for r in outcome.results {
                if let (Some(who), false) = (
                    &r.recipient,
                    r.result.as_ref().is_err_and(DeliveryError::is_retryable),
                ) {
                    ended.push(who.clone());
                }
                match r.result {
                    Ok(receipt) => {
                        DeliveryAttempted {
                            update: &delivery.update,
                            channel: target.config.kind.as_str(),
                            target: &target.config.name,
                            provider: &provider.name,
                            recipient: r.recipient.as_deref(),
                            attempt: delivery.attempt,
                            result: Ok(receipt.provider_id.as_deref()),
                            latency,
                            next_retry: None,
                            failover_to: None,
                        }
                        .emit();
                        if let (Some(sink), Some(who)) = (sink.as_deref_mut(), &r.recipient) {
                            sink.delivered.push(who.clone());
                        }
                        delivered.push(End {
                            recipient: r.recipient,
                            provider_id: receipt.provider_id,
                            tried,
                            ..End::default()
                        });
                    }
                    Err(e) if e.is_retryable() => retry.push((r.recipient, e)),
                    Err(e) => permanent.push((r.recipient, e)),
                }
            }
            // The recipients of one attempt are recorded together: one at a time, a
            // list of thousands would wait for thousands of broker round trips.
            let recorded = futures::future::join_all(
                delivered
                    .into_iter()
                    .map(|end| self.report(target, delivery, source, end, cancel)),
            )
            .await;
            if recorded.contains(&Resolution::Abandoned) {
                return Resolution::Abandoned;
            }
            // Decide the wait before logging, so that the log line says when.
            let wait = if retry.is_empty() {
                None
            } else if target_down {
                // The target is down, not this delivery: the attempt does not count,
                // and the breaker decides when to try again.
                Some(Duration::ZERO)
            } else {
                let hint = retry
                    .iter()
                    .filter_map(|(_, e)| match e.class {
                        clarion_core::ErrorClass::Retryable { retry_after } => retry_after,
                        _ => None,
                    })
                    .max();
                let budget = &mut budgets[at];
                // The attempts counted here so far, this one included: the n-th
                // retry waits up to the n-th ceiling.
                let made = budget.attempts + 1;
                let ceiling = backoff_ceilings(policy)
                    .nth(made as usize - 1)
                    .unwrap_or(policy.max_backoff);
                let wait = full_jitter(ceiling).max(hint.unwrap_or_default());
                let out_of_attempts = made >= policy.max_attempts;
                // Saturating: a peer's `Retry-After` may be anything.
                let out_of_time = started
                    .elapsed()
                    .saturating_sub(budget.breaker_wait)
                    .saturating_add(wait)
                    > policy.max_elapsed;
                // With a provider after this one, the next try goes there at once
                // when waiting here would pass `failover_after`.
                let failing_for = budget
                    .failing_since
                    .get_or_insert_with(Instant::now)
                    .elapsed();
                if at < last
                    && (out_of_attempts
                        || out_of_time
                        || failing_for.saturating_add(wait) >= target.config.failover_after)
                {
                    floor = at + 1;
                    Some(Duration::ZERO)
                } else if out_of_attempts || out_of_time {
                    let why = if out_of_attempts {
                        format!("gave up after {} attempts", delivery.attempt)
                    } else {
                        format!(
                            "gave up after {} attempts: the next retry would pass max_elapsed ({})",
                            delivery.attempt,
                            humantime::format_duration(policy.max_elapsed)
                        )
                    };
                    for (recipient, e) in retry.drain(..) {
                        let reason = format!("{why}; last error: {}", e.reason);
                        permanent.push((recipient, DeliveryError { reason, ..e }));
                    }
                    None
                } else {
                    Some(wait)
                }
            };
            // Where the next try goes, when it leaves this provider.
            let failover_to = next_provider(target, at, floor, target_down);
            if let (Some(wait), Some((_, e)), true) = (wait, retry.first(), self.ledger.is_some()) {
                let now = jiff::Timestamp::now();
                let next = if failover_to.is_some() {
                    Some(now)
                } else if target_down {
                    target.breakers.get(at).snapshot().next_probe_at
                } else {
                    jiff::SignedDuration::try_from(wait)
                        .ok()
                        .and_then(|w| now.checked_add(w).ok())
                };
                let left = (!retry.iter().any(|(r, _)| r.is_none())).then_some(retry.len() as u32);
                let e = crate::records::ledger::LedgerError::of(e);
                self.note_pending(
                    target,
                    delivery,
                    source,
                    &tried,
                    &mut noted,
                    Some(e),
                    next,
                    left,
                );
            }
            for (recipient, e) in &retry {
                DeliveryAttempted {
                    update: &delivery.update,
                    channel: target.config.kind.as_str(),
                    target: &target.config.name,
                    provider: &provider.name,
                    recipient: recipient.as_deref(),
                    attempt: delivery.attempt,
                    result: Err((&e.class, &e.reason)),
                    latency,
                    next_retry: wait,
                    failover_to,
                }
                .emit();
            }
            for (recipient, e) in permanent {
                DeliveryAttempted {
                    update: &delivery.update,
                    channel: target.config.kind.as_str(),
                    target: &target.config.name,
                    provider: &provider.name,
                    recipient: recipient.as_deref(),
                    attempt: delivery.attempt,
                    result: Err((&e.class, &e.reason)),
                    latency,
                    next_retry: None,
                    failover_to: None,
                }
                .emit();
                if let Some(sink) = sink.as_deref_mut() {
                    // Handed back to the people target: the next leg may reach
                    // this person, and it reports what is dead (`people.rs`).
                    sink.failed.push((recipient, e));
                    continue;
                }
                if self
                    .dead_letter(target, delivery, source, recipient, e, tried, cancel)
                    .await
                    == Resolution::Abandoned
                {
                    return Resolution::Abandoned;
                }
            }
            let Some(wait) = wait else {
                return Resolution::Resolved;
            };
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed(lane), if target.config.supersede => {}
                    _ = cancel.cancelled() => return Resolution::Abandoned,
                }
            }
            if !target_down {
                delivery.attempt += 1;
                budgets[at].attempts += 1;
            }
            if timed_out {
                // The recipients this attempt did not report are unknown: keep the
                // same restriction and skip those that already ended.
                let mut skip = (*delivery.skip).clone();
                skip.extend(ended);
                delivery.skip = Arc::new(skip);
            } else {
                delivery.recipients = if retry.iter().any(|(r, _)| r.is_none()) {
                    None
                } else {
                    Some(retry.into_iter().filter_map(|(r, _)| r).collect())
                };
            }
        }
    }

    /// Makes one attempt: waits for a concurrency permit, then runs the channel's
    /// `send` until it answers, makes no progress for `attempt_timeout`, or panics.
    /// `None` when the delivery is cancelled first.
    ///
    /// `attempt_timeout` is an idle timeout: every recipient a channel reports as
    /// ended (through `Delivery::progress`) restarts it, so a list of thousands of
    /// recipients paced by a provider's rate limit is not cut short, while a peer
    /// that stops answering is. When it fires, the results reported so far are kept
    /// and only the rest is retried.
    ///
    /// A panic in a channel is a bug, but a deterministic one would come back on
    /// every redelivery: exiting would crash-loop the daemon and stall every target
    /// behind one poisoned update. So it is contained: the delivery ends permanently
    /// failed, dead-lettered with the panic message (code `panic`).
    async fn attempt(
        &self,
        target: &Target,
        channel: &Arc<dyn Channel>,
        delivery: &mut Delivery,
        policy: &RetryPolicy,
        cancel: &CancellationToken,
    ) -> Option<Attempt> {
        use futures::FutureExt as _;
        let _permit = tokio::select! {
            p = target.permits.acquire() => p,
            _ = cancel.cancelled() => return None,
        };
        delivery.progress = Arc::default();
        let delivery = &*delivery;
        let started = Instant::now();
        let send = std::panic::AssertUnwindSafe(channel.send(delivery)).catch_unwind();
        tokio::pin!(send);
        // Check for progress a few times per timeout, so an attempt that moves is
        // never cut, and one that stalls is cut within 1.25 × attempt_timeout.
        let tick = (policy.attempt_timeout / 4).max(Duration::from_millis(1));
        let mut seen = 0;
        let mut last_progress = Instant::now();
        let attempt = loop {
            tokio::select! {
                r = &mut send => {
                    let outcome = r.unwrap_or_else(|panic| {
                        let message = panic_message(&*panic);
                        crate::ops::telemetry::DeliveryPanicked {
                            target: &target.config.name,
                            message: &message,
                        }
                        .emit();
                        let e = DeliveryError::permanent(format!("the channel panicked: {message}"))
                            .with_code("panic");
                        stalled_outcome(delivery, e)
                    });
                    break Attempt { outcome, timed_out: false };
                }
                _ = tokio::time::sleep(tick) => {
                    let n = delivery.progress.len();
                    if n != seen {
                        seen = n;
                        last_progress = Instant::now();
                    } else if last_progress.elapsed() >= policy.attempt_timeout {
                        let e = DeliveryError::retryable(
                            format!(
                                "no answer for {}; {} recipient(s) had ended in this attempt",
                                humantime::format_duration(policy.attempt_timeout),
                                n
                            ),
                            None,
                        )
                        .with_code("timeout");
                        break Attempt { outcome: stalled_outcome(delivery, e), timed_out: true };
                    }
                }
                _ = cancel.cancelled() => return None,
            }
        };
        crate::ops::telemetry::send_duration(
            &target.config.name,
            target.config.kind.as_str(),
            started.elapsed(),
        );
        Some(attempt)
    }
}

/// A delivery writes at most one `pending` record this often while nothing about
/// it changes, so that a long outage writes a few records per delivery, not one
/// per probe.
const PENDING_EVERY: Duration = Duration::from_secs(60);

/// The last `pending` record a delivery wrote: when, what it said (the target
/// down or not, the provider, the error's code), and its error.
#[derive(Default)]
pub(super) struct Noted {
    at: Option<Instant>,
    key: Option<(bool, Option<usize>, Option<String>)>,
    error: Option<crate::records::ledger::LedgerError>,
}

impl Dispatcher {
    /// Writes a `pending` record of `delivery` without waiting for the broker (a
    /// delivery never waits on it, and a lost one only leaves the previous state
    /// showing): when the delivery first fails or waits, whenever the target goes
    /// down or comes back, the provider or the error changes, and otherwise at
    /// most once per [`PENDING_EVERY`]. `error` is the attempt's; without one, the
    /// delivery's last, else the breaker's. `next` is when it is tried again.
    #[allow(clippy::too_many_arguments)]
    fn note_pending(
        &self,
        target: &Target,
        delivery: &Delivery,
        source: &Source,
        tried: &Tried,
        noted: &mut Noted,
        error: Option<crate::records::ledger::LedgerError>,
        next: Option<jiff::Timestamp>,
        recipients_pending: Option<u32>,
    ) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let breaker = target.breakers.snapshot();
        let down = breaker.state != crate::ops::health::BreakerState::Closed;
        let error = error.or_else(|| noted.error.clone()).or_else(|| {
            breaker
                .last_error
                .clone()
                .map(|reason| crate::records::ledger::LedgerError {
                    class: "retryable".to_string(),
                    code: None,
                    reason,
                })
        });
        let key = (
            down,
            tried.provider,
            error
                .as_ref()
                .map(|e| e.code.clone().unwrap_or_else(|| e.class.clone())),
        );
        if noted.key.as_ref() == Some(&key) && noted.at.is_some_and(|t| t.elapsed() < PENDING_EVERY)
        {
            return;
        }
        let mut record = self.ledger_record(
            target,
            delivery,
            source,
            crate::records::ledger::outcome::PENDING,
        );
        record.attempts = tried.count;
        record.first_attempt_at = tried.first_at;
        record.provider = tried.provider.map(|i| target.providers[i].name.to_string());
        record.error = error.clone();
        record.next_attempt_at = next.or(breaker.next_probe_at.filter(|_| down));
        record.breaker = Some(breaker.state.as_str().to_string());
        record.recipients_pending = recipients_pending;
        ledger.enqueue(&record);
        *noted = Noted {
            at: Some(Instant::now()),
            key: Some(key),
            error,
        };
    }
}

/// Resolves when the newest update of the delivery's lane changes (a newer one
/// may supersede it); never without a lane.
async fn changed(lane: Option<&LaneEntry>) {
    match lane {
        Some(l) => l.head.changed.notified().await,
        None => std::future::pending().await,
    }
}

/// How an attempt went for the target as a whole: down when nothing got through
/// and every failure was transient.
fn verdict_of(outcome: &Outcome) -> Verdict {
    let all_transient = !outcome.results.is_empty()
        && outcome
            .results
            .iter()
            .all(|r| r.result.as_ref().is_err_and(DeliveryError::is_retryable));
    if all_transient {
        Verdict::TargetDown
    } else {
        Verdict::TargetUp
    }
}

/// The `reason` label of `clarion_notifications_failed_total`.
pub(super) fn failure_reason(e: &DeliveryError) -> &'static str {
    match e.code.as_deref() {
        Some("template") => return "template",
        Some("panic") => return "panic",
        Some("outage") => return "outage",
        _ => {}
    }
    match e.class {
        clarion_core::ErrorClass::Permanent => "permanent",
        clarion_core::ErrorClass::RecipientGone => "recipient_gone",
        clarion_core::ErrorClass::Retryable { .. } => "retries_exhausted",
    }
}

/// What one attempt gave.
struct Attempt {
    outcome: Outcome,
    /// The attempt was cut by `attempt_timeout`: `outcome` holds only what the
    /// channel reported before, plus one recipient-less error for the rest.
    timed_out: bool,
}

/// The outcome of an attempt that did not finish: what the channel reported as
/// ended, plus `e` for every recipient it did not report. Recipients the channel
/// reported as retryable are dropped: the retry covers them with everyone else.
fn stalled_outcome(delivery: &Delivery, e: DeliveryError) -> Outcome {
    let mut results: Vec<RecipientResult> = delivery
        .progress
        .take()
        .into_iter()
        .filter(|r| !r.result.as_ref().is_err_and(DeliveryError::is_retryable))
        .collect();
    results.push(RecipientResult {
        recipient: None,
        result: Err(e),
    });
    Outcome { results }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// The ceilings of successive backoffs: exponential from `initial_backoff`, doubling,
/// capped at `max_backoff`, without end (the attempt and time limits end it).
pub(super) fn backoff_ceilings(policy: &RetryPolicy) -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(policy.initial_backoff)
        .with_max_delay(policy.max_backoff)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// "Full jitter" (AWS Architecture Blog, "Exponential Backoff and Jitter"): a wait
/// drawn uniformly from zero to the ceiling, which spreads the retries of many
/// deliveries that failed together. backon's own jitter only adds on top of the
/// ceiling, so the draw is done here.
pub(super) fn full_jitter(ceiling: Duration) -> Duration {
    let nanos = ceiling.as_nanos().min(u128::from(u64::MAX)) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..=nanos))
}

pub(super) fn since_kafka_timestamp(source: &Source) -> Duration {
    let now = jiff::Timestamp::now().as_millisecond();
    match source.timestamp_ms {
        Some(ts) if ts > 0 && now >= ts => Duration::from_millis((now - ts) as u64),
        _ => Duration::ZERO,
    }
}
