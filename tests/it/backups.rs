//! Backups tested before they are needed (docs/backups.md), end to end from a real
//! Apache Kafka broker: a target's SMS provider refuses connections (the carrier's own
//! gateway is part of the outage), and its updates still reach every number through
//! the target's backup provider, the `smpp34` SMSC (`tests/peers/smsc.py`). The ledger
//! and the daemon's log say which provider delivered.

use crate::ledger::{assert_schema_valid, config, ledger, record_topics};
use crate::sms::Smsc;
use crate::sms_e2e::{smpp_messages, update_of};
use clarion_core::{IncidentUpdate, samples};
use clarion_tests::daemon::{InProcess, Wiring};
use clarion_tests::kafka::{committed_and_end, publish_updates};
use std::collections::BTreeMap;

const PARTITIONS: i32 = 2;
const NUMBERS: [&str; 2] = ["+447700900301", "+447700900302"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_fails_over_from_a_gateway_refusing_connections_to_the_backup_smsc() {
    let Some(brokers) = clarion_tests::kafka(module_path!()) else {
        return;
    };
    let Some(py) = clarion_tests::python(module_path!()) else {
        return;
    };
    let smsc = Smsc::start(&py, &[]).await;
    // Nothing listens here: every connection is refused.
    let refused = clarion_tests::free_port();
    let w = Wiring::new(&brokers, "backups-sms", PARTITIONS).await;
    let (ledger_topic, state_topic) = record_topics(&w).await;
    let targets = format!(
        r#"[targets.sms]
type = "sms"
audiences = ["customers"]
provider = "twilio"
provider_name = "twilio"
account_sid = "AC123"
auth_token = {{ value = "tok" }}
from = "+15005550006"
base_url = "http://127.0.0.1:{refused}"
rate_per_second = 1000
recipients = {{ customers = ["{n0}", "{n1}"] }}
failover_after = "1s"
retry = {{ initial_backoff = "100ms", max_backoff = "300ms" }}

[[targets.sms.backups]]
name = "smsc-backup"
provider = "smpp"
address = "127.0.0.1:{port}"
system_id = "clarion"
password = {{ value = "e2eSmpp7" }}
source_addr = "ACME"
response_timeout = "20s"
rate_per_second = 1000
"#,
        port = smsc.port,
        n0 = NUMBERS[0],
        n1 = NUMBERS[1],
    );
    let daemon = InProcess::start(&config(&w, &ledger_topic, &state_topic, &targets));
    let updates: Vec<IncidentUpdate> = samples::lifecycle(
        "INC-BK-1",
        "Voice outage",
        &["customers"],
        jiff::Timestamp::now(),
    )
    .into_iter()
    .take(2)
    .collect();
    publish_updates(&brokers, &w.topic, &updates).await;
    let offsets = w.wait_committed(PARTITIONS).await;
    let records = ledger(&brokers, &ledger_topic, 2 * updates.len()).await;
    daemon.stop().await;
    assert!(
        clarion_tests::kafka::all_committed(&offsets),
        "all offsets committed: {offsets:?}"
    );
    let letters = committed_and_end(&w.brokers, &w.group, &w.dlq, 1)[0].1;
    assert_eq!(letters, 0, "nothing was dead-lettered");

    // Every number got every update once, through the backup.
    let by_id: BTreeMap<&str, &IncidentUpdate> =
        updates.iter().map(|u| (u.update_id.as_str(), u)).collect();
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (to, text) in smpp_messages(&smsc.submits()) {
        let u = update_of(&text, &by_id, "customers");
        got.entry(to).or_default().push(u.sequence);
    }
    let want: BTreeMap<String, Vec<u64>> = NUMBERS
        .iter()
        .map(|n| (n.to_string(), updates.iter().map(|u| u.sequence).collect()))
        .collect();
    assert_eq!(got, want, "each number, each update, once and in order");

    // The ledger says who delivered: the backup, for every recipient.
    assert_eq!(records.len(), 2 * updates.len(), "{records:?}");
    for (_, r) in &records {
        assert_eq!(r["outcome"], "delivered", "{r}");
        assert_eq!(r["provider"], "smsc-backup", "{r}");
        // The first update tried the primary until `failover_after`; by the time the
        // second one came, the primary's breaker had opened (5 failures) and it went
        // to the backup at once.
        if r["sequence"] == 1 {
            assert!(
                r["attempts"].as_u64() >= Some(2),
                "the primary was tried first: {r}"
            );
        }
    }
    let values: Vec<serde_json::Value> = records.into_iter().map(|(_, v)| v).collect();
    assert_schema_valid(&py, &values);
}
