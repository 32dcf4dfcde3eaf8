//! `Liveness`: the clocks a connection's writer watches — last pong, last application
//! message, token expiry. The reader updates them with plain atomic stores; the writer
//! turns them into its next wake-up time. No timer per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

pub struct Liveness {
    /// Instants below are stored as nanoseconds since this one: a pong can arrive within
    /// the same millisecond as its ping, and must still count as after it.
    base: Instant,
    last_pong: AtomicU64,
    last_activity: AtomicU64,
    /// Token expiry in Unix milliseconds; 0: none.
    expires_at_unix_ms: AtomicU64,
    /// Wakes the writer when a deadline moved earlier (a refresh with a shorter token).
    pub changed: Notify,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Liveness {
    pub fn new(expires_at: Option<SystemTime>) -> Self {
        Self {
            base: Instant::now(),
            last_pong: AtomicU64::new(0),
            last_activity: AtomicU64::new(0),
            expires_at_unix_ms: AtomicU64::new(expires_at.map_or(0, unix_ms)),
            changed: Notify::new(),
        }
    }

    fn since_base(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.base + Duration::from_nanos(nanos)
    }

    pub fn touch_pong(&self) {
        self.last_pong
            .store(self.since_base(Instant::now()), Ordering::Release);
    }

    pub fn touch_activity(&self) {
        self.last_activity
            .store(self.since_base(Instant::now()), Ordering::Release);
    }

    pub fn last_pong(&self) -> Instant {
        self.at(self.last_pong.load(Ordering::Acquire))
    }

    pub fn last_activity(&self) -> Instant {
        self.at(self.last_activity.load(Ordering::Acquire))
    }

    pub fn set_expiry(&self, expires_at: Option<SystemTime>) {
        self.expires_at_unix_ms
            .store(expires_at.map_or(0, unix_ms), Ordering::Release);
        self.changed.notify_one();
    }

    /// Whether the token's expiry has passed, judged on the wall clock like `exp` itself.
    pub fn token_expired(&self) -> bool {
        let at = self.expires_at_unix_ms.load(Ordering::Acquire);
        at != 0 && unix_ms(SystemTime::now()) >= at
    }

    /// When the token expires, as an `Instant` on this process's clock (to sleep until).
    pub fn expiry(&self) -> Option<Instant> {
        let at = self.expires_at_unix_ms.load(Ordering::Acquire);
        if at == 0 {
            return None;
        }
        let now_unix = unix_ms(SystemTime::now());
        Some(Instant::now() + Duration::from_millis(at.saturating_sub(now_unix)))
    }
}
