//! What every HTTP channel (webhook, the SMS providers, FCM and APNs) needs from a reply
//! or a failed request, kept in one place because the copies drifted: one copy read
//! error bodies without a limit, and all of them put reqwest's error text, which
//! includes the full request URL, into delivery errors.
//!
//! This crate must never let a URL's path, query or userinfo into text it produces: a
//! Slack or Teams incoming-webhook URL *is* its credential (the secret is the path), a
//! generic SMS gateway URL may carry an API key and the recipient's phone number, and
//! error text ends up in WARN logs and in the dead-letter topic's `clarion.dlq.reason`.
//! Text produced here names at most a URL's scheme, host and port.

use clarion_core::DeliveryError;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::{Duration, SystemTime};

/// The body limit for replies that are only read to classify them or to quote them in
/// an error: providers answer in a few hundred bytes, and a misbehaving proxy must not
/// make us buffer megabytes.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// How many characters of a reply body an error reason quotes.
pub const SNIPPET_CHARS: usize = 200;

/// At most `limit` bytes of the reply body. Reading stops as soon as the limit is
/// reached and the rest is never pulled off the connection: dropping the response then
/// closes it, so a peer that sends an endless or huge body costs us `limit` bytes and
/// one connection, not memory.
pub async fn read_limited(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    read_body_limited(reqwest::Body::from(response), limit).await
}

/// [`read_limited`] for any HTTP body (the webhook channel's hyper replies). A body
/// read to its end lets a pooled connection be reused.
pub async fn read_body_limited<B>(mut body: B, limit: usize) -> Result<Vec<u8>, B::Error>
where
    B: http_body::Body + Unpin,
{
    use http_body_util::BodyExt as _;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(mut data) = frame?.into_data() {
            use bytes::Buf as _;
            while data.has_remaining() && out.len() < limit {
                let chunk = data.chunk();
                let take = chunk.len().min(limit - out.len());
                out.extend_from_slice(&chunk[..take]);
                data.advance(take);
            }
        }
    }
    Ok(out)
}

/// The reply's `Retry-After` hint, parsed and capped by
/// [`clarion_core::retry_after::parse`]; `None` when absent or unreadable.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    clarion_core::retry_after::parse(headers.get(RETRY_AFTER)?.to_str().ok()?, now)
}

/// A request that got no HTTP reply (refused, reset, timed out, TLS failed), as a
/// delivery error whose reason starts with `provider`. Anything that happened on the
/// wire may work later, so it is retryable (a timeout may mean the peer took the
/// request: a retry can duplicate, which beats losing); only a request that could not
/// even be built is permanent. The reason never contains the request's URL beyond its
/// scheme and host (see [`error_chain`]).
pub fn transport_error(provider: &str, e: &reqwest::Error) -> DeliveryError {
    let chain = error_chain(e);
    if e.is_builder() {
        return DeliveryError::permanent(format!("{provider}: cannot build the request: {chain}"));
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    no_reply(provider, what, &chain)
}

/// The retryable error of a request that got no HTTP reply, worded the same for
/// every HTTP channel: `provider: what: detail` (`what` is `cannot connect`,
/// `request failed` or `timed out`). `detail` must already be free of URL paths.
pub fn no_reply(provider: &str, what: &str, detail: &str) -> DeliveryError {
    DeliveryError::retryable(format!("{provider}: {what}: {detail}"), None)
}

/// An error and its causes on one line, `a: b: c`, because reqwest's own message
/// ("error sending request") hides the part an operator needs (connection refused,
/// certificate unknown). A cause whose text is already included is not repeated. Every
/// URL in the text is reduced to its scheme and host by [`redact_urls`]: reqwest's
/// `Display` appends ` for url (<the full URL>)`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    redact_urls(&s)
}

/// The start of a reply body as one line of text for an error reason: invalid UTF-8
/// replaced, control characters turned into spaces, at most [`SNIPPET_CHARS`]
/// characters, and URLs reduced like everywhere else (a gateway may echo the request
/// URL, key included, in its error page).
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cut = match text.char_indices().nth(SNIPPET_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    };
    redact_urls(&cut)
}

/// A URL as it may appear in logs and errors: scheme, host and port only.
///
/// Not even the path: for Slack and Teams incoming webhooks the path is the credential
/// (`/services/T…/B…/<secret>`), and a query often holds an API key. Userinfo is
/// dropped too.
pub fn redact_url(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// `text` with every `scheme://…` reduced to `scheme://host[:port]`. A URL runs to the
/// next whitespace, quote, backtick or angle bracket (a percent-encoded URL, which is
/// what reqwest prints, contains none of them); closing punctuation at its end is
/// kept, so `(https://h/p)` becomes `(https://h)`. Erring towards cutting too much is
/// the point: what is cut can only be a URL's path or query.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at);
        let after = &after[3..];
        out.push_str(before);
        out.push_str("://");
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(after.len());
        let (token, tail) = after.split_at(end);
        // Closing punctuation that most likely belongs to the sentence, not the URL.
        let url = token.trim_end_matches([')', ']', '}', '.', ',', ';', ':']);
        let trailing = &token[url.len()..];
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let authority = &url[..authority_end];
        // Drop `user:password@`.
        let host = authority.rsplit('@').next().unwrap_or("");
        out.push_str(host);
        out.push_str(trailing);
        rest = tail;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn check_redact(input: &str, expected: &str) {
        assert_eq!(redact_urls(input), expected, "input: {input:?}");
    }

    #[test]
    fn urls_are_reduced_to_scheme_and_host() {
        check_redact(
            "error sending request for url (https://hooks.slack.com/services/T0/B0/SECRET)",
            "error sending request for url (https://hooks.slack.com)",
        );
        check_redact(
            "for url (http://127.0.0.1:8080/send?key=SECRET&to=%2B4412345): refused",
            "for url (http://127.0.0.1:8080): refused",
        );
        check_redact(
            "https://user:SECRET@example.com/p, and ftp://h.example/x.",
            "https://example.com, and ftp://h.example.",
        );
        check_redact("<https://x.example/a?b=SECRET>", "<https://x.example>");
        check_redact("no url here", "no url here");
        check_redact("dangling ://", "dangling ://");
        check_redact("https://h/p)x?k=SECRET) next", "https://h) next");
    }

    #[test]
    fn redact_url_keeps_scheme_host_and_port() {
        let url = reqwest::Url::parse("https://u:pw@hooks.slack.com:8443/services/T/B/SECRET?x=y")
            .expect("url");
        assert_eq!(redact_url(&url), "https://hooks.slack.com:8443");
    }

    #[test]
    fn snippets_are_one_line_bounded_and_url_free() {
        assert_eq!(snippet(b"  line1\nline2\t "), "line1 line2");
        assert_eq!(
            snippet(b"see https://gw.example/send?key=SECRET"),
            "see https://gw.example"
        );
        let long = "é".repeat(SNIPPET_CHARS + 10);
        assert_eq!(
            snippet(long.as_bytes()),
            format!("{}…", "é".repeat(SNIPPET_CHARS))
        );
    }

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
        // The listener is dropped here, so nothing listens on the port.
    }

    #[tokio::test]
    async fn transport_errors_never_carry_the_url_path_or_query() {
        let port = closed_port();
        let url =
            format!("http://127.0.0.1:{port}/services/T000/B000/s3cr3tPATH?token=s3cr3tQUERY");
        let e = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .expect_err("nothing listens there");
        // reqwest itself prints the whole URL: this is what must not get through.
        assert!(e.to_string().contains("s3cr3tPATH"), "{e}");
        let error = transport_error("webhook", &e);
        let shown = format!("{error:?} {}", error.reason);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(error.is_retryable(), "{shown}");
        assert!(
            error.reason.starts_with("webhook: cannot connect: "),
            "{shown}"
        );
        assert!(
            error.reason.contains(&format!("http://127.0.0.1:{port}")),
            "the host stays, for the operator: {shown}"
        );
    }

    /// A peer that answers 500 with an endless body: the read must stop at the limit,
    /// and the peer must see the connection closed (its body stream dropped) instead of
    /// being drained.
    #[tokio::test]
    async fn read_limited_stops_at_the_limit() {
        let sent = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(tokio::sync::Notify::new());
        let app = {
            let sent = Arc::clone(&sent);
            let dropped = Arc::clone(&dropped);
            axum::Router::new().route(
                "/",
                axum::routing::get(move || {
                    let guard = DropNotify(Arc::clone(&dropped));
                    let sent = Arc::clone(&sent);
                    let chunks = futures::stream::repeat_with(move || {
                        let _keep = &guard;
                        sent.fetch_add(16 * 1024, Ordering::Relaxed);
                        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 16 * 1024]))
                    });
                    async move {
                        (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::body::Body::from_stream(chunks),
                        )
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });

        let response = reqwest::get(format!("http://{addr}/"))
            .await
            .expect("reply");
        let body = read_limited(response, 1000).await.expect("body");
        assert_eq!(body, vec![b'x'; 1000]);
        // The endless stream ends only because we hung up.
        dropped.notified().await;
        assert!(sent.load(Ordering::Relaxed) > 0);
    }

    struct DropNotify(Arc<tokio::sync::Notify>);

    impl Drop for DropNotify {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }
}
