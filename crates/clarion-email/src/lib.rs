//! Clarion's email channel: incident updates as multipart text + HTML mail through an
//! SMTP relay (STARTTLS or implicit TLS, AUTH PLAIN/LOGIN), over a bounded pool of
//! sessions that is reused across deliveries.
//!
//! Every recipient gets a result of its own: a refused `RCPT TO` fails that recipient
//! only, so the daemon can retry exactly the ones that failed (`Delivery::recipients`)
//! without mailing the others twice. Every message carries a `Message-ID` derived from
//! the idempotency key, so a redelivery is recognisable as one.
//!
//! A delivery may carry its own addresses (`Delivery::direct`, a directory's members)
//! instead of the configured ones; each is parsed as a configured one is, and a
//! malformed one fails alone, for good.
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
use std::borrow::Cow;
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

/// One recipient of an attempt and the audience whose text it gets. Configured
/// recipients are borrowed from the settings; those handed over with the delivery
/// (`Delivery::direct`) are parsed for this attempt alone.
type Chosen<'a> = (&'a str, Cow<'a, Recipient>);

/// [`Delivery::wants`] for addresses: `Delivery::wants` compares exactly and searches
/// a list, but addresses compare without regard to case (see `Recipient::key`), and a
/// delivery can name a thousand of them, so both tests are made on lower-cased sets.
struct Filter {
    /// A retry's subset, lower-cased; `None` on a first try.
    only: Option<HashSet<String>>,
    /// The recipients that ended in an earlier attempt, lower-cased.
    skipped: HashSet<String>,
}

impl Filter {
    fn new(delivery: &Delivery) -> Self {
        Filter {
            only: delivery
                .recipients
                .as_ref()
                .map(|list| list.iter().map(|w| w.to_lowercase()).collect()),
            skipped: delivery.skip.iter().map(|s| s.to_lowercase()).collect(),
        }
    }

    /// Whether to try the recipient whose lower-cased address is `key`.
    fn wants(&self, key: &str) -> bool {
        !self.skipped.contains(key) && self.only.as_ref().is_none_or(|o| o.contains(key))
    }

    /// The same for a recipient known by two lower-cased names (its address as
    /// written and its bare address, often the same): skipped if either is, wanted
    /// if either is.
    fn wants_either(&self, a: &str, b: &str) -> bool {
        !self.skipped.contains(a)
            && !self.skipped.contains(b)
            && self
                .only
                .as_ref()
                .is_none_or(|o| o.contains(a) || o.contains(b))
    }
}

impl EmailChannel {
    /// The recipients of this attempt, each with the audience whose text it gets;
    /// plus a result, already recorded, for every requested recipient that cannot be
    /// mailed (no longer configured, or a malformed direct address).
    fn select<'a>(&'a self, delivery: &'a Delivery) -> (Vec<Chosen<'a>>, Vec<RecipientResult>) {
        let filter = Filter::new(delivery);
        match &delivery.direct {
            Some(direct) => self.select_direct(delivery, direct, &filter),
            None => self.select_configured(delivery, &filter),
        }
    }

    /// The configured recipients of the delivery's audiences, once each, in audience
    /// order, each with the first of the delivery's audiences that lists it.
    fn select_configured<'a>(
        &'a self,
        delivery: &Delivery,
        filter: &Filter,
    ) -> (Vec<Chosen<'a>>, Vec<RecipientResult>) {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut chosen: Vec<Chosen<'a>> = Vec::new();
        for audience in delivery.audiences.iter() {
            let Some((name, list)) = self.settings.recipients.get_key_value(audience.as_str())
            else {
                continue;
            };
            for r in list {
                if filter.wants(r.key()) && seen.insert(r.key()) {
                    chosen.push((name.as_str(), Cow::Borrowed(r)));
                }
            }
        }
        let mut gone = Vec::new();
        for w in delivery.recipients.iter().flatten() {
            let key = w.to_lowercase();
            // A skipped recipient already ended in an earlier attempt: no result.
            if !seen.contains(key.as_str()) && !filter.skipped.contains(&key) {
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

    /// The addresses handed over with the delivery, instead of the configured ones:
    /// once each (compared without regard to case), in the given order, all with the
    /// text of the delivery's first audience. Each is parsed as a configured recipient
    /// is; a malformed one fails alone, for good. A retry's subset naming an address
    /// the delivery does not carry gets no result: the daemon, not the config, says
    /// who a directory batch holds.
    fn select_direct<'a>(
        &self,
        delivery: &'a Delivery,
        direct: &'a [String],
        filter: &Filter,
    ) -> (Vec<Chosen<'a>>, Vec<RecipientResult>) {
        let audience = delivery.direct_audience();
        let mut seen: HashSet<String> = HashSet::with_capacity(direct.len());
        let mut chosen: Vec<Chosen<'a>> = Vec::with_capacity(direct.len());
        let mut refused = Vec::new();
        for address in direct.iter() {
            let parsed = config::parse_address(address);
            // The mailbox's address when it parses (a display name does not make a
            // second recipient), else the text itself.
            let key = match &parsed {
                Ok(mailbox) => mailbox.email.to_string().to_lowercase(),
                Err(_) => address.to_lowercase(),
            };
            // A retry or a skip may name it as given or by its bare address (they
            // differ when it has a display name).
            if !filter.wants_either(&key, &address.to_lowercase()) || !seen.insert(key) {
                continue;
            }
            let refuse = |why: String| {
                delivery.finish(RecipientResult {
                    recipient: Some(address.clone()),
                    result: Err(DeliveryError::permanent(format!(
                        "email target `{}`: {why}",
                        self.target
                    ))),
                })
            };
            match (parsed, audience) {
                (Ok(mailbox), Some(audience)) => {
                    chosen.push((audience, Cow::Owned(Recipient::direct(address, mailbox))))
                }
                (Err(e), _) => {
                    refused.push(refuse(format!("`{address}` is not an email address: {e}")))
                }
                (Ok(_), None) => refused.push(refuse(
                    "the delivery serves no audience whose text a directory member could get"
                        .to_string(),
                )),
            }
        }
        (chosen, refused)
    }

    /// The text of each audience in the selection, once per attempt: the rendered
    /// templates when the daemon supplied them, else the built-in wording.
    fn contents<'a>(delivery: &Delivery, chosen: &[Chosen<'a>]) -> Contents<'a> {
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
        chosen: &[Chosen<'_>],
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
        chosen: &[Chosen<'_>],
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
        // Everyone already ended in an earlier attempt, or a directory batch has
        // nobody this attempt wants: nothing left to do.
        if chosen.is_empty()
            && results.is_empty()
            && (!delivery.skip.is_empty() || delivery.direct.is_some())
        {
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
                        .filter_map(|&i| chosen.get(i).map(|c| c.1.as_ref()))
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
