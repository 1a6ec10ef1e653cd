//! Queries on `conflicts`: the record of every concurrent write, and the
//! review queue.

use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::{any::AnyRow, AnyConnection};

use super::{raw_json, Db, RowExt};
use crate::domain::{ConflictRecord, SetStatus};

/// A conflict as the endpoints show it. The values are the JSON stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub id: String,
    pub user_id: String,
    pub key: String,
    pub item_id: String,
    pub strategy: String,
    pub outcome: String,
    pub status: String,
    pub base_version: Option<i64>,
    /// The value both writes were based on, when known: any JSON.
    #[schema(value_type = Option<serde_json::Value>)]
    pub base_value: Option<Box<RawValue>>,
    pub current_version: i64,
    /// The stored value the incoming write met: any JSON.
    #[schema(value_type = Option<serde_json::Value>)]
    pub current_value: Option<Box<RawValue>>,
    pub current_instance: String,
    pub current_timestamp: i64,
    /// The incoming write's value: any JSON.
    #[schema(value_type = Option<serde_json::Value>)]
    pub incoming_value: Option<Box<RawValue>>,
    /// The incoming write's metadata: an object, as for every write.
    #[schema(value_type = Option<Object>)]
    pub incoming_metadata: Option<Box<RawValue>>,
    pub incoming_instance: String,
    pub incoming_timestamp: i64,
    /// The value the conflict settled on, once it did: any JSON.
    #[schema(value_type = Option<serde_json::Value>)]
    pub result_value: Option<Box<RawValue>>,
    pub result_seq: Option<i64>,
    pub resolver: Option<String>,
    pub resolved_at: Option<i64>,
    pub created_at: i64,
}

const COLUMNS: &str = "id, user_id, item_key, item_id, strategy, outcome, status, base_version, base_value, \
     current_version, current_value, current_instance, current_ts, incoming_value, incoming_metadata, \
     incoming_instance, incoming_ts, result_value, result_seq, resolver, resolved_at, created_at";

fn from_row(r: &AnyRow) -> Result<Conflict, sqlx::Error> {
    Ok(Conflict {
        id: r.str_at(0)?,
        user_id: r.str_at(1)?,
        key: r.str_at(2)?,
        item_id: r.str_at(3)?,
        strategy: r.str_at(4)?,
        outcome: r.str_at(5)?,
        status: r.str_at(6)?,
        base_version: r.opt_i64(7)?,
        base_value: raw_json(r.opt_str(8)?)?,
        current_version: r.i64_at(9)?,
        current_value: raw_json(r.opt_str(10)?)?,
        current_instance: r.str_at(11)?,
        current_timestamp: r.i64_at(12)?,
        incoming_value: raw_json(r.opt_str(13)?)?,
        incoming_metadata: raw_json(r.opt_str(14)?)?,
        incoming_instance: r.str_at(15)?,
        incoming_timestamp: r.i64_at(16)?,
        result_value: raw_json(r.opt_str(17)?)?,
        result_seq: r.opt_i64(18)?,
        resolver: r.opt_str(19)?,
        resolved_at: r.opt_i64(20)?,
        created_at: r.i64_at(21)?,
    })
}

/// Records a conflict inside the write's transaction. A conflict left for
/// review is `pending`; any other was settled by its strategy.
pub async fn insert(
    conn: &mut AnyConnection,
    db: &Db,
    c: &ConflictRecord,
) -> Result<(), sqlx::Error> {
    let status = if c.outcome == SetStatus::PendingReview {
        "pending"
    } else {
        "resolved"
    };
    let q = format!("INSERT INTO conflicts ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    sqlx::query(&db.sql(&q))
        .bind(c.id.as_str())
        .bind(c.user_id.as_str())
        .bind(c.key.as_str())
        .bind(c.item_id.as_str())
        .bind(c.strategy.as_str())
        .bind(c.outcome.as_str())
        .bind(status)
        .bind(c.base_version)
        .bind(c.base_value.as_deref())
        .bind(c.current_version)
        .bind(c.current_value.as_deref())
        .bind(c.current_instance.as_str())
        .bind(c.current_ts)
        .bind(c.incoming_value.as_str())
        .bind(c.incoming_metadata.as_deref())
        .bind(c.incoming_instance.as_str())
        .bind(c.incoming_ts)
        .bind(c.result_value.as_deref())
        .bind(c.result_seq)
        .bind(None::<String>)
        .bind(None::<i64>)
        .bind(c.created_at)
        .execute(conn)
        .await?;
    Ok(())
}

/// One conflict, if the caller may see it (`user: None` is an admin).
pub async fn get(db: &Db, id: &str, user: Option<&str>) -> Result<Option<Conflict>, sqlx::Error> {
    let q = format!("SELECT {COLUMNS} FROM conflicts WHERE id = ? AND (? IS NULL OR user_id = ?)");
    let row = sqlx::query(&db.sql(&q))
        .bind(id)
        .bind(user)
        .bind(user)
        .fetch_optional(&mut *db.acquire().await?)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The conflicts of one item (by item id or key), newest first.
pub async fn history(
    db: &Db,
    user: Option<&str>,
    key_or_id: &str,
    limit: i64,
) -> Result<Vec<Conflict>, sqlx::Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM conflicts WHERE (item_key = ? OR item_id = ?) AND (? IS NULL OR user_id = ?) \
         ORDER BY created_at DESC, id DESC LIMIT ?"
    );
    let rows = sqlx::query(&db.sql(&q))
        .bind(key_or_id)
        .bind(key_or_id)
        .bind(user)
        .bind(user)
        .bind(limit)
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    rows.iter().map(from_row).collect()
}

/// A page of conflicts with `status`, oldest first (a queue).
pub async fn list(
    db: &Db,
    user: Option<&str>,
    status: &str,
    limit: i64,
    offset: i64,
) -> Result<Vec<Conflict>, sqlx::Error> {
    let q = format!(
        "SELECT {COLUMNS} FROM conflicts WHERE status = ? AND (? IS NULL OR user_id = ?) \
         ORDER BY created_at, id LIMIT ? OFFSET ?"
    );
    let rows = sqlx::query(&db.sql(&q))
        .bind(status)
        .bind(user)
        .bind(user)
        .bind(limit)
        .bind(offset)
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    rows.iter().map(from_row).collect()
}

/// Counts by (strategy, outcome, status) of conflicts created since `since`.
pub async fn counts(
    db: &Db,
    user: Option<&str>,
    since: i64,
) -> Result<Vec<(String, String, String, i64)>, sqlx::Error> {
    let rows = sqlx::query(&db.sql(
        "SELECT strategy, outcome, status, COUNT(*) FROM conflicts WHERE created_at >= ? AND (? IS NULL OR user_id = ?) \
         GROUP BY strategy, outcome, status",
    ))
    .bind(since)
    .bind(user)
    .bind(user)
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| Ok((r.str_at(0)?, r.str_at(1)?, r.str_at(2)?, r.i64_at(3)?)))
        .collect()
}

/// Marks a pending conflict resolved. False when it was not pending (a
/// concurrent resolve got there first).
/// Marks a pending conflict resolved by a review's write, inside that
/// write's transaction; false if it is no longer pending.
pub async fn mark_resolved_in(
    conn: &mut sqlx::AnyConnection,
    db: &Db,
    id: &str,
    resolver: &str,
    result_value: Option<&str>,
    result_seq: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&db.sql(RESOLVE))
        .bind("resolved")
        .bind(resolver)
        .bind(result_value)
        .bind(Some(result_seq))
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

const RESOLVE: &str =
    "UPDATE conflicts SET status = 'resolved', outcome = ?, resolver = ?, result_value = ?, \
     result_seq = ?, resolved_at = ? WHERE id = ? AND status = 'pending'";
