//! `index.html` and one page per incident, from the built-in templates under
//! `templates/` (MiniJinja, every value HTML-escaped).
//!
//! The pages need no JavaScript and fetch nothing: the style is inline, there are
//! no fonts, images or scripts from anywhere. One inline script keeps "N minutes
//! ago" current as the page stays open; without it the page says how long ago the
//! last update was when the page was written, and the time itself.

use crate::api::{incident_path, status_words};
use crate::model::{PageConfig, Timeline, slug};
use crate::state::{ComponentStatus, Overview};
use jiff::Timestamp;
use minijinja::value::Serde;
use minijinja::{Environment, Value};
use serde::Serialize;
use std::sync::{Arc, OnceLock};

/// Why the built-in templates failed: a bug in this crate, reported rather than
/// panicked on.
#[derive(Debug, thiserror::Error)]
#[error("status page template `{template}`: {reason}")]
pub struct RenderError {
    pub template: &'static str,
    pub reason: String,
}

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // Built-in and checked by the tests: a failure here is a bug, and shows as
        // a render error naming the template.
        for (name, source) in [
            ("base.html", include_str!("../templates/base.html")),
            ("macros.html", include_str!("../templates/macros.html")),
            ("index.html", include_str!("../templates/index.html")),
            ("incident.html", include_str!("../templates/incident.html")),
        ] {
            let _ = env.add_template(name, source);
        }
        env.add_filter("paragraphs", paragraphs);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env
    })
}

/// Plain text as HTML paragraphs: escaped, blank lines between paragraphs, single
/// line breaks kept.
fn paragraphs(text: &str) -> Value {
    let mut out = String::new();
    for para in text
        .replace("\r\n", "\n")
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        out.push_str("<p>");
        let lines: Vec<String> = para.lines().map(escape).collect();
        out.push_str(&lines.join("<br>\n"));
        out.push_str("</p>\n");
    }
    Value::from_safe_string(out)
}

/// HTML-escapes text for element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// "N minutes ago", as the inline script says it.
pub fn ago(since: Timestamp, now: Timestamp) -> String {
    let minutes = now.duration_since(since).as_secs().max(0) / 60;
    match minutes {
        0 => "less than a minute ago".into(),
        1 => "1 minute ago".into(),
        m if m < 120 => format!("{m} minutes ago"),
        m if m < 2880 => format!("{} hours ago", m / 60),
        m => format!("{} days ago", m / 1440),
    }
}

#[derive(Serialize)]
struct When {
    iso: String,
    human: String,
    ago: String,
}

fn when(t: Timestamp, now: Timestamp) -> When {
    When {
        iso: t.to_string(),
        human: jiff::fmt::strtime::format("%-d %b %Y, %H:%M UTC", t)
            .unwrap_or_else(|_| t.to_string()),
        ago: ago(t, now),
    }
}

#[derive(Serialize)]
struct LinkView<'a> {
    title: &'a str,
    url: &'a str,
}

#[derive(Serialize)]
struct UpdateView<'a> {
    status_words: &'static str,
    body: &'a str,
    at: When,
    links: Vec<LinkView<'a>>,
}

#[derive(Serialize)]
struct IncidentView<'a> {
    slug: String,
    /// Relative to the page it is linked from (the index).
    path: String,
    title: &'a str,
    status_words: &'static str,
    impact: &'static str,
    open: bool,
    banner: &'static str,
    components: Vec<&'a str>,
    created: When,
    updated: When,
    /// Newest first.
    updates: Vec<UpdateView<'a>>,
    dropped: u64,
}

fn incident_view<'a>(config: &'a PageConfig, t: &'a Timeline, now: Timestamp) -> IncidentView<'a> {
    let components = t
        .components()
        .iter()
        .filter_map(|id| config.component(id).map(|c| c.name.as_str()))
        .collect();
    let status = ComponentStatus::of(t.latest());
    let banner = match status {
        _ if !t.is_open() => "none",
        ComponentStatus::Operational => "none",
        ComponentStatus::UnderMaintenance => "maintenance",
        ComponentStatus::DegradedPerformance => "minor",
        ComponentStatus::PartialOutage => "major",
        ComponentStatus::MajorOutage => "critical",
    };
    IncidentView {
        slug: slug(&t.incident_id),
        path: incident_path(&t.incident_id),
        title: t.title(),
        status_words: status_words(t.status()),
        impact: t.impact().as_str(),
        open: t.is_open(),
        banner,
        components,
        created: when(t.created_at, now),
        updated: when(t.updated_at(), now),
        updates: t
            .updates
            .iter()
            .rev()
            .map(|u| UpdateView {
                status_words: status_words(u.status),
                body: &u.body,
                at: when(u.occurred_at, now),
                links: u
                    .links
                    .iter()
                    .map(|l| LinkView {
                        title: &l.title,
                        url: &l.url,
                    })
                    .collect(),
            })
            .collect(),
        dropped: t.dropped,
    }
}

#[derive(Serialize)]
struct PageView<'a> {
    name: &'a str,
    url: &'a str,
}

#[derive(Serialize)]
struct StatusView {
    indicator: &'static str,
    description: &'static str,
}

#[derive(Serialize)]
struct ComponentView<'a> {
    id: &'a str,
    name: &'a str,
    description: Option<&'a str>,
    status: &'static str,
    words: &'static str,
}

#[derive(Serialize)]
struct GroupView<'a> {
    name: Option<&'a str>,
    components: Vec<ComponentView<'a>>,
}

/// What both kinds of page need.
pub(crate) struct Common<'a> {
    pub(crate) config: &'a PageConfig,
    pub(crate) now: Timestamp,
}

impl Common<'_> {
    fn base(&self, root: &str) -> Vec<(&'static str, Value)> {
        vec![
            (
                "page",
                Value::from(Serde(PageView {
                    name: &self.config.name,
                    url: &self.config.url,
                })),
            ),
            ("root", Value::from(root)),
            ("generated", Value::from(Serde(when(self.now, self.now)))),
        ]
    }

    fn render(
        &self,
        template: &'static str,
        ctx: Vec<(&'static str, Value)>,
    ) -> Result<Vec<u8>, RenderError> {
        let err = |e: minijinja::Error| RenderError {
            template,
            reason: format!("{e:#}"),
        };
        let tmpl = env().get_template(template).map_err(err)?;
        let ctx: std::collections::BTreeMap<&str, Value> = ctx.into_iter().collect();
        tmpl.render(ctx).map(String::into_bytes).map_err(err)
    }

    /// `index.html`.
    pub(crate) fn index(
        &self,
        overview: &Overview,
        active: &[&Arc<Timeline>],
        maintenance: &[&Arc<Timeline>],
        history: &[&Arc<Timeline>],
    ) -> Result<Vec<u8>, RenderError> {
        let config = self.config;
        let mut groups: Vec<GroupView<'_>> = Vec::new();
        for state in &overview.components {
            let c = &config.components[state.index];
            if c.only_show_if_degraded && state.status == ComponentStatus::Operational {
                continue;
            }
            let view = ComponentView {
                id: &c.id,
                name: &c.name,
                description: c.description.as_deref(),
                status: state.status.as_str(),
                words: state.status.words(),
            };
            let group = c.group.as_deref();
            match groups.iter_mut().find(|g| g.name == group) {
                Some(g) => g.components.push(view),
                None => groups.push(GroupView {
                    name: group,
                    components: vec![view],
                }),
            }
        }
        let views = |list: &[&Arc<Timeline>]| -> Vec<Value> {
            list.iter()
                .map(|t| Value::from(Serde(incident_view(config, t, self.now))))
                .collect()
        };
        let mut ctx = self.base("");
        ctx.extend([
            (
                "status",
                Value::from(Serde(StatusView {
                    indicator: overview.indicator.as_str(),
                    description: overview.indicator.description(),
                })),
            ),
            (
                "updated",
                match overview.updated_at {
                    Some(t) => Value::from(Serde(when(t, self.now))),
                    None => Value::from(()),
                },
            ),
            ("groups", Value::from(Serde(&groups))),
            ("active", Value::from(views(active))),
            ("maintenance", Value::from(views(maintenance))),
            ("history", Value::from(views(history))),
        ]);
        self.render("index.html", ctx)
    }

    /// One incident's page, with its whole timeline.
    pub(crate) fn incident(&self, t: &Timeline) -> Result<Vec<u8>, RenderError> {
        let mut ctx = self.base("../");
        ctx.push((
            "incident",
            Value::from(Serde(incident_view(self.config, t, self.now))),
        ));
        self.render("incident.html", ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_becomes_escaped_paragraphs() {
        let v = paragraphs("Line <b>one</b>\nline two\n\n\"Second\" & last");
        assert_eq!(
            v.to_string(),
            "<p>Line &lt;b&gt;one&lt;/b&gt;<br>\nline two</p>\n<p>&quot;Second&quot; &amp; last</p>\n"
        );
    }

    #[test]
    fn ago_reads_as_a_person_says_it() {
        let t: Timestamp = "2026-11-28T10:00:00Z".parse().expect("ts");
        let m = |n: i64| t + jiff::SignedDuration::from_mins(n);
        assert_eq!(ago(t, m(0)), "less than a minute ago");
        assert_eq!(ago(t, m(1)), "1 minute ago");
        assert_eq!(ago(t, m(42)), "42 minutes ago");
        assert_eq!(ago(t, m(185)), "3 hours ago");
        assert_eq!(ago(t, m(60 * 24 * 3)), "3 days ago");
        assert_eq!(ago(m(5), t), "less than a minute ago", "a clock behind");
    }
}
