//! A validated target (`TargetConfig`): its channel kind and channel config, its
//! providers and backups, its drill, its people legs, and how it renders. What
//! `[targets.NAME]` becomes once `targets.rs` has checked it.

use super::retry::*;
use anyhow::Result;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The default `failover_after`: long enough that one slow answer or one retry
/// does not send a second copy through another provider, short enough that a
/// provider that is down costs recipients half a minute, not the breaker's
/// five failures and probes.
pub const DEFAULT_FAILOVER_AFTER: Duration = Duration::from_secs(30);

/// One provider of a target: its own or a backup (`[[targets.NAME.backups]]`).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: Arc<str>,
    pub channel: ChannelConfig,
}

/// Where a new target's stream starts (`start`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    Earliest,
    #[default]
    Latest,
}

/// The closed set of channel kinds. Adding one means adding a variant here and an
/// arm in `build_one`, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Webhook,
    Email,
    Sms,
    Fcm,
    Apns,
    /// Not a channel: the members of a directory audience, reached through the
    /// target's legs (`fallback`), each leg a channel of its own.
    People,
    /// An origin of the public status page (docs/status-page.md).
    StatusPage,
    /// Not a channel: an escalation policy run for each update it takes, its
    /// steps reaching people through other targets' channels
    /// (docs/confirmations.md).
    Escalation,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 8] = [
        ChannelKind::Webhook,
        ChannelKind::Email,
        ChannelKind::Sms,
        ChannelKind::Fcm,
        ChannelKind::Apns,
        ChannelKind::People,
        ChannelKind::StatusPage,
        ChannelKind::Escalation,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Email => "email",
            ChannelKind::Sms => "sms",
            ChannelKind::Fcm => "fcm",
            ChannelKind::Apns => "apns",
            ChannelKind::People => "people",
            ChannelKind::StatusPage => "status_page",
            ChannelKind::Escalation => "escalation",
        }
    }

    /// The ledger's `channel` (docs/ledger.schema.json): push for both push
    /// providers, `people` for what a people target records itself (a member it
    /// has no address for).
    pub fn ledger_channel(self) -> &'static str {
        match self {
            ChannelKind::Fcm | ChannelKind::Apns => "push",
            other => other.as_str(),
        }
    }
}

/// A target's channel config, validated as its kind's struct.
#[derive(Debug, Clone)]
pub enum ChannelConfig {
    Webhook(clarion_webhook::WebhookConfig),
    Email(clarion_email::EmailConfig),
    Sms(clarion_sms::SmsConfig),
    Fcm(clarion_push::FcmConfig),
    Apns(clarion_push::ApnsConfig),
    StatusPage(clarion_origin::OriginConfig),
}

/// One validated target.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    pub name: Arc<str>,
    pub kind: ChannelKind,
    pub audiences: BTreeSet<String>,
    pub retry: RetryPolicy,
    pub concurrency: usize,
    pub rules: Vec<clarion_render::Rule>,
    pub locale: Option<String>,
    /// Skip an older update of an incident when a newer one is waiting behind it.
    pub supersede: bool,
    /// Where a target added to a running deployment starts.
    pub start: StartAt,
    pub breaker: BreakerConfig,
    /// This target's in-flight bound, if it has its own.
    pub max_in_flight: Option<usize>,
    /// The target's own provider: `channel` under the name `provider_name`.
    pub channel: ChannelConfig,
    pub provider_name: Arc<str>,
    /// Providers tried in order after the target's own (docs/backups.md).
    pub backups: Vec<ProviderConfig>,
    pub failover_after: Duration,
    /// What a drill goes through, when the target has `drill_recipients`.
    pub drill: Option<DrillConfig>,
    /// A `type = "people"` target's audience and legs. Its own `channel` is then
    /// its first leg's, and unused: every delivery goes through a leg.
    pub people: Option<PeopleConfig>,
    /// What this target asks of its recipients (`confirm`), when it asks them to
    /// confirm (docs/confirmations.md).
    pub confirm: Option<super::request::ConfirmRequest>,
    /// A `type = "escalation"` target's policy (`[escalations.NAME]`).
    pub escalation: Option<Arc<str>>,
}

/// A people target: the members of one directory audience, each reached on the
/// first of their channels that works, in `fallback` order (docs/backups.md).
#[derive(Debug, Clone)]
pub struct PeopleConfig {
    pub audience: String,
    pub legs: Vec<LegConfig>,
    /// People per batch, when the target sets its own (`people_per_batch`); else
    /// the directory's `batch_size`.
    pub per_batch: Option<usize>,
}

/// One leg of a people target: the person's addresses of one kind, reached
/// through a channel built like an ordinary target's (named `TARGET.KIND`), with
/// its own providers, backups, retry budget and breaker.
#[derive(Debug, Clone)]
pub struct LegConfig {
    pub kind: crate::directory::AddressKind,
    pub target: TargetConfig,
}

/// A target's drill: its providers' channels with `drill_recipients` in place of
/// every audience's recipients (a webhook's URL in place of its own).
#[derive(Debug, Clone)]
pub struct DrillConfig {
    pub recipients: Vec<String>,
    /// The target's own channel, then its backups', in the same order.
    pub channels: Vec<ChannelConfig>,
}

impl TargetConfig {
    /// What delivers for this target: itself, or a people target's legs.
    pub fn channels(&self) -> Vec<&TargetConfig> {
        match &self.people {
            Some(p) => p.legs.iter().map(|l| &l.target).collect(),
            None if self.kind == ChannelKind::Escalation => Vec::new(),
            None => vec![self],
        }
    }

    /// The locale this target writes to `audience` in: its own `locale`, else the
    /// one the update asks for that audience.
    pub fn locale_for<'a>(
        &'a self,
        update: &'a clarion_core::IncidentUpdate,
        audience: &str,
    ) -> Option<&'a str> {
        self.locale.as_deref().or(update.locale_for(audience))
    }

    /// This target's message for one audience of an update: the one rendering the
    /// daemon delivers and `clarion render` shows.
    pub fn render(
        &self,
        templates: &clarion_render::TemplateSet,
        update: &clarion_core::IncidentUpdate,
        audience: &str,
    ) -> Result<clarion_render::Message, clarion_render::TemplateError> {
        let ctx = clarion_render::RenderContext {
            update,
            audience,
            locale: self.locale_for(update, audience),
            target: &self.name,
        };
        templates.render_all(self.render_kind(), &ctx)
    }

    /// Which templates this target renders with.
    pub fn render_kind(&self) -> clarion_render::ChannelKind {
        match self.kind {
            ChannelKind::Webhook => clarion_render::ChannelKind::Webhook,
            ChannelKind::Email => clarion_render::ChannelKind::Email,
            ChannelKind::Sms => clarion_render::ChannelKind::Sms,
            ChannelKind::Fcm | ChannelKind::Apns => clarion_render::ChannelKind::Push,
            // Never rendered as such: its legs render (`TargetConfig::channels`),
            // an origin publishes the page, which renders itself, and an
            // escalation's steps' channels render as themselves.
            ChannelKind::People | ChannelKind::StatusPage | ChannelKind::Escalation => {
                clarion_render::ChannelKind::Webhook
            }
        }
    }
}
