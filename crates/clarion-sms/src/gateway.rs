//! A generic HTTP SMS gateway, described entirely in config: a request template and
//! the status codes that mean success, "retry later" or "number gone", so a channel
//! owner can point Clarion at an in-house gateway without code.

use crate::config::{BodyFormat, HttpGatewayConfig, StatusSet};
use crate::http::{self, Reply};
use crate::{Provider, Sms};
use clarion_core::{DeliveryError, ErrorClass, Receipt, Secret};
use std::fmt;

pub(crate) struct Gateway {
    client: reqwest::Client,
    method: reqwest::Method,
    url: Template,
    headers: Vec<(reqwest::header::HeaderName, Template)>,
    body: BodyFormat,
    fields: Vec<(String, Template)>,
    key: Option<Secret>,
    from: Option<String>,
    success: StatusSet,
    retry: StatusSet,
    gone: StatusSet,
    message_id: Option<String>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway")
            .field("method", &self.method)
            // The template may hold an inline API key: scheme and host only.
            .field("url", &clarion_http::redact_urls(&self.url.source))
            .finish_non_exhaustive()
    }
}

impl Gateway {
    pub(crate) fn build(
        c: &HttpGatewayConfig,
        key: Option<Secret>,
    ) -> Result<Self, (String, String)> {
        let method = reqwest::Method::from_bytes(c.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| {
            (
                "method".to_string(),
                format!("`{}` is not an HTTP method", c.method),
            )
        })?;
        let check_vars = |field: &str, t: &Template| -> Result<(), (String, String)> {
            if t.uses(Var::Key) && key.is_none() {
                return Err((
                    field.to_string(),
                    "uses {key} but the target has no `key`".into(),
                ));
            }
            if t.uses(Var::From) && c.from.is_none() {
                return Err((
                    field.to_string(),
                    "uses {from} but the target has no `from`".into(),
                ));
            }
            Ok(())
        };
        let url = Template::parse(&c.url).map_err(|e| ("url".to_string(), e))?;
        check_vars("url", &url)?;
        // The URL must parse once filled in; any placeholder value will do for that.
        let sample = url.render(&|_| "0".to_string(), true);
        let parsed = url::Url::parse(&sample)
            .map_err(|e| ("url".to_string(), format!("is not a valid URL: {e}")))?;
        // Neither message quotes the template: it may hold an inline API key.
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err((
                "url".into(),
                format!("must be an http(s) URL, not {}:", parsed.scheme()),
            ));
        }
        let mut headers = Vec::new();
        for (name, value) in &c.headers {
            let field = format!("headers.{name}");
            let header =
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    (
                        field.clone(),
                        format!("`{name}` is not a valid header name"),
                    )
                })?;
            let t = Template::parse(value).map_err(|e| (field.clone(), e))?;
            check_vars(&field, &t)?;
            headers.push((header, t));
        }
        let mut fields = Vec::new();
        for (name, value) in &c.fields {
            let field = format!("fields.{name}");
            let t = Template::parse(value).map_err(|e| (field.clone(), e))?;
            check_vars(&field, &t)?;
            fields.push((name.clone(), t));
        }
        if c.body == BodyFormat::None && !fields.is_empty() {
            return Err((
                "fields".into(),
                "are set but `body = \"none\"` sends no body".into(),
            ));
        }
        if let Some(p) = &c.message_id {
            if !p.is_empty() && !p.starts_with('/') {
                return Err((
                    "message_id".into(),
                    format!("`{p}` is not a JSON pointer (it starts with `/`)"),
                ));
            }
        }
        let set = |field: &str, specs| StatusSet::parse(specs).map_err(|e| (field.to_string(), e));
        Ok(Gateway {
            client: http::client(c.timeout).map_err(|e| ("timeout".to_string(), e))?,
            method,
            url,
            headers,
            body: c.body,
            fields,
            key,
            from: c.from.clone(),
            success: set("success", &c.success)?,
            retry: set("retry_statuses", &c.retry_statuses)?,
            gone: set("recipient_gone", &c.recipient_gone)?,
            message_id: c.message_id.clone(),
        })
    }

    fn value(&self, sms: &Sms<'_>, var: Var) -> String {
        match var {
            Var::To => sms.to.to_string(),
            Var::ToDigits => sms.to.trim_start_matches('+').to_string(),
            Var::Text => sms.text.to_string(),
            Var::From => self.from.clone().unwrap_or_default(),
            Var::Key => self
                .key
                .as_ref()
                .map(|k| k.expose().to_string())
                .unwrap_or_default(),
            Var::IncidentId => sms.update.incident_id.clone(),
            Var::UpdateId => sms.update.update_id.clone(),
            Var::Status => sms.update.status.as_str().to_string(),
            Var::Encoding => sms.analysis.encoding.as_str().to_string(),
            Var::Segments => sms.analysis.segments.to_string(),
            Var::IdempotencyKey => sms.key.as_str().to_string(),
        }
    }
}

#[async_trait::async_trait]
impl Provider for Gateway {
    async fn submit(&self, sms: &Sms<'_>) -> Result<Receipt, DeliveryError> {
        let vars = |v: Var| self.value(sms, v);
        let url = self.url.render(&vars, true);
        let mut req = self.client.request(self.method.clone(), url.as_str());
        for (name, t) in &self.headers {
            let value =
                reqwest::header::HeaderValue::from_str(&t.render(&vars, false)).map_err(|_| {
                    DeliveryError::permanent(format!(
                        "gateway: header `{name}` would contain characters HTTP does not allow"
                    ))
                })?;
            req = req.header(name.clone(), value);
        }
        let fields: Vec<(&str, String)> = self
            .fields
            .iter()
            .map(|(n, t)| (n.as_str(), t.render(&vars, false)))
            .collect();
        req = match self.body {
            BodyFormat::Form => req
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(http::form(fields.iter().map(|(n, v)| (*n, v.as_str())))),
            BodyFormat::Json => {
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .into_iter()
                    .map(|(n, v)| (n.to_string(), serde_json::Value::String(v)))
                    .collect();
                req.header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(serde_json::Value::Object(object).to_string())
            }
            BodyFormat::None => req,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| http::transport_error("gateway", &e))?;
        let reply = Reply::read(resp).await?;
        self.classify(&reply)
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        // Any request could send a message, so only check that the gateway accepts
        // connections.
        let url = url::Url::parse(&self.url.render(&|_| "0".to_string(), true))
            .map_err(|e| DeliveryError::permanent(format!("gateway: bad URL: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let port = url.port_or_known_default().unwrap_or(443);
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .map_err(|_| {
            DeliveryError::retryable(
                format!("gateway: connecting to {host}:{port} timed out"),
                None,
            )
        })?
        .map_err(|e| {
            DeliveryError::retryable(
                format!("gateway: cannot connect to {host}:{port}: {e}"),
                None,
            )
        })?;
        Ok(())
    }
}

impl Gateway {
    fn classify(&self, reply: &Reply) -> Result<Receipt, DeliveryError> {
        let status = reply.status;
        if self.success.contains(status) {
            let provider_id = self.message_id.as_deref().and_then(|pointer| {
                let found = reply.json().and_then(|j| j.pointer(pointer).cloned());
                match found {
                    Some(serde_json::Value::String(s)) => Some(s),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => {
                        tracing::warn!(
                            pointer,
                            status,
                            "gateway accepted the message but its reply has no id there"
                        );
                        None
                    }
                }
            });
            return Ok(Receipt { provider_id });
        }
        let class = if self.gone.contains(status) {
            ErrorClass::RecipientGone
        } else if self.retry.contains(status) {
            ErrorClass::Retryable {
                retry_after: reply.retry_after,
            }
        } else {
            ErrorClass::Permanent
        };
        Err(DeliveryError {
            class,
            reason: format!("gateway: HTTP {status}: {}", reply.snippet()),
            code: Some(status.to_string()),
        })
    }
}

/// A placeholder in a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    To,
    ToDigits,
    Text,
    From,
    Key,
    IncidentId,
    UpdateId,
    Status,
    Encoding,
    Segments,
    IdempotencyKey,
}

const VARS: [(&str, Var); 11] = [
    ("to", Var::To),
    ("to_digits", Var::ToDigits),
    ("text", Var::Text),
    ("from", Var::From),
    ("key", Var::Key),
    ("incident_id", Var::IncidentId),
    ("update_id", Var::UpdateId),
    ("status", Var::Status),
    ("encoding", Var::Encoding),
    ("segments", Var::Segments),
    ("idempotency_key", Var::IdempotencyKey),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Var(Var),
}

/// A string with `{placeholder}`s, parsed once at config load.
#[derive(Debug, Clone)]
struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl Template {
    fn parse(source: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err(format!("`{source}` has an unclosed `{{`")),
                        }
                    }
                    let var = VARS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v).ok_or_else(|| {
                        let known: Vec<String> = VARS.iter().map(|(n, _)| format!("{{{n}}}")).collect();
                        format!("unknown placeholder `{{{name}}}` (known: {}; write `{{{{` for a literal brace)", known.join(", "))
                    })?;
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Var(var));
                }
                '}' => {
                    return Err(format!(
                        "`{source}` has a `}}` without `{{` (write `}}}}` for a literal brace)"
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template {
            source: source.to_string(),
            pieces,
        })
    }

    fn uses(&self, var: Var) -> bool {
        self.pieces.contains(&Piece::Var(var))
    }

    /// Fills in the placeholders; with `percent_encode`, values are encoded for a URL.
    fn render(&self, value: &dyn Fn(Var) -> String, percent_encode: bool) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.push_str(l),
                Piece::Var(v) => {
                    let v = value(*v);
                    if percent_encode {
                        // form_urlencoded writes a space as `+`, which only means a
                        // space in a query string; `%20` means one everywhere.
                        let encoded: String =
                            url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
                        out.push_str(&encoded.replace('+', "%20"));
                    } else {
                        out.push_str(&v);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = Template::parse("Bearer {key} {{literal}} {to_digits}").expect("valid");
        let got = t.render(&|v| format!("<{v:?}>"), false);
        assert_eq!(got, "Bearer <Key> {literal} <ToDigits>");
        let t = Template::parse("https://gw/send?to={to}&text={text}").expect("valid");
        let got = t.render(
            &|v| {
                if v == Var::To {
                    "+4477".into()
                } else {
                    "a b&c€".into()
                }
            },
            true,
        );
        assert_eq!(got, "https://gw/send?to=%2B4477&text=a%20b%26c%E2%82%AC");
        assert_eq!(
            Template::parse("{phone}")
                .map(|_| ())
                .expect_err("unknown placeholder"),
            "unknown placeholder `{phone}` (known: {to}, {to_digits}, {text}, {from}, {key}, {incident_id}, {update_id}, {status}, {encoding}, {segments}, {idempotency_key}; write `{{` for a literal brace)"
        );
        assert!(Template::parse("{to").is_err());
        assert!(Template::parse("to}").is_err());
    }

    struct Values;

    impl clarion_core::SecretResolver for Values {
        fn resolve(&self, reference: &clarion_core::SecretRef) -> Result<Secret, String> {
            match reference {
                clarion_core::SecretRef::Value(s) => Ok(s.clone()),
                other => Err(format!("{other} is not available in tests")),
            }
        }
    }

    /// Finding 5: the gateway URL carries the API key and the recipient's number, and
    /// reqwest's error text carries the URL. Neither may reach the reason (WARN logs,
    /// the dead-letter header) nor the channel's `Debug`.
    #[tokio::test]
    async fn a_failed_request_never_shows_the_gateway_url() {
        use clarion_core::Channel;
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let config: crate::SmsConfig = toml::from_str(&format!(
            r#"
provider = "http"
url = "http://127.0.0.1:{port}/send/s3cr3tPATH?apikey={{key}}&to={{to}}"
key = {{ value = "s3cr3tKEY" }}
recipients = {{ customers = ["+447700900123"] }}
"#
        ))
        .expect("config");
        let channel = crate::build("sms-gw", &config, &Values).expect("builds");
        let update = clarion_core::samples::lifecycle(
            "INC-1",
            "Outage",
            &["customers"],
            jiff::Timestamp::UNIX_EPOCH,
        )
        .remove(0);
        let delivery = clarion_core::Delivery::new(
            std::sync::Arc::new(update),
            std::sync::Arc::from("sms-gw"),
            vec!["customers".to_string()].into(),
        );
        let outcome = channel.send(&delivery).await;
        let error = outcome.results[0].result.clone().expect_err("refused");
        let shown = format!("{} {:?} {channel:?}", error.reason, error);
        for secret in ["s3cr3tKEY", "s3cr3tPATH", "447700900123"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(error.is_retryable(), "{shown}");
        assert!(
            error.reason.starts_with("gateway: cannot connect: "),
            "{shown}"
        );
        assert!(
            error.reason.contains(&format!("http://127.0.0.1:{port}")),
            "{shown}"
        );
    }
}
