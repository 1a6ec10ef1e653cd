//! Queries on `processes` and `connections`: which sockets are open, under
//! which serving process, and whether that process is still alive.
//!
//! Nothing here is a counter. A device's presence is the set of its
//! connection rows whose process beat recently, so what a process that
//! died without a goodbye left behind stops counting on its own, and one
//! socket's rows can only ever be its own (keyed by process and socket id).

use super::{Db, RowExt};

/// One open socket, as recorded under its process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub socket_id: String,
    pub user_id: String,
    pub instance_id: String,
    pub connected_at: i64,
}

/// Records this process as alive until `expires_at` (or again alive, after
/// it was swept).
pub async fn register(
    db: &Db,
    process_id: &str,
    pod: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    let _turn = db.write_turn().await;
    // Delete then insert rather than a dialect's upsert: the id is random
    // per process, so the delete only matters after a sweep took the row.
    sqlx::query(&db.sql("DELETE FROM processes WHERE process_id = ?"))
        .bind(process_id)
        .execute(&mut *db.acquire().await?)
        .await?;
    sqlx::query(&db.sql(
        "INSERT INTO processes (process_id, pod, started_at, heartbeat_at, expires_at) \
         VALUES (?, ?, ?, ?, ?)",
    ))
    .bind(process_id)
    .bind(pod)
    .bind(now)
    .bind(now)
    .bind(expires_at)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(())
}

/// Refreshes this process's heartbeat and deadline. False when its row is
/// gone (another process swept it after a long pause): the caller
/// registers again and re-records its sockets.
pub async fn beat(
    db: &Db,
    process_id: &str,
    now: i64,
    expires_at: i64,
) -> Result<bool, sqlx::Error> {
    let _turn = db.write_turn().await;
    let done = sqlx::query(
        &db.sql("UPDATE processes SET heartbeat_at = ?, expires_at = ? WHERE process_id = ?"),
    )
    .bind(now)
    .bind(expires_at)
    .bind(process_id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Records open sockets of this process. A socket already recorded is
/// left as it is, so re-recording after a sweep cannot fail on duplicates.
pub async fn open(db: &Db, process_id: &str, sockets: &[Connection]) -> Result<(), sqlx::Error> {
    let _turn = db.write_turn().await;
    for c in sockets {
        sqlx::query(&db.sql("DELETE FROM connections WHERE process_id = ? AND socket_id = ?"))
            .bind(process_id)
            .bind(&c.socket_id)
            .execute(&mut *db.acquire().await?)
            .await?;
        sqlx::query(&db.sql(
            "INSERT INTO connections (process_id, socket_id, user_id, instance_id, connected_at) \
             VALUES (?, ?, ?, ?, ?)",
        ))
        .bind(process_id)
        .bind(&c.socket_id)
        .bind(&c.user_id)
        .bind(&c.instance_id)
        .bind(c.connected_at)
        .execute(&mut *db.acquire().await?)
        .await?;
    }
    Ok(())
}

/// Forgets closed sockets of this process.
pub async fn close(db: &Db, process_id: &str, socket_ids: &[String]) -> Result<(), sqlx::Error> {
    let _turn = db.write_turn().await;
    for chunk in socket_ids.chunks(200) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let sql =
            format!("DELETE FROM connections WHERE process_id = ? AND socket_id IN ({marks})");
        let sql = db.sql(&sql);
        let mut q = sqlx::query(&sql).bind(process_id);
        for sid in chunk {
            q = q.bind(sid.as_str());
        }
        q.execute(&mut *db.acquire().await?).await?;
    }
    Ok(())
}

/// Removes this process and its sockets (a clean shutdown).
pub async fn retire(db: &Db, process_id: &str) -> Result<(), sqlx::Error> {
    let _turn = db.write_turn().await;
    sqlx::query(&db.sql("DELETE FROM connections WHERE process_id = ?"))
        .bind(process_id)
        .execute(&mut *db.acquire().await?)
        .await?;
    sqlx::query(&db.sql("DELETE FROM processes WHERE process_id = ?"))
        .bind(process_id)
        .execute(&mut *db.acquire().await?)
        .await?;
    Ok(())
}

/// Removes processes that expired before `expired_before`, and their
/// sockets. Returns how many processes went. Their devices' `last_seen`
/// becomes the dead process's last heartbeat: while a device is connected
/// nothing writes it (see [`live`]), so this is the one moment its row
/// learns when a device on a crashed process was last seen.
pub async fn sweep(db: &Db, expired_before: i64) -> Result<u64, sqlx::Error> {
    let _turn = db.write_turn().await;
    let seen = sqlx::query(&db.sql(
        "SELECT c.user_id, c.instance_id, MAX(p.heartbeat_at) FROM connections c \
         JOIN processes p ON p.process_id = c.process_id \
         WHERE p.expires_at < ? GROUP BY c.user_id, c.instance_id",
    ))
    .bind(expired_before)
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    let mut tx = db.begin().await?;
    if !seen.is_empty() {
        let update = db.sql(
            "UPDATE instances SET last_seen = ? WHERE user_id = ? AND instance_id = ? AND last_seen < ?",
        );
        for row in &seen {
            let beat = row.i64_at(2)?;
            sqlx::query(&update)
                .bind(beat)
                .bind(row.str_at(0)?)
                .bind(row.str_at(1)?)
                .bind(beat)
                .execute(&mut *tx)
                .await?;
        }
    }
    // Connections first: a process row deleted first would leave its
    // sockets unreachable by this query.
    sqlx::query(&db.sql(
        "DELETE FROM connections WHERE process_id IN \
         (SELECT process_id FROM processes WHERE expires_at < ?)",
    ))
    .bind(expired_before)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query(&db.sql("DELETE FROM processes WHERE expires_at < ?"))
        .bind(expired_before)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// A device's live sockets: how many, and the latest heartbeat of the
/// processes that hold them (when it was last known to be connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    pub connections: i64,
    pub seen_at: i64,
}

/// Live sockets per instance of a user: those whose process has not
/// expired by `now`.
pub async fn live(db: &Db, user_id: &str, now: i64) -> Result<Vec<(String, Live)>, sqlx::Error> {
    let rows = sqlx::query(&db.sql(
        "SELECT c.instance_id, COUNT(*), MAX(p.heartbeat_at) FROM connections c \
         JOIN processes p ON p.process_id = c.process_id \
         WHERE c.user_id = ? AND p.expires_at >= ? GROUP BY c.instance_id",
    ))
    .bind(user_id)
    .bind(now)
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| {
            let live = Live {
                connections: r.i64_at(1)?,
                seen_at: r.i64_at(2)?,
            };
            Ok((r.str_at(0)?, live))
        })
        .collect()
}
