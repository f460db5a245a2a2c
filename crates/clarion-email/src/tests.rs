//! Unit tests: config validation, recipient selection, composition and rendering.
//! The SMTP side is tested against real servers in `tests/it/email.rs`.

use super::*;
use clarion_core::{IncidentUpdate, Secret, SecretRef};
use std::sync::Arc;
use std::time::Duration;

struct Secrets;

impl SecretResolver for Secrets {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, String> {
        match reference {
            SecretRef::Value(s) => Ok(s.clone()),
            SecretRef::Env(v) if v == "SMTP_PASSWORD" => Ok(Secret::new("hunter2")),
            other => Err(format!("{other} is not set")),
        }
    }
}

const EXAMPLE: &str = r#"
host = "smtp.acme.example"
tls = "starttls"
username = "clarion"
password = { env = "SMTP_PASSWORD" }
from = "Acme Status <status@acme.example>"
reply_to = "support@acme.example"
list_unsubscribe = "<mailto:unsubscribe@acme.example>, <https://acme.example/unsubscribe>"
send_mode = "bcc"
bcc_batch_size = 2
pool_max_size = 3
connect_timeout = "10s"
command_timeout = "30s"

[recipients]
customers = ["a@customers.example", "list:vip", "B@Customers.example"]
regulators = ["Regulator <reg@gov.example>", "a@customers.example"]

[lists]
vip = ["vip1@customers.example", "b@customers.example", "vip2@customers.example"]
"#;

fn config(toml_text: &str) -> EmailConfig {
    toml::from_str(toml_text).expect("config parses")
}

fn channel(toml_text: &str) -> EmailChannel {
    build("status-mail", &config(toml_text), &Secrets).expect("config is valid")
}

fn update(audiences: &[&str]) -> Arc<IncidentUpdate> {
    let mut u = clarion_core::samples::lifecycle(
        "INC-42",
        "Mobile data outage — Nord & Süd <now>",
        audiences,
        jiff::Timestamp::UNIX_EPOCH,
    )
    .remove(0);
    if audiences.contains(&"regulators") {
        u.audience_messages
            .insert("regulators".into(), "Formal notice: <b>outage</b>.".into());
    }
    Arc::new(u)
}

fn delivery(audiences: &[&str], recipients: Option<Vec<&str>>) -> Delivery {
    let mut d = Delivery::new(
        update(audiences),
        Arc::from("status-mail"),
        audiences
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .into(),
    );
    d.recipients = recipients.map(|r| r.into_iter().map(String::from).collect());
    d
}

#[test]
fn example_config_is_valid() {
    let ch = channel(EXAMPLE);
    assert_eq!(ch.settings.connect.port, 587);
    assert_eq!(ch.settings.bcc_batch_size, 2);
    let customers: Vec<String> = ch.settings.recipients["customers"]
        .iter()
        .map(|r| r.id().to_string())
        .collect();
    // The list is expanded in place and `B@Customers.example` is a duplicate of the
    // list's `b@customers.example`.
    assert_eq!(
        customers,
        [
            "a@customers.example",
            "vip1@customers.example",
            "b@customers.example",
            "vip2@customers.example"
        ]
    );
    // Credentials never show in Debug output.
    let dump = format!("{ch:?}");
    assert!(!dump.contains("hunter2"), "{dump}");
}

#[test]
fn rejects_bad_config_with_the_key() {
    let e = |field: &str, reason: &str| format!("email target `status-mail`: `{field}`: {reason}");
    let bad_rcpt = EXAMPLE.replace(
        "\"a@customers.example\", \"list:vip\"",
        "\"not an address\", \"list:vip\"",
    );
    let got = build("status-mail", &config(&bad_rcpt), &Secrets)
        .map(drop)
        .map_err(|e| e.to_string());
    assert!(
        matches!(&got, Err(m) if m.starts_with("email target `status-mail`: `recipients.customers[0]`: `not an address` is not an email address")),
        "{got:?}"
    );
    let unknown_list = EXAMPLE.replace("list:vip", "list:vipp");
    assert_eq!(
        build("status-mail", &config(&unknown_list), &Secrets)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e(
            "recipients.customers[1]",
            "`list:vipp` names a list that `lists` does not define"
        ))
    );
    let plaintext = EXAMPLE.replace("tls = \"starttls\"", "tls = \"none\"");
    assert_eq!(
        build("status-mail", &config(&plaintext), &Secrets)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e(
            "tls",
            "is `none` but credentials are set: the password would cross the network in clear text; use `starttls` or `implicit`"
        ))
    );
    // `allow_plaintext_auth` means something only for opportunistic STARTTLS with
    // credentials; anywhere else it is a mistake worth hearing about.
    let needless = EXAMPLE.replace(
        "tls = \"starttls\"",
        "tls = \"starttls\"\nallow_plaintext_auth = true",
    );
    assert_eq!(
        build("status-mail", &config(&needless), &Secrets)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e(
            "allow_plaintext_auth",
            "only applies to `tls = \"starttls_opportunistic\"`"
        ))
    );
    let opportunistic = EXAMPLE.replace(
        "tls = \"starttls\"",
        "tls = \"starttls_opportunistic\"\nallow_plaintext_auth = true",
    );
    assert!(build("status-mail", &config(&opportunistic), &Secrets).is_ok());
    let anonymous = opportunistic
        .replace("username = \"clarion\"", "")
        .replace("password = { env = \"SMTP_PASSWORD\" }", "");
    assert_eq!(
        build("status-mail", &config(&anonymous), &Secrets)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e(
            "allow_plaintext_auth",
            "is set but there are no credentials (`username`, `password`)"
        ))
    );
    let no_password = EXAMPLE.replace("password = { env = \"SMTP_PASSWORD\" }", "");
    assert_eq!(
        build("status-mail", &config(&no_password), &Secrets)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e("password", "is required with `username`"))
    );
    let missing_env = EXAMPLE.replace("SMTP_PASSWORD", "NOPE");
    assert_eq!(
        build("status-mail", &config(&missing_env), &Secrets)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e("password", "cannot read env:NOPE: env:NOPE is not set"))
    );
    let bad_unsub = EXAMPLE.replace("<mailto:unsubscribe@acme.example>, ", "mailto:x@y, ");
    assert_eq!(
        build("status-mail", &config(&bad_unsub), &Secrets)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e(
            "list_unsubscribe",
            "`mailto:x@y, <https://acme.example/unsubscribe>` must be one or more `<URI>` separated by commas, e.g. `<mailto:unsubscribe@example.com>`"
        ))
    );
    let big_batch = EXAMPLE.replace("bcc_batch_size = 2", "bcc_batch_size = 1000");
    assert_eq!(
        build("status-mail", &config(&big_batch), &Secrets)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e("bcc_batch_size", "must be between 1 and 100"))
    );
    let no_ca = EXAMPLE.replace(
        "tls = \"starttls\"",
        "tls = \"starttls\"\ntls_ca_file = \"/nonexistent/ca.pem\"",
    );
    let got = build("status-mail", &config(&no_ca), &Secrets)
        .map(drop)
        .map_err(|e| e.to_string());
    assert!(
        matches!(&got, Err(m) if m.starts_with("email target `status-mail`: `tls_ca_file`: cannot read /nonexistent/ca.pem")),
        "{got:?}"
    );
    // The daemon's own keys are stripped before this struct sees the table; any
    // other unknown key is a typo and must not be ignored.
    let typo = toml::from_str::<EmailConfig>(&format!("replyto = \"x@y.z\"\n{EXAMPLE}")).map(drop);
    assert!(typo.is_err_and(|e| e.message().starts_with("unknown field `replyto`")));
}

#[test]
fn selects_the_union_once_in_audience_order() {
    let ch = channel(EXAMPLE);
    let d = delivery(&["regulators", "customers"], None);
    let (chosen, gone) = ch.select(&d);
    let got: Vec<(String, String)> = chosen
        .iter()
        .map(|(a, r)| (a.to_string(), r.id().to_string()))
        .collect();
    let want = [
        ("regulators", "reg@gov.example"),
        ("regulators", "a@customers.example"),
        ("customers", "vip1@customers.example"),
        ("customers", "b@customers.example"),
        ("customers", "vip2@customers.example"),
    ];
    assert_eq!(got, want.map(|(a, r)| (a.to_string(), r.to_string())));
    assert!(gone.is_empty());
}

#[test]
fn a_retry_is_restricted_to_the_requested_recipients() {
    let ch = channel(EXAMPLE);
    let d = delivery(
        &["customers"],
        Some(vec!["VIP2@customers.example", "gone@customers.example"]),
    );
    let (chosen, gone) = ch.select(&d);
    let got: Vec<String> = chosen.iter().map(|(_, r)| r.id().to_string()).collect();
    assert_eq!(got, ["vip2@customers.example"]);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].recipient.as_deref(), Some("gone@customers.example"));
    assert!(matches!(&gone[0].result, Err(e) if e.class == clarion_core::ErrorClass::Permanent));
}

#[test]
fn bcc_batches_per_audience_and_batch_size() {
    let ch = channel(EXAMPLE);
    let d = delivery(&["regulators", "customers"], None);
    let (chosen, _) = ch.select(&d);
    let contents = EmailChannel::contents(&d, &chosen);
    let jobs = ch.plan(&d, &chosen, &contents);
    let batches: Vec<Vec<usize>> = jobs.iter().map(|j| j.recipients.clone()).collect();
    assert_eq!(batches, [vec![0, 1], vec![2, 3], vec![4]]);
    let first = ch
        .message(&d, &chosen, &contents, &jobs[0])
        .as_ref()
        .clone()
        .expect("renders");
    assert!(
        first.contains("To: undisclosed-recipients:;\r\n"),
        "{first}"
    );
    assert!(
        !first.contains("reg@gov.example"),
        "Bcc recipients must not appear in headers"
    );

    let per = channel(&EXAMPLE.replace("send_mode = \"bcc\"", "send_mode = \"per_recipient\""));
    let jobs = per.plan(&d, &chosen, &contents);
    assert_eq!(jobs.len(), 5);
    let first = per
        .message(&d, &chosen, &contents, &jobs[0])
        .as_ref()
        .clone()
        .expect("renders");
    assert!(
        first.contains("To: Regulator <reg@gov.example>\r\n"),
        "{first}"
    );
}

#[test]
fn composes_text_and_escaped_html() {
    let u = update(&["customers", "regulators"]);
    let c = compose(&u, "regulators");
    assert_eq!(
        c.subject,
        "[Investigating] Mobile data outage — Nord & Süd <now>"
    );
    assert!(c.text.starts_with("Mobile data outage — Nord & Süd <now>\n\nFormal notice: <b>outage</b>.\n\nStatus: Investigating\nImpact: major\n"), "{}", c.text);
    assert!(
        c.text.ends_with("\nIncident INC-42, update INC-42-u1\n"),
        "{}",
        c.text
    );
    assert!(
        c.html
            .contains("<h1>Mobile data outage — Nord &amp; Süd &lt;now&gt;</h1>"),
        "{}",
        c.html
    );
    assert!(
        c.html
            .contains("<p>Formal notice: &lt;b&gt;outage&lt;/b&gt;.</p>"),
        "{}",
        c.html
    );
    assert!(
        c.html
            .contains("<a href=\"https://status.example.com/incidents/INC-42\">Status page</a>")
    );
    let customers = compose(&u, "customers");
    assert!(customers.text.contains("We are investigating reports"));
}

#[test]
fn renders_headers_and_a_deterministic_message_id() {
    let ch = channel(EXAMPLE);
    let d = delivery(&["customers"], None);
    let (chosen, _) = ch.select(&d);
    let render = || {
        let contents = EmailChannel::contents(&d, &chosen);
        let jobs = ch.plan(&d, &chosen, &contents);
        ch.message(&d, &chosen, &contents, &jobs[0])
            .as_ref()
            .clone()
            .expect("renders")
    };
    let m = render();
    let key = d.key.as_str();
    assert!(
        m.contains(&format!("Message-ID: <{key}@acme.example>\r\n")),
        "{m}"
    );
    // Only the boundary and Date may differ between two renderings.
    assert!(render().contains(&format!("Message-ID: <{key}@acme.example>\r\n")));
    for header in [
        "From: \"Acme Status\" <status@acme.example>\r\n",
        "Reply-To: support@acme.example\r\n",
        "X-Clarion-Incident-Id: INC-42\r\n",
        "X-Clarion-Update-Id: INC-42-u1\r\n",
        "X-Clarion-Status: investigating\r\n",
        "X-Clarion-Audience: customers\r\n",
        "Auto-Submitted: auto-generated\r\n",
        "List-Unsubscribe: <mailto:unsubscribe@acme.example>,\r\n <https://acme.example/unsubscribe>\r\n",
        "Content-Type: multipart/alternative;",
    ] {
        assert!(m.contains(header), "missing {header:?} in\n{m}");
    }
    // The UTF-8 subject is RFC 2047 encoded (an independent parser decodes it in the
    // integration tests); the message is 7-bit clean.
    assert!(
        m.contains("Subject: [Investigating] Mobile data outage =?utf-8?b?4oCU?="),
        "{m}"
    );
    assert!(m.is_ascii());
}

#[test]
fn data_is_dot_stuffed_and_terminated() {
    let check =
        |body: &str, wire: &str| assert_eq!(smtp::DataBody(body).to_string(), wire, "{body:?}");
    check("a\r\nb\r\n", "a\r\nb\r\n.\r\n");
    check(".a\r\n.\r\n..b", "..a\r\n..\r\n...b\r\n.\r\n");
    check("", "\r\n.\r\n");
}

/// What a scripted fake SMTP server does wrong. Unit-level only: the real servers
/// are in the integration tests.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// Accepts the TCP connection and never says a word.
    SilentGreeting,
    /// Never answers MAIL FROM.
    SilentAtMail,
    /// Reads the whole message, then hangs up without the final reply.
    DropAfterData,
    /// Accepts this many messages (across all sessions), then never answers the end
    /// of a message again.
    StallAfter(usize),
    /// Offers STARTTLS, agrees to it, then hangs up in the middle of the handshake
    /// (an SMTP server restarting, a middlebox resetting the connection).
    ResetInTlsHandshake,
}

/// What a fake server saw, and a signal for the moment it stalled.
#[derive(Default)]
struct Seen {
    rcpt: std::sync::Mutex<Vec<String>>,
    accepted: std::sync::atomic::AtomicUsize,
    stalled: tokio::sync::Notify,
}

async fn fake_server(fault: Fault) -> u16 {
    fake_server_seen(fault).await.0
}

async fn fake_server_seen(fault: Fault) -> (u16, Arc<Seen>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let shared = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = Arc::clone(&shared);
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                if fault == Fault::SilentGreeting {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let _ = write.write_all(b"220 fake ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" if fault == Fault::ResetInTlsHandshake => {
                            b"250-fake\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
                        }
                        "STAR" if fault == Fault::ResetInTlsHandshake => {
                            let _ = write.write_all(b"220 2.0.0 Ready to start TLS\r\n").await;
                            // Read the ClientHello's first bytes, then close: the
                            // client sees the connection end mid-handshake.
                            let mut hello = [0u8; 5];
                            let mut raw = lines.into_inner();
                            let _ = tokio::io::AsyncReadExt::read(&mut raw, &mut hello).await;
                            return;
                        }
                        "EHLO" => b"250-fake\r\n250 8BITMIME\r\n",
                        "MAIL" if fault == Fault::SilentAtMail => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            b""
                        }
                        "DATA" => {
                            let _ = write.write_all(b"354 go ahead\r\n").await;
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                            }
                            if fault == Fault::DropAfterData {
                                return;
                            }
                            if let Fault::StallAfter(n) = fault {
                                if seen.accepted.fetch_add(1, Ordering::SeqCst) >= n {
                                    seen.stalled.notify_one();
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                }
                            }
                            b"250 2.0.0 Ok: queued as FAKE1\r\n"
                        }
                        "RCPT" => {
                            if let Ok(mut rcpt) = seen.rcpt.lock() {
                                rcpt.push(line.clone());
                            }
                            b"250 ok\r\n"
                        }
                        "QUIT" => return,
                        _ => b"250 ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    (port, seen)
}

fn fake_channel(port: u16) -> EmailChannel {
    channel(&format!(
        r#"
host = "127.0.0.1"
port = {port}
tls = "none"
from = "status@acme.example"
connect_timeout = "300ms"
command_timeout = "300ms"
[recipients]
customers = ["ann@customers.example"]
"#
    ))
}

#[tokio::test]
async fn a_silent_server_hits_the_connect_timeout() {
    let ch = fake_channel(fake_server(Fault::SilentGreeting).await);
    let err = ch.healthcheck().await.expect_err("no greeting");
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.reason.contains("(connect_timeout)"), "{err:?}");
    assert!(err.reason.contains("status-mail"), "{err:?}");
}

#[tokio::test]
async fn a_stuck_command_hits_the_command_timeout() {
    let ch = fake_channel(fake_server(Fault::SilentAtMail).await);
    ch.healthcheck().await.expect("greeting and EHLO work");
    let outcome = ch.send(&delivery(&["customers"], None)).await;
    let err = outcome.results[0]
        .result
        .as_ref()
        .expect_err("MAIL never answered");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        err.reason
            .contains("did not answer MAIL FROM within 300ms (command_timeout)"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_lost_final_reply_is_retryable_and_says_it_may_have_arrived() {
    let ch = fake_channel(fake_server(Fault::DropAfterData).await);
    let outcome = ch.send(&delivery(&["customers"], None)).await;
    let err = outcome.results[0]
        .result
        .as_ref()
        .expect_err("no final reply");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        err.reason.contains("may have accepted the message"),
        "{err:?}"
    );
}

#[test]
fn a_title_cannot_inject_headers() {
    let ch = channel(EXAMPLE);
    let mut u = (*update(&["customers"])).clone();
    u.title = "Outage\r\nBcc: evil@attacker.example\r\n\r\nbody".into();
    let mut d = delivery(&["customers"], None);
    d.update = Arc::new(u);
    let (chosen, _) = ch.select(&d);
    let contents = EmailChannel::contents(&d, &chosen);
    let jobs = ch.plan(&d, &chosen, &contents);
    let m = ch
        .message(&d, &chosen, &contents, &jobs[0])
        .as_ref()
        .clone()
        .expect("renders");
    let headers = m.split("\r\n\r\n").next().unwrap_or_default();
    assert!(!headers.contains("\r\nBcc:"), "{headers}");
    // Line breaks in a title become spaces in the subject.
    assert_eq!(
        compose(&d.update, "customers").subject,
        "[Investigating] Outage Bcc: evil@attacker.example body"
    );
}

/// A channel on the fake server with three customers, one session at a time (so
/// "the first N transactions" is well defined) and timeouts long enough never to fire.
fn three_recipient_channel(port: u16, mode: &str) -> EmailChannel {
    channel(&format!(
        r#"
host = "127.0.0.1"
port = {port}
tls = "none"
from = "status@acme.example"
send_mode = "{mode}"
bcc_batch_size = 2
pool_max_size = 1
command_timeout = "1h"
[recipients]
customers = ["ann@customers.example", "bob@customers.example", "cy@customers.example"]
"#
    ))
}

#[tokio::test]
async fn a_recipient_that_ended_in_a_timed_out_attempt_is_not_mailed_again() {
    for mode in ["per_recipient", "bcc"] {
        let (port, seen) = fake_server_seen(Fault::StallAfter(usize::MAX)).await;
        let ch = three_recipient_channel(port, mode);
        let mut d = delivery(&["customers"], None);
        // Written in another case: addresses compare without regard to it.
        d.skip = Arc::new(["Bob@Customers.example".to_string()].into());
        let outcome = ch.send(&d).await;
        let got: Vec<&str> = outcome
            .results
            .iter()
            .filter(|r| r.result.is_ok())
            .filter_map(|r| r.recipient.as_deref())
            .collect();
        assert_eq!(
            got,
            ["ann@customers.example", "cy@customers.example"],
            "{mode}"
        );
        // What the server was asked to deliver to: not the skipped recipient.
        assert_eq!(
            *seen.rcpt.lock().expect("lock"),
            [
                "RCPT TO:<ann@customers.example>",
                "RCPT TO:<cy@customers.example>"
            ],
            "{mode}"
        );
    }
}

/// Drops `send` (as the daemon's attempt_timeout does) as soon as the server stalls.
/// The outer timeout only guards against a broken test.
async fn drop_when_stalled(send: impl std::future::Future<Output = Outcome>, seen: &Seen) {
    let raced = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::select! {
            _ = send => panic!("the stalled transaction never ends"),
            _ = seen.stalled.notified() => {}
        }
    })
    .await;
    assert!(raced.is_ok(), "the server never stalled");
}

#[tokio::test]
async fn progress_keeps_the_recipients_mailed_before_the_attempt_was_dropped() {
    let (port, seen) = fake_server_seen(Fault::StallAfter(2)).await;
    let ch = three_recipient_channel(port, "per_recipient");
    let d = delivery(&["customers"], None);
    drop_when_stalled(ch.send(&d), &seen).await;
    let done: Vec<(String, bool)> = d
        .progress
        .take()
        .into_iter()
        .map(|r| (r.recipient.unwrap_or_default(), r.result.is_ok()))
        .collect();
    assert_eq!(
        done,
        [
            ("ann@customers.example".to_string(), true),
            ("bob@customers.example".to_string(), true),
        ]
    );
}

#[tokio::test]
async fn progress_keeps_a_whole_bcc_batch_once_its_transaction_ended() {
    // Batches of two: the first transaction ends, the second stalls.
    let (port, seen) = fake_server_seen(Fault::StallAfter(1)).await;
    let ch = three_recipient_channel(port, "bcc");
    let d = delivery(&["customers"], None);
    drop_when_stalled(ch.send(&d), &seen).await;
    let done: Vec<(String, bool)> = d
        .progress
        .take()
        .into_iter()
        .map(|r| (r.recipient.unwrap_or_default(), r.result.is_ok()))
        .collect();
    assert_eq!(
        done,
        [
            ("ann@customers.example".to_string(), true),
            ("bob@customers.example".to_string(), true),
        ]
    );
}

#[tokio::test]
async fn a_connection_lost_during_the_tls_handshake_is_retryable() {
    let port = fake_server(Fault::ResetInTlsHandshake).await;
    let ch = channel(&format!(
        r#"
host = "127.0.0.1"
port = {port}
tls = "starttls"
from = "status@acme.example"
connect_timeout = "1h"
[recipients]
customers = ["ann@customers.example"]
"#
    ));
    let outcome = ch.send(&delivery(&["customers"], None)).await;
    let err = outcome.results[0]
        .result
        .as_ref()
        .expect_err("the handshake never finished");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        err.reason.contains("email target `status-mail`") && err.reason.contains("STARTTLS"),
        "{err:?}"
    );
}

/// A delivery to `audiences` addressed to `direct` instead of the configured recipients.
fn direct_delivery(audiences: &[&str], direct: &[&str]) -> Delivery {
    delivery(audiences, None).with_direct(direct.iter().map(|a| a.to_string()).collect())
}

/// `(recipient, "ok")` or `(recipient, "class: reason")` per result.
fn results(outcome: &[RecipientResult]) -> Vec<(String, String)> {
    outcome
        .iter()
        .map(|r| {
            let said = match &r.result {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("{}: {}", e.class.as_str(), e.reason),
            };
            (r.recipient.clone().unwrap_or_default(), said)
        })
        .collect()
}

#[test]
fn direct_addresses_replace_the_configured_ones_with_the_first_audience() {
    let ch = channel(EXAMPLE);
    let d = direct_delivery(
        &["regulators", "customers"],
        &[
            "Ann <ann@people.example>",
            "bob@people.example",
            // The same mailbox as Ann's, differently written: mailed once.
            "ANN@people.example",
            "cy@people.example",
        ],
    );
    let (chosen, refused) = ch.select(&d);
    let got: Vec<(&str, &str)> = chosen.iter().map(|(a, r)| (*a, r.id())).collect();
    // Reported by the address as given; none of the configured recipients.
    assert_eq!(
        got,
        [
            ("regulators", "Ann <ann@people.example>"),
            ("regulators", "bob@people.example"),
            ("regulators", "cy@people.example"),
        ]
    );
    assert!(refused.is_empty());
    // Bcc batches of two, the envelope holding the bare addresses.
    let contents = EmailChannel::contents(&d, &chosen);
    let jobs = ch.plan(&d, &chosen, &contents);
    let batches: Vec<Vec<usize>> = jobs.iter().map(|j| j.recipients.clone()).collect();
    assert_eq!(batches, [vec![0, 1], vec![2]]);
    assert_eq!(chosen[0].1.mailbox.email.to_string(), "ann@people.example");
    let m = ch
        .message(&d, &chosen, &contents, &jobs[0])
        .as_ref()
        .clone()
        .expect("renders");
    assert!(m.contains("X-Clarion-Audience: regulators\r\n"), "{m}");
    assert!(
        !m.contains("people.example"),
        "Bcc recipients in headers: {m}"
    );
}

#[test]
fn a_retry_and_a_skip_restrict_direct_addresses() {
    let ch = channel(EXAMPLE);
    let mut d = direct_delivery(
        &["customers"],
        &[
            "ann@people.example",
            "bob@people.example",
            "Cy <cy@people.example>",
            "dee@people.example",
            "not an address",
            "eve@people.example",
        ],
    );
    d.recipients = Some(
        [
            "BOB@people.example",
            // By its bare address, though handed over with a display name.
            "cy@people.example",
            "dee@people.example",
            "not an address",
            // Not in this batch: not this attempt's to answer for.
            "zed@people.example",
            // A configured recipient: direct addresses replace them entirely.
            "a@customers.example",
        ]
        .map(String::from)
        .to_vec(),
    );
    d.skip = Arc::new(["Dee@People.example".to_string()].into());
    let (chosen, refused) = ch.select(&d);
    let got: Vec<(&str, &str)> = chosen.iter().map(|(a, r)| (*a, r.id())).collect();
    assert_eq!(
        got,
        [
            ("customers", "bob@people.example"),
            ("customers", "Cy <cy@people.example>")
        ]
    );
    assert_eq!(
        results(&refused),
        [(
            "not an address".to_string(),
            "permanent: email target `status-mail`: `not an address` is not an email address: Invalid input".to_string()
        )]
    );
    // Recorded as soon as known, like every other result.
    assert_eq!(results(&d.progress.take()), results(&refused));
}

#[tokio::test]
async fn direct_addresses_are_mailed_in_every_send_mode_and_a_malformed_one_fails_alone() {
    for mode in ["per_recipient", "bcc"] {
        let (port, seen) = fake_server_seen(Fault::StallAfter(usize::MAX)).await;
        let ch = three_recipient_channel(port, mode);
        let d = direct_delivery(
            &["customers"],
            &[
                "dee@people.example",
                "not an address",
                "Eve <EVE@people.example>",
                "eve@people.example",
                "fay@people.example",
            ],
        );
        let outcome = ch.send(&d).await;
        let ok = |a: &str| (a.to_string(), "ok".to_string());
        assert_eq!(
            results(&outcome.results),
            [
                (
                    "not an address".to_string(),
                    "permanent: email target `status-mail`: `not an address` is not an email address: Invalid input".to_string()
                ),
                ok("dee@people.example"),
                ok("Eve <EVE@people.example>"),
                ok("fay@people.example"),
            ],
            "{mode}"
        );
        // What the server was asked to deliver to: the direct addresses, once each,
        // and none of the three configured customers.
        assert_eq!(
            *seen.rcpt.lock().expect("lock"),
            [
                "RCPT TO:<dee@people.example>",
                "RCPT TO:<EVE@people.example>",
                "RCPT TO:<fay@people.example>",
            ],
            "{mode}"
        );
        // A batch with nobody left to try is nothing to do, not a failure.
        let mut again = d.clone();
        again.recipients = Some(vec!["zed@people.example".to_string()]);
        assert_eq!(ch.send(&again).await.results, [], "{mode}");
    }
}

#[test]
fn a_directory_config_needs_no_recipients_and_refuses_static_ones() {
    let directory = |toml_text: &str| {
        let mut c = config(toml_text);
        c.directory = true;
        build("status-mail", &c, &Secrets)
            .map(|ch| ch.settings.recipients.len())
            .map_err(|e| e.to_string())
    };
    let none = EXAMPLE
        .replace(
            "[recipients]\ncustomers = [\"a@customers.example\", \"list:vip\", \"B@Customers.example\"]\nregulators = [\"Regulator <reg@gov.example>\", \"a@customers.example\"]\n",
            "recipients = {}\n",
        )
        .replace(
            "[lists]\nvip = [\"vip1@customers.example\", \"b@customers.example\", \"vip2@customers.example\"]\n",
            "",
        );
    assert_eq!(directory(&none), Ok(0));
    // An ordinary target still refuses to reach nobody.
    assert_eq!(
        build("status-mail", &config(&none), &Secrets)
            .map(drop)
            .map_err(|e| e.to_string()),
        Err("email target `status-mail`: `recipients`: no audience has any recipient".into())
    );
    assert_eq!(
        directory(EXAMPLE),
        Err("email target `status-mail`: `recipients`: a people target's channel addresses the directory's members; static recipients belong to an ordinary target".into())
    );
    let lists_only = format!("{none}\n[lists]\nvip = [\"vip1@customers.example\"]\n");
    assert_eq!(
        directory(&lists_only),
        Err("email target `status-mail`: `lists`: a people target's channel addresses the directory's members; static recipient lists belong to an ordinary target".into())
    );
    // Only the daemon says a channel is a directory leg: the file cannot.
    let typo = toml::from_str::<EmailConfig>(&format!("directory = true\n{none}")).map(drop);
    assert!(
        typo.as_ref()
            .is_err_and(|e| e.message().starts_with("unknown field `directory`")),
        "{typo:?}"
    );
}
