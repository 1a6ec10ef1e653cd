//! Queries on `api_keys`.

use sqlx::any::AnyRow;

use super::{now_ms, Db, RowExt};
use std::sync::Arc;

use crate::auth::{restrictions::Restrictions, ApiKey, NewKey, Scope};

/// A restriction list as stored: a JSON array, or NULL when empty.
fn json_list(list: &[String]) -> Option<String> {
    (!list.is_empty()).then(|| serde_json::to_string(list).unwrap_or_else(|_| "[]".into()))
}

fn key_from_row(row: &AnyRow) -> Result<ApiKey, sqlx::Error> {
    let scopes = row
        .opt_str(8)?
        .map_or_else(|| Ok(Vec::new()), |s| Scope::parse_list(&s));
    Ok(ApiKey {
        id: row.str_at(0)?,
        name: row.str_at(1)?,
        key_hash: row.str_at(2)?,
        user_id: row.str_at(3)?,
        is_active: row.bool_at(4)?,
        expires_at: row.opt_i64(5)?,
        can_read: row.bool_at(6)?,
        can_write: row.bool_at(7)?,
        scopes: scopes.map_err(|e| sqlx::Error::Decode(e.into()))?,
        restrictions: Arc::new(
            Restrictions::parse(
                row.opt_str(9)?.as_deref(),
                row.opt_str(10)?.as_deref(),
                row.opt_str(11)?.as_deref(),
                row.opt_str(12)?.as_deref(),
            )
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
        ),
        quotas: [
            row.opt_i64(13)?,
            row.opt_i64(14)?,
            row.opt_i64(15)?,
            row.opt_i64(16)?,
        ],
    })
}

pub async fn find_by_hash(db: &Db, hash: &str) -> Result<Option<ApiKey>, sqlx::Error> {
    let row = sqlx::query(&db.sql(
        "SELECT id, name, key_hash, user_id, is_active, expires_at, can_read, can_write, scopes, \
         ip_restrictions, country_restrictions, domain_restrictions, user_agent_patterns, \
         quota_per_minute, quota_per_hour, quota_per_day, quota_per_month \
         FROM api_keys WHERE key_hash = ?",
    ))
    .bind(hash)
    .fetch_optional(db.pool())
    .await?;
    row.as_ref().map(key_from_row).transpose()
}

/// Inserts a key record. `canRead`/`canWrite` follow the scopes, so the
/// seed's flags and our scopes never disagree for keys we create.
pub async fn insert(db: &Db, new: &NewKey, hash: &str, hint: &str) -> Result<ApiKey, sqlx::Error> {
    let now = now_ms();
    let has = |s: Scope| new.scopes.contains(&s) || new.scopes.contains(&Scope::Admin);
    let scopes: Vec<&str> = new.scopes.iter().map(|s| s.as_str()).collect();
    let key = ApiKey {
        id: uuid::Uuid::now_v7().to_string(),
        name: new.name.clone(),
        key_hash: hash.to_string(),
        user_id: new.user_id.clone(),
        is_active: true,
        expires_at: new.expires_at,
        can_read: has(Scope::Read),
        can_write: has(Scope::Write),
        scopes: new.scopes.clone(),
        restrictions: Arc::new(
            new.restrictions()
                .map_err(|e| sqlx::Error::Decode(e.into()))?,
        ),
        quotas: new.quotas,
    };
    sqlx::query(&db.sql(
        "INSERT INTO api_keys (id, name, key_hash, key_hint, user_id, is_active, expires_at, can_read, can_write, \
         scopes, ip_restrictions, country_restrictions, domain_restrictions, user_agent_patterns, \
         quota_per_minute, quota_per_hour, quota_per_day, quota_per_month, \
         usage_today, usage_this_month, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?)",
    ))
    .bind(key.id.as_str())
    .bind(key.name.as_str())
    .bind(hash)
    .bind(hint)
    .bind(key.user_id.as_str())
    .bind(true)
    .bind(key.expires_at)
    .bind(key.can_read)
    .bind(key.can_write)
    .bind(serde_json::to_string(&scopes).unwrap_or_else(|_| "[]".into()))
    .bind(json_list(&new.ip_restrictions))
    .bind(json_list(&new.country_restrictions))
    .bind(json_list(&new.domain_restrictions))
    .bind(json_list(&new.user_agent_patterns))
    .bind(new.quotas[0])
    .bind(new.quotas[1])
    .bind(new.quotas[2])
    .bind(new.quotas[3])
    .bind(now)
    .bind(now)
    .execute(db.pool())
    .await?;
    Ok(key)
}

/// Turns a key on or off (the seed's `isActive`).
pub async fn set_active(db: &Db, id: &str, active: bool) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query(&db.sql("UPDATE api_keys SET is_active = ?, updated_at = ? WHERE id = ?"))
            .bind(active)
            .bind(now_ms())
            .bind(id)
            .execute(db.pool())
            .await?;
    Ok(done.rows_affected() > 0)
}
