//! Mergeable latency histograms: fixed log2 buckets, so that counts from any
//! minutes, pods or instances add up and p50/p95/p99 can be read over any
//! window afterwards, which averages or stored percentiles cannot do.

/// Upper bounds of the buckets, in microseconds: 16 µs, 32 µs, … 2^26 µs
/// (67 s); the last bucket also takes everything slower.
pub const BUCKETS: usize = 23;

/// The bucket of a latency.
pub fn bucket_of(latency_us: u64) -> usize {
    let bits = 64 - latency_us.max(1).saturating_sub(1).leading_zeros() as usize;
    bits.saturating_sub(4).min(BUCKETS - 1)
}

/// Upper bound of bucket `i`, microseconds.
pub fn upper_bound_us(i: usize) -> u64 {
    1u64 << (i.min(BUCKETS - 1) + 4)
}

/// The `q` quantile (0..=1) of a histogram given as bucket counts, as the
/// bucket's upper bound: an overestimate by at most 2x, never an under-one.
pub fn quantile(counts: &[i64], q: f64) -> Option<u64> {
    let total: i64 = counts.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as i64;
    let mut seen = 0;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return Some(upper_bound_us(i));
        }
    }
    Some(upper_bound_us(counts.len().saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_log2() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(16), 0);
        assert_eq!(bucket_of(17), 1);
        assert_eq!(bucket_of(1000), 6);
        assert_eq!(upper_bound_us(6), 1024);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_read_off_cumulative_counts() {
        let mut counts = vec![0i64; BUCKETS];
        counts[bucket_of(100)] = 90;
        counts[bucket_of(5000)] = 9;
        counts[bucket_of(1_000_000)] = 1;
        assert_eq!(quantile(&counts, 0.5), Some(128));
        assert_eq!(quantile(&counts, 0.95), Some(8192));
        assert_eq!(quantile(&counts, 0.999), Some(1 << 20));
        assert_eq!(quantile(&[0; BUCKETS], 0.5), None);
    }

    proptest! {
        /// The bound is never below the true value and at most twice it
        /// (above the first bucket).
        #[test]
        fn bound_brackets_the_value(v in 17u64..60_000_000) {
            let ub = upper_bound_us(bucket_of(v));
            prop_assert!(ub >= v && ub < 2 * v);
        }

        /// Merging is adding: the quantile of merged histograms is the same
        /// whatever the split.
        #[test]
        fn merge_is_addition(values in proptest::collection::vec(1u64..10_000_000, 1..200), split in 0usize..200) {
            let mut all = vec![0i64; BUCKETS];
            let (mut a, mut b) = (vec![0i64; BUCKETS], vec![0i64; BUCKETS]);
            for (i, v) in values.iter().enumerate() {
                all[bucket_of(*v)] += 1;
                if i < split { a[bucket_of(*v)] += 1 } else { b[bucket_of(*v)] += 1 }
            }
            let merged: Vec<i64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
            prop_assert_eq!(quantile(&merged, 0.95), quantile(&all, 0.95));
        }
    }
}
