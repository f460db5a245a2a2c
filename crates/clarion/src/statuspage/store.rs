//! The page's state in this process: a `Book` of the shown incidents, filled by
//! following the page topic on a thread of its own (from its beginning, every
//! partition, no consumer group), and by the records this process writes.
//!
//! Following the topic rather than the updates a stream consumes is what makes
//! several replicas agree: each replica's streams see only their partitions of
//! the source topic, while every replica's store sees every incident.

use crate::config::KafkaConfig;
use anyhow::{Context as _, Result, anyhow};
use clarion_core::SecretResolver;
use clarion_statuspage::{Book, Location, Timeline};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a catch-up to the topic's end may take before it is reported.
pub(super) const SYNC_WAIT: Duration = Duration::from_secs(30);

pub(crate) struct Store {
    topic: String,
    book: Mutex<Book>,
    /// Grows when what the page shows changes.
    version: watch::Sender<u64>,
    /// The next offset to read, per partition, as the follower has read it; ticks
    /// whenever it moves.
    read: Mutex<HashMap<i32, i64>>,
    moved: watch::Sender<u64>,
    /// For the topic's ends.
    meta: Arc<BaseConsumer>,
    /// For reading one record back, assigned afresh each time.
    reader: Arc<Mutex<BaseConsumer>>,
    /// The partitions, once the follower found them.
    partitions: watch::Sender<Option<Vec<i32>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("topic", &self.topic)
            .field("version", &*self.version.borrow())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Starts following `topic`; the store is usable at once and fills as the
    /// topic is read ([`Store::sync`] waits for it).
    pub(crate) fn start(
        kafka: &KafkaConfig,
        secrets: &dyn SecretResolver,
        topic: &str,
        history: usize,
        cancel: CancellationToken,
    ) -> Result<Arc<Store>> {
        let group = format!("{}.status-page", kafka.group_id);
        let consumer: BaseConsumer = crate::kafka::reader_config(kafka, secrets, &group)?
            .create()
            .context("cannot create a Kafka consumer for the status page topic")?;
        let meta: BaseConsumer = crate::kafka::reader_config(kafka, secrets, &group)?
            .create()
            .context("cannot create a Kafka consumer for the status page topic")?;
        let reader: BaseConsumer = crate::kafka::reader_config(kafka, secrets, &group)?
            .create()
            .context("cannot create a Kafka consumer for the status page topic")?;
        let store = Arc::new(Store {
            topic: topic.to_string(),
            book: Mutex::new(Book::new(history)),
            version: watch::channel(0).0,
            read: Mutex::default(),
            moved: watch::channel(0).0,
            meta: Arc::new(meta),
            reader: Arc::new(Mutex::new(reader)),
            partitions: watch::channel(None).0,
        });
        let follower = store.clone();
        std::thread::Builder::new()
            .name("status-page".into())
            .spawn(move || follower.follow(consumer, cancel))
            .context("cannot start a thread")?;
        Ok(store)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The follower: reads every partition from its beginning, for as long as
    /// the daemon runs.
    fn follow(&self, consumer: BaseConsumer, cancel: CancellationToken) {
        let topic = &self.topic;
        let partitions = loop {
            if cancel.is_cancelled() {
                return;
            }
            match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                        break t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
                    }
                    _ => tracing::warn!(
                        topic,
                        "the status page topic is not on the brokers; the page waits for it (create it compacted)"
                    ),
                },
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cannot read the status page topic's metadata; retrying")
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        };
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            let _ = tpl.add_partition_offset(topic, *p, Offset::Beginning);
        }
        if let Err(e) = consumer.assign(&tpl) {
            tracing::error!(topic, error = %e, "cannot read the status page topic; the page is not published");
            return;
        }
        self.partitions.send_replace(Some(partitions));
        while !cancel.is_cancelled() {
            let mut changed = false;
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(m)) => {
                    let at = Location {
                        partition: m.partition(),
                        offset: m.offset(),
                    };
                    match m.payload().map(Timeline::from_slice) {
                        Some(Ok(t)) => changed = self.book().apply(t, Some(at)),
                        Some(Err(e)) => tracing::warn!(
                            topic,
                            partition = at.partition,
                            offset = at.offset,
                            error = %e,
                            "status page record that is not a timeline ignored"
                        ),
                        None => {}
                    }
                    self.read_to(at.partition, at.offset + 1);
                }
                Some(Err(e)) => tracing::warn!(topic, error = %e, "reading the status page topic"),
            }
            // Where the consumer stands, past gaps a compacted topic has.
            if let Ok(positions) = consumer.position() {
                for e in positions.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        self.read_to(e.partition(), o);
                    }
                }
            }
            if changed {
                self.version.send_modify(|v| *v += 1);
            }
        }
    }

    fn read_to(&self, partition: i32, next: i64) {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let at = read.entry(partition).or_insert(0);
        if next > *at {
            *at = next;
            drop(read);
            self.moved.send_modify(|v| *v += 1);
        }
    }

    /// Waits until the store has read everything the topic held when it was
    /// called: what another replica wrote before is then in the book.
    pub(crate) async fn sync(&self) -> Result<()> {
        let mut partitions = self.partitions.subscribe();
        let parts = tokio::time::timeout(SYNC_WAIT, partitions.wait_for(|p| p.is_some()))
            .await
            .map_err(|_| anyhow!("the status page topic `{}` was not found", self.topic))?
            .map_err(|_| anyhow!("the status page follower stopped"))?
            .clone()
            .unwrap_or_default();
        let ends = self.ends(&parts).await?;
        let mut moved = self.moved.subscribe();
        let deadline = tokio::time::Instant::now() + SYNC_WAIT;
        loop {
            let behind = {
                let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
                ends.iter()
                    .any(|(p, end)| read.get(p).copied().unwrap_or(0) < *end)
            };
            if !behind {
                return Ok(());
            }
            tokio::select! {
                r = moved.changed() => r.map_err(|_| anyhow!("the status page follower stopped"))?,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(anyhow!(
                        "the status page topic `{}` was not read to its end within {}s",
                        self.topic,
                        SYNC_WAIT.as_secs()
                    ));
                }
            }
        }
    }

    /// The end (high watermark) of each partition now.
    async fn ends(&self, partitions: &[i32]) -> Result<Vec<(i32, i64)>> {
        let meta = self.meta.clone();
        let topic = self.topic.clone();
        let partitions = partitions.to_vec();
        // A metadata round trip per partition; the page topic has few.
        tokio::task::spawn_blocking(move || {
            partitions
                .iter()
                .map(|p| {
                    meta.fetch_watermarks(&topic, *p, Duration::from_secs(10))
                        .map(|(_, hi)| (*p, hi))
                        .with_context(|| format!("cannot read the end of `{topic}` [{p}]"))
                })
                .collect()
        })
        .await?
    }

    /// Reads back the record at `at`: the timeline of an incident no longer shown.
    pub(crate) async fn read_at(&self, at: Location) -> Result<Timeline> {
        let reader = self.reader.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let consumer = reader.lock().unwrap_or_else(|e| e.into_inner());
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, at.partition, Offset::Offset(at.offset))?;
            consumer.assign(&tpl)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) if m.offset() >= at.offset => {
                        return m
                            .payload()
                            .map(Timeline::from_slice)
                            .unwrap_or_else(|| Err("a record without a value".into()))
                            .map_err(|e| {
                                anyhow!("record {}/{} of `{topic}`: {e}", at.partition, at.offset)
                            });
                    }
                    Some(Err(e)) => return Err(e.into()),
                    _ => {}
                }
            }
            Err(anyhow!(
                "record {}/{} of `{topic}` was not read within 10 s",
                at.partition,
                at.offset
            ))
        })
        .await?
    }

    /// Takes in a timeline this process wrote (acknowledged).
    pub(crate) fn apply(&self, timeline: Timeline) {
        if self.book().apply(timeline, None) {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// What the page shows, and the version it is.
    pub(crate) fn snapshot(&self) -> (u64, Vec<Arc<Timeline>>) {
        let book = self.book();
        (*self.version.borrow(), book.shown())
    }

    pub(crate) fn version(&self) -> u64 {
        *self.version.borrow()
    }

    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The book, for a look under its lock.
    pub(crate) fn with_book<T>(&self, f: impl FnOnce(&Book) -> T) -> T {
        f(&self.book())
    }
}
