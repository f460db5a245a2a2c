//! A confirmation request (`confirm = { require, within }`), as a target, a
//! people target or an audience writes it: shared by `target.rs`, `audiences.rs`
//! and `confirm.rs`, and importing none of them.

use anyhow::{Result, anyhow, bail};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// How many confirmations a notice needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Require {
    /// Every recipient asked.
    Each,
    /// One recipient: the first confirmation satisfies the notice.
    Any,
    /// This many distinct recipients.
    Quorum(u32),
}

impl Require {
    /// `each`, `any` or `quorum:N`, for records and logs.
    pub fn label(&self) -> String {
        match self {
            Require::Each => "each".into(),
            Require::Any => "any".into(),
            Require::Quorum(n) => format!("quorum:{n}"),
        }
    }

    /// Reads [`Require::label`] back.
    pub fn from_label(s: &str) -> Option<Require> {
        match s {
            "each" => Some(Require::Each),
            "any" => Some(Require::Any),
            _ => s
                .strip_prefix("quorum:")
                .and_then(|n| n.parse().ok())
                .map(Require::Quorum),
        }
    }

    /// Whether `confirmed` of `asked` recipients satisfy the notice.
    pub fn met(&self, confirmed: usize, asked: usize) -> bool {
        match self {
            Require::Each => asked > 0 && confirmed >= asked,
            Require::Any => confirmed >= 1,
            Require::Quorum(n) => confirmed >= *n as usize,
        }
    }
}

// By hand: `require = "each"` or `require = { quorum = 3 }`, with errors that say so.
impl<'de> Deserialize<'de> for Require {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Require;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"each\", \"any\" or { quorum = N }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Require, E> {
                match s {
                    "each" => Ok(Require::Each),
                    "any" => Ok(Require::Any),
                    other => Err(E::custom(format!(
                        "`{other}`: expected \"each\", \"any\" or {{ quorum = N }}"
                    ))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Require, A::Error> {
                let mut quorum = None;
                while let Some(k) = map.next_key::<String>()? {
                    if k != "quorum" {
                        return Err(serde::de::Error::custom(format!(
                            "`{k}`: the only key here is `quorum`"
                        )));
                    }
                    quorum = Some(map.next_value::<u32>()?);
                }
                match quorum {
                    Some(n) if n >= 1 => Ok(Require::Quorum(n)),
                    Some(_) => Err(serde::de::Error::custom("quorum: must be at least 1")),
                    None => Err(serde::de::Error::custom("quorum: missing")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A confirmation request: `confirm = { require = "each", within = "10m" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// How many recipients must confirm: `"each"`, `"any"` or `{ quorum = N }`
    /// (default `"each"`).
    #[serde(default = "default_require")]
    pub require: Require,
    /// How long recipients have, from the update's publication: then whoever has
    /// not confirmed ends `not_confirmed` (or `unreachable`, when no channel
    /// reached them), and their links, codes and calls stop working.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

fn default_require() -> Require {
    Require::Each
}

/// Checks a confirmation request's values.
pub fn check_request(r: &ConfirmRequest) -> Result<()> {
    if r.within < Duration::from_secs(1) || r.within > Duration::from_secs(31 * 24 * 3600) {
        bail!("confirm.within: must be from 1s to 31 days");
    }
    Ok(())
}

/// Takes `confirm` out of a target's keys and checks it.
pub fn take_request(
    map: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<Option<ConfirmRequest>> {
    match map.remove("confirm") {
        None => Ok(None),
        Some(v) => {
            let r: ConfirmRequest =
                serde_json::from_value(v).map_err(|e| anyhow!("confirm: {e}"))?;
            check_request(&r)?;
            Ok(Some(r))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_reads_and_judges() {
        let r: ConfirmRequest =
            serde_json::from_value(serde_json::json!({"require": {"quorum": 2}, "within": "10m"}))
                .expect("valid");
        assert_eq!(r.require, Require::Quorum(2));
        assert_eq!(r.within, Duration::from_secs(600));
        let each: ConfirmRequest =
            serde_json::from_value(serde_json::json!({"within": "1m"})).expect("valid");
        assert_eq!(each.require, Require::Each);
        for bad in [
            serde_json::json!({"require": "all", "within": "1m"}),
            serde_json::json!({"require": {"quorum": 0}, "within": "1m"}),
            serde_json::json!({"require": "any"}),
            serde_json::json!({"require": "any", "within": "1m", "x": 1}),
        ] {
            assert!(
                serde_json::from_value::<ConfirmRequest>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert!(Require::Each.met(2, 2) && !Require::Each.met(1, 2) && !Require::Each.met(0, 0));
        assert!(Require::Any.met(1, 5) && !Require::Any.met(0, 5));
        assert!(Require::Quorum(2).met(2, 5) && !Require::Quorum(2).met(1, 5));
        for r in [Require::Each, Require::Any, Require::Quorum(3)] {
            assert_eq!(Require::from_label(&r.label()), Some(r));
        }
    }
}
