//! Clarion's public status page, as files: what the page is (`model`), what it says
//! about the present (`state`), the shown incidents a process holds (`book`), and
//! the files it is published as (`render`): `index.html`, one page per incident,
//! `history.atom`, and the Statuspage-compatible JSON API under `api/v2/`.
//!
//! This crate does no I/O and has no clock: the time a page is written at is
//! handed in, so that the same state and time always give the same files. It sees
//! only [`PublicUpdate`]s, cut from an update for the audiences the page serves;
//! other audiences' wording and the ledger never reach it.

mod api;
mod book;
mod feed;
mod html;
mod model;
mod state;

pub use api::{incident_path, incident_url, status_words};
pub use book::{Book, Entry, Location};
pub use feed::entry_id;
pub use html::{RenderError, ago};
pub use model::{
    Component, MAX_UPDATES, PageConfig, PublicUpdate, TIMELINE_VERSION, Timeline, slug,
};
pub use state::{ComponentState, ComponentStatus, Indicator, Overview};

use clarion_core::{DeliveryError, IncidentUpdate};
use jiff::Timestamp;
use std::sync::Arc;

/// One file of the site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Relative, with `/` (e.g. `api/v2/summary.json`).
    pub path: String,
    pub body: Arc<[u8]>,
    pub content_type: &'static str,
}

/// The files of one rendering, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Site {
    pub files: Vec<File>,
}

impl Site {
    pub fn get(&self, path: &str) -> Option<&File> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// Which incident pages a rendering writes (the index, feed and API always).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pages {
    /// Every shown incident's: after a start or a failed publication, so that an
    /// origin catches up in one go.
    All,
    /// Only these incidents' (the one an update changed).
    Only(Vec<String>),
}

/// The content type of a path by its extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("atom") => "application/atom+xml; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Renders the site for the shown timelines as of `now`.
pub fn render(
    config: &PageConfig,
    shown: &[Arc<Timeline>],
    now: Timestamp,
    pages: &Pages,
) -> Result<Site, RenderError> {
    let overview = Overview::of(config, shown);
    // Newest first everywhere.
    let mut by_recent: Vec<&Arc<Timeline>> = shown.iter().collect();
    by_recent
        .sort_by(|a, b| (b.updated_at(), &b.incident_id).cmp(&(a.updated_at(), &a.incident_id)));
    let incidents: Vec<&Arc<Timeline>> = by_recent
        .iter()
        .copied()
        .filter(|t| !t.is_maintenance())
        .collect();
    let maintenances: Vec<&Arc<Timeline>> = by_recent
        .iter()
        .copied()
        .filter(|t| t.is_maintenance())
        .collect();
    let active: Vec<&Arc<Timeline>> = incidents.iter().copied().filter(|t| t.is_open()).collect();
    let open_maintenance: Vec<&Arc<Timeline>> = maintenances
        .iter()
        .copied()
        .filter(|t| t.is_open())
        .collect();
    let history: Vec<&Arc<Timeline>> = by_recent
        .iter()
        .copied()
        .filter(|t| !t.is_open())
        .take(config.history)
        .collect();
    let updated_at = overview.updated_at.unwrap_or(Timestamp::UNIX_EPOCH);
    let common = html::Common { config, now };
    let mut files: Vec<File> = Vec::new();
    let mut add = |path: String, body: Vec<u8>| {
        files.push(File {
            content_type: content_type(&path),
            path,
            body: body.into(),
        });
    };
    add(
        "index.html".into(),
        common.index(&overview, &active, &open_maintenance, &history)?,
    );
    add("history.atom".into(), feed::atom(config, shown));
    let api = api::Api::new(config, &overview, updated_at);
    for (path, body) in api.files(&incidents, &maintenances) {
        add(path.into(), body);
    }
    for t in &by_recent {
        let wanted = match pages {
            Pages::All => true,
            Pages::Only(ids) => ids.contains(&t.incident_id),
        };
        if wanted {
            add(incident_path(&t.incident_id), common.incident(t)?);
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Site { files })
}

/// A rendering handed to an origin, with the state version it was made from.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Grows whenever the state changes, so that a publisher can tell whether what
    /// it published is still the latest.
    pub version: u64,
    pub site: Site,
}

/// Where an origin gets the page from: the daemon's page state. An origin is
/// handed one and knows nothing else of where the state comes from.
#[async_trait::async_trait]
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The site as of now, once the state includes `update`; a retryable error
    /// while it does not yet (the update is recorded for the page first).
    async fn render(
        &self,
        update: &IncidentUpdate,
        pages: &Pages,
    ) -> Result<Rendered, DeliveryError>;

    /// After publishing `version`: true when the state has moved on since (so the
    /// publisher writes the page again). Waits until the state is as recent as
    /// what has been recorded for the page so far.
    async fn moved_since(&self, version: u64) -> Result<bool, DeliveryError>;
}

#[cfg(test)]
mod measure;
#[cfg(test)]
mod tests;
