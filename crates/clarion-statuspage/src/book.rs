//! The page's state as a process holds it (`Book`): the whole timeline of every
//! incident the page shows (the open ones, and the `history` most recently closed),
//! and of every other incident only where its record is and how far it got.
//!
//! That is what keeps regeneration flat: the page is rendered from the shown
//! timelines alone, O(open incidents + history), however many incidents the page
//! topic holds. An incident that drops out of the history keeps its own page on the
//! origins as it was last written.

use crate::model::Timeline;
use jiff::Timestamp;
use std::collections::HashMap;
use std::sync::Arc;

/// Where a timeline's record is (its topic's partition and offset), for reading
/// back an incident that is no longer shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub partition: i32,
    pub offset: i64,
}

/// What is known of every incident, shown or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The highest sequence its timeline holds.
    pub sequence: u64,
    /// Where its latest record is, when it was read from the topic.
    pub at: Option<Location>,
}

/// The shown timelines and the index of all.
#[derive(Debug, Default)]
pub struct Book {
    history: usize,
    shown: HashMap<String, Arc<Timeline>>,
    index: HashMap<String, Entry>,
}

impl Book {
    /// A book that keeps `history` closed incidents besides the open ones.
    pub fn new(history: usize) -> Book {
        Book {
            history: history.max(1),
            ..Book::default()
        }
    }

    /// Takes in a timeline (a record read back, or one just written): merged with
    /// what is held, so that the order records arrive in does not matter. Returns
    /// true when what the page shows changed.
    pub fn apply(&mut self, timeline: Timeline, at: Option<Location>) -> bool {
        let id = timeline.incident_id.clone();
        let sequence = timeline.latest().sequence;
        let entry = self
            .index
            .entry(id.clone())
            .or_insert(Entry { sequence, at });
        entry.sequence = entry.sequence.max(sequence);
        if at.is_some() {
            entry.at = at;
        }
        let merged = match self.shown.get(&id) {
            Some(have) => {
                let mut t = (**have).clone();
                if !t.merge_all(timeline) {
                    return false;
                }
                t
            }
            None => timeline,
        };
        self.shown.insert(id.clone(), Arc::new(merged));
        self.evict();
        // Changed unless the incident came in only to be evicted at once (a
        // closed incident older than the whole history).
        self.shown.contains_key(&id)
    }

    /// Drops the oldest closed timelines beyond `history`.
    fn evict(&mut self) {
        let mut closed: Vec<(Timestamp, &String)> = self
            .shown
            .iter()
            .filter_map(|(id, t)| t.closed_at().map(|at| (at, id)))
            .collect();
        if closed.len() <= self.history {
            return;
        }
        closed.sort();
        let drop: Vec<String> = closed[..closed.len() - self.history]
            .iter()
            .map(|(_, id)| (*id).clone())
            .collect();
        for id in drop {
            self.shown.remove(&id);
        }
    }

    /// The timeline of a shown incident.
    pub fn get(&self, incident_id: &str) -> Option<&Arc<Timeline>> {
        self.shown.get(incident_id)
    }

    /// What is known of any incident.
    pub fn entry(&self, incident_id: &str) -> Option<&Entry> {
        self.index.get(incident_id)
    }

    /// True when the page's state already includes this update of this incident.
    pub fn reflects(&self, incident_id: &str, update_id: &str, sequence: u64) -> bool {
        match self.shown.get(incident_id) {
            Some(t) => t.has(update_id, sequence),
            // Not shown: closed and out of the history. It cannot have been
            // evicted before this update reached it unless a later one did.
            None => self
                .index
                .get(incident_id)
                .is_some_and(|e| e.sequence >= sequence),
        }
    }

    /// The shown timelines, in no particular order.
    pub fn shown(&self) -> Vec<Arc<Timeline>> {
        self.shown.values().cloned().collect()
    }

    /// How many incidents the index knows, shown or not.
    pub fn known(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PublicUpdate;
    use clarion_core::{Impact, Status};

    fn t(id: &str, seq: u64, status: Status, minute: i64) -> Timeline {
        let at: Timestamp = "2026-11-28T10:00:00Z".parse().expect("ts");
        Timeline::new(
            id,
            PublicUpdate {
                update_id: format!("{id}-{seq}"),
                sequence: seq,
                status,
                impact: Impact::Minor,
                title: id.into(),
                body: "b".into(),
                components: Vec::new(),
                links: Vec::new(),
                occurred_at: at + jiff::SignedDuration::from_mins(minute),
            },
        )
    }

    #[test]
    fn open_incidents_stay_and_only_the_history_of_closed_ones_is_kept() {
        let mut book = Book::new(2);
        assert!(book.apply(t("open", 1, Status::Investigating, 0), None));
        for (i, id) in ["c1", "c2", "c3"].iter().enumerate() {
            book.apply(t(id, 1, Status::Resolved, i as i64 + 1), None);
        }
        let mut shown: Vec<String> = book.shown().iter().map(|t| t.incident_id.clone()).collect();
        shown.sort();
        assert_eq!(shown, ["c2", "c3", "open"]);
        assert_eq!(book.known(), 4);
        // An old closed incident read back at start is indexed, not shown.
        let loc = Location {
            partition: 0,
            offset: 9,
        };
        assert!(!book.apply(t("ancient", 3, Status::Resolved, -100), Some(loc)));
        assert_eq!(book.entry("ancient").and_then(|e| e.at), Some(loc));
        assert!(book.reflects("ancient", "ancient-2", 2));
        assert!(!book.reflects("ancient", "ancient-4", 4));
        assert!(book.reflects("open", "open-1", 1));
        assert!(!book.reflects("open", "open-2", 2));
        // The same record again changes nothing.
        assert!(!book.apply(t("open", 1, Status::Investigating, 0), None));
        let mut more = t("open", 2, Status::Identified, 5);
        more.merge(t("open", 1, Status::Investigating, 0).updates.remove(0));
        assert!(book.apply(more, None));
        assert_eq!(book.get("open").map(|t| t.updates.len()), Some(2));
    }
}
