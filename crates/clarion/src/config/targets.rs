//! Checking `[targets.NAME]`: the daemon's keys apart from the channel's, backups,
//! drills and people legs, and every secret reference, all reported in one run.
//!
//! Builds a channel only to check it, with placeholders for unresolved secrets;
//! such a channel is dropped at once and never sends.

use super::build::*;
use super::retry::*;
use super::target::*;
use anyhow::{Result, anyhow, bail};
use clarion_core::{Secret, SecretRef, SecretResolver};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The keys of `[targets.NAME]` that belong to the daemon, not to the channel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TargetCommon {
    #[serde(rename = "type")]
    kind: ChannelKind,
    audiences: Vec<String>,
    #[serde(default)]
    retry: RetryOverride,
    /// Deliveries to this target at once (default 64).
    #[serde(default)]
    concurrency: Option<usize>,
    /// Routing rules (docs/routing.md); none: every update naming one of
    /// `audiences`.
    #[serde(default)]
    rules: Vec<clarion_render::Rule>,
    /// The language this target's recipients read (e.g. `fr-CA`); wins over the
    /// update's per-audience locale.
    #[serde(default)]
    locale: Option<String>,
    /// When a newer update of an incident arrives while an older one still waits
    /// or retries for this target, skip the older one ("superseded by update X").
    /// For status pages and push; never for regulators, who must see every notice.
    #[serde(default)]
    supersede: bool,
    /// Where this target's stream starts when it has no committed position and the
    /// deployment already has history (a target added later): `latest` (default,
    /// the end of the topic) or `earliest` (replay the whole topic to it).
    #[serde(default)]
    start: StartAt,
    /// Stop hammering a target that is down (docs/configuration.md, "breaker").
    #[serde(default)]
    breaker: BreakerConfig,
    /// Updates this target's stream holds at once (default: `daemon.max_in_flight`).
    #[serde(default)]
    max_in_flight: Option<usize>,
    /// The name the target's own provider goes by in logs, dead letters, the ledger
    /// and metrics (default `primary`).
    #[serde(default)]
    provider_name: Option<String>,
    /// Providers of the same kind tried in order when the one before cannot
    /// complete a delivery (docs/backups.md).
    #[serde(default)]
    backups: Vec<serde_json::Value>,
    /// How long a delivery may keep failing transiently at one provider before it
    /// moves to the next (default 30s). Only with `backups`.
    #[serde(default, with = "humantime_serde")]
    failover_after: Option<Duration>,
    /// Who a drill (`clarion drill`) reaches through this target, instead of its
    /// audiences: addresses, numbers or device tokens; for a webhook, one URL.
    #[serde(default)]
    drill_recipients: Vec<String>,
}

/// Channel keys a backup provider takes from the target when it does not set them:
/// who the target reaches does not change with the provider that reaches them.
pub(super) const INHERITED_BY_BACKUPS: [&str; 4] =
    ["recipients", "device_tokens", "lists", "topics"];

/// Channel keys that reach people other than `recipients`/`device_tokens` (an
/// email list per audience, an FCM topic): a drill's channels have none.
pub(super) const AUDIENCE_WIDE_KEYS: [&str; 2] = ["lists", "topics"];

pub(super) const COMMON_KEYS: [&str; 14] = [
    "type",
    "audiences",
    "retry",
    "concurrency",
    "rules",
    "locale",
    "supersede",
    "start",
    "breaker",
    "max_in_flight",
    "provider_name",
    "backups",
    "failover_after",
    "drill_recipients",
];

/// Why a target is invalid: every problem found, each with the key it is at
/// (empty when the message names it), so that one run shows them all.
#[derive(Debug)]
pub(super) enum TargetError {
    Problems(Vec<(String, String)>),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for TargetError {
    fn from(e: anyhow::Error) -> Self {
        TargetError::Other(e)
    }
}

/// Checks one target's keys and, given `secrets`, builds its channel. Reports every
/// problem together: the first the keys or the channel's build refuse, and every
/// secret reference written in the target that cannot be resolved, whatever came
/// first (a bad phone number no longer hides a missing secret, nor the reverse).
pub(super) fn validate_target(
    name: &str,
    value: serde_json::Value,
    audiences: &BTreeSet<String>,
    default_retry: &RetryPolicy,
    secrets: Option<&dyn SecretResolver>,
) -> Result<TargetConfig, TargetError> {
    let Some(secrets) = secrets else {
        return validate_target_keys(name, value, audiences, default_retry)
            .map(|(t, _)| t)
            .map_err(TargetError::Other);
    };
    let missing = missing_secrets(&value, secrets);
    let mut problems = Vec::new();
    match validate_target_keys(name, value, audiences, default_retry) {
        Ok((target, channel_keys)) => {
            problems.extend(check_build(&target, &channel_keys, secrets, &missing));
            if problems.is_empty() && missing.is_empty() {
                return Ok(target);
            }
        }
        Err(e) => problems.push((String::new(), format!("{e:#}"))),
    }
    problems.extend(missing);
    Err(TargetError::Problems(problems))
}

/// Every secret reference written in a target's keys (`{ env = … }`,
/// `{ file = … }`) that cannot be resolved, each at its key, in the order written.
pub(super) fn missing_secrets(
    value: &serde_json::Value,
    secrets: &dyn SecretResolver,
) -> Vec<(String, String)> {
    let mut found = Vec::new();
    references(value, String::new(), &mut found);
    let mut out: Vec<(String, String)> = Vec::new();
    for (key, reference) in found {
        if let Err(e) = secrets.resolve(&reference)
            && !out.iter().any(|(k, _)| *k == key)
        {
            out.push((key, e));
        }
    }
    out
}

/// The secret references in `value`, with their keys.
fn references(value: &serde_json::Value, at: String, out: &mut Vec<(String, SecretRef)>) {
    match value {
        serde_json::Value::Object(map) => {
            if map.len() == 1
                && (map.contains_key("env") || map.contains_key("file"))
                && let Ok(r) = serde_json::from_value::<SecretRef>(value.clone())
            {
                out.push((at, r));
                return;
            }
            for (k, v) in map {
                let key = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                references(v, key, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                references(v, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Builds the channel as `run` would, with a placeholder for each secret that
/// cannot be resolved (`missing`, reported by the caller), and returns what else
/// the build refuses: a bad phone number, a URL, a value out of range.
///
/// The channel crates stop at their first error, so the build runs with a
/// resolver that records each reference it cannot resolve and hands the channel a
/// placeholder instead, letting it go on. The channel built that way is dropped at
/// once: a placeholder never reaches a peer. A build error that names the key of a
/// missing secret is the placeholder's doing (not a valid key, say), and says
/// nothing about the real secret: it is left out.
pub(super) fn check_build(
    target: &TargetConfig,
    channel_keys: &serde_json::Value,
    secrets: &dyn SecretResolver,
    missing: &[(String, String)],
) -> Vec<(String, String)> {
    let recorder = Recorder {
        inner: secrets,
        failed: Mutex::new(Vec::new()),
    };
    // Building resolves secrets and checks channel-specific values; it does no I/O
    // beyond reading files the config names, so check-config can use it.
    let built = match &target.people {
        None => build_providers(target, &recorder).map(drop),
        Some(p) => p.legs.iter().try_for_each(|l| {
            build_providers(&l.target, &recorder)
                .map(drop)
                .map_err(|e| anyhow!("{}: {e:#}", l.kind.as_str()))
        }),
    };
    let failed = recorder
        .failed
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut out = Vec::new();
    // A reference the channel asked for that is not written in the target's keys
    // (none today): reported by its own name.
    for (reference, error) in &failed {
        let mut keys = Vec::new();
        find_reference(channel_keys, reference, String::new(), &mut keys);
        if keys.is_empty()
            && !out
                .iter()
                .any(|(k, _): &(String, String)| *k == reference.to_string())
        {
            out.push((reference.to_string(), error.clone()));
        }
    }
    if let Err(e) = built {
        let text = format!("{e:#}");
        let placeholders_fault = !failed.is_empty()
            && missing.iter().any(|(key, _)| {
                let leaf = key.rsplit('.').next().unwrap_or(key);
                let leaf = leaf.split('[').next().unwrap_or(leaf);
                text.contains(leaf)
            });
        if !placeholders_fault {
            out.push((String::new(), text));
        }
    }
    out
}

/// A stand-in secret that passes the channels' format checks (it is a valid
/// Standard Webhooks secret: `whsec_` and 32 zero bytes), so that building goes on
/// to the next reference. Only [`check_build`] uses it, and never sends with it.
pub(super) const PLACEHOLDER_SECRET: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

/// Resolves through `inner`, recording every reference that fails.
pub(super) struct Recorder<'a> {
    inner: &'a dyn SecretResolver,
    failed: Mutex<Vec<(SecretRef, String)>>,
}

impl SecretResolver for Recorder<'_> {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        self.inner.resolve(reference).or_else(|e| {
            // Never skip the record: an unrecorded failure would let the build pass
            // on a placeholder. A poisoned lock still holds a usable list.
            self.failed
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((reference.clone(), e));
            Ok(Secret::new(PLACEHOLDER_SECRET))
        })
    }
}

/// The keys (`secrets[0]`, `auth_token`) at which `reference` is written in a
/// target's channel keys.
pub(super) fn find_reference(
    value: &serde_json::Value,
    reference: &SecretRef,
    at: String,
    out: &mut Vec<String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            let is_it = map.len() == 1
                && match reference {
                    SecretRef::Env(v) => map.get("env").and_then(|x| x.as_str()) == Some(v),
                    SecretRef::File(p) => map.get("file").and_then(|x| x.as_str()) == Some(p),
                    SecretRef::Value(_) => false,
                };
            if is_it {
                out.push(at);
                return;
            }
            for (k, v) in map {
                let key = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                find_reference(v, reference, key, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                find_reference(v, reference, format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Checks one target's keys without resolving secrets; returns the target and its
/// keys as written.
pub(super) fn validate_target_keys(
    name: &str,
    value: serde_json::Value,
    audiences: &BTreeSet<String>,
    default_retry: &RetryPolicy,
) -> Result<(TargetConfig, serde_json::Value)> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("target names must be non-empty without whitespace");
    }
    let serde_json::Value::Object(mut map) = value else {
        bail!("must be a table");
    };
    // As written, so that a missing secret is reported at its key, in a backup too.
    let written = serde_json::Value::Object(map.clone());
    // A confirmation request (docs/confirmations.md): a people target's applies
    // to its legs' deliveries.
    let confirm = super::request::take_request(&mut map)?;
    if map.get("type").and_then(|t| t.as_str()) == Some("people") {
        let mut target = validate_people(name, map, audiences, default_retry)?;
        if confirm.is_some() {
            target.confirm = confirm;
            for leg in target.people.iter_mut().flat_map(|p| p.legs.iter_mut()) {
                leg.target.confirm = confirm;
            }
        }
        return Ok((target, written));
    }
    // Split the daemon's keys from the channel's, so that each side can reject
    // unknown keys with its own list of what is allowed.
    let mut common = serde_json::Map::new();
    for k in COMMON_KEYS {
        if let Some(v) = map.remove(k) {
            common.insert(k.to_string(), v);
        }
    }
    if !common.contains_key("type") {
        let kinds: Vec<&str> = ChannelKind::ALL.iter().map(|k| k.as_str()).collect();
        bail!("type: missing (one of: {})", kinds.join(", "));
    }
    // `retry` is the daemon's policy table. The SMS HTTP gateway's list of statuses
    // used to be called `retry` too and was read as a policy (`retry = [429]` meant
    // max_attempts = 429); say where that list lives now.
    if let Some(retry) = common.get("retry").filter(|r| !r.is_object()) {
        if common.get("type").and_then(|t| t.as_str()) == Some("sms") {
            bail!(
                "retry: is this target's retry policy, a table {RETRY_KEYS}; the HTTP \
                 gateway's statuses to retry are `retry_statuses`, e.g. retry_statuses = [429, 503]"
            );
        }
        bail!("retry: must be a table {RETRY_KEYS}, not {retry}");
    }
    let common: TargetCommon = serde_json::from_value(serde_json::Value::Object(common))?;
    if common.audiences.is_empty() {
        bail!("audiences: must list at least one audience");
    }
    for a in &common.audiences {
        if !audiences.contains(a) {
            bail!(
                "audiences: `{a}` is not a standard audience nor listed in the top-level `audiences`"
            );
        }
    }
    let retry = default_retry.apply(&common.retry, "retry")?;
    let concurrency = common.concurrency.unwrap_or(64);
    if concurrency == 0 {
        bail!("concurrency: must be at least 1");
    }
    if common.max_in_flight == Some(0) {
        bail!("max_in_flight: must be at least 1");
    }
    if common.breaker.failures == 0 {
        bail!("breaker.failures: must be at least 1");
    }
    if common.breaker.probe_interval.is_zero() || common.breaker.outage_budget.is_zero() {
        bail!("breaker: probe_interval and outage_budget must be more than zero");
    }
    let rest = serde_json::Value::Object(map);
    let channel = channel_config(common.kind, rest.clone())?;
    // The channel keys of each provider, for the drill's copies of them.
    let mut written_channels = vec![rest.clone()];
    let provider_name: Arc<str> = Arc::from(common.provider_name.as_deref().unwrap_or("primary"));
    let mut backups = Vec::new();
    let mut names = BTreeSet::from([provider_name.to_string()]);
    for (i, b) in common.backups.into_iter().enumerate() {
        let at = format!("backups[{i}]");
        let serde_json::Value::Object(mut b) = b else {
            bail!("{at}: must be a table");
        };
        let name = match b.remove("name") {
            Some(serde_json::Value::String(n)) if valid_provider_name(&n) => n,
            Some(n) => {
                bail!("{at}.name: `{n}` is not a provider name (letters, digits, `-`, `_`, `.`)")
            }
            None => bail!(
                "{at}.name: missing (the name the provider goes by in logs, dead letters and the ledger)"
            ),
        };
        if !names.insert(name.clone()) {
            bail!(
                "{at}.name: `{name}` is used twice in this target (`provider_name` is `{provider_name}`)"
            );
        }
        if let Some(k) = COMMON_KEYS.iter().find(|k| b.contains_key(**k)) {
            bail!("{at}.{k}: belongs to the target, not to one of its providers");
        }
        for key in INHERITED_BY_BACKUPS {
            if let (false, Some(v)) = (b.contains_key(key), rest.get(key)) {
                b.insert(key.to_string(), v.clone());
            }
        }
        let keys = serde_json::Value::Object(b);
        let channel = channel_config(common.kind, keys.clone())
            .map_err(|e| anyhow!("{at} (`{name}`): {e}"))?;
        written_channels.push(keys);
        backups.push(ProviderConfig {
            name: Arc::from(name.as_str()),
            channel,
        });
    }
    if !valid_provider_name(&provider_name) {
        bail!(
            "provider_name: `{provider_name}` is not a provider name (letters, digits, `-`, `_`, `.`)"
        );
    }
    if common.failover_after.is_some() && backups.is_empty() {
        bail!("failover_after: only means something with `backups` (providers to fail over to)");
    }
    if let Some(l) = &common.locale {
        if l.is_empty()
            || !l
                .split('-')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            bail!("locale: `{l}` is not a language tag like `fr` or `fr-CA`");
        }
    }
    let target = TargetConfig {
        name: Arc::from(name),
        kind: common.kind,
        audiences: common.audiences.into_iter().collect(),
        retry,
        concurrency,
        rules: common.rules,
        locale: common.locale,
        supersede: common.supersede,
        start: common.start,
        breaker: common.breaker,
        max_in_flight: common.max_in_flight,
        channel,
        provider_name,
        backups,
        failover_after: common.failover_after.unwrap_or(DEFAULT_FAILOVER_AFTER),
        drill: None,
        people: None,
        confirm: None,
        escalation: None,
    };
    let drill = drill_config(&target, common.drill_recipients, written_channels)?;
    Ok((
        TargetConfig {
            drill,
            confirm,
            ..target
        },
        written,
    ))
}

/// The keys of a `type = "people"` target (docs/backups.md#people-targets): the
/// daemon's own, `fallback`, and one table per leg.
pub(super) const PEOPLE_KEYS: [&str; 11] = [
    "type",
    "audiences",
    "retry",
    "concurrency",
    "rules",
    "locale",
    "start",
    "breaker",
    "max_in_flight",
    "fallback",
    "people_per_batch",
];

/// What a people target's legs take from it unless they set their own.
pub(super) const INHERITED_BY_LEGS: [&str; 3] = ["retry", "concurrency", "breaker"];

/// Keys of an ordinary target that a leg may not set: they belong to the people
/// target, which decides who is addressed and when.
pub(super) const NOT_IN_A_LEG: [&str; 7] = [
    "audiences",
    "rules",
    "supersede",
    "start",
    "max_in_flight",
    "drill_recipients",
    "locale",
];

/// Checks a `type = "people"` target: its audience (exactly one), its `fallback`
/// order, and each leg as an ordinary target of the leg's channel (named
/// `TARGET.KIND`) whose channel addresses directory members only.
pub(super) fn validate_people(
    name: &str,
    mut map: serde_json::Map<String, serde_json::Value>,
    audiences: &BTreeSet<String>,
    default_retry: &RetryPolicy,
) -> Result<TargetConfig> {
    use crate::directory::AddressKind;
    for (key, why) in [
        (
            "supersede",
            "a people target walks every member for every update; skipping updates would leave people with an older one",
        ),
        (
            "backups",
            "backups belong to a leg: `[[targets.NAME.sms.backups]]`",
        ),
        (
            "provider_name",
            "provider names belong to a leg: `[targets.NAME.sms] provider_name = …`",
        ),
        (
            "failover_after",
            "failover belongs to a leg: `[targets.NAME.sms] failover_after = …`",
        ),
        (
            "drill_recipients",
            "a people target is not drilled itself; drill the channels its legs use through ordinary targets",
        ),
    ] {
        if map.contains_key(key) {
            bail!("{key}: {why}");
        }
    }
    let fallback: Vec<AddressKind> = match map.remove("fallback") {
        None => bail!(
            "fallback: missing (the channels to try for each person, in order, e.g. fallback = [\"push\", \"sms\", \"email\"])"
        ),
        Some(serde_json::Value::Array(list)) => {
            let mut kinds = Vec::new();
            for v in list {
                let Some(k) = v.as_str() else {
                    bail!("fallback: `{v}` is not one of push, sms, email");
                };
                let kind: AddressKind = k.parse().map_err(|e| anyhow!("fallback: {e}"))?;
                if kinds.contains(&kind) {
                    bail!("fallback: `{k}` is listed twice");
                }
                kinds.push(kind);
            }
            if kinds.is_empty() {
                bail!("fallback: must list at least one of push, sms, email");
            }
            kinds
        }
        Some(v) => bail!("fallback: must be a list like [\"push\", \"sms\", \"email\"], not {v}"),
    };
    let mut legs_written = BTreeMap::new();
    for kind in AddressKind::ALL {
        if let Some(v) = map.remove(kind.as_str()) {
            if !fallback.contains(&kind) {
                bail!(
                    "{}: a leg that `fallback` does not list would never be used; add it to fallback or remove it",
                    kind.as_str()
                );
            }
            legs_written.insert(kind, v);
        }
    }
    if let Some(k) = map.keys().find(|k| !PEOPLE_KEYS.contains(&k.as_str())) {
        bail!(
            "{k}: unknown key for a people target (known: {}, and one table per leg: push, sms, email)",
            PEOPLE_KEYS.join(", ")
        );
    }
    let people_audience = match map.get("audiences") {
        Some(serde_json::Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(serde_json::Value::Array(a)) if a.len() > 1 => bail!(
            "audiences: a people target addresses the members of one audience, not {}; use one people target per audience",
            a.len()
        ),
        _ => bail!("audiences: must name the one directory audience this target addresses"),
    };
    let batch = match map.remove("people_per_batch") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=10_000) => Some(n as usize),
            _ => bail!("people_per_batch: must be a whole number from 1 to 10000, not {v}"),
        },
    };
    let mut legs = Vec::new();
    for kind in &fallback {
        let at = kind.as_str();
        let Some(leg) = legs_written.remove(kind) else {
            bail!(
                "{at}: `fallback` lists {at} but the target has no `[targets.{name}.{at}]` table for its channel"
            );
        };
        let serde_json::Value::Object(mut leg) = leg else {
            bail!("{at}: must be a table");
        };
        if let Some(k) = NOT_IN_A_LEG.iter().find(|k| leg.contains_key(**k)) {
            bail!("{at}.{k}: belongs to the people target, not to one of its legs");
        }
        let kinds: &[&str] = match kind {
            AddressKind::Push => &["apns", "fcm"],
            AddressKind::Sms => &["sms"],
            AddressKind::Email => &["email"],
        };
        match leg.get("type").and_then(|t| t.as_str()) {
            Some(t) if kinds.contains(&t) => {}
            None if kinds.len() == 1 => {
                leg.insert("type".into(), serde_json::json!(kinds[0]));
            }
            Some(t) => bail!(
                "{at}.type: `{t}` cannot carry {at} addresses (one of: {})",
                kinds.join(", ")
            ),
            None => bail!("{at}.type: missing (one of: {})", kinds.join(", ")),
        }
        leg.insert("audiences".into(), serde_json::json!([people_audience]));
        // The channel's own recipients key, which its config requires: empty, as
        // a leg's recipients come with each delivery.
        let own = match leg.get("type").and_then(|t| t.as_str()) {
            Some("apns") | Some("fcm") => "device_tokens",
            _ => "recipients",
        };
        leg.entry(own).or_insert_with(|| serde_json::json!({}));
        if let Some(l) = map.get("locale") {
            leg.insert("locale".into(), l.clone());
        }
        for key in INHERITED_BY_LEGS {
            if let (false, Some(v)) = (leg.contains_key(key), map.get(key)) {
                leg.insert(key.to_string(), v.clone());
            }
        }
        let leg_name = format!("{name}.{at}");
        let (mut target, _) = validate_target_keys(
            &leg_name,
            serde_json::Value::Object(leg),
            audiences,
            default_retry,
        )
        .map_err(|e| anyhow!("{at}: {e}"))?;
        mark_directory(&mut target.channel);
        for b in &mut target.backups {
            mark_directory(&mut b.channel);
        }
        legs.push(LegConfig {
            kind: *kind,
            target,
        });
    }
    // The people target's own keys, checked as an ordinary target's are.
    let mut common = map.clone();
    common.insert("type".into(), serde_json::json!("people"));
    let common: TargetCommon = serde_json::from_value(serde_json::Value::Object(common))?;
    let retry = default_retry.apply(&common.retry, "retry")?;
    let concurrency = common.concurrency.unwrap_or(64);
    if concurrency == 0 {
        bail!("concurrency: must be at least 1");
    }
    if common.max_in_flight == Some(0) {
        bail!("max_in_flight: must be at least 1");
    }
    if !audiences.contains(&people_audience) {
        bail!(
            "audiences: `{people_audience}` is not a standard audience nor listed in the top-level `audiences`"
        );
    }
    let first = &legs[0].target;
    Ok(TargetConfig {
        name: Arc::from(name),
        kind: ChannelKind::People,
        audiences: BTreeSet::from([people_audience.clone()]),
        retry,
        concurrency,
        rules: common.rules,
        locale: common.locale,
        supersede: false,
        start: common.start,
        breaker: common.breaker,
        max_in_flight: common.max_in_flight,
        channel: first.channel.clone(),
        provider_name: Arc::from("people"),
        backups: Vec::new(),
        failover_after: DEFAULT_FAILOVER_AFTER,
        drill: None,
        people: Some(PeopleConfig {
            audience: people_audience,
            legs,
            per_batch: batch,
        }),
        confirm: None,
        escalation: None,
    })
}

/// Marks a leg's channel as addressing directory members only: it may list no
/// recipients of its own.
pub(super) fn mark_directory(channel: &mut ChannelConfig) {
    match channel {
        ChannelConfig::Email(c) => c.directory = true,
        ChannelConfig::Sms(c) => c.set_directory(true),
        ChannelConfig::Fcm(c) => c.directory = true,
        ChannelConfig::Apns(c) => c.directory = true,
        // Not a leg's channel kind (`validate_people` allows none).
        ChannelConfig::Webhook(_) | ChannelConfig::StatusPage(_) => {}
    }
}

/// The drill's copy of each provider's channel: `drill_recipients` for every
/// audience the target serves, or, for a webhook, as its one URL.
pub(super) fn drill_config(
    target: &TargetConfig,
    recipients: Vec<String>,
    channels: Vec<serde_json::Value>,
) -> Result<Option<DrillConfig>> {
    if recipients.is_empty() {
        return Ok(None);
    }
    let key = match target.kind {
        ChannelKind::Webhook => "url",
        ChannelKind::Email | ChannelKind::Sms => "recipients",
        ChannelKind::Fcm | ChannelKind::Apns => "device_tokens",
        ChannelKind::People | ChannelKind::Escalation => bail!(
            "drill_recipients: a people or escalation target is not drilled itself; drill the channels it uses through ordinary targets"
        ),
        ChannelKind::StatusPage => bail!(
            "drill_recipients: a status page origin publishes the public page, which a drill never reaches"
        ),
    };
    let value = if target.kind == ChannelKind::Webhook {
        let [url] = recipients.as_slice() else {
            bail!(
                "drill_recipients: a webhook target's drill goes to one URL (a receiver that is not the real endpoint), not {}",
                recipients.len()
            );
        };
        serde_json::Value::String(url.clone())
    } else {
        serde_json::Value::Object(
            target
                .audiences
                .iter()
                .map(|a| (a.clone(), serde_json::json!(recipients)))
                .collect(),
        )
    };
    let mut out = Vec::new();
    for (i, keys) in channels.into_iter().enumerate() {
        let serde_json::Value::Object(mut keys) = keys else {
            continue;
        };
        keys.insert(key.to_string(), value.clone());
        for k in AUDIENCE_WIDE_KEYS {
            keys.remove(k);
        }
        let at = if i == 0 {
            "drill_recipients".to_string()
        } else {
            format!("drill_recipients (with backups[{}])", i - 1)
        };
        out.push(
            channel_config(target.kind, serde_json::Value::Object(keys))
                .map_err(|e| anyhow!("{at}: {e}"))?,
        );
    }
    Ok(Some(DrillConfig {
        recipients,
        channels: out,
    }))
}

/// A channel's keys, read as its kind's config (unknown keys rejected).
pub(super) fn channel_config(kind: ChannelKind, keys: serde_json::Value) -> Result<ChannelConfig> {
    Ok(match kind {
        ChannelKind::Webhook => ChannelConfig::Webhook(serde_json::from_value(keys)?),
        ChannelKind::Email => ChannelConfig::Email(serde_json::from_value(keys)?),
        ChannelKind::Sms => ChannelConfig::Sms(serde_json::from_value(keys)?),
        ChannelKind::Fcm => ChannelConfig::Fcm(serde_json::from_value(keys)?),
        ChannelKind::Apns => ChannelConfig::Apns(serde_json::from_value(keys)?),
        ChannelKind::StatusPage => ChannelConfig::StatusPage(serde_json::from_value(keys)?),
        ChannelKind::People => bail!("`people` has no channel of its own; its legs do"),
        ChannelKind::Escalation => {
            bail!("`escalation` has no channel of its own; its steps' channels do")
        }
    })
}

pub(super) fn valid_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
