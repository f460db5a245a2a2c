//! The email target's configuration as written in TOML, and its validation into the
//! typed settings the channel runs on.
//!
//! Validation happens once, at config load, with errors that name the target and the
//! key; nothing here touches the network (reading `tls_ca_file` is the only I/O).

use clarion_core::{Secret, SecretRef, SecretResolver};
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

/// Most servers accept at least 100 RCPTs per transaction (RFC 5321 §4.5.3.1.8); stay
/// well under it by default.
const DEFAULT_BCC_BATCH: usize = 50;
const MAX_BCC_BATCH: usize = 100;
const LIST_PREFIX: &str = "list:";
const DIRECTORY_RECIPIENTS: &str = "a people target's channel addresses the directory's members; static recipients belong to an ordinary target";
const DIRECTORY_LISTS: &str = "a people target's channel addresses the directory's members; static recipient lists belong to an ordinary target";

/// One SMTP target: the relay it talks to, how, and who receives each audience's
/// updates. Sits flat inside `[targets.NAME]` next to the daemon's `type = "email"`,
/// `audiences` and `[targets.NAME.retry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Host name or IP address of the SMTP relay (submission server).
    pub host: String,
    /// TCP port. Default: 587 for `starttls` and `starttls_opportunistic`, 465 for
    /// `implicit`, 25 for `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// How the connection is secured: `starttls` (default: STARTTLS is required, the
    /// send fails if the server does not offer it), `starttls_opportunistic` (upgrade
    /// when offered, else stay in clear text; with `username`/`password` STARTTLS is
    /// still required unless `allow_plaintext_auth` says otherwise), `implicit` (TLS
    /// from the first byte, usually port 465) or `none` (clear text, no credentials;
    /// must be chosen explicitly).
    #[serde(default)]
    pub tls: TlsMode,
    /// Only with `tls = "starttls_opportunistic"` and credentials: `true` lets the
    /// password cross the network in clear text when the server does not offer
    /// STARTTLS. Default `false`: such a session fails (permanently) before AUTH,
    /// because a missing STARTTLS is also what an attacker who strips it from the
    /// server's reply produces. Set it only for a relay on a trusted network that
    /// cannot do TLS.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// PEM file with CA certificates to trust in addition to the system's roots (a
    /// private relay's CA, a test CA). There is deliberately no switch that turns
    /// certificate checking off.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// The name the server's certificate must carry. Default: `host`.
    #[serde(default)]
    pub tls_server_name: Option<String>,
    /// The name this client announces in EHLO. Default: the machine's host name.
    #[serde(default)]
    pub helo_name: Option<String>,
    /// User name for SMTP AUTH (PLAIN or LOGIN). Requires `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for SMTP AUTH: `{ env = "SMTP_PASSWORD" }` or
    /// `{ file = "/run/secrets/smtp" }`. Requires `username`.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// The AUTH mechanisms to offer, in order of preference: `plain`, `login`.
    /// Default: both, PLAIN first.
    #[serde(default)]
    pub auth_mechanisms: Option<Vec<AuthMechanism>>,
    /// The `From` header and envelope sender, e.g. `"Acme Status <status@acme.example>"`.
    pub from: String,
    /// An optional `Reply-To` mailbox.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// The `List-Unsubscribe` header value, written as RFC 2369 wants it:
    /// `"<mailto:unsubscribe@acme.example>, <https://acme.example/unsubscribe>"`.
    #[serde(default)]
    pub list_unsubscribe: Option<String>,
    /// Also send `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058); only
    /// meaningful when `list_unsubscribe` has an https URL that accepts the POST.
    #[serde(default)]
    pub list_unsubscribe_one_click: bool,
    /// The domain of the deterministic `Message-ID` (`<idempotency-key@domain>`).
    /// Default: the domain of `from`.
    #[serde(default)]
    pub message_id_domain: Option<String>,
    /// Who receives each audience's updates: audience name → entries, each an
    /// address (`"noc@acme.example"`, `"NOC <noc@acme.example>"`) or a named list
    /// (`"list:regulators-eu"`).
    pub recipients: BTreeMap<String, Vec<String>>,
    /// Named recipient lists that `recipients` entries can refer to as `list:NAME`.
    #[serde(default)]
    pub lists: BTreeMap<String, Vec<String>>,
    /// `per_recipient` (default): one message per recipient, each recipient in its
    /// own `To`. `bcc`: one message per batch of up to `bcc_batch_size` recipients,
    /// addressed only in the envelope (nobody sees the others).
    #[serde(default)]
    pub send_mode: SendMode,
    /// Largest number of recipients in one `bcc` message (1–100). Default: 50.
    #[serde(default)]
    pub bcc_batch_size: Option<usize>,
    /// Most SMTP connections open to this relay at once; they are kept and reused
    /// across deliveries. Default: 4.
    #[serde(default)]
    pub pool_max_size: Option<usize>,
    /// How long an unused pooled connection is kept before it is closed. Default: 60s.
    #[serde(default, with = "humantime_serde")]
    pub pool_idle_timeout: Option<Duration>,
    /// Time allowed to open a connection: TCP connect, TLS, greeting, EHLO, STARTTLS
    /// and AUTH together. Default: 30s.
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Time allowed for each SMTP command's reply (MAIL, RCPT, DATA, the end of the
    /// message). Default: 60s.
    #[serde(default, with = "humantime_serde")]
    pub command_timeout: Option<Duration>,
    /// Set by the daemon, never by the file (the key does not exist in TOML): this
    /// channel is the leg of a people target that addresses a directory's members,
    /// handed over with each delivery (`Delivery::direct`). Its `recipients` must then
    /// be an empty table and `lists` empty or absent (anything else is refused): who
    /// it reaches is the directory's business, not the config's. Default false.
    #[serde(skip)]
    pub directory: bool,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain connection upgraded with STARTTLS; fail if the server does not offer it.
    #[default]
    Starttls,
    /// Upgrade with STARTTLS when the server offers it, else continue in clear text.
    StarttlsOpportunistic,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
    /// Clear text only.
    None,
}

/// An SMTP AUTH mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMechanism {
    Plain,
    Login,
}

/// One message per recipient, or Bcc batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendMode {
    #[default]
    PerRecipient,
    Bcc,
}

/// Why an email target's config cannot be used. Every message names the target and
/// the key, so the operator can find the line to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("email target `{target}`: `{field}`: {reason}")]
pub struct ConfigError {
    pub target: String,
    pub field: String,
    pub reason: String,
}

/// A validated recipient: the address used in the envelope and reported back in
/// results, and the mailbox shown in `To` (with its display name, if any).
#[derive(Debug, Clone)]
pub(crate) struct Recipient {
    pub mailbox: Mailbox,
    /// The address as written, the recipient's id in `RecipientResult::recipient`
    /// and `Delivery::recipients`.
    id: String,
    /// The address lower-cased, for comparisons: the domain is case-insensitive,
    /// and mailbox providers treat the local part that way too.
    key: String,
}

impl Recipient {
    pub fn new(mailbox: Mailbox) -> Self {
        let id = mailbox.email.to_string();
        let key = id.to_lowercase();
        Recipient { mailbox, id, key }
    }

    /// A recipient handed over with the delivery (`Delivery::direct`): reported back
    /// by `address` exactly as the daemon gave it, so that its results match its own
    /// list, and compared by the mailbox's address like any other.
    pub fn direct(address: &str, mailbox: Mailbox) -> Self {
        let key = mailbox.email.to_string().to_lowercase();
        Recipient {
            mailbox,
            id: address.to_string(),
            key,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Everything needed to open an authenticated, secured connection.
#[derive(Clone)]
pub(crate) struct ConnectSettings {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub hello: ClientId,
    pub credentials: Option<Credentials>,
    /// The config's `allow_plaintext_auth`: AUTH may go out on a session that
    /// opportunistic STARTTLS left unencrypted.
    pub allow_plaintext_auth: bool,
    pub mechanisms: Vec<Mechanism>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

impl std::fmt::Debug for ConnectSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials stay out of Debug: only say whether there are any.
        f.debug_struct("ConnectSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("auth", &self.credentials.is_some())
            .field("allow_plaintext_auth", &self.allow_plaintext_auth)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// The validated, typed form of [`EmailConfig`].
#[derive(Debug)]
pub(crate) struct Settings {
    pub connect: ConnectSettings,
    pub from: Mailbox,
    pub reply_to: Option<Mailbox>,
    pub list_unsubscribe: Option<String>,
    pub list_unsubscribe_one_click: bool,
    pub message_id_domain: String,
    /// Audience → recipients, lists expanded, de-duplicated within the audience.
    pub recipients: BTreeMap<String, Vec<Recipient>>,
    pub send_mode: SendMode,
    pub bcc_batch_size: usize,
    pub pool_max_size: usize,
    pub pool_idle_timeout: Duration,
}

impl EmailConfig {
    pub(crate) fn validate(
        &self,
        target: &str,
        secrets: &dyn SecretResolver,
    ) -> Result<Settings, ConfigError> {
        let err = |field: &str, reason: String| ConfigError {
            target: target.to_string(),
            field: field.to_string(),
            reason,
        };

        let host = self.host.trim();
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(err("host", format!("`{}` is not a host name", self.host)));
        }
        let port = self.port.unwrap_or(match self.tls {
            TlsMode::Starttls | TlsMode::StarttlsOpportunistic => 587,
            TlsMode::Implicit => 465,
            TlsMode::None => 25,
        });
        if port == 0 {
            return Err(err("port", "must be between 1 and 65535".into()));
        }

        let tls = self.tls_settings(host, &err)?;

        let hello = match &self.helo_name {
            Some(name)
                if name.is_empty() || !name.is_ascii() || name.contains(char::is_whitespace) =>
            {
                return Err(err("helo_name", format!("`{name}` is not a host name")));
            }
            Some(name) => ClientId::Domain(name.clone()),
            None => ClientId::default(),
        };

        let credentials = match (&self.username, &self.password) {
            (None, None) => None,
            (Some(_), None) => return Err(err("password", "is required with `username`".into())),
            (None, Some(_)) => return Err(err("username", "is required with `password`".into())),
            (Some(user), Some(reference)) => {
                let secret: Secret = secrets
                    .resolve(reference)
                    .map_err(|e| err("password", format!("cannot read {reference}: {e}")))?;
                Some(Credentials::new(user.clone(), secret.expose().to_string()))
            }
        };
        if credentials.is_some() && self.tls == TlsMode::None {
            return Err(err(
                "tls",
                "is `none` but credentials are set: the password would cross the network in clear text; use `starttls` or `implicit`".into(),
            ));
        }
        if self.allow_plaintext_auth {
            if self.tls != TlsMode::StarttlsOpportunistic {
                return Err(err(
                    "allow_plaintext_auth",
                    "only applies to `tls = \"starttls_opportunistic\"`".into(),
                ));
            }
            if credentials.is_none() {
                return Err(err(
                    "allow_plaintext_auth",
                    "is set but there are no credentials (`username`, `password`)".into(),
                ));
            }
        }
        let mechanisms = match &self.auth_mechanisms {
            None => vec![Mechanism::Plain, Mechanism::Login],
            Some(list) if list.is_empty() => {
                return Err(err(
                    "auth_mechanisms",
                    "must name at least one mechanism".into(),
                ));
            }
            Some(list) => list
                .iter()
                .map(|m| match m {
                    AuthMechanism::Plain => Mechanism::Plain,
                    AuthMechanism::Login => Mechanism::Login,
                })
                .collect(),
        };

        let from: Mailbox = self
            .from
            .parse()
            .map_err(|e| err("from", format!("`{}` is not a mailbox: {e}", self.from)))?;
        let reply_to = match &self.reply_to {
            None => None,
            Some(r) => Some(
                r.parse::<Mailbox>()
                    .map_err(|e| err("reply_to", format!("`{r}` is not a mailbox: {e}")))?,
            ),
        };
        if let Some(v) = &self.list_unsubscribe {
            let ok = v.is_ascii()
                && !v.chars().any(|c| c.is_ascii_control())
                && v.split(',').all(|part| {
                    let p = part.trim();
                    p.len() > 2 && p.starts_with('<') && p.ends_with('>')
                });
            if !ok {
                return Err(err(
                    "list_unsubscribe",
                    format!(
                        "`{v}` must be one or more `<URI>` separated by commas, e.g. `<mailto:unsubscribe@example.com>`"
                    ),
                ));
            }
        }
        if self.list_unsubscribe_one_click && self.list_unsubscribe.is_none() {
            return Err(err(
                "list_unsubscribe_one_click",
                "requires `list_unsubscribe`".into(),
            ));
        }
        let message_id_domain = match &self.message_id_domain {
            Some(d) => d.clone(),
            None => from.email.domain().to_string(),
        };
        if !valid_id_domain(&message_id_domain) {
            return Err(err(
                "message_id_domain",
                format!("`{message_id_domain}` cannot be used on the right of `@` in a Message-ID"),
            ));
        }

        let recipients = self.recipient_map(&err)?;

        let bcc_batch_size = self.bcc_batch_size.unwrap_or(DEFAULT_BCC_BATCH);
        if !(1..=MAX_BCC_BATCH).contains(&bcc_batch_size) {
            return Err(err(
                "bcc_batch_size",
                format!("must be between 1 and {MAX_BCC_BATCH}"),
            ));
        }
        let pool_max_size = self.pool_max_size.unwrap_or(4);
        if !(1..=100).contains(&pool_max_size) {
            return Err(err("pool_max_size", "must be between 1 and 100".into()));
        }
        let positive = |field: &str, d: Option<Duration>, default: u64| match d {
            Some(d) if d.is_zero() => Err(err(field, "must be longer than zero".into())),
            Some(d) => Ok(d),
            None => Ok(Duration::from_secs(default)),
        };

        Ok(Settings {
            connect: ConnectSettings {
                host: host.to_string(),
                port,
                tls,
                hello,
                credentials,
                allow_plaintext_auth: self.allow_plaintext_auth,
                mechanisms,
                connect_timeout: positive("connect_timeout", self.connect_timeout, 30)?,
                command_timeout: positive("command_timeout", self.command_timeout, 60)?,
            },
            from,
            reply_to,
            list_unsubscribe: self.list_unsubscribe.clone(),
            list_unsubscribe_one_click: self.list_unsubscribe_one_click,
            message_id_domain,
            recipients,
            send_mode: self.send_mode,
            bcc_batch_size,
            pool_max_size,
            pool_idle_timeout: positive("pool_idle_timeout", self.pool_idle_timeout, 60)?,
        })
    }

    fn tls_settings(
        &self,
        host: &str,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<Tls, ConfigError> {
        if self.tls == TlsMode::None {
            if self.tls_ca_file.is_some() {
                return Err(err("tls_ca_file", "is set but `tls` is `none`".into()));
            }
            if self.tls_server_name.is_some() {
                return Err(err("tls_server_name", "is set but `tls` is `none`".into()));
            }
            return Ok(Tls::None);
        }
        let name = self.tls_server_name.as_deref().unwrap_or(host).to_string();
        let mut builder = TlsParameters::builder(name);
        if let Some(path) = &self.tls_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                err(
                    "tls_ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            // lettre accepts a PEM without certificates as an empty list; an operator
            // who named a file meant to trust something.
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(err(
                    "tls_ca_file",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                err(
                    "tls_ca_file",
                    format!("{} is not a PEM certificate file: {e}", path.display()),
                )
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let params = builder
            .build()
            .map_err(|e| err("tls", format!("cannot set up TLS: {e}")))?;
        Ok(match self.tls {
            TlsMode::Starttls => Tls::Required(params),
            TlsMode::StarttlsOpportunistic => Tls::Opportunistic(params),
            TlsMode::Implicit => Tls::Wrapper(params),
            TlsMode::None => Tls::None,
        })
    }

    fn recipient_map(
        &self,
        err: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<BTreeMap<String, Vec<Recipient>>, ConfigError> {
        if self.directory {
            // Anything written here would be mailed on top of the directory's members,
            // or never, depending on how the daemon addressed the delivery: refuse it.
            if !self.recipients.is_empty() {
                return Err(err("recipients", DIRECTORY_RECIPIENTS.into()));
            }
            if !self.lists.is_empty() {
                return Err(err("lists", DIRECTORY_LISTS.into()));
            }
            return Ok(BTreeMap::new());
        }
        let parse = |field: &str, entry: &str| -> Result<Recipient, ConfigError> {
            let mailbox = parse_address(entry)
                .map_err(|e| err(field, format!("`{entry}` is not an email address: {e}")))?;
            Ok(Recipient::new(mailbox))
        };
        let mut lists: BTreeMap<&str, Vec<Recipient>> = BTreeMap::new();
        for (name, entries) in &self.lists {
            let field = format!("lists.{name}");
            if entries.is_empty() {
                return Err(err(&field, "is empty".into()));
            }
            let mut out = Vec::with_capacity(entries.len());
            for (i, entry) in entries.iter().enumerate() {
                if entry.starts_with(LIST_PREFIX) {
                    return Err(err(
                        &format!("{field}[{i}]"),
                        format!("`{entry}`: lists cannot include other lists"),
                    ));
                }
                out.push(parse(&format!("{field}[{i}]"), entry)?);
            }
            lists.insert(name, out);
        }

        let mut map = BTreeMap::new();
        let mut total = 0;
        for (audience, entries) in &self.recipients {
            let field = format!("recipients.{audience}");
            let mut out: Vec<Recipient> = Vec::new();
            // Addresses compare without regard to case: the domain is
            // case-insensitive, and mailbox providers treat the local part that way.
            let mut seen: HashSet<String> = HashSet::new();
            for (i, entry) in entries.iter().enumerate() {
                let field = format!("{field}[{i}]");
                let found = match entry.strip_prefix(LIST_PREFIX) {
                    Some(name) => lists
                        .get(name)
                        .ok_or_else(|| {
                            err(
                                &field,
                                format!("`{entry}` names a list that `lists` does not define"),
                            )
                        })?
                        .clone(),
                    None => vec![parse(&field, entry)?],
                };
                for r in found {
                    if seen.insert(r.key().to_string()) {
                        out.push(r);
                    }
                }
            }
            total += out.len();
            map.insert(audience.clone(), out);
        }
        if total == 0 {
            return Err(err("recipients", "no audience has any recipient".into()));
        }
        Ok(map)
    }
}

/// Parses one recipient entry, configured or handed over with a delivery: an address
/// (`noc@acme.example`) or a mailbox with a display name (`NOC <noc@acme.example>`).
pub(crate) fn parse_address(entry: &str) -> Result<Mailbox, lettre::address::AddressError> {
    entry.parse()
}

fn valid_id_domain(d: &str) -> bool {
    !d.is_empty()
        && d.is_ascii()
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}
