//! What is due, and where each notice stands: one incident's ledger records folded
//! into notices (docs/ledger.md, "Reading it: notices").
//!
//! A **notice** is one update to one target, for the audiences that target serves
//! (a people target's legs record under `TARGET.KIND` and count as the people
//! target's). Its history in the ledger: `due` (the events stream found that the
//! target takes the update), `pending` (an attempt failed and another follows, or the
//! delivery waits for its target's breaker), then final outcomes, per recipient or for
//! the whole delivery, and `resolved` (a delivery to recipients has ended). [`fold`]
//! turns the records into one [`Notice`] each, in its latest state. `status`,
//! `report`, `publish --follow` and `drill` read notices, never raw records, so that
//! they judge alike.
//!
//! The rules, in one place:
//! - a notice is final once the ledger has a final record of the whole delivery: a
//!   webhook's outcome (it has no recipients), `superseded`, a failure of the whole
//!   delivery, or `resolved`. Per-recipient records alone do not make it final: more
//!   recipients may follow. A notice known only from version 1 records (older daemons
//!   recorded final outcomes only) is taken as final;
//! - per recipient, a delivery stands once made (a redelivery's later failure does not
//!   undo it); otherwise the latest final record counts. A dead letter of the whole
//!   delivery is lifted by a replay that ran the delivery to its end again;
//! - a final notice is dead-lettered when any of its outcomes is, else superseded
//!   when it was superseded, else delivered.
//!
//! Extending it (confirmations, walk progress): a new [`State`] variant or a new
//! field of [`Notice`], and the records that set it in [`Fold::apply`]; the readers
//! match on `State` and show what they know. Pure: no I/O.

use crate::records::ledger::{LedgerError, LedgerRecord, outcome};
use serde::Serialize;
use std::collections::BTreeMap;

/// Where a notice stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Due and not final yet: not tried, retrying, or waiting for the target.
    Pending,
    Delivered,
    DeadLettered,
    /// A newer update of the incident made it unnecessary (`supersede = true`).
    Superseded,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::DeadLettered => "dead_lettered",
            State::Superseded => "superseded",
        }
    }

    pub fn is_final(self) -> bool {
        self != State::Pending
    }

    /// Final, and nobody is left without it: delivered, or superseded by a newer
    /// update.
    pub fn is_reached(self) -> bool {
        matches!(self, State::Delivered | State::Superseded)
    }
}

/// One final outcome of a notice: one recipient's, or the whole delivery's
/// (`recipient` `None`: a webhook's, a superseded or wholly failed delivery).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Final {
    /// Masked, as the ledger holds it.
    pub recipient: Option<String>,
    pub recipient_ref: Option<String>,
    /// `delivered`, `dead_lettered` or `superseded`.
    pub outcome: String,
    pub at: jiff::Timestamp,
    pub attempts: u32,
    pub first_attempt_at: Option<jiff::Timestamp>,
    pub provider: Option<String>,
    pub provider_id: Option<String>,
    pub error: Option<LedgerError>,
    pub superseded_by: Option<String>,
    pub latency_ms: u64,
    /// Written by `clarion dlq replay`.
    pub replayed: bool,
    /// The leg of a people target that recorded it (`customer-reach.sms`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leg: Option<String>,
}

impl Final {
    pub fn is_delivered(&self) -> bool {
        self.outcome == outcome::DELIVERED
    }
}

/// Why a notice is not final yet, from the daemon's latest record of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pending {
    /// When it was found due (or first recorded pending).
    pub since: jiff::Timestamp,
    /// When the latest record of it was written.
    pub updated_at: jiff::Timestamp,
    /// Requests made to the peer so far.
    pub attempts: u32,
    pub last_error: Option<LedgerError>,
    pub next_attempt_at: Option<jiff::Timestamp>,
    /// The target's breaker when the record was written: `closed`, `open`,
    /// `half_open`.
    pub breaker: Option<String>,
    pub provider: Option<String>,
    /// Recipients the next attempt is for, when the daemon said.
    pub recipients_pending: Option<u32>,
}

impl Pending {
    /// Whether the daemon reported the target down (breaker open or probing).
    pub fn target_down(&self) -> bool {
        self.breaker.as_deref().is_some_and(|b| b != "closed")
    }

    /// "not yet, and why", in one line a person reads.
    pub fn why(&self, target: &str) -> String {
        let mut out = if self.attempts == 0 {
            if self.target_down() {
                format!("not tried yet: target `{target}` is down (breaker open)")
            } else {
                format!(
                    "not tried yet: waiting for target `{target}`'s stream (it is behind, or holds its updates in Kafka while its breaker is open)"
                )
            }
        } else {
            format!("{} attempt(s) so far", self.attempts)
        };
        if let Some(n) = self.recipients_pending {
            out.push_str(&format!(", {n} recipient(s) still to reach"));
        }
        if let Some(e) = &self.last_error {
            out.push_str("; last error: ");
            out.push_str(&error_text(e));
        }
        if self.attempts > 0 && self.target_down() {
            out.push_str("; target is down (breaker open)");
        }
        match self.next_attempt_at {
            Some(t) if self.target_down() => out.push_str(&format!("; next probe {}", clock(t))),
            Some(t) => out.push_str(&format!("; next attempt {}", clock(t))),
            None => {}
        }
        out
    }
}

/// An error as one short line: class, code, reason.
pub fn error_text(e: &LedgerError) -> String {
    let reason: String = e.reason.chars().take(160).collect();
    match &e.code {
        Some(c) => format!("{} {c}: {reason}", e.class),
        None => format!("{}: {reason}", e.class),
    }
}

/// A time of day as the commands print it.
pub fn clock(t: jiff::Timestamp) -> String {
    t.strftime("%H:%M:%S UTC").to_string()
}

/// One update to one target, in its latest state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub incident_id: String,
    pub update_id: String,
    pub sequence: u64,
    pub status: String,
    pub impact: String,
    pub occurred_at: jiff::Timestamp,
    pub published_at: Option<jiff::Timestamp>,
    pub target: String,
    pub channel: String,
    pub audiences: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
    pub state: State,
    /// When the state began: when it ended, for a final notice; the latest record,
    /// for a pending one.
    pub at: jiff::Timestamp,
    /// Requests made to the peer, the most any record of it says.
    pub attempts: u32,
    /// The provider of the latest attempt.
    pub provider: Option<String>,
    /// Its final outcomes, per recipient (or one for the whole delivery).
    pub finals: Vec<Final>,
    /// Why it is not final, while pending.
    pub pending: Option<Pending>,
    /// Some outcome of it was written by `clarion dlq replay`.
    pub replayed: bool,
    /// Known only from version 1 records (final outcomes, no `due`/`resolved`).
    #[serde(skip)]
    pub legacy: bool,
}

impl Notice {
    /// The first successful delivery of it (to any recipient).
    pub fn first_delivered(&self) -> Option<jiff::Timestamp> {
        self.finals
            .iter()
            .filter(|f| f.is_delivered())
            .map(|f| f.at)
            .min()
    }

    pub fn count(&self, outcome: &str) -> usize {
        self.finals.iter().filter(|f| f.outcome == outcome).count()
    }

    pub fn serves(&self, audience: &str) -> bool {
        self.audiences.iter().any(|a| a == audience)
    }
}

/// A notice being folded.
#[derive(Debug)]
struct Fold {
    notice: Notice,
    /// Final outcomes by recipient ref (`None`: the whole delivery), each with the
    /// position of the record that set it.
    finals: BTreeMap<Option<String>, (usize, Final)>,
    whole_final: bool,
    /// The latest `due` or `pending` record.
    pending: Option<Pending>,
    /// Any record of version 2 or later.
    modern: bool,
    /// Position of the last `resolved` written by a replay.
    replay_resolved: Option<usize>,
}

impl Fold {
    fn new(r: &LedgerRecord, target: &str) -> Self {
        Fold {
            notice: Notice {
                incident_id: r.incident_id.clone(),
                update_id: r.update_id.clone(),
                sequence: r.sequence,
                status: r.status.clone(),
                impact: r.impact.clone(),
                occurred_at: r.occurred_at,
                published_at: r.published_at,
                target: target.to_string(),
                channel: r.channel.clone(),
                audiences: Vec::new(),
                drill: r.drill,
                state: State::Pending,
                at: r.at(),
                attempts: 0,
                provider: None,
                finals: Vec::new(),
                pending: None,
                replayed: false,
                legacy: false,
            },
            finals: BTreeMap::new(),
            whole_final: false,
            pending: None,
            modern: false,
            replay_resolved: None,
        }
    }

    fn apply(&mut self, i: usize, r: &LedgerRecord, leg: Option<&str>) {
        let n = &mut self.notice;
        self.modern |= r.schema_version >= 2;
        if n.audiences.is_empty() || (r.outcome == outcome::DUE && leg.is_none()) {
            n.audiences = r.audiences.clone();
        }
        if n.published_at.is_none() {
            n.published_at = r.published_at;
        }
        if leg.is_none() {
            n.channel = r.channel.clone();
        }
        n.attempts = n.attempts.max(r.attempts);
        if r.provider.is_some() {
            n.provider = r.provider.clone();
        }
        n.replayed |= r.replayed;
        match r.outcome.as_str() {
            outcome::DUE | outcome::PENDING => {
                let since = self
                    .pending
                    .as_ref()
                    .map_or(r.at(), |p| p.since.min(r.at()));
                // A `due` record written after the target's own `pending` ones (the
                // events stream was slower) says less: keep the pending one.
                let keep_older = r.outcome == outcome::DUE
                    && self.pending.as_ref().is_some_and(|p| p.attempts > 0);
                if keep_older {
                    if let Some(p) = &mut self.pending {
                        p.since = since;
                    }
                } else {
                    self.pending = Some(Pending {
                        since,
                        updated_at: r.at(),
                        attempts: r.attempts,
                        last_error: r.error.clone(),
                        next_attempt_at: r.next_attempt_at,
                        breaker: r.breaker.clone(),
                        provider: r.provider.clone(),
                        recipients_pending: r.recipients_pending,
                    });
                }
            }
            outcome::RESOLVED => {
                self.whole_final = true;
                if r.replayed {
                    self.replay_resolved = Some(i);
                }
            }
            _ => {
                let f = Final {
                    recipient: r.recipient.clone(),
                    recipient_ref: r.recipient_ref.clone(),
                    outcome: r.outcome.clone(),
                    at: r.at(),
                    attempts: r.attempts,
                    first_attempt_at: r.first_attempt_at,
                    provider: r.provider.clone(),
                    provider_id: r.provider_id.clone(),
                    error: r.error.clone(),
                    superseded_by: r.superseded_by.clone(),
                    latency_ms: r.latency_ms,
                    replayed: r.replayed,
                    leg: leg.map(str::to_string),
                };
                // A people target's legs end people, not the walk: only the people
                // target's own `resolved` ends it.
                if r.recipient_ref.is_none() && leg.is_none() {
                    self.whole_final = true;
                }
                let key = r.recipient_ref.clone();
                let stands = self
                    .finals
                    .get(&key)
                    .is_some_and(|(_, old)| old.is_delivered() && !f.is_delivered());
                if !stands {
                    self.finals.insert(key, (i, f));
                }
            }
        }
    }

    fn finish(mut self) -> Notice {
        // A replay that ran the whole delivery again to its end lifts a dead letter
        // of the whole delivery written before it.
        if let Some(at) = self.replay_resolved
            && self
                .finals
                .get(&None)
                .is_some_and(|(i, f)| *i < at && f.outcome == outcome::DEAD_LETTERED)
        {
            self.finals.remove(&None);
        }
        let mut n = self.notice;
        let mut finals: Vec<(usize, Final)> = self.finals.into_values().collect();
        finals.sort_by_key(|(i, _)| *i);
        n.finals = finals.into_iter().map(|(_, f)| f).collect();
        n.legacy = !self.modern;
        let is_final = self.whole_final || (n.legacy && !n.finals.is_empty());
        n.state = if !is_final {
            State::Pending
        } else if n.finals.iter().any(|f| f.outcome == outcome::DEAD_LETTERED) {
            State::DeadLettered
        } else if n.finals.iter().any(|f| f.outcome == outcome::SUPERSEDED) {
            State::Superseded
        } else {
            State::Delivered
        };
        if is_final {
            if let Some(t) = n.finals.iter().map(|f| f.at).max() {
                n.at = t;
            }
        } else {
            n.pending = self.pending.or_else(|| {
                // Known only from final records of some recipients: more follow.
                Some(Pending {
                    since: n.at,
                    updated_at: n.at,
                    attempts: n.attempts,
                    last_error: None,
                    next_attempt_at: None,
                    breaker: None,
                    provider: n.provider.clone(),
                    recipients_pending: None,
                })
            });
            if let Some(p) = &n.pending {
                n.at = p.updated_at;
            }
        }
        n
    }
}

/// The kinds of address a people target's legs carry, whose names end its legs'
/// target names (`customer-reach.sms`).
const LEG_KINDS: [&str; 3] = ["push", "sms", "email"];

/// Folds one incident's records (in the order they were written) into its notices,
/// ordered by update, then target.
pub fn fold(records: &[LedgerRecord]) -> Vec<Notice> {
    // The notices that exist in their own name: a leg's records join its people
    // target's notice when there is one.
    let own: std::collections::BTreeSet<(&str, &str)> = records
        .iter()
        .filter(|r| r.channel == "people" || r.outcome == outcome::DUE)
        .map(|r| (r.update_id.as_str(), r.target.as_str()))
        .collect();
    let mut folds: BTreeMap<(u64, String, String), Fold> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let parent = r.target.rsplit_once('.').and_then(|(parent, kind)| {
            (LEG_KINDS.contains(&kind) && own.contains(&(r.update_id.as_str(), parent)))
                .then_some(parent)
        });
        let target = parent.unwrap_or(&r.target);
        let leg = parent.map(|_| r.target.as_str());
        folds
            .entry((r.sequence, r.update_id.clone(), target.to_string()))
            .or_insert_with(|| Fold::new(r, target))
            .apply(i, r, leg);
    }
    folds.into_values().map(Fold::finish).collect()
}

/// The updates whose notices are not all known yet: a target's stream recorded
/// something of them (a version 2 daemon's, not a replay's), but the events
/// stream, which records what each update owes every target (`due`), has not
/// written its records yet (it is behind the target streams). Until it has, a
/// reader cannot tell that no other target is owed the update. In update order.
pub fn undeclared(records: &[LedgerRecord]) -> Vec<String> {
    let declared: std::collections::BTreeSet<&str> = records
        .iter()
        .filter(|r| r.outcome == outcome::DUE)
        .map(|r| r.update_id.as_str())
        .collect();
    let mut out: Vec<(u64, String)> = records
        .iter()
        .filter(|r| {
            r.schema_version >= 2 && !r.replayed && !declared.contains(r.update_id.as_str())
        })
        .map(|r| (r.sequence, r.update_id.clone()))
        .collect();
    out.sort();
    out.dedup();
    out.into_iter().map(|(_, u)| u).collect()
}

/// How many notices are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub due: usize,
    pub delivered: usize,
    pub dead_lettered: usize,
    pub superseded: usize,
    pub pending: usize,
}

impl Tally {
    pub fn of<'a>(notices: impl IntoIterator<Item = &'a Notice>) -> Tally {
        let mut t = Tally::default();
        for n in notices {
            t.due += 1;
            match n.state {
                State::Pending => t.pending += 1,
                State::Delivered => t.delivered += 1,
                State::DeadLettered => t.dead_lettered += 1,
                State::Superseded => t.superseded += 1,
            }
        }
        t
    }

    /// Every notice final and reached.
    pub fn all_reached(&self) -> bool {
        self.pending == 0 && self.dead_lettered == 0
    }

    /// "3 due: 2 delivered, 1 pending".
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        for (n, word) in [
            (self.delivered, "delivered"),
            (self.pending, "pending"),
            (self.dead_lettered, "dead-lettered"),
            (self.superseded, "superseded"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {word}"));
            }
        }
        format!("{} notice(s) due: {}", self.due, parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::ledger::SourceRef;

    fn rec(target: &str, outcome: &str, recipient: Option<&str>, at: i64) -> LedgerRecord {
        let t0 = jiff::Timestamp::from_second(1_800_000_000).expect("time");
        let at = t0 + jiff::SignedDuration::from_secs(at);
        LedgerRecord {
            schema_version: 2,
            incident_id: "I".into(),
            update_id: "I-u1".into(),
            sequence: 1,
            status: "investigating".into(),
            impact: "major".into(),
            target: target.into(),
            channel: "email".into(),
            audiences: vec!["regulators".into()],
            recipient: recipient.map(|r| format!("{r}***")),
            recipient_ref: recipient.map(str::to_string),
            outcome: outcome.into(),
            attempts: 1,
            first_attempt_at: None,
            final_at: (!matches!(outcome, "due" | "pending")).then_some(at),
            recorded_at: Some(at),
            occurred_at: t0,
            published_at: Some(t0),
            latency_ms: 0,
            provider: Some("primary".into()),
            drill: false,
            provider_id: None,
            error: None,
            superseded_by: None,
            idempotency_key: "k".into(),
            source: SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: 0,
            },
            next_attempt_at: None,
            breaker: None,
            recipients_pending: None,
            replayed: false,
        }
    }

    fn check(records: &[LedgerRecord], want: State) -> Notice {
        let notices = fold(records);
        assert_eq!(notices.len(), 1, "{notices:#?}");
        assert_eq!(notices[0].state, want, "{notices:#?}");
        notices[0].clone()
    }

    #[test]
    fn a_notice_with_some_recipients_delivered_is_pending_until_resolved() {
        let mut pending = rec("mail", "pending", None, 2);
        pending.attempts = 3;
        pending.breaker = Some("open".into());
        pending.error = Some(LedgerError {
            class: "retryable".into(),
            code: None,
            reason: "connection refused".into(),
        });
        let records = vec![
            rec("mail", "due", None, 0),
            rec("mail", "delivered", Some("a"), 1),
            pending,
        ];
        let n = check(&records, State::Pending);
        let why = n.pending.as_ref().expect("pending").why("mail");
        assert!(
            why.contains("3 attempt(s)") && why.contains("connection refused"),
            "{why}"
        );
        assert!(why.contains("breaker open"), "{why}");
        let mut done = records.clone();
        done.push(rec("mail", "delivered", Some("b"), 3));
        check(&done, State::Pending);
        done.push(rec("mail", "resolved", None, 4));
        let n = check(&done, State::Delivered);
        assert_eq!(n.finals.len(), 2);
        assert!(n.pending.is_none());
    }

    #[test]
    fn only_due_is_pending_and_says_it_was_not_tried() {
        let mut due = rec("hook", "due", None, 0);
        due.attempts = 0;
        let n = check(&[due], State::Pending);
        assert!(
            n.pending
                .expect("pending")
                .why("hook")
                .starts_with("not tried yet")
        );
    }

    #[test]
    fn a_webhook_outcome_ends_its_notice_and_a_replay_lifts_a_dead_letter() {
        let hook = |o, at| {
            let mut r = rec("hook", o, None, at);
            r.channel = "webhook".into();
            r
        };
        let dead = vec![hook("due", 0), hook("dead_lettered", 1)];
        check(&dead, State::DeadLettered);
        let mut replayed = dead.clone();
        let mut again = hook("delivered", 5);
        again.replayed = true;
        replayed.push(again);
        let n = check(&replayed, State::Delivered);
        assert!(n.replayed && n.finals[0].replayed);
        // A later failure does not undo a delivery.
        replayed.push(hook("dead_lettered", 6));
        check(&replayed, State::Delivered);
    }

    #[test]
    fn a_replayed_recipient_is_delivered_and_a_whole_dead_letter_is_lifted_by_a_replayed_end() {
        let mut records = vec![
            rec("mail", "delivered", Some("a"), 1),
            rec("mail", "dead_lettered", Some("b"), 2),
            rec("mail", "resolved", None, 3),
        ];
        check(&records, State::DeadLettered);
        let mut b = rec("mail", "delivered", Some("b"), 9);
        b.replayed = true;
        records.push(b);
        check(&records, State::Delivered);

        let mut whole = vec![
            rec("mail", "dead_lettered", None, 1),
            rec("mail", "resolved", None, 2),
        ];
        check(&whole, State::DeadLettered);
        for r in [
            rec("mail", "delivered", Some("a"), 5),
            rec("mail", "resolved", None, 6),
        ] {
            let mut r = r;
            r.replayed = true;
            whole.push(r);
        }
        check(&whole, State::Delivered);
    }

    #[test]
    fn version_1_records_alone_are_final_and_superseded_is_reached() {
        let mut old = rec("mail", "delivered", Some("a"), 1);
        old.schema_version = 1;
        let n = check(&[old], State::Delivered);
        assert!(n.legacy);
        let s = check(&[rec("hook", "superseded", None, 1)], State::Superseded);
        assert!(s.state.is_reached());
    }

    #[test]
    fn a_people_targets_legs_are_its_notice() {
        let mut due = rec("reach", "due", None, 0);
        due.channel = "people".into();
        let mut sms = rec("reach.sms", "delivered", Some("p1"), 1);
        sms.channel = "sms".into();
        let mut end = rec("reach", "resolved", None, 2);
        end.channel = "people".into();
        check(&[due.clone(), sms.clone()], State::Pending);
        let n = check(&[due, sms, end], State::Delivered);
        assert_eq!(n.target, "reach");
        assert_eq!(n.finals[0].leg.as_deref(), Some("reach.sms"));
    }

    #[test]
    fn an_update_no_due_record_declares_yet_is_undeclared() {
        let delivered = {
            let mut r = rec("hook", "delivered", None, 1);
            r.channel = "webhook".into();
            r
        };
        assert_eq!(undeclared(std::slice::from_ref(&delivered)), vec!["I-u1"]);
        assert!(undeclared(&[rec("hook", "due", None, 0), delivered.clone()]).is_empty());
        let mut old = delivered.clone();
        old.schema_version = 1;
        let mut replayed = delivered;
        replayed.replayed = true;
        assert!(
            undeclared(&[old, replayed]).is_empty(),
            "older daemons and replays declare nothing"
        );
    }

    #[test]
    fn the_tally_says_what_is_not_yet() {
        let notices = fold(&[rec("a", "due", None, 0), {
            let mut r = rec("b", "delivered", None, 1);
            r.channel = "webhook".into();
            r
        }]);
        let t = Tally::of(&notices);
        assert_eq!((t.due, t.pending, t.delivered), (2, 1, 1));
        assert!(!t.all_reached());
        assert_eq!(t.line(), "2 notice(s) due: 1 delivered, 1 pending");
    }
}
