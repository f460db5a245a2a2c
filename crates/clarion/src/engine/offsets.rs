//! Which offsets may be committed: per partition, only the end of the contiguous run
//! of resolved events. An event that finishes early (another incident, a fast
//! target) waits for every earlier event of its partition before its offset moves
//! the commit point, so a crash never skips an unresolved update.
//!
//! Pure bookkeeping, no Kafka calls: the caller stores what [`Tracker::complete`]
//! returns. Offsets returned are the *next* offset to read (last resolved + 1),
//! ready for `store_offsets`, which stores them as given.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use crate::kafka::Tp;

/// Proof that an event was admitted; handed back on completion. The generation
/// tells a completion from before a revoke apart from one after a re-assignment of
/// the same partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

/// One admitted offset: how many of its admissions are unresolved, and when the
/// first was admitted.
#[derive(Debug, Clone, Copy)]
struct Pending {
    offset: i64,
    unresolved: u32,
    since: Instant,
}

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    /// Admitted offsets in increasing order, each with how many of its admissions
    /// are still unresolved (0: resolved). Usually one admission per offset; more
    /// when the consumer hands an offset out again (a seek or an offset reset).
    pending: VecDeque<Pending>,
    /// The last offset [`Tracker::complete`] released for storing, if any.
    released: Option<i64>,
}

#[derive(Debug, Default)]
struct State {
    partitions: HashMap<Tp, Partition>,
    next_generation: u64,
    /// Admitted and not yet resolved, over all partitions (kept, not counted: it is
    /// read on every admission and completion).
    unresolved: usize,
    /// Admitted and not yet released, over all partitions.
    window: usize,
}

/// Offset bookkeeping for every partition this consumer owns.
#[derive(Debug, Default)]
pub struct Tracker {
    state: Mutex<State>,
    changed: Condvar,
    /// Notified when window room is given back (a release or a revoke), for the
    /// consumer loop that waits for it.
    pub room: tokio::sync::Notify,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the maps half-updated in a way
        // that loses data (each method makes one change), so recover from poisoning.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that the event at `offset` was consumed and is now in flight.
    ///
    /// Offsets normally arrive in increasing order, but nothing here depends on it:
    /// an offset reset or a seek can hand out an earlier offset, or the same one
    /// again. The offset is placed in order, and a repeated one counts as resolved
    /// only when all its admissions are.
    pub fn admit(&self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let mut st = self.lock();
        let next = st.next_generation;
        let key = (topic.to_string(), partition);
        let p = st.partitions.entry(key).or_insert_with(|| Partition {
            generation: next,
            pending: VecDeque::new(),
            released: None,
        });
        let generation = p.generation;
        let at = p.pending.partition_point(|e| e.offset < offset);
        match p.pending.get_mut(at) {
            Some(e) if e.offset == offset => e.unresolved += 1,
            _ => p.pending.insert(
                at,
                Pending {
                    offset,
                    unresolved: 1,
                    since: Instant::now(),
                },
            ),
        }
        st.window += 1;
        if generation == next {
            st.next_generation += 1;
        }
        st.unresolved += 1;
        Ticket {
            topic: topic.to_string(),
            partition,
            offset,
            generation,
        }
    }

    /// Marks an event resolved. Returns the offset to store (next to read) when the
    /// contiguous resolved prefix grew past what was released before, `None` when it
    /// did not or when the partition has been revoked since the event was admitted.
    /// The released offset never goes backwards: after a reset to earlier offsets,
    /// the commit point stays where it was until the consumer passes it again.
    pub fn complete(&self, ticket: &Ticket) -> Completion {
        let mut st = self.lock();
        let Some(p) = st
            .partitions
            .get_mut(&(ticket.topic.clone(), ticket.partition))
        else {
            return Completion::default();
        };
        if p.generation != ticket.generation {
            return Completion::default();
        }
        let Ok(idx) = p.pending.binary_search_by_key(&ticket.offset, |e| e.offset) else {
            return Completion::default();
        };
        if p.pending[idx].unresolved == 0 {
            return Completion::default();
        }
        p.pending[idx].unresolved -= 1;
        let mut last = None;
        let mut freed = 0;
        while let Some(&Pending {
            offset,
            unresolved: 0,
            ..
        }) = p.pending.front()
        {
            last = Some(offset);
            p.pending.pop_front();
            freed += 1;
        }
        let next = last
            .map(|o| o + 1)
            .filter(|n| p.released.is_none_or(|r| *n > r));
        if next.is_some() {
            p.released = next;
        }
        st.unresolved -= 1;
        st.window -= freed;
        drop(st);
        self.changed.notify_all();
        if freed > 0 {
            self.room.notify_waiters();
        }
        Completion { store: next, freed }
    }

    /// Admitted offsets not yet released for commit, resolved or not: what a crash
    /// would replay. The admission bound counts these.
    pub fn window(&self) -> usize {
        self.lock().window
    }

    /// How long the oldest unresolved update has been waiting, if any.
    pub fn oldest_unresolved(&self) -> Option<Duration> {
        self.lock()
            .partitions
            .values()
            .flat_map(|p| p.pending.iter().filter(|e| e.unresolved > 0))
            .map(|e| e.since.elapsed())
            .max()
    }

    /// Events admitted and not yet resolved, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.lock().unresolved
    }

    /// The offset released for storing of every tracked partition, so a store that
    /// failed (or raced an assignment) can be made again: storing the same offset
    /// twice is harmless.
    pub fn released(&self) -> Vec<(Tp, i64)> {
        self.lock()
            .partitions
            .iter()
            .filter_map(|(tp, p)| p.released.map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Forgets freshly assigned partitions' old state, if any: after an assign,
    /// librdkafka starts from the committed offset again.
    pub fn assign(&self, tps: &[Tp]) {
        let mut st = self.lock();
        for tp in tps {
            forget(&mut st, tp);
        }
        drop(st);
        self.room.notify_waiters();
    }

    /// Waits (blocking the calling thread) until the given partitions have nothing in
    /// flight or `timeout` passes, then forgets them. Returns what to commit before
    /// handing them over, and, per partition, the offsets abandoned (they will be
    /// redelivered to the partition's next owner).
    pub fn revoke(&self, tps: &[Tp], timeout: Duration) -> Revoked {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            let busy = tps.iter().any(|tp| {
                st.partitions
                    .get(tp)
                    .is_some_and(|p| p.pending.iter().any(|e| e.unresolved > 0))
            });
            let now = Instant::now();
            if !busy || now >= deadline {
                break;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        let mut revoked = Revoked::default();
        for tp in tps {
            if let Some(o) = st.partitions.get(tp).and_then(|p| p.released) {
                revoked.commit.push((tp.clone(), o));
            }
            let left = forget(&mut st, tp);
            if !left.is_empty() {
                revoked.abandoned.push((tp.clone(), left));
            }
        }
        drop(st);
        self.room.notify_waiters();
        revoked
    }
}

/// What a completion changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The offset to store, when the released prefix grew.
    pub store: Option<i64>,
    /// Admitted offsets released by this completion: window room given back.
    pub freed: usize,
}

/// What a revoke leaves to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Revoked {
    /// The next offset to read of each partition that resolved anything: commit
    /// these before the hand-over.
    pub commit: Vec<(Tp, i64)>,
    /// Offsets still unresolved when the drain ended.
    pub abandoned: Vec<(Tp, Vec<i64>)>,
}

/// Drops a partition's state; returns its unresolved offsets, which no longer count
/// as in flight (their completions will be ignored).
fn forget(st: &mut State, tp: &Tp) -> Vec<i64> {
    let Some(p) = st.partitions.remove(tp) else {
        return Vec::new();
    };
    let left: Vec<i64> = p
        .pending
        .iter()
        .filter(|e| e.unresolved > 0)
        .map(|e| e.offset)
        .collect();
    st.unresolved -= p
        .pending
        .iter()
        .map(|e| e.unresolved as usize)
        .sum::<usize>();
    st.window -= p.pending.len();
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_prefix_moves() {
        let t = Tracker::new();
        let a = t.admit("t", 0, 10);
        let b = t.admit("t", 0, 11);
        let c = t.admit("t", 0, 12);
        // Out of order: 12 and 11 finish before 10.
        assert_eq!(t.complete(&c).store, None);
        assert_eq!(t.complete(&b).store, None);
        assert_eq!(t.in_flight(), 1);
        // 10 finishing releases all three: the next offset to read is 13.
        assert_eq!(t.complete(&a).store, Some(13));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn an_offset_reset_backwards_is_tracked_and_never_moves_the_commit_back() {
        let t = Tracker::new();
        let a = t.admit("t", 0, 10);
        let b = t.admit("t", 0, 11);
        assert_eq!(t.complete(&a).store, Some(11));
        // The consumer is reset to an earlier offset while 11 is still in flight.
        let r5 = t.admit("t", 0, 5);
        let r6 = t.admit("t", 0, 6);
        assert_eq!(t.in_flight(), 3);
        // Found by position, not assumed to be last: each completes exactly once.
        assert_eq!(t.complete(&r6).store, None);
        assert_eq!(
            t.complete(&r6).store,
            None,
            "a second completion is ignored"
        );
        assert_eq!(t.in_flight(), 2);
        // 5 and 6 resolved: behind what was already released, so nothing to store.
        assert_eq!(t.complete(&r5).store, None);
        assert_eq!(t.complete(&b).store, Some(12));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn an_offset_handed_out_twice_resolves_when_both_copies_do() {
        let t = Tracker::new();
        let first = t.admit("t", 0, 3);
        let again = t.admit("t", 0, 3);
        assert_eq!(t.in_flight(), 2);
        assert_eq!(t.complete(&first).store, None);
        assert_eq!(t.complete(&again).store, Some(4));
        assert_eq!(t.in_flight(), 0);
        // A revoke with a doubly admitted offset counts both out of the in-flight total.
        let _x = t.admit("t", 0, 4);
        let _y = t.admit("t", 0, 4);
        let revoked = t.revoke(&[("t".into(), 0)], Duration::ZERO);
        assert_eq!(revoked.abandoned, vec![(("t".to_string(), 0), vec![4])]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn the_window_counts_resolved_offsets_behind_an_unresolved_one() {
        let t = Tracker::new();
        let a = t.admit("t", 0, 1);
        let b = t.admit("t", 0, 2);
        let c = t.admit("t", 0, 3);
        assert_eq!(t.complete(&b).freed, 0);
        assert_eq!(t.complete(&c).freed, 0);
        // Resolved, but a crash would replay them: they still take window room.
        assert_eq!((t.in_flight(), t.window()), (1, 3));
        assert!(t.oldest_unresolved().is_some());
        assert_eq!(
            t.complete(&a),
            Completion {
                store: Some(4),
                freed: 3
            }
        );
        assert_eq!((t.in_flight(), t.window()), (0, 0));
        assert_eq!(t.oldest_unresolved(), None);
    }

    #[test]
    fn partitions_are_independent() {
        let t = Tracker::new();
        let a0 = t.admit("t", 0, 5);
        let a1 = t.admit("t", 1, 7);
        assert_eq!(t.complete(&a1).store, Some(8));
        assert_eq!(t.complete(&a0).store, Some(6));
    }

    #[test]
    fn stale_completion_after_revoke_and_reassign_is_ignored() {
        let t = Tracker::new();
        let old = t.admit("t", 0, 3);
        let revoked = t.revoke(&[("t".into(), 0)], Duration::ZERO);
        assert_eq!(revoked.abandoned, vec![(("t".to_string(), 0), vec![3])]);
        assert!(revoked.commit.is_empty());
        t.assign(&[("t".into(), 0)]);
        let new = t.admit("t", 0, 3);
        // The old in-flight copy finishing must not resolve the new one.
        assert_eq!(t.complete(&old).store, None);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(&new).store, Some(4));
    }

    #[test]
    fn revoke_waits_for_in_flight_work() {
        let t = std::sync::Arc::new(Tracker::new());
        let a = t.admit("t", 0, 1);
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t2.complete(&a).store
        });
        let revoked = t.revoke(&[("t".into(), 0)], Duration::from_secs(30));
        assert!(revoked.abandoned.is_empty());
        // What the drain resolved is handed back for a commit before the hand-over.
        assert_eq!(revoked.commit, vec![(("t".to_string(), 0), 2)]);
        // The completion may land before or after the revoke forgot the partition;
        // either way nothing was abandoned.
        let _ = h.join();
    }
}
