//! The in-memory directory (`Directory`): people by id, walked one audience at a
//! time in id order from a cursor that is just the last id seen.

use super::person::*;
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The directory the daemon delivers from: every person by id, shared between the
/// loader (or topic consumer) that updates it and the deliveries that read it.
///
/// People are kept once, in id order; there is no index per audience, so that a
/// million people cost a million entries. [`Directory::members_after`] therefore
/// skips non-members as it goes: walking a whole audience reads the directory once
/// from the cursor on, however the walk is batched.
#[derive(Default)]
pub struct Directory {
    /// Ordered by id (byte order); each entry is its own key, so an id is stored
    /// once, inside its person.
    pub(super) people: RwLock<BTreeSet<ById>>,
}

/// A person ordered and looked up by id, so that a set of them is a map from id
/// to person without a second copy of every id.
#[derive(Clone)]
pub(super) struct ById(pub(super) Arc<Person>);

impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    // Must agree with `str`'s order, which `Borrow<str>` lookups use.
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

impl fmt::Debug for Directory {
    // Not derived: a derived `Debug` would print every person, addresses included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Directory")
            .field("people", &self.len())
            .finish()
    }
}

impl Directory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory of `people`. When two share an id, the later one is kept, as if
    /// each were [`Directory::upsert`]ed in turn. The daemon loads with
    /// [`load_file`] or follows a topic; this is the tests' way in.
    #[cfg(test)]
    pub fn from_people(people: impl IntoIterator<Item = Person>) -> Self {
        let mut set = BTreeSet::new();
        for person in people {
            set.replace(ById(Arc::new(person)));
        }
        Self {
            people: RwLock::new(set),
        }
    }

    /// Adds `person`, or replaces the person with their id. The caller
    /// [`validate`]s first.
    pub fn upsert(&self, person: Person) {
        self.write().replace(ById(Arc::new(person)));
    }

    /// Removes the person with this id, if there is one.
    pub fn remove(&self, id: &str) {
        self.write().remove(id);
    }

    /// The person with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Person>> {
        self.read().get(id).map(|p| p.0.clone())
    }

    /// How many people the directory holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the directory holds no one.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// How many people belong to `audience`. Reads the whole directory (O(n), some
    /// 20 ms per million people): meant for progress reports and metrics, not for
    /// every delivery.
    pub fn members(&self, audience: &str) -> usize {
        self.read()
            .iter()
            .filter(|p| p.0.belongs_to(audience))
            .count()
    }

    /// Up to `limit` members of `audience` with id strictly greater than `after`
    /// (all when None), in id order (byte order of the id).
    ///
    /// Pass the last id of one batch as `after` to get the next; fewer than `limit`
    /// means the walk is done. The cursor is only an id, so it survives restarts and
    /// the removal of the person it names. Starts at `after` without reading the
    /// people before it, then skips non-members, so a rare audience's batch may read
    /// far; the whole walk reads the directory once.
    pub fn members_after(
        &self,
        audience: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<Arc<Person>> {
        if limit == 0 {
            return Vec::new();
        }
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.read()
            .range::<str, _>((start, Bound::Unbounded))
            .filter(|p| p.0.belongs_to(audience))
            .take(limit)
            .map(|p| p.0.clone())
            .collect()
    }

    // A panic elsewhere while holding the lock cannot leave the set half-changed
    // (every change is one `BTreeSet` call), so a poisoned lock is still usable.
    pub(super) fn read(&self) -> RwLockReadGuard<'_, BTreeSet<ById>> {
        self.people.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeSet<ById>> {
        self.people.write().unwrap_or_else(PoisonError::into_inner)
    }
}
