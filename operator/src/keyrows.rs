//! Which `api_keys` rows the operator wrote, and for which ApiKey.
//!
//! A store's `api_keys` table also holds keys made through the REST API or
//! `syncstore keys`, which no ApiKey object describes; only the operator's
//! own rows may be revoked because their ApiKey is gone. So every row the
//! operator inserts (or finds for an ApiKey) is recorded in a small ledger
//! table in the store's schema, next to the data plane's tables but outside
//! its migrations: the data plane never reads it.

use sqlx::Row;
use syncstore::storage::{Db, Dialect};

use crate::error::{Error, Result};

/// The ledger: row id → the ApiKey (uid, name) it was written for.
pub const LEDGER: &str = "_syncstore_operator_keys";

fn db_err(e: sqlx::Error) -> Error {
    Error::KeyStore(match &e {
        sqlx::Error::Database(d) => d.message().to_string(),
        other => other.to_string(),
    })
}

/// Creates the ledger if it is missing (stores provisioned before it).
pub async fn ensure(db: &Db) -> Result<()> {
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {LEDGER} (key_id VARCHAR(36) NOT NULL PRIMARY KEY, \
         apikey_uid VARCHAR(64) NOT NULL, apikey VARCHAR(253) NOT NULL)"
    ))
    .execute(db.pool())
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Records that row `key_id` belongs to ApiKey `name` (uid `uid`). A row
/// already recorded keeps its first owner.
pub async fn record(db: &Db, key_id: &str, uid: &str, name: &str) -> Result<()> {
    ensure(db).await?;
    let insert = match db.dialect() {
        Dialect::Postgres => format!(
            "INSERT INTO {LEDGER} (key_id, apikey_uid, apikey) VALUES (?, ?, ?) ON CONFLICT (key_id) DO NOTHING"
        ),
        Dialect::Mysql => {
            format!("INSERT IGNORE INTO {LEDGER} (key_id, apikey_uid, apikey) VALUES (?, ?, ?)")
        }
        Dialect::Sqlite => {
            format!("INSERT OR IGNORE INTO {LEDGER} (key_id, apikey_uid, apikey) VALUES (?, ?, ?)")
        }
    };
    sqlx::query(&db.sql(&insert))
        .bind(key_id)
        .bind(uid)
        .bind(name)
        .execute(db.pool())
        .await
        .map_err(db_err)?;
    Ok(())
}

/// One recorded row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key_id: String,
    pub apikey_uid: String,
    pub apikey: String,
}

/// Every recorded row.
pub async fn entries(db: &Db) -> Result<Vec<Entry>> {
    ensure(db).await?;
    let rows = sqlx::query(&format!("SELECT key_id, apikey_uid, apikey FROM {LEDGER}"))
        .fetch_all(db.pool())
        .await
        .map_err(db_err)?;
    rows.iter()
        .map(|r| {
            Ok(Entry {
                key_id: r.try_get(0).map_err(db_err)?,
                apikey_uid: r.try_get(1).map_err(db_err)?,
                apikey: r.try_get(2).map_err(db_err)?,
            })
        })
        .collect()
}
