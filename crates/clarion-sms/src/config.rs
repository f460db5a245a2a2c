//! The SMS target's configuration as written in the daemon's TOML, and its
//! validation. Parsing does no I/O; [`crate::build`] validates and resolves secrets.
//!
//! Every provider shares the fields `recipients`, `max_segments`, `rate_per_second`
//! and `max_in_flight`. They are repeated in each provider's struct (by the
//! `provider_config!` macro) rather than flattened into one, because serde cannot
//! combine `flatten` with `deny_unknown_fields`, and a misspelt key must be an error.

use clarion_core::SecretRef;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// One SMS target: `type = "sms"` in `[targets.NAME]`, and `provider` says which
/// gateway the messages go through.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case")]
pub enum SmsConfig {
    /// Twilio Programmable Messaging.
    Twilio(TwilioConfig),
    /// Vonage (Nexmo) SMS API.
    Vonage(VonageConfig),
    /// Any HTTP gateway, described by a request template and status-code lists.
    Http(HttpGatewayConfig),
    /// An SMSC reached over SMPP 3.4.
    Smpp(SmppConfig),
}

/// The fields every provider shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Common<'a> {
    pub recipients: &'a BTreeMap<String, Vec<String>>,
    pub max_segments: usize,
    pub rate_per_second: f64,
    pub max_in_flight: usize,
    pub directory: bool,
}

impl SmsConfig {
    /// The most segments one message may take (`max_segments`): `check-config` holds
    /// rendered templates to it.
    pub fn max_segments(&self) -> usize {
        self.common().max_segments
    }

    pub(crate) fn common(&self) -> Common<'_> {
        macro_rules! common {
            ($c:expr) => {
                Common {
                    recipients: &$c.recipients,
                    max_segments: $c.max_segments,
                    rate_per_second: $c.rate_per_second,
                    max_in_flight: $c.max_in_flight,
                    directory: $c.directory,
                }
            };
        }
        match self {
            SmsConfig::Twilio(c) => common!(c),
            SmsConfig::Vonage(c) => common!(c),
            SmsConfig::Http(c) => common!(c),
            SmsConfig::Smpp(c) => common!(c),
        }
    }

    /// Makes this the directory leg of a people target (see `directory` on each
    /// provider's config), whichever the provider.
    pub fn set_directory(&mut self, directory: bool) {
        match self {
            SmsConfig::Twilio(c) => c.directory = directory,
            SmsConfig::Vonage(c) => c.directory = directory,
            SmsConfig::Http(c) => c.directory = directory,
            SmsConfig::Smpp(c) => c.directory = directory,
        }
    }

    /// The provider's name, as written in `provider = "..."`.
    pub fn provider(&self) -> &'static str {
        match self {
            SmsConfig::Twilio(_) => "twilio",
            SmsConfig::Vonage(_) => "vonage",
            SmsConfig::Http(_) => "http",
            SmsConfig::Smpp(_) => "smpp",
        }
    }
}

macro_rules! provider_config {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Audience → phone numbers in E.164 (`+` then 8–15 digits), e.g.
            /// `customers = ["+447700900123"]`. A delivery goes to the de-duplicated
            /// union of the numbers of the update's audiences that this target serves.
            pub recipients: BTreeMap<String, Vec<String>>,
            /// The most segments one message may cost; a longer text is cut at a
            /// character boundary and ends with an ellipsis. Default 3.
            #[serde(default = "default_max_segments")]
            pub max_segments: usize,
            /// The gateway's throughput limit, in segments per second (the unit carriers
            /// bill and throttle by; for SMPP, one `submit_sm` per segment). Excess
            /// messages wait; they never fail for it. Fractions allowed. Default 10.
            #[serde(default = "default_rate_per_second")]
            pub rate_per_second: f64,
            /// How many recipients of one delivery are sent to at the same time.
            /// Default 4.
            #[serde(default = "default_max_in_flight")]
            pub max_in_flight: usize,
            /// Set by the daemon, never by the file (the key does not exist in
            /// TOML): this channel is the leg of a people target that texts a
            /// directory's members, handed over with each delivery
            /// (`Delivery::direct`). Its `recipients` must then be an empty table
            /// (anything else is refused): who it reaches is the directory's
            /// business, not the config's. Default false.
            #[serde(skip)]
            pub directory: bool,
            $( $(#[$fmeta])* pub $field: $ty, )*
        }
    };
}

provider_config! {
    /// Twilio Messages API: `POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`.
    pub struct TwilioConfig {
        /// The account SID (`AC…`), also the basic-auth user name.
        pub account_sid: String,
        /// The auth token (basic-auth password), e.g. `{ env = "TWILIO_AUTH_TOKEN" }`.
        pub auth_token: SecretRef,
        /// Sender: a Twilio number in E.164 or an alphanumeric sender id. Exactly one
        /// of `from` and `messaging_service_sid` must be set.
        #[serde(default)]
        pub from: Option<String>,
        /// Messaging Service SID (`MG…`), which picks the sender from a pool.
        #[serde(default)]
        pub messaging_service_sid: Option<String>,
        /// URL Twilio posts delivery-status callbacks to (`StatusCallback`).
        #[serde(default)]
        pub status_callback: Option<url::Url>,
        /// API root; change it only for tests. Default `https://api.twilio.com`.
        #[serde(default = "default_twilio_base_url")]
        pub base_url: url::Url,
        /// How long one request may take, e.g. `"10s"`. Default 10 s.
        #[serde(default = "default_timeout", with = "humantime_serde")]
        pub timeout: Duration,
    }
}

provider_config! {
    /// Vonage SMS API: `POST {base_url}/sms/json`.
    pub struct VonageConfig {
        /// The API key.
        pub api_key: String,
        /// The API secret, e.g. `{ env = "VONAGE_API_SECRET" }`.
        pub api_secret: SecretRef,
        /// Sender: a number (E.164, with or without `+`) or an alphanumeric sender id.
        pub from: String,
        /// API root; change it only for tests. Default `https://rest.nexmo.com`.
        #[serde(default = "default_vonage_base_url")]
        pub base_url: url::Url,
        /// How long one request may take. Default 10 s.
        #[serde(default = "default_timeout", with = "humantime_serde")]
        pub timeout: Duration,
    }
}

provider_config! {
    /// A generic HTTP gateway: one request per recipient, built from templates.
    ///
    /// Templates (`url`, `headers` values, `fields` values) may use the placeholders
    /// `{to}` (E.164 with `+`), `{to_digits}` (without `+`), `{text}`, `{from}`,
    /// `{key}`, `{incident_id}`, `{update_id}`, `{status}`, `{encoding}` (`gsm7` or
    /// `ucs2`), `{segments}` and `{idempotency_key}`; `{{` and `}}` are literal braces.
    /// In `url` the values are percent-encoded.
    pub struct HttpGatewayConfig {
        /// The request URL template, e.g. `"https://sms.internal/send"`.
        pub url: String,
        /// HTTP method. Default `POST`.
        #[serde(default = "default_method")]
        pub method: String,
        /// Request headers (name → value template), e.g.
        /// `{ Authorization = "Bearer {key}" }`.
        #[serde(default)]
        pub headers: BTreeMap<String, String>,
        /// How `fields` are sent: `form` (URL-encoded), `json` (an object of strings),
        /// or `none` (no body, for gateways that take everything in the URL). Default
        /// `form`.
        #[serde(default)]
        pub body: BodyFormat,
        /// Body fields (name → value template), e.g. `{ to = "{to}", text = "{text}" }`.
        #[serde(default)]
        pub fields: BTreeMap<String, String>,
        /// The gateway credential that `{key}` stands for, e.g. `{ env = "SMSGW_KEY" }`.
        #[serde(default)]
        pub key: Option<SecretRef>,
        /// The sender that `{from}` stands for.
        #[serde(default)]
        pub from: Option<String>,
        /// Statuses that mean "accepted": codes (`200`) or ranges (`"200-299"`).
        /// Default `["200-299"]`.
        #[serde(default = "default_success")]
        pub success: Vec<StatusSpec>,
        /// Statuses that mean "try again later" (`Retry-After` is honoured). Default
        /// `[408, 429, "500-599"]`. Not called `retry`: in `[targets.NAME]` that key
        /// is the daemon's retry policy table.
        #[serde(default = "default_retry_statuses")]
        pub retry_statuses: Vec<StatusSpec>,
        /// Statuses that mean "this number is gone" (opted out, deactivated). Default
        /// none. Any status in none of the lists is a permanent failure.
        #[serde(default)]
        pub recipient_gone: Vec<StatusSpec>,
        /// A JSON pointer (RFC 6901) to the gateway's message id in a JSON success
        /// response, e.g. `"/id"` or `"/messages/0/id"`.
        #[serde(default)]
        pub message_id: Option<String>,
        /// How long one request may take. Default 10 s.
        #[serde(default = "default_timeout", with = "humantime_serde")]
        pub timeout: Duration,
    }
}

provider_config! {
    /// An SMSC over SMPP 3.4 (plain TCP or TLS). One session per target, kept open with
    /// `enquire_link` and re-bound after a failure.
    pub struct SmppConfig {
        /// The SMSC's `host:port`.
        pub address: String,
        /// Connect with TLS (SMPP over TLS, often port 3550). Default false.
        #[serde(default)]
        pub tls: bool,
        /// With `tls`: a PEM file of CA certificates to trust instead of the system's
        /// roots (for an SMSC with a private CA). Read when the target is built.
        #[serde(default)]
        pub ca_file: Option<String>,
        /// The ESME's `system_id` (account name, at most 15 characters).
        pub system_id: String,
        /// The bind password (at most 8 characters), e.g. `{ env = "SMSC_PASSWORD" }`.
        pub password: SecretRef,
        /// The `system_type` sent in the bind (often empty). Default empty.
        #[serde(default)]
        pub system_type: String,
        /// `transmitter` or `transceiver`. Default `transmitter`.
        #[serde(default)]
        pub bind: BindMode,
        /// Sender address: E.164, a short code or an alphanumeric sender id.
        pub source_addr: String,
        /// `source_addr_ton`; by default 1 (international) for `+` numbers,
        /// 5 (alphanumeric) for sender ids, else 0.
        #[serde(default)]
        pub source_addr_ton: Option<u8>,
        /// `source_addr_npi`; by default 1 (ISDN/E.164) for numbers, 0 for sender ids.
        #[serde(default)]
        pub source_addr_npi: Option<u8>,
        /// Ask the SMSC for delivery receipts (`registered_delivery` = 1). Default false.
        #[serde(default)]
        pub registered_delivery: bool,
        /// The most `submit_sm` requests outstanding (sent, not yet answered) on the
        /// session. Default 10.
        #[serde(default = "default_window")]
        pub window: usize,
        /// How often an idle session sends `enquire_link`. Default 30 s.
        #[serde(default = "default_enquire_link", with = "humantime_serde")]
        pub enquire_link_interval: Duration,
        /// How long to wait for any response (bind, submit). Default 10 s.
        #[serde(default = "default_timeout", with = "humantime_serde")]
        pub response_timeout: Duration,
        /// How long to wait for the TCP connection. Default 10 s.
        #[serde(default = "default_timeout", with = "humantime_serde")]
        pub connect_timeout: Duration,
        /// The first wait after a failed connect or bind; doubled on each further
        /// failure. While it runs, sends fail as retryable without touching the
        /// network. Default 1 s.
        #[serde(default = "default_backoff", with = "humantime_serde")]
        pub reconnect_backoff: Duration,
        /// The longest wait between reconnects. Default 60 s.
        #[serde(default = "default_backoff_max", with = "humantime_serde")]
        pub reconnect_backoff_max: Duration,
    }
}

/// How the generic gateway's `fields` are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    /// `application/x-www-form-urlencoded`.
    #[default]
    Form,
    /// `application/json`, an object whose values are strings.
    Json,
    /// No body.
    None,
}

/// An HTTP status code (`429`) or an inclusive range (`"500-599"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    Code(u16),
    Text(String),
}

/// The SMPP bind type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindMode {
    /// Send only.
    #[default]
    Transmitter,
    /// Send and receive (delivery receipts arrive on the same session).
    Transceiver,
}

fn default_max_segments() -> usize {
    3
}
fn default_rate_per_second() -> f64 {
    10.0
}
fn default_max_in_flight() -> usize {
    4
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_enquire_link() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}
fn default_window() -> usize {
    10
}
fn default_method() -> String {
    "POST".to_string()
}
fn default_success() -> Vec<StatusSpec> {
    vec![StatusSpec::Text("200-299".into())]
}
fn default_retry_statuses() -> Vec<StatusSpec> {
    vec![
        StatusSpec::Code(408),
        StatusSpec::Code(429),
        StatusSpec::Text("500-599".into()),
    ]
}
fn default_twilio_base_url() -> url::Url {
    url::Url::parse("https://api.twilio.com").expect("constant URL parses")
}
fn default_vonage_base_url() -> url::Url {
    url::Url::parse("https://rest.nexmo.com").expect("constant URL parses")
}

/// Checks an E.164 number: `+`, then 8 to 15 digits, the first not 0.
pub fn is_e164(number: &str) -> bool {
    match number.strip_prefix('+') {
        Some(digits) => {
            (8..=15).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0')
        }
        None => false,
    }
}

/// Inclusive status-code ranges parsed from [`StatusSpec`]s.
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusSet(Vec<(u16, u16)>);

impl StatusSet {
    pub(crate) fn parse(specs: &[StatusSpec]) -> Result<Self, String> {
        let mut ranges = Vec::with_capacity(specs.len());
        for spec in specs {
            let range = match spec {
                StatusSpec::Code(c) => (*c, *c),
                StatusSpec::Text(t) => {
                    let parse = |s: &str| {
                        s.trim().parse::<u16>().map_err(|_| {
                            format!("`{t}` is not a status code or a range like \"500-599\"")
                        })
                    };
                    match t.split_once('-') {
                        Some((a, b)) => (parse(a)?, parse(b)?),
                        None => {
                            let c = parse(t)?;
                            (c, c)
                        }
                    }
                }
            };
            if !(100..=599).contains(&range.0)
                || !(100..=599).contains(&range.1)
                || range.0 > range.1
            {
                return Err(format!(
                    "{spec:?} is not a status code or range within 100-599"
                ));
            }
            ranges.push(range);
        }
        Ok(StatusSet(ranges))
    }

    pub(crate) fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|(a, b)| (*a..=*b).contains(&status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164() {
        for ok in [
            "+447700900123",
            "+12025550123",
            "+4917012345",
            "+123456789012345",
        ] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "447700900123",
            "+44 7700 900123",
            "+1234567",
            "+1234567890123456",
            "+0447700900123",
            "+44770090012a",
            "",
            "+",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }

    #[test]
    fn status_sets() {
        let set = StatusSet::parse(&[StatusSpec::Code(429), StatusSpec::Text("500-599".into())])
            .expect("valid");
        assert!(set.contains(429) && set.contains(500) && set.contains(599));
        assert!(!set.contains(400) && !set.contains(200));
        assert!(StatusSet::parse(&[StatusSpec::Text("5xx".into())]).is_err());
        assert!(StatusSet::parse(&[StatusSpec::Text("599-500".into())]).is_err());
        assert!(StatusSet::parse(&[StatusSpec::Code(42)]).is_err());
    }
}
