//! The pages a recipient sees: the notice with its button, the answer to the
//! button, and the one refusal every bad link gets. Self-contained HTML (no
//! script, no external resource, one inline style allowed by its hash), every
//! text from the notice escaped, and headers that keep it out of frames, caches
//! and referrers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clarion_render::html_escape;
use std::sync::OnceLock;

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40em;margin:2em auto;padding:0 1em;line-height:1.5;color:#111}\
h1{font-size:1.4em}.meta{color:#555;font-size:.9em}.msg{white-space:pre-wrap;border-left:4px solid #c00;padding-left:1em}\
button{font-size:1.1em;padding:.6em 1.4em;margin-top:1em;cursor:pointer}.ok{color:#060}";

/// The Content-Security-Policy of every page: nothing loads, nothing frames it,
/// the only form posts back to the listener, and the only style is ours.
fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| {
        use base64::Engine as _;
        use sha2::Digest as _;
        let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(STYLE));
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
    })
}

/// An HTML page with the security headers.
pub fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"robots\" content=\"noindex,nofollow\">\
<title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        html_escape(title)
    );
    let mut r = (status, page).into_response();
    secure(&mut r, "text/html; charset=utf-8");
    r
}

/// The headers every answer carries.
pub fn secure(r: &mut Response, content_type: &'static str) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
}

/// The one answer to a link that is not valid: altered, expired, or of a notice
/// that is no longer open. The same words and status whatever the reason.
pub fn refused() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "<h1>This link is not valid or has expired</h1>\
<p>If you were asked to confirm a notice, use the newest message you received, \
or contact whoever sent it.</p>",
    )
}

/// What the page shows of the notice: the recipient's audience's text only.
#[derive(Debug, Clone)]
pub struct Notice {
    pub title: String,
    pub message: String,
    pub status: &'static str,
    pub occurred_at: jiff::Timestamp,
    pub deadline: jiff::Timestamp,
    pub drill: bool,
    /// When this recipient confirmed, if they did.
    pub confirmed_at: Option<jiff::Timestamp>,
}

fn notice_html(n: &Notice) -> String {
    let drill = if n.drill {
        "<p><strong>[DRILL]</strong> This is a drill of the incident notification channels, not an incident.</p>"
    } else {
        ""
    };
    format!(
        "{drill}<h1>{}</h1><p class=\"meta\">Status: {} · {}</p><div class=\"msg\">{}</div>",
        html_escape(&n.title),
        html_escape(n.status),
        html_escape(&n.occurred_at.strftime("%Y-%m-%d %H:%M UTC").to_string()),
        html_escape(&n.message),
    )
}

/// The notice with its button (`GET`). The button posts to this same URL.
pub fn notice(n: &Notice) -> Response {
    let action = match n.confirmed_at {
        Some(at) => format!(
            "<p class=\"ok\">You confirmed this notice at {}. Nothing more is needed.</p>",
            html_escape(&at.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        ),
        None => format!(
            "<form method=\"post\"><p>Please confirm that you have read this notice (before {}).</p>\
<button type=\"submit\" name=\"confirm\" value=\"1\">I have read this notice</button></form>",
            html_escape(&n.deadline.strftime("%Y-%m-%d %H:%M UTC").to_string())
        ),
    };
    html(
        StatusCode::OK,
        &n.title,
        &format!("{}{action}", notice_html(n)),
    )
}

/// The answer to the button (`POST`).
pub fn confirmed(n: &Notice) -> Response {
    html(
        StatusCode::OK,
        "Confirmed",
        &format!(
            "<p class=\"ok\"><strong>Thank you: your confirmation is recorded.</strong></p>{}",
            notice_html(n)
        ),
    )
}

/// A plain-text answer (callbacks, errors) with the same headers.
pub fn text(status: StatusCode, body: &'static str) -> Response {
    let mut r = (status, body).into_response();
    secure(&mut r, "text/plain; charset=utf-8");
    r
}

/// An empty TwiML answer: the callback was taken, and nothing is said back (no
/// automatic reply to an SMS, so no reply loop and no reply to an opt-out).
pub fn twiml_empty() -> Response {
    let mut r = (
        StatusCode::OK,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>",
    )
        .into_response();
    secure(&mut r, "text/xml; charset=utf-8");
    r
}
