//! Which devices are online, derived from what is alive.
//!
//! Every `serve` process picks a random id at start and keeps a heartbeat
//! row (`processes`) fresh every [`Presence::interval`]
//! (`PRESENCE_HEARTBEAT_MS`); each open socket has a row under its process
//! (`connections`). Each heartbeat moves the process's deadline to
//! [`Presence::expiry`] (three intervals) ahead. A device is online while it
//! has a connection row whose process's deadline has not passed. A process
//! killed with -9 cannot say goodbye; its last heartbeat came before it
//! died, so its devices go offline at most one expiry after its death
//! (30 s with the default 10 s interval). A clean shutdown removes its rows
//! at once; any process sweeps the rows of processes one expiry past their
//! deadline.
//!
//! Why not a counter per device, as before: a counter is only right if
//! every increment meets its decrement, and a dead process's never do.
//! Rows keyed by (process, socket) cannot drift: each is written and
//! removed by the one socket it describes, and liveness is a fact about
//! the process, read at query time.
//!
//! Times are each process's wall clock, compared across pods; the expiry
//! of three intervals absorbs the small skew NTP leaves.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::storage::{now_ms, presence, Db};

pub use presence::{Connection, Live};

/// Heartbeats a process may miss (a slow database, a pause) before its
/// devices count as offline: two missed beats do not flicker them.
pub const MISSED_BEATS: u32 = 3;

pub struct Presence {
    db: Db,
    process_id: String,
    pod: String,
    interval: Duration,
    /// Re-recording every socket after this process's row was swept takes
    /// it exclusively; opening and closing single sockets share it. So a
    /// socket closed while the snapshot of open sockets is written cannot
    /// be written back after its row was removed.
    rewrite: tokio::sync::RwLock<()>,
    /// Sockets whose row could not be removed (the database was away):
    /// retried at every heartbeat, or they would show online for as long
    /// as this process lives.
    unclosed: Mutex<Vec<String>>,
}

impl Presence {
    /// Registers this process under a new random id.
    pub async fn start(db: Db, pod: &str, interval: Duration) -> Result<Arc<Self>, sqlx::Error> {
        let me = Self {
            db,
            process_id: uuid::Uuid::new_v4().simple().to_string(),
            pod: pod.to_string(),
            interval,
            rewrite: tokio::sync::RwLock::new(()),
            unclosed: Mutex::new(Vec::new()),
        };
        let now = now_ms();
        presence::register(&me.db, &me.process_id, pod, now, now + me.expiry_ms()).await?;
        tracing::info!(process_id = %me.process_id, pod, ?interval, "process registered for presence");
        Ok(Arc::new(me))
    }

    pub fn process_id(&self) -> &str {
        &self.process_id
    }

    /// How often this process beats (`PRESENCE_HEARTBEAT_MS`).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long after its last heartbeat a process's devices still count
    /// as online, and so the bound on how long after a crash they do.
    pub fn expiry(&self) -> Duration {
        self.interval * MISSED_BEATS
    }

    fn expiry_ms(&self) -> i64 {
        i64::try_from(self.expiry().as_millis()).unwrap_or(i64::MAX)
    }

    /// Records an open socket. On failure the device shows offline while
    /// connected (logged), never online while gone.
    pub async fn opened(&self, connection: Connection) {
        let _shared = self.rewrite.read().await;
        if let Err(e) = presence::open(&self.db, &self.process_id, &[connection]).await {
            tracing::warn!(error = %e, "socket not recorded as present");
        }
    }

    /// Forgets a closed socket; retried at the next heartbeats if the
    /// database does not answer now.
    pub async fn closed(&self, socket_id: &str) {
        let _shared = self.rewrite.read().await;
        let ids = [socket_id.to_string()];
        if let Err(e) = presence::close(&self.db, &self.process_id, &ids).await {
            tracing::warn!(error = %e, "closed socket not forgotten yet; will retry");
            self.unclosed_list().extend(ids);
        }
    }

    fn unclosed_list(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.unclosed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One heartbeat: refresh this process's row (re-registering with the
    /// sockets `open` lists if another process swept it after a pause),
    /// retry closes that failed, and sweep processes that stopped beating.
    pub async fn beat(&self, open: impl FnOnce() -> Vec<Connection>) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let deadline = now + self.expiry_ms();
        if !presence::beat(&self.db, &self.process_id, now, deadline).await? {
            let _exclusive = self.rewrite.write().await;
            tracing::warn!(process_id = %self.process_id, "presence row was swept; recording this process's sockets again");
            presence::register(&self.db, &self.process_id, &self.pod, now, deadline).await?;
            presence::open(&self.db, &self.process_id, &open()).await?;
        }
        let retry = std::mem::take(&mut *self.unclosed_list());
        if !retry.is_empty() {
            let _shared = self.rewrite.read().await;
            if let Err(e) = presence::close(&self.db, &self.process_id, &retry).await {
                self.unclosed_list().extend(retry);
                return Err(e);
            }
        }
        let swept = presence::sweep(&self.db, now - self.expiry_ms()).await?;
        if swept > 0 {
            tracing::info!(processes = swept, "stale processes' presence swept");
        }
        Ok(())
    }

    /// Removes this process's rows: its devices go offline at once rather
    /// than after the expiry. Called once the heartbeat has stopped.
    pub async fn retire(&self) {
        let _exclusive = self.rewrite.write().await;
        if let Err(e) = presence::retire(&self.db, &self.process_id).await {
            tracing::warn!(error = %e, "presence not removed at shutdown; it expires on its own");
        }
    }

    /// Live sockets per instance of `user_id`.
    pub async fn live(&self, user_id: &str) -> Result<HashMap<String, Live>, sqlx::Error> {
        Ok(presence::live(&self.db, user_id, now_ms())
            .await?
            .into_iter()
            .collect())
    }
}
