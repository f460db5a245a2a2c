//! The records of the confirmation state topic (`confirm.topic`, compacted):
//! their keys and values. Every record of a case shares its partition (chosen
//! from the case id), and each item of a case has a key of its own, so that
//! compaction keeps the latest value of every item:
//!
//! | key | value | written by |
//! |---|---|---|
//! | `CASE/h` | [`Header`]: the notice, what it requires, until when, and an escalation's frozen policy and people | the stream that sends the notice |
//! | `CASE/r/RID` | [`Asked`]: a recipient a target's delivery ended for (reached or not) | the target's stream |
//! | `CASE/a/RID` | [`Answer`]: a confirmation that came in (link, SMS reply, keypress) | the inbound listener |
//! | `CASE/c/RID` | [`Confirmed`]: the first confirmation, recorded in the ledger | the escalation engine |
//! | `CASE/v/RID/N` | [`Call`]: the status of call attempt N | the inbound listener |
//! | `CASE/s/STEP` | [`StepStarted`] | the escalation engine |
//! | `CASE/p/STEP/RID` | [`Cursor`]: where a person is in a step, written before each send | the escalation engine |
//! | `CASE/x` | [`Closed`]: every recipient's outcome | the escalation engine |
//!
//! A case is removed (tombstones) once it is closed and its outcomes are in the
//! ledger. Values are JSON with a `v` version; a record this daemon cannot read
//! is logged and ignored.

use crate::config::Step;
use crate::records::confirmations::{ConfirmationRecord, Event};
use clarion_confirm::{CaseId, RecipientId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The version of every value's shape.
pub const VERSION: u32 = 1;

/// The partition of `case` among `partitions`: the same for every record of it.
pub fn partition_of(case: &CaseId, partitions: i32) -> i32 {
    let n = u32::from_be_bytes([case.0[0], case.0[1], case.0[2], case.0[3]]);
    (n % partitions.max(1) as u32) as i32
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Header,
    Asked(RecipientId),
    Answer(RecipientId),
    Confirmed(RecipientId),
    Call(RecipientId, u32),
    Step(usize),
    Cursor(usize, RecipientId),
    Closed,
}

/// The key of an item of `case`.
pub fn key(case: &CaseId, item: &Item) -> String {
    let c = case.to_hex();
    match item {
        Item::Header => format!("{c}/h"),
        Item::Asked(r) => format!("{c}/r/{r}"),
        Item::Answer(r) => format!("{c}/a/{r}"),
        Item::Confirmed(r) => format!("{c}/c/{r}"),
        Item::Call(r, n) => format!("{c}/v/{r}/{n}"),
        Item::Step(s) => format!("{c}/s/{s}"),
        Item::Cursor(s, r) => format!("{c}/p/{s}/{r}"),
        Item::Closed => format!("{c}/x"),
    }
}

/// Reads a key back; `None` for one this daemon does not write.
pub fn parse_key(key: &str) -> Option<(CaseId, Item)> {
    let mut parts = key.split('/');
    let case = CaseId::from_hex(parts.next()?)?;
    let rid = |s: Option<&str>| s.and_then(RecipientId::from_hex);
    let item = match parts.next()? {
        "h" => Item::Header,
        "r" => Item::Asked(rid(parts.next())?),
        "a" => Item::Answer(rid(parts.next())?),
        "c" => Item::Confirmed(rid(parts.next())?),
        "v" => {
            let r = rid(parts.next())?;
            Item::Call(r, parts.next()?.parse().ok()?)
        }
        "s" => Item::Step(parts.next()?.parse().ok()?),
        "p" => {
            let s = parts.next()?.parse().ok()?;
            Item::Cursor(s, rid(parts.next())?)
        }
        "x" => Item::Closed,
        _ => return None,
    };
    parts.next().is_none().then_some((case, item))
}

/// A notice that must be confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub v: u32,
    pub update: clarion_core::IncidentUpdate,
    /// Where the update was read, for the ledger and dead letters.
    pub source: crate::records::ledger::SourceRef,
    pub published_ms: Option<i64>,
    /// The target that asks (an escalation target, or the target whose
    /// recipients are asked).
    pub target: String,
    pub audiences: Vec<String>,
    /// [`crate::config::Require::label`].
    pub require: String,
    pub within_ms: u64,
    /// When the notice went out: the update's publication (so that every writer
    /// of the header writes the same one).
    pub opened_at: jiff::Timestamp,
    /// When it closes, and every token of it expires.
    pub deadline: jiff::Timestamp,
    #[serde(default)]
    pub drill: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
}

impl Header {
    /// A ledger record of `case` about `event`, to be filled in.
    pub fn ledger_record(&self, id: &CaseId, event: Event, fact: &str) -> ConfirmationRecord {
        let h = self;
        ConfirmationRecord {
            schema_version: crate::records::confirmations::SCHEMA_VERSION,
            kind: crate::records::confirmations::KIND.to_string(),
            id: format!("{id}/{}/{fact}", event.as_str()),
            event,
            incident_id: h.update.incident_id.clone(),
            update_id: h.update.update_id.clone(),
            sequence: h.update.sequence,
            target: h.target.clone(),
            audiences: h.audiences.clone(),
            case: id.to_hex(),
            require: h.require.clone(),
            within_s: h.within_ms / 1000,
            opened_at: h.opened_at,
            at: jiff::Timestamp::now(),
            recipient: None,
            recipient_ref: None,
            person: None,
            channel: None,
            via_target: None,
            provider: None,
            via: None,
            step: None,
            attempt: None,
            detail: None,
            time_to_confirm_ms: None,
            met: None,
            drill: h.drill,
        }
    }
}

/// An escalation as fixed when its notice went out: the policy's steps and the
/// people each step reaches, with their addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    pub policy: String,
    pub steps: Vec<Step>,
    /// Per step, the ids of the people it reaches.
    pub step_people: Vec<Vec<String>>,
    /// Everyone, by id.
    pub people: BTreeMap<String, CasePerson>,
}

/// A person of an escalation, as resolved from the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CasePerson {
    /// [`RecipientId`] hex.
    pub rid: String,
    /// Address kind (`email`, `sms`, `push`) → addresses.
    pub addresses: BTreeMap<String, Vec<String>>,
}

/// A recipient a target's delivery ended for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    pub v: u32,
    /// Masked.
    pub recipient: String,
    /// The target (or leg) that delivered.
    pub target: String,
    pub channel: String,
    pub provider: Option<String>,
    pub audience: Option<String>,
    /// Delivered; false: every provider failed (unreachable).
    pub reached: bool,
    pub at: jiff::Timestamp,
}

/// How a confirmation came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Link,
    Sms,
    Voice,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Link => "link",
            Via::Sms => "sms",
            Via::Voice => "voice",
        }
    }
}

/// A confirmation that came in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub v: u32,
    pub via: Via,
    /// The provider whose callback carried it (SMS, voice).
    pub provider: Option<String>,
    pub at: jiff::Timestamp,
}

/// The first confirmation of a recipient, recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    pub v: u32,
    pub via: Via,
    pub provider: Option<String>,
    pub at: jiff::Timestamp,
}

/// A call's status, as its provider reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub v: u32,
    /// `busy`, `failed`, `no-answer`, `canceled`, `completed`, `machine`…
    pub status: String,
    /// The call did not reach the person: the channel moves on at once.
    pub unreachable: bool,
    pub provider: Option<String>,
    pub at: jiff::Timestamp,
}

/// A step began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStarted {
    pub v: u32,
    pub at: jiff::Timestamp,
}

/// Where a send stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendState {
    /// Written before the send: after a crash, the send is made again with the
    /// same idempotency key.
    Sending,
    /// The channel accepted it.
    Sent,
    /// Every provider failed: the person is unreachable on this channel.
    Failed,
}

/// Where one person is in one step: repeat `repeat`, channel `channel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub v: u32,
    pub repeat: u32,
    pub channel: usize,
    /// The person's send number within the case, counting every step: a call's
    /// callbacks name it, so that a late status of an earlier call moves nothing.
    pub attempt: u32,
    pub state: SendState,
    pub at: jiff::Timestamp,
    /// When the next channel (or repeat) is due if the person has not confirmed.
    pub next_at: jiff::Timestamp,
    /// Any send of this person reached them (in this step or an earlier one).
    #[serde(default)]
    pub reached: bool,
    /// The step is over for this person.
    #[serde(default)]
    pub done: bool,
}

/// A recipient's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Confirmed,
    NotConfirmed,
    Unreachable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::NotConfirmed => "not_confirmed",
            Outcome::Unreachable => "unreachable",
        }
    }
}

/// A case closed, with every recipient's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    pub v: u32,
    pub at: jiff::Timestamp,
    /// Recipient id hex → outcome.
    pub outcomes: BTreeMap<String, Outcome>,
    /// Whether the notice got what it required.
    pub met: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back() {
        let case = CaseId([7; 16]);
        let r = RecipientId([9; 8]);
        for item in [
            Item::Header,
            Item::Asked(r),
            Item::Answer(r),
            Item::Confirmed(r),
            Item::Call(r, 3),
            Item::Step(2),
            Item::Cursor(1, r),
            Item::Closed,
        ] {
            assert_eq!(parse_key(&key(&case, &item)), Some((case, item)));
        }
        for bad in [
            "",
            "x",
            "07/h",
            &format!("{}/h/extra", case.to_hex()),
            &format!("{}/q", case.to_hex()),
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
        assert_eq!(partition_of(&case, 6), partition_of(&case, 6));
        assert!((0..6).contains(&partition_of(&case, 6)));
    }
}
