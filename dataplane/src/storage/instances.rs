//! Queries on `instances`: device cursors and session facts.

use super::{Db, Dialect, RowExt};

/// Session facts recorded when a device connects.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    pub user_id: &'a str,
    pub instance_id: &'a str,
    pub pod: &'a str,
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub now: i64,
}

/// One device as `GET /sync-storage/sessions` shows it, less its presence
/// (which is not stored here: see [`super::presence`]).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub instance_id: String,
    /// The last seq the device acknowledged.
    pub cursor_seq: i64,
    /// Unix milliseconds, as are the other times.
    pub first_seen: i64,
    /// When the device arrived or left, or its process's last heartbeat
    /// if that process died; a connected device's is read from presence.
    pub last_seen: i64,
    pub connected_at: Option<i64>,
    /// The process it last connected to.
    pub pod: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A device as stored when it connects: its cursors (all zero for a new
/// device) and its subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursors {
    /// The last seq it acknowledged.
    pub acked: i64,
    /// Whether it has ever acknowledged.
    pub acks: bool,
    /// The highest seq it was sent, as of its last disconnect.
    pub delivered: i64,
    /// Whether it had connected before this connection.
    pub known: bool,
    /// Its `sync:subscribe` patterns, as it wrote them (empty: every key).
    pub subscriptions: Vec<String>,
    /// It was told `sync:resync` and has not re-fetched since.
    pub resync_due: bool,
}

impl Cursors {
    /// Where the device resumes: after its acknowledged cursor if it
    /// acknowledges (at-least-once), else after what it was last sent (a
    /// client written from the seed's README, which never acknowledges); 0
    /// for a new device.
    pub fn resume_from(&self) -> i64 {
        if self.acks {
            self.acked
        } else {
            self.delivered
        }
    }

    /// Whether the device has been here before: it may hold keys since
    /// removed, so it is sent removals too, even from a resume point of 0.
    /// Being known is enough: a device that was sent nothing and
    /// acknowledged nothing may still hold its own writes, and a process
    /// killed under it never recorded what it was sent.
    pub fn returning(&self) -> bool {
        self.known || self.acks || self.delivered > 0
    }
}

/// Records a connection's session facts and returns the device's cursors.
/// Whether the device is connected is not counted here: a counter could
/// only be undone by the process that counted, so one killed with -9 left
/// its devices online for good (see [`super::presence`]).
pub async fn arrive(db: &Db, a: &Arrival<'_>) -> Result<Cursors, sqlx::Error> {
    let upsert = match db.dialect() {
        Dialect::Mysql => {
            "INSERT INTO instances (user_id, instance_id, cursor_seq, first_seen, last_seen, connected_at, pod, ip, user_agent, arrivals) \
             VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, 1) ON DUPLICATE KEY UPDATE last_seen = VALUES(last_seen), \
             connected_at = VALUES(connected_at), pod = VALUES(pod), ip = VALUES(ip), \
             user_agent = VALUES(user_agent), arrivals = arrivals + 1"
        }
        _ => {
            "INSERT INTO instances (user_id, instance_id, cursor_seq, first_seen, last_seen, connected_at, pod, ip, user_agent, arrivals) \
             VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (user_id, instance_id) DO UPDATE SET \
             last_seen = excluded.last_seen, connected_at = excluded.connected_at, \
             pod = excluded.pod, ip = excluded.ip, user_agent = excluded.user_agent, \
             arrivals = instances.arrivals + 1"
        }
    };
    // A header, recorded rather than checked: made storable, not refused.
    let ua = a.user_agent.map(|u| crate::text::sanitize(u, 512));
    sqlx::query(&db.sql(upsert))
        .bind(a.user_id)
        .bind(a.instance_id)
        .bind(a.now)
        .bind(a.now)
        .bind(a.now)
        .bind(a.pod)
        .bind(a.ip)
        .bind(ua)
        .execute(&mut *db.acquire().await?)
        .await?;
    let row = sqlx::query(&db.sql(
        "SELECT cursor_seq, has_acked, delivered_seq, arrivals, subscriptions, resync_due FROM instances \
         WHERE user_id = ? AND instance_id = ?",
    ))
    .bind(a.user_id)
    .bind(a.instance_id)
    .fetch_one(&mut *db.acquire().await?)
    .await?;
    let subscriptions = stored_subscriptions(row.opt_str(4)?);
    Ok(Cursors {
        acked: row.i64_at(0)?,
        acks: row.bool_at(1)?,
        delivered: row.i64_at(2)?,
        known: row.i64_at(3)? > 1,
        subscriptions,
        resync_due: row.bool_at(5)?,
    })
}

/// Stores a device's subscriptions (an empty list: every key), so that its
/// next connection, on any pod, starts with them.
/// Subscriptions as `save_subscriptions` wrote them; unreadable means none.
fn stored_subscriptions(json: Option<String>) -> Vec<String> {
    json.map_or_else(Vec::new, |json| {
        serde_json::from_str(&json).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "stored subscriptions unreadable; every key");
            Vec::new()
        })
    })
}

/// The device's stored subscriptions (empty: every key).
pub async fn subscriptions(
    db: &Db,
    user_id: &str,
    instance_id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let row = sqlx::query(
        &db.sql("SELECT subscriptions FROM instances WHERE user_id = ? AND instance_id = ?"),
    )
    .bind(user_id)
    .bind(instance_id)
    .fetch_optional(&mut *db.acquire().await?)
    .await?;
    Ok(match row {
        Some(row) => stored_subscriptions(row.opt_str(0)?),
        None => Vec::new(),
    })
}

pub async fn save_subscriptions(
    db: &Db,
    user_id: &str,
    instance_id: &str,
    patterns: &[String],
) -> Result<(), sqlx::Error> {
    let json = if patterns.is_empty() {
        None
    } else {
        Some(serde_json::to_string(patterns).map_err(|e| sqlx::Error::Encode(Box::new(e)))?)
    };
    sqlx::query(
        &db.sql("UPDATE instances SET subscriptions = ? WHERE user_id = ? AND instance_id = ?"),
    )
    .bind(json)
    .bind(user_id)
    .bind(instance_id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(())
}

/// The device was told `sync:resync`: until it re-fetches ([`resynced`]),
/// every connection of it is told again.
pub async fn owe_resync(db: &Db, user_id: &str, instance_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        &db.sql("UPDATE instances SET resync_due = ? WHERE user_id = ? AND instance_id = ?"),
    )
    .bind(true)
    .bind(user_id)
    .bind(instance_id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(())
}

/// The device re-fetched its whole state (`sync:getAll` after a
/// `sync:resync`) as of `seq`: both of its resume points move up to it, so
/// the next connection resumes from there instead of being told to resync
/// again. The acknowledged cursor moves only for a device that acknowledges
/// (one that does not keeps resuming after what it was sent). The debt
/// [`owe_resync`] recorded is paid.
pub async fn resynced(
    db: &Db,
    user_id: &str,
    instance_id: &str,
    seq: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&db.sql(
        "UPDATE instances SET \
         cursor_seq = CASE WHEN has_acked = ? AND cursor_seq < ? THEN ? ELSE cursor_seq END, \
         delivered_seq = CASE WHEN delivered_seq < ? THEN ? ELSE delivered_seq END, \
         resync_due = ? WHERE user_id = ? AND instance_id = ?",
    ))
    .bind(true)
    .bind(seq)
    .bind(seq)
    .bind(seq)
    .bind(seq)
    .bind(false)
    .bind(user_id)
    .bind(instance_id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(())
}

/// Records a disconnection's time, and the highest seq the device was sent.
pub async fn leave(
    db: &Db,
    user_id: &str,
    instance_id: &str,
    delivered: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&db.sql(
        "UPDATE instances SET delivered_seq = CASE WHEN delivered_seq < ? THEN ? ELSE delivered_seq END, \
         last_seen = ? WHERE user_id = ? AND instance_id = ?",
    ))
    .bind(delivered)
    .bind(delivered)
    .bind(now)
    .bind(user_id)
    .bind(instance_id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(())
}

/// Moves the acknowledged cursor forward (never back), and marks the device
/// as one that acknowledges.
pub async fn advance_cursor(
    db: &Db,
    user_id: &str,
    instance_id: &str,
    seq: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(&db.sql(
        "UPDATE instances SET cursor_seq = CASE WHEN cursor_seq < ? THEN ? ELSE cursor_seq END, \
         has_acked = ? WHERE user_id = ? AND instance_id = ?",
    ))
    .bind(seq)
    .bind(seq)
    .bind(true)
    .bind(user_id)
    .bind(instance_id)
    .execute(&mut *db.acquire().await?)
    .await?;
    Ok(())
}

/// The user's devices, most recently seen first.
pub async fn list(db: &Db, user_id: &str) -> Result<Vec<Instance>, sqlx::Error> {
    let rows = sqlx::query(&db.sql(
        "SELECT instance_id, cursor_seq, first_seen, last_seen, connected_at, pod, ip, user_agent \
         FROM instances WHERE user_id = ? ORDER BY last_seen DESC",
    ))
    .bind(user_id)
    .fetch_all(&mut *db.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Instance {
                instance_id: r.str_at(0)?,
                cursor_seq: r.i64_at(1)?,
                first_seen: r.i64_at(2)?,
                last_seen: r.i64_at(3)?,
                connected_at: r.opt_i64(4)?,
                pod: r.opt_str(5)?,
                ip: r.opt_str(6)?,
                user_agent: r.opt_str(7)?,
            })
        })
        .collect()
}
