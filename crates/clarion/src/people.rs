//! People targets' directory as the daemon keeps it: loaded from its file (and
//! reloaded on SIGHUP) or followed from its compacted topic, with the progress of
//! every walk read back from the progress topic, so that the walks
//! (`engine/dispatch/walk.rs`) find their audience and where they stopped.
//!
//! Never delivers anything and never starts a walk: it keeps the data the walks
//! read, and applies the dead addresses they report.

use crate::config::{DirectorySettings, DirectorySource, KafkaConfig};
use crate::directory::{AddressKind, Directory, Person};
use anyhow::{Context, Result};
use clarion_core::SecretResolver;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How far one people target's walk of one update got (`directory.progress_topic`,
/// keyed `TARGET/UPDATE_ID`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Walked {
    /// The id of the last person of the last batch that finished, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// People reached so far.
    #[serde(default)]
    pub reached: u64,
    /// Every member was walked: a redelivery of the update sends nothing.
    #[serde(default)]
    pub done: bool,
}

/// What the people targets share: the directory, the walks' progress, and where
/// to write both.
pub struct PeopleSupport {
    directory: RwLock<Arc<Directory>>,
    progress: Mutex<HashMap<String, Walked>>,
    pub(crate) progress_topic: String,
    /// The directory's topic, when it is one: dead addresses are written back.
    pub(crate) directory_topic: Option<String>,
    pub(crate) batch_size: usize,
    pub(crate) batches_in_flight: usize,
    /// True once the directory and the progress topics were read to their ends.
    ready: watch::Receiver<bool>,
    /// The config's audiences, which a directory topic's records are checked against.
    audiences: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for PeopleSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeopleSupport")
            .field("people", &self.directory().len())
            .field("progress_topic", &self.progress_topic)
            .finish()
    }
}

impl PeopleSupport {
    /// Starts following the directory topic (when it is one) and the progress
    /// topic; the people targets' walks wait until both were read to their end.
    pub fn start(
        settings: &DirectorySettings,
        audiences: &std::collections::BTreeSet<String>,
        kafka: &KafkaConfig,
        secrets: &dyn SecretResolver,
        cancel: CancellationToken,
    ) -> Result<Arc<PeopleSupport>> {
        let (ready_tx, ready) = watch::channel(false);
        let directory = match &settings.source {
            DirectorySource::File(_) => settings.people.clone().unwrap_or_default(),
            DirectorySource::Topic(_) => Arc::new(Directory::new()),
        };
        let support = Arc::new(PeopleSupport {
            directory: RwLock::new(directory),
            progress: Mutex::default(),
            progress_topic: settings.progress_topic.clone(),
            directory_topic: match &settings.source {
                DirectorySource::Topic(t) => Some(t.clone()),
                DirectorySource::File(_) => None,
            },
            batch_size: settings.batch_size,
            batches_in_flight: settings.batches_in_flight,
            ready,
            audiences: audiences.clone(),
        });
        let mut waits = Vec::new();
        let weak = Arc::downgrade(&support);
        waits.push(follow(
            kafka,
            secrets,
            &settings.progress_topic,
            move |key, value| {
                if let Some(s) = weak.upgrade() {
                    s.apply_progress(key, value);
                }
            },
            cancel.clone(),
        )?);
        if let Some(topic) = &support.directory_topic {
            let weak = Arc::downgrade(&support);
            let topic_name = topic.clone();
            waits.push(follow(
                kafka,
                secrets,
                topic,
                move |key, value| {
                    if let Some(s) = weak.upgrade() {
                        s.apply_person(&topic_name, key, value);
                    }
                },
                cancel.clone(),
            )?);
        }
        tokio::spawn(async move {
            for mut w in waits {
                if w.wait_for(|r| *r).await.is_err() {
                    return;
                }
            }
            let _ = ready_tx.send(true);
        });
        support.gauge();
        Ok(support)
    }

    /// The directory as it is now (a file's, until the next reload; a topic's,
    /// kept up to date as records arrive).
    pub fn directory(&self) -> Arc<Directory> {
        self.directory
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes a reloaded file's people (SIGHUP). A topic's directory is not
    /// replaced: the topic is its source.
    pub fn reload(&self, settings: &DirectorySettings) {
        if let (None, Some(people)) = (&self.directory_topic, &settings.people) {
            *self.directory.write().unwrap_or_else(|e| e.into_inner()) = people.clone();
            tracing::info!(people = people.len(), "directory file read again");
            self.gauge();
        }
    }

    fn gauge(&self) {
        metrics::gauge!("clarion_directory_people").set(self.directory().len() as f64);
    }

    pub(crate) fn apply_progress(&self, key: &str, value: Option<&[u8]>) {
        let mut map = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        match value.map(serde_json::from_slice::<Walked>) {
            None => {
                map.remove(key);
            }
            Some(Ok(w)) => {
                // Replicas write in order for a key they own; a late copy of an
                // older record must not move a walk back.
                let entry = map.entry(key.to_string()).or_default();
                if w.done || (!entry.done && w.reached >= entry.reached) {
                    *entry = w;
                }
            }
            Some(Err(e)) => {
                tracing::warn!(key, error = %e, topic = %self.progress_topic, "progress record is not one Clarion writes; ignored");
            }
        }
    }

    fn apply_person(&self, topic: &str, key: &str, value: Option<&[u8]>) {
        let dir = self.directory();
        match value {
            None => dir.remove(key),
            // Checked as a file's rows are. A person left with no address (every
            // one of them turned out dead: what `prune` writes) stays a member, to
            // be dead-lettered as unreachable until someone adds an address.
            Some(v) => match Person::from_record(key, v).and_then(|p| {
                let unreachable = AddressKind::ALL.iter().all(|k| p.addresses(*k).is_empty());
                match crate::directory::validate(&p, &self.audiences) {
                    Err(e) if !unreachable => Err(e),
                    _ => Ok(p),
                }
            }) {
                Ok(p) => dir.upsert(p),
                Err(e) => tracing::warn!(
                    topic,
                    key,
                    error = %e,
                    "directory record ignored, the person's previous record stays (docs/backups.md#the-directory)"
                ),
            },
        }
        self.gauge();
    }

    pub(crate) fn walked(&self, key: &str) -> Walked {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) async fn ready(&self, cancel: &CancellationToken) -> bool {
        let mut ready = self.ready.clone();
        tokio::select! {
            r = ready.wait_for(|r| *r) => r.is_ok(),
            _ = cancel.cancelled() => false,
        }
    }
}

/// Reads `topic` from its beginning and goes on following it, handing every
/// record to `apply` (key, value; `None` for a tombstone). The receiver turns
/// true once every partition was read to the end it had at start. Runs on a
/// thread of its own until `cancel`.
fn follow(
    kafka: &KafkaConfig,
    secrets: &dyn SecretResolver,
    topic: &str,
    apply: impl Fn(&str, Option<&[u8]>) + Send + 'static,
    cancel: CancellationToken,
) -> Result<watch::Receiver<bool>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::error::KafkaError;
    use rdkafka::message::Message;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    // The end of each partition is signalled, for "read to its end".
    let consumer: BaseConsumer =
        crate::kafka::reader_config(kafka, secrets, &format!("{}.follow", kafka.group_id))?
            .set("enable.partition.eof", "true")
            .create()
            .context("cannot create a Kafka consumer")?;
    let (tx, rx) = watch::channel(false);
    let topic = topic.to_string();
    std::thread::Builder::new()
        .name(format!("follow-{topic}"))
        .spawn(move || {
            let partitions = loop {
                if cancel.is_cancelled() {
                    return;
                }
                match consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                    Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                            break t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
                        }
                        _ => tracing::warn!(topic, "topic not found on the brokers; people targets wait for it (create it compacted)"),
                    },
                    Err(e) => tracing::warn!(topic, error = %e, "cannot read the topic's metadata; retrying"),
                }
                std::thread::sleep(Duration::from_secs(2));
            };
            let mut tpl = TopicPartitionList::new();
            for p in &partitions {
                let _ = tpl.add_partition_offset(&topic, *p, Offset::Beginning);
            }
            if let Err(e) = consumer.assign(&tpl) {
                tracing::error!(topic, error = %e, "cannot read the topic");
                return;
            }
            let mut behind: HashSet<i32> = partitions.iter().copied().collect();
            let mut records: u64 = 0;
            while !cancel.is_cancelled() {
                match consumer.poll(Duration::from_millis(200)) {
                    None => {}
                    Some(Ok(m)) => {
                        records += 1;
                        match m.key().map(std::str::from_utf8) {
                            Some(Ok(key)) => apply(key, m.payload()),
                            _ => tracing::warn!(
                                topic,
                                partition = m.partition(),
                                offset = m.offset(),
                                "record without a UTF-8 key ignored"
                            ),
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(p)))
                        if behind.remove(&p) && behind.is_empty() =>
                    {
                        tracing::info!(topic, records, "topic read to its end");
                        let _ = tx.send(true);
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => {}
                    Some(Err(e)) => tracing::warn!(topic, error = %e, "reading the topic"),
                }
            }
        })
        .context("cannot start a thread")?;
    Ok(rx)
}
