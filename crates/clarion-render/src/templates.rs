//! Templates: what one update says on one channel, to one audience, in one language.
//!
//! Operators write [MiniJinja](https://docs.rs/minijinja) templates in a directory;
//! the daemon reads the files and hands their contents to [`TemplateSet::build`], which
//! compiles everything once. [`TemplateSet::render`] then picks, for each part of a
//! message, the most specific template in a fixed fallback chain (target, audience,
//! locale, channel kind, built-in default) and renders it against the update.
//! [`TemplateSet::check`] renders every template a configured target can select
//! against sample updates of every status and impact, so that a broken template is
//! found by `clarion check-config`, not by the first outage.
//!
//! This module never reads a file, the clock or the network: templates and time zone
//! data are handed in or compiled in, so rendering is deterministic and testable.
//! Rendering is strict: a template that names a variable that does not exist is an
//! error, never an empty string in a message sent to a regulator.
//!
//! About 1,100 lines, on purpose: it is one type, `TemplateSet`, whose building,
//! selection along the fallback chain and checking share its private tables; split
//! apart they would need those tables made visible to each other. The filters, which
//! share nothing, are in `templates/filters.rs`.

mod filters;

pub use filters::html_escape;
use filters::*;

use crate::route::is_final;
use clarion_core::{Impact, IncidentUpdate, Link, Status};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Template sources as written in config (`[templates]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatesConfig {
    /// Directory of template files (layout in `docs/templates.md`). The daemon reads
    /// every `*.j2` file under it and hands them to [`TemplateSet::build`]. Without
    /// it, the built-in templates are used.
    pub dir: Option<String>,
    /// IANA time zone (e.g. `Europe/Paris`) in which the `datetime` filter shows
    /// times. Default `UTC`.
    pub timezone: Option<String>,
    /// The locale tried after a recipient's own locale and its parent (`fr-CA`, then
    /// `fr`, then this). Default `en`.
    pub default_locale: Option<String>,
    /// Webhook targets whose body is a built-in preset instead of the standard JSON
    /// payload: target name → preset name (`slack` or `teams`), e.g.
    /// `[templates.webhook_presets]` `ops-chat = "slack"`. A `targets/NAME/body.json.j2`
    /// file still wins over the preset.
    #[serde(default)]
    pub webhook_presets: BTreeMap<String, String>,
}

/// The kinds of channel a template can be written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Email,
    Sms,
    Push,
    Webhook,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 4] = [
        ChannelKind::Email,
        ChannelKind::Sms,
        ChannelKind::Push,
        ChannelKind::Webhook,
    ];

    /// The name used in config (`type = "email"`) and in template paths.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Sms => "sms",
            ChannelKind::Push => "push",
            ChannelKind::Webhook => "webhook",
        }
    }

    pub fn from_name(name: &str) -> Option<ChannelKind> {
        ChannelKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The parts a message of this kind is made of, in rendering order.
    pub fn parts(self) -> &'static [Part] {
        match self {
            ChannelKind::Email => &[Part::Subject, Part::Text, Part::Html],
            ChannelKind::Sms => &[Part::Text],
            ChannelKind::Push => &[Part::Title, Part::Body],
            ChannelKind::Webhook => &[Part::Body],
        }
    }

    /// The file name (without `.j2`) of `part`'s templates for this kind, e.g.
    /// `subject`, or `body.json` for a webhook body.
    pub fn file_stem(self, part: Part) -> Option<&'static str> {
        if !self.parts().contains(&part) {
            return None;
        }
        Some(match (self, part) {
            (ChannelKind::Webhook, Part::Body) => "body.json",
            (_, part) => part.as_str(),
        })
    }

    fn part_for_stem(self, stem: &str) -> Option<Part> {
        self.parts()
            .iter()
            .copied()
            .find(|p| self.file_stem(*p) == Some(stem))
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One part of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Email subject: one line, at most [`MAX_SUBJECT_CHARS`] characters.
    Subject,
    /// Email plain-text body, or the SMS text.
    Text,
    /// Email HTML body (auto-escaped).
    Html,
    /// Push notification title.
    Title,
    /// Push notification body, or a webhook's JSON document.
    Body,
}

impl Part {
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Subject => "subject",
            Part::Text => "text",
            Part::Html => "html",
            Part::Title => "title",
            Part::Body => "body",
        }
    }

    /// Parts that are a single line of plain text: their output is trimmed, so a
    /// template file's layout never leaks spaces into a subject or an SMS.
    fn trimmed(kind: ChannelKind, part: Part) -> bool {
        !matches!(
            (kind, part),
            (ChannelKind::Email, Part::Text | Part::Html) | (ChannelKind::Webhook, _)
        )
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The longest email subject [`TemplateSet::check`] accepts, in characters.
pub const MAX_SUBJECT_CHARS: usize = 200;

/// The built-in webhook body presets, selectable by name.
pub const PRESETS: [&str; 2] = ["slack", "teams"];

/// Built-in defaults: (template name, kind, part, source). They are readable files in
/// the crate's `templates/` directory, and a good starting point for your own.
const BUILTINS: [(&str, ChannelKind, Part, &str); 6] = [
    (
        "builtin/email/subject.j2",
        ChannelKind::Email,
        Part::Subject,
        include_str!("../templates/email/subject.j2"),
    ),
    (
        "builtin/email/text.j2",
        ChannelKind::Email,
        Part::Text,
        include_str!("../templates/email/text.j2"),
    ),
    (
        "builtin/email/html.j2",
        ChannelKind::Email,
        Part::Html,
        include_str!("../templates/email/html.j2"),
    ),
    (
        "builtin/sms/text.j2",
        ChannelKind::Sms,
        Part::Text,
        include_str!("../templates/sms/text.j2"),
    ),
    (
        "builtin/push/title.j2",
        ChannelKind::Push,
        Part::Title,
        include_str!("../templates/push/title.j2"),
    ),
    (
        "builtin/push/body.j2",
        ChannelKind::Push,
        Part::Body,
        include_str!("../templates/push/body.j2"),
    ),
];

const PRESET_SOURCES: [(&str, &str); 2] = [
    ("slack", include_str!("../templates/presets/slack.json.j2")),
    ("teams", include_str!("../templates/presets/teams.json.j2")),
];

fn preset_name(preset: &str) -> String {
    format!("presets/{preset}.json.j2")
}

fn builtin_name(kind: ChannelKind, part: Part) -> Option<&'static str> {
    BUILTINS
        .iter()
        .find(|(_, k, p, _)| *k == kind && *p == part)
        .map(|(name, ..)| *name)
}

/// What one rendering is about.
#[derive(Debug, Clone, Copy)]
pub struct RenderContext<'a> {
    pub update: &'a IncidentUpdate,
    /// The audience the message is for (selects templates and `message_for`).
    pub audience: &'a str,
    /// The recipient's locale (`fr-CA`), if known; `None` means the default locale.
    pub locale: Option<&'a str>,
    /// The target's name (selects `targets/NAME/…` templates).
    pub target: &'a str,
}

/// One rendered part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub part: Part,
    pub text: String,
    /// The template that produced it: a path relative to `templates.dir`, or
    /// `builtin/…` / `presets/…` for a built-in.
    pub template: String,
}

/// Every part of one message. A webhook message without a body template has no
/// `Body` part: the webhook channel then sends its standard payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: ChannelKind,
    pub parts: BTreeMap<Part, String>,
}

impl Message {
    pub fn get(&self, part: Part) -> Option<&str> {
        self.parts.get(&part).map(String::as_str)
    }
}

/// Why templates could not be built or rendered. Messages name the template file
/// and line, as MiniJinja reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `[templates]` setting is wrong.
    #[error("templates.{field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// Template files that do not compile or are misplaced; every one is listed.
    #[error("{}", Problems(.0))]
    Invalid(Vec<TemplateProblem>),
    /// Rendering failed (an unknown variable, a filter given the wrong input).
    #[error("{}: {reason}", location(.file, *.line))]
    Render {
        file: String,
        line: Option<usize>,
        reason: String,
    },
    /// No template exists for this part (only possible for a webhook body, whose
    /// absence means "send the standard payload", or a part the kind does not have).
    #[error("no {kind} {part} template for target `{target}`")]
    Missing {
        kind: ChannelKind,
        part: Part,
        target: String,
    },
}

/// One thing wrong with the templates, as found by [`TemplateSet::build`] or
/// [`TemplateSet::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateProblem {
    /// The template file (relative to `templates.dir`, or `builtin/…`), when known.
    pub file: Option<String>,
    /// 1-based line in `file`, when MiniJinja knows it.
    pub line: Option<usize>,
    pub reason: String,
    /// The rendering that showed the problem, e.g. `target ops-mail, email subject,
    /// audience customers, locale default, status resolved, impact none`.
    pub example: Option<String>,
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", location(file, self.line))?;
        }
        f.write_str(&self.reason)?;
        if let Some(example) = &self.example {
            write!(f, " ({example})")?;
        }
        Ok(())
    }
}

struct Problems<'a>(&'a [TemplateProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} template problems:", many.len())?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

fn location(file: &str, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{file}:{line}"),
        None => file.to_string(),
    }
}

/// Where a template file sits in the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Kind {
        kind: ChannelKind,
        part: Part,
        audience: Option<String>,
        locale: Option<String>,
    },
    Target {
        target: String,
        /// `body` or `body.json` etc.: the kind is known only once the target is.
        stem: String,
        audience: Option<String>,
        locale: Option<String>,
    },
    Partial,
}

/// Parses a path relative to `templates.dir`; `Ok(None)` for a file that is not a
/// template (no `.j2`), which is skipped so a README can sit beside the templates.
fn parse_path(path: &str) -> Result<Option<Slot>, String> {
    let Some(stripped) = path.strip_suffix(".j2") else {
        return Ok(None);
    };
    let segs: Vec<&str> = stripped.split('/').collect();
    if segs.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err("empty, `.` or `..` path segment".to_string());
    }
    let opt = |i: usize, len: usize| (i + 1 < len).then(|| segs[i].to_string());
    let stem = segs[segs.len() - 1];
    match segs[0] {
        "partials" if segs.len() >= 2 => Ok(Some(Slot::Partial)),
        "targets" if (3..=5).contains(&segs.len()) => {
            let known = ChannelKind::ALL
                .iter()
                .any(|k| k.part_for_stem(stem).is_some());
            if !known {
                return Err(format!(
                    "`{stem}.j2` is not a part of any channel kind (subject, text, html, title, body, body.json)"
                ));
            }
            Ok(Some(Slot::Target {
                target: segs[1].to_string(),
                stem: stem.to_string(),
                audience: opt(2, segs.len()),
                locale: opt(3, segs.len()),
            }))
        }
        first => {
            let Some(kind) = ChannelKind::from_name(first) else {
                return Err(
                    "not a template path Clarion knows: expected `{kind}/…`, `targets/{target}/…` or `partials/…`"
                        .to_string(),
                );
            };
            if !(2..=4).contains(&segs.len()) {
                return Err(format!(
                    "expected `{kind}/{{part}}.j2`, `{kind}/{{audience}}/{{part}}.j2` or `{kind}/{{audience}}/{{locale}}/{{part}}.j2`"
                ));
            }
            let Some(part) = kind.part_for_stem(stem) else {
                let stems: Vec<String> = kind
                    .parts()
                    .iter()
                    .filter_map(|p| kind.file_stem(*p))
                    .map(|s| format!("{s}.j2"))
                    .collect();
                return Err(format!(
                    "`{stem}.j2` is not a {kind} part (expected one of {})",
                    stems.join(", ")
                ));
            };
            Ok(Some(Slot::Kind {
                kind,
                part,
                audience: opt(1, segs.len()),
                locale: opt(2, segs.len()),
            }))
        }
    }
}

/// Auto-escaping by file name, as MiniJinja does by default: `html.j2` and
/// `*.html.j2` are HTML-escaped; `*.json.j2` prints every `{{ }}` as a JSON value;
/// everything else (subjects, SMS, push) is plain text.
fn escape_for(name: &str) -> AutoEscape {
    let stem = name.strip_suffix(".j2").unwrap_or(name);
    let last = stem.rsplit('/').next().unwrap_or(stem);
    if last == "html" || last.ends_with(".html") {
        AutoEscape::Html
    } else if last.ends_with(".json") {
        AutoEscape::Json
    } else {
        AutoEscape::None
    }
}

/// Compiled templates; cheap to share (`Send + Sync`) between delivery workers.
pub struct TemplateSet {
    env: Environment<'static>,
    /// Operator-provided template names (paths) and where they sit.
    files: BTreeMap<String, Slot>,
    presets: BTreeMap<String, String>,
    default_locale: String,
    timezone: String,
}

impl fmt::Debug for TemplateSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemplateSet")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("presets", &self.presets)
            .field("default_locale", &self.default_locale)
            .field("timezone", &self.timezone)
            .finish_non_exhaustive()
    }
}

impl TemplateSet {
    /// Compiles the built-in templates and `files` (`(path relative to dir,
    /// contents)`; paths use `/`). Fails with every misplaced or uncompilable file
    /// listed, or on a bad `[templates]` setting. Does no I/O.
    pub fn build(
        config: &TemplatesConfig,
        files: Vec<(String, String)>,
    ) -> Result<TemplateSet, TemplateError> {
        let zone_name = config.timezone.clone().unwrap_or_else(|| "UTC".to_string());
        let zone = TimeZone::get(&zone_name).map_err(|e| TemplateError::Config {
            field: "timezone",
            reason: format!("`{zone_name}` is not a known IANA time zone: {e}"),
        })?;
        let default_locale = config
            .default_locale
            .clone()
            .unwrap_or_else(|| "en".to_string());
        if default_locale.is_empty() || default_locale.contains(['/', '\\', ' ']) {
            return Err(TemplateError::Config {
                field: "default_locale",
                reason: format!("`{default_locale}` is not a locale (e.g. `en` or `fr-CA`)"),
            });
        }
        for (target, preset) in &config.webhook_presets {
            if !PRESETS.contains(&preset.as_str()) {
                return Err(TemplateError::Config {
                    field: "webhook_presets",
                    reason: format!(
                        "target `{target}`: unknown preset `{preset}` (known: {})",
                        PRESETS.join(", ")
                    ),
                });
            }
        }

        let mut env = environment(zone);
        for (name, _, _, source) in BUILTINS {
            env.add_template(name, source)
                .map_err(|e| TemplateError::Invalid(vec![problem_from(&e, name)]))?;
        }
        for (preset, source) in PRESET_SOURCES {
            let name = preset_name(preset);
            env.add_template_owned(name.clone(), source)
                .map_err(|e| TemplateError::Invalid(vec![problem_from(&e, &name)]))?;
        }

        let mut problems = Vec::new();
        let mut slots = BTreeMap::new();
        for (path, source) in files {
            let path = path.replace('\\', "/");
            let path = path.trim_start_matches("./").to_string();
            let slot = match parse_path(&path) {
                Ok(Some(slot)) => slot,
                Ok(None) => continue,
                Err(reason) => {
                    problems.push(TemplateProblem {
                        file: Some(path),
                        line: None,
                        reason,
                        example: None,
                    });
                    continue;
                }
            };
            match env.add_template_owned(path.clone(), source) {
                Ok(()) => {
                    slots.insert(path, slot);
                }
                Err(e) => problems.push(problem_from(&e, &path)),
            }
        }
        if !problems.is_empty() {
            return Err(TemplateError::Invalid(problems));
        }
        Ok(TemplateSet {
            env,
            files: slots,
            presets: config.webhook_presets.clone(),
            default_locale,
            timezone: zone_name,
        })
    }

    /// Makes `target`'s webhook body the built-in preset `preset` (one of
    /// [`PRESETS`]); the same as `[templates.webhook_presets]`, for a daemon that
    /// takes the choice from the target's own section.
    pub fn with_preset(mut self, target: &str, preset: &str) -> Result<TemplateSet, TemplateError> {
        if !PRESETS.contains(&preset) {
            return Err(TemplateError::Config {
                field: "webhook_presets",
                reason: format!(
                    "target `{target}`: unknown preset `{preset}` (known: {})",
                    PRESETS.join(", ")
                ),
            });
        }
        self.presets.insert(target.to_string(), preset.to_string());
        Ok(self)
    }

    /// The source of a built-in webhook body preset, to read or copy.
    pub fn preset(name: &str) -> Option<&'static str> {
        PRESET_SOURCES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, source)| *source)
    }

    /// The source of the built-in default template for a part.
    pub fn builtin(kind: ChannelKind, part: Part) -> Option<&'static str> {
        BUILTINS
            .iter()
            .find(|(_, k, p, _)| *k == kind && *p == part)
            .map(|(.., source)| *source)
    }

    /// The locales tried, most specific first: `fr-CA`, `fr`, then the default
    /// locale (and its parents).
    pub fn locale_chain(&self, locale: Option<&str>) -> Vec<String> {
        let mut chain: Vec<String> = Vec::new();
        for start in [locale, Some(self.default_locale.as_str())]
            .into_iter()
            .flatten()
        {
            let mut current = start;
            loop {
                if !current.is_empty() && !chain.iter().any(|c| c == current) {
                    chain.push(current.to_string());
                }
                match current.rfind(['-', '_']) {
                    Some(i) => current = &current[..i],
                    None => break,
                }
            }
        }
        chain
    }

    /// The name of the template that renders `part` for this context, following the
    /// fallback chain: target+audience+locale → target+audience → target → the
    /// target's webhook preset → kind+audience+locale → kind+audience → kind →
    /// built-in. `None` only for a webhook body with no template (standard payload)
    /// or a part the kind does not have.
    pub fn selected(
        &self,
        kind: ChannelKind,
        part: Part,
        ctx: &RenderContext<'_>,
    ) -> Option<String> {
        let stem = kind.file_stem(part)?;
        let (t, a) = (ctx.target, ctx.audience);
        let k = kind.as_str();
        // This runs for every delivery: a directory without a single file (the
        // usual case for most targets) is skipped without naming its candidates.
        let has_files_under = |prefix: &str| {
            self.files
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .next()
                .is_some_and(|(name, _)| name.starts_with(prefix))
        };
        let target_dir = has_files_under(&format!("targets/{t}/"));
        let kind_dir = has_files_under(&format!("{k}/"));
        let locales = if target_dir || kind_dir {
            self.locale_chain(ctx.locale)
        } else {
            Vec::new()
        };
        let mut candidates: Vec<String> = Vec::new();
        if target_dir {
            candidates.extend(
                locales
                    .iter()
                    .map(|l| format!("targets/{t}/{a}/{l}/{stem}.j2")),
            );
            candidates.push(format!("targets/{t}/{a}/{stem}.j2"));
            candidates.push(format!("targets/{t}/{stem}.j2"));
        }
        if let (ChannelKind::Webhook, Some(preset)) = (kind, self.presets.get(t)) {
            candidates.push(preset_name(preset));
        }
        if kind_dir {
            candidates.extend(locales.iter().map(|l| format!("{k}/{a}/{l}/{stem}.j2")));
            candidates.push(format!("{k}/{a}/{stem}.j2"));
            candidates.push(format!("{k}/{stem}.j2"));
        }
        if let Some(name) = builtin_name(kind, part) {
            candidates.push(name.to_string());
        }
        candidates.into_iter().find(|c| {
            self.files.contains_key(c) || c.starts_with("builtin/") || c.starts_with("presets/")
        })
    }

    /// Renders one part for one audience. Subjects, titles, SMS text and push bodies
    /// are trimmed; a webhook body must be valid JSON (else an error naming the
    /// template).
    pub fn render(
        &self,
        kind: ChannelKind,
        part: Part,
        ctx: &RenderContext<'_>,
    ) -> Result<Rendered, TemplateError> {
        let Some(name) = self.selected(kind, part, ctx) else {
            return Err(TemplateError::Missing {
                kind,
                part,
                target: ctx.target.to_string(),
            });
        };
        let values = context(kind, ctx, &self.locale_chain(ctx.locale));
        let text = self
            .env
            .get_template(&name)
            .and_then(|t| t.render(values))
            .map_err(|e| {
                let p = problem_from(&e, &name);
                TemplateError::Render {
                    file: p.file.unwrap_or(name.clone()),
                    line: p.line,
                    reason: p.reason,
                }
            })?;
        let text = if Part::trimmed(kind, part) {
            text.trim().to_string()
        } else {
            text
        };
        // A receiver cannot do anything with a body that is not JSON: fail here, where
        // the error can name the template, rather than at the receiver.
        if kind == ChannelKind::Webhook {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
                return Err(TemplateError::Render {
                    file: name,
                    line: None,
                    reason: format!("webhook body is not valid JSON: {e}"),
                });
            }
        }
        Ok(Rendered {
            part,
            text,
            template: name,
        })
    }

    /// Renders every part of a message of `kind`. A webhook body is left out when no
    /// template or preset applies (the channel sends its standard payload).
    pub fn render_all(
        &self,
        kind: ChannelKind,
        ctx: &RenderContext<'_>,
    ) -> Result<Message, TemplateError> {
        let mut parts = BTreeMap::new();
        for &part in kind.parts() {
            if kind == ChannelKind::Webhook && self.selected(kind, part, ctx).is_none() {
                continue;
            }
            let rendered = self.render(kind, part, ctx)?;
            parts.insert(part, rendered.text);
        }
        Ok(Message { kind, parts })
    }

    /// Renders every template each of `targets` can select, for every audience it
    /// serves, every locale it lists or that a template directory names, and sample
    /// updates of every status and impact (one with every optional field set and
    /// hostile text such as `<script>` and `"`, one with none), and returns every
    /// problem found, de-duplicated by file, line and reason (ignoring numbers):
    ///
    /// - render errors (unknown variables: rendering is strict), with file and line;
    /// - a webhook body that is not valid JSON;
    /// - an email subject over [`MAX_SUBJECT_CHARS`] characters or over one line;
    /// - whatever `limit(kind, &message)` rejects: the channel's own budget (SMS
    ///   segments, push payload size), checked by the caller who knows it; at most
    ///   one such problem is reported per target;
    /// - `targets/NAME/…` templates or presets for targets not in `targets`, and
    ///   target templates for a part the target's kind does not have.
    ///
    /// Compile errors are found earlier, by [`TemplateSet::build`].
    pub fn check(
        &self,
        targets: &[TargetTemplates],
        limit: &dyn Fn(&TargetTemplates, &Message) -> Result<(), String>,
    ) -> Vec<TemplateProblem> {
        let mut problems = Problemset::default();
        self.check_layout(targets, &mut problems);
        for target in targets {
            let mut locales: BTreeSet<Option<String>> = BTreeSet::from([None]);
            locales.extend(target.locales.iter().cloned().map(Some));
            for slot in self.files.values() {
                match slot {
                    Slot::Kind {
                        kind,
                        locale: Some(l),
                        ..
                    } if *kind == target.kind => {
                        locales.insert(Some(l.clone()));
                    }
                    Slot::Target {
                        target: t,
                        locale: Some(l),
                        ..
                    } if *t == target.name => {
                        locales.insert(Some(l.clone()));
                    }
                    _ => {}
                }
            }
            let mut limit_reported = false;
            for audience in &target.audiences {
                let samples = check_samples(audience);
                for locale in &locales {
                    for (label, update) in &samples {
                        let ctx = RenderContext {
                            update,
                            audience,
                            locale: locale.as_deref(),
                            target: &target.name,
                        };
                        let example = |part: Option<Part>| {
                            format!(
                                "target {}, {}{}, audience {audience}, locale {}, {label}",
                                target.name,
                                target.kind,
                                part.map(|p| format!(" {p}")).unwrap_or_default(),
                                locale.as_deref().unwrap_or("default"),
                            )
                        };
                        let mut message = Message {
                            kind: target.kind,
                            parts: BTreeMap::new(),
                        };
                        let mut complete = true;
                        for &part in target.kind.parts() {
                            if self.selected(target.kind, part, &ctx).is_none() {
                                continue;
                            }
                            match self.render(target.kind, part, &ctx) {
                                Ok(r) => {
                                    if let Some(reason) = part_problem(target.kind, part, &r.text) {
                                        problems.push(TemplateProblem {
                                            file: Some(r.template.clone()),
                                            line: None,
                                            reason,
                                            example: Some(example(Some(part))),
                                        });
                                    }
                                    message.parts.insert(part, r.text);
                                }
                                Err(e) => {
                                    complete = false;
                                    let (file, line, reason) = match e {
                                        TemplateError::Render { file, line, reason } => {
                                            (Some(file), line, reason)
                                        }
                                        other => (None, None, other.to_string()),
                                    };
                                    problems.push(TemplateProblem {
                                        file,
                                        line,
                                        reason,
                                        example: Some(example(Some(part))),
                                    });
                                }
                            }
                        }
                        if !complete || limit_reported {
                            continue;
                        }
                        if let Err(reason) = limit(target, &message) {
                            limit_reported = true;
                            let files: Vec<String> = target
                                .kind
                                .parts()
                                .iter()
                                .filter_map(|p| self.selected(target.kind, *p, &ctx))
                                .collect();
                            problems.push(TemplateProblem {
                                file: None,
                                line: None,
                                reason: format!("{reason} (templates: {})", files.join(", ")),
                                example: Some(example(None)),
                            });
                        }
                    }
                }
            }
        }
        problems.0
    }

    /// Problems visible from the layout alone: templates for unknown targets or for
    /// a part their target's kind lacks, presets for unknown or non-webhook targets.
    fn check_layout(&self, targets: &[TargetTemplates], problems: &mut Problemset) {
        let kind_of = |name: &str| targets.iter().find(|t| t.name == name).map(|t| t.kind);
        for (path, slot) in &self.files {
            let Slot::Target { target, stem, .. } = slot else {
                continue;
            };
            let reason = match kind_of(target) {
                None => format!("there is no target named `{target}`"),
                Some(kind) if kind.part_for_stem(stem).is_none() => {
                    let stems: Vec<String> = kind
                        .parts()
                        .iter()
                        .filter_map(|p| kind.file_stem(*p))
                        .map(|s| format!("{s}.j2"))
                        .collect();
                    format!(
                        "target `{target}` is a {kind} target, whose parts are {}",
                        stems.join(", ")
                    )
                }
                Some(_) => continue,
            };
            problems.push(TemplateProblem {
                file: Some(path.clone()),
                line: None,
                reason,
                example: None,
            });
        }
        for target in self.presets.keys() {
            let reason = match kind_of(target) {
                None => format!("templates.webhook_presets: there is no target named `{target}`"),
                Some(ChannelKind::Webhook) => continue,
                Some(kind) => format!(
                    "templates.webhook_presets: target `{target}` is a {kind} target, not a webhook"
                ),
            };
            problems.push(TemplateProblem {
                file: None,
                line: None,
                reason,
                example: None,
            });
        }
    }

    /// [`TemplateSet::build`] then [`TemplateSet::check`], for `check-config`: every
    /// problem, or the ready set.
    pub fn validate(
        config: &TemplatesConfig,
        files: Vec<(String, String)>,
        targets: &[TargetTemplates],
        limit: &dyn Fn(&TargetTemplates, &Message) -> Result<(), String>,
    ) -> Result<TemplateSet, Vec<TemplateProblem>> {
        let set = match TemplateSet::build(config, files) {
            Ok(set) => set,
            Err(TemplateError::Invalid(problems)) => return Err(problems),
            Err(other) => {
                return Err(vec![TemplateProblem {
                    file: None,
                    line: None,
                    reason: other.to_string(),
                    example: None,
                }]);
            }
        };
        let problems = set.check(targets, limit);
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(problems)
        }
    }
}

/// What [`TemplateSet::check`] needs to know about one configured target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTemplates {
    /// The target's name (`[targets.NAME]`).
    pub name: String,
    pub kind: ChannelKind,
    /// Every audience the target can deliver to (its `audiences`).
    pub audiences: BTreeSet<String>,
    /// Recipient locales the target will render for, beyond the default; locales
    /// that template directories name are checked anyway.
    pub locales: Vec<String>,
}

/// Problems in the order found, without duplicates (the same broken line shows up
/// once, with the first rendering that hit it; reasons are compared ignoring digits).
#[derive(Default)]
struct Problemset(Vec<TemplateProblem>);

impl Problemset {
    fn push(&mut self, p: TemplateProblem) {
        // Numbers (a length, a JSON column) vary with the sample that showed the
        // problem; the problem is the same.
        let key = |r: &str| r.replace(|c: char| c.is_ascii_digit(), "");
        let dup = self
            .0
            .iter()
            .any(|q| q.file == p.file && q.line == p.line && key(&q.reason) == key(&p.reason));
        if !dup {
            self.0.push(p);
        }
    }
}

/// Checks on one rendered part that do not depend on the channel's configuration.
fn part_problem(kind: ChannelKind, part: Part, text: &str) -> Option<String> {
    match (kind, part) {
        (ChannelKind::Email, Part::Subject) => {
            let n = text.chars().count();
            if n > MAX_SUBJECT_CHARS {
                Some(format!(
                    "email subject is {n} characters, over the {MAX_SUBJECT_CHARS}-character limit"
                ))
            } else if text.contains(['\n', '\r']) {
                Some("email subject spans several lines".to_string())
            } else if text.is_empty() {
                Some("email subject is empty".to_string())
            } else {
                None
            }
        }
        // Webhook bodies are checked for JSON validity by `render` itself.
        (ChannelKind::Webhook, _) => None,
        _ if text.trim().is_empty() => Some(format!("{kind} {part} is empty")),
        _ => None,
    }
}

/// Sample updates for `check`: every status × impact, each once with every optional
/// field set (and text that needs escaping) and once with none.
fn check_samples(audience: &str) -> Vec<(String, IncidentUpdate)> {
    let start: Timestamp = "2026-11-28T09:00:00Z"
        .parse()
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let Some(base) = clarion_core::samples::lifecycle(
        "INC-2026-0042",
        "Mobile data outage in the north region",
        &[audience],
        start,
    )
    .into_iter()
    .next() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for status in Status::ALL {
        for impact in Impact::ALL {
            let mut full = base.clone();
            full.status = status;
            full.impact = impact;
            full.sequence = if matches!(status, Status::Investigating | Status::Scheduled) {
                1
            } else {
                3
            };
            full.message = "Calls and \"mobile data\" fail <script>alert('x')</script> & more.\n\nNext update in 30 minutes.".to_string();
            full.audience_messages.insert(
                audience.to_string(),
                format!("{} (for {audience})", full.message),
            );
            full.links.push(Link {
                title: "FAQ".into(),
                url: "https://status.example.com/faq?a=1&b=2".into(),
            });
            let mut bare = base.clone();
            bare.status = status;
            bare.impact = impact;
            bare.sequence = full.sequence;
            bare.components.clear();
            bare.regions.clear();
            bare.links.clear();
            out.push((
                format!("status {status}, impact {impact}, every field set"),
                full,
            ));
            out.push((
                format!("status {status}, impact {impact}, optional fields empty"),
                bare,
            ));
        }
    }
    out
}

fn problem_from(e: &minijinja::Error, fallback_name: &str) -> TemplateProblem {
    let mut reason = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        reason.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    TemplateProblem {
        file: Some(e.name().unwrap_or(fallback_name).to_string()),
        line: e.line(),
        reason,
        example: None,
    }
}

/// The environment every template is compiled in: strict undefined values,
/// auto-escaping by file name, block tags that do not leave blank lines, and
/// Clarion's filters.
fn environment(zone: TimeZone) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(escape_for);
    if let Ok(syntax) = env
        .syntax()
        .to_builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.add_filter(
        "datetime",
        move |value: &str, format: Option<&str>, kwargs: Kwargs| {
            datetime(&zone, value, format, &kwargs)
        },
    );
    env.add_filter("oneline", oneline);
    env.add_filter("truncate", truncate);
    env.add_filter("slack_escape", slack_escape);
    env.add_filter("paragraphs", paragraphs);
    env
}

/// The variables a template sees (listed in `docs/templates.md`).
fn context(kind: ChannelKind, ctx: &RenderContext<'_>, locales: &[String]) -> Value {
    let u = ctx.update;
    let mut m: BTreeMap<Value, Value> = BTreeMap::new();
    let mut set = |k: &str, v: Value| {
        m.insert(Value::from(k), v);
    };
    set("update", Value::from(Serde(u)));
    set("incident_id", Value::from(u.incident_id.as_str()));
    set("update_id", Value::from(u.update_id.as_str()));
    set("sequence", Value::from(u.sequence));
    set("status", Value::from(u.status.as_str()));
    set("impact", Value::from(u.impact.as_str()));
    set("title", Value::from(u.title.as_str()));
    set("message", Value::from(u.message_for(ctx.audience)));
    set("components", Value::from(Serde(&u.components)));
    set("regions", Value::from(Serde(&u.regions)));
    set("audiences", Value::from(Serde(&u.audiences)));
    set("links", Value::from(Serde(&u.links)));
    set("occurred_at", Value::from(u.occurred_at.to_string()));
    set("audience", Value::from(ctx.audience));
    set("target", Value::from(ctx.target));
    set("channel", Value::from(kind.as_str()));
    set(
        "locale",
        Value::from(locales.first().map(String::as_str).unwrap_or("en")),
    );
    set("status_label", Value::from(status_label(u.status)));
    set("impact_label", Value::from(impact_label(u.impact)));
    set("is_maintenance", Value::from(u.status.is_maintenance()));
    set("is_final", Value::from(is_final(u.status)));
    set("is_first", Value::from(u.sequence == 1));
    set(
        "kind",
        Value::from(crate::route::UpdateKind::of(u.status).as_str()),
    );
    Value::from(m)
}

#[cfg(test)]
#[path = "templates_tests.rs"]
mod tests;
