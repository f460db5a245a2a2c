//! The confirmation state as this process keeps it: every partition of
//! `confirm.topic` followed from its beginning into one [`View`], and the writes
//! (acknowledged, to the case's partition) that add to it. Each write is applied
//! to the view at once as well, so that whoever wrote it reads it back before the
//! follower does (applying it twice changes nothing).

use super::records::{Item, partition_of};
use super::state::View;
use super::ways::Minter;
use crate::config::{ConfirmSettings, KafkaConfig};
use crate::records::dlq::{Abandoned, DeadLetterWriter};
use anyhow::{Context, Result, anyhow, bail};
use clarion_confirm::{CaseId, Keys};
use clarion_core::SecretResolver;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// What a dispatcher needs to ask for confirmations.
#[derive(Debug)]
pub struct ConfirmHook {
    pub store: Arc<ConfirmStore>,
    pub confirmations: Arc<crate::config::Confirmations>,
    /// Where each recipient asked is recorded (`kafka.ledger_topic`).
    pub ledger: Option<crate::records::confirmations::ConfirmationLedger>,
}

/// The confirmation state, shared by the target streams, the listener and the
/// escalation engine of one process.
pub struct ConfirmStore {
    pub minter: Arc<Minter>,
    pub topic: String,
    pub partitions: i32,
    view: RwLock<View>,
    /// Per partition, the next offset the follower will read.
    positions: Mutex<HashMap<i32, i64>>,
    ready: watch::Receiver<bool>,
    out: DeadLetterWriter,
    /// Poked whenever the view changes: the engine looks again.
    pub changed: Notify,
}

impl std::fmt::Debug for ConfirmStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmStore")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .field("cases", &self.read(|v| v.len()))
            .finish()
    }
}

impl ConfirmStore {
    /// Reads the topic's partitions and starts following it on a thread of its
    /// own until `cancel`.
    pub fn start(
        settings: &ConfirmSettings,
        kafka: &KafkaConfig,
        secrets: &dyn SecretResolver,
        out: DeadLetterWriter,
        cancel: CancellationToken,
    ) -> Result<Arc<ConfirmStore>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let Some(secret) = &settings.secret else {
            bail!("confirm.secret: not resolved");
        };
        let keys =
            Keys::new(secret.expose().as_bytes()).map_err(|e| anyhow!("confirm.secret: {e}"))?;
        let consumer: BaseConsumer<FollowCtx> = crate::kafka::reader_config(
            kafka,
            secrets,
            &format!("{}.confirm-follow", kafka.group_id),
        )?
        .set("enable.partition.eof", "true")
        .create_with_context(FollowCtx)
        .context("cannot create a Kafka consumer")?;
        let md = consumer
            .fetch_metadata(Some(&settings.topic), Duration::from_secs(30))
            .with_context(|| format!("cannot read the metadata of `{}`", settings.topic))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .find(|t| t.name() == settings.topic && t.error().is_none())
            .map(|t| t.partitions().iter().map(|p| p.id()).collect())
            .unwrap_or_default();
        if partitions.is_empty() {
            bail!(
                "confirm.topic: `{}` not found on the brokers (create it compacted)",
                settings.topic
            );
        }
        let (ready_tx, ready) = watch::channel(false);
        let store = Arc::new(ConfirmStore {
            minter: Arc::new(Minter::new(keys.clone(), &settings.public_url)),
            topic: settings.topic.clone(),
            partitions: partitions.len() as i32,
            view: RwLock::new(View::new(keys)),
            positions: Mutex::default(),
            ready,
            out,
            changed: Notify::new(),
        });
        let weak = Arc::downgrade(&store);
        let topic = settings.topic.clone();
        std::thread::Builder::new()
            .name("confirm-follow".into())
            .spawn(move || follow(consumer, &topic, &partitions, weak, ready_tx, cancel))
            .context("cannot start a thread")?;
        Ok(store)
    }

    /// Reads the view.
    pub fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        f(&self.view.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn apply(&self, partition: i32, key: &str, value: Option<&[u8]>) {
        let r = self
            .view
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(partition, key, value);
        if let Err(e) = r {
            tracing::warn!(topic = %self.topic, key, error = %e, "confirmation record not one this daemon reads; ignored");
        }
        self.changed.notify_waiters();
    }

    /// True once every partition was read to the end it had at start.
    pub async fn ready(&self, cancel: &CancellationToken) -> bool {
        let mut ready = self.ready.clone();
        tokio::select! {
            r = ready.wait_for(|r| *r) => r.is_ok(),
            _ = cancel.cancelled() => false,
        }
    }

    /// The next offset the follower will read in `partition`.
    pub fn position(&self, partition: i32) -> i64 {
        self.positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .copied()
            .unwrap_or(0)
    }

    /// The partition of `case`.
    pub fn partition(&self, case: &CaseId) -> i32 {
        partition_of(case, self.partitions)
    }

    /// Writes one item of a case and returns once the broker acknowledged it.
    pub async fn write<T: serde::Serialize>(
        &self,
        case: &CaseId,
        item: Item,
        value: &T,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let key = super::records::key(case, &item);
        // Serializing a struct of strings, numbers and timestamps cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let partition = self.partition(case);
        self.out
            .write_acknowledged_at(
                &self.topic,
                Some(partition),
                key.as_bytes(),
                &bytes,
                &[],
                cancel,
                "confirmation",
            )
            .await?;
        self.apply(partition, &key, Some(&bytes));
        Ok(())
    }

    /// Removes one item of a case (a tombstone), acknowledged.
    pub async fn remove(
        &self,
        case: &CaseId,
        item: Item,
        cancel: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let key = super::records::key(case, &item);
        let partition = self.partition(case);
        self.out
            .write_tombstone_at(
                &self.topic,
                partition,
                key.as_bytes(),
                cancel,
                "confirmation",
            )
            .await?;
        self.apply(partition, &key, None);
        Ok(())
    }
}

/// The follower's client context: the end of a partition, which it asks to be
/// told of, is no error; the rest go where every client's go (`ops::health`).
struct FollowCtx;

impl rdkafka::ClientContext for FollowCtx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        rdkafka::ClientContext::log(&crate::ops::health::AdminCtx, level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if !matches!(error, rdkafka::error::KafkaError::PartitionEOF(_)) {
            rdkafka::ClientContext::error(&crate::ops::health::AdminCtx, error, reason);
        }
    }
}

impl rdkafka::consumer::ConsumerContext for FollowCtx {}

/// Follows every partition from its beginning, applying each record to the view.
fn follow(
    consumer: rdkafka::consumer::BaseConsumer<FollowCtx>,
    topic: &str,
    partitions: &[i32],
    store: std::sync::Weak<ConfirmStore>,
    ready: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    use rdkafka::consumer::Consumer;
    use rdkafka::error::KafkaError;
    use rdkafka::message::Message;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Beginning);
    }
    if let Err(e) = consumer.assign(&tpl) {
        tracing::error!(topic, error = %e, "cannot read the confirmation topic; confirmations are not followed");
        return;
    }
    let mut behind: HashSet<i32> = partitions.iter().copied().collect();
    let mut records: u64 = 0;
    while !cancel.is_cancelled() {
        let Some(s) = store.upgrade() else { return };
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                records += 1;
                match m.key().map(std::str::from_utf8) {
                    Some(Ok(key)) => s.apply(m.partition(), key, m.payload()),
                    _ => tracing::warn!(
                        topic,
                        partition = m.partition(),
                        offset = m.offset(),
                        "confirmation record without a UTF-8 key ignored"
                    ),
                }
                s.positions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(m.partition(), m.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Ok((_, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5)) {
                    let mut pos = s.positions.lock().unwrap_or_else(|e| e.into_inner());
                    let at = pos.entry(p).or_insert(0);
                    *at = (*at).max(high);
                }
                if behind.remove(&p) && behind.is_empty() {
                    tracing::info!(
                        topic,
                        records,
                        cases = s.read(|v| v.len()),
                        "confirmation topic read to its end"
                    );
                    let _ = ready.send(true);
                }
            }
            Some(Err(e)) => tracing::warn!(topic, error = %e, "reading the confirmation topic"),
        }
    }
}
