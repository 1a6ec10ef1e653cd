//! At most one log line per period for a fault that repeats per request or
//! per message: with Redis down, every publish and every limit check fails
//! the same way, and a line for each buried everything else in the log.
//!
//! Hand-written because `tracing` has no rate limiting, and the crates that
//! add it filter the whole subscriber by callsite; one atomic per call site
//! is all this needs, and the line it admits says how many it left out.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        OnceLock,
    },
    time::{Duration, Instant},
};

/// One call site's throttle: a `static` beside the log line.
pub struct Throttle {
    period_ms: u64,
    /// Milliseconds since [`epoch`] when the next line may go out.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    pub const fn new(period: Duration) -> Self {
        Self {
            period_ms: period.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this occurrence should be logged, `n` being how many
    /// were left out since the last line; `None` when it is one of those.
    pub fn admit(&self) -> Option<u64> {
        let now = u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now.saturating_add(self.period_ms), Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_goes_out_then_one_per_period_with_the_count_left_out() {
        let t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.admit(), Some(0));
        assert_eq!((0..5).filter_map(|_| t.admit()).count(), 0);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.admit(), Some(5));
        assert_eq!(t.admit(), None);
    }
}
