//! Prometheus metrics of the operator: reconciles, failures and durations,
//! by kind. A drop guard times each reconcile, as kube-rs's controller-rs
//! does, so an early return is measured too.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::time::Instant;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "syncstore_operator_reconciles_total",
                "Reconciles run, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "syncstore_operator_reconcile_failures_total",
                "Failed reconciles, by kind and reason",
            ),
            &["kind", "reason"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "syncstore_operator_reconcile_duration_seconds",
                "Reconcile duration, by kind",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0]),
            &["kind"],
        )
        .expect("valid metric");
        for m in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
        ] {
            registry.register(m).expect("registered once");
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration.
    pub fn start(&self, kind: &'static str) -> Timer {
        self.reconciles.with_label_values(&[kind]).inc();
        Timer {
            start: Instant::now(),
            hist: self.duration.with_label_values(&[kind]),
        }
    }

    pub fn failed(&self, kind: &'static str, reason: &str) {
        self.failures.with_label_values(&[kind, reason]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut buf);
        buf
    }
}

/// Records the reconcile's duration when dropped.
pub struct Timer {
    start: Instant,
    hist: prometheus::Histogram,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.hist.observe(self.start.elapsed().as_secs_f64());
    }
}
