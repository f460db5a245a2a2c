//! Holding statements (`statements/NAME.toml`): pre-approved wording that
//! `publish --statement` fills with the incident's facts, and that `check-config`
//! proves will render for every target that would take it.

use crate::config::Settings;
use anyhow::{Context as _, Result, anyhow, bail};
use clarion_core::{Impact, Link, Status};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A pre-approved holding statement: `statements/NAME.toml`. Text may hold
/// placeholders `{incident}`, `{regions}`, `{components}` and any other `{name}`
/// given with `--set name=value`; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// What the statement is for and who approved it (shown by `check-config`).
    #[serde(default, skip_serializing)]
    pub description: String,
    pub status: Status,
    pub impact: Impact,
    /// Who it goes to.
    pub audiences: Vec<String>,
    pub title: String,
    /// The text every audience gets unless `audience_messages` has its own.
    pub message: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub audience_messages: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

impl Statement {
    /// The statement with every placeholder replaced; an error names each one
    /// without a value.
    pub fn fill(&self, values: &BTreeMap<String, String>) -> Result<Statement> {
        let mut missing = BTreeSet::new();
        let mut f = |s: &str| fill(s, values, &mut missing);
        let out = Statement {
            description: self.description.clone(),
            status: self.status,
            impact: self.impact,
            audiences: self.audiences.clone(),
            title: f(&self.title),
            message: f(&self.message),
            audience_messages: self
                .audience_messages
                .iter()
                .map(|(k, v)| (k.clone(), f(v)))
                .collect(),
            links: self
                .links
                .iter()
                .map(|l| Link {
                    title: f(&l.title),
                    url: f(&l.url),
                })
                .collect(),
        };
        if !missing.is_empty() {
            let flags: Vec<String> = missing
                .iter()
                .map(|m: &String| match m.as_str() {
                    "regions" | "components" => format!("--{m}"),
                    _ => format!("--set {m}=…"),
                })
                .collect();
            bail!(
                "placeholder(s) without a value: {}; give {}",
                missing
                    .iter()
                    .map(|m| format!("{{{m}}}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                flags.join(", ")
            );
        }
        Ok(out)
    }

    /// Every placeholder the statement uses.
    pub fn placeholders(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let none = BTreeMap::new();
        self.fill_into(&none, &mut found);
        found
    }

    fn fill_into(&self, values: &BTreeMap<String, String>, missing: &mut BTreeSet<String>) {
        let texts = [&self.title, &self.message]
            .into_iter()
            .chain(self.audience_messages.values())
            .chain(self.links.iter().flat_map(|l| [&l.title, &l.url]));
        for t in texts {
            fill(t, values, missing);
        }
    }
}

/// Replaces `{name}` with its value; names without one are added to `missing` and
/// left as written.
fn fill(text: &str, values: &BTreeMap<String, String>, missing: &mut BTreeSet<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('{')
            && let Some(end) = tail.find('}')
        {
            let name = &tail[1..end];
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                match values.get(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        missing.insert(name.to_string());
                        out.push_str(&tail[..=end]);
                    }
                }
                rest = &tail[end + 1..];
                continue;
            }
        }
        out.push_str(&tail[..1]);
        rest = &tail[1..];
    }
    out.push_str(rest);
    out
}

/// Reads `NAME.toml` from the statements directory.
pub fn load_statement(settings: &Settings, name: &str) -> Result<Statement> {
    let Some(dir) = &settings.statements else {
        bail!(
            "no holding statements: {} sets no `statements` directory and there is no statements/ beside it",
            settings.source
        );
    };
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!(
            "`{name}` is not a statement name (a file name in {} without .toml)",
            dir.display()
        );
    }
    let path = dir.join(format!("{name}.toml"));
    if !path.is_file() {
        let names = statement_names(dir).unwrap_or_default();
        bail!(
            "no statement `{name}` ({} not found); statements: {}",
            path.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    read_statement(&path)
}

fn read_statement(path: &Path) -> Result<Statement> {
    config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize::<Statement>())
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// The statements in `dir`, by name.
pub fn statement_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml")
            && let Some(stem) = path.file_stem()
        {
            names.push(stem.to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_missing_ones_named() {
        let s = Statement {
            description: String::new(),
            status: Status::Investigating,
            impact: Impact::Major,
            audiences: vec!["customers".into()],
            title: "Outage in {regions}".into(),
            message: "Ref {incident}; next update at {eta}. {{literal}}".into(),
            audience_messages: BTreeMap::new(),
            links: vec![],
        };
        assert_eq!(
            s.placeholders().into_iter().collect::<Vec<_>>(),
            ["eta", "incident", "regions"]
        );
        let mut values = BTreeMap::from([
            ("incident".to_string(), "INC-7".to_string()),
            ("regions".to_string(), "North, East".to_string()),
        ]);
        let e = s.fill(&values).expect_err("eta missing").to_string();
        assert!(e.contains("{eta}") && e.contains("--set eta="), "{e}");
        values.insert("eta".into(), "18:00 UTC".into());
        let f = s.fill(&values).expect("filled");
        assert_eq!(f.title, "Outage in North, East");
        assert_eq!(f.message, "Ref INC-7; next update at 18:00 UTC. {literal}");
    }
}
