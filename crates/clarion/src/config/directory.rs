//! `[directory]`: where people targets take their people from (a file or a
//! compacted topic), the walks' progress topic and batch sizes.

use super::kafka::*;
use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[directory]`: who the people targets reach, and where their walks' progress
/// is kept.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// A CSV, JSON or JSON Lines file, relative to the config file's directory;
    /// read at start-up and on SIGHUP.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A compacted topic keyed by person id, the person's JSON as the value and a
    /// tombstone to remove them; followed while the daemon runs. Dead addresses
    /// found by a delivery are removed from it.
    #[serde(default)]
    pub topic: Option<String>,
    /// A compacted topic where each people target records how far its walk of
    /// each update got, so that a restart resumes there. Required.
    #[serde(default)]
    pub progress_topic: Option<String>,
    /// People per batch: each batch is one delivery per leg (default 500).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Batches of one update under way at once, per people target (default 4).
    #[serde(default = "default_batches_in_flight")]
    pub batches_in_flight: usize,
}

pub(super) fn default_batch_size() -> usize {
    500
}

pub(super) fn default_batches_in_flight() -> usize {
    4
}

/// Where the directory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectorySource {
    /// The file, resolved against the config file's directory.
    File(PathBuf),
    Topic(String),
}

/// The validated `[directory]`.
#[derive(Clone)]
pub struct DirectorySettings {
    pub source: DirectorySource,
    pub progress_topic: String,
    pub batch_size: usize,
    pub batches_in_flight: usize,
    /// The file's people, read and validated (a file source, with secrets
    /// resolved: `run` and `check-config`; not for previews).
    pub people: Option<Arc<crate::directory::Directory>>,
}

impl std::fmt::Debug for DirectorySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectorySettings")
            .field("source", &self.source)
            .field("progress_topic", &self.progress_topic)
            .field("batch_size", &self.batch_size)
            .field("batches_in_flight", &self.batches_in_flight)
            .field("people", &self.people.as_ref().map(|d| d.len()))
            .finish()
    }
}

/// Checks `[directory]`, and reads and validates its file when `load` (`run` and
/// `check-config`; previews do not need the people).
pub(super) fn validate_directory(
    source: &str,
    d: &DirectoryConfig,
    kafka: &KafkaConfig,
    audiences: &BTreeSet<String>,
    load: bool,
) -> Result<DirectorySettings> {
    let base = Path::new(source).parent().unwrap_or(Path::new("."));
    let src = match (&d.file, &d.topic) {
        (Some(_), Some(_)) => bail!(
            "directory: set `file` or `topic`, not both (the topic is the address book that can change without a restart)"
        ),
        (None, None) => bail!("directory: set `file` (CSV, JSON or JSON Lines) or `topic`"),
        (Some(f), None) => DirectorySource::File(base.join(f)),
        (None, Some(t)) if t.trim().is_empty() => bail!("directory.topic: must not be empty"),
        (None, Some(t)) => DirectorySource::Topic(t.clone()),
    };
    let Some(progress) = d.progress_topic.clone().filter(|t| !t.trim().is_empty()) else {
        bail!(
            "directory.progress_topic: missing (a compacted topic where each walk's progress is kept, so that a restart does not send to everyone again)"
        );
    };
    let ours = [
        Some(&kafka.topic),
        Some(&kafka.dead_letter_topic),
        kafka.ledger_topic.as_ref(),
        kafka.incident_state_topic.as_ref(),
        d.topic.as_ref(),
    ];
    if ours.iter().flatten().any(|t| **t == progress) {
        bail!("directory.progress_topic: `{progress}` must be a topic of its own");
    }
    if let DirectorySource::Topic(t) = &src {
        let others = [
            Some(&kafka.topic),
            Some(&kafka.dead_letter_topic),
            kafka.ledger_topic.as_ref(),
            kafka.incident_state_topic.as_ref(),
        ];
        if others.iter().flatten().any(|o| *o == t) {
            bail!("directory.topic: `{t}` must be a topic of its own");
        }
    }
    if !(1..=10_000).contains(&d.batch_size) {
        bail!("directory.batch_size: must be from 1 to 10000");
    }
    if !(1..=64).contains(&d.batches_in_flight) {
        bail!("directory.batches_in_flight: must be from 1 to 64");
    }
    let people = match (&src, load) {
        (DirectorySource::File(path), true) => Some(Arc::new(
            crate::directory::load_file(path, audiences)
                .map_err(|e| anyhow!("directory.file: {e:#}"))?,
        )),
        _ => None,
    };
    Ok(DirectorySettings {
        source: src,
        progress_topic: progress,
        batch_size: d.batch_size,
        batches_in_flight: d.batches_in_flight,
        people,
    })
}
