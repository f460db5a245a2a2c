//! Clarion's email channel: incident updates as multipart text + HTML mail through an
//! SMTP relay (STARTTLS or implicit TLS, AUTH PLAIN/LOGIN), over a bounded pool of
//! sessions that is reused across deliveries.
//!
//! Every recipient gets a result of its own: a refused `RCPT TO` fails that recipient
//! only, so the daemon can retry exactly the ones that failed (`Delivery::recipients`)
//! without mailing the others twice. Every message carries a `Message-ID` derived from
//! the idempotency key, so a redelivery is recognisable as one.
//!
//! This crate must never retry a delivery on its own (the daemon's policy decides),
//! never panic on a server's reply, and never print a credential.

mod compose;
mod config;
mod smtp;

pub use compose::{Content, compose};
pub use config::{AuthMechanism, ConfigError, EmailConfig, SendMode, TlsMode};

use clarion_core::{Channel, Delivery, DeliveryError, Outcome, RecipientResult, SecretResolver};
use compose::Addressing;
use config::{Recipient, Settings};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// A configured email target. Cheap to share: one per target, used by every delivery
/// to it, so its pooled SMTP sessions are reused.
#[derive(Debug)]
pub struct EmailChannel {
    target: Arc<str>,
    settings: Arc<Settings>,
    pool: Arc<smtp::Pool>,
}

/// Validates `config` and builds the channel for target `target_name`. Resolves the
/// password and reads `tls_ca_file`; opens no connection (the first delivery or
/// [`Channel::healthcheck`] does).
pub fn build(
    target_name: &str,
    config: &EmailConfig,
    secrets: &dyn SecretResolver,
) -> Result<EmailChannel, ConfigError> {
    let settings = config.validate(target_name, secrets)?;
    let target: Arc<str> = Arc::from(target_name);
    let pool = smtp::Pool::new(
        Arc::clone(&target),
        settings.connect.clone(),
        settings.pool_max_size,
        settings.pool_idle_timeout,
    );
    Ok(EmailChannel {
        target,
        settings: Arc::new(settings),
        pool: Arc::new(pool),
    })
}

/// One SMTP transaction to run: its recipients (indexes into the selection) and, for
/// a Bcc batch, the message all of them share. A per-recipient message is rendered
/// only when its transaction runs, so a long recipient list is never held rendered
/// in memory all at once.
struct Job {
    recipients: Vec<usize>,
    shared: Option<Arc<Result<String, String>>>,
}

type Contents<'a> = BTreeMap<&'a str, Content>;

impl EmailChannel {
    /// The recipients of this attempt, in audience order, each with the first of the
    /// delivery's audiences that lists it; plus a result for every requested recipient
    /// the config no longer has.
    fn select<'a>(
        &'a self,
        delivery: &Delivery,
    ) -> (Vec<(&'a str, &'a Recipient)>, Vec<RecipientResult>) {
        // `Delivery::wants` compares exactly; addresses compare without regard to
        // case (see `Recipient::key`), so a requested or skipped address written
        // differently must still match. The first test is `wants` itself, the
        // lower-cased sets only catch the spellings it would miss.
        let wanted: Option<HashSet<String>> = delivery
            .recipients
            .as_ref()
            .map(|list| list.iter().map(|w| w.to_lowercase()).collect());
        let skipped: HashSet<String> = delivery.skip.iter().map(|s| s.to_lowercase()).collect();
        let wants = |r: &Recipient| {
            !skipped.contains(r.key())
                && (delivery.wants(r.id()) || wanted.as_ref().is_none_or(|w| w.contains(r.key())))
        };
        let mut seen: HashSet<&str> = HashSet::new();
        let mut chosen: Vec<(&str, &Recipient)> = Vec::new();
        for audience in delivery.audiences.iter() {
            let Some((name, list)) = self.settings.recipients.get_key_value(audience.as_str())
            else {
                continue;
            };
            for r in list {
                if wants(r) && seen.insert(r.key()) {
                    chosen.push((name.as_str(), r));
                }
            }
        }
        let mut gone = Vec::new();
        for w in delivery.recipients.iter().flatten() {
            let key = w.to_lowercase();
            // A skipped recipient already ended in an earlier attempt: no result.
            if !seen.contains(key.as_str()) && !skipped.contains(&key) {
                gone.push(delivery.finish(RecipientResult {
                    recipient: Some(w.clone()),
                    result: Err(DeliveryError::permanent(format!(
                        "email target `{}`: `{w}` is no longer a recipient of audiences {:?}",
                        self.target, delivery.audiences
                    ))),
                }));
            }
        }
        (chosen, gone)
    }

    /// The text of each audience in the selection, once per attempt: the rendered
    /// templates when the daemon supplied them, else the built-in wording.
    fn contents<'a>(delivery: &Delivery, chosen: &[(&'a str, &Recipient)]) -> Contents<'a> {
        let mut content = Contents::new();
        for (audience, _) in chosen {
            content.entry(*audience).or_insert_with(|| {
                let rendered = (
                    delivery.part(audience, "subject"),
                    delivery.part(audience, "text"),
                    delivery.part(audience, "html"),
                );
                match rendered {
                    (Some(subject), Some(text), Some(html)) => Content {
                        // A subject is one line, whatever the template produced.
                        subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
                        text: text.to_string(),
                        html: html.to_string(),
                    },
                    _ => compose(&delivery.update, audience),
                }
            });
        }
        content
    }

    fn render(
        &self,
        delivery: &Delivery,
        contents: &Contents<'_>,
        audience: &str,
        to: Addressing<'_>,
    ) -> Result<String, String> {
        match contents.get(audience) {
            Some(c) => compose::render(
                &self.settings,
                &delivery.update,
                audience,
                &delivery.key,
                c,
                to,
            ),
            None => Err(format!("no content composed for audience `{audience}`")),
        }
    }

    /// Splits the selection into transactions; renders the Bcc batches' messages.
    fn plan(
        &self,
        delivery: &Delivery,
        chosen: &[(&str, &Recipient)],
        contents: &Contents<'_>,
    ) -> Vec<Job> {
        match self.settings.send_mode {
            SendMode::PerRecipient => (0..chosen.len())
                .map(|i| Job {
                    recipients: vec![i],
                    shared: None,
                })
                .collect(),
            SendMode::Bcc => {
                // Group by audience (each gets its own text), then batch.
                let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
                for (i, (audience, _)) in chosen.iter().enumerate() {
                    match groups.iter_mut().find(|(a, _)| a == audience) {
                        Some((_, members)) => members.push(i),
                        None => groups.push((audience, vec![i])),
                    }
                }
                let mut jobs = Vec::new();
                for (audience, members) in groups {
                    let message = Arc::new(self.render(
                        delivery,
                        contents,
                        audience,
                        Addressing::Undisclosed,
                    ));
                    for batch in members.chunks(self.settings.bcc_batch_size) {
                        jobs.push(Job {
                            recipients: batch.to_vec(),
                            shared: Some(Arc::clone(&message)),
                        });
                    }
                }
                jobs
            }
        }
    }

    /// The message of one transaction.
    fn message(
        &self,
        delivery: &Delivery,
        chosen: &[(&str, &Recipient)],
        contents: &Contents<'_>,
        job: &Job,
    ) -> Arc<Result<String, String>> {
        if let Some(shared) = &job.shared {
            return Arc::clone(shared);
        }
        let rendered = match job.recipients.first().and_then(|&i| chosen.get(i)) {
            Some((audience, r)) => self.render(delivery, contents, audience, Addressing::To(r)),
            None => Err("a transaction without recipients".to_string()),
        };
        Arc::new(rendered)
    }
}

#[async_trait::async_trait]
impl Channel for EmailChannel {
    async fn send(&self, delivery: &Delivery) -> Outcome {
        let (chosen, mut results) = self.select(delivery);
        // Everyone already ended in an earlier attempt: nothing left to do.
        if chosen.is_empty() && results.is_empty() && !delivery.skip.is_empty() {
            return Outcome {
                results: Vec::new(),
            };
        }
        if chosen.is_empty() && results.is_empty() {
            return Outcome::single(Err(DeliveryError::permanent(format!(
                "email target `{}` has no recipients for audiences {:?}",
                self.target, delivery.audiences
            ))));
        }
        let contents = Self::contents(delivery, &chosen);
        let jobs = self.plan(delivery, &chosen, &contents);
        let from = &self.settings.from.email;
        // Transactions run side by side, as many as the pool has sessions; `buffered`
        // keeps the results in recipient order.
        let done: Vec<Vec<RecipientResult>> = stream::iter(jobs)
            .map(|job| {
                let chosen = &chosen;
                let contents = &contents;
                async move {
                    let recipients: Vec<&Recipient> = job
                        .recipients
                        .iter()
                        .filter_map(|&i| chosen.get(i).map(|c| c.1))
                        .collect();
                    let message = self.message(delivery, chosen, contents, &job);
                    let outcome = match message.as_ref() {
                        Ok(text) => self.pool.transact(from, &recipients, text).await,
                        Err(e) => {
                            let err = DeliveryError::permanent(format!(
                                "email target `{}`: cannot build the message: {e}",
                                self.target
                            ));
                            recipients.iter().map(|_| Err(err.clone())).collect()
                        }
                    };
                    // Recorded the moment the transaction ends (for a Bcc batch:
                    // all its recipients at once), not when the whole attempt does,
                    // so an attempt cut short by the daemon's timeout keeps them.
                    job.recipients
                        .into_iter()
                        .zip(outcome)
                        .filter_map(|(i, result)| {
                            chosen.get(i).map(|(_, r)| {
                                delivery.finish(RecipientResult {
                                    recipient: Some(r.id().to_string()),
                                    result,
                                })
                            })
                        })
                        .collect::<Vec<_>>()
                }
            })
            .buffered(self.settings.pool_max_size)
            .collect()
            .await;
        results.extend(done.into_iter().flatten());
        tracing::debug!(
            target_name = %self.target,
            recipients = results.len(),
            failed = results.iter().filter(|r| r.result.is_err()).count(),
            "email attempt finished"
        );
        Outcome { results }
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        self.pool.healthcheck().await
    }
}

#[cfg(test)]
mod tests;
