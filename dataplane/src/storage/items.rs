//! Queries on `sync_items`, `item_versions` and `user_state`.
//!
//! Functions here only move rows; what to write is decided in `sync`.

use serde_json::value::RawValue;
use sqlx::{any::AnyRow, AnyConnection};

use super::{raw_json, Db, Dialect, RowExt};
use crate::domain::Item;

const ITEM_COLUMNS: &str =
    "id, user_id, instance_id, item_key, value, metadata, version, timestamp, \
     last_modified, is_deleted, size, compression_type, encryption_type, tags, ttl, priority, seq";

/// The user's sequence head and storage use, read under the user's row lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserState {
    pub last_seq: i64,
    pub bytes_used: i64,
}

fn item_from_row(row: &AnyRow) -> Result<Item, sqlx::Error> {
    Ok(Item {
        id: row.str_at(0)?,
        user_id: row.str_at(1)?,
        instance_id: row.str_at(2)?,
        key: row.str_at(3)?,
        value: raw_json(row.opt_str(4)?)?,
        metadata: raw_json(row.opt_str(5)?)?,
        version: row.i64_at(6)?,
        timestamp: row.i64_at(7)?,
        last_modified: row.i64_at(8)?,
        is_deleted: row.bool_at(9)?,
        size: row.i64_at(10)?,
        compression_type: row.opt_str(11)?,
        encryption_type: row.opt_str(12)?,
        tags: raw_json(row.opt_str(13)?)?,
        ttl: row.opt_i64(14)?,
        priority: row.i64_at(15)?,
        seq: row.i64_at(16)?,
    })
}

/// Takes the user's row lock (creating the row on first use) and returns the
/// state under it. Every write transaction starts here: on PostgreSQL and
/// MySQL the upsert locks only this user's row; on SQLite this first write
/// takes the database's writer lock before anything is read, which avoids
/// the read-then-upgrade deadlock.
pub async fn lock_user(
    conn: &mut AnyConnection,
    db: &Db,
    user_id: &str,
    now: i64,
) -> Result<UserState, sqlx::Error> {
    match db.dialect() {
        Dialect::Postgres | Dialect::Sqlite => {
            let row = sqlx::query(&db.sql(
                "INSERT INTO user_state (user_id, last_seq, bytes_used, purged_seq, updated_at) \
                 VALUES (?, 0, 0, 0, ?) \
                 ON CONFLICT (user_id) DO UPDATE SET updated_at = excluded.updated_at \
                 RETURNING last_seq, bytes_used",
            ))
            .bind(user_id)
            .bind(now)
            .fetch_one(&mut *conn)
            .await?;
            Ok(UserState {
                last_seq: row.i64_at(0)?,
                bytes_used: row.i64_at(1)?,
            })
        }
        Dialect::Mysql => {
            sqlx::query(
                "INSERT INTO user_state (user_id, last_seq, bytes_used, purged_seq, updated_at) \
                 VALUES (?, 0, 0, 0, ?) ON DUPLICATE KEY UPDATE updated_at = VALUES(updated_at)",
            )
            .bind(user_id)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            let row = sqlx::query("SELECT last_seq, bytes_used FROM user_state WHERE user_id = ?")
                .bind(user_id)
                .fetch_one(&mut *conn)
                .await?;
            Ok(UserState {
                last_seq: row.i64_at(0)?,
                bytes_used: row.i64_at(1)?,
            })
        }
    }
}

/// Stores the new sequence head and storage use at the end of a write.
pub async fn save_user(
    conn: &mut AnyConnection,
    db: &Db,
    user_id: &str,
    state: UserState,
) -> Result<(), sqlx::Error> {
    sqlx::query(&db.sql("UPDATE user_state SET last_seq = ?, bytes_used = ? WHERE user_id = ?"))
        .bind(state.last_seq)
        .bind(state.bytes_used)
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// The item row, deleted or expired or not, locked for the rest of the write.
pub async fn fetch_for_write(
    conn: &mut AnyConnection,
    db: &Db,
    user_id: &str,
    key: &str,
) -> Result<Option<Item>, sqlx::Error> {
    let q = format!(
        "SELECT {ITEM_COLUMNS} FROM sync_items WHERE user_id = ? AND item_key = ?{}",
        db.dialect().for_update()
    );
    let row = sqlx::query(&db.sql(&q))
        .bind(user_id)
        .bind(key)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(item_from_row).transpose()
}

/// Inserts or replaces the item row. `exists` comes from the read the write
/// path already made under the lock, so no dialect-specific upsert is needed.
pub async fn store_item(
    conn: &mut AnyConnection,
    db: &Db,
    item: &Item,
    exists: bool,
) -> Result<(), sqlx::Error> {
    let sql = if exists {
        "UPDATE sync_items SET instance_id = ?, value = ?, metadata = ?, version = ?, timestamp = ?, \
         last_modified = ?, is_deleted = ?, size = ?, compression_type = ?, encryption_type = ?, tags = ?, \
         ttl = ?, priority = ?, seq = ?, id = ? WHERE user_id = ? AND item_key = ?"
    } else {
        "INSERT INTO sync_items (instance_id, value, metadata, version, timestamp, last_modified, is_deleted, \
         size, compression_type, encryption_type, tags, ttl, priority, seq, id, user_id, item_key, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    };
    let sql = db.sql(sql);
    let mut q = sqlx::query(&sql)
        .bind(item.instance_id.as_str())
        .bind(item.value.as_deref().map(RawValue::get))
        .bind(item.metadata.as_deref().map(RawValue::get))
        .bind(item.version)
        .bind(item.timestamp)
        .bind(item.last_modified)
        .bind(item.is_deleted)
        .bind(item.size)
        .bind(item.compression_type.as_deref())
        .bind(item.encryption_type.as_deref())
        .bind(item.tags.as_deref().map(RawValue::get))
        .bind(item.ttl)
        .bind(item.priority)
        .bind(item.seq)
        .bind(item.id.as_str())
        .bind(item.user_id.as_str())
        .bind(item.key.as_str());
    if !exists {
        q = q.bind(item.last_modified);
    }
    q.execute(conn).await?;
    Ok(())
}

/// Appends the item's new state to its history and drops all but the newest
/// `keep` versions.
pub async fn append_version(
    conn: &mut AnyConnection,
    db: &Db,
    item: &Item,
    keep: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&db.sql(
        "INSERT INTO item_versions (user_id, item_key, version, seq, instance_id, value, metadata, is_deleted, \
         timestamp, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ))
    .bind(item.user_id.as_str())
    .bind(item.key.as_str())
    .bind(item.version)
    .bind(item.seq)
    .bind(item.instance_id.as_str())
    .bind(item.value.as_deref().map(RawValue::get))
    .bind(item.metadata.as_deref().map(RawValue::get))
    .bind(item.is_deleted)
    .bind(item.timestamp)
    .bind(item.last_modified)
    .execute(&mut *conn)
    .await?;
    if item.version <= keep {
        return Ok(()); // nothing old enough to drop yet: save the round trip
    }
    sqlx::query(
        &db.sql("DELETE FROM item_versions WHERE user_id = ? AND item_key = ? AND version <= ?"),
    )
    .bind(item.user_id.as_str())
    .bind(item.key.as_str())
    .bind(item.version - keep)
    .execute(conn)
    .await?;
    Ok(())
}

/// A live (not removed, not expired) item.
pub async fn get_visible(
    db: &Db,
    user_id: &str,
    key: &str,
    now: i64,
) -> Result<Option<Item>, sqlx::Error> {
    let q = format!(
        "SELECT {ITEM_COLUMNS} FROM sync_items WHERE user_id = ? AND item_key = ? \
         AND is_deleted = ? AND (ttl IS NULL OR ttl > ?)"
    );
    let row = sqlx::query(&db.sql(&q))
        .bind(user_id)
        .bind(key)
        .bind(false)
        .bind(now)
        .fetch_optional(&mut *db.acquire().await?)
        .await?;
    row.as_ref().map(item_from_row).transpose()
}

/// Live items whose key starts with `prefix`, in key order.
///
/// LIKE narrows the scan through the index; the final `starts_with` makes
/// the result exact whatever the column collation or LIKE case rules.
pub async fn list_visible(
    db: &Db,
    user_id: &str,
    prefix: &str,
    now: i64,
) -> Result<Vec<Item>, sqlx::Error> {
    let q = format!(
        "SELECT {ITEM_COLUMNS} FROM sync_items WHERE user_id = ? AND is_deleted = ? \
         AND (ttl IS NULL OR ttl > ?) AND {} ORDER BY item_key",
        super::like("item_key")
    );
    let rows = sqlx::query(&db.sql(&q))
        .bind(user_id)
        .bind(false)
        .bind(now)
        .bind(super::like_prefix(prefix))
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        let item = item_from_row(row)?;
        if item.key.starts_with(prefix) {
            items.push(item);
        }
    }
    Ok(items)
}

/// Keys of live items starting with `prefix`, in key order.
pub async fn list_keys(
    db: &Db,
    user_id: &str,
    prefix: &str,
    now: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let q = format!(
        "SELECT item_key FROM sync_items WHERE user_id = ? AND is_deleted = ? \
         AND (ttl IS NULL OR ttl > ?) AND {} ORDER BY item_key",
        super::like("item_key")
    );
    let rows = sqlx::query(&db.sql(&q))
        .bind(user_id)
        .bind(false)
        .bind(now)
        .bind(super::like_prefix(prefix))
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for row in &rows {
        let key = row.str_at(0)?;
        if key.starts_with(prefix) {
            keys.push(key);
        }
    }
    Ok(keys)
}

/// Every non-tombstone row of the user (expired ones included: clearing
/// must remove them too), locked, in key order.
pub async fn live_rows_for_write(
    conn: &mut AnyConnection,
    db: &Db,
    user_id: &str,
) -> Result<Vec<Item>, sqlx::Error> {
    let q = format!(
        "SELECT {ITEM_COLUMNS} FROM sync_items WHERE user_id = ? AND is_deleted = ? ORDER BY item_key{}",
        db.dialect().for_update()
    );
    let rows = sqlx::query(&db.sql(&q))
        .bind(user_id)
        .bind(false)
        .fetch_all(conn)
        .await?;
    rows.iter().map(item_from_row).collect()
}

/// Up to `limit` (user, key) pairs whose TTL has passed and which are not yet
/// tombstones.
pub async fn expired(db: &Db, now: i64, limit: i64) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query(&db.sql(
        "SELECT user_id, item_key FROM sync_items WHERE ttl IS NOT NULL AND ttl <= ? AND is_deleted = ? \
         ORDER BY ttl LIMIT ?",
    ))
    .bind(now)
    .bind(false)
    .bind(limit)
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| Ok((r.str_at(0)?, r.str_at(1)?)))
        .collect()
}

/// The user's state outside any write, for tests and diagnostics.
pub async fn user_state(db: &Db, user_id: &str) -> Result<Option<UserState>, sqlx::Error> {
    let row = sqlx::query(&db.sql("SELECT last_seq, bytes_used FROM user_state WHERE user_id = ?"))
        .bind(user_id)
        .fetch_optional(&mut *db.acquire().await?)
        .await?;
    row.map(|r| {
        Ok(UserState {
            last_seq: r.i64_at(0)?,
            bytes_used: r.i64_at(1)?,
        })
    })
    .transpose()
}

/// All rows of the user with `seq > after`, tombstones included, in seq order.
pub async fn changes_since(db: &Db, user_id: &str, after: i64) -> Result<Vec<Item>, sqlx::Error> {
    let q =
        format!("SELECT {ITEM_COLUMNS} FROM sync_items WHERE user_id = ? AND seq > ? ORDER BY seq");
    let rows = sqlx::query(&db.sql(&q))
        .bind(user_id)
        .bind(after)
        .fetch_all(&mut *db.acquire().await?)
        .await?;
    rows.iter().map(item_from_row).collect()
}

/// The stored history of one key, newest first.
pub async fn versions(db: &Db, user_id: &str, key: &str) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let rows = sqlx::query(&db.sql(
        "SELECT version, seq FROM item_versions WHERE user_id = ? AND item_key = ? ORDER BY version DESC",
    ))
    .bind(user_id)
    .bind(key)
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| Ok((r.i64_at(0)?, r.i64_at(1)?)))
        .collect()
}

/// The user's sequence head and the seq up to which tombstones are purged
/// (0, 0 for a user who never wrote).
pub async fn heads(db: &Db, user_id: &str) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(&db.sql("SELECT last_seq, purged_seq FROM user_state WHERE user_id = ?"))
        .bind(user_id)
        .fetch_optional(&mut *db.acquire().await?)
        .await?;
    match row {
        Some(r) => Ok((r.i64_at(0)?, r.i64_at(1)?)),
        None => Ok((0, 0)),
    }
}

/// Deletes tombstones last changed before `older_than`, up to `limit`
/// users per call, and raises each user's `purged_seq` to the highest seq
/// deleted, so devices whose cursor is older know to resync. Returns how
/// many users were purged.
pub async fn purge_tombstones(db: &Db, older_than: i64, limit: i64) -> Result<usize, sqlx::Error> {
    let users = sqlx::query(&db.sql(
        "SELECT user_id, MAX(seq) FROM sync_items WHERE is_deleted = ? AND last_modified < ? \
         GROUP BY user_id LIMIT ?",
    ))
    .bind(true)
    .bind(older_than)
    .bind(limit)
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    for row in &users {
        let (user_id, max_seq) = (row.str_at(0)?, row.i64_at(1)?);
        let _turn = db.write_turn().await;
        let mut tx = db.begin().await?;
        lock_user(&mut tx, db, &user_id, super::now_ms()).await?;
        // The kept versions go first, with their tombstones: a key written
        // again later starts over at version 1, which must not meet them.
        const PURGED: &str = "FROM sync_items \
            WHERE user_id = ? AND is_deleted = ? AND last_modified < ? AND seq <= ?";
        for delete in [
            format!("DELETE FROM item_versions WHERE (user_id, item_key) IN (SELECT user_id, item_key {PURGED})"),
            format!("DELETE {PURGED}"),
        ] {
            sqlx::query(&db.sql(&delete))
                .bind(user_id.as_str())
                .bind(true)
                .bind(older_than)
                .bind(max_seq)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(&db.sql(
            "UPDATE user_state SET purged_seq = CASE WHEN purged_seq < ? THEN ? ELSE purged_seq END WHERE user_id = ?",
        ))
        .bind(max_seq)
        .bind(max_seq)
        .bind(user_id.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(users.len())
}

/// The stored version `version` of a key, as an item (the base of a merge),
/// if it is still kept.
pub async fn version_at(
    conn: &mut AnyConnection,
    db: &Db,
    user_id: &str,
    key: &str,
    version: i64,
) -> Result<Option<Item>, sqlx::Error> {
    let row = sqlx::query(&db.sql(
        "SELECT value, metadata, seq, instance_id, is_deleted, timestamp, created_at FROM item_versions \
         WHERE user_id = ? AND item_key = ? AND version = ?",
    ))
    .bind(user_id)
    .bind(key)
    .bind(version)
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(Item {
        id: String::new(),
        user_id: user_id.to_string(),
        instance_id: r.str_at(3)?,
        key: key.to_string(),
        value: raw_json(r.opt_str(0)?)?,
        metadata: raw_json(r.opt_str(1)?)?,
        version,
        timestamp: r.i64_at(5)?,
        last_modified: r.i64_at(6)?,
        is_deleted: r.bool_at(4)?,
        size: 0,
        compression_type: None,
        encryption_type: None,
        tags: None,
        ttl: None,
        priority: 0,
        seq: r.i64_at(2)?,
    }))
}
