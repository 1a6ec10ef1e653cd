//! Conflict review: the queue of conflicts a person settles, their
//! history, counts and analysis, and resolving one through the normal write
//! path (`/api/v1/sync-storage/conflicts/*`).
//!
//! Every read is scoped to a tenant (`Principal::tenant`: the caller's own
//! user, or every user for an admin). A resolution is decided by the pure
//! [`conflict::settle`] and written with the conflict's resolved state in one
//! transaction ([`SyncService::settle`]).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::{SetRequest, SetStatus, Settles, SyncService};
use crate::{
    audit::{Auditor, Entry, Source},
    conflict::{self, analysis, Sides, Strategy},
    domain::{json_value, Item},
    error::ApiError,
    storage::{conflicts, conflicts::Conflict, now_ms},
    text,
};

/// Largest page of the review queue.
pub const MAX_PAGE: i64 = 500;
/// Most conflicts returned by an item's history.
const HISTORY_LIMIT: i64 = 200;
/// Most conflicts of one item that an analysis reads.
const ANALYSIS_DEPTH: i64 = 1000;
/// Most items one analysis request may name.
const MAX_ANALYZED: usize = 100;
const HOUR_MS: i64 = 3_600_000;

/// Who reviews: whose conflicts it reaches and how its action is recorded.
pub struct Reviewer<'a> {
    /// Tenant scoping: the user whose conflicts it reaches, or `None` for
    /// every user's (an admin).
    pub tenant: Option<&'a str>,
    /// The user acting, the audit entry's actor.
    pub actor: &'a str,
    /// Where the request came from; its key is recorded as the resolver.
    pub source: &'a Source,
}

/// One page of the review queue, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuePage {
    pub items: Vec<Conflict>,
    pub limit: i64,
    pub offset: i64,
}

/// Conflict counts over one window.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowStats {
    pub total: i64,
    pub pending: i64,
    /// Conflicts per strategy (`last-write-wins`, `merge`, …).
    pub by_strategy: BTreeMap<String, i64>,
    /// Conflicts per outcome (`applied`, `rejected`, `merged`, `pending`).
    pub by_outcome: BTreeMap<String, i64>,
    /// The share no longer pending (1 when there were none).
    pub resolution_rate: f64,
}

impl WindowStats {
    /// From `(strategy, outcome, status, count)` rows.
    fn from_rows(rows: &[(String, String, String, i64)]) -> Self {
        let mut stats = WindowStats::default();
        let mut resolved = 0;
        for (strategy, outcome, status, n) in rows {
            stats.total += n;
            if status == "resolved" {
                resolved += n;
            }
            *stats.by_strategy.entry(strategy.clone()).or_default() += n;
            *stats.by_outcome.entry(outcome.clone()).or_default() += n;
        }
        stats.pending = stats.total - resolved;
        stats.resolution_rate = if stats.total == 0 {
            1.0
        } else {
            resolved as f64 / stats.total as f64
        };
        stats
    }
}

/// `GET /conflicts/stats`: the last hour, day and week.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConflictStats {
    #[serde(rename = "1h")]
    pub hour: WindowStats,
    #[serde(rename = "24h")]
    pub day: WindowStats,
    #[serde(rename = "7d")]
    pub week: WindowStats,
}

/// The answer to a resolution.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// Always `resolved`.
    pub status: &'static str,
    pub conflict_id: String,
    /// The item as the resolution wrote it.
    pub item: Item,
}

/// One item's analysis.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemAnalysis {
    /// The item's key (the id asked for when it never had a conflict).
    pub key: String,
    pub analysis: analysis::Analysis,
}

/// The conflict review service. Cheap to clone.
#[derive(Clone)]
pub struct Review {
    sync: SyncService,
    audit: Auditor,
}

impl Review {
    pub fn new(sync: SyncService, audit: Auditor) -> Self {
        Self { sync, audit }
    }

    /// Conflicts of `status` (`pending` or `resolved`), oldest first,
    /// `limit` (1 to [`MAX_PAGE`]) from `offset`.
    pub async fn queue(
        &self,
        tenant: Option<&str>,
        status: &str,
        limit: i64,
        offset: i64,
    ) -> Result<QueuePage, ApiError> {
        let refuse = |field, reason| Err(crate::text::Invalid::new(field, reason).query());
        if !matches!(status, "pending" | "resolved") {
            return refuse("status", "is pending or resolved");
        }
        if !(1..=MAX_PAGE).contains(&limit) {
            return refuse("limit", "is 1 to 500");
        }
        if offset < 0 {
            return refuse("offset", "must not be negative");
        }
        let items = conflicts::list(self.sync.db(), tenant, status, limit, offset).await?;
        Ok(QueuePage {
            items,
            limit,
            offset,
        })
    }

    /// An item's conflicts (by item id or key), newest first.
    pub async fn history(
        &self,
        tenant: Option<&str>,
        item: &str,
    ) -> Result<Vec<Conflict>, ApiError> {
        Ok(conflicts::history(self.sync.db(), tenant, item, HISTORY_LIMIT).await?)
    }

    /// Counts over the last hour, day and week.
    pub async fn stats(&self, tenant: Option<&str>) -> Result<ConflictStats, ApiError> {
        let now = now_ms();
        Ok(ConflictStats {
            hour: self.window_stats(tenant, now - HOUR_MS).await?,
            day: self.window_stats(tenant, now - 24 * HOUR_MS).await?,
            week: self.window_stats(tenant, now - 7 * 24 * HOUR_MS).await?,
        })
    }

    async fn window_stats(
        &self,
        tenant: Option<&str>,
        since: i64,
    ) -> Result<WindowStats, ApiError> {
        let rows = conflicts::counts(self.sync.db(), tenant, since).await?;
        Ok(WindowStats::from_rows(&rows))
    }

    /// Settles pending conflict `id` with `strategy` (and, for `custom`,
    /// `value`) and writes the result as a new version of the item, based
    /// on the version the conflict saw.
    pub async fn resolve(
        &self,
        reviewer: Reviewer<'_>,
        id: &str,
        strategy: &str,
        value: Option<Value>,
    ) -> Result<Resolved, ApiError> {
        let conflict = conflicts::get(self.sync.db(), id, reviewer.tenant)
            .await?
            .ok_or(ApiError::NotFound { key: id.into() })?;
        if conflict.status != "pending" {
            return Err(ApiError::InvalidBody(
                "the conflict is already resolved".into(),
            ));
        }
        let strategy: Strategy = strategy.parse().map_err(ApiError::InvalidBody)?;
        let value = conflict::settle(strategy, value, sides(&conflict))?;
        // A resolution settles the item as the conflict saw it. If it has
        // changed since (written, removed, expired), writing it would undo
        // that change, or bring back a value every reader sees as gone: 404
        // if it is gone, 409 with the current item if it moved on.
        let now = self.sync.get(&conflict.user_id, &conflict.key).await?;
        let expected = Some(conflict.current_version);
        if now.version != conflict.current_version {
            return Err(ApiError::VersionConflict {
                expected,
                current: Box::new(now),
                status: SetStatus::Rejected,
                conflict_id: Some(id.into()),
            });
        }
        // Based on that version, so a write racing this one is a conflict too.
        let request: SetRequest =
            serde_json::from_value(json!({ "value": value, "version": conflict.current_version }))
                .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
        let source = reviewer.source;
        let settles = Settles {
            conflict_id: id.into(),
            resolver: source.key_id.clone().unwrap_or_default(),
        };
        let reply = self
            .sync
            .settle(&conflict.user_id, source, &conflict.key, &request, settles)
            .await?
            .won(expected)?;
        self.audit
            .record(Entry {
                actor: reviewer.actor.into(),
                key_id: source.key_id.clone(),
                action: "conflict.resolve",
                target: Some(id.into()),
                ip: source.ip.clone(),
                result: strategy.as_str().into(),
                request_id: source.request_id.clone(),
                details: Some(json!({ "key": conflict.key, "seq": reply.item.seq })),
                ..Default::default()
            })
            .await;
        Ok(Resolved {
            status: "resolved",
            conflict_id: id.into(),
            item: reply.item,
        })
    }

    /// Per item (id or key; 1 to 100 of them): the conflict rate, the
    /// instances involved, the median time between competing writes, and a
    /// suggested strategy with the reason.
    pub async fn analyze(
        &self,
        tenant: Option<&str>,
        ids: &[String],
    ) -> Result<BTreeMap<String, ItemAnalysis>, ApiError> {
        if ids.is_empty() || ids.len() > MAX_ANALYZED {
            return Err(ApiError::InvalidBody(
                "itemIds must hold 1 to 100 item ids or keys".into(),
            ));
        }
        text::check_all("itemIds", ids, text::KEY).map_err(text::Invalid::body)?;
        let mut out = BTreeMap::new();
        for id in ids {
            let history = conflicts::history(self.sync.db(), tenant, id, ANALYSIS_DEPTH).await?;
            out.insert(id.clone(), analysed(id, &history));
        }
        Ok(out)
    }
}

fn parse(v: &Option<Box<serde_json::value::RawValue>>) -> Option<Value> {
    json_value(v.as_deref())
}

/// The three sides of a stored conflict, as `conflict::settle` takes them.
fn sides(c: &Conflict) -> Sides {
    Sides {
        base: c
            .base_value
            .as_ref()
            .map(|_| parse(&c.base_value).unwrap_or_default()),
        current: parse(&c.current_value).unwrap_or_default(),
        incoming: parse(&c.incoming_value).unwrap_or_default(),
        incoming_is_later: (c.incoming_timestamp, &c.incoming_instance)
            > (c.current_timestamp, &c.current_instance),
    }
}

/// The analysis of one item's conflict history (newest first).
fn analysed(id: &str, history: &[Conflict]) -> ItemAnalysis {
    let records: Vec<analysis::Record> = history
        .iter()
        .map(|c| analysis::Record {
            base: parse(&c.base_value),
            current: parse(&c.current_value).unwrap_or(Value::Null),
            incoming: parse(&c.incoming_value).unwrap_or(Value::Null),
            current_instance: c.current_instance.clone(),
            incoming_instance: c.incoming_instance.clone(),
            current_ts: c.current_timestamp,
            incoming_ts: c.incoming_timestamp,
        })
        .collect();
    // Each conflict's current version counts the writes before it.
    let writes = history
        .iter()
        .map(|c| c.current_version + 1)
        .max()
        .unwrap_or(0);
    ItemAnalysis {
        key: history.first().map_or(id.into(), |c| c.key.clone()),
        analysis: analysis::analyze(&records, writes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(strategy: &str, outcome: &str, status: &str, n: i64) -> (String, String, String, i64) {
        (strategy.into(), outcome.into(), status.into(), n)
    }

    #[test]
    fn window_stats_sum_by_strategy_and_outcome() {
        let stats = WindowStats::from_rows(&[
            row("merge", "merged", "resolved", 3),
            row("manual", "pending", "pending", 2),
            row("merge", "pending", "pending", 1),
        ]);
        assert_eq!((stats.total, stats.pending), (6, 3));
        assert_eq!(stats.by_strategy["merge"], 4);
        assert_eq!(stats.by_outcome["pending"], 3);
        assert_eq!(stats.resolution_rate, 0.5);
        assert_eq!(WindowStats::from_rows(&[]).resolution_rate, 1.0);
    }
}
