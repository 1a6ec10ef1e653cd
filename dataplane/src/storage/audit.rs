//! Queries on `audit_log`.

use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::AnyConnection;

use super::{raw_json, Db, RowExt};

/// One entry, owned, as queued.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    /// The user acting (or `anonymous`, `cli`).
    pub actor: String,
    pub key_id: Option<String>,
    pub action: &'static str,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub result: String,
    pub request_id: Option<String>,
    pub details: Option<serde_json::Value>,
    pub ts: i64,
    /// How many occurrences this entry stands for (aggregated denials);
    /// 0 is read as 1.
    pub count: i64,
}

const COLUMNS: &str =
    "id, ts, actor, key_id, action, target, ip, result, request_id, details, occurrences";
/// Rows per INSERT statement (11 parameters each).
const ROWS_PER_STATEMENT: usize = 100;

/// Writes one entry now (the CLI, which has no background writer).
pub async fn record(db: &Db, entry: &Entry) -> Result<(), sqlx::Error> {
    insert_many(db, std::slice::from_ref(entry)).await
}

/// Writes a batch in one transaction of its own.
pub async fn insert_many(db: &Db, entries: &[Entry]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    insert(&mut tx, db, entries).await?;
    tx.commit().await
}

/// Writes entries inside the caller's transaction (the write path's, so a
/// committed change always has its entry). Ids are UUIDv7, so they sort by
/// time and serve as the pagination cursor.
pub async fn insert(
    conn: &mut AnyConnection,
    db: &Db,
    entries: &[Entry],
) -> Result<(), sqlx::Error> {
    for chunk in entries.chunks(ROWS_PER_STATEMENT) {
        let tuples = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let text = format!("INSERT INTO audit_log ({COLUMNS}) VALUES {tuples}");
        let sql = db.sql(&text);
        let mut q = sqlx::query(&sql);
        for e in chunk {
            let ts = if e.ts > 0 { e.ts } else { super::now_ms() };
            q = q
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
                .bind(e.count.max(1));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// An entry as `GET /audit` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = AuditEntry)]
pub struct Row {
    /// A UUIDv7: entries sort by it, and it is the pagination cursor.
    pub id: String,
    /// When, in Unix milliseconds.
    pub ts: i64,
    /// The user acting (or `anonymous`, `cli`).
    pub actor: String,
    pub key_id: Option<String>,
    /// What was done, e.g. `item.set`, `api_key.create`, `auth.denied`.
    pub action: String,
    /// What it was done to (an item key, a key id, a user id).
    pub target: Option<String>,
    pub ip: Option<String>,
    /// `ok`, or the error code of a refusal.
    pub result: String,
    /// The `X-Request-Id` of the request that wrote it.
    pub request_id: Option<String>,
    /// More about the entry (an object), as stored.
    #[schema(value_type = Option<Object>)]
    pub details: Option<Box<RawValue>>,
    /// How many occurrences the entry stands for: 1, or the number of
    /// refusals an `auth.denied` row sums.
    pub count: i64,
}

/// Filters of `GET /audit`; `before` is the cursor (an entry id).
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub actor: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub action: Option<&'a str>,
    pub target: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub before: Option<&'a str>,
    pub limit: i64,
}

/// Newest first.
pub async fn query(db: &Db, f: &Filter<'_>) -> Result<Vec<Row>, sqlx::Error> {
    let rows = sqlx::query(&db.sql(
        "SELECT id, ts, actor, key_id, action, target, ip, result, request_id, details, occurrences \
         FROM audit_log \
         WHERE (? IS NULL OR actor = ?) AND (? IS NULL OR key_id = ?) AND (? IS NULL OR action = ?) \
         AND (? IS NULL OR target = ?) AND (? IS NULL OR request_id = ?) \
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
    .bind(f.request_id)
    .bind(f.request_id)
    .bind(f.from)
    .bind(f.from)
    .bind(f.to)
    .bind(f.to)
    .bind(f.before)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(&mut *db.acquire().await?)
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
                count: r.i64_at(10)?,
            })
        })
        .collect()
}
