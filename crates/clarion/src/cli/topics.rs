//! The topics a config names, whether the brokers have them, and `clarion topics
//! create`, which makes the missing ones with librdkafka's admin API (no Kafka
//! distribution needed): the source topic, the dead-letter topic and, when set,
//! the dead-recipient, ledger, incident-state, directory and progress topics, each
//! with the settings docs/ledger.md and docs/backups.md give it.
//!
//! `check-config --connect` uses the same list to name every missing topic with
//! the command that creates it. Creating never changes a topic that exists.

use crate::cli::client::Reporter;
use crate::config::{DirectorySource, EnvSecrets, Settings};
use anyhow::{Context as _, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// How long the brokers get to answer a metadata request or a creation.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The ledger keeps records as long as an audit needs them: 400 days.
const LEDGER_RETENTION_MS: &str = "34560000000";

/// A topic the config names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub topic: String,
    /// The config key that names it (`kafka.ledger_topic`).
    pub key: &'static str,
    /// Topic settings it is created with.
    pub config: Vec<(&'static str, &'static str)>,
}

/// Every topic `settings` names, the source topic first.
pub fn wanted(settings: &Settings) -> Vec<Wanted> {
    let k = &settings.kafka;
    let mut out = vec![
        Wanted {
            topic: k.topic.clone(),
            key: "kafka.topic",
            config: Vec::new(),
        },
        Wanted {
            topic: k.dead_letter_topic.clone(),
            key: "kafka.dead_letter_topic",
            config: Vec::new(),
        },
    ];
    let mut add = |topic: &Option<String>, key, config| {
        if let Some(t) = topic {
            out.push(Wanted {
                topic: t.clone(),
                key,
                config,
            });
        }
    };
    add(
        &k.dead_recipient_topic,
        "kafka.dead_recipient_topic",
        Vec::new(),
    );
    add(
        &k.ledger_topic,
        "kafka.ledger_topic",
        vec![("retention.ms", LEDGER_RETENTION_MS)],
    );
    add(
        &k.incident_state_topic,
        "kafka.incident_state_topic",
        vec![("cleanup.policy", "compact")],
    );
    add(
        &settings.status_page.as_ref().map(|p| p.topic.clone()),
        "status_page.topic",
        vec![("cleanup.policy", "compact")],
    );
    if let Some(d) = &settings.directory {
        if let DirectorySource::Topic(t) = &d.source {
            add(
                &Some(t.clone()),
                "directory.topic",
                vec![("cleanup.policy", "compact")],
            );
        }
        add(
            &Some(d.progress_topic.clone()),
            "directory.progress_topic",
            vec![("cleanup.policy", "compact")],
        );
    }
    // One topic named twice (a shared progress and state topic, say) is one topic.
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|w| seen.insert(w.topic.clone()));
    out
}

fn admin(settings: &Settings) -> Result<AdminClient<Reporter>> {
    crate::kafka::admin_config(&settings.kafka, &EnvSecrets)?
        // A metadata request for a topic must not create it (brokers with
        // auto.create.topics.enable would, with their defaults).
        .set("allow.auto.create.topics", "false")
        // librdkafka's per-retry complaints stay out of the command's output: the
        // calls' own results say whether the brokers answered.
        .create_with_context(Reporter::new(&settings.kafka.brokers, TIMEOUT).for_reader())
        .context("cannot create a Kafka admin client")
}

/// The partitions of each topic of `names` on the brokers (`None`: missing).
/// Blocking.
fn partitions(
    admin: &AdminClient<Reporter>,
    brokers: &str,
    names: &[&str],
) -> Result<Vec<Option<usize>>> {
    let mut out = Vec::new();
    for name in names {
        let md = admin
            .inner()
            .fetch_metadata(Some(name), TIMEOUT)
            .with_context(|| format!("cannot reach the Kafka brokers at {brokers}"))?;
        out.push(
            md.topics()
                .iter()
                .find(|t| t.name() == *name && t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len()),
        );
    }
    Ok(out)
}

/// The topics of `settings` the brokers do not have. Blocking.
pub fn missing(settings: &Settings) -> Result<Vec<Wanted>> {
    let admin = admin(settings)?;
    let all = wanted(settings);
    let names: Vec<&str> = all.iter().map(|w| w.topic.as_str()).collect();
    let found = partitions(&admin, &settings.kafka.brokers, &names)?;
    Ok(all
        .into_iter()
        .zip(found)
        .filter(|(_, p)| p.is_none())
        .map(|(w, _)| w)
        .collect())
}

/// The command that creates `w` for the config at `config`.
pub fn create_command(config: &str, w: &Wanted) -> String {
    format!("clarion topics create --config {config} {}", w.topic)
}

/// What `clarion topics create` was asked.
#[derive(Debug, Clone, Default)]
pub struct Create {
    /// Only these topics (each must be one the config names); all when empty.
    pub only: Vec<String>,
    /// Partitions of each new topic; default the source topic's when it exists,
    /// else 6.
    pub partitions: Option<i32>,
    /// Replicas of each new topic; default the brokers' `default.replication.factor`.
    pub replication_factor: Option<i32>,
}

/// `clarion topics create`: creates the topics of `settings` the brokers lack,
/// prints one line per topic; false when one could not be created.
pub async fn create(settings: &Settings, ask: &Create) -> Result<bool> {
    let all = wanted(settings);
    for name in &ask.only {
        if !all.iter().any(|w| w.topic == *name) {
            bail!(
                "`{name}` is not a topic of {} (its topics: {})",
                settings.source,
                all.iter()
                    .map(|w| w.topic.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let chosen: Vec<Wanted> = all
        .into_iter()
        .filter(|w| ask.only.is_empty() || ask.only.contains(&w.topic))
        .collect();
    let admin = admin(settings)?;
    let (admin, found, source) = {
        let brokers = settings.kafka.brokers.clone();
        let names: Vec<String> = chosen.iter().map(|w| w.topic.clone()).collect();
        let source = settings.kafka.topic.clone();
        tokio::task::spawn_blocking(move || -> Result<_> {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let found = partitions(&admin, &brokers, &refs)?;
            let source = partitions(&admin, &brokers, &[source.as_str()])?[0];
            Ok((admin, found, source))
        })
        .await
        .context("the metadata request did not finish")??
    };
    let count = ask
        .partitions
        .or(source.and_then(|p| i32::try_from(p).ok()))
        .unwrap_or(6);
    let replicas = ask.replication_factor.unwrap_or(-1);
    let mut new: Vec<&Wanted> = Vec::new();
    let mut topics: Vec<NewTopic<'_>> = Vec::new();
    for (w, p) in chosen.iter().zip(&found) {
        match p {
            Some(n) => println!("exists   {} ({}, {n} partitions)", w.topic, w.key),
            None => {
                let mut t = NewTopic::new(&w.topic, count, TopicReplication::Fixed(replicas));
                for (k, v) in &w.config {
                    t = t.set(k, v);
                }
                new.push(w);
                topics.push(t);
            }
        }
    }
    if new.is_empty() {
        println!("every topic of {} exists", settings.source);
        return Ok(true);
    }
    let results = admin
        .create_topics(
            &topics,
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .with_context(|| {
            format!(
                "cannot reach the Kafka brokers at {}",
                settings.kafka.brokers
            )
        })?;
    let mut ok = true;
    for (w, result) in new.iter().zip(results) {
        let settings_text = if w.config.is_empty() {
            String::new()
        } else {
            format!(
                ", {}",
                w.config
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        match result {
            Ok(_) => println!(
                "created  {} ({}, {count} partitions{settings_text})",
                w.topic, w.key
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                println!("exists   {} ({})", w.topic, w.key)
            }
            Err((_, code)) => {
                ok = false;
                println!("FAILED   {} ({}): {code}", w.topic, w.key);
            }
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_the_config_names_is_wanted_once_with_its_settings() {
        let toml = r#"
[kafka]
brokers = "127.0.0.1:9"
topic = "incidents"
dead_letter_topic = "clarion.dlq"
ledger_topic = "incident-ledger"
incident_state_topic = "incident-state"

[targets.hook]
type = "webhook"
audiences = ["customers"]
url = "http://127.0.0.1:1/hook"
"#;
        let settings = crate::config::parse_str(toml)
            .and_then(|raw| raw.validate_for_preview("test.toml"))
            .expect("valid");
        let w = wanted(&settings);
        let names: Vec<(&str, &str)> = w.iter().map(|w| (w.topic.as_str(), w.key)).collect();
        assert_eq!(
            names,
            vec![
                ("incidents", "kafka.topic"),
                ("clarion.dlq", "kafka.dead_letter_topic"),
                ("incident-ledger", "kafka.ledger_topic"),
                ("incident-state", "kafka.incident_state_topic"),
            ]
        );
        assert_eq!(w[2].config, vec![("retention.ms", LEDGER_RETENTION_MS)]);
        assert_eq!(w[3].config, vec![("cleanup.policy", "compact")]);
        assert_eq!(
            create_command("c.toml", &w[2]),
            "clarion topics create --config c.toml incident-ledger"
        );
    }
}
