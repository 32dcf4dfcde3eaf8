//! `RetryBackoff`: consecutive reconcile failures per app, for exponential retry delays.
//!
//! An app's count starts again after any reconcile that ends without an error (Applied
//! or Degraded). An app deleted while failing is never reconciled again, so nothing
//! would reset it: an entry with no failure for twice the longest delay is stale (a
//! failing app fails at least that often) and is dropped, which bounds the map by the
//! apps failing now.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest delay between retries.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// An entry without a failure for this long belongs to an app that no longer fails.
const STALE_AFTER: Duration = Duration::from_secs(2 * MAX_DELAY.as_secs());

struct Failures {
    consecutive: u32,
    last: Instant,
}

pub struct RetryBackoff<K> {
    entries: Mutex<HashMap<K, Failures>>,
}

impl<K> Default for RetryBackoff<K> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq> RetryBackoff<K> {
    /// Counts a failure of `key` at `now`; returns how many in a row and the delay
    /// before the next try: 1 s, 2 s, 4 s, … at most [`MAX_DELAY`].
    pub fn failed(&self, key: K, now: Instant) -> (u32, Duration) {
        let Ok(mut entries) = self.entries.lock() else {
            return (1, Duration::from_secs(1));
        };
        entries.retain(|_, f| now.saturating_duration_since(f.last) < STALE_AFTER);
        let f = entries.entry(key).or_insert(Failures {
            consecutive: 0,
            last: now,
        });
        f.consecutive = f.consecutive.saturating_add(1);
        f.last = now;
        let delay = Duration::from_secs(1u64 << (f.consecutive - 1).min(9)).min(MAX_DELAY);
        (f.consecutive, delay)
    }

    /// `key` reconciled without an error: its next failure is the first again.
    pub fn succeeded(&self, key: &K) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }

    /// How many apps have failures on record.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_restart_after_a_success() {
        let b = RetryBackoff::default();
        let t = Instant::now();
        let delays: Vec<u64> = (0..11).map(|_| b.failed("a", t).1.as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        b.succeeded(&"a");
        assert_eq!(b.failed("a", t), (1, Duration::from_secs(1)));
    }

    #[test]
    fn apps_that_stopped_failing_are_forgotten() {
        let b = RetryBackoff::default();
        let t = Instant::now();
        b.failed("deleted", t);
        b.failed("still failing", t);
        assert_eq!(b.len(), 2);
        // The failing one keeps failing at most MAX_DELAY apart; the deleted one is
        // never reconciled again.
        let mut now = t;
        for _ in 0..3 {
            now += MAX_DELAY;
            b.failed("still failing", now);
        }
        assert_eq!(b.len(), 1);
        assert_eq!(b.failed("still failing", now).0, 5);
        assert_eq!(b.failed("deleted", now).0, 1, "a stale count starts again");
    }
}
