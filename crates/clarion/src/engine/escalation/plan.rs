//! What a case needs next, decided from its state alone (pure): close it, record
//! a confirmation, begin a step, send to a person on their next channel, or end a
//! person's part in a step. The engine does one action, writes its state, and
//! asks again; so a restart, which starts from the state, decides the same.

use crate::confirm::records::SendState;
use crate::confirm::state::Case;
use clarion_confirm::RecipientId;

/// One thing to do for a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Closed: remove what is left of it from the topic.
    Finish,
    /// Past its deadline: record every recipient's outcome, then close.
    Close,
    /// A confirmation came in: record it (the person's sends stop).
    Confirm(RecipientId),
    /// Begin step `0`.
    StartStep(usize),
    /// Send to `person` (their id) in `step`, at (`repeat`, `channel`).
    Send {
        step: usize,
        person: String,
        rid: RecipientId,
        repeat: u32,
        channel: usize,
        attempt: u32,
    },
    /// `person`'s part in `step` is over (every channel of every repeat tried).
    Done { step: usize, rid: RecipientId },
}

/// The next action of `case` at `now`, if any is due.
pub fn next(case: &Case, now: jiff::Timestamp) -> Option<Action> {
    due(case, now, false).into_iter().next()
}

/// Every action due at `now` when the first one is a send or the end of a
/// person's part: one per person of the current step, which may run at once
/// (each writes only its own person's cursor). Otherwise the one action due.
pub fn all(case: &Case, now: jiff::Timestamp) -> Vec<Action> {
    due(case, now, true)
}

fn due(case: &Case, now: jiff::Timestamp, every: bool) -> Vec<Action> {
    match first(case, now, every) {
        Some(Found::One(a)) => vec![a],
        Some(Found::People(list)) => list,
        None => Vec::new(),
    }
}

enum Found {
    One(Action),
    People(Vec<Action>),
}

fn first(case: &Case, now: jiff::Timestamp, every: bool) -> Option<Found> {
    let one = |a| Some(Found::One(a));
    if case.closed.is_some() {
        return one(Action::Finish);
    }
    let header = case.header.as_ref()?;
    if now >= header.deadline {
        return one(Action::Close);
    }
    if let Some(rid) = case
        .answers
        .keys()
        .find(|r| !case.confirmed.contains_key(r))
    {
        return one(Action::Confirm(*rid));
    }
    let escalation = header.escalation.as_ref()?;
    if case.met() {
        return None;
    }
    let Some((&step, _)) = case.steps.iter().next_back() else {
        return one(Action::StartStep(0));
    };
    let policy = escalation.steps.get(step)?;
    let channels = policy.channels.len();
    let mut all_done = true;
    let mut people = Vec::new();
    for id in escalation.step_people.get(step).into_iter().flatten() {
        let Some(rid) = escalation
            .people
            .get(id)
            .and_then(|p| RecipientId::from_hex(&p.rid))
        else {
            continue;
        };
        if case.has_confirmed(&rid) {
            continue;
        }
        let send = |repeat: u32, channel: usize, attempt: u32| Action::Send {
            step,
            person: id.clone(),
            rid,
            repeat,
            channel,
            attempt,
        };
        let Some(c) = case.cursors.get(&(step, rid)) else {
            let attempt = case
                .cursors
                .iter()
                .filter(|((_, r), _)| *r == rid)
                .map(|(_, c)| c.attempt + 1)
                .max()
                .unwrap_or(0);
            people.push(send(0, 0, attempt));
            all_done = false;
            continue;
        };
        if c.done {
            continue;
        }
        if c.state == SendState::Sending {
            // Written before a send that may not have happened: again, same key.
            people.push(send(c.repeat, c.channel, c.attempt));
            all_done = false;
            continue;
        }
        let unreachable = c.state == SendState::Failed
            || case
                .calls
                .get(&(rid, c.attempt))
                .is_some_and(|call| call.unreachable);
        if unreachable || now >= c.next_at {
            people.push(if c.channel + 1 < channels {
                send(c.repeat, c.channel + 1, c.attempt + 1)
            } else if c.repeat < policy.repeats {
                send(c.repeat + 1, 0, c.attempt + 1)
            } else {
                Action::Done { step, rid }
            });
        }
        all_done = false;
    }
    if !people.is_empty() {
        if !every {
            people.truncate(1);
        }
        return Some(Found::People(people));
    }
    if all_done && step + 1 < escalation.steps.len() {
        return one(Action::StartStep(step + 1));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Step, StepWho};
    use crate::confirm::records::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + s).expect("a time")
    }

    fn rid(n: u8) -> RecipientId {
        RecipientId([n; 8])
    }

    /// Two steps: P on sms then email (wait 60 s, one repeat); then deputy D.
    fn case() -> Case {
        let update = clarion_core::samples::lifecycle("I", "t", &["employees"], at(0)).remove(0);
        let person = |n: u8| CasePerson {
            rid: rid(n).to_hex(),
            addresses: BTreeMap::from([("sms".into(), vec![format!("+4477009001{n:02}")])]),
        };
        let step = |who: &str, channels: &[&str], repeats| Step {
            who: StepWho::Person(who.into()),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            wait_ms: 60_000,
            repeats,
        };
        Case {
            header: Some(Arc::new(Header {
                v: VERSION,
                update,
                source: crate::records::ledger::SourceRef {
                    topic: "t".into(),
                    partition: 0,
                    offset: 0,
                },
                published_ms: None,
                target: "crisis".into(),
                audiences: vec!["employees".into()],
                require: "any".into(),
                within_ms: 3_600_000,
                opened_at: at(0),
                deadline: at(3600),
                drill: false,
                escalation: Some(Escalation {
                    policy: "p".into(),
                    steps: vec![
                        step("P", &["a.sms", "a.email"], 1),
                        step("D", &["a.sms"], 0),
                    ],
                    step_people: vec![vec!["P".into()], vec!["D".into()]],
                    people: BTreeMap::from([("P".into(), person(1)), ("D".into(), person(2))]),
                }),
            })),
            ..Case::default()
        }
    }

    fn cursor(repeat: u32, channel: usize, attempt: u32, state: SendState, t: i64) -> Cursor {
        Cursor {
            v: VERSION,
            repeat,
            channel,
            attempt,
            state,
            at: at(t),
            next_at: at(t) + Duration::from_secs(60),
            reached: state == SendState::Sent,
            done: false,
        }
    }

    fn send(step: usize, person: &str, r: u8, repeat: u32, channel: usize, attempt: u32) -> Action {
        Action::Send {
            step,
            person: person.into(),
            rid: rid(r),
            repeat,
            channel,
            attempt,
        }
    }

    #[test]
    fn steps_walk_channels_then_repeats_then_the_deputy() {
        let mut c = case();
        assert_eq!(next(&c, at(1)), Some(Action::StartStep(0)));
        c.steps.insert(
            0,
            StepStarted {
                v: VERSION,
                at: at(1),
            },
        );
        assert_eq!(next(&c, at(1)), Some(send(0, "P", 1, 0, 0, 0)));
        c.cursors
            .insert((0, rid(1)), cursor(0, 0, 0, SendState::Sending, 1));
        // A send written but not finished is made again, with the same attempt.
        assert_eq!(next(&c, at(2)), Some(send(0, "P", 1, 0, 0, 0)));
        c.cursors
            .insert((0, rid(1)), cursor(0, 0, 0, SendState::Sent, 1));
        // Waiting out the step's wait.
        assert_eq!(next(&c, at(30)), None);
        assert_eq!(next(&c, at(61)), Some(send(0, "P", 1, 0, 1, 1)));
        c.cursors
            .insert((0, rid(1)), cursor(0, 1, 1, SendState::Sent, 61));
        assert_eq!(next(&c, at(121)), Some(send(0, "P", 1, 1, 0, 2)));
        c.cursors
            .insert((0, rid(1)), cursor(1, 0, 2, SendState::Sent, 121));
        c.cursors
            .insert((0, rid(1)), cursor(1, 1, 3, SendState::Sent, 181));
        assert_eq!(
            next(&c, at(241)),
            Some(Action::Done {
                step: 0,
                rid: rid(1)
            })
        );
        let mut done = cursor(1, 1, 3, SendState::Sent, 181);
        done.done = true;
        c.cursors.insert((0, rid(1)), done);
        assert_eq!(next(&c, at(241)), Some(Action::StartStep(1)));
        c.steps.insert(
            1,
            StepStarted {
                v: VERSION,
                at: at(241),
            },
        );
        assert_eq!(next(&c, at(241)), Some(send(1, "D", 2, 0, 0, 0)));
    }

    #[test]
    fn the_people_of_a_step_are_sent_to_together() {
        let mut c = case();
        let h = c.header.as_mut().map(Arc::make_mut).expect("header");
        let e = h.escalation.as_mut().expect("escalation");
        e.step_people[0].push("D".into());
        c.steps.insert(
            0,
            StepStarted {
                v: VERSION,
                at: at(1),
            },
        );
        assert_eq!(
            all(&c, at(1)),
            vec![send(0, "P", 1, 0, 0, 0), send(0, "D", 2, 0, 0, 0)]
        );
        assert_eq!(next(&c, at(1)), Some(send(0, "P", 1, 0, 0, 0)));
        c.cursors
            .insert((0, rid(1)), cursor(0, 0, 0, SendState::Sent, 1));
        assert_eq!(all(&c, at(2)), vec![send(0, "D", 2, 0, 0, 0)]);
    }

    #[test]
    fn an_unreachable_channel_moves_on_at_once() {
        let mut c = case();
        c.steps.insert(
            0,
            StepStarted {
                v: VERSION,
                at: at(1),
            },
        );
        c.cursors
            .insert((0, rid(1)), cursor(0, 0, 0, SendState::Failed, 1));
        assert_eq!(next(&c, at(2)), Some(send(0, "P", 1, 0, 1, 1)));
        // A busy call of the current attempt: the same.
        c.cursors
            .insert((0, rid(1)), cursor(0, 0, 0, SendState::Sent, 1));
        let call = |unreachable| Call {
            v: VERSION,
            status: "busy".into(),
            unreachable,
            provider: None,
            at: at(2),
        };
        c.calls.insert((rid(1), 0), call(true));
        assert_eq!(next(&c, at(2)), Some(send(0, "P", 1, 0, 1, 1)));
        // A late status of an earlier attempt moves nothing.
        c.calls.clear();
        c.cursors
            .insert((0, rid(1)), cursor(0, 1, 1, SendState::Sent, 3));
        c.calls.insert((rid(1), 0), call(true));
        assert_eq!(next(&c, at(4)), None);
    }

    #[test]
    fn a_confirmation_stops_everything_and_the_deadline_closes() {
        let mut c = case();
        c.steps.insert(
            0,
            StepStarted {
                v: VERSION,
                at: at(1),
            },
        );
        c.cursors
            .insert((0, rid(1)), cursor(0, 0, 0, SendState::Sent, 1));
        c.answers.insert(
            rid(1),
            Answer {
                v: VERSION,
                via: Via::Sms,
                provider: None,
                at: at(5),
            },
        );
        assert_eq!(next(&c, at(6)), Some(Action::Confirm(rid(1))));
        c.confirmed.insert(
            rid(1),
            Confirmed {
                v: VERSION,
                via: Via::Sms,
                provider: None,
                at: at(5),
            },
        );
        // `any` is met: no channel, no step, not even after the wait.
        assert_eq!(next(&c, at(1000)), None);
        assert_eq!(next(&c, at(3600)), Some(Action::Close));
    }
}
