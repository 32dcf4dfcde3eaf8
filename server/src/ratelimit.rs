//! Token-bucket rate limits.
//!
//! A `TokenBucket` refills lazily: it stores the tokens it had and when, and works out
//! the rest on the next check. No timers, O(1) a check. Buckets keyed by connection live
//! inside the connection and die with it; buckets keyed by user or IP are shared in a
//! sharded map and evicted once they have refilled completely, since a full bucket is
//! indistinguishable from a new one. That bounds memory by the set of keys that were
//! active within one refill period.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus_client::registry::Registry;
use switchboard_ops::metrics::CounterByName;
use switchboard_spec::{Bucket, Charge, RateLimitKey};

#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A bucket starts full: the first burst is allowed.
    pub fn full(bucket: &Bucket, now: Instant) -> Self {
        Self {
            tokens: f64::from(bucket.capacity),
            updated: now,
        }
    }

    fn refill(&mut self, bucket: &Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * bucket.refill_per_second).min(f64::from(bucket.capacity));
        self.updated = now;
    }

    /// How long until `cost` tokens are there; zero when they are there now.
    fn wait_for(&self, bucket: &Bucket, cost: u32) -> Duration {
        let missing = f64::from(cost) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / bucket.refill_per_second)
        }
    }

    fn is_full(&self, bucket: &Bucket, now: Instant) -> bool {
        let mut probe = self.clone();
        probe.refill(bucket, now);
        probe.tokens >= f64::from(bucket.capacity)
    }
}

/// A charge that could not be paid.
#[derive(Clone, Debug, PartialEq)]
pub struct Limited {
    pub bucket: String,
    /// The bucket's position in the app's list: its metric, resolved at start-up.
    pub bucket_index: usize,
    /// Milliseconds until the whole charge would succeed, rounded up.
    pub retry_after_ms: u64,
}

/// Buckets keyed by connection, owned by the connection's reader (no lock needed).
#[derive(Default)]
pub struct ConnectionBuckets {
    buckets: Vec<Option<TokenBucket>>,
}

/// Shared buckets for `key: user` and `key: ip`, plus the definitions of all buckets.
pub struct RateLimiter {
    buckets: Vec<Bucket>,
    shared: DashMap<(usize, SharedKey), Arc<Mutex<TokenBucket>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum SharedKey {
    User(Arc<str>),
    Ip(IpAddr),
}

/// Who is being charged.
pub struct Caller<'a> {
    pub user_id: &'a Arc<str>,
    pub ip: IpAddr,
}

impl RateLimiter {
    pub fn new(buckets: Vec<Bucket>) -> Self {
        Self {
            buckets,
            shared: DashMap::new(),
        }
    }

    /// Charges every bucket of `charges`, or none of them. On refusal, the wait is the
    /// longest any of the buckets needs, so a retry after it succeeds (if nothing else
    /// drew from the buckets meanwhile).
    pub fn charge(
        &self,
        charges: &[Charge],
        own: &mut ConnectionBuckets,
        caller: &Caller<'_>,
        now: Instant,
    ) -> Result<(), Limited> {
        if charges.is_empty() {
            return Ok(());
        }
        // Take the shared buckets' locks in one global order so two callers charging the
        // same pair of buckets cannot deadlock.
        let mut shared: Vec<(usize, Arc<Mutex<TokenBucket>>)> = Vec::new();
        let mut keys: Vec<(usize, SharedKey, usize)> = charges
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let key = match self.buckets[c.bucket].key {
                    RateLimitKey::Connection => return None,
                    RateLimitKey::User => SharedKey::User(caller.user_id.clone()),
                    RateLimitKey::Ip => SharedKey::Ip(caller.ip),
                };
                Some((c.bucket, key, i))
            })
            .collect();
        keys.sort();
        for (bucket, key, i) in keys {
            let def = &self.buckets[bucket];
            let entry = self
                .shared
                .entry((bucket, key))
                .or_insert_with(|| Arc::new(Mutex::new(TokenBucket::full(def, now))))
                .clone();
            shared.push((i, entry));
        }
        let mut guards: Vec<_> = shared
            .iter()
            .map(|(i, m)| (*i, m.lock().unwrap_or_else(|p| p.into_inner())))
            .collect();

        if own.buckets.len() < self.buckets.len() {
            own.buckets.resize(self.buckets.len(), None);
        }
        // Pass 1: refill and find the longest wait.
        let mut worst: Option<(Duration, usize)> = None;
        for (i, c) in charges.iter().enumerate() {
            let def = &self.buckets[c.bucket];
            let wait = match guards.iter_mut().find(|(j, _)| *j == i) {
                Some((_, bucket)) => {
                    bucket.refill(def, now);
                    bucket.wait_for(def, c.cost)
                }
                None => {
                    let bucket =
                        own.buckets[c.bucket].get_or_insert_with(|| TokenBucket::full(def, now));
                    bucket.refill(def, now);
                    bucket.wait_for(def, c.cost)
                }
            };
            if !wait.is_zero() && worst.is_none_or(|(w, _)| wait > w) {
                worst = Some((wait, c.bucket));
            }
        }
        if let Some((wait, bucket)) = worst {
            return Err(Limited {
                bucket: self.buckets[bucket].name.clone(),
                bucket_index: bucket,
                retry_after_ms: (wait.as_secs_f64() * 1000.0).ceil() as u64,
            });
        }
        // Pass 2: everything is affordable; pay.
        for (i, c) in charges.iter().enumerate() {
            let cost = f64::from(c.cost);
            match guards.iter_mut().find(|(j, _)| *j == i) {
                Some((_, bucket)) => bucket.tokens -= cost,
                None => {
                    if let Some(bucket) = own.buckets[c.bucket].as_mut() {
                        bucket.tokens -= cost;
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets shared buckets that have refilled completely and that no charge holds.
    pub fn evict_idle(&self, now: Instant) {
        self.shared.retain(|(bucket, _), entry| {
            let in_use = Arc::strong_count(entry) > 1;
            let full = entry
                .lock()
                .map(|b| b.is_full(&self.buckets[*bucket], now))
                .unwrap_or(true);
            in_use || !full
        });
    }

    pub fn shared_buckets(&self) -> usize {
        self.shared.len()
    }
}

/// Messages refused by each of the app's buckets.
pub struct RateLimitMetrics {
    /// In the app's bucket order, so a refusal counts by [`Limited::bucket_index`].
    limited: CounterByName,
}

impl RateLimitMetrics {
    pub fn register(registry: &mut Registry, buckets: &[Bucket]) -> Self {
        let limited = CounterByName::register(
            registry,
            "switchboard_rate_limited",
            "Client messages refused by a token bucket, by bucket",
            "bucket",
            buckets.iter().map(|b| b.name.as_str()),
        );
        Self { limited }
    }

    pub fn refused(&self, limited: &Limited) {
        if let Some(c) = self.limited.at(limited.bucket_index) {
            c.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(key: RateLimitKey) -> RateLimiter {
        RateLimiter::new(vec![
            Bucket {
                name: "a".into(),
                capacity: 3,
                refill_per_second: 2.0,
                key,
            },
            Bucket {
                name: "b".into(),
                capacity: 10,
                refill_per_second: 1.0,
                key,
            },
        ])
    }

    fn caller(user: &Arc<str>) -> Caller<'_> {
        Caller {
            user_id: user,
            ip: IpAddr::from([127, 0, 0, 1]),
        }
    }

    #[test]
    fn burst_then_exact_retry_after_then_lazy_refill() {
        let l = limiter(RateLimitKey::Connection);
        let user: Arc<str> = Arc::from("u");
        let mut own = ConnectionBuckets::default();
        let t0 = Instant::now();
        let charge = [Charge { bucket: 0, cost: 1 }];
        for _ in 0..3 {
            l.charge(&charge, &mut own, &caller(&user), t0).unwrap();
        }
        let err = l.charge(&charge, &mut own, &caller(&user), t0).unwrap_err();
        assert_eq!(
            err,
            Limited {
                bucket: "a".into(),
                bucket_index: 0,
                retry_after_ms: 500
            }
        );
        // 250 ms later half a token is there: 250 ms still missing.
        let err = l
            .charge(
                &charge,
                &mut own,
                &caller(&user),
                t0 + Duration::from_millis(250),
            )
            .unwrap_err();
        assert_eq!(err.retry_after_ms, 250);
        l.charge(
            &charge,
            &mut own,
            &caller(&user),
            t0 + Duration::from_millis(500),
        )
        .unwrap();
    }

    #[test]
    fn several_buckets_are_charged_all_or_nothing() {
        let l = limiter(RateLimitKey::User);
        let user: Arc<str> = Arc::from("u");
        let mut own = ConnectionBuckets::default();
        let t0 = Instant::now();
        let both = [Charge { bucket: 0, cost: 3 }, Charge { bucket: 1, cost: 2 }];
        l.charge(&both, &mut own, &caller(&user), t0).unwrap();
        // Bucket a is empty: b must not be charged by the refused attempt.
        let err = l.charge(&both, &mut own, &caller(&user), t0).unwrap_err();
        assert_eq!(err.bucket, "a");
        assert_eq!(err.retry_after_ms, 1500);
        let only_b = [Charge { bucket: 1, cost: 8 }];
        l.charge(&only_b, &mut own, &caller(&user), t0).unwrap();
    }

    #[test]
    fn user_buckets_are_shared_across_connections_and_evicted_when_full() {
        let l = limiter(RateLimitKey::User);
        let user: Arc<str> = Arc::from("u");
        let (mut c1, mut c2) = (ConnectionBuckets::default(), ConnectionBuckets::default());
        let t0 = Instant::now();
        let charge = [Charge { bucket: 0, cost: 2 }];
        l.charge(&charge, &mut c1, &caller(&user), t0).unwrap();
        assert!(l.charge(&charge, &mut c2, &caller(&user), t0).is_err());
        assert_eq!(l.shared_buckets(), 1);
        l.evict_idle(t0);
        assert_eq!(l.shared_buckets(), 1, "not yet refilled");
        l.evict_idle(t0 + Duration::from_secs(2));
        assert_eq!(l.shared_buckets(), 0);
    }
}
