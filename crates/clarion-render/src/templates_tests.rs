//! Snapshot tests of rendered messages (plain string literals: a diff in review shows
//! exactly what recipients would see change) and of what `check` rejects.

use super::*;

fn sample(status: Status, impact: Impact) -> IncidentUpdate {
    let start: Timestamp = "2026-11-28T09:00:00Z".parse().expect("timestamp");
    let mut u = clarion_core::samples::lifecycle(
        "INC-42",
        "Mobile data outage",
        &["customers", "regulators"],
        start,
    )
    .remove(0);
    u.status = status;
    u.impact = impact;
    u
}

fn set(files: &[(&str, &str)]) -> TemplateSet {
    set_with(&TemplatesConfig::default(), files)
}

fn set_with(config: &TemplatesConfig, files: &[(&str, &str)]) -> TemplateSet {
    let files = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    match TemplateSet::build(config, files) {
        Ok(set) => set,
        Err(e) => panic!("build failed: {e}"),
    }
}

fn ctx<'a>(
    u: &'a IncidentUpdate,
    audience: &'a str,
    locale: Option<&'a str>,
    target: &'a str,
) -> RenderContext<'a> {
    RenderContext {
        update: u,
        audience,
        locale,
        target,
    }
}

#[track_caller]
fn render(set: &TemplateSet, kind: ChannelKind, part: Part, ctx: &RenderContext<'_>) -> String {
    match set.render(kind, part, ctx) {
        Ok(r) => r.text,
        Err(e) => panic!("render failed: {e}"),
    }
}

fn target(name: &str, kind: ChannelKind, audiences: &[&str]) -> TargetTemplates {
    TargetTemplates {
        name: name.to_string(),
        kind,
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        locales: Vec::new(),
    }
}

fn no_limit(_: &TargetTemplates, _: &Message) -> Result<(), String> {
    Ok(())
}

/// Builds and checks `files` for `targets`; returns each problem's Display.
fn problems(files: &[(&str, &str)], targets: &[TargetTemplates]) -> Vec<String> {
    let files = files
        .iter()
        .map(|(p, s)| (p.to_string(), s.to_string()))
        .collect();
    match TemplateSet::validate(&TemplatesConfig::default(), files, targets, &no_limit) {
        Ok(_) => Vec::new(),
        Err(ps) => ps.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn template_set_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TemplateSet>();
}

#[test]
fn builtin_email() {
    let set = set(&[]);
    let u = sample(Status::Investigating, Impact::Major);
    let m = set
        .render_all(ChannelKind::Email, &ctx(&u, "customers", None, "mail"))
        .expect("render");
    assert_eq!(
        m.get(Part::Subject),
        Some("[Investigating] Mobile data outage")
    );
    assert_eq!(
        m.get(Part::Text),
        Some(
            "Mobile data outage

We are investigating reports of failed calls and mobile data in the affected regions.

Status:   Investigating
Impact:   Major
Services: mobile-data, voice
Regions:  north
Updated:  2026-11-28 09:00 UTC

Status page: https://status.example.com/incidents/INC-42

Reference: incident INC-42, update INC-42-u1"
        )
    );
    assert_eq!(
        m.get(Part::Html),
        Some(
            r#"<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Mobile data outage</title></head>
<body style="font-family: sans-serif; line-height: 1.4;">
<h1 style="font-size: 1.3em;">Mobile data outage</h1>
<p>We are investigating reports of failed calls and mobile data in the affected regions.</p>
<table style="border-collapse: collapse;">
<tr><th align="left">Status</th><td>Investigating</td></tr>
<tr><th align="left">Impact</th><td>Major</td></tr>
<tr><th align="left">Services</th><td>mobile-data, voice</td></tr>
<tr><th align="left">Regions</th><td>north</td></tr>
<tr><th align="left">Updated</th><td>2026-11-28 09:00 UTC</td></tr>
</table>
<ul>
<li><a href="https:&#x2f;&#x2f;status.example.com&#x2f;incidents&#x2f;INC-42">Status page</a></li>
</ul>
<p><small>Reference: incident INC-42, update INC-42-u1</small></p>
</body>
</html>"#
        )
    );

    // Resolved, with nothing optional: no empty "Services:" line, no link block.
    let mut u = sample(Status::Resolved, Impact::None);
    u.components.clear();
    u.regions.clear();
    u.links.clear();
    u.message = "Service has been fully restored.".into();
    let m = set
        .render_all(ChannelKind::Email, &ctx(&u, "customers", None, "mail"))
        .expect("render");
    assert_eq!(m.get(Part::Subject), Some("[Resolved] Mobile data outage"));
    assert_eq!(
        m.get(Part::Text),
        Some(
            "Mobile data outage

Service has been fully restored.

Status:   Resolved
Impact:   No impact
Updated:  2026-11-28 09:00 UTC

Reference: incident INC-42, update INC-42-u1"
        )
    );

    let u = sample(Status::InProgress, Impact::Minor);
    let subject = render(
        &set,
        ChannelKind::Email,
        Part::Subject,
        &ctx(&u, "customers", None, "mail"),
    );
    assert_eq!(subject, "[Maintenance in progress] Mobile data outage");
}

#[test]
fn builtin_sms_and_push() {
    let set = set(&[]);
    let mut u = sample(Status::Identified, Impact::Major);
    u.audience_messages.insert(
        "regulators".into(),
        "Formal notice:\nroot cause identified.".into(),
    );
    let c = ctx(&u, "regulators", None, "sms");
    assert_eq!(
        render(&set, ChannelKind::Sms, Part::Text, &c),
        "[INC-42 identified] Mobile data outage: Formal notice: root cause identified. (ref INC-42-u1)"
    );
    let m = set.render_all(ChannelKind::Push, &c).expect("render");
    assert_eq!(m.get(Part::Title), Some("Identified: Mobile data outage"));
    assert_eq!(
        m.get(Part::Body),
        Some("Formal notice: root cause identified.")
    );

    let u = sample(Status::Completed, Impact::None);
    let c = ctx(&u, "customers", None, "push");
    assert_eq!(
        render(&set, ChannelKind::Push, Part::Title, &c),
        "Maintenance completed: Mobile data outage"
    );
}

#[test]
fn webhook_without_template_is_the_standard_payload() {
    let set = set(&[]);
    let u = sample(Status::Investigating, Impact::Major);
    let c = ctx(&u, "customers", None, "hook");
    let m = set.render_all(ChannelKind::Webhook, &c).expect("render");
    assert!(m.parts.is_empty());
    assert_eq!(
        set.render(ChannelKind::Webhook, Part::Body, &c),
        Err(TemplateError::Missing {
            kind: ChannelKind::Webhook,
            part: Part::Body,
            target: "hook".into()
        })
    );
}

#[test]
fn slack_preset() {
    let set = set(&[]).with_preset("chat", "slack").expect("preset");
    let u = sample(Status::Monitoring, Impact::Minor);
    let body = render(
        &set,
        ChannelKind::Webhook,
        Part::Body,
        &ctx(&u, "employees", None, "chat"),
    );
    assert_eq!(
        body,
        r#"{
  "text": "Monitoring: Mobile data outage (INC-42)",
  "blocks": [
    {"type": "header", "text": {"type": "plain_text", "text": "Monitoring: Mobile data outage"}},
    {"type": "section", "text": {"type": "mrkdwn", "text": "We are investigating reports of failed calls and mobile data in the affected regions."}},
    {"type": "section", "fields": [
      {"type": "mrkdwn", "text": "*Status*\nMonitoring"},
      {"type": "mrkdwn", "text": "*Impact*\nMinor"}
      , {"type": "mrkdwn", "text": "*Services*\nmobile-data, voice"}
      , {"type": "mrkdwn", "text": "*Regions*\nnorth"}
    ]},
    {"type": "actions", "elements": [
      {"type": "button", "text": {"type": "plain_text", "text": "Status page"}, "url": "https://status.example.com/incidents/INC-42"}
    ]},
    {"type": "context", "elements": [
      {"type": "mrkdwn", "text": "Incident INC-42 · update INC-42-u1 · 2026-11-28 09:00 UTC"}
    ]}
  ]
}"#
    );
}

#[test]
fn teams_preset_is_an_adaptive_card() {
    let config = TemplatesConfig {
        webhook_presets: [("teams-ops".to_string(), "teams".to_string())].into(),
        ..TemplatesConfig::default()
    };
    let set = set_with(&config, &[]);
    let u = sample(Status::Resolved, Impact::None);
    let body = render(
        &set,
        ChannelKind::Webhook,
        Part::Body,
        &ctx(&u, "employees", None, "teams-ops"),
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    let card = &v["attachments"][0]["content"];
    assert_eq!(v["type"], "message");
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["body"][0]["text"], "Resolved: Mobile data outage");
    assert_eq!(card["body"][0]["color"], "Good");
    assert_eq!(card["body"][2]["facts"][1]["value"], "No impact");
    assert_eq!(
        card["actions"][0]["url"],
        "https://status.example.com/incidents/INC-42"
    );
}

#[test]
fn unknown_preset_is_a_config_error() {
    let config = TemplatesConfig {
        webhook_presets: [("x".to_string(), "discord".to_string())].into(),
        ..TemplatesConfig::default()
    };
    let err = TemplateSet::build(&config, vec![]).expect_err("unknown preset");
    assert_eq!(
        err.to_string(),
        "templates.webhook_presets: target `x`: unknown preset `discord` (known: slack, teams)"
    );
    assert!(TemplateSet::preset("slack").is_some_and(|s| s.contains("\"blocks\"")));
}

/// Text that would break HTML or JSON if printed raw.
const HOSTILE: &str = r#"<script>alert("pwned")</script> & "quoted""#;

#[test]
fn escaping_in_html_json_and_plain_text() {
    let mut u = sample(Status::Investigating, Impact::Critical);
    u.message = HOSTILE.into();
    u.title = r#"Outage "north" <b>"#.into();
    let set = set(&[
        ("webhook/body.json.j2", r#"{"title": {{ title }}, "message": {{ message | tojson }}, "label": {{ "[" ~ status_label ~ "] " ~ title }}}"#),
        ("partials/footer.html.j2", "<p>{{ title }}</p>"),
        ("targets/custom-mail/html.j2", "<div>{{ message }}</div>{% include \"partials/footer.html.j2\" %}"),
    ])
    .with_preset("chat", "slack")
    .expect("preset");
    let c = ctx(&u, "customers", None, "mail");

    let html = render(&set, ChannelKind::Email, Part::Html, &c);
    assert!(
        !html.contains("<script>") && !html.contains("<b>"),
        "{html}"
    );
    assert!(
        html.contains(
            "<p>&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; &quot;quoted&quot;</p>"
        ),
        "{html}"
    );
    assert!(
        html.contains("<h1 style=\"font-size: 1.3em;\">Outage &quot;north&quot; &lt;b&gt;</h1>"),
        "{html}"
    );
    let custom = render(
        &set,
        ChannelKind::Email,
        Part::Html,
        &ctx(&u, "customers", None, "custom-mail"),
    );
    assert_eq!(
        custom,
        "<div>&lt;script&gt;alert(&quot;pwned&quot;)&lt;&#x2f;script&gt; &amp; &quot;quoted&quot;</div><p>Outage &quot;north&quot; &lt;b&gt;</p>"
    );

    let body = render(&set, ChannelKind::Webhook, Part::Body, &c);
    assert_eq!(
        body,
        r#"{"title": "Outage \"north\" <b>", "message": "\u003cscript\u003ealert(\"pwned\")\u003c/script\u003e \u0026 \"quoted\"", "label": "[Investigating] Outage \"north\" <b>"}"#
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    assert_eq!(v["message"], HOSTILE);

    let slack = render(
        &set,
        ChannelKind::Webhook,
        Part::Body,
        &ctx(&u, "customers", None, "chat"),
    );
    let v: serde_json::Value = serde_json::from_str(&slack).expect("valid JSON");
    assert_eq!(
        v["text"],
        r#"Investigating: Outage "north" &lt;b&gt; (INC-42)"#
    );
    assert_eq!(
        v["blocks"][1]["text"]["text"],
        r#"&lt;script&gt;alert("pwned")&lt;/script&gt; &amp; "quoted""#
    );

    // Plain-text parts carry the text as written.
    let sms = render(&set, ChannelKind::Sms, Part::Text, &c);
    assert_eq!(
        sms,
        r#"[INC-42 investigating] Outage "north" <b>: <script>alert("pwned")</script> & "quoted" (ref INC-42-u1)"#
    );
}

/// Slack control sequences: one pings everyone in the channel, one shows `click`
/// for a link to somewhere else.
const PING: &str = "<!channel>";
const DISGUISED_LINK: &str = "<https://evil.example|click>";

/// An update whose every free-text field, ids included, carries Slack control
/// sequences. It is a valid event: ids have no whitespace.
fn hostile_to_chat() -> IncidentUpdate {
    let mut u = sample(Status::Investigating, Impact::Critical);
    u.incident_id = format!("{PING}{DISGUISED_LINK}");
    u.update_id = format!("{DISGUISED_LINK}{PING}");
    u.title = format!("{PING} outage {DISGUISED_LINK}");
    u.message = format!("Read {DISGUISED_LINK} now {PING} & more");
    u.components = vec![PING.into(), DISGUISED_LINK.into()];
    u.regions = vec![DISGUISED_LINK.into()];
    u.links = vec![Link {
        title: format!("{PING} {DISGUISED_LINK}"),
        url: "https://status.example.com/faq?a=1&b=2".into(),
    }];
    u.validate().expect("still a valid event");
    u
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

#[test]
fn slack_preset_escapes_control_sequences_in_every_field() {
    let set = set(&[]).with_preset("chat", "slack").expect("preset");
    let u = hostile_to_chat();
    let body = render(
        &set,
        ChannelKind::Webhook,
        Part::Body,
        &ctx(&u, "employees", None, "chat"),
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    let mut all = Vec::new();
    strings(&v, "", &mut all);
    for (key, text) in &all {
        if key == "url" {
            // Not text: Slack does not parse a button's URL, and escaping `&` there
            // would break its query string.
            assert_eq!(*text, "https://status.example.com/faq?a=1&b=2");
            continue;
        }
        assert!(!text.contains(['<', '>']), "unescaped `{key}`: {text}");
        assert!(
            text.match_indices('&')
                .all(|(i, _)| ["&amp;", "&lt;", "&gt;"]
                    .iter()
                    .any(|e| text[i..].starts_with(e))),
            "raw & in `{key}`: {text}"
        );
    }
    assert_eq!(
        v["text"],
        "Investigating: &lt;!channel&gt; outage &lt;https://evil.example|click&gt; \
         (&lt;!channel&gt;&lt;https://evil.example|click&gt;)"
    );
    assert_eq!(
        v["blocks"][1]["text"]["text"],
        "Read &lt;https://evil.example|click&gt; now &lt;!channel&gt; &amp; more"
    );
    assert_eq!(
        v["blocks"][4]["elements"][0]["text"],
        "Incident &lt;!channel&gt;&lt;https://evil.example|click&gt; \
         · update &lt;https://evil.example|click&gt;&lt;!channel&gt; · 2026-11-28 09:00 UTC"
    );
    assert_eq!(
        v["blocks"][3]["elements"][0]["text"]["text"],
        "&lt;!channel&gt; &lt;https://evil.example|click&gt;"
    );
}

/// Slack refuses a block over its limits (header 150 characters, section text 3000,
/// field 2000), so the limits apply to the escaped text, which `<` makes four times
/// longer.
#[test]
fn slack_preset_stays_within_slacks_limits_after_escaping() {
    let set = set(&[]).with_preset("chat", "slack").expect("preset");
    let mut u = sample(Status::Investigating, Impact::Major);
    u.title = "<".repeat(400);
    u.message = "<>&".repeat(2000);
    u.components = vec!["<".repeat(200); 20];
    u.regions = vec!["&".repeat(200); 20];
    let body = render(
        &set,
        ChannelKind::Webhook,
        Part::Body,
        &ctx(&u, "employees", None, "chat"),
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    let len = |v: &serde_json::Value| v.as_str().map(|s| s.chars().count()).unwrap_or(0);
    // Shortened (an entity is never cut, so it may stop a few characters short).
    assert!((140..=150).contains(&len(&v["blocks"][0]["text"]["text"])));
    assert!(len(&v["blocks"][1]["text"]["text"]) <= 3000);
    for field in v["blocks"][2]["fields"].as_array().expect("fields") {
        assert!(len(&field["text"]) <= 2000, "{field}");
    }
    assert!(len(&v["blocks"][2]["fields"][2]["text"]) > 1900);
}

#[test]
fn slack_escape_shortens_without_cutting_an_entity() {
    let set = set(&[(
        "sms/text.j2",
        "{{ '<<<' | slack_escape(6) }}|{{ 'a<b' | slack_escape(6) }}|{{ 'a<b' | slack_escape(5) }}|{{ '<' | slack_escape(0) }}",
    )]);
    let u = sample(Status::Investigating, Impact::Minor);
    assert_eq!(
        render(
            &set,
            ChannelKind::Sms,
            Part::Text,
            &ctx(&u, "customers", None, "sms")
        ),
        "&lt;…|a&lt;b|a…|"
    );
}

/// Teams has no control sequence like Slack's: a mention needs a `<at>` tag *and* a
/// matching `msteams.entities` entry, which the preset never writes, and Adaptive
/// Cards render no HTML. What an update can attack is the JSON itself, which
/// auto-escaping keeps intact: every field arrives exactly as written.
#[test]
fn teams_preset_carries_hostile_text_verbatim_and_mentions_no_one() {
    let set = set(&[]).with_preset("teams", "teams").expect("preset");
    let mut u = hostile_to_chat();
    u.title = format!("<at>General</at> \"}}], \"x\": \"{PING}");
    let body = render(
        &set,
        ChannelKind::Webhook,
        Part::Body,
        &ctx(&u, "employees", None, "teams"),
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    let card = &v["attachments"][0]["content"];
    assert_eq!(
        card["body"][0]["text"],
        format!("Investigating: <at>General</at> \"}}], \"x\": \"{PING}")
    );
    assert_eq!(card["body"][1]["text"], u.message.as_str());
    assert!(
        card.get("x").is_none() && card["msteams"].get("entities").is_none(),
        "{card}"
    );
}

#[test]
fn locale_falls_back_from_region_to_language_to_default() {
    let files = [
        ("email/customers/subject.j2", "audience"),
        ("email/customers/fr/subject.j2", "fr"),
        ("email/customers/fr-CA/subject.j2", "fr-CA"),
        ("email/customers/en/subject.j2", "en"),
        (
            "email/customers/fr/text.j2",
            "texte en français ({{ locale }})",
        ),
        ("email/customers/text.j2", "plain ({{ locale }})"),
    ];
    let set = set(&files);
    let u = sample(Status::Investigating, Impact::Major);
    let subject = |locale| {
        render(
            &set,
            ChannelKind::Email,
            Part::Subject,
            &ctx(&u, "customers", locale, "mail"),
        )
    };
    assert_eq!(subject(Some("fr-CA")), "fr-CA");
    assert_eq!(subject(Some("fr-BE")), "fr");
    assert_eq!(subject(Some("fr")), "fr");
    assert_eq!(subject(Some("de-AT")), "en");
    assert_eq!(subject(None), "en");
    // An audience without localized files falls through to the kind's default.
    assert_eq!(
        render(
            &set,
            ChannelKind::Email,
            Part::Subject,
            &ctx(&u, "business", Some("fr"), "mail")
        ),
        "[Investigating] Mobile data outage"
    );
    let text = |locale| {
        render(
            &set,
            ChannelKind::Email,
            Part::Text,
            &ctx(&u, "customers", locale, "mail"),
        )
    };
    assert_eq!(text(Some("fr-CA")), "texte en français (fr-CA)");
    assert_eq!(text(Some("de")), "plain (de)");
    assert_eq!(set.locale_chain(Some("fr-CA")), ["fr-CA", "fr", "en"]);

    let config = TemplatesConfig {
        default_locale: Some("fr".into()),
        ..TemplatesConfig::default()
    };
    let set = set_with(&config, &files);
    let subject = |locale| {
        render(
            &set,
            ChannelKind::Email,
            Part::Subject,
            &ctx(&u, "customers", locale, "mail"),
        )
    };
    assert_eq!(subject(None), "fr");
    assert_eq!(subject(Some("de")), "fr");
}

#[test]
fn most_specific_template_wins() {
    let files = [
        ("email/subject.j2", "kind"),
        ("email/regulators/subject.j2", "kind+audience"),
        ("targets/reg-mail/subject.j2", "target"),
        ("targets/reg-mail/regulators/subject.j2", "target+audience"),
        (
            "targets/reg-mail/regulators/fr/subject.j2",
            "target+audience+locale",
        ),
        ("webhook/body.json.j2", r#"{"from": "kind"}"#),
        ("targets/chat-own/body.json.j2", r#"{"from": "target"}"#),
    ];
    let set = set(&files)
        .with_preset("chat", "slack")
        .expect("preset")
        .with_preset("chat-own", "slack")
        .expect("preset");
    let u = sample(Status::Investigating, Impact::Major);
    let pick = |audience, locale, target| {
        set.selected(
            ChannelKind::Email,
            Part::Subject,
            &ctx(&u, audience, locale, target),
        )
        .unwrap_or_default()
    };
    assert_eq!(
        pick("regulators", Some("fr"), "reg-mail"),
        "targets/reg-mail/regulators/fr/subject.j2"
    );
    assert_eq!(
        pick("regulators", None, "reg-mail"),
        "targets/reg-mail/regulators/subject.j2"
    );
    assert_eq!(
        pick("customers", None, "reg-mail"),
        "targets/reg-mail/subject.j2"
    );
    assert_eq!(
        pick("regulators", None, "other-mail"),
        "email/regulators/subject.j2"
    );
    assert_eq!(pick("customers", None, "other-mail"), "email/subject.j2");
    let r = set
        .render(
            ChannelKind::Email,
            Part::Subject,
            &ctx(&u, "customers", None, "reg-mail"),
        )
        .expect("render");
    assert_eq!(
        (r.text.as_str(), r.template.as_str()),
        ("target", "targets/reg-mail/subject.j2")
    );
    // Without any file, the built-in.
    let plain = set_with(&TemplatesConfig::default(), &[]);
    assert_eq!(
        plain.selected(
            ChannelKind::Email,
            Part::Subject,
            &ctx(&u, "customers", None, "x")
        ),
        Some("builtin/email/subject.j2".to_string())
    );

    // Webhook bodies: target file > preset > kind file.
    let body = |target| {
        render(
            &set,
            ChannelKind::Webhook,
            Part::Body,
            &ctx(&u, "customers", None, target),
        )
    };
    assert_eq!(body("chat-own"), r#"{"from": "target"}"#);
    assert!(body("chat").contains("\"blocks\""));
    assert_eq!(body("other"), r#"{"from": "kind"}"#);
}

#[test]
fn variables_and_helpers() {
    let config = TemplatesConfig {
        timezone: Some("Europe/Paris".into()),
        ..TemplatesConfig::default()
    };
    let set = set_with(
        &config,
        &[(
            "sms/text.j2",
            "{{ incident_id }}/{{ update_id }}#{{ sequence }} {{ status }}={{ status_label }} {{ impact }}={{ impact_label }} \
             {{ kind }} first={{ is_first }} final={{ is_final }} maint={{ is_maintenance }} \
             {{ components | join('+') }} {{ regions | join('+') }} {{ links[0].url }} {{ update.audiences | join('+') }} \
             {{ audience }}@{{ target }}/{{ channel }}/{{ locale }} \
             {{ occurred_at | datetime }} | {{ occurred_at | datetime('%d/%m/%Y à %H h %M') }} | {{ occurred_at | datetime(tz='America/New_York') }} \
             {{ '  two\n lines ' | oneline }} {{ 'abcdef' | truncate(4) }} {{ 'a<b>&c' | slack_escape }}",
        )],
    );
    let u = sample(Status::InProgress, Impact::Critical);
    assert_eq!(
        render(
            &set,
            ChannelKind::Sms,
            Part::Text,
            &ctx(&u, "customers", Some("fr-CA"), "sms-fr")
        ),
        "INC-42/INC-42-u1#1 in_progress=In progress critical=Critical maintenance first=True final=False maint=True \
         mobile-data+voice north https://status.example.com/incidents/INC-42 customers+regulators \
         customers@sms-fr/sms/fr-CA 2026-11-28 10:00 CET | 28/11/2026 à 10 h 00 | 2026-11-28 04:00 EST \
         two lines abc… a&lt;b&gt;&amp;c"
    );

    let err = TemplateSet::build(
        &TemplatesConfig {
            timezone: Some("Mars/Olympus".into()),
            ..TemplatesConfig::default()
        },
        vec![],
    )
    .expect_err("bad zone");
    assert!(
        err.to_string()
            .starts_with("templates.timezone: `Mars/Olympus` is not a known IANA time zone"),
        "{err}"
    );
}

#[test]
fn render_errors_name_file_and_line() {
    let set = set(&[("email/text.j2", "{{ title }}\n\n{{ titel }}")]);
    let u = sample(Status::Investigating, Impact::Major);
    let err = set
        .render(
            ChannelKind::Email,
            Part::Text,
            &ctx(&u, "customers", None, "mail"),
        )
        .expect_err("unknown variable");
    assert_eq!(
        err.to_string(),
        "email/text.j2:3: undefined value: `titel` is undefined"
    );
}

#[test]
fn builtins_and_presets_pass_check() {
    let targets = [
        target("mail", ChannelKind::Email, &["customers", "regulators"]),
        target("sms", ChannelKind::Sms, &["customers"]),
        target("push", ChannelKind::Push, &["customers"]),
        target("hook", ChannelKind::Webhook, &["employees"]),
        target("slack", ChannelKind::Webhook, &["employees"]),
        target("teams", ChannelKind::Webhook, &["employees"]),
    ];
    let set = set(&[])
        .with_preset("slack", "slack")
        .expect("preset")
        .with_preset("teams", "teams")
        .expect("preset");
    assert_eq!(set.check(&targets, &no_limit), Vec::new());
}

#[test]
fn check_rejects_a_syntax_error() {
    assert_eq!(
        problems(
            &[
                ("email/subject.j2", "{{ title }}"),
                (
                    "email/customers/text.j2",
                    "Hello,\n\n{% if impact == 'critical' %}\nURGENT\n"
                ),
                ("sms/text.j2", "{{ title }"),
            ],
            &[target("mail", ChannelKind::Email, &["customers"])]
        ),
        [
            "email/customers/text.j2:4: syntax error: unexpected end of input, expected end of block",
            "sms/text.j2:1: syntax error: unexpected `}`, expected end of variable block",
        ]
    );
}

#[test]
fn check_rejects_an_unknown_variable() {
    assert_eq!(
        problems(
            &[(
                "targets/mail/regulators/text.j2",
                "Dear regulator,\n{{ update.titel }}\n"
            )],
            &[target(
                "mail",
                ChannelKind::Email,
                &["customers", "regulators"]
            )]
        ),
        [
            "targets/mail/regulators/text.j2:2: undefined value: `update.titel` is undefined (target mail, email text, audience regulators, locale default, status investigating, impact none, every field set)"
        ]
    );
}

#[test]
fn check_rejects_invalid_json_body() {
    assert_eq!(
        problems(
            &[("webhook/body.json.j2", "{\"text\": \"{{ title }}\"}")],
            &[target("hook", ChannelKind::Webhook, &["customers"])]
        ),
        [
            "webhook/body.json.j2: webhook body is not valid JSON: expected `,` or `}` at line 1 column 12 (target hook, webhook body, audience customers, locale default, status investigating, impact none, every field set)"
        ]
    );
}

#[test]
fn check_rejects_a_long_subject() {
    assert_eq!(
        problems(
            &[(
                "email/subject.j2",
                "{{ title }}: {{ message }} {{ message }}"
            )],
            &[target("mail", ChannelKind::Email, &["customers"])]
        ),
        [
            "email/subject.j2: email subject is 257 characters, over the 200-character limit (target mail, email subject, audience customers, locale default, status investigating, impact none, every field set)"
        ]
    );
}

#[test]
fn check_applies_the_channels_limit_once_per_target() {
    let set = set(&[]);
    let limit = |t: &TargetTemplates, m: &Message| match (t.kind, m.get(Part::Text)) {
        (ChannelKind::Sms, Some(t)) if t.chars().count() > 160 => Err(format!(
            "SMS text is {} characters, over 1 segment",
            t.chars().count()
        )),
        _ => Ok(()),
    };
    let got: Vec<String> = set
        .check(
            &[target("sms", ChannelKind::Sms, &["customers", "business"])],
            &limit,
        )
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "SMS text is 199 characters, over 1 segment (templates: builtin/sms/text.j2) (target sms, sms, audience business, locale default, status investigating, impact none, every field set)"
        ]
    );
}

#[test]
fn check_rejects_misplaced_templates() {
    assert_eq!(
        problems(
            &[
                ("email/subjet.j2", "x"),
                ("fax/text.j2", "x"),
                ("README.md", "not a template"),
            ],
            &[]
        ),
        [
            "email/subjet.j2: `subjet.j2` is not a email part (expected one of subject.j2, text.j2, html.j2)",
            "fax/text.j2: not a template path Clarion knows: expected `{kind}/…`, `targets/{target}/…` or `partials/…`",
        ]
    );
    assert_eq!(
        problems(
            &[
                ("targets/mial/subject.j2", "x"),
                ("targets/sms/subject.j2", "x")
            ],
            &[target("sms", ChannelKind::Sms, &["customers"])]
        ),
        [
            "targets/mial/subject.j2: there is no target named `mial`",
            "targets/sms/subject.j2: target `sms` is a sms target, whose parts are text.j2",
        ]
    );
}

/// The worked example of docs/templates.md, so that the document stays true.
#[test]
fn worked_example_from_docs() {
    let files = [
        (
            "partials/reference.j2",
            "Ref. {{ incident_id }}/{{ update_id }}\n",
        ),
        (
            "email/regulators/subject.j2",
            "Incident notification {{ incident_id }} ({{ \"initial\" if is_first else (\"final\" if is_final else \"update \" ~ sequence) }}): {{ title | oneline }}\n",
        ),
        (
            "email/regulators/text.j2",
            r#"To the duty officer,

{{ message }}

Incident:        {{ incident_id }}
Status:          {{ status_label }}
Impact:          {{ impact_label }}
{% if components %}
Affected:        {{ components | join(", ") }}
{% endif %}
{% if regions %}
Regions:         {{ regions | join(", ") }}
{% endif %}
Time of update:  {{ occurred_at | datetime("%d %B %Y, %H:%M %Z") }}

{% include "partials/reference.j2" %}
"#,
        ),
        (
            "sms/customers/fr/text.j2",
            r#"{% set statut = {"investigating": "Enquête en cours", "identified": "Cause identifiée", "monitoring": "Sous surveillance", "resolved": "Résolu"} %}
{{ statut[status] | default(status_label) }} : {{ title | oneline }}. {{ message | oneline }} {% include "partials/reference.j2" %}
"#,
        ),
    ];
    let config = TemplatesConfig {
        dir: Some("/etc/clarion/templates".into()),
        timezone: Some("Europe/Paris".into()),
        webhook_presets: [("staff-chat".to_string(), "slack".to_string())].into(),
        ..TemplatesConfig::default()
    };
    let set = set_with(&config, &files);
    let mut u = sample(Status::Investigating, Impact::Critical);
    u.audiences = vec!["customers".into(), "regulators".into(), "employees".into()];
    u.audience_messages.insert(
        "regulators".into(),
        "A major outage of mobile data is under investigation. Approximately 120,000 subscribers are affected.".into(),
    );

    let mail = set
        .render_all(
            ChannelKind::Email,
            &ctx(&u, "regulators", None, "regulator-mail"),
        )
        .expect("render");
    assert_eq!(
        mail.get(Part::Subject),
        Some("Incident notification INC-42 (initial): Mobile data outage")
    );
    assert_eq!(
        mail.get(Part::Text),
        Some(
            "To the duty officer,

A major outage of mobile data is under investigation. Approximately 120,000 subscribers are affected.

Incident:        INC-42
Status:          Investigating
Impact:          Critical
Affected:        mobile-data, voice
Regions:         north
Time of update:  28 November 2026, 10:00 CET

Ref. INC-42/INC-42-u1"
        )
    );
    assert!(mail.get(Part::Html).is_some_and(|h| h.contains("<h1")));

    let sms = |locale| {
        render(
            &set,
            ChannelKind::Sms,
            Part::Text,
            &ctx(&u, "customers", locale, "consumer-sms"),
        )
    };
    assert_eq!(
        sms(Some("fr-CA")),
        "Enquête en cours : Mobile data outage. We are investigating reports of failed calls and mobile data in the affected regions. Ref. INC-42/INC-42-u1"
    );
    assert_eq!(
        sms(None),
        "[INC-42 investigating] Mobile data outage: We are investigating reports of failed calls and mobile data in the affected regions. (ref INC-42-u1)"
    );
    let chat = render(
        &set,
        ChannelKind::Webhook,
        Part::Body,
        &ctx(&u, "employees", None, "staff-chat"),
    );
    let v: serde_json::Value = serde_json::from_str(&chat).expect("json");
    assert_eq!(v["text"], "Investigating: Mobile data outage (INC-42)");

    let targets = [
        target("consumer-sms", ChannelKind::Sms, &["customers"]),
        target("business-mail", ChannelKind::Email, &["business"]),
        target("regulator-mail", ChannelKind::Email, &["regulators"]),
        target("staff-chat", ChannelKind::Webhook, &["employees"]),
    ];
    assert_eq!(set.check(&targets, &no_limit), Vec::new());
}
