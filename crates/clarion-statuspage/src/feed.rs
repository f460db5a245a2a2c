//! `history.atom`: one entry per update (not one per incident, which is what feed
//! readers ask for and several status pages got wrong), newest first, each with an
//! id that never changes: a `tag:` URI (RFC 4151) made of the page's host, the
//! incident's first day, the incident id and the update id.
//!
//! The feed's `updated` is its newest entry's time, not the time of rendering, so
//! regenerating an unchanged page gives the same bytes.

use crate::api::{headline, incident_url};
use crate::model::{PageConfig, PublicUpdate, Timeline};
use atom_syndication::{Content, Entry, Feed, FixedDateTime, Link, Person, Text, WriteConfig};
use jiff::Timestamp;
use std::sync::Arc;

/// The feed's bytes for the shown timelines.
pub(crate) fn atom(config: &PageConfig, timelines: &[Arc<Timeline>]) -> Vec<u8> {
    let mut updates: Vec<(&Timeline, &PublicUpdate)> = timelines
        .iter()
        .flat_map(|t| t.updates.iter().map(move |u| (&**t, u)))
        .collect();
    // Newest first; ties broken by id so that the order is stable.
    updates.sort_by(|a, b| {
        (b.1.occurred_at, &b.0.incident_id, b.1.sequence).cmp(&(
            a.1.occurred_at,
            &a.0.incident_id,
            a.1.sequence,
        ))
    });
    updates.truncate(config.feed_entries);
    let author = Person {
        name: config.name.clone(),
        uri: Some(config.url.clone()),
        ..Person::default()
    };
    let entries: Vec<Entry> = updates
        .iter()
        .map(|(t, u)| Entry {
            title: Text::plain(headline(u)),
            id: entry_id(config, t, u),
            updated: time(u.occurred_at),
            published: Some(time(u.occurred_at)),
            authors: vec![author.clone()],
            links: vec![Link {
                href: incident_url(config, &t.incident_id),
                rel: "alternate".into(),
                mime_type: Some("text/html".into()),
                ..Link::default()
            }],
            content: Some(Content {
                value: Some(u.body.clone()),
                content_type: Some("text".into()),
                ..Content::default()
            }),
            ..Entry::default()
        })
        .collect();
    let updated = updates
        .first()
        .map(|(_, u)| u.occurred_at)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let feed = Feed {
        title: Text::plain(format!("{} history", config.name)),
        id: format!("{}/history.atom", config.url),
        updated: time(updated),
        authors: vec![author],
        links: vec![
            Link {
                href: format!("{}/history.atom", config.url),
                rel: "self".into(),
                mime_type: Some("application/atom+xml".into()),
                ..Link::default()
            },
            Link {
                href: format!("{}/", config.url),
                rel: "alternate".into(),
                mime_type: Some("text/html".into()),
                ..Link::default()
            },
        ],
        entries,
        lang: Some("en".into()),
        ..Feed::default()
    };
    let mut out = Vec::new();
    let written = feed.write_with_config(
        &mut out,
        WriteConfig {
            write_document_declaration: true,
            indent_size: Some(2),
        },
    );
    // Writing to a Vec fails only on an I/O error, which a Vec does not have.
    debug_assert!(written.is_ok());
    out
}

/// An Atom date from a timestamp (RFC 3339, UTC).
fn time(t: Timestamp) -> FixedDateTime {
    // jiff prints RFC 3339, which chrono parses; the epoch is the fallback for a
    // value that cannot occur.
    t.to_string()
        .parse::<FixedDateTime>()
        .unwrap_or_else(|_| FixedDateTime::default())
}

/// The stable id of one update's entry.
pub fn entry_id(config: &PageConfig, t: &Timeline, u: &PublicUpdate) -> String {
    let host = config
        .url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(&config.url)
        .split(['/', ':'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let day = jiff::fmt::strtime::format("%Y-%m-%d", t.created_at).unwrap_or_default();
    format!(
        "tag:{host},{day}:{}/{}",
        tag_part(&t.incident_id),
        tag_part(&u.update_id)
    )
}

/// Percent-encodes what a tag URI's specific part may not hold (RFC 4151: pchar,
/// `/` and `?`; `/` is encoded too, as it separates the incident from the update).
fn tag_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_parts_are_encoded() {
        assert_eq!(tag_part("INC-1"), "INC-1");
        assert_eq!(tag_part("a/b c#é"), "a%2Fb%20c%23%C3%A9");
    }
}
