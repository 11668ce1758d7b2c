//! What a service remembers per idempotency key, for a window after it first saw the key, as
//! real services do (Stripe keeps a key 24 hours). Past the window a key is new again: a
//! request with it performs a new effect. Expired keys are evicted as requests come, a bounded
//! batch at a time, oldest first, so that memory follows the keys seen within one window.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How long a service remembers a key unless told otherwise.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Expired keys evicted at most per access: more than the one key an access can add, so
/// eviction keeps up, and few enough that no request waits on a long sweep.
const EVICT_BATCH: usize = 64;

/// Values by idempotency key, each kept for `window` after its key was first seen.
#[derive(Debug)]
pub(crate) struct Keys<V> {
    window: Duration,
    entries: HashMap<String, Entry<V>>,
    /// Keys by when they were first seen, oldest first; a key seen again after it expired is
    /// here twice, and the older mention is skipped when it comes up.
    seen: VecDeque<(Instant, String)>,
}

#[derive(Debug)]
struct Entry<V> {
    first_seen: Instant,
    value: V,
}

impl<V> Default for Keys<V> {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW)
    }
}

impl<V> Keys<V> {
    /// Keys kept for `window` each.
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, entries: HashMap::new(), seen: VecDeque::new() }
    }

    /// The value of `key`, made by `make` when the key is new or its window has passed.
    pub(crate) fn entry(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let now = Instant::now();
        self.evict(now);
        let live = self.entries.get(key).is_some_and(|entry| !self.expired(entry, now));
        if !live {
            self.seen.push_back((now, key.to_owned()));
            self.entries.insert(key.to_owned(), Entry { first_seen: now, value: make() });
        }
        &mut self.entries.get_mut(key).expect("present or just inserted").value
    }

    /// The value of `key` while its window lasts.
    pub(crate) fn get(&mut self, key: &str) -> Option<&mut V> {
        let now = Instant::now();
        self.evict(now);
        let window = self.window;
        self.entries.get_mut(key).filter(|entry| now < entry.first_seen + window).map(|entry| &mut entry.value)
    }

    /// The keys within their window, with their values.
    pub(crate) fn live(&self) -> impl Iterator<Item = (&str, &V)> {
        let now = Instant::now();
        self.entries.iter().filter(move |(_, entry)| !self.expired(entry, now)).map(|(key, e)| (key.as_str(), &e.value))
    }

    /// Keys held, expired ones not yet evicted included.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.entries.len()
    }

    fn expired(&self, entry: &Entry<V>, now: Instant) -> bool {
        now >= entry.first_seen + self.window
    }

    /// Removes up to [`EVICT_BATCH`] expired keys, oldest first.
    fn evict(&mut self, now: Instant) {
        for _ in 0..EVICT_BATCH {
            match self.seen.front() {
                Some((first_seen, _)) if now >= *first_seen + self.window => {}
                _ => return,
            }
            let (first_seen, key) = self.seen.pop_front().expect("looked at above");
            // Only the entry this mention made: the key may have been seen anew since.
            if self.entries.get(&key).is_some_and(|entry| entry.first_seen == first_seen) {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_key_is_remembered_for_its_window_and_then_is_new() {
        let mut keys = Keys::new(24 * HOUR);
        *keys.entry("a", || 0) += 1;
        tokio::time::advance(23 * HOUR).await;
        *keys.entry("a", || 0) += 1;
        assert_eq!(keys.get("a").copied(), Some(2), "within the window: the same entry");
        tokio::time::advance(HOUR).await;
        assert_eq!(keys.get("a"), None, "24 hours after it was first seen");
        assert_eq!(*keys.entry("a", || 10), 10, "a new entry");
        tokio::time::advance(23 * HOUR).await;
        assert_eq!(keys.get("a").copied(), Some(10), "the new entry has a window of its own");
        assert_eq!(keys.live().count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_evicted_in_bounded_batches_as_requests_come() {
        let mut keys = Keys::new(HOUR);
        for i in 0..1_000 {
            keys.entry(&format!("old-{i}"), || ());
        }
        tokio::time::advance(HOUR).await;
        assert_eq!(keys.live().count(), 0, "expired keys are not answered");
        keys.entry("new-0", || ());
        assert_eq!(keys.held(), 1_000 - EVICT_BATCH + 1, "one batch per access");
        for i in 1..20 {
            keys.entry(&format!("new-{i}"), || ());
        }
        assert_eq!(keys.held(), 20, "all the expired ones gone within a few accesses");
        assert_eq!(keys.live().count(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_seen_again_after_it_expired_is_not_evicted_by_its_old_mention() {
        let mut keys = Keys::new(HOUR);
        // More than a batch ahead of it, so its old mention outlives its entry.
        for i in 0..EVICT_BATCH + 10 {
            keys.entry(&format!("x-{i}"), || 0);
        }
        keys.entry("a", || 1);
        tokio::time::advance(HOUR).await;
        assert_eq!(*keys.entry("a", || 2), 2, "expired, so made anew");
        // This access evicts the rest, the old mention of "a" among them.
        keys.entry("b", || 0);
        assert_eq!(keys.get("a").copied(), Some(2));
        assert_eq!(keys.held(), 2);
    }
}
