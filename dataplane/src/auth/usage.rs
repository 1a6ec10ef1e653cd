//! The seed's `usageToday`, `usageThisMonth` and `lastUsedAt`, kept current
//! within seconds by batched flushes: requests only bump an in-memory
//! counter, and one task writes the sums every [`FLUSH_EVERY`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{Datelike, TimeZone, Utc};

use crate::storage::{keys, now_ms, Db};

pub const FLUSH_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Usage {
    pending: Arc<Mutex<HashMap<String, (i64, i64)>>>,
}

impl Usage {
    /// Counts one use of `key_id` now.
    pub fn add(&self, key_id: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending.entry(key_id.to_string()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = now_ms();
    }

    /// Writes what accumulated, for as long as it runs.
    pub async fn flush_forever(self, db: Db) {
        let mut every = tokio::time::interval(FLUSH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.flush(&db).await;
        }
    }

    pub async fn flush(&self, db: &Db) {
        let batch: Vec<(String, (i64, i64))> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for (key_id, (count, last_used)) in batch {
            let at = Utc
                .timestamp_millis_opt(last_used)
                .single()
                .unwrap_or_else(Utc::now);
            let (day, month) = day_and_month(at);
            if let Err(e) = keys::add_usage(db, &key_id, count, last_used, day, month).await {
                tracing::warn!(error = %e, "key usage not stored; counting it again next flush");
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let entry = pending.entry(key_id).or_insert((0, 0));
                entry.0 += count;
                entry.1 = entry.1.max(last_used);
            }
        }
    }
}

/// The `usage_day` (YYYYMMDD) and `usage_month` (YYYYMM) buckets of `at`, UTC.
pub fn day_and_month(at: chrono::DateTime<Utc>) -> (i64, i64) {
    let day = i64::from(at.year()) * 10_000 + i64::from(at.month()) * 100 + i64::from(at.day());
    (day, i64::from(at.year()) * 100 + i64::from(at.month()))
}
