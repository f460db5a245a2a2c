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

mod apns;
pub mod compose;
mod fcm;
mod http;

pub use apns::{ApnsChannel, ApnsConfig, ApnsEnvironment, build as build_apns};
pub use fcm::{FcmChannel, FcmConfig, build as build_fcm};

use clarion_core::Delivery;
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

/// The recipients one delivery goes to, each with the audience whose text it gets:
/// the de-duplicated union over `audiences` (in their order, then config order), a
/// recipient listed under several audiences taking the first one's text, restricted to
/// those [`Delivery::wants`] (a retry's subset, minus the ones that already ended in an
/// attempt that timed out). Names in a retry's subset that the config no longer lists
/// are dropped: the config is the authority on who may receive this target.
pub(crate) fn select_recipients<'a>(
    map: &'a BTreeMap<String, Vec<String>>,
    delivery: &'a Delivery,
) -> Vec<(&'a str, &'a str)> {
    // A set, because a retry's subset can be as long as the token list itself, and
    // `Delivery::wants` searches the list.
    let only: Option<HashSet<&str>> = delivery
        .recipients
        .as_ref()
        .map(|o| o.iter().map(String::as_str).collect());
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for audience in delivery.audiences.iter() {
        let Some(list) = map.get(audience) else {
            continue;
        };
        for r in list {
            // `wants` minus its list search, which the set above does in O(1).
            let wanted = match &only {
                Some(only) => only.contains(r.as_str()) && !delivery.skip.contains(r),
                None => delivery.wants(r),
            };
            if !wanted {
                continue;
            }
            if seen.insert(r.as_str()) {
                out.push((audience.as_str(), r.as_str()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_a_deduplicated_union_in_audience_order() {
        let mut map = BTreeMap::new();
        map.insert(
            "customers".to_string(),
            vec!["a".to_string(), "b".to_string()],
        );
        map.insert(
            "business".to_string(),
            vec!["b".to_string(), "c".to_string()],
        );
        let update = clarion_core::samples::lifecycle(
            "INC-1",
            "Outage",
            &["customers"],
            jiff::Timestamp::UNIX_EPOCH,
        )
        .remove(0);
        let mut delivery = Delivery::new(
            std::sync::Arc::new(update),
            std::sync::Arc::from("push"),
            vec![
                "business".to_string(),
                "customers".to_string(),
                "nobody".to_string(),
            ]
            .into(),
        );
        assert_eq!(
            select_recipients(&map, &delivery),
            [("business", "b"), ("business", "c"), ("customers", "a")]
        );
        // Recipients that ended in an earlier, timed-out attempt are not chosen.
        delivery.skip = std::sync::Arc::new(["c".to_string()].into());
        assert_eq!(
            select_recipients(&map, &delivery),
            [("business", "b"), ("customers", "a")]
        );
        delivery.recipients = Some(vec!["a".to_string(), "c".to_string(), "zzz".to_string()]);
        assert_eq!(select_recipients(&map, &delivery), [("customers", "a")]);
    }
}
