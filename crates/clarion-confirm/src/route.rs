//! The inbound listener's paths. One function reads every request's method and
//! path, so that what the listener answers is decided in one place and fuzzed.
//!
//! - `GET /c/TOKEN`: the notice, with a button; `POST /c/TOKEN`: the button (a
//!   confirmation). Only the `POST` confirms, so a scanner following links
//!   confirms nothing.
//! - `POST /v/TOKEN/key/N`: a voice provider's keypress callback for the call of
//!   attempt N; `POST /v/TOKEN/status/N`: that call's status callback.
//! - `POST /sms/TARGET/PROVIDER`: a provider's inbound SMS webhook for the numbers
//!   that target's provider sends from.
//!
//! Nothing is percent-decoded: tokens are base64url, and target and provider names
//! are letters, digits, `-`, `_` and `.`; anything else is no route.

/// The longest path looked at.
pub const MAX_PATH: usize = 512;

/// The method, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// Show the notice behind a link (`GET` or `HEAD`).
    Page {
        token: &'a str,
    },
    /// The page's button.
    Confirm {
        token: &'a str,
    },
    /// A digit pressed during call attempt `attempt`.
    Keypress {
        token: &'a str,
        attempt: u32,
    },
    /// The status of call attempt `attempt`.
    CallStatus {
        token: &'a str,
        attempt: u32,
    },
    /// An SMS sent to the numbers of `target`'s provider `provider`.
    Sms {
        target: &'a str,
        provider: &'a str,
    },
    /// A known path with a method it does not take.
    MethodNotAllowed {
        allow: &'static str,
    },
    NotFound,
}

fn token_ok(t: &str) -> bool {
    (1..=128).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn name_ok(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && n != "."
        && n != ".."
}

fn attempt_of(n: &str) -> Option<u32> {
    (n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

/// Routes one request. `path` is the request target's path (no query).
pub fn route(method: Method, path: &str) -> Route<'_> {
    if path.len() > MAX_PATH || !path.starts_with('/') {
        return Route::NotFound;
    }
    let parts: Vec<&str> = path[1..].split('/').collect();
    match parts.as_slice() {
        ["c", token] if token_ok(token) => match method {
            Method::Get | Method::Head => Route::Page { token },
            Method::Post => Route::Confirm { token },
            Method::Other => Route::MethodNotAllowed {
                allow: "GET, HEAD, POST",
            },
        },
        ["v", token, kind @ ("key" | "status"), n] if token_ok(token) => {
            match (method, attempt_of(n)) {
                (Method::Post, Some(attempt)) if *kind == "key" => {
                    Route::Keypress { token, attempt }
                }
                (Method::Post, Some(attempt)) => Route::CallStatus { token, attempt },
                (_, None) => Route::NotFound,
                _ => Route::MethodNotAllowed { allow: "POST" },
            }
        }
        ["sms", target, provider] if name_ok(target) && name_ok(provider) => match method {
            Method::Post => Route::Sms { target, provider },
            _ => Route::MethodNotAllowed { allow: "POST" },
        },
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check() {
        use Method::*;
        let t = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKiss";
        let cases: Vec<(Method, String, Route<'static>)> = vec![
            (Get, format!("/c/{t}"), Route::Page { token: t }),
            (Head, format!("/c/{t}"), Route::Page { token: t }),
            (Post, format!("/c/{t}"), Route::Confirm { token: t }),
            (
                Other,
                format!("/c/{t}"),
                Route::MethodNotAllowed {
                    allow: "GET, HEAD, POST",
                },
            ),
            (
                Post,
                format!("/v/{t}/key/3"),
                Route::Keypress {
                    token: t,
                    attempt: 3,
                },
            ),
            (
                Post,
                format!("/v/{t}/status/0"),
                Route::CallStatus {
                    token: t,
                    attempt: 0,
                },
            ),
            (
                Get,
                format!("/v/{t}/status/0"),
                Route::MethodNotAllowed { allow: "POST" },
            ),
            (Post, format!("/v/{t}/status/x"), Route::NotFound),
            (Post, format!("/v/{t}/status/9999999"), Route::NotFound),
            (
                Post,
                "/sms/crisis.sms/primary".into(),
                Route::Sms {
                    target: "crisis.sms",
                    provider: "primary",
                },
            ),
            (Post, "/sms/../primary".into(), Route::NotFound),
            (Get, "/c/".into(), Route::NotFound),
            (Get, "/c/a%2Fb".into(), Route::NotFound),
            (Get, format!("/c/{t}/"), Route::NotFound),
            (Get, "c/abc".into(), Route::NotFound),
            (Get, "/".into(), Route::NotFound),
            (Get, format!("/c/{}", "a".repeat(600)), Route::NotFound),
        ];
        for (m, path, want) in &cases {
            assert_eq!(&route(*m, path), want, "{m:?} {path}");
        }
    }
}
