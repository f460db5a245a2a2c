//! `clarion route` and `clarion render`: what the daemon would do with an update,
//! without sending anything. Route says which targets take it and which rule decided;
//! render prints exactly what each target would receive. Neither needs a secret:
//! the settings they get are validated without resolving any
//! (`RawConfig::validate_for_preview`), and nothing here builds a channel.

use crate::config::{ChannelConfig, ChannelKind, Settings};
use anyhow::{Result, anyhow};
use clarion_core::{Delivery, IncidentUpdate};
use std::fmt::Write as _;
use std::sync::Arc;

/// Reads and validates an update from a file, as the consumer would.
pub fn read_event(path: &std::path::Path, settings: &Settings) -> Result<IncidentUpdate> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    let update = IncidentUpdate::from_slice(&bytes, settings.daemon.max_event_bytes)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if let Err(reason) = crate::engine::dispatch::check_audiences(&update, &settings.audiences) {
        return Err(anyhow!(
            "{}: {reason} (the daemon would dead-letter this update)",
            path.display()
        ));
    }
    Ok(update)
}

/// One line per target: does it take the update, for which audiences, and why.
pub fn route(settings: &Settings, update: &IncidentUpdate) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<8} {:<6} {:<28} WHY",
        "TARGET", "TYPE", "TAKES", "AUDIENCES"
    );
    for t in &settings.targets {
        let d = clarion_render::route(update, &t.audiences, &t.rules);
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<6} {:<28} {}",
            &*t.name,
            t.kind.as_str(),
            if d.matched { "yes" } else { "no" },
            if d.matched {
                d.audiences.join(",")
            } else {
                "-".into()
            },
            d.explanation
        );
    }
    out
}

/// Everything each matching target (or only `only`) would receive.
pub fn render(settings: &Settings, update: IncidentUpdate, only: Option<&str>) -> Result<String> {
    if let Some(name) = only {
        if !settings.targets.iter().any(|t| &*t.name == name) {
            let names: Vec<&str> = settings.targets.iter().map(|t| &*t.name).collect();
            return Err(anyhow!(
                "no target named `{name}` in {}; its targets are: {}",
                settings.source,
                names.join(", ")
            ));
        }
    }
    let update = Arc::new(update);
    let mut out = String::new();
    // A people target renders through each of its legs, routed as the target is.
    for (t, c) in settings
        .targets
        .iter()
        .flat_map(|t| t.channels().into_iter().map(move |c| (t, c)))
    {
        if only.is_some_and(|n| n != &*t.name) {
            continue;
        }
        let decision = clarion_render::route(&update, &t.audiences, &t.rules);
        let _ = writeln!(
            out,
            "=== {} ({}) — {}",
            c.name,
            c.kind.as_str(),
            decision.explanation
        );
        if !decision.matched {
            let _ = writeln!(out, "    (does not take this update)\n");
            continue;
        }
        let delivery = Delivery::new(
            update.clone(),
            c.name.clone(),
            decision.audiences.clone().into(),
        );
        for audience in &decision.audiences {
            let locale = c.locale_for(&update, audience);
            let message = c
                .render(&settings.templates, &update, audience)
                .map_err(|e| anyhow!("target {}: audience {audience}: {e}", c.name))?;
            let _ = writeln!(
                out,
                "--- audience {audience}, locale {}",
                locale.unwrap_or("default")
            );
            for (part, text) in &message.parts {
                let _ = writeln!(out, "[{}]\n{}", part.as_str(), text.trim_end());
            }
            match (&c.channel, c.kind) {
                (ChannelConfig::Sms(c), _) => {
                    let text = message.get(clarion_render::Part::Text).unwrap_or("").trim();
                    let a = clarion_sms::encoding::analyze(text);
                    let _ = writeln!(
                        out,
                        "(SMS: {:?}, {} {}, {} segment(s); this target allows {})",
                        a.encoding,
                        a.units,
                        if matches!(a.encoding, clarion_sms::encoding::Encoding::Gsm7) {
                            "septets"
                        } else {
                            "UTF-16 units"
                        },
                        a.segments,
                        c.max_segments()
                    );
                }
                (ChannelConfig::Webhook(hook), ChannelKind::Webhook) => {
                    let content = crate::config::content_of(&message);
                    let mut single = delivery.clone();
                    single.content = Arc::new([(audience.clone(), content)].into_iter().collect());
                    let body = clarion_webhook::payload_as(hook, &single);
                    if message.get(clarion_render::Part::Body).is_none() {
                        let shape = match hook.format {
                            clarion_webhook::PayloadFormat::Clarion => "standard payload",
                            clarion_webhook::PayloadFormat::Statuspage => "statuspage payload",
                        };
                        let _ = writeln!(out, "[{shape}]\n{}", String::from_utf8_lossy(&body));
                    }
                    let _ = writeln!(
                        out,
                        "(webhook body: {} bytes, webhook-id {})",
                        body.len(),
                        delivery.key
                    );
                }
                (_, ChannelKind::Fcm | ChannelKind::Apns) => {
                    let bytes = message.get(clarion_render::Part::Title).map_or(0, str::len)
                        + message.get(clarion_render::Part::Body).map_or(0, str::len);
                    let _ = writeln!(
                        out,
                        "(push: {bytes} bytes of title and body; collapse id per incident)"
                    );
                }
                (_, ChannelKind::Email) => {
                    let _ = writeln!(out, "(email Message-ID <{}@…>)", delivery.key);
                }
                _ => {}
            }
            let _ = writeln!(out);
        }
    }
    Ok(out)
}
