//! Confirmations (docs/confirmations.md): `[confirm]` (the inbound listener, the
//! tokens' secret and the state topic), a confirmation request (`confirm = {
//! require, within }` on a target or an audience), and `[escalations.NAME]`
//! policies with the `type = "escalation"` targets that run them.

use super::request::*;
use super::target::*;
use anyhow::{Result, anyhow, bail};
use clarion_core::{Secret, SecretRef, SecretResolver};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// `[confirm]`: where recipients' confirmations and providers' callbacks come in,
/// and where the state of every confirmation request is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmConfig {
    /// The inbound listener's address, e.g. `"0.0.0.0:8443"`: the confirmation
    /// pages and the providers' callbacks, never the metrics (a listener of its
    /// own, so that it can be exposed to the internet and the metrics not).
    pub listen: String,
    /// The listener's address as recipients and providers reach it, e.g.
    /// `"https://notify.example.com"` (behind a TLS-terminating proxy): every link
    /// and callback URL starts with it, and providers' signatures are checked
    /// against it. `https` unless the host is loopback.
    pub public_url: url::Url,
    /// The key that signs tokens (HMAC-SHA256), at least 32 bytes, e.g.
    /// `{ env = "CLARION_CONFIRM_SECRET" }`. Changing it invalidates every link,
    /// code and call callback still out.
    pub secret: SecretRef,
    /// A compacted topic holding every open confirmation request: who was asked,
    /// who confirmed, each escalation's steps and timers (docs/confirmations.md).
    /// Create it compacted, with as many partitions as the source topic. Holds
    /// the addresses an escalation sends to: give it the directory's ACLs.
    pub topic: String,
    /// Reverse proxies whose `X-Forwarded-For`, `-Proto` and `-Host` are believed
    /// (addresses or CIDR networks, e.g. `["10.0.0.0/8"]`). Empty (default): the
    /// peer is the client, whatever it sends.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Requests per minute one client address may make (default 60); past it,
    /// `429`. Providers' callbacks count too: list their networks' proxies, not
    /// the providers, in `trusted_proxies`.
    #[serde(default = "default_rate_per_minute")]
    pub rate_per_minute: u32,
    /// Requests one client may make at once above the rate (default 20).
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// The largest request body read, in bytes (default 16384); a larger one is
    /// refused with `413` before it is read.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_rate_per_minute() -> u32 {
    60
}
fn default_burst() -> u32 {
    20
}
fn default_max_body_bytes() -> usize {
    16 * 1024
}

/// The validated `[confirm]`.
#[derive(Clone)]
pub struct ConfirmSettings {
    pub listen: std::net::SocketAddr,
    pub public_url: url::Url,
    /// The signing secret; `None` in previews, which resolve no secret.
    pub secret: Option<Secret>,
    pub topic: String,
    pub trusted_proxies: clarion_confirm::forwarded::Trusted,
    pub rate_per_minute: u32,
    pub burst: u32,
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for ConfirmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmSettings")
            .field("listen", &self.listen)
            .field("public_url", &self.public_url.as_str())
            .field("topic", &self.topic)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("rate_per_minute", &self.rate_per_minute)
            .field("burst", &self.burst)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// Who a step reaches: `{ person = "ID" }` or `{ audience = "NAME" }` (the members
/// of a directory audience, as they are when the notice goes out).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Who {
    Person(String),
    Audience(String),
}

/// `[[escalations.NAME.steps]]`: one step of an escalation policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    /// Who this step reaches.
    pub who: Who,
    /// The channels to try for each of them, in order: names of targets (email,
    /// SMS, push or voice) or of people targets' legs (`reach.sms`), each
    /// reaching the person at their address of that kind.
    pub channels: Vec<String>,
    /// How long after a channel's message went out before the next channel (or,
    /// after the last, the next repeat or step) if the person has not confirmed.
    /// A channel that fails (every provider failed; a call busy, failed or not
    /// answered) moves on at once.
    #[serde(with = "humantime_serde")]
    pub wait: Duration,
    /// How many more times the channels are tried, in order, before the next
    /// step (default 0).
    #[serde(default)]
    pub repeats: u32,
}

/// `[escalations.NAME]`: steps run one after the other while the notice's
/// confirmations are short of what it requires.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationConfig {
    pub steps: Vec<StepConfig>,
}

/// A step as validated: its channels known to exist.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub who: StepWho,
    pub channels: Vec<String>,
    pub wait_ms: u64,
    pub repeats: u32,
}

/// [`Who`] as a step records it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepWho {
    Person(String),
    Audience(String),
}

/// The validated confirmation settings: the listener, the requests per audience,
/// the policies and the confirmation deadlines.
#[derive(Debug, Clone, Default)]
pub struct Confirmations {
    pub listener: Option<ConfirmSettings>,
    /// `[audiences.NAME] confirm`: asked of every target serving the audience that
    /// has no `confirm` of its own.
    pub by_audience: BTreeMap<String, ConfirmRequest>,
    /// `[audiences.NAME] confirmed_within`: from the incident's first update to
    /// the audience's first confirmed notice.
    pub deadlines: BTreeMap<String, Duration>,
    pub escalations: BTreeMap<String, Vec<Step>>,
}

impl Confirmations {
    /// What a target asks of its recipients for an update served to `audiences`:
    /// its own request, else the first of its audiences' that has one.
    pub fn request_for(
        &self,
        target: &TargetConfig,
        audiences: &[String],
    ) -> Option<ConfirmRequest> {
        target.confirm.or_else(|| {
            audiences
                .iter()
                .find_map(|a| self.by_audience.get(a).copied())
        })
    }
}

/// The kinds of target a step may reach a person through.
pub const STEP_CHANNEL_KINDS: &str = "email, sms, fcm, apns";

/// Checks `[confirm]` and resolves its secret (when `secrets`).
pub fn validate_listener(
    c: &ConfirmConfig,
    secrets: Option<&dyn SecretResolver>,
    topics: &[&str],
) -> Result<ConfirmSettings> {
    let listen = c
        .listen
        .parse()
        .map_err(|e| anyhow!("confirm.listen: `{}` is not host:port: {e}", c.listen))?;
    let url = &c.public_url;
    let loopback = matches!(url.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
        || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
        || url.host_str() == Some("localhost");
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        s => bail!(
            "confirm.public_url: `{s}` links would carry bearer tokens in clear; use https (http only for a loopback host)"
        ),
    }
    if url.query().is_some() || url.fragment().is_some() || url.cannot_be_a_base() {
        bail!(
            "confirm.public_url: must be a plain origin and path, like https://notify.example.com"
        );
    }
    if c.topic.trim().is_empty() {
        bail!("confirm.topic: must not be empty");
    }
    if topics.contains(&c.topic.as_str()) {
        bail!("confirm.topic: `{}` must be a topic of its own", c.topic);
    }
    let trusted = clarion_confirm::forwarded::Trusted::parse(&c.trusted_proxies)
        .map_err(|e| anyhow!("confirm.trusted_proxies: {e}"))?;
    if c.rate_per_minute == 0 || c.burst == 0 {
        bail!("confirm.rate_per_minute and confirm.burst: must be at least 1");
    }
    if !(1024..=1024 * 1024).contains(&c.max_body_bytes) {
        bail!("confirm.max_body_bytes: must be from 1024 to 1048576");
    }
    let secret = match secrets {
        None => None,
        Some(s) => {
            let secret = s
                .resolve(&c.secret)
                .map_err(|e| anyhow!("confirm.secret: {e}"))?;
            clarion_confirm::Keys::new(secret.expose().as_bytes())
                .map_err(|e| anyhow!("confirm.secret: {e}"))?;
            Some(secret)
        }
    };
    Ok(ConfirmSettings {
        listen,
        public_url: c.public_url.clone(),
        secret,
        topic: c.topic.clone(),
        trusted_proxies: trusted,
        rate_per_minute: c.rate_per_minute,
        burst: c.burst,
        max_body_bytes: c.max_body_bytes,
    })
}

/// Whether `name` is a channel a step can use: an ordinary target of a kind that
/// reaches a person at an address, or a people target's leg (`TARGET.KIND`).
pub fn step_channel<'a>(targets: &'a [TargetConfig], name: &str) -> Option<&'a TargetConfig> {
    let usable = |t: &TargetConfig| {
        matches!(
            t.kind,
            ChannelKind::Email | ChannelKind::Sms | ChannelKind::Fcm | ChannelKind::Apns
        )
    };
    if let Some(t) = targets.iter().find(|t| *t.name == *name) {
        return (t.people.is_none() && usable(t)).then_some(t);
    }
    targets
        .iter()
        .filter_map(|t| t.people.as_ref())
        .flat_map(|p| p.legs.iter())
        .map(|l| &l.target)
        .find(|t| *t.name == *name && usable(t))
}

/// Checks `[escalations]` against the validated targets.
pub fn validate_escalations(
    raw: &BTreeMap<String, EscalationConfig>,
    targets: &[TargetConfig],
    audiences: &BTreeSet<String>,
    has_directory: bool,
) -> Result<BTreeMap<String, Vec<Step>>> {
    let mut out = BTreeMap::new();
    for (name, policy) in raw {
        let at = format!("escalations.{name}");
        if policy.steps.is_empty() {
            bail!("{at}.steps: an escalation needs at least one step");
        }
        if policy.steps.len() > 32 {
            bail!("{at}.steps: at most 32 steps");
        }
        let mut steps = Vec::new();
        for (i, s) in policy.steps.iter().enumerate() {
            let at = format!("{at}.steps[{i}]");
            let who = match &s.who {
                Who::Person(id) if id.trim().is_empty() => bail!("{at}.who.person: empty"),
                Who::Person(id) => StepWho::Person(id.clone()),
                Who::Audience(a) if !audiences.contains(a) => {
                    bail!("{at}.who.audience: `{a}` is not a known audience")
                }
                Who::Audience(a) => StepWho::Audience(a.clone()),
            };
            if !has_directory {
                bail!("{at}.who: a step reaches people of the directory; configure `[directory]`");
            }
            if s.channels.is_empty() {
                bail!("{at}.channels: list at least one channel");
            }
            for c in &s.channels {
                if step_channel(targets, c).is_none() {
                    bail!(
                        "{at}.channels: `{c}` is not a target of kind {STEP_CHANNEL_KINDS} nor a people target's leg (`TARGET.sms`)"
                    );
                }
            }
            if s.wait < Duration::from_secs(1) {
                bail!("{at}.wait: must be at least 1s");
            }
            if s.repeats > 20 {
                bail!("{at}.repeats: at most 20");
            }
            steps.push(Step {
                who,
                channels: s.channels.clone(),
                wait_ms: s.wait.as_millis().min(u128::from(u64::MAX)) as u64,
                repeats: s.repeats,
            });
        }
        out.insert(name.clone(), steps);
    }
    Ok(out)
}

/// The keys of a `type = "escalation"` target.
pub const ESCALATION_KEYS: [&str; 7] = [
    "type",
    "audiences",
    "rules",
    "start",
    "max_in_flight",
    "confirm",
    "escalation",
];

/// Checks a `type = "escalation"` target: the audiences it takes updates for,
/// its confirmation request and the policy it runs. Its `channel` is its policy's
/// first channel's, and unused: every message goes through a step's channel.
pub fn validate_escalation_target(
    name: &str,
    value: serde_json::Value,
    audiences: &BTreeSet<String>,
    targets: &[TargetConfig],
    escalations: &BTreeMap<String, Vec<Step>>,
) -> Result<TargetConfig> {
    let serde_json::Value::Object(map) = value else {
        bail!("must be a table");
    };
    if let Some(k) = map.keys().find(|k| !ESCALATION_KEYS.contains(&k.as_str())) {
        bail!(
            "{k}: unknown key for an escalation target (known: {})",
            ESCALATION_KEYS.join(", ")
        );
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        #[serde(rename = "type")]
        _kind: String,
        audiences: Vec<String>,
        #[serde(default)]
        rules: Vec<clarion_render::Rule>,
        #[serde(default)]
        start: StartAt,
        #[serde(default)]
        max_in_flight: Option<usize>,
        confirm: Option<ConfirmRequest>,
        escalation: Option<String>,
    }
    let raw: Raw = serde_json::from_value(serde_json::Value::Object(map))?;
    if raw.audiences.is_empty() {
        bail!("audiences: must list at least one audience");
    }
    if let Some(a) = raw.audiences.iter().find(|a| !audiences.contains(*a)) {
        bail!(
            "audiences: `{a}` is not a standard audience nor listed in the top-level `audiences`"
        );
    }
    let Some(confirm) = raw.confirm else {
        bail!(
            "confirm: missing (what the escalation waits for, e.g. confirm = {{ require = \"any\", within = \"30m\" }})"
        );
    };
    check_request(&confirm)?;
    let Some(policy) = raw.escalation else {
        bail!("escalation: missing (the name of an `[escalations.NAME]` policy)");
    };
    let Some(steps) = escalations.get(&policy) else {
        bail!("escalation: `{policy}` is not an `[escalations.NAME]` policy");
    };
    if raw.max_in_flight == Some(0) {
        bail!("max_in_flight: must be at least 1");
    }
    let first = steps
        .first()
        .and_then(|s| s.channels.first())
        .and_then(|c| step_channel(targets, c))
        .ok_or_else(|| anyhow!("escalation: `{policy}` has no usable channel"))?;
    Ok(TargetConfig {
        name: Arc::from(name),
        kind: ChannelKind::Escalation,
        audiences: raw.audiences.into_iter().collect(),
        retry: first.retry.clone(),
        concurrency: 64,
        rules: raw.rules,
        locale: None,
        supersede: false,
        start: raw.start,
        breaker: first.breaker.clone(),
        max_in_flight: raw.max_in_flight,
        channel: first.channel.clone(),
        provider_name: Arc::from("escalation"),
        backups: Vec::new(),
        failover_after: DEFAULT_FAILOVER_AFTER,
        drill: None,
        people: None,
        confirm: Some(confirm),
        escalation: Some(Arc::from(policy.as_str())),
    })
}
