//! An SMSC over SMPP 3.4, through the `rusmppc` client (framing, sequence numbers,
//! `enquire_link` and response timers are its job).
//!
//! This module keeps one bound session per target and shares it between concurrent
//! sends; at most `window` `submit_sm` requests are outstanding on it. A session that
//! dies (the SMSC drops the TCP connection, `enquire_link` goes unanswered) fails the
//! requests in flight as retryable and is replaced on the next send; failed connects
//! and binds back off exponentially, and while a back-off runs, sends fail as
//! retryable with the remaining wait as `retry_after` instead of hammering the SMSC.
//!
//! A text longer than one segment is sent as several `submit_sm`s carrying a 6-octet
//! user-data header (IEI 0x00: reference, total, sequence) with `esm_class` 0x40; the
//! parts come from [`crate::encoding::split`], so no escape or surrogate pair is torn.

use crate::config::{BindMode, SmppConfig};
use crate::encoding::{self, Encoding};
use crate::{Provider, Sms};
use clarion_core::{DeliveryError, ErrorClass, Receipt, Secret};
use futures::StreamExt;
use rusmpp::CommandId;
use rusmpp::pdus::{BindTransceiver, BindTransmitter, DeliverSmResp, SubmitSm};
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, Ton};
use rusmppc::{Client, ConnectionBuilder, Event};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

/// `esm_class` with the UDH indicator set: `short_message` starts with a user-data
/// header.
const ESM_CLASS_UDHI: u8 = 0x40;

/// `ESME_RINVBNDSTS`: "Incorrect BIND Status for given command" (3.4 §5.1.3).
const ESME_RINVBNDSTS: u32 = 0x0000_0004;

/// Statuses of a `submit_sm_resp` after which the same PDU may well be accepted later
/// (SMPP 3.4 §5.1.3 names the statuses; which of them are transient is our reading,
/// argued per entry). Every other status judges the message itself (its address, its
/// encoding, its length...) and is permanent for that message.
const RETRYABLE_STATUSES: [u32; 6] = [
    // "Incorrect BIND Status for given command": the SMSC does not consider the
    // session bound for submits (it restarted or failed over and lost the bind, or
    // our submit raced its unbind). A statement about the session, not the message:
    // the session is dropped and the next send binds again.
    ESME_RINVBNDSTS,
    0x0000_0008, // ESME_RSYSERR: system error
    0x0000_0014, // ESME_RMSGQFUL: message queue full
    // "submit_sm or submit_multi failed": the spec gives no cause, and SMSCs use it
    // for internal failures (a routing or storage back end unavailable); the message
    // was not found wrong, so it is treated like ESME_RSYSERR.
    0x0000_0045,
    0x0000_0058, // ESME_RTHROTTLED: throttling error
    0x0000_0064, // ESME_RX_T_APPN: temporary application error
];

pub(crate) struct Smpp {
    url: String,
    tls: Option<rustls::ClientConfig>,
    system_id: String,
    password: Secret,
    system_type: String,
    bind: BindMode,
    source_addr: String,
    source_ton: u8,
    source_npi: u8,
    registered_delivery: u8,
    enquire_link_interval: Duration,
    response_timeout: Duration,
    connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    window: Semaphore,
    session: Mutex<Session>,
    next_ref: AtomicU8,
}

impl fmt::Debug for Smpp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smpp")
            .field("url", &self.url)
            .field("system_id", &self.system_id)
            .field("bind", &self.bind)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Session {
    client: Option<Client>,
    /// Consecutive failed connects or binds.
    failures: u32,
    /// No new connect before this.
    retry_at: Option<Instant>,
    /// Why the last connect or bind failed: sends during the back-off fail the same
    /// way. Bind and connect failures are retryable (see [`bind_failed`]); only a
    /// config value that cannot be encoded is permanent, and validation keeps those
    /// out.
    last_error: Option<DeliveryError>,
}

impl Smpp {
    pub(crate) fn build(c: &SmppConfig, password: Secret) -> Result<Self, (&'static str, String)> {
        let address = c.address.trim();
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => return Err(("address", format!("`{}` is not host:port", c.address))),
        }
        if c.system_id.is_empty() || c.system_id.len() > 15 || !c.system_id.is_ascii() {
            return Err(("system_id", "must be 1 to 15 ASCII characters".into()));
        }
        if password.expose().len() > 8 || !password.expose().is_ascii() {
            return Err((
                "password",
                "SMPP 3.4 passwords are at most 8 ASCII characters".into(),
            ));
        }
        if c.system_type.len() > 12 || !c.system_type.is_ascii() {
            return Err(("system_type", "must be at most 12 ASCII characters".into()));
        }
        let (source_addr, default_ton, default_npi) = source_address(&c.source_addr)
            .ok_or(("source_addr", format!("`{}` is not a number, short code or sender id (at most 20 characters; sender ids at most 11)", c.source_addr)))?;
        if c.window == 0 || c.window > 1000 {
            return Err((
                "window",
                format!("must be between 1 and 1000, got {}", c.window),
            ));
        }
        if c.reconnect_backoff.is_zero() || c.reconnect_backoff > c.reconnect_backoff_max {
            return Err((
                "reconnect_backoff",
                "must be above zero and at most `reconnect_backoff_max`".into(),
            ));
        }
        for (field, d) in [
            ("response_timeout", c.response_timeout),
            ("connect_timeout", c.connect_timeout),
            ("enquire_link_interval", c.enquire_link_interval),
        ] {
            if d.is_zero() {
                return Err((field, "must be above zero".into()));
            }
        }
        let tls = if c.tls {
            Some(tls_config(c.ca_file.as_deref())?)
        } else {
            if c.ca_file.is_some() {
                return Err(("ca_file", "is set but `tls` is false".into()));
            }
            None
        };
        Ok(Smpp {
            url: format!("{}://{address}", if c.tls { "smpps" } else { "smpp" }),
            tls,
            system_id: c.system_id.clone(),
            password,
            system_type: c.system_type.clone(),
            bind: c.bind,
            source_addr,
            source_ton: c.source_addr_ton.unwrap_or(default_ton),
            source_npi: c.source_addr_npi.unwrap_or(default_npi),
            registered_delivery: u8::from(c.registered_delivery),
            enquire_link_interval: c.enquire_link_interval,
            response_timeout: c.response_timeout,
            connect_timeout: c.connect_timeout,
            backoff_min: c.reconnect_backoff,
            backoff_max: c.reconnect_backoff_max,
            window: Semaphore::new(c.window),
            session: Mutex::new(Session::default()),
            next_ref: AtomicU8::new(1),
        })
    }

    /// The bound session, connecting and binding if there is none.
    async fn session(&self) -> Result<Client, DeliveryError> {
        let mut s = self.session.lock().await;
        if let Some(client) = &s.client {
            if client.is_active() {
                return Ok(client.clone());
            }
            tracing::warn!(url = %self.url, "smpp session lost, reconnecting");
            s.client = None;
        }
        if let Some(at) = s.retry_at {
            let now = Instant::now();
            if now < at {
                let mut e = s
                    .last_error
                    .clone()
                    .unwrap_or_else(|| DeliveryError::retryable("smpp: connect failed", None));
                e.reason = format!("{} (next connect attempt in {:?})", e.reason, at - now);
                if let ErrorClass::Retryable { retry_after } = &mut e.class {
                    *retry_after = Some(at - now);
                }
                return Err(e);
            }
        }
        match self.connect().await {
            Ok(client) => {
                tracing::info!(url = %self.url, system_id = %self.system_id, "smpp session bound");
                *s = Session {
                    client: Some(client.clone()),
                    failures: 0,
                    retry_at: None,
                    last_error: None,
                };
                Ok(client)
            }
            Err(mut e) => {
                s.failures = s.failures.saturating_add(1);
                let wait = backoff(self.backoff_min, self.backoff_max, s.failures);
                s.retry_at = Some(Instant::now() + wait);
                if let ErrorClass::Retryable { retry_after } = &mut e.class {
                    *retry_after = Some(wait);
                }
                tracing::warn!(url = %self.url, failures = s.failures, wait = ?wait, reason = %e.reason, "smpp connect or bind failed");
                s.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Client, DeliveryError> {
        let bad = |field: &'static str| {
            move |e: rusmpp::types::COctetStringError| {
                DeliveryError::permanent(format!("smpp: `{field}` is not usable: {e}"))
            }
        };
        let system_id =
            COctetString::<1, 16>::from_str(&self.system_id).map_err(bad("system_id"))?;
        let password =
            COctetString::<1, 9>::from_str(self.password.expose()).map_err(bad("password"))?;
        let system_type =
            COctetString::<1, 13>::from_str(&self.system_type).map_err(bad("system_type"))?;
        let mut builder = ConnectionBuilder::new();
        if let Some(tls) = &self.tls {
            builder = builder.rustls_config(tls.clone());
        }
        let connect = builder
            .enquire_link_interval(self.enquire_link_interval)
            .enquire_link_response_timeout(self.response_timeout)
            .response_timeout(self.response_timeout)
            // rusmppc speaks SMPP 5.0 by default; the PDUs we use are the same in 3.4.
            .disable_interface_version_check()
            .connect(&self.url);
        let (client, events) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                DeliveryError::retryable(
                    format!("smpp: connecting to {} timed out", self.url),
                    None,
                )
            })?
            .map_err(|e| {
                DeliveryError::retryable(format!("smpp: cannot connect to {}: {e}", self.url), None)
            })?;
        let bound = match self.bind {
            BindMode::Transmitter => client
                .bind_transmitter(
                    BindTransmitter::builder()
                        .system_id(system_id)
                        .password(password)
                        .system_type(system_type)
                        .interface_version(InterfaceVersion::Smpp3_4)
                        .build(),
                )
                .await
                .map(|_| ()),
            BindMode::Transceiver => client
                .bind_transceiver(
                    BindTransceiver::builder()
                        .system_id(system_id)
                        .password(password)
                        .system_type(system_type)
                        .interface_version(InterfaceVersion::Smpp3_4)
                        .build(),
                )
                .await
                .map(|_| ()),
        };
        if let Err(e) = bound {
            let _ = client.close().await;
            return Err(bind_failed(&e));
        }
        tokio::spawn(drain_events(client.clone(), events, self.url.clone()));
        Ok(client)
    }
}

impl Drop for Smpp {
    /// Unbinds and closes the session when the target goes away (config reload,
    /// shutdown), so the SMSC does not keep a dead bind counted against the account.
    fn drop(&mut self) {
        let client = self.session.get_mut().client.take();
        if let (Some(client), Ok(runtime)) = (client, tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), client.unbind()).await;
                let _ = client.close().await;
            });
        }
    }
}

/// Answers what the SMSC sends us (delivery receipts on a transceiver session, its
/// `unbind`) and logs background errors, until the connection closes.
async fn drain_events(
    client: Client,
    mut events: impl futures::Stream<Item = Event> + Unpin,
    url: String,
) {
    while let Some(event) = events.next().await {
        match event {
            Event::Incoming(command) => match command.id() {
                CommandId::DeliverSm => {
                    tracing::debug!(url = %url, "smpp deliver_sm (delivery receipt)");
                    let _ = client
                        .deliver_sm_resp(command.sequence_number(), DeliverSmResp::default())
                        .await;
                }
                CommandId::Unbind => {
                    tracing::info!(url = %url, "smpp SMSC unbound the session");
                    let _ = client.unbind_resp(command.sequence_number()).await;
                    let _ = client.close().await;
                }
                other => tracing::debug!(url = %url, command = ?other, "smpp command ignored"),
            },
            Event::Error(e) => tracing::warn!(url = %url, error = %e, "smpp session error"),
        }
    }
    tracing::debug!(url = %url, "smpp connection closed");
}

#[async_trait::async_trait]
impl Provider for Smpp {
    async fn submit(&self, sms: &Sms<'_>) -> Result<Receipt, DeliveryError> {
        let (enc, parts) = encoding::split(sms.text);
        let total = u8::try_from(parts.len()).map_err(|_| {
            DeliveryError::permanent(format!(
                "smpp: {} parts is more than a concatenated SMS can have",
                parts.len()
            ))
        })?;
        let destination = COctetString::from_str(sms.to.trim_start_matches('+'))
            .map_err(|e| DeliveryError::permanent(format!("smpp: bad destination: {e}")))?;
        let source = COctetString::from_str(&self.source_addr)
            .map_err(|e| DeliveryError::permanent(format!("smpp: bad source_addr: {e}")))?;
        let reference = self.next_ref.fetch_add(1, Ordering::Relaxed);
        let client = self.session().await?;
        let mut ids = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let mut payload = Vec::with_capacity(160);
            if total > 1 {
                // UDH length, IEI 0x00 (8-bit reference), IE length, ref, total, seq.
                payload.extend([0x05, 0x00, 0x03, reference, total, i as u8 + 1]);
            }
            payload
                .extend(encoding::encode(part, enc).unwrap_or_else(|| encoding::encode_ucs2(part)));
            let short_message = OctetString::from_vec(payload).map_err(|e| {
                DeliveryError::permanent(format!("smpp: part {} too long: {e}", i + 1))
            })?;
            let pdu = SubmitSm::builder()
                .source_addr_ton(Ton::from(self.source_ton))
                .source_addr_npi(Npi::from(self.source_npi))
                .source_addr(source.clone())
                .dest_addr_ton(Ton::International)
                .dest_addr_npi(Npi::Isdn)
                .destination_addr(destination.clone())
                .esm_class(EsmClass::from(if total > 1 { ESM_CLASS_UDHI } else { 0 }))
                .registered_delivery(RegisteredDelivery::from(self.registered_delivery))
                .data_coding(DataCoding::from(match enc {
                    Encoding::Gsm7 => 0u8,
                    Encoding::Ucs2 => 8u8,
                }))
                .short_message(short_message)
                .build();
            // The window bounds PDUs in flight on the session, across all sends.
            let _permit =
                self.window.acquire().await.map_err(|_| {
                    DeliveryError::retryable("smpp: channel is shutting down", None)
                })?;
            match client.submit_sm(pdu).await {
                Ok(resp) => ids.push(resp.message_id().to_string()),
                Err(e) => {
                    if status_of(&e) == Some(ESME_RINVBNDSTS) {
                        // The SMSC no longer counts this session as bound: close it,
                        // so that the next send (which finds it inactive) binds anew
                        // instead of submitting into it again.
                        let _ = client.close().await;
                    }
                    let mut err = classify(&e, "submit_sm");
                    if i > 0 {
                        err.reason =
                            format!("{} (after {i} of {total} parts were accepted)", err.reason);
                    }
                    return Err(err);
                }
            }
        }
        Ok(Receipt {
            provider_id: Some(ids.join(",")),
        })
    }

    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        let client = self.session().await?;
        client
            .enquire_link()
            .await
            .map_err(|e| classify(&e, "enquire_link"))
    }
}

fn status_of(e: &rusmppc::error::Error) -> Option<u32> {
    match e {
        rusmppc::error::Error::UnexpectedResponse { response } => {
            Some(u32::from(response.status()))
        }
        _ => None,
    }
}

/// A failed bind, for every send that needed the session. Always retryable: the
/// session is down, not the message, and while the back-off runs this same error is
/// returned for every send, so a permanent class here would dead-letter the whole
/// queue. That is what an SMSC restart used to do: it answers `ESME_RBINDFAIL`
/// (0x0D) until it is ready. A refused password or system id (0x0E, 0x0F) is also
/// retried, for the same reason: no message is at fault, and the daemon's
/// `max_elapsed` bounds the wait; the log line says an operator must act.
fn bind_failed(e: &rusmppc::error::Error) -> DeliveryError {
    let mut err = classify(e, "bind");
    err.class = ErrorClass::Retryable { retry_after: None };
    if let Some(code @ 0x0E..=0x0F) = status_of(e) {
        err.reason = format!(
            "{} (the SMSC refused the credentials: check `system_id` and `password`; messages wait and are retried meanwhile)",
            err.reason
        );
        tracing::error!(code = format!("0x{code:08X}"), reason = %err.reason, "smpp bind refused");
    }
    err
}

/// Whether a `submit_sm_resp` status leaves the message worth another try.
fn status_is_retryable(code: u32) -> bool {
    RETRYABLE_STATUSES.contains(&code)
}

/// Classifies a failed request: the SMSC's `command_status`, or a lost connection.
fn classify(e: &rusmppc::error::Error, what: &str) -> DeliveryError {
    use rusmppc::error::Error as E;
    match e {
        E::UnexpectedResponse { response } => {
            let status = response.status();
            let code = u32::from(status);
            let class = if status_is_retryable(code) {
                ErrorClass::Retryable { retry_after: None }
            } else {
                ErrorClass::Permanent
            };
            DeliveryError {
                class,
                reason: format!("smpp: {what} refused: {status:?} (0x{code:08X})"),
                code: Some(format!("0x{code:08X}")),
            }
        }
        E::Encode(_) => DeliveryError::permanent(format!("smpp: {what} cannot be encoded: {e}")),
        // Connection lost, timed out, garbled: the session is replaced on the next
        // send. A timed-out submit may have been accepted, so a retry can duplicate.
        _ => DeliveryError::retryable(format!("smpp: {what} failed: {e}"), None),
    }
}

/// A rustls client config on the aws-lc-rs provider (the one reqwest uses: two
/// providers in one process make rustls refuse to pick a default), trusting `ca_file`
/// or else the system's roots.
fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, (&'static str, String)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| {
                    (
                        "ca_file",
                        format!("cannot read PEM certificates from `{path}`: {e}"),
                    )
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err((
                    "ca_file",
                    format!("`{path}` holds no usable CA certificate"),
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err((
                    "tls",
                    "no system CA certificates found; set `ca_file`".into(),
                ));
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("tls", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `min`, doubled per failure after the first, capped at `max`.
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    min.saturating_mul(factor).min(max)
}

/// The source address as SMPP wants it, with default TON and NPI: `+` numbers are
/// international/ISDN, alphanumeric sender ids (at most 11) are TON 5, short codes and
/// other digit strings are unknown/ISDN.
fn source_address(s: &str) -> Option<(String, u8, u8)> {
    let s = s.trim();
    if let Some(digits) = s.strip_prefix('+') {
        return (crate::is_e164(s)).then(|| (digits.to_string(), 1, 1));
    }
    if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some((s.to_string(), 0, 1));
    }
    if !s.is_empty() && s.len() <= 11 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ') {
        return Some((s.to_string(), 5, 0));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_exponentially() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let got: Vec<u64> = (1..=8).map(|f| backoff(min, max, f).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff(min, max, u32::MAX), max);
    }

    /// The `submit_sm_resp` statuses, by class. Names and codes from SMPP 3.4 §5.1.3.
    #[test]
    fn submit_statuses_are_classified() {
        let check = |code: u32, retryable: bool| {
            assert_eq!(status_is_retryable(code), retryable, "0x{code:08X}");
        };
        // The session or the SMSC, not the message: worth another try.
        check(0x04, true); // ESME_RINVBNDSTS: incorrect bind status
        check(0x08, true); // ESME_RSYSERR: system error
        check(0x14, true); // ESME_RMSGQFUL: message queue full
        check(0x45, true); // ESME_RSUBMITFAIL: submit_sm failed
        check(0x58, true); // ESME_RTHROTTLED: throttling error
        check(0x64, true); // ESME_RX_T_APPN: temporary application error
        // The message itself: the same PDU would be refused again.
        check(0x01, false); // ESME_RINVMSGLEN: message length invalid
        check(0x0A, false); // ESME_RINVSRCADR: invalid source address
        check(0x0B, false); // ESME_RINVDSTADR: invalid destination address
        check(0x43, false); // ESME_RINVESMCLASS: invalid esm_class
        check(0x48, false); // ESME_RINVSRCTON: invalid source TON
        check(0x61, false); // ESME_RINVSCHED: invalid scheduled delivery time
        check(0x65, false); // ESME_RX_P_APPN: permanent application error
        check(0x66, false); // ESME_RX_R_APPN: message rejected by the application
    }

    /// Every refused bind is retryable: it is returned for every send during the
    /// back-off, and the message is not at fault. (0x0D is what a restarting SMSC
    /// answers; it used to dead-letter the whole queue.)
    #[test]
    fn bind_failures_are_retryable() {
        use rusmpp::CommandStatus as S;
        for status in [
            S::EsmeRbindfail,
            S::EsmeRinvpaswd,
            S::EsmeRinvsysid,
            S::EsmeRsyserr,
            S::EsmeRalybnd,
        ] {
            let response =
                rusmpp::Command::new(status, 1, rusmpp::pdus::BindTransmitterResp::default());
            let e = rusmppc::error::Error::UnexpectedResponse {
                response: Box::new(response),
            };
            let err = bind_failed(&e);
            assert!(err.is_retryable(), "{status:?}: {err:?}");
            assert_eq!(
                err.code,
                Some(format!("0x{:08X}", u32::from(status))),
                "{err:?}"
            );
            assert!(err.reason.starts_with("smpp: bind refused: "), "{err:?}");
        }
    }

    #[test]
    fn source_addresses() {
        assert_eq!(
            source_address("+447700900123"),
            Some(("447700900123".into(), 1, 1))
        );
        assert_eq!(source_address("12345"), Some(("12345".into(), 0, 1)));
        assert_eq!(source_address("ACME Tel"), Some(("ACME Tel".into(), 5, 0)));
        assert_eq!(source_address("ACME Telecom Ltd"), None);
        assert_eq!(source_address("+12"), None);
        assert_eq!(source_address(""), None);
    }
}
