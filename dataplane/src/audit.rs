//! The audit trail: who did what, to what, from where, with which result.
//!
//! Three kinds of entry, three ways in, so that a flood of one kind can
//! never push out another (a flood of unauthenticated requests used to fill
//! the one shared queue, and 6–8 of 100 real writes went missing):
//!
//! - **Committed writes** (`item.set`, `item.remove`) are written by the
//!   write path in the same transaction as the change (see [`change_entry`]
//!   and `sync`): a write that committed has its entry, always.
//! - **Key management, tokens and conflict resolution** go through
//!   [`Auditor::record`], a bounded queue with back-pressure: when the
//!   writer falls behind the caller waits; nothing is dropped.
//! - **Refused credentials** (`auth.denied`) are counted, not queued: one row
//!   per client IP, error code and key per [`DENIAL_WINDOW`] carries how many
//!   (`count`), so a flood costs a bounded number of rows and bounded memory
//!   ([`Denials`]).
//!
//! `syncstore_audit_dropped_total` counts entries the database refused for
//! good (not for being unavailable, which is retried until it answers).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    error::ApiError,
    metrics::Metrics,
    storage::{audit, now_ms, Db},
};

/// The row types are storage's; the queue and its rules are here.
pub use crate::storage::audit::{Entry, Filter, Row};

/// Who asked for a change and through what: what the audit entry of a
/// committed write carries besides the change itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The API key (or the token's issuing key) that vouched for the caller.
    pub key_id: Option<String>,
    /// The client address, as the authenticator resolved it.
    pub ip: Option<String>,
    /// The REST request's `X-Request-Id`.
    pub request_id: Option<String>,
    /// The Socket.IO session that wrote, if any.
    pub socket: Option<String>,
}

/// The entry of one committed change of `user_id`'s item (`is_deleted`
/// for a removal), as the write path stores it in the change's transaction.
pub fn change_entry(
    user_id: &str,
    source: &Source,
    key: &str,
    is_deleted: bool,
    seq: i64,
    instance_id: &str,
    ts: i64,
) -> Entry {
    let mut details = json!({ "seq": seq, "instanceId": instance_id });
    if let Some(sid) = &source.socket {
        details["socketId"] = json!(sid);
    }
    Entry {
        actor: user_id.to_string(),
        key_id: source.key_id.clone(),
        action: if is_deleted {
            "item.remove"
        } else {
            "item.set"
        },
        target: Some(key.to_string()),
        ip: source.ip.clone(),
        result: "ok".into(),
        request_id: source.request_id.clone(),
        details: Some(details),
        ts,
        count: 1,
    }
}

/// Entries that may wait for the writer before `record` makes callers wait.
const QUEUE: usize = 10_000;
const BATCH: usize = 200;
/// Refused credentials are summed over windows this long.
pub const DENIAL_WINDOW: Duration = Duration::from_secs(2);
/// Distinct (IP, code, key) groups kept per window; beyond them refusals are
/// summed per code alone, so memory and rows stay bounded whatever the
/// attacker's number of addresses.
pub const MAX_DENIAL_GROUPS: usize = 1_000;

/// What a refusal is grouped by: client IP, error code, refused key id.
type Group = (Option<String>, &'static str, Option<String>);

/// Refused credentials of the current window, summed per group. Pure
/// bookkeeping: the clock and the database are the caller's.
#[derive(Debug, Default)]
pub struct Denials {
    /// Group → (count, first ts, last ts).
    groups: BTreeMap<Group, (i64, i64, i64)>,
    /// Code → (count, first ts, last ts) of refusals past the group cap.
    overflow: BTreeMap<&'static str, (i64, i64, i64)>,
}

impl Denials {
    /// Counts one refusal at `ts`.
    pub fn add(&mut self, ip: Option<String>, code: &'static str, key_id: Option<String>, ts: i64) {
        fn bump(slot: &mut (i64, i64, i64), ts: i64) {
            slot.0 += 1;
            slot.1 = slot.1.min(ts);
            slot.2 = slot.2.max(ts);
        }
        let group = (ip, code, key_id);
        if let Some(slot) = self.groups.get_mut(&group) {
            bump(slot, ts);
        } else if self.groups.len() < MAX_DENIAL_GROUPS {
            self.groups.insert(group, (1, ts, ts));
        } else {
            bump(self.overflow.entry(code).or_insert((0, ts, ts)), ts);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.overflow.is_empty()
    }

    /// The window's rows, one per group (and one per code past the cap,
    /// with no IP and `details.overflow`), leaving the tally empty.
    pub fn drain(&mut self) -> Vec<Entry> {
        let row = |ip, code: &str, key_id, (n, first, last): (i64, i64, i64), overflow| Entry {
            actor: "anonymous".into(),
            key_id,
            action: "auth.denied",
            ip,
            result: code.to_string(),
            details: Some(if overflow {
                json!({ "count": n, "first": first, "last": last, "overflow": true })
            } else {
                json!({ "count": n, "first": first, "last": last })
            }),
            ts: last,
            count: n,
            ..Entry::default()
        };
        let mut rows: Vec<Entry> = std::mem::take(&mut self.groups)
            .into_iter()
            .map(|((ip, code, key), tally)| row(ip, code, key, tally, false))
            .collect();
        rows.extend(
            std::mem::take(&mut self.overflow)
                .into_iter()
                .map(|(code, tally)| row(None, code, None, tally, true)),
        );
        rows
    }
}

#[derive(Clone)]
pub struct Auditor {
    /// Where the trail is read from (`GET /audit`); the writer task has
    /// its own handle.
    db: Db,
    tx: mpsc::Sender<Entry>,
    denials: Arc<Mutex<Denials>>,
    metrics: Arc<Metrics>,
}

impl Auditor {
    /// Starts the writer task and the task that writes each window's denials.
    pub fn start(db: Db, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(db.clone(), rx, metrics.clone()));
        let auditor = Self {
            db,
            tx,
            denials: Arc::default(),
            metrics,
        };
        let flusher = auditor.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(DENIAL_WINDOW);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                flusher.flush_denials().await;
            }
        });
        auditor
    }

    /// Counts a refused credential: `syncstore_auth_denials_total{code}` and
    /// the window's `auth.denied` row for this IP, code and key.
    pub fn denied(&self, code: &'static str, ip: Option<String>, key_id: Option<String>) {
        self.metrics.auth_denials.with_label_values(&[code]).inc();
        self.denials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(ip, code, key_id, now_ms());
    }

    /// The entries `filter` selects, newest first (`GET /audit`).
    pub async fn entries(&self, filter: &Filter<'_>) -> Result<Vec<Row>, ApiError> {
        Ok(audit::query(&self.db, filter).await?)
    }

    /// Queues an entry for the writer, waiting while the queue is full:
    /// key management, token and review events are never dropped.
    pub async fn record(&self, mut entry: Entry) {
        entry.ts = now_ms();
        if self.tx.send(entry).await.is_err() {
            // Only when the writer task is gone (the runtime shutting down).
            self.metrics.audit_dropped.inc();
        }
    }

    /// Entries queued for the writer now.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Hands the current window's denials to the writer.
    pub async fn flush_denials(&self) {
        let rows = self
            .denials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain();
        for row in rows {
            if self.tx.send(row).await.is_err() {
                self.metrics.audit_dropped.inc();
            }
        }
    }

    /// At shutdown: the last window's denials, and every queued entry
    /// written (waits up to `timeout`).
    pub async fn flush(&self, timeout: Duration) {
        self.flush_denials().await;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.tx.capacity() < self.tx.max_capacity() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes queued entries in batches. A database that is down is waited for
/// (the queue then fills and callers wait: back-pressure); a batch the
/// database refuses for good is retried entry by entry, and only the
/// entries it still refuses are dropped and counted.
async fn write_loop(db: Db, mut rx: mpsc::Receiver<Entry>, metrics: Arc<Metrics>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut delay = Duration::from_millis(100);
        loop {
            match audit::insert_many(&db, &batch).await {
                Ok(()) => break,
                Err(e) if crate::storage::is_unavailable(&e) => {
                    tracing::warn!(error = %e, entries = batch.len(), "audit batch not written; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::warn!(error = %e, entries = batch.len(), "audit batch refused; writing entries one by one");
                    for entry in &batch {
                        if let Err(e) = audit::record(&db, entry).await {
                            tracing::error!(error = %e, action = entry.action, "audit entry dropped");
                            metrics.audit_dropped.inc();
                        }
                    }
                    break;
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_summed_per_ip_code_and_key() {
        let mut d = Denials::default();
        for i in 0..1000 {
            d.add(Some("203.0.113.9".into()), "UNAUTHORIZED", None, 10 + i);
        }
        d.add(
            Some("203.0.113.9".into()),
            "KEY_INACTIVE",
            Some("k1".into()),
            5,
        );
        d.add(Some("198.51.100.1".into()), "UNAUTHORIZED", None, 7);
        let rows = d.drain();
        assert!(d.is_empty());
        assert_eq!(rows.len(), 3);
        assert_eq!(rows.iter().map(|r| r.count).sum::<i64>(), 1002);
        let flood = rows
            .iter()
            .find(|r| r.ip.as_deref() == Some("203.0.113.9") && r.result == "UNAUTHORIZED")
            .expect("the flood's row");
        assert_eq!((flood.count, flood.ts), (1000, 1009));
        assert_eq!(flood.details.as_ref().unwrap()["first"], 10);
        assert!(rows.iter().all(|r| r.action == "auth.denied"));
    }

    #[test]
    fn groups_past_the_cap_are_summed_per_code_without_losing_counts() {
        let mut d = Denials::default();
        let spread = MAX_DENIAL_GROUPS + 500;
        for i in 0..spread {
            d.add(Some(format!("ip{i}")), "UNAUTHORIZED", None, 1);
            d.add(Some(format!("ip{i}")), "UNAUTHORIZED", None, 2);
        }
        let rows = d.drain();
        assert_eq!(rows.len(), MAX_DENIAL_GROUPS + 1, "bounded rows");
        assert_eq!(rows.iter().map(|r| r.count).sum::<i64>(), 2 * spread as i64);
        let overflow = rows.iter().find(|r| r.ip.is_none()).unwrap();
        assert_eq!(overflow.count, 1000);
        assert_eq!(overflow.details.as_ref().unwrap()["overflow"], true);
    }

    #[test]
    fn a_change_entry_carries_key_ip_and_request_id() {
        let source = Source {
            key_id: Some("k".into()),
            ip: Some("192.0.2.1".into()),
            request_id: Some("r-1".into()),
            socket: None,
        };
        let e = change_entry("alice", &source, "doc", false, 7, "phone", 1);
        assert_eq!(
            (
                e.action,
                e.key_id.as_deref(),
                e.ip.as_deref(),
                e.request_id.as_deref()
            ),
            ("item.set", Some("k"), Some("192.0.2.1"), Some("r-1"))
        );
        assert_eq!(
            e.details.unwrap(),
            json!({ "seq": 7, "instanceId": "phone" })
        );
        assert_eq!(
            change_entry("a", &Source::default(), "k", true, 1, "i", 1).action,
            "item.remove"
        );
    }
}
