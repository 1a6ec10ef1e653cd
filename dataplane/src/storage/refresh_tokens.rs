//! Queries on `refresh_tokens`.

use sqlx::AnyConnection;

use super::{Db, RowExt};
use crate::access::Scope;

/// One issued refresh token.
#[derive(Debug, Clone)]
pub struct Row {
    pub jti: String,
    pub family_id: String,
    pub parent_jti: Option<String>,
    pub user_id: String,
    pub issued_by: String,
    pub scopes: Vec<Scope>,
    pub expires_at: i64,
}

/// A stored token with its state.
#[derive(Debug, Clone)]
pub struct Stored {
    pub jti: String,
    pub family_id: String,
    pub user_id: String,
    pub issued_by: String,
    pub scopes: Vec<Scope>,
    pub revoked_at: Option<i64>,
}

pub async fn insert(conn: &mut AnyConnection, db: &Db, row: &Row) -> Result<(), sqlx::Error> {
    let scopes: Vec<&str> = row.scopes.iter().map(|s| s.as_str()).collect();
    sqlx::query(&db.sql(
        "INSERT INTO refresh_tokens (jti, family_id, parent_jti, user_id, issued_by, scopes, expires_at, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(row.jti.as_str())
    .bind(row.family_id.as_str())
    .bind(row.parent_jti.as_deref())
    .bind(row.user_id.as_str())
    .bind(row.issued_by.as_str())
    .bind(serde_json::to_string(&scopes).unwrap_or_else(|_| "[]".into()))
    .bind(row.expires_at)
    .bind(super::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn get(db: &Db, jti: &str) -> Result<Option<Stored>, sqlx::Error> {
    let row = sqlx::query(&db.sql(
        "SELECT family_id, user_id, issued_by, scopes, revoked_at FROM refresh_tokens WHERE jti = ?",
    ))
    .bind(jti)
    .fetch_optional(&mut *db.acquire().await?)
    .await?;
    row.map(|r| {
        Ok(Stored {
            jti: jti.to_string(),
            family_id: r.str_at(0)?,
            user_id: r.str_at(1)?,
            issued_by: r.str_at(2)?,
            scopes: Scope::parse_list(&r.str_at(3)?).map_err(|e| sqlx::Error::Decode(e.into()))?,
            revoked_at: r.opt_i64(4)?,
        })
    })
    .transpose()
}

/// Marks a token used, unless it already was (a reuse) or was revoked
/// meanwhile: false then. Run in the transaction that stores its successor.
pub async fn mark_used(
    conn: &mut AnyConnection,
    db: &Db,
    jti: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&db.sql(
        "UPDATE refresh_tokens SET used_at = ? WHERE jti = ? AND used_at IS NULL AND revoked_at IS NULL",
    ))
    .bind(now)
    .bind(jti)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Whether any token of the family was revoked: a family ends as a whole,
/// even when a rotation committed while its logout was running.
pub async fn family_revoked(
    conn: &mut AnyConnection,
    db: &Db,
    family_id: &str,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(&db.sql(
        "SELECT 1 FROM refresh_tokens WHERE family_id = ? AND revoked_at IS NOT NULL LIMIT 1",
    ))
    .bind(family_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.is_some())
}

pub async fn revoke_family(db: &Db, family_id: &str, now: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(&db.sql(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL",
    ))
    .bind(now)
    .bind(family_id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(done.rows_affected())
}
