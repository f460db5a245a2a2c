//! Vonage (Nexmo) SMS API: a form POST to `/sms/json`.
//!
//! Vonage answers HTTP 200 even for failures and puts a `status` per message in the
//! body (it may split a long text into several messages, each with its own id and
//! status): 0 accepted; 1 throttled and 5 internal error are worth a retry; 33 (number
//! de-activated) means the number is gone; everything else (2–4 bad parameters or
//! credentials, 6 unroutable, 7 barred, 9 quota, …) is permanent.

use crate::config::VonageConfig;
use crate::encoding::Encoding;
use crate::http::{self, Reply};
use crate::{Provider, Sms};
use clarion_core::{DeliveryError, ErrorClass, Receipt, Secret};
use std::fmt;

/// Vonage's limit for `client-ref`.
const CLIENT_REF_MAX: usize = 100;

pub(crate) struct Vonage {
    client: reqwest::Client,
    sms_url: url::Url,
    balance_url: url::Url,
    api_key: String,
    api_secret: Secret,
    from: String,
}

impl fmt::Debug for Vonage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vonage")
            .field("sms_url", &self.sms_url.as_str())
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Vonage {
    pub(crate) fn build(
        c: &VonageConfig,
        api_secret: Secret,
    ) -> Result<Self, (&'static str, String)> {
        if c.api_key.trim().is_empty() {
            return Err(("api_key", "must not be empty".into()));
        }
        let from = c.from.trim();
        if from.is_empty() || from.chars().count() > 15 {
            return Err((
                "from",
                format!(
                    "`{}` must be a number or a sender id of at most 15 characters",
                    c.from
                ),
            ));
        }
        if !matches!(c.base_url.scheme(), "http" | "https") {
            return Err((
                "base_url",
                format!("`{}` is not an http(s) URL", c.base_url),
            ));
        }
        let base = c.base_url.as_str().trim_end_matches('/');
        let sms_url = url::Url::parse(&format!("{base}/sms/json"))
            .map_err(|e| ("base_url", e.to_string()))?;
        let balance_url = url::Url::parse(&format!("{base}/account/get-balance"))
            .map_err(|e| ("base_url", e.to_string()))?;
        Ok(Vonage {
            client: http::client(c.timeout).map_err(|e| ("timeout", e))?,
            sms_url,
            balance_url,
            api_key: c.api_key.trim().to_string(),
            api_secret,
            // Vonage wants numbers in international format without the `+`.
            from: from.strip_prefix('+').unwrap_or(from).to_string(),
        })
    }
}

#[async_trait::async_trait]
impl Provider for Vonage {
    async fn submit(&self, sms: &Sms<'_>) -> Result<Receipt, DeliveryError> {
        let to = sms.to.strip_prefix('+').unwrap_or(sms.to);
        let client_ref: String = sms.update.update_id.chars().take(CLIENT_REF_MAX).collect();
        let mut fields = vec![
            ("api_key", self.api_key.as_str()),
            ("api_secret", self.api_secret.expose()),
            ("from", self.from.as_str()),
            ("to", to),
            ("text", sms.text),
            ("client-ref", client_ref.as_str()),
        ];
        if sms.analysis.encoding == Encoding::Ucs2 {
            fields.push(("type", "unicode"));
        }
        let resp = self
            .client
            .post(self.sms_url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(http::form(fields))
            .send()
            .await
            .map_err(|e| http::transport_error("vonage", &e))?;
        classify(&Reply::read(resp).await?)
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        // HTTP basic auth, which Vonage's account API accepts, rather than the
        // `api_secret` query parameter: a secret in a URL ends up in proxies' access
        // logs and, through error text, in ours.
        let resp = self
            .client
            .get(self.balance_url.clone())
            .basic_auth(&self.api_key, Some(self.api_secret.expose()))
            .send()
            .await
            .map_err(|e| http::transport_error("vonage", &e))?;
        let reply = Reply::read(resp).await?;
        if (200..300).contains(&reply.status) {
            Ok(())
        } else {
            Err(http_error(&reply))
        }
    }
}

fn http_error(reply: &Reply) -> DeliveryError {
    let class = match reply.status {
        429 | 500..=599 => ErrorClass::Retryable {
            retry_after: reply.retry_after,
        },
        _ => ErrorClass::Permanent,
    };
    DeliveryError {
        class,
        reason: format!("vonage: HTTP {}: {}", reply.status, reply.snippet()),
        code: Some(reply.status.to_string()),
    }
}

/// Vonage's `status` values are strings in JSON, but be lenient about numbers.
fn field_str(v: &serde_json::Value, name: &str) -> Option<String> {
    match v.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn classify(reply: &Reply) -> Result<Receipt, DeliveryError> {
    if !(200..300).contains(&reply.status) {
        return Err(http_error(reply));
    }
    let messages = reply
        .json()
        .and_then(|j| j.get("messages").and_then(|m| m.as_array()).cloned())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            // Vonage may or may not have taken the message; a retry risks a duplicate,
            // giving up risks a loss. Retrying is the lesser evil.
            DeliveryError::retryable(
                format!(
                    "vonage: HTTP {} without a `messages` list: {}",
                    reply.status,
                    reply.snippet()
                ),
                None,
            )
            .with_code(reply.status.to_string())
        })?;
    let mut ids = Vec::new();
    for m in &messages {
        let status = field_str(m, "status").unwrap_or_default();
        if status == "0" {
            if let Some(id) = field_str(m, "message-id") {
                ids.push(id);
            }
            continue;
        }
        let text = field_str(m, "error-text").unwrap_or_else(|| "no error-text".into());
        let class = match status.as_str() {
            "1" | "5" => ErrorClass::Retryable { retry_after: None },
            "33" => ErrorClass::RecipientGone,
            _ => ErrorClass::Permanent,
        };
        return Err(DeliveryError {
            class,
            reason: format!("vonage: status {status}: {text}"),
            code: Some(status),
        });
    }
    Ok(Receipt {
        provider_id: (!ids.is_empty()).then(|| ids.join(",")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, body: &str, expected: &str) {
        let reply = Reply {
            status,
            retry_after: None,
            body: body.as_bytes().to_vec(),
        };
        let got = match classify(&reply) {
            Ok(r) => format!("ok {:?}", r.provider_id),
            Err(e) => format!("{:?} {:?} {}", e.class, e.code, e.reason),
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn classifies_vonage_replies() {
        check(
            200,
            r#"{"message-count":"1","messages":[{"to":"447700900000","message-id":"0A0000000123ABCD1","status":"0","remaining-balance":"3.14","message-price":"0.03","network":"12345"}]}"#,
            r#"ok Some("0A0000000123ABCD1")"#,
        );
        check(
            200,
            r#"{"message-count":"2","messages":[{"message-id":"A1","status":"0"},{"message-id":"A2","status":"0"}]}"#,
            r#"ok Some("A1,A2")"#,
        );
        check(
            200,
            r#"{"message-count":"1","messages":[{"status":"1","error-text":"Throughput Rate Exceeded - please wait [ 30 ] and retry"}]}"#,
            r#"Retryable { retry_after: None } Some("1") vonage: status 1: Throughput Rate Exceeded - please wait [ 30 ] and retry"#,
        );
        check(
            200,
            r#"{"message-count":"1","messages":[{"status":"5","error-text":"Internal Error"}]}"#,
            r#"Retryable { retry_after: None } Some("5") vonage: status 5: Internal Error"#,
        );
        check(
            200,
            r#"{"message-count":"1","messages":[{"status":"4","error-text":"Bad Credentials"}]}"#,
            r#"Permanent Some("4") vonage: status 4: Bad Credentials"#,
        );
        check(
            200,
            r#"{"message-count":"1","messages":[{"status":"7","error-text":"Number barred"}]}"#,
            r#"Permanent Some("7") vonage: status 7: Number barred"#,
        );
        check(
            200,
            r#"{"message-count":"2","messages":[{"message-id":"A1","status":"0"},{"status":9,"error-text":"Partner quota exceeded"}]}"#,
            r#"Permanent Some("9") vonage: status 9: Partner quota exceeded"#,
        );
        check(
            200,
            r#"{"messages":[{"status":"33","error-text":"Number de-activated"}]}"#,
            r#"RecipientGone Some("33") vonage: status 33: Number de-activated"#,
        );
        check(
            200,
            "garbage",
            r#"Retryable { retry_after: None } Some("200") vonage: HTTP 200 without a `messages` list: garbage"#,
        );
        check(
            503,
            "down",
            r#"Retryable { retry_after: None } Some("503") vonage: HTTP 503: down"#,
        );
        check(401, "no", r#"Permanent Some("401") vonage: HTTP 401: no"#);
    }

    const SECRET: &str = "s3cr3tAPI";

    fn vonage(base_url: &str) -> Vonage {
        let config: VonageConfig = toml::from_str(&format!(
            r#"
api_key = "key1"
api_secret = {{ value = "unused" }}
from = "ACME"
base_url = "{base_url}"
recipients = {{}}
"#
        ))
        .expect("config");
        Vonage::build(&config, Secret::new(SECRET)).expect("builds")
    }

    /// Finding 5: the healthcheck used to put `api_secret` in the query string, so a
    /// failed check printed it (reqwest's error text carries the URL). It now sends
    /// basic auth, and no error text carries a URL's path or query anyway.
    #[tokio::test]
    async fn the_healthcheck_never_puts_the_secret_in_a_url() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let body = r#"{"value":1.5,"autoReload":false}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&head).into_owned()
        });
        vonage(&format!("http://{addr}"))
            .healthcheck()
            .await
            .expect("healthy");
        let head = peer.await.expect("peer");
        let request_line = head.lines().next().unwrap_or_default();
        assert_eq!(request_line, "GET /account/get-balance HTTP/1.1", "{head}");
        // Basic base64("key1:s3cr3tAPI").
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: basic a2v5mtpzm2nym3rbuek="),
            "{head}"
        );

        // Nothing listens here any more.
        let error = vonage(&format!("http://{addr}"))
            .healthcheck()
            .await
            .expect_err("refused");
        let shown = format!("{} {error:?}", error.reason);
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(
            error.reason.starts_with("vonage: cannot connect: "),
            "{shown}"
        );
    }
}
