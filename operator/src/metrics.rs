//! Prometheus metrics of the operator: reconciles, failures and durations,
//! by kind, and per object (readiness, phase, failures) the way
//! kube-state-metrics exposes Pods: one series per object, a 0/1 series
//! per phase, all removed when the object is deleted (and never set again
//! for that object: a reconcile that read it just before its deletion
//! finishes after the watch's delete, so deleted objects are remembered by
//! uid). A drop guard times
//! each reconcile, as kube-rs's controller-rs does, so an early return is
//! measured too.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex},
    time::Instant,
};

/// Deleted objects remembered, by uid: far more than are deleted while one
/// reconcile runs.
const GONE_KEPT: usize = 4096;

/// Every phase a SyncStore can show, each one a `phase` series.
pub const STORE_PHASES: [&str; 5] = ["Pending", "Progressing", "Running", "Degraded", "Failed"];
/// Every phase an ApiKey can show.
pub const KEY_PHASES: [&str; 4] = ["Pending", "Active", "Expired", "Failed"];

/// The per-object series of one kind.
#[derive(Clone)]
struct PerObject {
    ready: IntGaugeVec,
    phase: IntGaugeVec,
    failures: IntCounterVec,
    /// Pods and ready pods, as the status counts them (stores only).
    replicas: IntGaugeVec,
    ready_replicas: IntGaugeVec,
    phases: &'static [&'static str],
    /// (namespace, name) → uid of every object with series.
    known: Arc<Mutex<BTreeMap<(String, String), String>>>,
    /// The uids of the last [`GONE_KEPT`] objects deleted.
    gone: Arc<Mutex<VecDeque<String>>>,
}

impl PerObject {
    fn new(prefix: &str, noun: &str, phases: &'static [&'static str]) -> Self {
        let gauge = |name: &str, help: String, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(format!("{prefix}_{name}"), help), labels)
                .expect("valid metric")
        };
        Self {
            ready: gauge(
                "ready",
                format!("Whether the {noun}'s Ready condition is True (1) or not (0)"),
                &["namespace", "name"],
            ),
            phase: gauge(
                "phase",
                format!("The {noun}'s phase: 1 for the current phase, 0 for the others"),
                &["namespace", "name", "phase"],
            ),
            failures: IntCounterVec::new(
                Opts::new(
                    format!("{prefix}_reconcile_failures_total"),
                    format!("Failed reconciles of the {noun}"),
                ),
                &["namespace", "name"],
            )
            .expect("valid metric"),
            replicas: gauge(
                "replicas",
                format!("Pods of the {noun}'s Deployment, as its status counts them"),
                &["namespace", "name"],
            ),
            ready_replicas: gauge(
                "ready_replicas",
                format!("Ready pods of the {noun}'s Deployment"),
                &["namespace", "name"],
            ),
            phases,
            known: Arc::default(),
            gone: Arc::default(),
        }
    }

    fn collectors(&self) -> [Box<dyn prometheus::core::Collector>; 5] {
        [
            Box::new(self.ready.clone()),
            Box::new(self.phase.clone()),
            Box::new(self.failures.clone()),
            Box::new(self.replicas.clone()),
            Box::new(self.ready_replicas.clone()),
        ]
    }

    fn known(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), String>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `id` has series, unless it was deleted: false then.
    fn alive(&self, id: Id) -> bool {
        let gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        if gone.iter().any(|u| u == id.uid) {
            return false;
        }
        self.known()
            .insert((id.namespace.into(), id.name.into()), id.uid.into());
        true
    }

    fn observe(&self, id: Id, ready: bool, phase: &str) {
        if !self.alive(id) {
            return;
        }
        let Id {
            namespace, name, ..
        } = id;
        self.ready
            .with_label_values(&[namespace, name])
            .set(i64::from(ready));
        for p in self.phases {
            self.phase
                .with_label_values(&[namespace, name, p])
                .set(i64::from(*p == phase));
        }
    }

    fn failed(&self, id: Id) {
        if self.alive(id) {
            self.failures
                .with_label_values(&[id.namespace, id.name])
                .inc();
        }
    }

    fn forget(&self, namespace: &str, name: &str, uid: Option<&str>) {
        let known = self
            .known()
            .remove(&(namespace.to_string(), name.to_string()));
        {
            let mut gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
            for uid in [uid.map(str::to_owned), known].into_iter().flatten() {
                if gone.len() == GONE_KEPT {
                    gone.pop_front();
                }
                gone.push_back(uid);
            }
        }
        let _ = self.ready.remove_label_values(&[namespace, name]);
        let _ = self.failures.remove_label_values(&[namespace, name]);
        let _ = self.replicas.remove_label_values(&[namespace, name]);
        let _ = self.ready_replicas.remove_label_values(&[namespace, name]);
        for p in self.phases {
            let _ = self.phase.remove_label_values(&[namespace, name, p]);
        }
    }

    /// Forgets every object not in `live`.
    fn retain(&self, live: &BTreeSet<(String, String)>) {
        let gone: Vec<(String, String)> = self
            .known()
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for (namespace, name) in gone {
            self.forget(&namespace, &name, None);
        }
    }
}

/// One object, as its series and its deletion know it.
#[derive(Clone, Copy)]
pub struct Id<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

impl<'a> Id<'a> {
    pub fn of<K: kube::Resource>(obj: &'a K) -> Self {
        let meta = obj.meta();
        Self {
            namespace: meta.namespace.as_deref().unwrap_or_default(),
            name: meta.name.as_deref().unwrap_or_default(),
            uid: meta.uid.as_deref().unwrap_or_default(),
        }
    }
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconciles: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    stores: PerObject,
    keys: PerObject,
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
        let stores = PerObject::new("syncstore_store", "SyncStore", &STORE_PHASES);
        let keys = PerObject::new("syncstore_apikey", "ApiKey", &KEY_PHASES);
        let all = [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
        ]
        .into_iter()
        .chain(stores.collectors())
        .chain(keys.collectors());
        for m in all {
            registry.register(m).expect("registered once");
        }
        // Each kind's reconciles from 0, so their rate exists at once.
        for kind in ["SyncStore", "ApiKey"] {
            reconciles.with_label_values(&[kind]);
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
            stores,
            keys,
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

    fn of(&self, kind: &str) -> &PerObject {
        if kind == "ApiKey" {
            &self.keys
        } else {
            &self.stores
        }
    }

    /// Sets the object's `ready` and `phase` series from its status.
    pub fn observe(&self, kind: &str, id: Id, ready: bool, phase: &str) {
        self.of(kind).observe(id, ready, phase);
    }

    /// Sets a store's pod counts from its status; a store whose status has
    /// no count yet has no series.
    pub fn replicas(&self, id: Id, replicas: Option<i32>, ready: i32) {
        let per = &self.stores;
        if !per.alive(id) {
            return;
        }
        let Id {
            namespace, name, ..
        } = id;
        match replicas {
            Some(n) => {
                per.replicas
                    .with_label_values(&[namespace, name])
                    .set(i64::from(n));
                per.ready_replicas
                    .with_label_values(&[namespace, name])
                    .set(i64::from(ready));
            }
            None => {
                let _ = per.replicas.remove_label_values(&[namespace, name]);
                let _ = per.ready_replicas.remove_label_values(&[namespace, name]);
            }
        }
    }

    /// Counts a real failure of one object.
    pub fn object_failed(&self, kind: &str, id: Id) {
        self.of(kind).failed(id);
    }

    /// Removes every series of a deleted object, for good.
    pub fn forget(&self, kind: &str, id: Id) {
        self.of(kind).forget(id.namespace, id.name, Some(id.uid));
    }

    /// Removes the series of every object of `kind` not in `live`
    /// (namespace, name): after a re-list, objects deleted while the watch
    /// was down.
    pub fn retain(&self, kind: &str, live: &BTreeSet<(String, String)>) {
        self.of(kind).retain(live);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn series(m: &Metrics, name: &str) -> Vec<String> {
        m.render()
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(&format!("name=\"{}\"", "k1")))
            .map(String::from)
            .collect()
    }

    fn id<'a>(name: &'a str, uid: &'a str) -> Id<'a> {
        Id {
            namespace: "team-a",
            name,
            uid,
        }
    }

    #[test]
    fn forgotten_and_unlisted_objects_lose_their_series() {
        let m = Metrics::default();
        m.observe("ApiKey", id("k1", "u1"), true, "Active");
        m.object_failed("ApiKey", id("k1", "u1"));
        m.observe("ApiKey", id("k2", "u2"), false, "Pending");
        assert_eq!(series(&m, "syncstore_apikey_phase").len(), 4);
        assert_eq!(
            series(&m, "syncstore_apikey_reconcile_failures_total").len(),
            1
        );
        m.forget("ApiKey", id("k1", "u1"));
        assert!(series(&m, "syncstore_apikey").is_empty(), "{}", m.render());
        // A reconcile that read k1 before its deletion, finishing after it.
        m.observe("ApiKey", id("k1", "u1"), true, "Active");
        m.object_failed("ApiKey", id("k1", "u1"));
        assert!(series(&m, "syncstore_apikey").is_empty(), "{}", m.render());
        // A new k1 (another uid) has series again.
        m.observe("ApiKey", id("k1", "u3"), true, "Active");
        assert_eq!(series(&m, "syncstore_apikey_phase").len(), 4);
        // A re-list that no longer has k1 (deleted while the watch was down).
        let live = BTreeSet::from([("team-a".to_string(), "k2".to_string())]);
        m.retain("ApiKey", &live);
        assert!(series(&m, "syncstore_apikey").is_empty(), "{}", m.render());
        assert!(m.render().contains("name=\"k2\""));
    }
}
