//! Twilio Programmable Messaging: one form POST per message.
//!
//! Errors come back as `{code, message, more_info, status}`. Twilio's own advice, as
//! classes: 21610 (the recipient replied STOP) means the number is gone for us; 20429
//! and HTTP 429 are "slow down"; 5xx is Twilio's problem and worth a retry; every
//! other 4xx (21211 invalid `To`, 21408 region not enabled, 20003 bad credentials) is
//! permanent.

use crate::config::{TwilioConfig, is_e164};
use crate::http::{self, Reply};
use crate::{Provider, Sms};
use clarion_core::{DeliveryError, ErrorClass, Receipt, Secret};
use std::fmt;

pub(crate) struct Twilio {
    client: reqwest::Client,
    messages_url: url::Url,
    account_url: url::Url,
    account_sid: String,
    auth_token: Secret,
    sender: (&'static str, String),
    status_callback: Option<String>,
}

impl fmt::Debug for Twilio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Twilio")
            .field("messages_url", &self.messages_url.as_str())
            .field("sender", &self.sender)
            .finish_non_exhaustive()
    }
}

impl Twilio {
    pub(crate) fn build(
        c: &TwilioConfig,
        auth_token: Secret,
    ) -> Result<Self, (&'static str, String)> {
        let sid = c.account_sid.trim();
        if sid.is_empty() || !sid.chars().all(|ch| ch.is_ascii_alphanumeric()) {
            return Err((
                "account_sid",
                format!(
                    "`{}` is not an account SID (AC followed by hex digits)",
                    c.account_sid
                ),
            ));
        }
        let sender = match (&c.from, &c.messaging_service_sid) {
            (Some(from), None) => {
                let alnum_id = !from.is_empty()
                    && from.len() <= 11
                    && from
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == ' ')
                    && from.chars().any(|ch| ch.is_ascii_alphabetic());
                if !(is_e164(from) || alnum_id) {
                    return Err((
                        "from",
                        format!(
                            "`{from}` is neither an E.164 number nor an alphanumeric sender id of at most 11 characters"
                        ),
                    ));
                }
                ("From", from.clone())
            }
            (None, Some(mg)) if !mg.trim().is_empty() => {
                ("MessagingServiceSid", mg.trim().to_string())
            }
            (None, Some(_)) => return Err(("messaging_service_sid", "must not be empty".into())),
            (None, None) => {
                return Err((
                    "from",
                    "set either `from` or `messaging_service_sid`".into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err((
                    "messaging_service_sid",
                    "set either `from` or `messaging_service_sid`, not both".into(),
                ));
            }
        };
        if !matches!(c.base_url.scheme(), "http" | "https") {
            return Err((
                "base_url",
                format!("`{}` is not an http(s) URL", c.base_url),
            ));
        }
        let base = c.base_url.as_str().trim_end_matches('/');
        let messages_url =
            url::Url::parse(&format!("{base}/2010-04-01/Accounts/{sid}/Messages.json"))
                .map_err(|e| ("base_url", e.to_string()))?;
        let account_url = url::Url::parse(&format!("{base}/2010-04-01/Accounts/{sid}.json"))
            .map_err(|e| ("base_url", e.to_string()))?;
        Ok(Twilio {
            client: http::client(c.timeout).map_err(|e| ("timeout", e))?,
            messages_url,
            account_url,
            account_sid: sid.to_string(),
            auth_token,
            sender,
            status_callback: c.status_callback.as_ref().map(|u| u.to_string()),
        })
    }
}

#[async_trait::async_trait]
impl Provider for Twilio {
    async fn submit(&self, sms: &Sms<'_>) -> Result<Receipt, DeliveryError> {
        let mut fields = vec![
            ("To", sms.to),
            ("Body", sms.text),
            (self.sender.0, self.sender.1.as_str()),
        ];
        if let Some(cb) = &self.status_callback {
            fields.push(("StatusCallback", cb));
        }
        let resp = self
            .client
            .post(self.messages_url.clone())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(http::form(fields))
            .send()
            .await
            .map_err(|e| http::transport_error("twilio", &e))?;
        let reply = Reply::read(resp).await?;
        classify(&reply)
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        let resp = self
            .client
            .get(self.account_url.clone())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .send()
            .await
            .map_err(|e| http::transport_error("twilio", &e))?;
        let reply = Reply::read(resp).await?;
        classify(&reply).map(|_| ())
    }
}

/// Turns Twilio's reply into a receipt (the message SID) or a classified error.
fn classify(reply: &Reply) -> Result<Receipt, DeliveryError> {
    let json = reply.json();
    if (200..300).contains(&reply.status) {
        let sid = json
            .as_ref()
            .and_then(|j| j.get("sid"))
            .and_then(|s| s.as_str())
            .map(str::to_string);
        if sid.is_none() {
            tracing::warn!(
                status = reply.status,
                "twilio accepted the message but sent no sid"
            );
        }
        return Ok(Receipt { provider_id: sid });
    }
    let code = json
        .as_ref()
        .and_then(|j| j.get("code"))
        .and_then(|c| c.as_u64());
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| reply.snippet());
    let reason = match code {
        Some(c) => format!("twilio: HTTP {} error {c}: {message}", reply.status),
        None => format!("twilio: HTTP {}: {message}", reply.status),
    };
    let class = match (reply.status, code) {
        (_, Some(21610)) => ErrorClass::RecipientGone,
        (429, _) | (_, Some(20429)) | (500..=599, _) => ErrorClass::Retryable {
            retry_after: reply.retry_after,
        },
        _ => ErrorClass::Permanent,
    };
    Err(DeliveryError {
        class,
        reason,
        code: Some(code.map_or_else(|| reply.status.to_string(), |c| c.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reply(status: u16, body: &str, retry_after: Option<u64>) -> Reply {
        Reply {
            status,
            retry_after: retry_after.map(Duration::from_secs),
            body: body.as_bytes().to_vec(),
        }
    }

    fn check(status: u16, body: &str, expected: &str) {
        let got = match classify(&reply(status, body, Some(7))) {
            Ok(r) => format!("ok {:?}", r.provider_id),
            Err(e) => format!("{:?} {:?} {}", e.class, e.code, e.reason),
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn classifies_twilio_replies() {
        check(
            201,
            r#"{"sid":"SM123","status":"queued"}"#,
            r#"ok Some("SM123")"#,
        );
        check(201, "not json", "ok None");
        check(
            400,
            r#"{"code":21211,"message":"The 'To' number +1555 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#,
            r#"Permanent Some("21211") twilio: HTTP 400 error 21211: The 'To' number +1555 is not a valid phone number."#,
        );
        check(
            400,
            r#"{"code":21610,"message":"Attempt to send to unsubscribed recipient","status":400}"#,
            r#"RecipientGone Some("21610") twilio: HTTP 400 error 21610: Attempt to send to unsubscribed recipient"#,
        );
        check(
            429,
            r#"{"code":20429,"message":"Too Many Requests","status":429}"#,
            r#"Retryable { retry_after: Some(7s) } Some("20429") twilio: HTTP 429 error 20429: Too Many Requests"#,
        );
        check(
            503,
            "<html>Service Unavailable</html>",
            r#"Retryable { retry_after: Some(7s) } Some("503") twilio: HTTP 503: <html>Service Unavailable</html>"#,
        );
        check(
            401,
            r#"{"code":20003,"message":"Authenticate","status":401}"#,
            r#"Permanent Some("20003") twilio: HTTP 401 error 20003: Authenticate"#,
        );
        check(302, "", r#"Permanent Some("302") twilio: HTTP 302: "#);
    }
}
