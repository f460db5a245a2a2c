//! `[audiences]`: the audiences beyond the standard four, and their notification
//! deadlines (`first_notice_within`, per status).

use anyhow::{Result, bail};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::time::Duration;

/// The top-level `audiences`: a list of extra names, or a table of audiences with
/// their deadlines (a table also declares each audience it names).
#[derive(Debug, Clone)]
pub enum AudiencesConfig {
    List(Vec<String>),
    Table(BTreeMap<String, AudienceConfig>),
}

impl Default for AudiencesConfig {
    fn default() -> Self {
        AudiencesConfig::List(Vec::new())
    }
}

impl AudiencesConfig {
    pub fn names(&self) -> Vec<&String> {
        match self {
            AudiencesConfig::List(l) => l.iter().collect(),
            AudiencesConfig::Table(t) => t.keys().collect(),
        }
    }
}

// By hand rather than `#[serde(untagged)]`, whose only error is "did not match any
// variant": a typo in a deadline key must be named.
impl<'de> Deserialize<'de> for AudiencesConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AudiencesConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of audience names, or a table `[audiences.NAME]`")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    out.push(name);
                }
                Ok(AudiencesConfig::List(out))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((name, config)) = map.next_entry::<String, AudienceConfig>()? {
                    out.insert(name, config);
                }
                Ok(AudiencesConfig::Table(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `[audiences.NAME]`: an audience and its notification deadlines
/// (docs/configuration.md#deadlines).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudienceConfig {
    /// The longest time from the incident's first update (its `occurred_at`) to the
    /// first successful delivery to this audience, e.g. `"120m"` for the FCC's
    /// outage notification. Unset: no first-notice deadline.
    #[serde(default, with = "humantime_serde")]
    pub first_notice_within: Option<Duration>,
    /// Deadlines per status, e.g. `resolved = "30m"`: from the `occurred_at` of the
    /// incident's first update with that status to the first successful delivery of
    /// an update with that status to this audience.
    #[serde(default)]
    pub deadlines: BTreeMap<clarion_core::Status, humantime_serde::Serde<Duration>>,
    /// The share of a deadline after which it is "at risk": the daemon warns and
    /// counts it in `clarion_deadline_at_risk`. Between 0 and 1; default 0.8.
    #[serde(default)]
    pub warn_at: Option<f64>,
    /// Ask every recipient of this audience to confirm, through every target that
    /// serves it and has no `confirm` of its own, e.g.
    /// `confirm = { require = "each", within = "10m" }` (docs/confirmations.md).
    #[serde(default)]
    pub confirm: Option<super::request::ConfirmRequest>,
    /// The longest time from the incident's first update to this audience's first
    /// confirmed notice (its `require` met), e.g. `"30m"`: the confirmation
    /// deadline, judged by `clarion report` and counted like the others.
    #[serde(default, with = "humantime_serde")]
    pub confirmed_within: Option<Duration>,
}

/// An audience's validated deadlines.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadlines {
    pub first_notice_within: Option<Duration>,
    pub by_status: BTreeMap<clarion_core::Status, Duration>,
    pub warn_at: f64,
}

/// The default warning lead: at 80 % of a deadline.
pub const DEFAULT_WARN_AT: f64 = 0.8;

/// Checks `[audiences.NAME]` deadlines: positive durations, `warn_at` in (0, 1).
pub(super) fn validate_deadlines(config: &AudiencesConfig) -> Result<BTreeMap<String, Deadlines>> {
    let AudiencesConfig::Table(table) = config else {
        return Ok(BTreeMap::new());
    };
    let mut out = BTreeMap::new();
    for (name, a) in table {
        let warn_at = a.warn_at.unwrap_or(DEFAULT_WARN_AT);
        if !(warn_at > 0.0 && warn_at < 1.0) {
            bail!("audiences.{name}.warn_at: must be between 0 and 1 (e.g. 0.8), not {warn_at}");
        }
        if a.first_notice_within.is_some_and(|d| d.is_zero()) {
            bail!("audiences.{name}.first_notice_within: must be more than zero");
        }
        let mut by_status = BTreeMap::new();
        for (status, d) in &a.deadlines {
            if d.is_zero() {
                bail!("audiences.{name}.deadlines.{status}: must be more than zero");
            }
            by_status.insert(*status, **d);
        }
        if a.first_notice_within.is_none() && by_status.is_empty() {
            continue;
        }
        out.insert(
            name.clone(),
            Deadlines {
                first_notice_within: a.first_notice_within,
                by_status,
                warn_at,
            },
        );
    }
    Ok(out)
}
