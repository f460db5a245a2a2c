//! The whole file as written (`RawConfig`), and the one place that turns it into
//! validated `Settings`: top-level checks here, each section's own in its module.
//!
//! Never does I/O beyond reading the files the config names (templates, the
//! directory's file, statements' folder), and never builds a channel except to check
//! it (`targets.rs`).

use super::audiences::*;
use super::confirm::*;
use super::daemon::*;
use super::directory::*;
use super::kafka::*;
use super::request::*;
use super::retry::*;
use super::settings::*;
use super::status_page::*;
use super::targets::*;
use super::templates::*;
use anyhow::{Result, anyhow};
pub use clarion_core::STANDARD_AUDIENCES;
use clarion_core::SecretResolver;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The whole file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// The default retry policy of every target; a target's own `retry` table
    /// overrides it key by key.
    #[serde(default)]
    pub retry: RetryOverride,
    /// Audiences beyond the standard four (`customers`, `business`, `employees`,
    /// `regulators`), e.g. `["partners", "wholesale"]`. An update naming an audience
    /// that is neither standard nor listed here is dead-lettered. Written as a table
    /// instead, `[audiences.NAME]` both declares an audience and gives it deadlines
    /// (`first_notice_within`, `[audiences.NAME.deadlines]`, `warn_at`).
    #[serde(default)]
    pub audiences: AudiencesConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// What `/readyz` on the metrics listener checks (docs/runbook.md).
    #[serde(default)]
    pub health: HealthConfig,
    /// Message templates (docs/templates.md): a directory of minijinja files, the
    /// time zone and default locale they render in.
    #[serde(default)]
    pub templates: clarion_render::TemplatesConfig,
    /// Pre-approved holding statements for `clarion publish --statement NAME`: a
    /// directory of `NAME.toml` files (docs/publishing.md), relative to this file's
    /// directory. Default: `statements` beside this file, when it exists.
    #[serde(default)]
    pub statements: Option<PathBuf>,
    /// The stakeholder directory that `type = "people"` targets address
    /// (docs/backups.md#the-directory).
    #[serde(default)]
    pub directory: Option<DirectoryConfig>,
    /// The public status page (docs/status-page.md); its origins are
    /// `type = "status_page"` targets.
    #[serde(default)]
    pub status_page: Option<StatusPageConfig>,
    /// Named destinations, `[targets.NAME]`. Each has a `type` (`webhook`), the
    /// `audiences` it serves, an optional `retry` table, and its channel's own keys.
    #[serde(default)]
    pub targets: BTreeMap<String, serde_json::Value>,
    /// The inbound listener where recipients confirm notices and providers call
    /// back, its tokens' secret and its state topic (docs/confirmations.md).
    #[serde(default)]
    pub confirm: Option<ConfirmConfig>,
    /// Escalation policies, `[escalations.NAME]`, run by `type = "escalation"`
    /// targets (docs/confirmations.md#escalation).
    #[serde(default)]
    pub escalations: BTreeMap<String, EscalationConfig>,
}

impl RawConfig {
    /// Checks every value, resolves every secret reference and builds every channel;
    /// `source` names the file in error messages. Missing secrets and broken targets
    /// are reported together, so that they are not fixed one run at a time.
    pub fn validate(self, source: &str, secrets: &dyn SecretResolver) -> Result<Settings> {
        self.check(source, Some(secrets))
    }

    /// Checks what `clarion route` and `clarion render` need (routing, templates,
    /// each target's own keys) but resolves no secret and builds no channel, so that
    /// a channel owner can preview a template without production credentials.
    /// `check-config` and `run` use [`RawConfig::validate`].
    pub fn validate_for_preview(self, source: &str) -> Result<Settings> {
        self.check(source, None)
    }

    fn check(self, source: &str, secrets: Option<&dyn SecretResolver>) -> Result<Settings> {
        let at = |e: anyhow::Error| anyhow!("{source}: {e}");
        if self.kafka.brokers.trim().is_empty() {
            return Err(at(anyhow!("kafka.brokers: must not be empty")));
        }
        if self.kafka.topic.trim().is_empty() {
            return Err(at(anyhow!("kafka.topic: must not be empty")));
        }
        if self.kafka.dead_letter_topic == self.kafka.topic {
            return Err(at(anyhow!(
                "kafka.dead_letter_topic: must differ from kafka.topic, or failures would be consumed again"
            )));
        }
        for (key, t) in [
            ("ledger_topic", &self.kafka.ledger_topic),
            ("incident_state_topic", &self.kafka.incident_state_topic),
        ] {
            if t.as_ref().is_some_and(|t| *t == self.kafka.topic) {
                return Err(at(anyhow!(
                    "kafka.{key}: must differ from kafka.topic, or its records would be consumed as updates"
                )));
            }
        }
        let sections: [(&str, Vec<&String>); 4] = [
            ("properties", self.kafka.properties.keys().collect()),
            ("consumer", self.kafka.consumer.keys().collect()),
            ("producer", self.kafka.producer.keys().collect()),
            (
                "secret_properties",
                self.kafka.secret_properties.keys().collect(),
            ),
        ];
        for (section, keys) in sections {
            for k in keys {
                // `consumer` is not the producer's: its acks would be harmless.
                if OWNED_KAFKA_PROPERTIES.contains(&k.as_str()) && section != "producer" {
                    return Err(at(anyhow!(
                        "kafka.{section}.{k}: Clarion sets this itself (at-least-once delivery depends on it); remove it"
                    )));
                }
                if OWNED_PRODUCER_PROPERTIES.contains(&k.as_str()) && section != "consumer" {
                    return Err(at(anyhow!(
                        "kafka.{section}.{k}: Clarion sets this itself (acks=all and \
                         enable.idempotence=true: a dead letter counts only once every \
                         in-sync replica has it, exactly once); remove it"
                    )));
                }
            }
        }
        // Problems found from here on are collected, not returned one at a time.
        let mut problems: Vec<String> = Vec::new();
        if let Some(secrets) = secrets {
            for (k, r) in &self.kafka.secret_properties {
                if let Err(e) = secrets.resolve(r) {
                    problems.push(format!("kafka.secret_properties.{k}: {e}"));
                }
            }
        }
        if self.daemon.max_in_flight == 0 {
            return Err(at(anyhow!("daemon.max_in_flight: must be at least 1")));
        }
        let mut audiences: BTreeSet<String> =
            STANDARD_AUDIENCES.iter().map(|s| s.to_string()).collect();
        for a in self.audiences.names() {
            if a.is_empty() || a.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(at(anyhow!("audiences: `{a}` is not a valid audience name")));
            }
            audiences.insert(a.clone());
        }
        let deadlines = validate_deadlines(&self.audiences).map_err(at)?;
        let default_retry = RetryPolicy::default()
            .apply(&self.retry, "retry")
            .map_err(at)?;
        if self.targets.is_empty() {
            return Err(at(anyhow!(
                "targets: no target is configured, nothing would be delivered"
            )));
        }
        // Everything shared that shapes a target's deliveries, for reloads.
        let shared = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            self.status_page,
            self.retry,
            audiences,
            self.templates,
            self.templates.dir.as_ref().map(|d| read_templates(
                &Path::new(source).parent().unwrap_or(Path::new(".")).join(d)
            )
            .ok())
        );
        let fingerprints: BTreeMap<String, String> = self
            .targets
            .iter()
            .map(|(name, value)| (name.clone(), format!("{value}|{shared}")))
            .collect();
        let mut targets = Vec::new();
        // Escalation targets are checked once the targets their steps use are.
        let mut escalation_targets = Vec::new();
        for (name, value) in self.targets {
            if value.get("type").and_then(|t| t.as_str()) == Some("escalation") {
                escalation_targets.push((name, value));
                continue;
            }
            match validate_target(&name, value, &audiences, &default_retry, secrets) {
                Ok(t) => targets.push(t),
                Err(TargetError::Other(e)) => problems.push(format!("targets.{name}: {e}")),
                Err(TargetError::Problems(list)) => {
                    problems.extend(list.into_iter().map(|(key, e)| {
                        if key.is_empty() {
                            format!("targets.{name}: {e}")
                        } else {
                            format!("targets.{name}: {key}: {e}")
                        }
                    }))
                }
            }
        }
        let mut confirmations = Confirmations::default();
        match validate_escalations(
            &self.escalations,
            &targets,
            &audiences,
            self.directory.is_some(),
        ) {
            Ok(e) => confirmations.escalations = e,
            Err(e) => problems.push(format!("{e:#}")),
        }
        for (name, value) in escalation_targets {
            match validate_escalation_target(
                &name,
                value,
                &audiences,
                &targets,
                &confirmations.escalations,
            ) {
                Ok(t) => targets.push(t),
                Err(e) => problems.push(format!("targets.{name}: {e:#}")),
            }
        }
        if let AudiencesConfig::Table(table) = &self.audiences {
            for (name, a) in table {
                if let Some(r) = &a.confirm {
                    match check_request(r) {
                        Ok(()) => {
                            confirmations.by_audience.insert(name.clone(), *r);
                        }
                        Err(e) => problems.push(format!("audiences.{name}.{e:#}")),
                    }
                }
                match a.confirmed_within {
                    Some(d) if d.is_zero() => problems.push(format!(
                        "audiences.{name}.confirmed_within: must be more than zero"
                    )),
                    Some(d) => {
                        confirmations.deadlines.insert(name.clone(), d);
                    }
                    None => {}
                }
            }
        }
        let asks =
            targets.iter().any(|t| t.confirm.is_some()) || !confirmations.by_audience.is_empty();
        match (&self.confirm, asks) {
            (Some(c), _) => {
                let mut topics = vec![self.kafka.topic.as_str(), self.kafka.dead_letter_topic.as_str()];
                topics.extend(self.kafka.ledger_topic.as_deref());
                topics.extend(self.kafka.incident_state_topic.as_deref());
                topics.extend(self.kafka.dead_recipient_topic.as_deref());
                match validate_listener(c, secrets, &topics) {
                    Ok(l) => confirmations.listener = Some(l),
                    Err(e) => problems.push(format!("{e:#}")),
                }
            }
            (None, true) => problems.push(
                "confirm: a target or audience asks for confirmation (`confirm = …`), which needs the `[confirm]` section (the listener where recipients confirm, and its secret)".to_string(),
            ),
            (None, false) => {}
        }
        if (!confirmations.by_audience.is_empty() || targets.iter().any(|t| t.confirm.is_some()))
            && self.kafka.ledger_topic.is_none()
        {
            problems.push(
                "kafka.ledger_topic: confirmations are recorded in the ledger; set it (docs/ledger.md)"
                    .to_string(),
            );
        }
        match problems.len() {
            0 => {}
            1 => return Err(anyhow!("{source}: {}", problems[0])),
            n => {
                let list: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
                return Err(anyhow!("{source}: {n} problems:\n{}", list.join("\n")));
            }
        }
        let directory = match &self.directory {
            None => {
                if let Some(t) = targets.iter().find(|t| t.people.is_some()) {
                    return Err(at(anyhow!(
                        "targets.{}: a people target needs a `[directory]` to take its people from",
                        t.name
                    )));
                }
                None
            }
            Some(d) => Some(
                validate_directory(source, d, &self.kafka, &audiences, secrets.is_some())
                    .map_err(at)?,
            ),
        };
        let status_page = validate_status_page(
            self.status_page.as_ref(),
            &audiences,
            &self.kafka.topic,
            &targets,
        )
        .map_err(at)?;
        let templates = build_templates(source, &self.templates, &targets)?;
        // Statements are read by `publish` and `check-config` only; here the
        // directory is just located, so that the daemon never depends on it.
        let base = Path::new(source).parent().unwrap_or(Path::new("."));
        let statements = match &self.statements {
            Some(dir) if !base.join(dir).is_dir() => {
                return Err(at(anyhow!(
                    "statements: {} is not a directory",
                    base.join(dir).display()
                )));
            }
            Some(dir) => Some(base.join(dir)),
            None => Some(base.join("statements")).filter(|d| d.is_dir()),
        };
        Ok(Settings {
            source: source.to_string(),
            kafka: self.kafka,
            daemon: self.daemon,
            metrics: self.metrics,
            health: self.health,
            audiences,
            targets,
            templates: Arc::new(templates),
            fingerprints,
            deadlines,
            statements,
            directory,
            status_page,
            confirmations,
        })
    }
}
