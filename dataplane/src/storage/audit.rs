//! Queries on `audit_log`.

use serde::Serialize;
use serde_json::value::RawValue;

use super::{raw_json, Db, RowExt};
use crate::audit::Entry;

const INSERT: &str = "INSERT INTO audit_log (id, ts, actor, key_id, action, target, ip, result, request_id, details) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Writes one entry now (the CLI, which has no background writer).
pub async fn record(db: &Db, entry: &Entry) -> Result<(), sqlx::Error> {
    insert_many(db, std::slice::from_ref(entry)).await
}

/// Writes a batch in one transaction. Ids are UUIDv7, so they sort by time
/// and serve as the pagination cursor.
pub async fn insert_many(db: &Db, entries: &[Entry]) -> Result<(), sqlx::Error> {
    let sql = db.sql(INSERT);
    let mut tx = db.pool().begin().await?;
    for e in entries {
        let ts = if e.ts > 0 { e.ts } else { super::now_ms() };
        sqlx::query(&sql)
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(ts)
            .bind(e.actor.as_str())
            .bind(e.key_id.as_deref())
            .bind(e.action)
            .bind(e.target.as_deref())
            .bind(e.ip.as_deref())
            .bind(e.result.as_str())
            .bind(e.request_id.as_deref())
            .bind(e.details.as_ref().map(|d| d.to_string()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// An entry as `GET /audit` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub id: String,
    pub ts: i64,
    pub actor: String,
    pub key_id: Option<String>,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub result: String,
    pub request_id: Option<String>,
    pub details: Option<Box<RawValue>>,
}

/// Filters of `GET /audit`; `before` is the cursor (an entry id).
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub actor: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub action: Option<&'a str>,
    pub target: Option<&'a str>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub before: Option<&'a str>,
    pub limit: i64,
}

/// Newest first.
pub async fn query(db: &Db, f: &Filter<'_>) -> Result<Vec<Row>, sqlx::Error> {
    let rows = sqlx::query(&db.sql(
        "SELECT id, ts, actor, key_id, action, target, ip, result, request_id, details FROM audit_log \
         WHERE (? IS NULL OR actor = ?) AND (? IS NULL OR key_id = ?) AND (? IS NULL OR action = ?) \
         AND (? IS NULL OR target = ?) \
         AND (? IS NULL OR ts >= ?) AND (? IS NULL OR ts <= ?) AND (? IS NULL OR id < ?) \
         ORDER BY id DESC LIMIT ?",
    ))
    .bind(f.actor)
    .bind(f.actor)
    .bind(f.key_id)
    .bind(f.key_id)
    .bind(f.action)
    .bind(f.action)
    .bind(f.target)
    .bind(f.target)
    .bind(f.from)
    .bind(f.from)
    .bind(f.to)
    .bind(f.to)
    .bind(f.before)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Row {
                id: r.str_at(0)?,
                ts: r.i64_at(1)?,
                actor: r.str_at(2)?,
                key_id: r.opt_str(3)?,
                action: r.str_at(4)?,
                target: r.opt_str(5)?,
                ip: r.opt_str(6)?,
                result: r.str_at(7)?,
                request_id: r.opt_str(8)?,
                details: raw_json(r.opt_str(9)?)?,
            })
        })
        .collect()
}
