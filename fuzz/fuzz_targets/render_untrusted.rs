//! Rendering untrusted event fields through every built-in template and preset.
//!
//! Every field an ops producer writes (ids, title, message, per-audience text,
//! components, regions, links, locale) is arbitrary here. Checked:
//!
//! - every built-in template and preset renders (no panic, no error);
//! - webhook bodies are JSON (`render` refuses anything else, so rendering at all
//!   proves it; the body is parsed again here regardless);
//! - email HTML never contains a raw `<script` (all input is escaped);
//! - the Slack preset leaves no `<` or `>` in any text field (Slack's control
//!   sequences `<!channel>`, `<url|label>`); button URLs are not text and are skipped;
//! - the Teams card is JSON whose title is the update's own title, unchanged.
#![no_main]

use arbitrary::Arbitrary;
use clarion_core::{Impact, IncidentUpdate, Link, SCHEMA_VERSION, Status};
use clarion_render::{ChannelKind, RenderContext, TemplateSet, TemplatesConfig};
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
struct Input {
    incident_id: String,
    update_id: String,
    sequence: u64,
    status: u8,
    impact: u8,
    title: String,
    message: String,
    audience_message: Option<String>,
    components: Vec<String>,
    regions: Vec<String>,
    links: Vec<(String, String)>,
    locale: Option<String>,
    occurred_at: i64,
}

fn templates() -> &'static TemplateSet {
    static SET: OnceLock<TemplateSet> = OnceLock::new();
    SET.get_or_init(|| {
        let config = TemplatesConfig {
            webhook_presets: [
                ("slack".to_string(), "slack".to_string()),
                ("teams".to_string(), "teams".to_string()),
            ]
            .into(),
            ..TemplatesConfig::default()
        };
        TemplateSet::build(&config, Vec::new()).expect("built-in templates compile")
    })
}

/// Every string in a JSON document, with the key it sits under.
fn strings<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        serde_json::Value::String(s) => out.push((key.to_string(), s)),
        serde_json::Value::Array(items) => items.iter().for_each(|i| strings(i, key, out)),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| strings(v, k, out)),
        _ => {}
    }
}

fuzz_target!(|input: Input| {
    let audience = "customers";
    let mut audience_messages = BTreeMap::new();
    if let Some(text) = input.audience_message {
        audience_messages.insert(audience.to_string(), text);
    }
    let mut locales = BTreeMap::new();
    if let Some(locale) = &input.locale {
        locales.insert(audience.to_string(), locale.clone());
    }
    let update = IncidentUpdate {
        schema_version: SCHEMA_VERSION,
        incident_id: input.incident_id,
        update_id: input.update_id,
        sequence: input.sequence,
        status: Status::ALL[usize::from(input.status) % Status::ALL.len()],
        impact: Impact::ALL[usize::from(input.impact) % Impact::ALL.len()],
        title: input.title,
        message: input.message,
        audience_messages,
        components: input.components,
        regions: input.regions,
        audiences: vec![audience.to_string()],
        // Any instant jiff can represent: far past and far future years included.
        occurred_at: Timestamp::from_second(input.occurred_at % 253_402_207_200)
            .unwrap_or(Timestamp::UNIX_EPOCH),
        links: input
            .links
            .into_iter()
            .map(|(title, url)| Link { title, url })
            .collect(),
        locales,
        drill: false,
        drill_targets: Vec::new(),
        drill_skip_providers: 0,
    };
    let set = templates();
    // Email, SMS and push use the built-ins whatever the target; webhook bodies come
    // from the presets (a target without one sends the standard payload, which is
    // not a template). Each template is rendered once per input.
    let renderings = [
        ("plain", ChannelKind::Email),
        ("plain", ChannelKind::Sms),
        ("plain", ChannelKind::Push),
        ("slack", ChannelKind::Webhook),
        ("teams", ChannelKind::Webhook),
    ];
    for (target, kind) in renderings {
        let ctx = RenderContext {
            update: &update,
            audience,
            locale: input.locale.as_deref(),
            target,
        };
        {
            let message = set
                .render_all(kind, &ctx)
                .unwrap_or_else(|e| panic!("{kind} for target {target} failed: {e}"));
            for (part, text) in &message.parts {
                match (kind, part) {
                    (ChannelKind::Email, clarion_render::Part::Html) => {
                        assert!(
                            !text.to_ascii_lowercase().contains("<script"),
                            "raw <script in HTML: {text}"
                        );
                    }
                    (ChannelKind::Webhook, _) => {
                        let v: serde_json::Value =
                            serde_json::from_str(text).expect("webhook body is JSON");
                        let mut all = Vec::new();
                        strings(&v, "", &mut all);
                        if target == "slack" {
                            for (key, s) in all {
                                if key != "url" {
                                    assert!(!s.contains(['<', '>']), "unescaped {key}: {s:?}");
                                }
                            }
                        } else {
                            let title = &v["attachments"][0]["content"]["body"][0]["text"];
                            let oneline = update
                                .title
                                .split_whitespace()
                                .collect::<Vec<_>>()
                                .join(" ");
                            assert!(
                                title.as_str().is_some_and(|t| t.ends_with(&oneline)),
                                "Teams title {title} is not {oneline:?}"
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }
});
