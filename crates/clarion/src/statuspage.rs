//! The public status page as the daemon keeps it (docs/status-page.md): each
//! incident's public timeline recorded in the page's own compacted topic by the
//! events stream before the update resolves (`record`), the page's state followed
//! from that topic (`store.rs`), the page rendered from that state for each origin
//! when its delivery is tried (`Source`), and the daemon's own listener
//! (`listener.rs`).
//!
//! *Records only what the page shows (`PublicUpdate`: the served audience's
//! wording, times and states), never another audience's text nor anything of the
//! ledger; renders O(open incidents + history), whatever the topic holds; never
//! publishes to an origin itself: origins are targets, each with its own stream.*

mod listener;
mod store;

use crate::config::{KafkaConfig, StatusPageSettings, TargetConfig};
use crate::records::dlq::{Abandoned, DeadLetterWriter, Written};
use anyhow::Result;
use clarion_core::{DeliveryError, IncidentUpdate, SecretResolver};
use clarion_statuspage::{PageConfig, Pages, PublicUpdate, Rendered, Timeline};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::Store;
use tokio_util::sync::CancellationToken;

/// How long an origin's attempt waits for its update to reach the page's state
/// before it fails (and is retried): the events stream records it first.
const REFLECT_WAIT: Duration = Duration::from_secs(10);

/// How many incidents' write slots are remembered (see `StateWriter`'s).
const SLOTS: usize = 100_000;

/// The status page of one running daemon.
pub struct PageSupport {
    page: Arc<PageConfig>,
    topic: String,
    store: Arc<Store>,
    out: DeadLetterWriter,
    max_record_bytes: usize,
    /// One write at a time per incident: the events stream handles records
    /// concurrently, and each write builds on the one before.
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Set once the topic was read to its end at start.
    ready: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for PageSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSupport")
            .field("topic", &self.topic)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl PageSupport {
    /// Starts following the page topic and, with `listen`, the listener.
    pub fn start(
        settings: &StatusPageSettings,
        kafka: &KafkaConfig,
        secrets: &dyn SecretResolver,
        out: DeadLetterWriter,
        max_record_bytes: usize,
        cancel: CancellationToken,
    ) -> Result<Arc<PageSupport>> {
        let store = Store::start(
            kafka,
            secrets,
            &settings.topic,
            settings.page.history,
            cancel.clone(),
        )?;
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let support = Arc::new(PageSupport {
            page: Arc::new(settings.page.clone()),
            topic: settings.topic.clone(),
            store: store.clone(),
            out,
            max_record_bytes,
            slots: Mutex::default(),
            ready,
        });
        let topic = settings.topic.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                match store.sync().await {
                    Ok(()) => {
                        let known = store.with_book(|b| b.known());
                        tracing::info!(
                            topic,
                            incidents = known,
                            took_ms = started.elapsed().as_millis() as u64,
                            "status page topic read to its end; the page is published from here on"
                        );
                        let _ = ready_tx.send(true);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(topic, error = %format!("{e:#}"), "the status page waits for its topic");
                    }
                }
            }
        });
        if let Some(addr) = settings.listen {
            let weak = Arc::downgrade(&support);
            let feed = listener::Feed {
                render: Arc::new(move || match weak.upgrade() {
                    Some(s) => s.render_all().map(|r| r.site).map_err(|e| e.reason),
                    None => Err("the daemon is stopping".into()),
                }),
                ready: support.ready.clone(),
                changes: support.store.changes(),
            };
            listener::start(addr, feed, cancel)?;
        }
        Ok(support)
    }

    /// Hands the page to every `status_page` target of `targets`.
    pub fn attach(self: &Arc<Self>, targets: &[TargetConfig]) {
        for t in targets {
            let channels = std::iter::once(&t.channel).chain(t.backups.iter().map(|b| &b.channel));
            for c in channels {
                if let crate::config::ChannelConfig::StatusPage(c) = c {
                    c.source.attach(self.clone());
                }
            }
        }
    }

    /// Records `update` in its incident's public timeline, when the page shows it,
    /// and returns once the broker acknowledged the record: the events stream's
    /// part, before the update resolves there. `Abandoned` when cancelled first.
    pub async fn record(
        &self,
        update: &IncidentUpdate,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let Some(public) = PublicUpdate::of(update, &self.page.audiences) else {
            return Ok(());
        };
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if slots.len() >= SLOTS && !slots.contains_key(&update.incident_id) {
                slots.clear();
            }
            slots.entry(update.incident_id.clone()).or_default().clone()
        };
        let _turn = tokio::select! {
            g = slot.lock() => g,
            _ = cancel.cancelled() => return Err(Abandoned),
        };
        // What the page holds of this incident, as recent as the topic: a write by
        // another replica (which owned this partition before) is built on, not lost.
        let previous = loop {
            match self.previous(&update.incident_id).await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(
                        topic = %self.topic,
                        incident_id = %update.incident_id,
                        error = %format!("{e:#}"),
                        "cannot read the status page's state; retrying"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = cancel.cancelled() => return Err(Abandoned),
                    }
                }
            }
        };
        let mut timeline = match previous {
            Some(t) if t.updates.contains(&public) => return Ok(()),
            Some(mut t) => {
                t.merge(public);
                t
            }
            None => Timeline::new(&update.incident_id, public),
        };
        timeline.bound(self.max_record_bytes);
        let headers = [(
            "clarion.status_page.schema_version".to_string(),
            clarion_statuspage::TIMELINE_VERSION
                .to_string()
                .into_bytes(),
        )];
        let bytes = timeline.to_bytes();
        let written = self
            .out
            .write_acknowledged(
                &self.topic,
                update.incident_id.as_bytes(),
                &bytes,
                &headers,
                cancel,
                "status_page",
            )
            .await?;
        if written == Written::GivenUp {
            tracing::error!(
                topic = %self.topic,
                incident_id = %update.incident_id,
                bytes = bytes.len(),
                "status page record refused by the topic; the page does not show this update (raise the topic's max.message.bytes)"
            );
            return Ok(());
        }
        crate::ops::telemetry::StatusPageRecorded {
            incident_id: &update.incident_id,
            update_id: &update.update_id,
            updates: timeline.updates.len(),
            bytes: bytes.len(),
        }
        .emit();
        self.store.apply(timeline);
        Ok(())
    }

    /// The incident's timeline as the page holds it, once the store has read the
    /// topic to its end; `None` for an incident the page never showed.
    async fn previous(&self, incident_id: &str) -> Result<Option<Timeline>> {
        self.store.sync().await?;
        let (shown, at) = self.store.with_book(|b| {
            (
                b.get(incident_id).map(|t| (**t).clone()),
                b.entry(incident_id).and_then(|e| e.at),
            )
        });
        match (shown, at) {
            (Some(t), _) => Ok(Some(t)),
            (None, Some(at)) => Ok(Some(self.store.read_at(at).await?)),
            (None, None) => Ok(None),
        }
    }

    /// Renders the whole site as of now (the listener's copy).
    fn render_all(&self) -> Result<Rendered, DeliveryError> {
        let (version, shown) = self.store.snapshot();
        let started = Instant::now();
        let site =
            clarion_statuspage::render(&self.page, &shown, jiff::Timestamp::now(), &Pages::All)
                .map_err(|e| DeliveryError::permanent(e.to_string()).with_code("render"))?;
        crate::ops::telemetry::StatusPageRendered {
            files: site.files.len(),
            took: started.elapsed(),
        }
        .emit();
        Ok(Rendered { version, site })
    }
}

#[async_trait::async_trait]
impl clarion_statuspage::Source for PageSupport {
    async fn render(
        &self,
        update: &IncidentUpdate,
        pages: &Pages,
    ) -> Result<Rendered, DeliveryError> {
        let deadline = tokio::time::Instant::now() + REFLECT_WAIT;
        let mut ready = self.ready.clone();
        let mut changes = self.store.changes();
        loop {
            let reflected = *ready.borrow()
                && self.store.with_book(|b| {
                    b.reflects(&update.incident_id, &update.update_id, update.sequence)
                });
            if reflected {
                break;
            }
            tokio::select! {
                _ = ready.changed() => {}
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(DeliveryError::retryable(
                        format!(
                            "update `{}` of incident `{}` is not in the status page's state yet (it is recorded on `{}` by the events stream first)",
                            update.update_id, update.incident_id, self.topic
                        ),
                        None,
                    )
                    .with_code("not_recorded"));
                }
            }
        }
        let (version, shown) = self.store.snapshot();
        let page = self.page.clone();
        let pages = pages.clone();
        let started = Instant::now();
        // Rendering a page of history is milliseconds, but off the runtime all the same.
        let site = tokio::task::spawn_blocking(move || {
            clarion_statuspage::render(&page, &shown, jiff::Timestamp::now(), &pages)
        })
        .await
        .map_err(|e| DeliveryError::permanent(format!("rendering the page failed: {e}")))?
        .map_err(|e| DeliveryError::permanent(e.to_string()).with_code("render"))?;
        crate::ops::telemetry::StatusPageRendered {
            files: site.files.len(),
            took: started.elapsed(),
        }
        .emit();
        Ok(Rendered { version, site })
    }

    async fn moved_since(&self, version: u64) -> Result<bool, DeliveryError> {
        self.store
            .sync()
            .await
            .map_err(|e| DeliveryError::retryable(format!("{e:#}"), None))?;
        Ok(self.store.version() > version)
    }
}
