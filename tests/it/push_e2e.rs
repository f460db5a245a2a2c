//! End to end from a real Apache Kafka broker to both push providers: ops publish
//! incident lifecycles, the daemon (in process) fans them out to an `fcm` target (an
//! axum stand-in for Google's token endpoint and the FCM HTTP v1 send API) and an
//! `apns` target (the Hypercorn HTTP/2 + TLS stand-in, `tests/peers/apns_peer.py`).
//!
//! What a user cares about: every live device token gets every update, in order, once;
//! a token the provider declares dead is published to the dead-recipient topic (so
//! the app backend can prune it) and dead-lettered, once per update, never retried; a
//! throttled token is retried alone; and the consumer's offsets reach the end.

use crate::push::{KEY_ID, Peer, Scratch, TEAM_ID, TOPIC, device, openssl, start_peer};
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use clarion_core::{Impact, IncidentUpdate, samples};
use clarion_tests::daemon::{InProcess, Wiring};
use clarion_tests::kafka::{committed_and_end, create_topic, publish_updates, read_all};
use clarion_tests::unique_topic;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(120);
const FCM_TARGET: &str = "mobile-android";
const APNS_TARGET: &str = "mobile-ios";
const CLIENT_EMAIL: &str = "clarion@e2e-project.iam.gserviceaccount.com";
const PROJECT: &str = "e2e-project";
const FCM_LIVE: [&str; 2] = ["fcm-token-a", "fcm-token-b"];
const FCM_GONE: &str = "fcm-token-gone";

/// FCM's documented reply for a registration token that is no longer valid.
const UNREGISTERED_BODY: &str = r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;

/// What the FCM stand-in saw.
#[derive(Default)]
struct FcmSeen {
    /// JWT assertions presented at the token endpoint (verified after the run).
    assertions: Vec<String>,
    /// Access tokens issued, in order.
    issued: Vec<String>,
    /// Everything the stand-in found wrong with a request.
    problems: Vec<String>,
    /// The `message` of every send, in arrival order.
    sends: Vec<Value>,
}

type Shared = Arc<Mutex<FcmSeen>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, FcmSeen> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

async fn fcm_token(
    State(s): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> impl IntoResponse {
    let mut seen = lock(&s);
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        seen.problems.push(format!(
            "token request grant_type {:?}",
            form.get("grant_type")
        ));
    }
    let Some(assertion) = form.get("assertion") else {
        seen.problems.push("token request without assertion".into());
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_request"})),
        )
            .into_response();
    };
    seen.assertions.push(assertion.clone());
    let token = format!("ya29.e2e-{}", seen.issued.len() + 1);
    seen.issued.push(token.clone());
    axum::Json(json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"}))
        .into_response()
}

async fn fcm_send(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let mut seen = lock(&s);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let current = seen.issued.last().map(|t| format!("Bearer {t}"));
    if current.as_deref() != Some(auth.as_str()) {
        seen.problems.push(format!(
            "send with authorization `{auth}`, issued {current:?}"
        ));
    }
    if body.len() > 4096 {
        seen.problems.push(format!("send of {} bytes", body.len()));
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            seen.problems.push(format!("send body: {e}"));
            return (StatusCode::BAD_REQUEST, String::new()).into_response();
        }
    };
    let message = v["message"].clone();
    let gone = message["token"] == FCM_GONE;
    seen.sends.push(message);
    let n = seen.sends.len();
    if gone {
        return (
            StatusCode::NOT_FOUND,
            [("content-type", "application/json")],
            UNREGISTERED_BODY,
        )
            .into_response();
    }
    axum::Json(json!({"name": format!("projects/{PROJECT}/messages/{n}")})).into_response()
}

struct FcmMock {
    seen: Shared,
    base: String,
    _scratch: Scratch,
    /// The service account JSON key file (the daemon reads it as a file secret).
    service_account: String,
    /// The public half of the service account's key, for verifying assertions.
    public_key: std::path::PathBuf,
}

/// Starts the FCM stand-in, with a throwaway RSA service-account key made by
/// `openssl`.
async fn start_fcm() -> FcmMock {
    let scratch = Scratch::new("clarion-fcm-e2e");
    let dir = scratch.0.clone();
    openssl(
        &dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "sa.key",
        ],
    );
    openssl(
        &dir,
        &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    );
    let private_key = std::fs::read_to_string(dir.join("sa.key")).expect("read sa.key");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let seen: Shared = Arc::default();
    let app = axum::Router::new()
        .route("/token", post(fcm_token))
        .route(
            &format!("/v1/projects/{PROJECT}/messages:send"),
            post(fcm_send),
        )
        .with_state(Arc::clone(&seen));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let service_account = dir.join("service-account.json");
    let key = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "e2e-key-1",
        "private_key": private_key,
        "client_email": CLIENT_EMAIL,
        "client_id": "1",
        "token_uri": format!("{base}/token"),
    });
    std::fs::write(&service_account, key.to_string()).expect("write service account");
    FcmMock {
        seen,
        base,
        _scratch: scratch,
        service_account: service_account.display().to_string(),
        public_key: dir.join("sa.pub"),
    }
}

/// Decodes unpadded base64url (JWT segments).
fn base64url(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).ok()?);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Checks one RS256 assertion the way Google's token endpoint would: the signature
/// with the service account's public key (by `openssl dgst`), then the claims.
fn verify_assertion(fcm: &FcmMock, jwt: &str) -> Result<(), String> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!("not a JWT: {} segments", parts.len()));
    };
    let decode = |segment: &str, what: &str| {
        base64url(segment).ok_or_else(|| format!("{what} is not base64url"))
    };
    let header: Value =
        serde_json::from_slice(&decode(header, "header")?).map_err(|e| format!("header: {e}"))?;
    let claims: Value =
        serde_json::from_slice(&decode(claims, "claims")?).map_err(|e| format!("claims: {e}"))?;
    let dir = fcm.public_key.parent().ok_or("no scratch dir")?;
    let signed_part = jwt.rsplit_once('.').map(|(s, _)| s).unwrap_or_default();
    std::fs::write(dir.join("jwt.data"), signed_part).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("jwt.sig"), decode(signature, "signature")?)
        .map_err(|e| e.to_string())?;
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(["dgst", "-sha256", "-verify"])
        .arg(&fcm.public_key)
        .args(["-signature", "jwt.sig", "jwt.data"])
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "signature does not verify: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let expected = [
        (&header["alg"], json!("RS256")),
        (&header["kid"], json!("e2e-key-1")),
        (&claims["iss"], json!(CLIENT_EMAIL)),
        (&claims["aud"], json!(format!("{}/token", fcm.base))),
        (
            &claims["scope"],
            json!("https://www.googleapis.com/auth/firebase.messaging"),
        ),
    ];
    for (got, want) in expected {
        if *got != want {
            return Err(format!("{got} where {want} was expected"));
        }
    }
    Ok(())
}

fn targets(fcm: &FcmMock, apns: &Peer, apns_tokens: &[String]) -> String {
    let list = |tokens: &[&str]| {
        tokens
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let fcm_tokens: Vec<&str> = FCM_LIVE.iter().copied().chain([FCM_GONE]).collect();
    let apns_tokens: Vec<&str> = apns_tokens.iter().map(String::as_str).collect();
    let file = |p: &Path| p.display().to_string();
    format!(
        r#"
[targets.{FCM_TARGET}]
type = "fcm"
audiences = ["customers"]
service_account = {{ file = "{sa}" }}
base_url = "{fcm_base}"
device_tokens = {{ customers = [{fcm_tokens}] }}

[targets.{APNS_TARGET}]
type = "apns"
audiences = ["customers"]
signing_key = {{ file = "{p8}" }}
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
topic = "{TOPIC}"
environment = "sandbox"
base_url = "https://127.0.0.1:{apns_port}"
ca_file = "{ca}"
device_tokens = {{ customers = [{apns_tokens}] }}
"#,
        sa = fcm.service_account,
        fcm_base = fcm.base,
        fcm_tokens = list(&fcm_tokens),
        p8 = file(&apns.dir.join("apns.p8")),
        apns_port = apns.port,
        ca = file(&apns.dir.join("ca.pem")),
        apns_tokens = list(&apns_tokens),
    )
}

/// The number of records in a one-partition topic.
fn records_in(brokers: &str, topic: &str) -> i64 {
    committed_and_end(brokers, &unique_topic("count"), topic, 1)[0].1
}

/// Per recipient, per incident: the sequences of the requests it got, in arrival order.
type Arrivals = BTreeMap<String, BTreeMap<String, Vec<u64>>>;

fn arrivals<'a>(requests: impl Iterator<Item = (&'a str, &'a Value)>) -> Arrivals {
    let mut out: Arrivals = BTreeMap::new();
    for (recipient, data) in requests {
        let incident = data["incident_id"].as_str().unwrap_or("?").to_string();
        // FCM `data` values are strings; APNs custom keys keep their JSON types.
        let sequence = data["sequence"]
            .as_u64()
            .or_else(|| data["sequence"].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0);
        out.entry(recipient.to_string())
            .or_default()
            .entry(incident)
            .or_default()
            .push(sequence);
    }
    out
}

/// Each recipient got every update of every incident, in sequence order, and exactly
/// once unless it is in `retried` (then at least once, never out of order).
fn assert_every_update_in_order(
    name: &str,
    got: &Arrivals,
    recipients: &[&str],
    incidents: &[String],
    retried: &[&str],
) {
    let all: Vec<u64> = (1..=4).collect();
    for r in recipients {
        let per_incident = got
            .get(*r)
            .unwrap_or_else(|| panic!("{name}: {r} got nothing"));
        let seen: BTreeSet<&String> = per_incident.keys().collect();
        assert_eq!(
            seen,
            incidents.iter().collect(),
            "{name}: {r} got the wrong incidents"
        );
        for (incident, seqs) in per_incident {
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            assert_eq!(
                seqs, &sorted,
                "{name}: {r} got updates of {incident} out of order"
            );
            if retried.contains(r) {
                sorted.dedup();
                assert_eq!(sorted, all, "{name}: {r} missed updates of {incident}");
            } else {
                assert_eq!(
                    seqs, &all,
                    "{name}: {r} must get each update of {incident} exactly once"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_fcm_and_apns_with_dead_tokens_reported() {
    const TEST: &str = "push_e2e::kafka_to_fcm_and_apns_with_dead_tokens_reported";
    let Some(brokers) = clarion_tests::kafka(TEST) else {
        return;
    };
    let Some(python) = clarion_tests::python(TEST) else {
        return;
    };
    let fcm = start_fcm().await;
    let apns = start_peer(python).await;
    // The stand-in answers 410 Unregistered for `d`…, and 429 once for `b`….
    let (apns_gone, apns_busy) = (device('d'), device('b'));
    let apns_live = [device('a'), device('c')];
    let apns_tokens = [
        apns_live[0].clone(),
        apns_gone.clone(),
        apns_live[1].clone(),
        apns_busy.clone(),
    ];

    let partitions = 2;
    let w = Wiring::new(&brokers, "push-e2e", partitions).await;
    let dead_topic = unique_topic("push-e2e-dead-tokens");
    create_topic(&brokers, &dead_topic, 1).await;
    let base = w.config(&targets(&fcm, &apns, &apns_tokens));
    let dlq_line = format!("dead_letter_topic = \"{}\"\n", w.dlq);
    assert!(base.contains(&dlq_line), "Wiring::config changed: {base}");
    let config = base.replacen(
        &dlq_line,
        &format!("{dlq_line}dead_recipient_topic = \"{dead_topic}\"\n"),
        1,
    );
    let daemon = InProcess::start(&config);

    let incidents: Vec<String> = vec!["PUSH-1".into(), "PUSH-2".into()];
    let updates: Vec<IncidentUpdate> = incidents
        .iter()
        .flat_map(|i| {
            samples::lifecycle(
                i,
                "Mobile data outage",
                &["customers"],
                jiff::Timestamp::now(),
            )
        })
        .collect();
    publish_updates(&brokers, &w.topic, &updates).await;
    let n = updates.len();
    let by_update: BTreeMap<&str, &IncidentUpdate> =
        updates.iter().map(|u| (u.update_id.as_str(), u)).collect();

    // An event is resolved (its offset committed) only once every delivery of it has
    // finished and every dead token has been written: after this, nothing is in flight.
    let offsets = w.wait_committed(partitions).await;
    let dead = read_all(&brokers, &dead_topic, 2 * n, WAIT).await;
    let letters = read_all(&brokers, &w.dlq, 2 * n, WAIT).await;
    let summary = daemon.stop().await;
    eprintln!("push e2e: daemon summary {summary:?}");
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "offsets must reach the end: {offsets:?}"
    );

    // FCM: credentials, then what each token got.
    let seen = std::mem::take(&mut *lock(&fcm.seen));
    assert_eq!(
        seen.problems,
        Vec::<String>::new(),
        "the FCM stand-in found faults"
    );
    assert_eq!(
        seen.issued.len(),
        1,
        "one access token, cached for every send"
    );
    for a in &seen.assertions {
        verify_assertion(&fcm, a).unwrap_or_else(|e| panic!("FCM assertion: {e}"));
    }
    let fcm_got = arrivals(
        seen.sends
            .iter()
            .map(|m| (m["token"].as_str().unwrap_or("-"), &m["data"])),
    );
    let mut fcm_all: Vec<&str> = FCM_LIVE.to_vec();
    fcm_all.push(FCM_GONE);
    assert_every_update_in_order("FCM", &fcm_got, &fcm_all, &incidents, &[]);
    assert_eq!(
        seen.sends.len(),
        3 * n,
        "FCM: every token once per update, no retries"
    );
    for m in &seen.sends {
        let update_id = m["data"]["update_id"].as_str().unwrap_or("-");
        let u = by_update
            .get(update_id)
            .unwrap_or_else(|| panic!("FCM: send for an unknown update: {m}"));
        let status = serde_json::to_value(u.status).expect("status");
        assert_eq!(m["data"]["incident_id"], u.incident_id.as_str(), "{m}");
        assert_eq!(m["data"]["status"], status, "{m}");
        assert_eq!(m["data"]["sequence"], u.sequence.to_string(), "{m}");
        assert_eq!(m["android"]["collapse_key"], u.incident_id.as_str(), "{m}");
        let priority = if u.impact >= Impact::Major {
            "HIGH"
        } else {
            "NORMAL"
        };
        assert_eq!(m["android"]["priority"], priority, "{m}");
        assert_eq!(
            m["android"]["notification"]["tag"],
            u.incident_id.as_str(),
            "{m}"
        );
        assert_eq!(
            m["apns"]["headers"]["apns-collapse-id"],
            u.incident_id.as_str(),
            "{m}"
        );
        assert_eq!(m["notification"]["body"], u.message.as_str(), "{m}");
        let title = m["notification"]["title"].as_str().unwrap_or_default();
        assert!(title.ends_with(": Mobile data outage"), "{m}");
    }

    // APNs: the stand-in checked every header and the provider token.
    let stats = apns.stats();
    assert_eq!(
        stats["problems"],
        json!([]),
        "the APNs stand-in found faults"
    );
    let requests = stats["first_requests"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // 4 tokens × n updates, plus the one retry of the throttled token; the stand-in
    // keeps the first 50 requests, which is all of them.
    assert_eq!(stats["requests"], 4 * n + 1, "APNs requests");
    assert_eq!(
        requests.len(),
        4 * n + 1,
        "APNs requests kept by the stand-in"
    );
    assert_eq!(
        stats["statuses"],
        json!({"200": 3 * n, "410": n, "429": 1}),
        "APNs answers: every dead token once per update, one throttle"
    );
    assert_eq!(stats["connections"], 1, "APNs: one HTTP/2 connection");
    assert_eq!(stats["provider_tokens"], 1, "APNs: one provider token");
    let apns_got = arrivals(
        requests
            .iter()
            .map(|r| (r["device"].as_str().unwrap_or("-"), &r["payload"])),
    );
    let apns_all: Vec<&str> = apns_tokens.iter().map(String::as_str).collect();
    assert_every_update_in_order(
        "APNs",
        &apns_got,
        &apns_all,
        &incidents,
        &[apns_busy.as_str()],
    );
    for r in &requests {
        let payload = &r["payload"];
        let update_id = payload["update_id"].as_str().unwrap_or("-");
        let u = by_update
            .get(update_id)
            .unwrap_or_else(|| panic!("APNs: push for an unknown update: {r}"));
        let status = serde_json::to_value(u.status).expect("status");
        assert_eq!(payload["incident_id"], u.incident_id.as_str(), "{r}");
        assert_eq!(payload["status"], status, "{r}");
        assert_eq!(r["apns-collapse-id"], u.incident_id.as_str(), "{r}");
        let priority = if u.impact >= Impact::Major { "10" } else { "5" };
        assert_eq!(r["apns-priority"], priority, "{r}");
    }
    // The throttled token was retried alone, with the same apns-id (the idempotency
    // key): every other token got that update once.
    let busy: Vec<&Value> = requests
        .iter()
        .filter(|r| r["device"] == apns_busy.as_str())
        .collect();
    let mut by_id: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for r in &busy {
        by_id
            .entry(r["payload"]["update_id"].as_str().unwrap_or("-"))
            .or_default()
            .push(r);
    }
    let twice: Vec<&Vec<&Value>> = by_id.values().filter(|v| v.len() > 1).collect();
    assert_eq!(twice.len(), 1, "one update retried for the throttled token");
    assert_eq!(
        twice[0][0]["apns-id"], twice[0][1]["apns-id"],
        "a retry carries the same apns-id"
    );

    // Dead tokens: one record per token per update, keyed by the token.
    assert_eq!(
        records_in(&brokers, &dead_topic),
        2 * i64::try_from(n).expect("n"),
        "dead-recipient topic: one record per dead token per update"
    );
    let mut dead_updates: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for d in &dead {
        let v: Value = serde_json::from_slice(&d.payload).expect("dead-recipient JSON");
        let recipient = v["recipient"].as_str().unwrap_or("-");
        assert_eq!(d.key.as_deref(), Some(recipient), "{v}");
        let reason = v["reason"].as_str().unwrap_or_default();
        if recipient == apns_gone {
            assert_eq!(v["channel"], "apns", "{v}");
            assert_eq!(v["target"], APNS_TARGET, "{v}");
            assert_eq!(v["code"], "Unregistered", "{v}");
            assert!(reason.contains("Unregistered"), "{v}");
        } else {
            assert_eq!(recipient, FCM_GONE, "only dead tokens are reported: {v}");
            assert_eq!(v["channel"], "fcm", "{v}");
            assert_eq!(v["target"], FCM_TARGET, "{v}");
            assert_eq!(v["code"], "UNREGISTERED", "{v}");
            assert!(reason.contains("no longer valid"), "{v}");
        }
        let update_id = v["update_id"].as_str().unwrap_or("-");
        let u = by_update
            .get(update_id)
            .unwrap_or_else(|| panic!("dead token for an unknown update: {v}"));
        assert_eq!(v["incident_id"], u.incident_id.as_str(), "{v}");
        assert!(
            v["time"]
                .as_str()
                .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
            "{v}"
        );
        dead_updates
            .entry(if recipient == FCM_GONE { "fcm" } else { "apns" })
            .or_default()
            .insert(update_id.to_string());
    }
    let every_update: BTreeSet<String> = updates.iter().map(|u| u.update_id.clone()).collect();
    assert_eq!(dead_updates.get("apns"), Some(&every_update));
    assert_eq!(dead_updates.get("fcm"), Some(&every_update));

    // The dead-letter topic: the same dead tokens, with the original update, and
    // nothing else (the throttled token recovered).
    assert_eq!(
        records_in(&brokers, &w.dlq),
        2 * i64::try_from(n).expect("n"),
        "dead-letter topic: only the dead tokens"
    );
    let mut lettered: BTreeSet<(String, String)> = BTreeSet::new();
    for d in &letters {
        let h = &d.headers;
        // attempts 1: a dead token is never retried.
        d.assert_dlq_headers(&[
            ("kind", "delivery_failed"),
            ("error.class", "recipient_gone"),
            ("attempts", "1"),
            ("source.topic", &w.topic),
        ]);
        let (target, code) = match h["clarion.dlq.channel"].as_str() {
            "apns" => {
                assert_eq!(h["clarion.dlq.recipient"], apns_gone, "{h:?}");
                (APNS_TARGET, "Unregistered")
            }
            "fcm" => {
                assert_eq!(h["clarion.dlq.recipient"], FCM_GONE, "{h:?}");
                (FCM_TARGET, "UNREGISTERED")
            }
            other => panic!("dead letter from channel {other}: {h:?}"),
        };
        d.assert_dlq_headers(&[("target", target), ("error.code", code)]);
        let original = d.original_update();
        lettered.insert((target.to_string(), original.update_id));
    }
    assert_eq!(
        lettered.len(),
        2 * n,
        "one dead letter per target per update"
    );
}
