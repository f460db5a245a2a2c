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

/// A topic-partition.
pub type Tp = (String, i32);

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

#[derive(Debug, Default)]
struct Partition {
    generation: u64,
    /// Admitted offsets in order, with whether each is resolved.
    pending: VecDeque<(i64, bool)>,
}

#[derive(Debug, Default)]
struct State {
    partitions: HashMap<Tp, Partition>,
    next_generation: u64,
}

/// Offset bookkeeping for every partition this consumer owns.
#[derive(Debug, Default)]
pub struct Tracker {
    state: Mutex<State>,
    changed: Condvar,
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
    /// Offsets of one partition must be admitted in increasing order.
    pub fn admit(&self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let mut st = self.lock();
        let next = st.next_generation;
        let p = st
            .partitions
            .entry((topic.to_string(), partition))
            .or_insert_with(|| Partition {
                generation: next,
                pending: VecDeque::new(),
            });
        let generation = p.generation;
        if generation == next {
            st.next_generation += 1;
        }
        let p = st
            .partitions
            .get_mut(&(topic.to_string(), partition))
            .expect("just inserted");
        p.pending.push_back((offset, false));
        Ticket {
            topic: topic.to_string(),
            partition,
            offset,
            generation,
        }
    }

    /// Marks an event resolved. Returns the offset to store (next to read) when the
    /// contiguous resolved prefix grew, `None` when it did not or when the partition
    /// has been revoked since the event was admitted.
    pub fn complete(&self, ticket: &Ticket) -> Option<i64> {
        let mut st = self.lock();
        let p = st
            .partitions
            .get_mut(&(ticket.topic.clone(), ticket.partition))?;
        if p.generation != ticket.generation {
            return None;
        }
        let idx = p
            .pending
            .binary_search_by_key(&ticket.offset, |(o, _)| *o)
            .ok()?;
        p.pending[idx].1 = true;
        let mut last = None;
        while let Some(&(o, true)) = p.pending.front() {
            last = Some(o);
            p.pending.pop_front();
        }
        drop(st);
        self.changed.notify_all();
        last.map(|o| o + 1)
    }

    /// Events admitted and not yet resolved, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.lock()
            .partitions
            .values()
            .map(|p| p.pending.iter().filter(|(_, done)| !done).count())
            .sum()
    }

    /// Forgets freshly assigned partitions' old state, if any: after an assign,
    /// librdkafka starts from the committed offset again.
    pub fn assign(&self, tps: &[Tp]) {
        let mut st = self.lock();
        for tp in tps {
            st.partitions.remove(tp);
        }
    }

    /// Waits (blocking the calling thread) until the given partitions have nothing in
    /// flight or `timeout` passes, then forgets them. Returns, per partition, the
    /// offsets abandoned (they will be redelivered to the partition's next owner).
    pub fn revoke(&self, tps: &[Tp], timeout: Duration) -> Vec<(Tp, Vec<i64>)> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            let busy = tps.iter().any(|tp| {
                st.partitions
                    .get(tp)
                    .is_some_and(|p| p.pending.iter().any(|(_, done)| !done))
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
        let mut abandoned = Vec::new();
        for tp in tps {
            if let Some(p) = st.partitions.remove(tp) {
                let left: Vec<i64> = p
                    .pending
                    .iter()
                    .filter(|(_, done)| !done)
                    .map(|(o, _)| *o)
                    .collect();
                if !left.is_empty() {
                    abandoned.push((tp.clone(), left));
                }
            }
        }
        abandoned
    }
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
        assert_eq!(t.complete(&c), None);
        assert_eq!(t.complete(&b), None);
        assert_eq!(t.in_flight(), 1);
        // 10 finishing releases all three: the next offset to read is 13.
        assert_eq!(t.complete(&a), Some(13));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let t = Tracker::new();
        let a0 = t.admit("t", 0, 5);
        let a1 = t.admit("t", 1, 7);
        assert_eq!(t.complete(&a1), Some(8));
        assert_eq!(t.complete(&a0), Some(6));
    }

    #[test]
    fn stale_completion_after_revoke_and_reassign_is_ignored() {
        let t = Tracker::new();
        let old = t.admit("t", 0, 3);
        let abandoned = t.revoke(&[("t".into(), 0)], Duration::ZERO);
        assert_eq!(abandoned, vec![(("t".to_string(), 0), vec![3])]);
        t.assign(&[("t".into(), 0)]);
        let new = t.admit("t", 0, 3);
        // The old in-flight copy finishing must not resolve the new one.
        assert_eq!(t.complete(&old), None);
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.complete(&new), Some(4));
    }

    #[test]
    fn revoke_waits_for_in_flight_work() {
        let t = std::sync::Arc::new(Tracker::new());
        let a = t.admit("t", 0, 1);
        let t2 = t.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t2.complete(&a)
        });
        let abandoned = t.revoke(&[("t".into(), 0)], Duration::from_secs(30));
        assert!(abandoned.is_empty());
        // The completion may land before or after the revoke forgot the partition;
        // either way nothing was abandoned.
        let _ = h.join();
    }
}
