//! `Settings`: the validated configuration the daemon and the commands run with.

use super::audiences::*;
use super::confirm::*;
use super::daemon::*;
use super::directory::*;
use super::kafka::*;
use super::status_page::*;
use super::target::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: String,
    pub kafka: KafkaConfig,
    pub daemon: DaemonConfig,
    pub metrics: MetricsConfig,
    pub health: HealthConfig,
    pub audiences: BTreeSet<String>,
    pub targets: Vec<TargetConfig>,
    pub templates: Arc<clarion_render::TemplateSet>,
    /// What each target was built from, as written, together with everything
    /// shared that shapes its deliveries (default retry, audiences, templates): a
    /// reload restarts a target's stream only when this changed.
    pub fingerprints: BTreeMap<String, String>,
    /// Deadlines per audience (only audiences that have one).
    pub deadlines: BTreeMap<String, Deadlines>,
    /// The holding statements' directory (`statements`), resolved against the
    /// config file's directory; `None` when not set and `statements/` is absent.
    pub statements: Option<PathBuf>,
    /// The stakeholder directory, when `[directory]` is set.
    pub directory: Option<DirectorySettings>,
    /// The public status page, when `[status_page]` is set.
    pub status_page: Option<StatusPageSettings>,
    /// Confirmation requests, the inbound listener and escalation policies
    /// (docs/confirmations.md).
    pub confirmations: Confirmations,
}

impl Settings {
    /// The targets' names, comma-separated, for a message about an unknown one.
    pub fn target_names(&self) -> String {
        self.targets
            .iter()
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A rendered message as the channels receive it (`Delivery.content`), by part name.
pub fn content_of(message: &clarion_render::Message) -> clarion_core::Content {
    clarion_core::Content {
        parts: message
            .parts
            .iter()
            .map(|(part, text)| (part.as_str().to_string(), text.clone()))
            .collect(),
    }
}
