//! `clarion check-config`: everything that can be checked before the daemon runs.
//! The config was parsed and validated (with every secret resolved) by the time this
//! runs; here librdkafka builds the clients the daemon would, `--connect` asks each
//! target's every provider whether it answers and the brokers whether every topic
//! the config names exists (naming the command that creates each missing one), the
//! directory is counted, and each holding statement is proved to render for every
//! target that would take it.
//!
//! Prints one line per thing checked; sends nothing and starts no stream.

use crate::cli::publish::{Request, complete, validate};
use crate::cli::statements::{load_statement, statement_names};
use crate::config::{EnvSecrets, Settings};
use anyhow::{Context as _, Result, anyhow, bail};
use std::collections::BTreeMap;
use std::path::Path;

/// Runs the checks on `settings`, loaded from `config`; false when a target does
/// not answer or a topic is missing (with `connect`).
pub async fn run(config: &Path, settings: &Settings, connect: bool) -> Result<bool> {
    crate::kafka::check_clients(&settings.kafka, &EnvSecrets)
        .with_context(|| config.display().to_string())?;
    let mut failed = false;
    for t in &settings.targets {
        let detail = format!(
            "{} ({}, audiences: {})",
            t.name,
            t.kind.as_str(),
            t.audiences.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        if connect {
            for c in t.channels() {
                let providers = crate::config::build_providers(c, &EnvSecrets)?;
                let several = providers.len() > 1 || t.people.is_some();
                for crate::config::BuiltProvider { name, channel, .. } in providers {
                    // A target with backups or legs: each provider on its
                    // own line.
                    let detail = match (&t.people, several) {
                        (Some(_), _) => format!(
                            "{detail}, leg {} ({}) provider {name}",
                            c.name,
                            c.kind.as_str()
                        ),
                        (None, true) => format!("{detail}, provider {name}"),
                        (None, false) => detail.clone(),
                    };
                    match channel.healthcheck().await {
                        Ok(()) => println!("ok      {detail}: reachable"),
                        Err(e) => {
                            failed = true;
                            println!("FAILED  {detail}: {e}");
                        }
                    }
                }
            }
        } else if let Some(p) = &t.people {
            let legs: Vec<String> = p
                .legs
                .iter()
                .map(|l| format!("{} ({})", l.kind.as_str(), l.target.kind.as_str()))
                .collect();
            println!("ok      {detail}, fallback: {}", legs.join(" → "));
        } else if !t.backups.is_empty() {
            let names: Vec<&str> = std::iter::once(&*t.provider_name)
                .chain(t.backups.iter().map(|b| &*b.name))
                .collect();
            println!("ok      {detail}, providers: {}", names.join(" → "));
        } else {
            println!("ok      {detail}");
        }
    }
    if connect {
        let s = settings.clone();
        let missing = tokio::task::spawn_blocking(move || crate::cli::topics::missing(&s))
            .await
            .context("the topic check did not finish")?;
        let shown = config.display().to_string();
        match missing {
            // The brokers did not answer: said once, and the other checks go on.
            Err(e) => {
                failed = true;
                println!("FAILED  topics: {e:#}");
            }
            Ok(missing) => {
                for w in crate::cli::topics::wanted(settings) {
                    match missing.iter().find(|m| m.topic == w.topic) {
                        Some(m) => {
                            failed = true;
                            println!(
                                "MISSING topic `{}` ({}): create it with: {}",
                                m.topic,
                                m.key,
                                crate::cli::topics::create_command(&shown, m)
                            );
                        }
                        None => println!("ok      topic `{}` ({})", w.topic, w.key),
                    }
                }
            }
        }
    }
    if let Some(d) = &settings.directory {
        match (&d.source, &d.people) {
            (crate::config::DirectorySource::File(path), Some(people)) => {
                let counts: Vec<String> = settings
                    .targets
                    .iter()
                    .filter_map(|t| t.people.as_ref())
                    .map(|p| format!("{}: {}", p.audience, people.members(&p.audience)))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                println!(
                    "ok      directory {}: {} people{}",
                    path.display(),
                    people.len(),
                    if counts.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", counts.join(", "))
                    }
                );
            }
            (crate::config::DirectorySource::Topic(topic), _) => println!(
                "ok      directory topic `{topic}` (its records are checked as they arrive), progress topic `{}`",
                d.progress_topic
            ),
            _ => {}
        }
    }
    // Holding statements are checked here, not in `load`: the daemon never
    // reads them, so a broken one must not stop it, but it must be found
    // before ops need it in a crisis.
    for line in check_statements(settings)
        .with_context(|| format!("{}: holding statements", config.display()))?
    {
        println!("ok      {line}");
    }
    if failed {
        eprintln!(
            "error: {}: some targets are not reachable or some topics are missing (above)",
            config.display()
        );
        return Ok(false);
    }
    println!(
        "{}: valid ({} targets)",
        config.display(),
        settings.targets.len()
    );
    Ok(true)
}

/// `check-config`: every statement parses, makes an update the daemon accepts, and
/// renders for every (target, audience) that would take it. Placeholders are filled
/// with `<name>`. Returns one line per statement.
pub fn check_statements(settings: &Settings) -> Result<Vec<String>> {
    let Some(dir) = &settings.statements else {
        return Ok(Vec::new());
    };
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    for name in statement_names(dir)? {
        match check_statement(settings, &name) {
            Ok(line) => lines.push(line),
            Err(e) => problems.push(format!("statement `{name}`: {e:#}")),
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(lines)
}

fn check_statement(settings: &Settings, name: &str) -> Result<String> {
    let statement = load_statement(settings, name)?;
    let values: BTreeMap<String, String> = statement
        .placeholders()
        .into_iter()
        .map(|p| {
            let v = format!("<{p}>");
            (p, v)
        })
        .collect();
    let filled = statement.fill(&values)?;
    let mut draft = serde_json::to_value(&filled)?
        .as_object()
        .cloned()
        .unwrap_or_default();
    draft.insert("incident_id".into(), "INC-EXAMPLE".into());
    let update = complete(
        draft,
        None,
        &Request::default(),
        jiff::Timestamp::UNIX_EPOCH,
    )?;
    let update = validate(settings, &serde_json::to_vec(&update)?)?;
    let mut takers = Vec::new();
    for t in &settings.targets {
        let decision = clarion_render::route(&update, &t.audiences, &t.rules);
        if !decision.matched {
            continue;
        }
        for audience in &decision.audiences {
            for c in t.channels() {
                c.render(&settings.templates, &update, audience)
                    .map_err(|e| anyhow!("target {}: audience {audience}: {e}", c.name))?;
            }
        }
        takers.push(t.name.to_string());
    }
    Ok(format!(
        "statement {name} ({}, audiences: {}; rendered for {})",
        update.status,
        update.audiences.join(", "),
        if takers.is_empty() {
            "no target".to_string()
        } else {
            takers.join(", ")
        }
    ))
}
