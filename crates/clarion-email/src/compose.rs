//! What an update looks like as an email: subject, text and HTML bodies, and the
//! headers that carry the incident's identity.
//!
//! [`compose`] is the one place that turns an update into words; the templates work
//! replaces it. [`render`] then wraps the content in a MIME message. Neither does
//! I/O, and neither may fail on any valid update: every header value is encoded by
//! lettre, every body text is escaped for HTML.

use crate::config::{Recipient, Settings};
use clarion_core::{IdempotencyKey, IncidentUpdate, Status};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{MultiPart, SinglePart};

/// The words of one update for one audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Builds the email for `audience` from the update, until the templates issue lands.
pub fn compose(update: &IncidentUpdate, audience: &str) -> Content {
    // A subject is one line: line breaks and other control characters in the title
    // become single spaces.
    let title: Vec<&str> = update
        .title
        .split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    let subject = format!("[{}] {}", status_label(update.status), title.join(" "));
    let message = update.message_for(audience);

    let mut facts: Vec<(&str, String)> = vec![
        ("Status", status_label(update.status).to_string()),
        ("Impact", update.impact.to_string()),
    ];
    if !update.components.is_empty() {
        facts.push(("Components", update.components.join(", ")));
    }
    if !update.regions.is_empty() {
        facts.push(("Regions", update.regions.join(", ")));
    }
    facts.push(("Updated", update.occurred_at.to_string()));
    let reference = format!(
        "Incident {}, update {}",
        update.incident_id, update.update_id
    );

    let mut text = format!("{}\n\n{}\n\n", update.title, message);
    for (k, v) in &facts {
        text.push_str(&format!("{k}: {v}\n"));
    }
    for link in &update.links {
        text.push_str(&format!("\n{}: {}", link.title, link.url));
    }
    if !update.links.is_empty() {
        text.push('\n');
    }
    text.push_str(&format!("\n{reference}\n"));

    let mut html =
        String::from("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n");
    html.push_str(&format!("<h1>{}</h1>\n", escape(&update.title)));
    for para in message.split("\n\n") {
        html.push_str(&format!(
            "<p>{}</p>\n",
            escape(para).replace('\n', "<br>\n")
        ));
    }
    html.push_str("<table>\n");
    for (k, v) in &facts {
        html.push_str(&format!(
            "<tr><th align=\"left\">{k}</th><td>{}</td></tr>\n",
            escape(v)
        ));
    }
    html.push_str("</table>\n");
    if !update.links.is_empty() {
        html.push_str("<ul>\n");
        for link in &update.links {
            html.push_str(&format!(
                "<li><a href=\"{}\">{}</a></li>\n",
                escape(&link.url),
                escape(&link.title)
            ));
        }
        html.push_str("</ul>\n");
    }
    html.push_str(&format!(
        "<p><small>{}</small></p>\n</body></html>\n",
        escape(&reference)
    ));

    Content {
        subject,
        text,
        html,
    }
}

fn status_label(status: Status) -> &'static str {
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

/// Escapes text for HTML element content and double-quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The deterministic Message-ID of one update to one target: the same on every
/// attempt, so that a redelivery is recognisable as one.
pub(crate) fn message_id(key: &IdempotencyKey, domain: &str) -> String {
    format!("<{}@{domain}>", key.as_str())
}

/// Who the message is addressed to in its headers.
pub(crate) enum Addressing<'a> {
    /// One recipient, shown in `To`.
    To(&'a Recipient),
    /// A Bcc batch: recipients only in the envelope, `To: undisclosed-recipients:;`.
    Undisclosed,
}

/// Renders the full RFC 5322 message.
pub(crate) fn render(
    settings: &Settings,
    update: &IncidentUpdate,
    audience: &str,
    key: &IdempotencyKey,
    content: &Content,
    to: Addressing<'_>,
) -> Result<String, String> {
    let mut builder = lettre::Message::builder()
        .from(settings.from.clone())
        .subject(content.subject.clone())
        .message_id(Some(message_id(key, &settings.message_id_domain)));
    if let Some(r) = &settings.reply_to {
        builder = builder.reply_to(r.clone());
    }
    builder = match to {
        Addressing::To(r) => builder.to(r.mailbox.clone()),
        Addressing::Undisclosed => builder.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("To"),
            "undisclosed-recipients:;".to_string(),
        )),
    };
    let raw = |name: &'static str, value: &str| {
        HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_string())
    };
    builder = builder
        .raw_header(raw("X-Clarion-Incident-Id", &update.incident_id))
        .raw_header(raw("X-Clarion-Update-Id", &update.update_id))
        .raw_header(raw("X-Clarion-Status", update.status.as_str()))
        .raw_header(raw("X-Clarion-Audience", audience))
        // RFC 3834: tells auto-responders (out-of-office) not to answer.
        .raw_header(raw("Auto-Submitted", "auto-generated"));
    if let Some(v) = &settings.list_unsubscribe {
        builder = builder.raw_header(raw("List-Unsubscribe", v));
        if settings.list_unsubscribe_one_click {
            builder =
                builder.raw_header(raw("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"));
        }
    }
    // The envelope is carried separately (the channel runs the SMTP transaction
    // itself); lettre still wants one to build, so give it the sender and a
    // placeholder recipient that never reaches the wire.
    let envelope = lettre::address::Envelope::new(
        Some(settings.from.email.clone()),
        vec![settings.from.email.clone()],
    )
    .map_err(|e| e.to_string())?;
    let message = builder
        .envelope(envelope)
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(content.text.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(content.html.clone()),
                ),
        )
        .map_err(|e| e.to_string())?;
    String::from_utf8(message.formatted()).map_err(|e| e.to_string())
}
