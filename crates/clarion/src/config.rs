//! Configuration: parse (no I/O beyond reading the file), then validate and resolve
//! secrets, then build the targets. Every error names the key it is about and the
//! file it came from, because the person reading it is fixing a config at 3 a.m.
//!
//! Layout: one TOML file (see `config/clarion.toml`), overridden by environment
//! variables `CLARION__SECTION__KEY` (double underscores separate levels). Unknown
//! keys are errors everywhere, so a typo never silently falls back to a default.

mod audiences;
mod build;
mod confirm;
#[cfg(test)]
mod confirm_tests;
mod daemon;
mod directory;
mod kafka;
mod raw;
mod request;
mod retry;
mod settings;
mod status_page;
mod target;
mod targets;
mod templates;
#[cfg(test)]
mod tests;

pub use audiences::*;
pub use build::*;
pub use confirm::*;
pub use daemon::*;
pub use directory::*;
pub use kafka::*;
pub use raw::*;
pub use request::*;
pub use retry::*;
pub use settings::*;
pub use status_page::*;
pub use target::*;

pub use clarion_core::STANDARD_AUDIENCES;

use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;

/// Reads the file and the `CLARION__…` environment into a [`RawConfig`].
pub fn load(path: &Path) -> Result<RawConfig> {
    if !path.exists() {
        bail!("config file {} does not exist", path.display());
    }
    // The config library would call a directory "not found", which sends the reader
    // looking for a typo in a path that is there.
    if path.is_dir() {
        bail!(
            "config file {} is a directory; give the TOML file in it, e.g. {}",
            path.display(),
            path.join("clarion.toml").display()
        );
    }
    let cfg = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("CLARION")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .with_context(|| format!("cannot read {}", path.display()))?;
    cfg.try_deserialize::<RawConfig>()
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Parses a TOML string (tests, the demo).
pub fn parse_str(toml: &str) -> Result<RawConfig> {
    let cfg = config::Config::builder()
        .add_source(config::File::from_str(toml, config::FileFormat::Toml))
        .build()?;
    Ok(cfg.try_deserialize::<RawConfig>()?)
}
