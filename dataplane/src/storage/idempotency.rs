//! Queries on `idempotency_records`: the replies of writes that carried an
//! operation id, kept for the idempotency window.
//!
//! Both calls run inside the write's own transaction, after the user's row
//! lock is taken: two retries of one operation on two pods queue on that
//! lock, and the second finds the first's record.

use sqlx::AnyConnection;

use super::{Db, Dialect, RowExt};

/// A write done earlier under an operation id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The request's fingerprint, to tell a retry from another request that
    /// reuses the id.
    pub fingerprint: String,
    /// The reply it got, as JSON.
    pub reply: String,
}

/// The record of `operation_id` for the user, if made at or after `since`
/// (older ones are outside the window: as if never made).
pub async fn find(
    conn: &mut AnyConnection,
    db: &Db,
    user_id: &str,
    operation_id: &str,
    since: i64,
) -> Result<Option<Recorded>, sqlx::Error> {
    let row = sqlx::query(&db.sql(
        "SELECT fingerprint, reply FROM idempotency_records \
         WHERE user_id = ? AND operation_id = ? AND created_at >= ?",
    ))
    .bind(user_id)
    .bind(operation_id)
    .bind(since)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(Recorded {
            fingerprint: r.str_at(0)?,
            reply: r.str_at(1)?,
        })
    })
    .transpose()
}

/// Records the reply of `operation_id`, replacing a record from outside the
/// window that the sweeper has not removed yet.
pub async fn record(
    conn: &mut AnyConnection,
    db: &Db,
    user_id: &str,
    operation_id: &str,
    done: &Recorded,
    now: i64,
) -> Result<(), sqlx::Error> {
    let upsert = match db.dialect() {
        Dialect::Mysql => {
            "INSERT INTO idempotency_records (user_id, operation_id, fingerprint, reply, created_at) \
             VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE fingerprint = VALUES(fingerprint), \
             reply = VALUES(reply), created_at = VALUES(created_at)"
        }
        _ => {
            "INSERT INTO idempotency_records (user_id, operation_id, fingerprint, reply, created_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, operation_id) DO UPDATE SET \
             fingerprint = excluded.fingerprint, reply = excluded.reply, created_at = excluded.created_at"
        }
    };
    sqlx::query(&db.sql(upsert))
        .bind(user_id)
        .bind(operation_id)
        .bind(done.fingerprint.as_str())
        .bind(done.reply.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes records made before `before`; returns how many went.
pub async fn sweep(db: &Db, before: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(&db.sql("DELETE FROM idempotency_records WHERE created_at < ?"))
        .bind(before)
        .execute(&mut *db.acquire().await?)
        .await?;
    Ok(done.rows_affected())
}
