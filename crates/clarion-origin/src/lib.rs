//! The status page's origins: where its files are published, each a [`Channel`]
//! of a `type = "status_page"` target, so that each has its own stream, retries
//! and breaker, and one origin being down delays nothing else.
//!
//! A delivery to an origin publishes the page as it is *now*, not as it was at the
//! update: the channel asks its [`Source`] (the daemon's page state) for the site
//! once the update is in it, and writes the files that changed since its last
//! publication, incident pages first and `index.html` last, so that a reader never
//! follows a link to a page that is not there yet. After a failure, or at start, it
//! writes every file: a stopped origin catches up in one go. A reader never sees a
//! half-written file: a directory gets a temporary file, fsynced, then renamed over
//! the old one; object storage gets whole objects.
//!
//! An origin never retries on its own (the daemon does) and never deletes a file:
//! an incident that leaves the page's history keeps its page as last written.

mod dir;
mod s3;

pub use s3::S3Config;

use clarion_core::{Channel, Delivery, DeliveryError, Outcome, Receipt, SecretResolver};
use clarion_statuspage::{Pages, Site, Source};
use serde::Deserialize;
use sha2::Digest as _;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The keys of a `type = "status_page"` target besides the daemon's: exactly one
/// of `directory` and `s3`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// A local directory the page is written into (served by any web server).
    /// Created if missing; files are written to a temporary name, fsynced and
    /// renamed.
    #[serde(default)]
    pub directory: Option<PathBuf>,
    /// S3-compatible object storage (`[targets.NAME.s3]`).
    #[serde(default)]
    pub s3: Option<S3Config>,
    /// The `Cache-Control` an object is stored with (object storage only; a web
    /// server serving a directory sets its own). Default `public, max-age=60`.
    #[serde(default = "default_cache_control")]
    pub cache_control: String,
    /// How long one publication may take (default 30s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Where the page comes from: set by the daemon when it runs the target
    /// (`clarion check-config` builds the channel without one).
    #[serde(skip)]
    pub source: SourceSlot,
}

fn default_cache_control() -> String {
    "public, max-age=60".into()
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The page state an origin renders from, handed over once the daemon has one.
/// Shared by the config a target is built from and the channels built from it.
#[derive(Clone, Default)]
pub struct SourceSlot(Arc<OnceLock<Arc<dyn Source>>>);

impl SourceSlot {
    /// Hands the page state over; a slot keeps the first it is given.
    pub fn attach(&self, source: Arc<dyn Source>) {
        let _ = self.0.set(source);
    }

    fn get(&self) -> Option<&Arc<dyn Source>> {
        self.0.get()
    }
}

impl fmt::Debug for SourceSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "attached"
        } else {
            "unattached"
        })
    }
}

/// Why an origin cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum OriginConfigError {
    #[error("a status page target needs exactly one of `directory` and `[s3]`")]
    Which,
    #[error("directory: {0}")]
    Directory(String),
    #[error("s3.{0}")]
    S3(String),
    #[error("timeout: must be more than zero")]
    Timeout,
    #[error("cache_control: {0}")]
    CacheControl(String),
}

/// Where files go.
#[derive(Debug)]
enum Sink {
    Directory(dir::Directory),
    S3(s3::Bucket),
}

impl Sink {
    async fn put(&self, file: &clarion_statuspage::File) -> Result<(), DeliveryError> {
        match self {
            Sink::Directory(d) => d.put(file).await,
            Sink::S3(b) => b.put(file).await,
        }
    }

    async fn check(&self) -> Result<(), DeliveryError> {
        match self {
            Sink::Directory(d) => d.check().await,
            Sink::S3(b) => b.check().await,
        }
    }
}

/// One origin, ready to publish.
pub struct OriginChannel {
    name: String,
    sink: Sink,
    source: SourceSlot,
    timeout: Duration,
    /// What this origin holds, by path (a hash of each file), since its last
    /// complete publication; `None` before the first and after a failure, when
    /// everything is written again. Held across a rendering and its writes, so
    /// that a later rendering is never overwritten by an earlier one.
    published: tokio::sync::Mutex<Option<HashMap<String, [u8; 32]>>>,
}

impl fmt::Debug for OriginChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OriginChannel")
            .field("name", &self.name)
            .field("sink", &self.sink)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Builds an origin from its config, resolving its credentials. Does no I/O.
pub fn build(
    name: &str,
    config: &OriginConfig,
    secrets: &dyn SecretResolver,
) -> Result<OriginChannel, OriginConfigError> {
    if config.timeout.is_zero() {
        return Err(OriginConfigError::Timeout);
    }
    if config.cache_control.trim().is_empty()
        || config
            .cache_control
            .chars()
            .any(|c| c.is_control() || !c.is_ascii())
    {
        return Err(OriginConfigError::CacheControl(
            "must be a header value like `public, max-age=60`".into(),
        ));
    }
    let sink = match (&config.directory, &config.s3) {
        (Some(d), None) => Sink::Directory(dir::Directory::new(d)?),
        (None, Some(s)) => Sink::S3(s3::Bucket::build(
            s,
            &config.cache_control,
            config.timeout,
            secrets,
        )?),
        _ => return Err(OriginConfigError::Which),
    };
    Ok(OriginChannel {
        name: name.to_string(),
        sink,
        source: config.source.clone(),
        timeout: config.timeout,
        published: tokio::sync::Mutex::new(None),
    })
}

/// How many times one delivery renders and writes again because the page moved
/// on while it was being written (another replica's publication, say).
const MAX_ROUNDS: usize = 3;

impl OriginChannel {
    /// Writes the files of `site` that differ from `held`, pages first and the
    /// index last; `held` is updated file by file.
    async fn write(
        &self,
        site: &Site,
        held: &mut HashMap<String, [u8; 32]>,
    ) -> Result<usize, DeliveryError> {
        let mut order: Vec<&clarion_statuspage::File> = site.files.iter().collect();
        // Incident pages, then the API and the feed, then the index.
        order.sort_by_key(|f| {
            (
                match f.path.as_str() {
                    p if p.starts_with("incidents/") => 0,
                    "index.html" => 2,
                    _ => 1,
                },
                f.path.clone(),
            )
        });
        let mut written = 0;
        for file in order {
            let hash: [u8; 32] = sha2::Sha256::digest(&file.body).into();
            if held.get(&file.path) == Some(&hash) {
                continue;
            }
            self.sink.put(file).await?;
            held.insert(file.path.clone(), hash);
            written += 1;
        }
        Ok(written)
    }

    async fn publish(&self, delivery: &Delivery) -> Result<Receipt, DeliveryError> {
        let Some(source) = self.source.get() else {
            return Err(DeliveryError::permanent(
                "this status page origin has no page to publish: it is published by a running daemon (`clarion run`), not by a command",
            )
            .with_code("no_source"));
        };
        let mut published = self.published.lock().await;
        let pages = match &*published {
            Some(_) => Pages::Only(vec![delivery.update.incident_id.clone()]),
            None => Pages::All,
        };
        // A copy (a few dozen hashes): a rendering that fails leaves what is held
        // as it was, a write that fails leaves nothing held.
        let mut held = published.clone().unwrap_or_default();
        let mut written = 0;
        for round in 1..=MAX_ROUNDS {
            let rendered = source.render(&delivery.update, &pages).await?;
            match self.write(&rendered.site, &mut held).await {
                Ok(n) => written += n,
                Err(e) => {
                    *published = None;
                    return Err(e);
                }
            }
            // Someone else's state reached the page while this was written (a
            // replica's publication of another incident): write again, so that
            // the last write here is never older than what was recorded.
            if round == MAX_ROUNDS || !source.moved_since(rendered.version).await? {
                break;
            }
        }
        *published = Some(held);
        Ok(Receipt {
            provider_id: Some(format!("{written} file(s) written")),
        })
    }
}

#[async_trait::async_trait]
impl Channel for OriginChannel {
    async fn send(&self, delivery: &Delivery) -> Outcome {
        let result = match tokio::time::timeout(self.timeout, self.publish(delivery)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::retryable(
                format!(
                    "publishing to origin `{}` took longer than {}s",
                    self.name,
                    self.timeout.as_secs()
                ),
                None,
            )
            .with_code("timeout")),
        };
        Outcome::single(result)
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        self.sink.check().await
    }
}

/// Refuses a path that is not a plain relative path of the site (the renderer
/// never makes one; this is the origin's own guard).
pub(crate) fn check_path(path: &str) -> Result<(), DeliveryError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.starts_with('.'));
    if ok {
        Ok(())
    } else {
        Err(DeliveryError::permanent(format!(
            "refusing to write `{path}`: not a plain relative path"
        )))
    }
}

#[cfg(test)]
mod tests;
