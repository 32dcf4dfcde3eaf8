//! A small log-linear latency histogram: exact below 256 µs, then 128 buckets per
//! power of two (under 0.8 % relative error), up to 2^28 µs (about 4.5 minutes; larger
//! values land in the last bucket). Recording is an index computation and an increment,
//! with no allocation; one histogram per subscriber, merged at the end.

/// Values below this are counted exactly.
const LINEAR: u64 = 256;
/// Sub-buckets per power of two above `LINEAR` (2^7).
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Largest power of two covered.
const MAX_EXP: u32 = 27;
const BUCKETS: usize = LINEAR as usize + (MAX_EXP as usize - 7) * SUB as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u32]>,
    total: u64,
    sum: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = (63 - v.leading_zeros()).min(MAX_EXP);
    let v = v.min((1 << (MAX_EXP + 1)) - 1);
    let sub = (v >> (exp - SUB_BITS)) - SUB;
    LINEAR as usize + (exp as usize - 8) * SUB as usize + sub as usize
}

/// The middle of a bucket's range of values.
fn value(i: usize) -> u64 {
    if i < LINEAR as usize {
        return i as u64;
    }
    let j = i - LINEAR as usize;
    let exp = (j / SUB as usize) as u32 + 8;
    let sub = (j % SUB as usize) as u64 + SUB;
    let width = 1u64 << (exp - SUB_BITS);
    sub * width + width / 2
}

impl Histogram {
    /// Records one value (microseconds).
    pub fn record(&mut self, v: u64) {
        let i = index(v);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total += 1;
        self.sum += v;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1); 0 when empty. Never above the recorded max.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_precise() {
        let mut last = 0;
        for v in (0..5_000_000u64).step_by(7) {
            let i = index(v);
            assert!(i >= last, "index must not decrease at {v}");
            last = i;
            let mid = value(i);
            let err = mid.abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err < 0.008, "{v} -> bucket {i} ({mid}): {err}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((498..=502).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((985..=995).contains(&p99), "{p99}");
        assert_eq!(h.quantile(0.1), 100);
        assert_eq!(h.quantile(1.0), 1000);
        assert_eq!(h.max(), 1000);
        let mut g = Histogram::default();
        g.record(5000);
        h.merge(&g);
        assert_eq!(h.count(), 1001);
        assert_eq!(h.max(), 5000);
    }
}
