//! Queries on `api_keys`.

use sqlx::{any::AnyRow, AnyConnection};

use super::{now_ms, Db, RowExt};
use std::sync::Arc;

use crate::access::{restrictions::Restrictions, ApiKey, NewKey, Scope};

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

const KEY_COLUMNS: &str =
    "id, name, key_hash, user_id, is_active, expires_at, can_read, can_write, scopes, \
     ip_restrictions, country_restrictions, domain_restrictions, user_agent_patterns, \
     quota_per_minute, quota_per_hour, quota_per_day, quota_per_month";

pub async fn find_by_hash(db: &Db, hash: &str) -> Result<Option<ApiKey>, sqlx::Error> {
    let mut conn = db.acquire().await?;
    find_by_hash_in(&mut conn, db, hash).await
}

/// [`find_by_hash`] on `conn`: inside a transaction, a lookup on another
/// pooled connection would hold two at once, and a few such callers at
/// once can exhaust a small pool and wait on each other until it times out.
pub async fn find_by_hash_in(
    conn: &mut AnyConnection,
    db: &Db,
    hash: &str,
) -> Result<Option<ApiKey>, sqlx::Error> {
    let q = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?");
    let row = sqlx::query(&db.sql(&q))
        .bind(hash)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

pub async fn find_by_id(db: &Db, id: &str) -> Result<Option<ApiKey>, sqlx::Error> {
    let q = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?");
    let row = sqlx::query(&db.sql(&q))
        .bind(id)
        .fetch_optional(&mut *db.acquire().await?)
        .await?;
    row.as_ref().map(key_from_row).transpose()
}

/// Inserts a key record from `new` (the operator's and the bootstrap's
/// path; the key service stores through [`insert_in`]).
pub async fn insert(db: &Db, new: &NewKey, hash: &str, hint: &str) -> Result<ApiKey, sqlx::Error> {
    let view = KeyView::new_row(new, hash, hint, now_ms());
    let key = view.as_key().map_err(|e| sqlx::Error::Decode(e.into()))?;
    let mut conn = db.acquire().await?;
    insert_in(&mut conn, db, &view).await?;
    Ok(key)
}

/// Turns a key on or off (the seed's `isActive`).
pub async fn set_active(db: &Db, id: &str, active: bool) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query(&db.sql("UPDATE api_keys SET is_active = ?, updated_at = ? WHERE id = ?"))
            .bind(active)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *db.acquire().await?)
            .await?;
    Ok(done.rows_affected() > 0)
}

/// A key as the management API shows it: the seed's ApiKey fields.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// The owner: the user the key acts as.
    pub user_id: String,
    /// The key's first 12 characters and `…`, to recognise it by.
    pub key_hint: String,
    pub is_active: bool,
    /// Unix milliseconds, as are the other times; null: never.
    pub expires_at: Option<i64>,
    pub can_read: bool,
    pub can_write: bool,
    #[schema(schema_with = crate::access::scope_list)]
    pub scopes: Vec<Scope>,
    pub ip_restrictions: Vec<String>,
    pub country_restrictions: Vec<String>,
    pub domain_restrictions: Vec<String>,
    pub user_agent_patterns: Vec<String>,
    pub quota_per_minute: Option<i64>,
    pub quota_per_hour: Option<i64>,
    pub quota_per_day: Option<i64>,
    pub quota_per_month: Option<i64>,
    pub usage_today: i64,
    pub usage_this_month: i64,
    pub last_used_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(skip)]
    pub key_hash: String,
}

impl KeyView {
    /// The row of a new key as `new` asks for it. `canRead`/`canWrite`
    /// follow the scopes, so the seed's flags and our scopes agree for keys
    /// we create.
    pub fn new_row(new: &NewKey, hash: &str, hint: &str, now: i64) -> Self {
        let has = |s: Scope| new.scopes.contains(&s) || new.scopes.contains(&Scope::Admin);
        KeyView {
            id: uuid::Uuid::now_v7().to_string(),
            name: new.name.clone(),
            user_id: new.user_id.clone(),
            key_hint: hint.to_string(),
            is_active: true,
            expires_at: new.expires_at,
            can_read: has(Scope::Read),
            can_write: has(Scope::Write),
            scopes: new.scopes.clone(),
            ip_restrictions: new.ip_restrictions.clone(),
            country_restrictions: new.country_restrictions.clone(),
            domain_restrictions: new.domain_restrictions.clone(),
            user_agent_patterns: new.user_agent_patterns.clone(),
            quota_per_minute: new.quotas[0],
            quota_per_hour: new.quotas[1],
            quota_per_day: new.quotas[2],
            quota_per_month: new.quotas[3],
            created_at: now,
            updated_at: now,
            key_hash: hash.to_string(),
            ..KeyView::default()
        }
    }

    /// The record as authentication and the key policy see it, restrictions
    /// compiled (which also validates them).
    pub fn as_key(&self) -> Result<ApiKey, String> {
        Ok(ApiKey {
            id: self.id.clone(),
            name: self.name.clone(),
            key_hash: self.key_hash.clone(),
            user_id: self.user_id.clone(),
            is_active: self.is_active,
            expires_at: self.expires_at,
            can_read: self.can_read,
            can_write: self.can_write,
            scopes: self.scopes.clone(),
            restrictions: Arc::new(Restrictions::from_lists(
                &self.ip_restrictions,
                &self.country_restrictions,
                &self.domain_restrictions,
                &self.user_agent_patterns,
            )?),
            quotas: [
                self.quota_per_minute,
                self.quota_per_hour,
                self.quota_per_day,
                self.quota_per_month,
            ],
        })
    }
}

/// Binds the settings a key row shares between insert and update, in the
/// order of [`SETTINGS`].
fn bind_settings<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    v: &'q KeyView,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let scopes: Vec<&str> = v.scopes.iter().map(|s| s.as_str()).collect();
    q.bind(v.name.as_str())
        .bind(v.is_active)
        .bind(v.expires_at)
        .bind(v.can_read)
        .bind(v.can_write)
        .bind(serde_json::to_string(&scopes).unwrap_or_else(|_| "[]".into()))
        .bind(json_list(&v.ip_restrictions))
        .bind(json_list(&v.country_restrictions))
        .bind(json_list(&v.domain_restrictions))
        .bind(json_list(&v.user_agent_patterns))
        .bind(v.quota_per_minute)
        .bind(v.quota_per_hour)
        .bind(v.quota_per_day)
        .bind(v.quota_per_month)
}

/// The settings columns [`bind_settings`] binds, in its order.
const SETTINGS: &str = "name, is_active, expires_at, can_read, can_write, scopes, ip_restrictions, \
     country_restrictions, domain_restrictions, user_agent_patterns, quota_per_minute, quota_per_hour, \
     quota_per_day, quota_per_month";

const VIEW_COLUMNS: &str = "id, name, user_id, key_hint, is_active, expires_at, can_read, can_write, scopes, \
     ip_restrictions, country_restrictions, domain_restrictions, user_agent_patterns, quota_per_minute, \
     quota_per_hour, quota_per_day, quota_per_month, usage_today, usage_this_month, last_used_at, created_at, \
     updated_at, key_hash";

fn strings(text: Option<String>) -> Result<Vec<String>, sqlx::Error> {
    text.map_or(Ok(Vec::new()), |t| {
        serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(Box::new(e)))
    })
}

fn view_from_row(r: &AnyRow) -> Result<KeyView, sqlx::Error> {
    Ok(KeyView {
        id: r.str_at(0)?,
        name: r.str_at(1)?,
        user_id: r.str_at(2)?,
        key_hint: r.str_at(3)?,
        is_active: r.bool_at(4)?,
        expires_at: r.opt_i64(5)?,
        can_read: r.bool_at(6)?,
        can_write: r.bool_at(7)?,
        scopes: r
            .opt_str(8)?
            .map_or(Ok(Vec::new()), |s| Scope::parse_list(&s))
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
        ip_restrictions: strings(r.opt_str(9)?)?,
        country_restrictions: strings(r.opt_str(10)?)?,
        domain_restrictions: strings(r.opt_str(11)?)?,
        user_agent_patterns: strings(r.opt_str(12)?)?,
        quota_per_minute: r.opt_i64(13)?,
        quota_per_hour: r.opt_i64(14)?,
        quota_per_day: r.opt_i64(15)?,
        quota_per_month: r.opt_i64(16)?,
        usage_today: r.i64_at(17)?,
        usage_this_month: r.i64_at(18)?,
        last_used_at: r.opt_i64(19)?,
        created_at: r.i64_at(20)?,
        updated_at: r.i64_at(21)?,
        key_hash: r.str_at(22)?,
    })
}

/// Keys of one user, or of everyone (`None`, for admins), newest first.
pub async fn list(db: &Db, user: Option<&str>) -> Result<Vec<KeyView>, sqlx::Error> {
    let q = format!("SELECT {VIEW_COLUMNS} FROM api_keys WHERE (? IS NULL OR user_id = ?) ORDER BY created_at DESC, id DESC");
    let rows = sqlx::query(&db.sql(&q))
        .bind(user)
        .bind(user)
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    rows.iter().map(view_from_row).collect()
}

/// One key, if it belongs to `user` (`None`: any user).
pub async fn get(db: &Db, id: &str, user: Option<&str>) -> Result<Option<KeyView>, sqlx::Error> {
    let mut conn = db.acquire().await?;
    get_in(&mut conn, db, id, user).await
}

/// Stores every mutable field of `v`.
pub async fn update(db: &Db, v: &KeyView) -> Result<(), sqlx::Error> {
    let mut conn = db.acquire().await?;
    update_in(&mut conn, db, v).await
}

/// [`update`] on a connection (or inside a transaction).
pub async fn update_in(conn: &mut AnyConnection, db: &Db, v: &KeyView) -> Result<(), sqlx::Error> {
    let assignments = SETTINGS
        .split(',')
        .map(|c| format!("{} = ?", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let q = format!("UPDATE api_keys SET {assignments}, updated_at = ? WHERE id = ?");
    bind_settings(sqlx::query(&db.sql(&q)), v)
        .bind(now_ms())
        .bind(v.id.as_str())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Inserts a whole key row as `v` describes it (id, hash and hint included).
pub async fn insert_in(conn: &mut AnyConnection, db: &Db, v: &KeyView) -> Result<(), sqlx::Error> {
    let q = format!(
        "INSERT INTO api_keys ({SETTINGS}, id, key_hash, key_hint, user_id, usage_today, usage_this_month, \
         created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?)"
    );
    bind_settings(sqlx::query(&db.sql(&q)), v)
        .bind(v.id.as_str())
        .bind(v.key_hash.as_str())
        .bind(v.key_hint.as_str())
        .bind(v.user_id.as_str())
        .bind(v.created_at)
        .bind(v.updated_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Takes key `id`'s write lock inside a transaction, before anything is
/// read: a no-op write locks the row on PostgreSQL and MySQL, and takes the
/// writer lock on SQLite, where a transaction that reads first and writes
/// later can fail busy.
pub async fn lock_in(conn: &mut AnyConnection, db: &Db, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&db.sql("UPDATE api_keys SET updated_at = updated_at WHERE id = ?"))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// [`get`] on a connection (or inside a transaction, after [`lock_in`]).
pub async fn get_in(
    conn: &mut AnyConnection,
    db: &Db,
    id: &str,
    user: Option<&str>,
) -> Result<Option<KeyView>, sqlx::Error> {
    let q =
        format!("SELECT {VIEW_COLUMNS} FROM api_keys WHERE id = ? AND (? IS NULL OR user_id = ?)");
    let row = sqlx::query(&db.sql(&q))
        .bind(id)
        .bind(user)
        .bind(user)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(view_from_row).transpose()
}

pub async fn delete(db: &Db, id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&db.sql("DELETE FROM api_keys WHERE id = ?"))
        .bind(id)
        .execute(&mut *db.acquire().await?)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Adds `count` uses at `last_used`, starting the day's and month's counters
/// over when the stored ones belong to an earlier day or month.
pub async fn add_usage(
    db: &Db,
    id: &str,
    count: i64,
    last_used: i64,
    day: i64,
    month: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&db.sql(
        "UPDATE api_keys SET \
         usage_today = CASE WHEN usage_day = ? THEN usage_today + ? ELSE ? END, usage_day = ?, \
         usage_this_month = CASE WHEN usage_month = ? THEN usage_this_month + ? ELSE ? END, usage_month = ?, \
         last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < ? THEN ? ELSE last_used_at END \
         WHERE id = ?",
    ))
    .bind(day)
    .bind(count)
    .bind(count)
    .bind(day)
    .bind(month)
    .bind(count)
    .bind(count)
    .bind(month)
    .bind(last_used)
    .bind(last_used)
    .bind(id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(())
}

/// Today's and this month's uses and the last use of key `id`, as of `now`:
/// counters whose stored day or month has passed read as 0, which is what
/// they will be reset to on the next use.
pub async fn current_usage(
    db: &Db,
    id: &str,
    day: i64,
    month: i64,
) -> Result<Option<(i64, i64, Option<i64>)>, sqlx::Error> {
    let row = sqlx::query(&db.sql(
        "SELECT CASE WHEN usage_day = ? THEN usage_today ELSE 0 END, \
         CASE WHEN usage_month = ? THEN usage_this_month ELSE 0 END, last_used_at \
         FROM api_keys WHERE id = ?",
    ))
    .bind(day)
    .bind(month)
    .bind(id)
    .fetch_optional(&mut *db.acquire().await?)
    .await?;
    row.map(|r| Ok((r.i64_at(0)?, r.i64_at(1)?, r.opt_i64(2)?)))
        .transpose()
}
