//! The SMTP side: a bounded pool of authenticated sessions to one relay, and the mail
//! transaction that reports every RCPT's fate on its own.
//!
//! Why not `lettre::AsyncSmtpTransport::send`: it gives up the whole envelope when one
//! RCPT is refused, so a Bcc batch could not say which recipient failed; its pool does
//! not bound how many connections are open at once; and async lettre has no
//! per-command timeout, so cancelling a stuck send would put a half-used session back
//! into its pool. This module reuses lettre's session (TLS, EHLO, STARTTLS, AUTH,
//! command and reply codec) and runs MAIL / RCPT / DATA itself.
//!
//! Nothing here retries a delivery: the only second try is opening a fresh session
//! when a pooled one turns out to be dead at `MAIL FROM`, before any recipient was
//! named, so no message can be sent twice by it.

use crate::config::{ConnectSettings, Recipient};
use clarion_core::{DeliveryError, Receipt};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls};
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt, Rset};
use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type SmtpError = lettre::transport::smtp::Error;

/// SMTP reply 421: the server is closing the session.
const CLOSING: &str = "421";

/// A bounded set of open sessions to one relay, reused across deliveries. At most
/// `max` sessions exist at once (idle or in use); idle ones older than
/// `idle_timeout` are closed.
pub(crate) struct Pool {
    target: Arc<str>,
    connect: ConnectSettings,
    idle: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connect", &self.connect)
            .field("available", &self.permits.available_permits())
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// A session checked out of the pool. Dropping it closes the session; only
/// [`Lease::release`] puts it back, and only a session in a known-clean state may be
/// released.
struct Lease {
    conn: AsyncSmtpConnection,
    reused: bool,
    _permit: OwnedSemaphorePermit,
}

/// How one step of a session failed.
enum StepError {
    /// The server answered with a negative reply; the session is still usable
    /// (unless the reply is 421).
    Reply(SmtpError),
    /// The session is gone: I/O error, unparsable reply, TLS failure.
    Broken(SmtpError),
    /// No reply within `command_timeout`; the session is abandoned.
    Timeout(Duration),
}

impl StepError {
    fn session_usable(&self) -> bool {
        match self {
            StepError::Reply(e) => code(e).as_deref() != Some(CLOSING),
            StepError::Broken(_) | StepError::Timeout(_) => false,
        }
    }
}

async fn step<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, SmtpError>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(StepError::Timeout(timeout)),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.status().is_some() => Err(StepError::Reply(e)),
        Ok(Err(e)) => Err(StepError::Broken(e)),
    }
}

fn code(e: &SmtpError) -> Option<String> {
    e.status().map(|c| c.to_string())
}

impl Pool {
    pub(crate) fn new(
        target: Arc<str>,
        connect: ConnectSettings,
        max: usize,
        idle_timeout: Duration,
    ) -> Self {
        Pool {
            target,
            connect,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max)),
            idle_timeout,
        }
    }

    fn endpoint(&self) -> String {
        format!("{}:{}", self.connect.host, self.connect.port)
    }

    /// Takes an idle session or opens a new one, waiting while `max` are in use.
    async fn checkout(&self, fresh: bool) -> Result<Lease, DeliveryError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| DeliveryError::retryable("the SMTP pool is shut down", None))?;
        if !fresh {
            let reusable = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let limit = self.idle_timeout;
                // Expired sessions are dropped here, which closes their sockets.
                idle.retain(|i| i.since.elapsed() <= limit);
                idle.pop()
            };
            if let Some(i) = reusable {
                return Ok(Lease {
                    conn: i.conn,
                    reused: true,
                    _permit: permit,
                });
            }
        }
        let conn = self.open().await?;
        Ok(Lease {
            conn,
            reused: false,
            _permit: permit,
        })
    }

    fn release(&self, lease: Lease) {
        if lease.conn.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(Idle {
            conn: lease.conn,
            since: Instant::now(),
        });
    }

    /// Opens an authenticated, secured session: connect, greeting, EHLO, STARTTLS
    /// (per the TLS mode), AUTH (when configured), all within `connect_timeout`.
    async fn open(&self) -> Result<AsyncSmtpConnection, DeliveryError> {
        let s = &self.connect;
        let opening = async {
            let wrapper = match &s.tls {
                Tls::Wrapper(p) => Some(p.clone()),
                _ => None,
            };
            let mut conn = AsyncSmtpConnection::connect_tokio1(
                (s.host.as_str(), s.port),
                Some(s.connect_timeout),
                &s.hello,
                wrapper,
                None,
            )
            .await
            .map_err(|e| ("connecting", e))?;
            match &s.tls {
                Tls::Required(p) => conn
                    .starttls(p.clone(), &s.hello)
                    .await
                    .map_err(|e| ("STARTTLS (required by `tls = \"starttls\"`)", e))?,
                Tls::Opportunistic(p) if conn.can_starttls() => conn
                    .starttls(p.clone(), &s.hello)
                    .await
                    .map_err(|e| ("STARTTLS", e))?,
                _ => {}
            }
            if let Some(credentials) = &s.credentials {
                // Opportunistic STARTTLS falls back to clear text when the server does
                // not offer it, which is also what a man in the middle who strips the
                // offer produces: the password must not follow unless the config
                // says so (`allow_plaintext_auth`).
                if !conn.is_encrypted() && !s.allow_plaintext_auth {
                    return Err(Opening::PlaintextAuth);
                }
                conn.auth(&s.mechanisms, credentials)
                    .await
                    .map_err(|e| ("logging in (AUTH)", e))?;
            }
            Ok::<_, Opening>(conn)
        };
        match tokio::time::timeout(s.connect_timeout, opening).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(Opening::Failed(stage, e))) => Err(self.session_error(stage, &e)),
            // Permanent, like `tls = "starttls"` against a server without STARTTLS:
            // the relay's setup (or the network path to it) needs an operator.
            Ok(Err(Opening::PlaintextAuth)) => Err(DeliveryError::permanent(format!(
                "email target `{}`: {} did not offer STARTTLS, so the session is not \
                 encrypted and the credentials were not sent (a missing STARTTLS can be \
                 an attacker stripping it); use a relay with STARTTLS, or set \
                 `allow_plaintext_auth = true` to send the password in clear text",
                self.target,
                self.endpoint()
            ))),
            Err(_) => Err(DeliveryError::retryable(
                format!(
                    "email target `{}`: no SMTP session with {} within {:?} (connect_timeout)",
                    self.target,
                    self.endpoint(),
                    s.connect_timeout
                ),
                None,
            )),
        }
    }

    /// Classifies a failure to open a session. Refused credentials (5xx), a server
    /// that does not offer the TLS the config requires (a client error in lettre),
    /// and a TLS handshake that failed for a reason only an operator can fix (see
    /// [`tls_needs_operator`]) are permanent. Everything else may pass, including a
    /// TLS handshake cut short by a reset, an EOF or a timeout: that is the network
    /// or a restarting server, not the configuration, and dead-lettering a whole
    /// queue for it would lose mail a retry would deliver.
    fn session_error(&self, stage: &str, e: &SmtpError) -> DeliveryError {
        let reason = format!(
            "email target `{}`: {stage} {} failed: {}",
            self.target,
            self.endpoint(),
            describe(e)
        );
        // Not `e.is_tls()`: lettre uses that kind for any TLS-layer error of its
        // native-tls and boring backends, resets included; what matters is the cause.
        let class_permanent = e.is_permanent() || e.is_client() || tls_needs_operator(e);
        let err = if class_permanent && !e.is_timeout() {
            DeliveryError::permanent(reason)
        } else {
            DeliveryError::retryable(reason, None)
        };
        match code(e) {
            Some(c) => err.with_code(c),
            None => err,
        }
    }

    /// Opens a session and closes it: `check-config --connect`.
    pub(crate) async fn healthcheck(&self) -> Result<(), DeliveryError> {
        let mut conn = self.open().await?;
        let _ = tokio::time::timeout(self.connect.command_timeout, conn.command(Quit)).await;
        Ok(())
    }

    /// One mail transaction: `MAIL FROM`, one `RCPT TO` per recipient, `DATA` if any
    /// recipient was accepted. Returns one result per recipient, in order.
    pub(crate) async fn transact(
        &self,
        from: &lettre::Address,
        recipients: &[&Recipient],
        message: &str,
    ) -> Vec<Result<Receipt, DeliveryError>> {
        let all = |e: DeliveryError| recipients.iter().map(|_| Err(e.clone())).collect();
        let mut fresh = false;
        loop {
            let mut lease = match self.checkout(fresh).await {
                Ok(l) => l,
                Err(e) => return all(e),
            };
            match self.mail_from(&mut lease, from, recipients, message).await {
                Ok(()) => return self.rcpt_and_data(lease, recipients, message).await,
                // A pooled session the server has since closed: nothing was sent on
                // it, so open a fresh one, once.
                Err(MailFromError::Step(e)) if lease.reused && !e.session_usable() => {
                    tracing::debug!(target_name = %self.target, "pooled SMTP session is dead, opening a new one");
                    fresh = true;
                    continue;
                }
                Err(MailFromError::Step(e)) => {
                    let err = self.step_error("MAIL FROM", &e, false);
                    self.finish(lease, e.session_usable()).await;
                    return all(err);
                }
                Err(MailFromError::Unsupported(err)) => {
                    self.finish(lease, false).await;
                    return all(err);
                }
            }
        }
    }

    async fn mail_from(
        &self,
        lease: &mut Lease,
        from: &lettre::Address,
        recipients: &[&Recipient],
        message: &str,
    ) -> Result<(), MailFromError> {
        let conn = &mut lease.conn;
        let mut params = Vec::new();
        let non_ascii_addresses = !AsRef::<str>::as_ref(from).is_ascii()
            || recipients
                .iter()
                .any(|r| !AsRef::<str>::as_ref(&r.mailbox.email).is_ascii());
        if non_ascii_addresses {
            if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
                return Err(MailFromError::Unsupported(DeliveryError::permanent(
                    format!(
                        "email target `{}`: the addresses need SMTPUTF8, which {} does not offer",
                        self.target,
                        self.endpoint()
                    ),
                )));
            }
            params.push(MailParameter::SmtpUtfEight);
        }
        // lettre encodes bodies as 7-bit (quoted-printable or base64); this only
        // guards against a future change of that.
        if !message.is_ascii() {
            if !conn.server_info().supports_feature(Extension::EightBitMime) {
                return Err(MailFromError::Unsupported(DeliveryError::permanent(
                    format!(
                        "email target `{}`: the message needs 8BITMIME, which {} does not offer",
                        self.target,
                        self.endpoint()
                    ),
                )));
            }
            params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        step(
            self.connect.command_timeout,
            conn.command(Mail::new(Some(from.clone()), params)),
        )
        .await
        .map(drop)
        .map_err(MailFromError::Step)
    }

    async fn rcpt_and_data(
        &self,
        mut lease: Lease,
        recipients: &[&Recipient],
        message: &str,
    ) -> Vec<Result<Receipt, DeliveryError>> {
        let timeout = self.connect.command_timeout;
        let mut results: Vec<Option<Result<Receipt, DeliveryError>>> =
            recipients.iter().map(|_| None).collect();
        let fill = |results: Vec<Option<Result<Receipt, DeliveryError>>>, e: &DeliveryError| {
            results
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(e.clone())))
                .collect::<Vec<_>>()
        };

        let mut accepted = Vec::new();
        for (i, r) in recipients.iter().enumerate() {
            let rcpt = Rcpt::new(r.mailbox.email.clone(), Vec::new());
            match step(timeout, lease.conn.command(rcpt)).await {
                Ok(_) => accepted.push(i),
                Err(e) if e.session_usable() => {
                    results[i] = Some(Err(self.step_error("RCPT TO", &e, false)));
                }
                Err(e) => {
                    // The session ended mid-envelope: nothing was sent to anyone.
                    let err = self.step_error("RCPT TO", &e, false);
                    return fill(results, &err);
                }
            }
        }
        if accepted.is_empty() {
            self.finish(lease, true).await;
            return fill(results, &no_result());
        }

        if let Err(e) = step(timeout, lease.conn.command(Data)).await {
            let err = self.step_error("DATA", &e, false);
            self.finish(lease, e.session_usable()).await;
            return fill(results, &err);
        }
        // The message and its terminating dot go out in one write: lettre's
        // `message()` writes the dot separately, and with Nagle's algorithm that
        // small second write waits for the server's delayed ACK (40 ms a message).
        let body = DataBody(message);
        match step(timeout, lease.conn.command(body)).await {
            Ok(reply) => {
                let receipt = Receipt {
                    provider_id: provider_id(&reply),
                };
                for i in accepted {
                    results[i] = Some(Ok(receipt.clone()));
                }
                self.release(lease);
                fill(results, &no_result())
            }
            Err(e) => {
                // A reply means the server refused the message; no reply means we
                // cannot know whether it took it.
                let err = self.step_error("the end of DATA", &e, true);
                let usable = e.session_usable();
                if usable {
                    self.release(lease);
                }
                fill(results, &err)
            }
        }
    }

    /// Ends a failed transaction: a usable session is reset and goes back to the
    /// pool, anything else is closed.
    async fn finish(&self, mut lease: Lease, usable: bool) {
        if !usable {
            return;
        }
        if step(self.connect.command_timeout, lease.conn.command(Rset))
            .await
            .is_ok()
        {
            self.release(lease);
        }
    }

    fn step_error(&self, command: &str, e: &StepError, after_data: bool) -> DeliveryError {
        let endpoint = self.endpoint();
        let target = &self.target;
        match e {
            StepError::Reply(e) => {
                let reason = format!(
                    "email target `{target}`: {endpoint} answered {command} with {}",
                    describe(e)
                );
                let err = if e.is_permanent() {
                    DeliveryError::permanent(reason)
                } else {
                    DeliveryError::retryable(reason, None)
                };
                match code(e) {
                    Some(c) => err.with_code(c),
                    None => err,
                }
            }
            StepError::Broken(e) => DeliveryError::retryable(
                format!(
                    "email target `{target}`: the session with {endpoint} broke during {command}: {}{}",
                    describe(e),
                    maybe_sent(after_data)
                ),
                None,
            ),
            StepError::Timeout(t) => DeliveryError::retryable(
                format!(
                    "email target `{target}`: {endpoint} did not answer {command} within {t:?} (command_timeout){}",
                    maybe_sent(after_data)
                ),
                None,
            ),
        }
    }
}

/// The DATA payload on the wire: dot-stuffed (RFC 5321 §4.5.2), ending in
/// `CRLF . CRLF`.
pub(crate) struct DataBody<'a>(pub &'a str);

impl std::fmt::Display for DataBody<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.0;
        if body.starts_with('.') {
            f.write_str(".")?;
        }
        let mut rest = body;
        while let Some(pos) = rest.find("\r\n.") {
            f.write_str(&rest[..pos + 2])?;
            f.write_str(".")?;
            rest = &rest[pos + 2..];
        }
        f.write_str(rest)?;
        if !body.ends_with("\r\n") {
            f.write_str("\r\n")?;
        }
        f.write_str(".\r\n")
    }
}

/// Never seen in practice: every path above records a result for every recipient.
/// Retryable, so that a bug here cannot silently drop a recipient.
fn no_result() -> DeliveryError {
    DeliveryError::retryable("internal: no result was recorded for this recipient", None)
}

/// Why a session could not be opened.
enum Opening {
    /// A step failed: which one, and lettre's error.
    Failed(&'static str, SmtpError),
    /// Credentials are configured, the session is in clear text, and the config does
    /// not allow AUTH in clear text.
    PlaintextAuth,
}

impl From<(&'static str, SmtpError)> for Opening {
    fn from((stage, e): (&'static str, SmtpError)) -> Self {
        Opening::Failed(stage, e)
    }
}

enum MailFromError {
    Step(StepError),
    Unsupported(DeliveryError),
}

fn maybe_sent(after_data: bool) -> &'static str {
    if after_data {
        "; the server may have accepted the message, and a redelivery carries the same Message-ID"
    } else {
        ""
    }
}

/// lettre's error text, which carries the server's reply (`permanent error (550):
/// 5.1.1 <x@y>: Recipient address rejected`), without its generic prefixes.
fn describe(e: &SmtpError) -> String {
    let s = e.to_string();
    for prefix in [
        "internal client error: ",
        "Connection error: ",
        "network error: ",
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    s
}

/// True when a TLS handshake failed for a reason that only an operator can fix, so
/// retrying cannot help:
///
/// - the server's certificate did not verify (unknown issuer, wrong name, expired),
///   or it presented none: fix `tls_ca_file`, `tls_server_name` or the relay's
///   certificate;
/// - the two sides share no protocol version or cipher suite, found by us
///   (`PeerIncompatible`) or by the server (its `handshake_failure`,
///   `protocol_version` or `insufficient_security` alert, RFC 8446 §6.2): fix the
///   relay's TLS settings.
///
/// Anything else in the chain (the connection reset or closed mid-handshake, a
/// timeout, a garbled record, an `internal_error` alert) is not in this list and is
/// retried. lettre reports handshake failures as connection errors wrapping an
/// `io::Error` that wraps the `rustls::Error`.
fn tls_needs_operator(e: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription as Alert;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::PeerIncompatible(_)
                    | rustls::Error::AlertReceived(
                        Alert::HandshakeFailure
                            | Alert::ProtocolVersion
                            | Alert::InsufficientSecurity
                    )
            );
        }
        source = err.source();
    }
    false
}

/// The queue id from a `250 2.0.0 Ok: queued as 4Fx2` reply, else the reply's text.
fn provider_id(reply: &Response) -> Option<String> {
    let text: Vec<&str> = reply.message().collect();
    let text = text.join(" ");
    if let Some(pos) = text.find("queued as ") {
        let id = text[pos + "queued as ".len()..]
            .split_whitespace()
            .next()
            .unwrap_or_default();
        if !id.is_empty() {
            return Some(id.to_string());
        }
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        None
    } else {
        Some(trimmed.chars().take(200).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::tls_needs_operator;
    use rustls::{AlertDescription, CertificateError, Error as Tls, PeerIncompatible};
    use std::io::{Error, ErrorKind};

    /// What lettre hands over: an `io::Error` wrapping the rustls error, or a bare
    /// I/O error when the socket failed.
    fn check(cause: Error, operator: bool) {
        let shown = cause.to_string();
        assert_eq!(tls_needs_operator(&cause), operator, "{shown}");
    }

    #[test]
    fn tls_failures_that_need_an_operator_are_told_apart_from_the_network() {
        let tls = |e: Tls| Error::new(ErrorKind::InvalidData, e);
        // Permanent: the certificate, or no common ground.
        check(
            tls(Tls::InvalidCertificate(CertificateError::UnknownIssuer)),
            true,
        );
        check(
            tls(Tls::InvalidCertificate(CertificateError::NotValidForName)),
            true,
        );
        check(
            tls(Tls::InvalidCertificate(CertificateError::Expired)),
            true,
        );
        check(tls(Tls::NoCertificatesPresented), true);
        check(
            tls(Tls::PeerIncompatible(
                PeerIncompatible::NoCipherSuitesInCommon,
            )),
            true,
        );
        check(
            tls(Tls::AlertReceived(AlertDescription::HandshakeFailure)),
            true,
        );
        check(
            tls(Tls::AlertReceived(AlertDescription::ProtocolVersion)),
            true,
        );
        // Retryable: the connection went away, or the server had a bad moment.
        check(Error::from(ErrorKind::ConnectionReset), false);
        check(Error::from(ErrorKind::UnexpectedEof), false);
        check(Error::from(ErrorKind::TimedOut), false);
        check(Error::from(ErrorKind::BrokenPipe), false);
        check(
            tls(Tls::AlertReceived(AlertDescription::InternalError)),
            false,
        );
        check(
            tls(Tls::AlertReceived(AlertDescription::CloseNotify)),
            false,
        );
        check(
            tls(Tls::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType,
            )),
            false,
        );
    }
}
