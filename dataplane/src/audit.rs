//! The audit trail: who did what, to what, from where, with which result.
//!
//! Entries go through a bounded channel to one task that writes them in
//! batches, so recording never delays a request and a flood of failed
//! logins costs one insert per batch, not one per attempt. When the channel
//! is full, entries are dropped and counted (`syncstore_audit_dropped_total`).

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    metrics::Metrics,
    storage::{audit, now_ms, Db},
};

/// One entry, owned, as queued.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    /// The user acting (or `anonymous`, `cli`).
    pub actor: String,
    pub key_id: Option<String>,
    pub action: &'static str,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub result: String,
    pub request_id: Option<String>,
    pub details: Option<Value>,
    pub ts: i64,
}

const QUEUE: usize = 10_000;
const BATCH: usize = 200;

#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Entry>,
    metrics: Arc<Metrics>,
}

impl Auditor {
    /// Starts the writer task.
    pub fn start(db: Db, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(db, rx));
        Self { tx, metrics }
    }

    /// Counts a refused credential in `syncstore_auth_denials_total{code}`.
    pub fn denied(&self, code: &str) {
        self.metrics.auth_denials.with_label_values(&[code]).inc();
    }

    pub fn record(&self, mut entry: Entry) {
        entry.ts = now_ms();
        if self.tx.try_send(entry).is_err() {
            self.metrics.audit_dropped.inc();
        }
    }
}

async fn write_loop(db: Db, mut rx: mpsc::Receiver<Entry>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut delay = Duration::from_millis(100);
        loop {
            match audit::insert_many(&db, &batch).await {
                Ok(()) => break,
                Err(e) if delay < Duration::from_secs(5) => {
                    tracing::warn!(error = %e, entries = batch.len(), "audit batch not written; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => {
                    tracing::error!(error = %e, entries = batch.len(), "audit batch dropped");
                    break;
                }
            }
        }
        batch.clear();
    }
}
