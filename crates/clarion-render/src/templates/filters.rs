//! The filters Clarion adds to MiniJinja (`datetime`, `oneline`, `truncate`,
//! `slack_escape`, `paragraphs`), HTML escaping, and the words a status or an impact
//! is shown as. Pure functions of their arguments.

use clarion_core::{Impact, Status};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use minijinja::ErrorKind;
use minijinja::value::{Kwargs, Value};

/// `{{ occurred_at | datetime }}`, `{{ occurred_at | datetime("%d %B %Y, %H:%M %Z") }}`,
/// `{{ occurred_at | datetime(tz="America/New_York") }}`: an RFC 3339 timestamp in
/// the configured (or given) zone, strftime-style. Default format
/// `%Y-%m-%d %H:%M %Z`.
pub(super) fn datetime(
    zone: &TimeZone,
    value: &str,
    format: Option<&str>,
    kwargs: &Kwargs,
) -> Result<String, minijinja::Error> {
    let tz: Option<String> = kwargs.get("tz")?;
    kwargs.assert_all_used()?;
    let ts: Timestamp = value.parse().map_err(|e| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("datetime: `{value}` is not an RFC 3339 timestamp: {e}"),
        )
    })?;
    let zone = match tz {
        Some(name) => TimeZone::get(&name).map_err(|e| {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("datetime: unknown time zone `{name}`: {e}"),
            )
        })?,
        None => zone.clone(),
    };
    let format = format.unwrap_or("%Y-%m-%d %H:%M %Z");
    jiff::fmt::strtime::format(format, &ts.to_zoned_datetime(zone)).map_err(|e| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("datetime: cannot format with `{format}`: {e}"),
        )
    })
}

/// Collapses every run of whitespace (line breaks included) into one space.
pub(super) fn oneline(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Keeps at most `max` characters, ending a shortened text with `…`.
pub(super) fn truncate(value: &str, max: usize) -> String {
    if value.chars().count() <= max {
        return value.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut out: String = value.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// `{{ title | slack_escape }}`, `{{ message | slack_escape(3000) }}`: escapes `&`,
/// `<` and `>`, the characters that open Slack's control sequences (`<!channel>`
/// pings a channel, `<https://evil|click>` disguises a link), so that text from an
/// update is only ever text. With `max`, the escaped text is at most `max`
/// characters (Slack's limits apply to what it receives), ending with `…` when
/// shortened, and never cut inside an `&lt;`: escape first and `truncate` after
/// could leave a dangling `&l`.
pub(super) fn slack_escape(value: &str, max: Option<usize>) -> String {
    let escaped = escape_slack(value);
    let Some(max) = max else {
        return escaped;
    };
    if escaped.chars().count() <= max {
        return escaped;
    }
    let mut out = String::new();
    let mut used = 0;
    for c in value.chars() {
        let piece = escape_slack_char(c);
        let len = piece.chars().count();
        // Keep one character of the budget for the ellipsis.
        if used + len + 1 > max {
            break;
        }
        out.push_str(&piece);
        used += len;
    }
    if max > 0 {
        out.push('…');
    }
    out
}

pub(super) fn escape_slack(value: &str) -> String {
    value.chars().map(escape_slack_char).collect()
}

pub(super) fn escape_slack_char(c: char) -> std::borrow::Cow<'static, str> {
    match c {
        '&' => "&amp;".into(),
        '<' => "&lt;".into(),
        '>' => "&gt;".into(),
        c => c.to_string().into(),
    }
}

/// Plain text → HTML paragraphs: a blank line separates paragraphs, a line break
/// becomes `<br>`; the text itself is escaped. Returns safe HTML.
pub(super) fn paragraphs(value: &str) -> Value {
    let mut html = String::new();
    for para in value.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let lines: Vec<String> = para.lines().map(html_escape).collect();
        html.push_str("<p>");
        html.push_str(&lines.join("<br>\n"));
        html.push_str("</p>\n");
    }
    Value::from_safe_string(html.trim_end().to_string())
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
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

/// Human words for a status, as shown in messages.
pub fn status_label(status: Status) -> &'static str {
    match status {
        Status::Investigating => "Investigating",
        Status::Identified => "Identified",
        Status::Monitoring => "Monitoring",
        Status::Resolved => "Resolved",
        Status::Scheduled => "Scheduled",
        Status::InProgress => "In progress",
        Status::Verifying => "Verifying",
        Status::Completed => "Completed",
    }
}

/// Human words for an impact.
pub fn impact_label(impact: Impact) -> &'static str {
    match impact {
        Impact::None => "No impact",
        Impact::Minor => "Minor",
        Impact::Major => "Major",
        Impact::Critical => "Critical",
    }
}
