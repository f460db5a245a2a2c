//! Mobile push channels: Firebase Cloud Messaging (HTTP v1) for Android (and iOS
//! through Firebase), and the Apple Push Notification service (HTTP/2) for iOS.
//!
//! The two providers share nothing on the wire, so they are two channel kinds with
//! two config structs ([`FcmConfig`], `type = "fcm"`; [`ApnsConfig`], `type = "apns"`)
//! and two build functions ([`build_fcm`], [`build_apns`]). What they do share lives
//! here and in [`compose`]: the notification's content and its 4 KB budget, the
//! collapse id that lets a newer update of an incident replace an older one on the
//! device, and the bounded fan-out to device tokens.
//!
//! Like every channel, these try once per `send` and classify every failure; they never
//! retry, never panic on a provider's reply, and never publish anything themselves. A
//! dead device token is reported as a `RecipientResult` whose error class is
//! `RecipientGone`; the daemon publishes it (see `docs/channels/push.md`).
//!
//! A delivery may carry its own device tokens (`Delivery::direct`, a directory's
//! members' devices) instead of the configured ones; each is checked as a configured
//! one is, and a malformed one fails alone, for good, its reason showing only the
//! token's start.

mod apns;
pub mod compose;
mod fcm;
mod http;

pub use apns::{ApnsChannel, ApnsConfig, ApnsEnvironment, build as build_apns};
pub use fcm::{FcmChannel, FcmConfig, build as build_fcm};

use clarion_core::{Delivery, DeliveryError, RecipientResult};
use std::collections::{BTreeMap, HashSet};

/// Why a push target's config cannot be used. Every variant names the target and the
/// key, so the operator knows which line of the file to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target `{target}`: `{field}` {reason}")]
pub struct PushConfigError {
    /// The target's name in config.
    pub target: String,
    /// The config key at fault (dotted for nested keys).
    pub field: String,
    /// What is wrong with it, for a human.
    pub reason: String,
}

impl PushConfigError {
    pub(crate) fn new(target: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        PushConfigError {
            target: target.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why a directory leg's config may not list device tokens or topics.
const DIRECTORY_TOKENS: &str = "is not allowed: a people target's channel addresses the directory's members; static device tokens belong to an ordinary target";
const DIRECTORY_TOPICS: &str = "is not allowed: a people target's channel addresses the directory's members; topics belong to an ordinary target";

/// Makes jsonwebtoken sign with aws-lc-rs (the provider rustls uses here too). It picks
/// one by itself only when exactly one of its crypto features is enabled; installing it
/// explicitly keeps signing working if another crate ever enables `rust_crypto` in the
/// same build (jsonwebtoken would otherwise panic at the first signature). An error
/// means a provider is already installed, which is fine.
pub(crate) fn install_jwt_crypto() {
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
}

/// Who one delivery goes to: the recipients to send to, each with the audience whose
/// text it gets, and the results (already recorded in the delivery's progress) of the
/// direct recipients refused before sending.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Selection<'a> {
    pub send: Vec<(&'a str, &'a str)>,
    pub refused: Vec<RecipientResult>,
}

/// The recipients one delivery goes to, restricted to those [`Delivery::wants`] (a
/// retry's subset, minus the ones that already ended in an attempt that timed out).
///
/// Without [`Delivery::direct`]: the de-duplicated union of `map` over `audiences` (in
/// their order, then config order), a recipient listed under several audiences taking
/// the first one's text. Names in a retry's subset that the config no longer lists are
/// dropped: the config is the authority on who may receive this target.
///
/// With it: the direct tokens instead of `map`, de-duplicated, in the given order, all
/// with the text of the first audience. `check` is the test a configured token passes
/// at load (`Err` says why it fails); a direct token that fails it is refused, for
/// good, alone, as `provider` would not take it either. Names in a retry's subset that
/// the delivery does not carry are dropped: the daemon is the authority on who a
/// directory batch holds.
pub(crate) fn select_recipients<'a>(
    map: &'a BTreeMap<String, Vec<String>>,
    delivery: &'a Delivery,
    target: &str,
    check: impl Fn(&str) -> Result<(), &'static str>,
) -> Selection<'a> {
    // A set, because a retry's subset can be as long as the token list itself (a
    // directory batch holds up to a thousand), and `Delivery::wants` searches the list.
    let only: Option<HashSet<&str>> = delivery
        .recipients
        .as_ref()
        .map(|o| o.iter().map(String::as_str).collect());
    // `wants` minus its list search, which the set above does in O(1).
    let wanted =
        |r: &str| only.as_ref().is_none_or(|o| o.contains(r)) && !delivery.skip.contains(r);
    let mut seen = HashSet::new();
    let mut out = Selection::default();
    if let Some(direct) = &delivery.direct {
        let audience = delivery.direct_audience();
        for token in direct.iter() {
            if !wanted(token) || !seen.insert(token.as_str()) {
                continue;
            }
            let refused = match (check(token), audience) {
                (Ok(()), Some(audience)) => {
                    out.send.push((audience, token.as_str()));
                    continue;
                }
                (Err(why), _) => {
                    format!("target `{target}`: device token {} {why}", shorten(token))
                }
                (Ok(()), None) => format!(
                    "target `{target}`: the delivery serves no audience whose text device token {} could get",
                    shorten(token)
                ),
            };
            out.refused.push(delivery.finish(RecipientResult {
                recipient: Some(token.clone()),
                result: Err(DeliveryError::permanent(refused)),
            }));
        }
        return out;
    }
    for audience in delivery.audiences.iter() {
        let Some(list) = map.get(audience) else {
            continue;
        };
        for r in list {
            if wanted(r) && seen.insert(r.as_str()) {
                out.send.push((audience.as_str(), r.as_str()));
            }
        }
    }
    out
}

/// A device token as a reason may show it: its start (at most eight characters and a
/// quarter of it, control characters escaped) and its length. A full token in a log
/// or a dead letter is what it takes to reach that device.
pub(crate) fn shorten(token: &str) -> String {
    let n = token.chars().count();
    let head: String = token
        .chars()
        .take((n / 4).min(8))
        .flat_map(char::escape_debug)
        .collect();
    format!("`{head}…` ({n} characters)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token check that refuses tokens starting with `x`.
    fn check(token: &str) -> Result<(), &'static str> {
        match token.starts_with('x') {
            true => Err("is not a token"),
            false => Ok(()),
        }
    }

    fn delivery(audiences: &[&str]) -> Delivery {
        let update = clarion_core::samples::lifecycle(
            "INC-1",
            "Outage",
            &["customers"],
            jiff::Timestamp::UNIX_EPOCH,
        )
        .remove(0);
        Delivery::new(
            std::sync::Arc::new(update),
            std::sync::Arc::from("push"),
            audiences
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .into(),
        )
    }

    fn select<'a>(
        map: &'a BTreeMap<String, Vec<String>>,
        delivery: &'a Delivery,
    ) -> Vec<(&'a str, &'a str)> {
        let selection = select_recipients(map, delivery, "push", check);
        assert_eq!(selection.refused, []);
        selection.send
    }

    fn map() -> BTreeMap<String, Vec<String>> {
        let mut map = BTreeMap::new();
        map.insert(
            "customers".to_string(),
            vec!["a".to_string(), "b".to_string()],
        );
        map.insert(
            "business".to_string(),
            vec!["b".to_string(), "c".to_string()],
        );
        map
    }

    #[test]
    fn recipients_are_a_deduplicated_union_in_audience_order() {
        let map = map();
        let mut delivery = delivery(&["business", "customers", "nobody"]);
        assert_eq!(
            select(&map, &delivery),
            [("business", "b"), ("business", "c"), ("customers", "a")]
        );
        // Recipients that ended in an earlier, timed-out attempt are not chosen.
        delivery.skip = std::sync::Arc::new(["c".to_string()].into());
        assert_eq!(
            select(&map, &delivery),
            [("business", "b"), ("customers", "a")]
        );
        delivery.recipients = Some(vec!["a".to_string(), "c".to_string(), "zzz".to_string()]);
        assert_eq!(select(&map, &delivery), [("customers", "a")]);
    }

    #[test]
    fn direct_tokens_replace_the_configured_ones_with_the_first_audience() {
        let map = map();
        let d = delivery(&["business", "customers"])
            .with_direct(["d", "e", "d", "a", "f"].map(String::from).to_vec());
        // `a` is configured too, but only as one of the direct tokens is it chosen.
        assert_eq!(
            select(&map, &d),
            [
                ("business", "d"),
                ("business", "e"),
                ("business", "a"),
                ("business", "f")
            ]
        );
    }

    #[test]
    fn a_retry_and_a_skip_restrict_direct_tokens_and_a_malformed_one_is_refused() {
        let map = map();
        let mut d = delivery(&["customers"]).with_direct(
            ["d", "e", "xbad-token-0123456789", "f", "g"]
                .map(String::from)
                .to_vec(),
        );
        d.recipients = Some(
            ["e", "xbad-token-0123456789", "f", "b", "zzz"]
                .map(String::from)
                .to_vec(),
        );
        d.skip = std::sync::Arc::new(["f".to_string()].into());
        let selection = select_recipients(&map, &d, "push", check);
        // Not `d` or `g` (not requested), not `f` (ended before), not `b` (configured,
        // replaced) nor `zzz` (not in this batch).
        assert_eq!(selection.send, [("customers", "e")]);
        let refused: Vec<String> = selection
            .refused
            .iter()
            .map(|r| match &r.result {
                Ok(_) => format!("{:?}: ok", r.recipient),
                Err(e) => format!("{:?}: {}: {}", r.recipient, e.class.as_str(), e.reason),
            })
            .collect();
        assert_eq!(
            refused,
            [
                "Some(\"xbad-token-0123456789\"): permanent: target `push`: device token `xbad-…` (21 characters) is not a token"
            ]
        );
        // Recorded as soon as known, like a sent one.
        assert_eq!(d.progress.take(), selection.refused);
    }

    #[test]
    fn a_shortened_token_is_never_the_whole_token() {
        assert_eq!(shorten(&"ab".repeat(32)), "`abababab…` (64 characters)");
        assert_eq!(shorten("abc"), "`…` (3 characters)");
        // A control character cannot reach a log line raw.
        assert_eq!(shorten("a\nbcdefghijkl"), "`a\\nb…` (13 characters)");
    }
}
