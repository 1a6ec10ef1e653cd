//! What every reconcile shares: the client, settings, metrics, the event
//! recorder, failure counts and the stores' connection pools.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{Client, Resource};
use syncstore::storage::Db;

pub use crate::error::{Error, Result};
use crate::{metrics::Metrics, recorder::Recorder};

/// Annotation that pauses reconciliation of a SyncStore (and its keys) or
/// of one ApiKey while its value is `paused` (or `true`, as Strimzi's
/// `pause-reconciliation` takes it; either in any case).
pub const PAUSE_ANNOTATION: &str = "syncstore.dev/reconcile";

/// Whether `obj` carries `syncstore.dev/reconcile: paused`.
pub fn paused<K: Resource>(obj: &K) -> bool {
    obj.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(PAUSE_ANNOTATION))
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("paused") || v.eq_ignore_ascii_case("true")
        })
}

/// Operator-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a rotated-out key keeps working.
    pub rotation_grace: Duration,
    /// How often ApiKey usage is copied from the database into status.
    pub usage_interval: Duration,
    /// How often a healthy SyncStore is re-checked for drift.
    pub resync_interval: Duration,
    /// Prefix of generated keys (the data plane's API_KEY_TOKEN_PREFIX).
    pub key_prefix: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rotation_grace: Duration::from_secs(24 * 3600),
            usage_interval: Duration::from_secs(60),
            resync_interval: Duration::from_secs(300),
            key_prefix: "sk_live_".into(),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub settings: Settings,
    /// Failures in a row per object uid: the exponent of its backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// One small pool per store database, reused across ApiKey reconciles.
    pools: tokio::sync::Mutex<HashMap<String, (String, Db)>>,
    /// Per store: whose turn it is to use its pool (see [`Context::store_db`]).
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A store's pool, held with the store's turn: the next reconcile of the
/// same store waits until this one is dropped.
pub struct StoreDb {
    db: Db,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl std::ops::Deref for StoreDb {
    type Target = Db;

    fn deref(&self) -> &Db {
        &self.db
    }
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Metrics,
        settings: Settings,
        instance: String,
    ) -> Arc<Self> {
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), "syncstore-operator", &instance),
            client,
            metrics,
            settings,
            failures: Mutex::default(),
            pools: Default::default(),
            turns: Mutex::default(),
        })
    }

    /// Records one more failure of `uid` and returns the count.
    pub fn failed(&self, uid: &str) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(uid.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    pub fn failures(&self, uid: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .copied()
            .unwrap_or(0)
    }

    pub fn succeeded(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// A pool on the store database at `url`, opened on first use and
    /// reopened when the URL changes (new credentials), with this store's
    /// turn: one reconcile at a time works on a store's database. It was
    /// added when the data plane's key service held a transaction's
    /// connection while taking a second one (`Keys::put`, `Keys::retire`),
    /// so that two reconciles on this 2-connection pool waited on each
    /// other until the pool's 3 s timeout. The key service now stays on its
    /// transaction's connection; the turn still keeps the keys of a store
    /// that all reconcile at once after a restart from queueing on its
    /// small pool past that timeout.
    pub async fn store_db(&self, store: &str, url: &str) -> Result<StoreDb> {
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            turns.entry(store.to_string()).or_default().clone()
        };
        let turn = turn.lock_owned().await;
        let mut pools = self.pools.lock().await;
        if let Some((known, db)) = pools.get(store) {
            if known == url {
                return Ok(StoreDb {
                    db: db.clone(),
                    _turn: turn,
                });
            }
        }
        let db = crate::database::open_store(url, 2).await?;
        if let Some((_, old)) = pools.insert(store.to_string(), (url.to_string(), db.clone())) {
            old.close().await;
        }
        Ok(StoreDb { db, _turn: turn })
    }

    /// Forgets the pool of a deleted store.
    pub async fn forget_store(&self, store: &str) {
        self.turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(store);
        if let Some((_, db)) = self.pools.lock().await.remove(store) {
            db.close().await;
        }
    }
}

/// Exponential backoff from a failure count: 2 s, 4 s, … capped at 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(8);
    Duration::from_secs((2u64 << exp).min(300))
}

/// The longest wait before retrying a reconcile that failed because a
/// database could not be reached: an outage ends on its own, and the
/// store (and its keys) must recover within seconds of it, not after a
/// backoff that grew during it.
pub const UNREACHABLE_RETRY: Duration = Duration::from_secs(10);

/// When to retry after `err`, the `failures`-th failure in a row: the
/// exponential backoff, capped at [`UNREACHABLE_RETRY`] for an
/// unreachable database and for a failure of the key store (whose
/// message hides the database error behind it).
pub fn retry_after(err: &Error, failures: u32) -> Duration {
    let wait = backoff(failures);
    if matches!(err, Error::DatabaseUnreachable(_) | Error::KeyStore(_)) {
        wait.min(UNREACHABLE_RETRY)
    } else {
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_values_are_paused_or_true_in_any_case() {
        let with = |v: &str| {
            let mut cm = k8s_openapi::api::core::v1::ConfigMap::default();
            cm.metadata.annotations = Some([(PAUSE_ANNOTATION.to_string(), v.to_string())].into());
            paused(&cm)
        };
        for v in ["paused", "Paused", "PAUSED", "true", "True", " paused "] {
            assert!(with(v), "{v:?} pauses");
        }
        for v in ["", "false", "no", "pause", "1"] {
            assert!(!with(v), "{v:?} does not pause");
        }
    }

    #[test]
    fn a_kube_api_error_reads_as_its_message() {
        let status = kube::core::Status {
            code: 422,
            message: "Deployment.apps \"chat\" is invalid: spec.template.spec.containers[0].resources.limits[memory]: Invalid value: \"lots\": quantities must match the regular expression".into(),
            reason: "Invalid".into(),
            ..Default::default()
        };
        let text = Error::Kube(kube::Error::Api(Box::new(status))).to_string();
        assert_eq!(
            text,
            "the Kubernetes API refused a request: Deployment.apps \"chat\" is invalid: spec.template.spec.containers[0].resources.limits[memory]: Invalid value: \"lots\": quantities must match the regular expression"
        );
        assert!(!text.contains("Status {"));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(50), Duration::from_secs(300));
        let down = Error::DatabaseUnreachable("x".into());
        assert_eq!(retry_after(&down, 2), Duration::from_secs(4));
        assert_eq!(retry_after(&down, 50), UNREACHABLE_RETRY);
        let other = Error::Migration("x".into());
        assert_eq!(retry_after(&other, 50), Duration::from_secs(300));
    }
}
