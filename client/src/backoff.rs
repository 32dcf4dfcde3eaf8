//! Reconnect delays: exponential backoff with full jitter, a uniform draw below
//! `min(max, initial * 2^attempt)`, so clients cut off together do not return together.

use std::time::Duration;

/// The bounds of the draws.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The bound of the first retry's draw.
    pub initial: Duration,
    /// The largest bound.
    pub max: Duration,
}

impl Default for Backoff {
    /// 250 ms doubling to 30 s, as the TypeScript client.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The bound of retry number `attempt` (0 for the first).
    pub fn bound(&self, attempt: u32) -> Duration {
        self.initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max)
    }

    /// The delay before retry number `attempt`.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.bound(attempt).mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_up_to_the_cap_and_draws_stay_below_them() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
        };
        let bounds: Vec<u128> = (0..5).map(|a| b.bound(a).as_millis()).collect();
        assert_eq!(bounds, [100, 200, 400, 400, 400]);
        for attempt in 0..40 {
            assert!(b.delay(attempt) <= b.bound(attempt));
        }
    }
}
