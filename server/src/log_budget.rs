//! `LogBudget`: a cap on how often one kind of event is logged.
//!
//! Some events are worth a log line each until they come in floods: refused upgrades
//! (a misconfigured client retrying in a loop, or an attack) must be visible, but must
//! not turn the log into the bottleneck. A budget admits a few lines a second and counts
//! the rest, and the next admitted line says how many were left out, so nothing is lost
//! from view and the log stays bounded.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines admitted per one-second window; the rest are counted.
pub struct LogBudget {
    per_second: u32,
    window: Mutex<Window>,
}

/// The current window's start, the lines admitted in it, and those left out since the
/// last admitted line.
struct Window {
    start: Option<Instant>,
    admitted: u32,
    suppressed: u64,
}

impl LogBudget {
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Mutex::new(Window {
                start: None,
                admitted: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether to log this event now: `Some(n)` with the number of events left out since
    /// the last admitted one, or `None` when this one must be left out (and is counted).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked mid-count: the counts are
        // still usable for deciding about a log line.
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            w.start = Some(now);
            w.admitted = 0;
        }
        if w.admitted >= self.per_second {
            w.suppressed += 1;
            return None;
        }
        w.admitted += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_its_budget_per_second_and_reports_what_it_left_out() {
        let budget = LogBudget::new(2);
        let t0 = Instant::now();
        assert_eq!(budget.admit(t0), Some(0));
        assert_eq!(budget.admit(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(budget.admit(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(budget.admit(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(budget.admit(t0 + Duration::from_millis(1001)), Some(0));
        assert_eq!(budget.admit(t0 + Duration::from_millis(1002)), None);
        assert_eq!(budget.admit(t0 + Duration::from_secs(5)), Some(1));
    }
}
