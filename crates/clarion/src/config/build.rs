//! Building a target's channels from validated config: the one `match` over
//! channel kinds (`build_one`), a target's provider and its backups in failover
//! order, and the environment-backed secret resolver.

use super::target::*;
use anyhow::{Result, anyhow, bail};
use clarion_core::{Channel, Secret, SecretRef, SecretResolver};
use std::path::PathBuf;
use std::sync::Arc;

/// A provider as built: its name, its channel, and its drill's channel.
#[derive(Debug, Clone)]
pub struct BuiltProvider {
    pub name: Arc<str>,
    pub channel: Arc<dyn Channel>,
    /// The same provider addressing the target's `drill_recipients` only.
    pub drill: Option<Arc<dyn Channel>>,
}

/// Builds every provider of a target, its own first, then its backups in order.
pub fn build_providers(
    target: &TargetConfig,
    secrets: &dyn SecretResolver,
) -> Result<Vec<BuiltProvider>> {
    if target.people.is_some() {
        bail!("a people target has no providers of its own; its legs do");
    }
    let names =
        std::iter::once(&target.provider_name).chain(target.backups.iter().map(|b| &b.name));
    let channels =
        std::iter::once(&target.channel).chain(target.backups.iter().map(|b| &b.channel));
    let mut out = Vec::new();
    for (i, (name, channel)) in names.zip(channels).enumerate() {
        // The target's own provider's errors read as before backups existed.
        let at = |e: anyhow::Error, what: &str| match (i, what) {
            (0, "") => e,
            (0, _) => anyhow!("{what}: {e:#}"),
            _ => anyhow!("backups `{name}`{what}: {e:#}"),
        };
        let built = build_one(&target.name, channel, secrets).map_err(|e| at(e, ""))?;
        let drill = match target.drill.as_ref().and_then(|d| d.channels.get(i)) {
            Some(c) => {
                Some(build_one(&target.name, c, secrets).map_err(|e| at(e, " drill_recipients"))?)
            }
            None => None,
        };
        out.push(BuiltProvider {
            name: name.clone(),
            channel: built,
            drill,
        });
    }
    Ok(out)
}

/// Builds one channel: the one place that matches on channel kinds.
pub(super) fn build_one(
    name: &str,
    channel: &ChannelConfig,
    secrets: &dyn SecretResolver,
) -> Result<Arc<dyn Channel>> {
    Ok(match channel {
        ChannelConfig::Webhook(c) => Arc::new(clarion_webhook::build(name, c, secrets)?),
        ChannelConfig::Email(c) => Arc::new(clarion_email::build(name, c, secrets)?),
        ChannelConfig::Sms(c) => Arc::new(clarion_sms::build(name, c, secrets)?),
        ChannelConfig::Fcm(c) => Arc::new(clarion_push::build_fcm(name, c, secrets)?),
        ChannelConfig::Apns(c) => Arc::new(clarion_push::build_apns(name, c, secrets)?),
        ChannelConfig::StatusPage(c) => Arc::new(clarion_origin::build(name, c, secrets)?),
    })
}

/// Resolves `{ env = … }` from the process environment and `{ file = … }` from disk.
#[derive(Debug, Default)]
pub struct EnvSecrets;

impl SecretResolver for EnvSecrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        match reference {
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Secret::new(v)),
                Ok(_) => Err(format!("environment variable {var} is empty")),
                Err(_) => Err(format!("environment variable {var} is not set")),
            },
            SecretRef::File(path) => {
                let p = PathBuf::from(path);
                match std::fs::read_to_string(&p) {
                    Ok(v) if !v.trim().is_empty() => {
                        Ok(Secret::new(v.trim_end_matches(['\n', '\r'])))
                    }
                    Ok(_) => Err(format!("secret file {path} is empty")),
                    Err(e) => Err(format!("cannot read secret file {path}: {e}")),
                }
            }
            SecretRef::Value(s) => Ok(s.clone()),
        }
    }
}
