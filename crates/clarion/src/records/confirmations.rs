//! Confirmation records in the delivery ledger (docs/ledger.md#confirmation-records):
//! every request, confirmation, call status, escalation step and outcome, one
//! JSON record each, keyed by incident id like the delivery records and told apart
//! from them by `"kind": "confirmation"` (and the `clarion.ledger.kind` header).
//! Their own `schema_version` (1) and schema
//! (`docs/ledger.schema.json#/$defs/confirmation`).
//!
//! Written with the ledger's guarantee (acknowledged before what it records is
//! taken as done). A record may be written twice after a crash; `id` is the same
//! both times, and readers keep one.

use crate::config::KafkaConfig;
use crate::records::dlq::{Abandoned, DeadLetterWriter};
use anyhow::Result;
use clarion_core::SecretResolver;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// This record's shape; docs/ledger.schema.json#/$defs/confirmation.
pub const SCHEMA_VERSION: u32 = 1;
/// The value of `kind`.
pub const KIND: &str = "confirmation";

/// What a confirmation record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A recipient was asked: a message with a way to confirm reached them (or
    /// did not: `detail` says `unreachable`).
    Requested,
    /// A recipient's first confirmation (`via`: link, sms, voice).
    Confirmed,
    /// A call's status (`detail`: busy, failed, no-answer, machine…).
    CallStatus,
    /// An escalation step began.
    Step,
    /// The notice closed without this recipient's confirmation; they were reached.
    NotConfirmed,
    /// The notice closed; no channel reached this recipient.
    Unreachable,
    /// The notice closed (`met`: it got what it required).
    Closed,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Requested => "requested",
            Event::Confirmed => "confirmed",
            Event::CallStatus => "call_status",
            Event::Step => "step",
            Event::NotConfirmed => "not_confirmed",
            Event::Unreachable => "unreachable",
            Event::Closed => "closed",
        }
    }
}

/// One confirmation record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationRecord {
    pub schema_version: u32,
    /// Always `confirmation`.
    pub kind: String,
    /// The same for the same fact, however often it is written.
    pub id: String,
    pub event: Event,
    pub incident_id: String,
    pub update_id: String,
    pub sequence: u64,
    /// The target that asked (an escalation target, or the target whose
    /// recipients were asked).
    pub target: String,
    pub audiences: Vec<String>,
    /// The notice's case id (32 hex digits).
    pub case: String,
    /// `each`, `any` or `quorum:N`.
    pub require: String,
    pub within_s: u64,
    pub opened_at: jiff::Timestamp,
    pub at: jiff::Timestamp,
    /// Masked, as in delivery records; null for an escalation's person (see
    /// `person`) and for whole-notice events.
    pub recipient: Option<String>,
    /// The recipient's id in this case (16 hex digits, a keyed hash): tells
    /// recipients apart without naming them.
    pub recipient_ref: Option<String>,
    /// An escalation's person, by directory id.
    pub person: Option<String>,
    /// The channel of the message (email, sms, push, webhook, voice), or of the
    /// target or leg a step used.
    pub channel: Option<String>,
    /// The step's channel (a target or leg name).
    pub via_target: Option<String>,
    pub provider: Option<String>,
    /// How a confirmation came: `link`, `sms`, `voice`.
    pub via: Option<String>,
    pub step: Option<u32>,
    pub attempt: Option<u32>,
    /// A call's status, `unreachable`, or another short fact.
    pub detail: Option<String>,
    /// For `confirmed`: from the notice's opening to the confirmation.
    pub time_to_confirm_ms: Option<u64>,
    /// For `closed`: whether the notice got what it required.
    pub met: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
}

/// Appends confirmation records to the ledger topic.
#[derive(Debug, Clone)]
pub struct ConfirmationLedger {
    out: DeadLetterWriter,
    topic: String,
}

impl ConfirmationLedger {
    pub fn new(out: DeadLetterWriter, topic: String) -> Self {
        ConfirmationLedger { out, topic }
    }

    /// Writes one record; returns once acknowledged.
    pub async fn write(
        &self,
        record: &ConfirmationRecord,
        abort: &CancellationToken,
    ) -> Result<(), Abandoned> {
        let headers = [
            (
                "clarion.ledger.schema_version".to_string(),
                SCHEMA_VERSION.to_string().into_bytes(),
            ),
            ("clarion.ledger.kind".to_string(), KIND.as_bytes().to_vec()),
        ];
        // A struct of strings, numbers and timestamps always serializes.
        let payload = serde_json::to_vec(record).unwrap_or_default();
        self.out
            .write_acknowledged(
                &self.topic,
                record.incident_id.as_bytes(),
                &payload,
                &headers,
                abort,
                "ledger",
            )
            .await?;
        Ok(())
    }
}

/// Whether a ledger value is a confirmation record (whatever its version).
pub fn is_confirmation(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str().map(|k| k == KIND)))
        .unwrap_or(false)
}

/// The confirmation records of one incident, each fact once, in the order written.
pub fn read_incident(
    kafka: &KafkaConfig,
    secrets: &dyn SecretResolver,
    incident: &str,
    timeout: Duration,
) -> Result<Vec<ConfirmationRecord>> {
    let Some(topic) = &kafka.ledger_topic else {
        return Ok(Vec::new());
    };
    let raw = crate::records::ledger::read_key(kafka, secrets, topic, incident, timeout)?;
    Ok(parse_all(&raw))
}

/// Parses ledger values, keeping the confirmation records this version reads,
/// each `id` once.
pub fn parse_all(raw: &[Vec<u8>]) -> Vec<ConfirmationRecord> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for bytes in raw {
        if !is_confirmation(bytes) {
            continue;
        }
        match serde_json::from_slice::<ConfirmationRecord>(bytes) {
            Ok(r) if r.schema_version == SCHEMA_VERSION => {
                if seen.insert(r.id.clone()) {
                    out.push(r);
                }
            }
            Ok(r) => tracing::warn!(
                version = r.schema_version,
                "a confirmation record of a version this clarion does not read; skipped"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "a confirmation record this clarion cannot read; skipped")
            }
        }
    }
    out
}
