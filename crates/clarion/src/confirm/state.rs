//! The confirmation state as the topic holds it, folded into cases: the latest
//! value of every key (what compaction keeps), so that applying a record twice,
//! or in a replay, changes nothing. Pure: the follower (`store.rs`) feeds it, the
//! inbound listener and the escalation engine read it.

use super::records::*;
use crate::config::Require;
use clarion_confirm::{CaseId, Keys, RecipientId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Everything known of one case.
#[derive(Debug, Clone, Default)]
pub struct Case {
    pub partition: i32,
    pub header: Option<Arc<Header>>,
    pub asked: BTreeMap<RecipientId, Asked>,
    pub answers: BTreeMap<RecipientId, Answer>,
    pub confirmed: BTreeMap<RecipientId, Confirmed>,
    pub calls: BTreeMap<(RecipientId, u32), Call>,
    pub steps: BTreeMap<usize, StepStarted>,
    pub cursors: BTreeMap<(usize, RecipientId), Cursor>,
    pub closed: Option<Closed>,
}

impl Case {
    fn is_empty(&self) -> bool {
        self.header.is_none()
            && self.asked.is_empty()
            && self.answers.is_empty()
            && self.confirmed.is_empty()
            && self.calls.is_empty()
            && self.steps.is_empty()
            && self.cursors.is_empty()
            && self.closed.is_none()
    }

    /// What the notice requires.
    pub fn require(&self) -> Option<Require> {
        self.header
            .as_ref()
            .and_then(|h| Require::from_label(&h.require))
    }

    /// Whether `rid` confirmed (recorded, or an answer not yet recorded).
    pub fn has_confirmed(&self, rid: &RecipientId) -> bool {
        self.confirmed.contains_key(rid) || self.answers.contains_key(rid)
    }

    /// The people an escalation has asked so far (those of every step begun),
    /// or a target's recipients whose delivery ended.
    pub fn asked(&self) -> BTreeSet<RecipientId> {
        let mut out: BTreeSet<RecipientId> = self.asked.keys().copied().collect();
        if let Some(e) = self.header.as_ref().and_then(|h| h.escalation.as_ref()) {
            for step in self.steps.keys() {
                for id in e.step_people.get(*step).into_iter().flatten() {
                    if let Some(rid) = e.people.get(id).and_then(|p| RecipientId::from_hex(&p.rid))
                    {
                        out.insert(rid);
                    }
                }
            }
        }
        out
    }

    /// How many of those asked confirmed.
    pub fn confirmed_count(&self) -> usize {
        self.asked()
            .iter()
            .filter(|r| self.has_confirmed(r))
            .count()
    }

    /// Whether the notice got what it requires.
    pub fn met(&self) -> bool {
        let asked = self.asked();
        let confirmed = asked.iter().filter(|r| self.has_confirmed(r)).count();
        self.require()
            .is_some_and(|r| r.met(confirmed, asked.len()))
    }

    /// Whether any send reached `rid`.
    pub fn reached(&self, rid: &RecipientId) -> bool {
        self.asked.get(rid).is_some_and(|a| a.reached)
            || self.cursors.iter().any(|((_, r), c)| r == rid && c.reached)
    }

    /// Every recipient's outcome, were the case to close now.
    pub fn outcomes(&self) -> BTreeMap<RecipientId, Outcome> {
        self.asked()
            .into_iter()
            .map(|r| {
                let o = if self.has_confirmed(&r) {
                    Outcome::Confirmed
                } else if self.reached(&r) {
                    Outcome::NotConfirmed
                } else {
                    Outcome::Unreachable
                };
                (r, o)
            })
            .collect()
    }

    /// The person of an escalation behind `rid`: their id and record.
    pub fn person(&self, rid: &RecipientId) -> Option<(&str, &CasePerson)> {
        let hex = rid.to_hex();
        self.header
            .as_ref()?
            .escalation
            .as_ref()?
            .people
            .iter()
            .find(|(_, p)| p.rid == hex)
            .map(|(id, p)| (id.as_str(), p))
    }

    /// The audience whose text `rid` got: its target's, or the notice's first.
    pub fn audience_of(&self, rid: &RecipientId) -> Option<String> {
        let h = self.header.as_ref()?;
        self.asked
            .get(rid)
            .and_then(|a| a.audience.clone())
            .or_else(|| h.audiences.first().cloned())
    }
}

/// Whether two phone numbers are the same: their digits, ignoring `+`, spaces
/// and punctuation.
pub fn same_number(a: &str, b: &str) -> bool {
    let digits = |s: &str| -> String { s.chars().filter(char::is_ascii_digit).collect() };
    let (a, b) = (digits(a), digits(b));
    !a.is_empty() && a == b
}

/// Every case this process has read, with the index that finds an SMS reply's
/// case from its code.
#[derive(Debug)]
pub struct View {
    keys: Keys,
    cases: HashMap<CaseId, Case>,
    /// Reply code → the (case, recipient) pairs it was sent to.
    codes: HashMap<String, Vec<(CaseId, RecipientId)>>,
}

impl View {
    pub fn new(keys: Keys) -> View {
        View {
            keys,
            cases: HashMap::new(),
            codes: HashMap::new(),
        }
    }

    pub fn case(&self, id: &CaseId) -> Option<&Case> {
        self.cases.get(id)
    }

    pub fn len(&self) -> usize {
        self.cases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cases.is_empty()
    }

    /// The cases of `partition`.
    pub fn in_partition(&self, partition: i32) -> impl Iterator<Item = (&CaseId, &Case)> {
        self.cases
            .iter()
            .filter(move |(_, c)| c.partition == partition)
    }

    /// Every open case (with a header, not closed).
    pub fn open(&self) -> impl Iterator<Item = (&CaseId, &Case)> {
        self.cases
            .iter()
            .filter(|(_, c)| c.header.is_some() && c.closed.is_none())
    }

    fn index(&mut self, case: CaseId, rid: RecipientId) {
        let code = self.keys.reply_code(&case, &rid);
        let list = self.codes.entry(code).or_default();
        if !list.contains(&(case, rid)) {
            list.push((case, rid));
        }
    }

    fn unindex(&mut self, case: &CaseId) {
        self.codes.retain(|_, list| {
            list.retain(|(c, _)| c != case);
            !list.is_empty()
        });
    }

    /// The (case, recipient) pairs an SMS reply from `from` with `code` confirms:
    /// those the code was sent to whose recipient is that number.
    pub fn sms_match(&self, from: &str, code: &str) -> Vec<(CaseId, RecipientId)> {
        let Some(list) = self.codes.get(code) else {
            return Vec::new();
        };
        list.iter()
            .filter(|(case, rid)| {
                let Some(c) = self.cases.get(case) else {
                    return false;
                };
                if c.closed.is_some() {
                    return false;
                }
                if self.keys.recipient_id(case, from) == *rid {
                    return true;
                }
                c.person(rid).is_some_and(|(_, p)| {
                    p.addresses.values().flatten().any(|a| same_number(a, from))
                })
            })
            .copied()
            .collect()
    }

    /// Applies one record (`None`: a tombstone). An unreadable record is an
    /// error for the caller to log; the state is unchanged by it.
    pub fn apply(&mut self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some((id, item)) = parse_key(key) else {
            return Err("not a key this daemon writes".into());
        };
        fn read<T: serde::de::DeserializeOwned>(v: &[u8]) -> Result<T, String> {
            serde_json::from_slice(v).map_err(|e| e.to_string())
        }
        let case = self.cases.entry(id).or_default();
        case.partition = partition;
        let mut index: Vec<RecipientId> = Vec::new();
        match (item, value) {
            (Item::Header, None) => case.header = None,
            (Item::Header, Some(v)) => {
                let h: Header = read(v)?;
                if let Some(e) = &h.escalation {
                    index.extend(
                        e.people
                            .values()
                            .filter_map(|p| RecipientId::from_hex(&p.rid)),
                    );
                }
                case.header = Some(Arc::new(h));
            }
            (Item::Asked(r), None) => {
                case.asked.remove(&r);
            }
            (Item::Asked(r), Some(v)) => {
                case.asked.insert(r, read(v)?);
                index.push(r);
            }
            (Item::Answer(r), None) => {
                case.answers.remove(&r);
            }
            (Item::Answer(r), Some(v)) => {
                case.answers.insert(r, read(v)?);
            }
            (Item::Confirmed(r), None) => {
                case.confirmed.remove(&r);
            }
            (Item::Confirmed(r), Some(v)) => {
                case.confirmed.insert(r, read(v)?);
            }
            (Item::Call(r, n), None) => {
                case.calls.remove(&(r, n));
            }
            (Item::Call(r, n), Some(v)) => {
                case.calls.insert((r, n), read(v)?);
            }
            (Item::Step(s), None) => {
                case.steps.remove(&s);
            }
            (Item::Step(s), Some(v)) => {
                case.steps.insert(s, read(v)?);
            }
            (Item::Cursor(s, r), None) => {
                case.cursors.remove(&(s, r));
            }
            (Item::Cursor(s, r), Some(v)) => {
                case.cursors.insert((s, r), read(v)?);
            }
            (Item::Closed, None) => case.closed = None,
            (Item::Closed, Some(v)) => case.closed = Some(read(v)?),
        }
        if case.is_empty() {
            self.cases.remove(&id);
            self.unindex(&id);
            return Ok(());
        }
        for r in index {
            self.index(id, r);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(b"0123456789abcdef0123456789abcdef").expect("long enough")
    }

    fn header(require: &str) -> Vec<u8> {
        let update = clarion_core::samples::lifecycle(
            "INC-1",
            "Outage",
            &["regulators"],
            jiff::Timestamp::now(),
        )
        .remove(0);
        serde_json::to_vec(&Header {
            v: VERSION,
            update,
            source: crate::records::ledger::SourceRef {
                topic: "t".into(),
                partition: 0,
                offset: 1,
            },
            published_ms: None,
            target: "regulator-mail".into(),
            audiences: vec!["regulators".into()],
            require: require.into(),
            within_ms: 600_000,
            opened_at: jiff::Timestamp::now(),
            deadline: jiff::Timestamp::now(),
            drill: false,
            escalation: None,
        })
        .expect("json")
    }

    fn asked(reached: bool) -> Vec<u8> {
        serde_json::to_vec(&Asked {
            v: VERSION,
            recipient: "de***mple".into(),
            target: "regulator-mail".into(),
            channel: "email".into(),
            provider: Some("primary".into()),
            audience: Some("regulators".into()),
            reached,
            at: jiff::Timestamp::now(),
        })
        .expect("json")
    }

    #[test]
    fn folds_records_into_outcomes_and_forgets_a_removed_case() {
        let k = keys();
        let mut v = View::new(k.clone());
        let case = k.case_id(&["u1", "regulator-mail"]);
        let a = k.recipient_id(&case, "desk@regulator.example");
        let b = k.recipient_id(&case, "+447700900123");
        let c = k.recipient_id(&case, "gone@regulator.example");
        v.apply(2, &key(&case, &Item::Header), Some(&header("each")))
            .expect("applies");
        for (r, reached) in [(a, true), (b, true), (c, false)] {
            v.apply(2, &key(&case, &Item::Asked(r)), Some(&asked(reached)))
                .expect("applies");
        }
        let answer = serde_json::to_vec(&Answer {
            v: VERSION,
            via: Via::Sms,
            provider: None,
            at: jiff::Timestamp::now(),
        })
        .expect("json");
        v.apply(2, &key(&case, &Item::Answer(b)), Some(&answer))
            .expect("applies");
        // Twice changes nothing.
        v.apply(2, &key(&case, &Item::Answer(b)), Some(&answer))
            .expect("applies");
        let got = v.case(&case).expect("the case");
        assert_eq!(got.confirmed_count(), 1);
        assert!(!got.met());
        assert_eq!(
            got.outcomes(),
            BTreeMap::from([
                (a, Outcome::NotConfirmed),
                (b, Outcome::Confirmed),
                (c, Outcome::Unreachable)
            ])
        );
        // The reply code finds the case only from the number it was sent to.
        let code = k.reply_code(&case, &b);
        assert_eq!(v.sms_match("+447700900123", &code), vec![(case, b)]);
        assert!(v.sms_match("+447700900999", &code).is_empty());
        assert!(v.apply(2, "nonsense", Some(b"{}")).is_err());
        assert!(
            v.apply(2, &key(&case, &Item::Asked(a)), Some(b"{"))
                .is_err()
        );
        for item in [
            Item::Header,
            Item::Asked(a),
            Item::Asked(b),
            Item::Asked(c),
            Item::Answer(b),
        ] {
            v.apply(2, &key(&case, &item), None).expect("applies");
        }
        assert!(v.is_empty());
        assert!(v.sms_match("+447700900123", &code).is_empty());
    }
}
