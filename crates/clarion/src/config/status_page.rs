//! `[status_page]`: the public status page (docs/status-page.md): what it is
//! called and where it is read, the audiences it shows, its components, the topic
//! its incidents' public timelines are kept in, and the daemon's own listener.
//! Its origins are targets (`type = "status_page"`).

use super::target::*;
use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use std::collections::BTreeSet;

/// `[status_page]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatusPageConfig {
    /// The page's id in its JSON API (`page.id`), e.g. `"example"`.
    pub id: String,
    /// The page's name: its heading, the feed's title, the API's `page.name`.
    pub name: String,
    /// Where visitors read the page, without a trailing `/`, e.g.
    /// `"https://status.example.com"`: incident links, the feed and the API's
    /// `shortlink`s start with it. Host it apart from what it reports on
    /// (docs/status-page.md#hosting).
    pub url: String,
    /// The IANA time zone the API reports as `page.time_zone` (default
    /// `"Etc/UTC"`); the page itself shows UTC.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    /// The audiences whose updates the page shows, in order of preference for
    /// their wording (default `["public"]`). `public` is not a standard audience:
    /// list it in the top-level `audiences` too.
    #[serde(default = "default_audiences")]
    pub audiences: Vec<String>,
    /// A compacted topic of the page's own, keyed by incident id, holding each
    /// incident's public timeline: written by the daemon before an update
    /// resolves, read back at start. Required.
    pub topic: String,
    /// How many resolved incidents and completed maintenances the page lists
    /// (default 25).
    #[serde(default = "default_history")]
    pub history: usize,
    /// How many entries `history.atom` holds, one per update (default 100).
    #[serde(default = "default_feed_entries")]
    pub feed_entries: usize,
    /// An address for the daemon's own listener serving the current page, e.g.
    /// `"0.0.0.0:8080"` (GET and HEAD only). Unset: no listener.
    #[serde(default)]
    pub listen: Option<String>,
    /// The components, in display order (`[[status_page.components]]`).
    #[serde(default)]
    pub components: Vec<ComponentConfig>,
}

/// `[[status_page.components]]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ComponentConfig {
    /// The name updates use in their `components` list, e.g. `"mobile-data"`;
    /// also the component's id in the API.
    pub id: String,
    /// What the page calls it, e.g. `"Mobile data"`.
    pub name: String,
    /// A line shown under its name.
    #[serde(default)]
    pub description: Option<String>,
    /// The group it is listed under, by name (e.g. `"Network"`).
    #[serde(default)]
    pub group: Option<String>,
    /// List it only while it is not operational.
    #[serde(default)]
    pub only_show_if_degraded: bool,
}

fn default_time_zone() -> String {
    "Etc/UTC".into()
}

fn default_audiences() -> Vec<String> {
    vec!["public".into()]
}

fn default_history() -> usize {
    25
}

fn default_feed_entries() -> usize {
    100
}

/// The validated `[status_page]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPageSettings {
    pub page: clarion_statuspage::PageConfig,
    pub topic: String,
    pub listen: Option<std::net::SocketAddr>,
}

/// Checks `[status_page]` against the audiences and the targets: its audiences
/// known, its topic apart from the others, every `status_page` target showing only
/// what the page shows.
pub(super) fn validate_status_page(
    config: Option<&StatusPageConfig>,
    audiences: &BTreeSet<String>,
    source_topic: &str,
    targets: &[TargetConfig],
) -> Result<Option<StatusPageSettings>> {
    let origins: Vec<&TargetConfig> = targets
        .iter()
        .filter(|t| t.kind == ChannelKind::StatusPage)
        .collect();
    let Some(c) = config else {
        if let Some(t) = origins.first() {
            bail!(
                "targets.{}: a status_page target publishes the page that `[status_page]` describes; add that section",
                t.name
            );
        }
        return Ok(None);
    };
    let at = |e: String| anyhow!("status_page.{e}");
    for a in &c.audiences {
        if !audiences.contains(a) {
            bail!(
                "status_page.audiences: `{a}` is not a standard audience nor listed in the top-level `audiences` (add it there, e.g. audiences = [\"{a}\"])"
            );
        }
    }
    if c.topic.trim().is_empty() {
        bail!("status_page.topic: must not be empty");
    }
    if c.topic == source_topic {
        bail!(
            "status_page.topic: must differ from kafka.topic, or its records would be consumed as updates"
        );
    }
    let listen = match &c.listen {
        None => None,
        Some(l) => Some(l.parse().map_err(|e| {
            anyhow!("status_page.listen: `{l}` is not an address like 0.0.0.0:8080: {e}")
        })?),
    };
    let page = clarion_statuspage::PageConfig {
        id: c.id.clone(),
        name: c.name.clone(),
        url: c.url.clone(),
        time_zone: c.time_zone.clone(),
        audiences: c.audiences.clone(),
        components: c
            .components
            .iter()
            .map(|c| clarion_statuspage::Component {
                id: c.id.clone(),
                name: c.name.clone(),
                description: c.description.clone(),
                group: c.group.clone(),
                only_show_if_degraded: c.only_show_if_degraded,
            })
            .collect(),
        history: c.history,
        feed_entries: c.feed_entries,
    };
    page.check().map_err(at)?;
    for t in origins {
        if let Some(a) = t.audiences.iter().find(|a| !c.audiences.contains(*a)) {
            bail!(
                "targets.{}.audiences: `{a}` is not one the page shows (status_page.audiences = {:?}); an origin publishes the page, which shows only those",
                t.name,
                c.audiences
            );
        }
    }
    Ok(Some(StatusPageSettings {
        page,
        topic: c.topic.clone(),
        listen,
    }))
}
