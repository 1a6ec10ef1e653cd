//! The write path and the item queries.
//!
//! Every command (set, remove, clear, TTL expiry) runs as one transaction:
//! take the user's row lock, read the row, decide (in [`plan`]), store the row
//! and its version, store the new sequence head. The per-user sequence that
//! this produces is the change stream the rest of the system reads.

mod item;
pub mod plan;

use std::{future::Future, sync::Arc};

pub use item::{
    like_prefix_pattern, validate_instance_id, validate_key, validate_prefix, validate_user_id,
    Item, SetRequest, Ttl,
};
use plan::{Planned, WriteCtx};
use serde::Serialize;

use crate::{
    config::Limits,
    error::ApiError,
    metrics::Metrics,
    storage::{self, items, now_ms, Db},
};

/// How many versions of each item `item_versions` keeps.
pub const HISTORY_VERSIONS: i64 = 10;

/// How often a transaction that lost a deadlock or a busy lock is retried.
const WRITE_ATTEMPTS: usize = 4;

/// The reply to a remove.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub status: &'static str,
    pub key: String,
    pub seq: i64,
    pub version: i64,
}

/// The reply to a clear: how many items went, and the seq range they took.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cleared {
    pub cleared: usize,
    pub last_seq: i64,
}

/// The sync service: the one write path, plus reads.
#[derive(Clone)]
pub struct SyncService {
    db: Db,
    limits: Limits,
    metrics: Arc<Metrics>,
}

/// A transaction's result: the outer error is the database's (maybe worth a
/// retry), the inner one is the client's.
type TxResult<T> = Result<Result<T, ApiError>, sqlx::Error>;

impl SyncService {
    pub fn new(db: Db, limits: Limits, metrics: Arc<Metrics>) -> Self {
        Self {
            db,
            limits,
            metrics,
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs one write transaction, retrying it when the database chose it as
    /// a deadlock victim or a lock was busy.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = TxResult<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt().await {
                Ok(result) => return result,
                Err(e) if tries < WRITE_ATTEMPTS && storage::is_retryable(&e) => {
                    tracing::debug!(error = %e, tries, "retrying write transaction");
                    tokio::time::sleep(std::time::Duration::from_millis(5 * tries as u64)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Stores `req` under `key` for the user.
    pub async fn set(
        &self,
        user_id: &str,
        instance_id: &str,
        key: &str,
        req: &SetRequest,
    ) -> Result<Item, ApiError> {
        validate_key(key)?;
        let item = self
            .retrying(|| async {
                let now = now_ms();
                let ctx = WriteCtx {
                    user_id,
                    instance_id,
                    now,
                };
                let mut tx = self.db.pool().begin().await?;
                let state = items::lock_user(&mut tx, &self.db, user_id, now).await?;
                let current = items::fetch_for_write(&mut tx, &self.db, user_id, key).await?;
                let planned =
                    match plan::plan_set(ctx, key, req, current.as_ref(), state, &self.limits) {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(e)),
                    };
                self.store(&mut tx, &planned, current.is_some()).await?;
                tx.commit().await?;
                Ok(Ok(planned.item))
            })
            .await?;
        self.metrics.items_written.inc();
        Ok(item)
    }

    /// Removes a visible item, leaving a tombstone.
    pub async fn remove(
        &self,
        user_id: &str,
        instance_id: &str,
        key: &str,
    ) -> Result<Removed, ApiError> {
        validate_key(key)?;
        let item = self.remove_where(user_id, instance_id, key, false).await?;
        Ok(Removed {
            status: "removed",
            key: item.key,
            seq: item.seq,
            version: item.version,
        })
    }

    /// Tombstones one row. `expired_only` is the TTL sweeper's variant: it
    /// removes the row only if it is (still) past its TTL and does nothing
    /// otherwise, so a fresh write racing the sweep is never lost.
    async fn remove_where(
        &self,
        user_id: &str,
        instance_id: &str,
        key: &str,
        expired_only: bool,
    ) -> Result<Item, ApiError> {
        let item = self
            .retrying(|| async {
                let now = now_ms();
                let ctx = WriteCtx {
                    user_id,
                    instance_id,
                    now,
                };
                let mut tx = self.db.pool().begin().await?;
                let state = items::lock_user(&mut tx, &self.db, user_id, now).await?;
                let current = items::fetch_for_write(&mut tx, &self.db, user_id, key).await?;
                let planned = if expired_only {
                    match current
                        .as_ref()
                        .filter(|c| !c.is_deleted && !c.is_visible(now))
                    {
                        Some(c) => plan::tombstone(ctx, c, state),
                        None => {
                            return Ok(Err(ApiError::NotFound {
                                key: key.to_string(),
                            }))
                        }
                    }
                } else {
                    match plan::plan_remove(ctx, key, current.as_ref(), state) {
                        Ok(p) => p,
                        Err(e) => return Ok(Err(e)),
                    }
                };
                self.store(&mut tx, &planned, true).await?;
                tx.commit().await?;
                Ok(Ok(planned.item))
            })
            .await?;
        self.metrics.items_removed.inc();
        Ok(item)
    }

    /// Removes every item of the user. Each removal takes its own sequence
    /// number, so offline devices replay a clear as ordinary removals.
    pub async fn clear(&self, user_id: &str, instance_id: &str) -> Result<Cleared, ApiError> {
        let cleared = self
            .retrying(|| async {
                let now = now_ms();
                let ctx = WriteCtx {
                    user_id,
                    instance_id,
                    now,
                };
                let mut tx = self.db.pool().begin().await?;
                let mut state = items::lock_user(&mut tx, &self.db, user_id, now).await?;
                let rows = items::live_rows_for_write(&mut tx, &self.db, user_id).await?;
                for row in &rows {
                    let planned = plan::tombstone(ctx, row, state);
                    self.store(&mut tx, &planned, true).await?;
                    state = planned.state;
                }
                tx.commit().await?;
                Ok(Ok(Cleared {
                    cleared: rows.len(),
                    last_seq: state.last_seq,
                }))
            })
            .await?;
        self.metrics.items_removed.inc_by(cleared.cleared as u64);
        Ok(cleared)
    }

    /// Writes a planned row, its version and the user's new state, inside
    /// the caller's transaction.
    async fn store(
        &self,
        tx: &mut sqlx::AnyConnection,
        planned: &Planned,
        exists: bool,
    ) -> Result<(), sqlx::Error> {
        items::store_item(tx, &self.db, &planned.item, exists).await?;
        items::append_version(tx, &self.db, &planned.item, HISTORY_VERSIONS).await?;
        items::save_user(tx, &self.db, &planned.item.user_id, planned.state).await
    }

    /// A visible item, or NOT_FOUND.
    pub async fn get(&self, user_id: &str, key: &str) -> Result<Item, ApiError> {
        validate_key(key)?;
        items::get_visible(&self.db, user_id, key, now_ms())
            .await?
            .ok_or_else(|| ApiError::NotFound {
                key: key.to_string(),
            })
    }

    /// Visible items whose key starts with `prefix`, in key order.
    pub async fn list(&self, user_id: &str, prefix: &str) -> Result<Vec<Item>, ApiError> {
        validate_prefix(prefix)?;
        Ok(items::list_visible(&self.db, user_id, prefix, now_ms()).await?)
    }

    /// Keys of visible items starting with `prefix`, in key order.
    pub async fn keys(&self, user_id: &str, prefix: &str) -> Result<Vec<String>, ApiError> {
        validate_prefix(prefix)?;
        Ok(items::list_keys(&self.db, user_id, prefix, now_ms()).await?)
    }

    /// Turns every item past its TTL into a tombstone through the write path,
    /// in batches. Returns how many were purged.
    pub async fn purge_expired(&self) -> Result<usize, ApiError> {
        const BATCH: i64 = 500;
        let mut purged = 0;
        loop {
            let batch = items::expired(&self.db, now_ms(), BATCH).await?;
            let full = batch.len() as i64 == BATCH;
            for (user_id, key) in batch {
                match self.remove_where(&user_id, "ttl-cleanup", &key, true).await {
                    Ok(_) => purged += 1,
                    Err(ApiError::NotFound { .. }) => {} // rewritten since the scan
                    Err(e) => return Err(e),
                }
            }
            if !full {
                return Ok(purged);
            }
        }
    }
}
