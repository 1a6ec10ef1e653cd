//! The write path and the item queries.
//!
//! Every command (set, remove, clear, TTL expiry) runs as one transaction:
//! take the user's row lock, read the row, decide (in [`plan`]), store the row
//! and its version, store the new sequence head. The per-user sequence that
//! this produces is the change stream the rest of the system reads.

mod change;
pub mod devices;
mod item;
mod operation;
pub mod plan;
pub mod review;

use std::{future::Future, sync::Arc};

use sqlx::AnyConnection;
use tracing::Instrument;

pub use item::{
    validate_client_instance_id, validate_instance_id, validate_key, validate_prefix,
    validate_user_id, SetRequest, Ttl,
};
use operation::Op;
pub use operation::{OperationId, Reply};
use plan::WriteCtx;
pub use plan::{Assist, Command, Settles};

/// The instance a review's resolution is written as.
pub const CONFLICT_RESOLVER: &str = "conflict-resolver";

/// The vocabulary of the write path, defined in `domain`.
pub use crate::domain::{json_value, Change, ConflictRecord, Item, SetStatus};
use serde::{Deserialize, Serialize};

use crate::{
    audit::{self, Auditor, Source},
    conflict::{self, resolver::Resolver, Policy},
    error::ApiError,
    fanout::{Bus, Envelope},
    metrics::Metrics,
    storage::{self, conflicts, idempotency, items, items::UserState, now_ms, Db},
    telemetry::{self, TARGET},
};

/// How often a transaction that lost a deadlock or a busy lock is retried.
const WRITE_ATTEMPTS: usize = 4;

/// What a write transaction did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Rows written, in seq order.
    pub changed: Vec<Item>,
    /// For a set: how it ended.
    pub set_status: Option<SetStatus>,
    pub conflict_id: Option<String>,
    /// The row as it was before (for a set or a remove).
    pub current: Option<Item>,
    /// For an ASSISTED set still to be resolved: its base version.
    base: Option<Item>,
    needs_assist: bool,
    /// The writer's reply (for the TTL sweeper's commands, none). A retry of
    /// an operation gets its first reply here, and nothing else is set.
    pub reply: Option<Reply>,
}

/// The writer's reply to a set.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetReply {
    pub status: SetStatus,
    /// The item as it now is (the current one when the write lost).
    pub item: Item,
    /// The conflict this write caused, when it was concurrent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict_id: Option<String>,
}

impl SetReply {
    /// The reply if the write won; a write that lost or waits for review is
    /// VERSION_CONFLICT carrying this reply (REST's 409).
    pub fn won(self, expected: Option<i64>) -> Result<SetReply, ApiError> {
        match self.status {
            SetStatus::Applied | SetStatus::Merged => Ok(self),
            status => Err(ApiError::VersionConflict {
                expected,
                current: Box::new(self.item),
                status,
                conflict_id: self.conflict_id,
            }),
        }
    }
}

/// The reply to a remove.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Removed {
    pub status: RemovedStatus,
    pub key: String,
    pub seq: i64,
    pub version: i64,
}

/// A remove's `status`: always `removed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RemovedStatus {
    #[default]
    Removed,
}

/// The reply to a clear: how many items went, and the seq range they took.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cleared {
    /// How many items were removed.
    pub cleared: usize,
    /// The user's latest seq once the clear is done.
    pub last_seq: i64,
}

/// The sync service: the one write path, plus reads.
#[derive(Clone)]
pub struct SyncService {
    db: Db,
    limits: Limits,
    metrics: Arc<Metrics>,
    bus: Arc<dyn Bus>,
    policy: Policy,
    resolver: Option<Resolver>,
    history_versions: i64,
    /// Whether committed writes are audited (in their own transaction).
    audited: bool,
}

fn no_row() -> ApiError {
    ApiError::Internal("a write command changed no row".into())
}

/// A transaction's result: the outer error is the database's (maybe worth a
/// retry), the inner one is the client's.
type TxResult<T> = Result<Result<T, ApiError>, sqlx::Error>;

impl SyncService {
    pub fn new(
        db: Db,
        limits: Limits,
        metrics: Arc<Metrics>,
        bus: Arc<dyn Bus>,
        conflicts: conflict::Settings,
    ) -> Self {
        Self {
            db,
            limits,
            metrics,
            bus,
            policy: conflicts.policy,
            resolver: conflicts.resolver,
            history_versions: conflicts.history_versions,
            audited: false,
        }
    }

    /// Records every committed write in the audit trail, in the write's
    /// own transaction: a write that committed always has its entry, however
    /// busy the trail's queue (which these entries never go through).
    pub fn with_audit(mut self, _trail: Auditor) -> Self {
        self.audited = true;
        self
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The database engine's name (`sqlite`, `postgres`, `mysql`) if the
    /// database answers now, for `/ready`.
    pub async fn database_ready(&self) -> Option<&'static str> {
        if self.db.ping().await {
            Some(self.db.dialect().name())
        } else {
            None
        }
    }

    /// The connection pool's open, idle and most connections, for the
    /// gauges of `/metrics`.
    pub fn pool_stats(&self) -> (u32, usize, u32) {
        self.db.pool_stats()
    }

    /// Runs one write transaction, retrying it when the database chose it as
    /// a deadlock victim or a lock was busy.
    async fn retrying<T, F, Fut>(&self, mut attempt: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = TxResult<T>>,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            let turn = self.db.write_turn().await;
            let outcome = attempt().await;
            drop(turn);
            match outcome {
                Ok(result) => return result,
                Err(e) if tries < WRITE_ATTEMPTS && storage::is_retryable(&e) => {
                    tracing::debug!(error = %e, tries, "retrying write transaction");
                    tokio::time::sleep(std::time::Duration::from_millis(5 * tries as u64)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs one command as one transaction in a task of its own, so that a
    /// client going away mid-write neither cancels it half-way nor skips
    /// what follows the commit. Returns the rows it changed, in seq order.
    ///
    /// With an operation id, a retry of a write already done (same id, same
    /// request) changes nothing and gets the first reply; the same id on
    /// another request is `IDEMPOTENCY_KEY_REUSED`.
    pub async fn execute(
        &self,
        user_id: &str,
        instance_id: &str,
        source: &Source,
        command: Command,
        op: Option<&OperationId>,
    ) -> Result<Outcome, ApiError> {
        let this = self.clone();
        let (user, instance, source) = (user_id.to_owned(), instance_id.to_owned(), source.clone());
        let op = op.map(|id| Op {
            fingerprint: operation::fingerprint(instance_id, &command),
            id: id.clone(),
        });
        let span = write_span(&command);
        let traced = span.clone();
        tokio::spawn(
            async move {
                let op = op.as_ref();
                let mut outcome = this.run(&user, &instance, &source, &command, op).await?;
                if outcome.needs_assist {
                    outcome = this
                        .run_assisted(&user, &instance, &source, command, &outcome, op)
                        .await?;
                }
                this.after_commit(user, source.socket, &outcome.changed);
                Ok(outcome)
            }
            .instrument(span),
        )
        .await
        .inspect(|done| end_write_span(&traced, done))
        .map_err(|e| ApiError::Internal(format!("write task failed: {e}")))?
    }

    /// ASSISTED: asks the resolver webhook outside any transaction (so no
    /// lock waits on it), then runs the set again with its answer. Without
    /// an answer the conflict goes to review.
    async fn run_assisted(
        &self,
        user_id: &str,
        instance_id: &str,
        source: &Source,
        command: Command,
        first: &Outcome,
        op: Option<&Op>,
    ) -> Result<Outcome, ApiError> {
        let Command::Set {
            key,
            request,
            settles,
            ..
        } = command
        else {
            return Err(ApiError::Internal("only a set asks the resolver".into()));
        };
        let current = first.current.as_ref().ok_or_else(no_row)?;
        let parse = |raw| json_value(raw).unwrap_or_default();
        let base = first.base.as_ref().map(|b| parse(b.value.as_deref()));
        let answer = match &self.resolver {
            Some(r) => {
                r.resolve(
                    &key,
                    user_id,
                    base.as_ref(),
                    &parse(current.value.as_deref()),
                    &parse(Some(&request.value)),
                )
                .await
            }
            None => None,
        };
        let assist = match answer {
            Some(value) => Assist::Answered {
                value,
                against_version: current.version,
            },
            None => Assist::Failed,
        };
        self.run(
            user_id,
            instance_id,
            source,
            &Command::Set {
                key,
                request,
                assist,
                settles,
            },
            op,
        )
        .await
    }

    /// Counts the change and hands it to fan-out. Only committed changes get
    /// here; if the publish is lost, devices repair from the table.
    fn after_commit(&self, user_id: String, origin: Option<String>, changed: &[Item]) {
        if changed.is_empty() {
            return;
        }
        for item in changed {
            if item.is_deleted {
                self.metrics.items_removed.inc();
            } else {
                self.metrics.items_written.inc();
            }
        }
        self.bus.publish(Envelope {
            user_id,
            origin,
            pod: self.bus.pod().to_string(),
            published_us: chrono::Utc::now().timestamp_micros(),
            changes: changed.iter().map(Change::from).collect(),
            // The bus continues this write's trace from its publish.
            trace: None,
        });
    }

    /// The write transaction: lock the user, read the rows the command
    /// touches (and, for a concurrent set, its base version), plan, store
    /// every changed row and its version and any conflict, store the user's
    /// new state, commit.
    async fn run(
        &self,
        user_id: &str,
        instance_id: &str,
        source: &Source,
        command: &Command,
        op: Option<&Op>,
    ) -> Result<Outcome, ApiError> {
        // Every caller validated these already; the one write path checks
        // again so that no text a database cannot store reaches a query.
        validate_user_id(user_id).map_err(crate::text::Invalid::body)?;
        validate_instance_id(instance_id).map_err(crate::text::Invalid::body)?;
        if let Some(key) = command.key() {
            validate_key(key)?;
        }
        let _turn = self.db.user_turn(user_id).await?;
        self.retrying(|| async {
            let ctx = WriteCtx {
                user_id,
                instance_id,
                now: now_ms(),
            };
            let span = transaction_span(self.db.dialect());
            let result = self
                .attempt(ctx, source, command, op)
                .instrument(span.clone())
                .await;
            end_transaction_span(&span, &result);
            result
        })
        .await
    }

    /// One try of [`Self::run`]'s transaction; a database error that a retry
    /// may cure (deadlock, busy) comes back as the outer `Err`.
    async fn attempt(
        &self,
        ctx: WriteCtx<'_>,
        source: &Source,
        command: &Command,
        op: Option<&Op>,
    ) -> TxResult<Outcome> {
        let mut tx = self.db.begin().await?;
        let state = items::lock_user(&mut tx, &self.db, ctx.user_id, ctx.now).await?;
        if let Some(op) = op {
            if let Some(replay) = self.replay(&mut tx, ctx, op).await? {
                return Ok(replay);
            }
        }
        let (plan, mut outcome, current) = match self.decide(&mut tx, ctx, command, state).await? {
            Ok(decided) => decided,
            Err(e) => return Ok(Err(e)),
        };
        if plan.needs_assist {
            return Ok(Ok(outcome)); // rolled back on drop: nothing was written
        }
        self.store(&mut tx, &outcome.changed, &current, plan.conflict.as_ref())
            .await?;
        if let Command::Set {
            settles: Some(settles),
            request,
            ..
        } = command
        {
            let won = matches!(
                plan.set_status,
                Some(SetStatus::Applied | SetStatus::Merged)
            );
            let written = outcome.changed.last().filter(|_| won);
            if let Err(e) = self
                .mark_settled(&mut tx, ctx, settles, request, written, current)
                .await?
            {
                return Ok(Err(e));
            }
        }
        if !outcome.changed.is_empty() {
            items::save_user(&mut tx, &self.db, ctx.user_id, plan.state).await?;
        }
        if self.audited {
            self.audit_changes(&mut tx, ctx, source, &outcome.changed)
                .await?;
        }
        outcome.reply = match Reply::of(command, &outcome, plan.state.last_seq) {
            Ok(reply) => reply,
            Err(e) => return Ok(Err(e)),
        };
        if plan.replayed {
            self.metrics
                .write_replays
                .with_label_values(&["identical"])
                .inc();
        }
        if let (Some(op), Some(reply)) = (op, &outcome.reply) {
            if let Err(e) = self.remember(&mut tx, ctx, op, reply).await? {
                return Ok(Err(e));
            }
        }
        tx.commit().await?;
        outcome.base = None;
        Ok(Ok(outcome))
    }

    /// Reads the rows `command` touches (expiring first an item past its
    /// TTL) and its merge base, and plans it: what the write would change,
    /// the outcome to report, and the rows as they were.
    async fn decide(
        &self,
        conn: &mut AnyConnection,
        ctx: WriteCtx<'_>,
        command: &Command,
        mut state: UserState,
    ) -> TxResult<(plan::Plan, Outcome, Vec<Item>)> {
        let mut current = self.rows_for(conn, ctx, command).await?;
        // An item past its TTL that the sweeper has not reached yet is
        // removed first: a write must not merge with, lose to, or show in a
        // conflict the value every reader already sees as gone.
        let mut expired = None;
        if let Some(row) = current
            .first()
            .filter(|c| command.expires_first() && !c.is_deleted && !c.is_visible(ctx.now))
        {
            let p = plan::expiry(ctx, row, state);
            state = p.state;
            current = vec![p.item.clone()];
            expired = Some(p.item);
        }
        let base = self.merge_base(conn, ctx, command, current.first()).await?;
        let decision = decision_span();
        let plan = decision.in_scope(|| {
            plan::plan(
                ctx,
                command,
                &current,
                base.as_ref(),
                state,
                plan::Rules {
                    limits: &self.limits,
                    policy: &self.policy,
                },
            )
        });
        end_decision_span(&decision, &plan);
        let mut plan = match plan {
            Ok(plan) => plan,
            Err(e) => return Ok(Err(e)),
        };
        let outcome = Outcome {
            changed: expired
                .into_iter()
                .chain(std::mem::take(&mut plan.changed))
                .collect(),
            set_status: plan.set_status,
            conflict_id: plan.conflict.as_ref().map(|c| c.id.clone()),
            current: current.first().cloned(),
            base,
            needs_assist: plan.needs_assist,
            reply: None,
        };
        Ok(Ok((plan, outcome, current)))
    }

    /// The rows `command` touches, locked: the key's row, or for a clear
    /// every row that is not a tombstone.
    async fn rows_for(
        &self,
        conn: &mut AnyConnection,
        ctx: WriteCtx<'_>,
        command: &Command,
    ) -> Result<Vec<Item>, sqlx::Error> {
        match command.key() {
            Some(key) => Ok(items::fetch_for_write(conn, &self.db, ctx.user_id, key)
                .await?
                .into_iter()
                .collect()),
            None => items::live_rows_for_write(conn, &self.db, ctx.user_id).await,
        }
    }

    /// Stores every changed row (`existing` says which were there before)
    /// with its version, and the conflict the write met, if any.
    async fn store(
        &self,
        conn: &mut AnyConnection,
        changed: &[Item],
        existing: &[Item],
        conflict: Option<&ConflictRecord>,
    ) -> Result<(), sqlx::Error> {
        for item in changed {
            let exists = existing.iter().any(|c| c.key == item.key);
            items::store_item(conn, &self.db, item, exists).await?;
            items::append_version(conn, &self.db, item, self.history_versions).await?;
        }
        if let Some(conflict) = conflict {
            conflicts::insert(conn, &self.db, conflict).await?;
            self.metrics
                .conflicts
                .with_label_values(&[conflict.strategy.as_str(), conflict.outcome.as_str()])
                .inc();
        }
        Ok(())
    }

    /// Records `reply` as operation `op`'s, for its retries.
    async fn remember(
        &self,
        conn: &mut AnyConnection,
        ctx: WriteCtx<'_>,
        op: &Op,
        reply: &Reply,
    ) -> TxResult<()> {
        let done = match op.record(reply) {
            Ok(done) => done,
            Err(e) => return Ok(Err(e)),
        };
        idempotency::record(conn, &self.db, ctx.user_id, op.id.as_str(), &done, ctx.now).await?;
        Ok(Ok(()))
    }

    /// The first reply of operation `op`, if it was done within the
    /// idempotency window: a retry is answered with it and applies nothing.
    async fn replay(
        &self,
        conn: &mut AnyConnection,
        ctx: WriteCtx<'_>,
        op: &Op,
    ) -> Result<Option<Result<Outcome, ApiError>>, sqlx::Error> {
        let window = i64::try_from(self.limits.idempotency_window.as_millis()).unwrap_or(i64::MAX);
        let since = ctx.now.saturating_sub(window);
        let Some(done) =
            idempotency::find(conn, &self.db, ctx.user_id, op.id.as_str(), since).await?
        else {
            return Ok(None);
        };
        Ok(Some(op.replay(&done).map(|reply| {
            self.metrics
                .write_replays
                .with_label_values(&["operation_id"])
                .inc();
            Outcome {
                reply: Some(reply),
                ..Outcome::default()
            }
        })))
    }

    /// For a set concurrent with the stored row: the version it was based
    /// on, the merge base. None for every other write.
    async fn merge_base(
        &self,
        conn: &mut AnyConnection,
        ctx: WriteCtx<'_>,
        command: &Command,
        current: Option<&Item>,
    ) -> Result<Option<Item>, sqlx::Error> {
        let (Command::Set { key, request, .. }, Some(cur)) = (command, current) else {
            return Ok(None);
        };
        if !conflict::is_concurrent(cur, request.version, request.timestamp, ctx.instance_id) {
            return Ok(None);
        }
        match request.version {
            // The version an expiry removed (just now, or earlier by any
            // pod's sweeper) is gone like the item: neither merged from nor
            // kept in a conflict.
            Some(v) if Some(v) == plan::expired_version(cur) => Ok(None),
            Some(v) => items::version_at(conn, &self.db, ctx.user_id, key, v).await,
            None => Ok(None),
        }
    }

    /// Marks the conflict a review settles as resolved by `written`, in the
    /// review's own transaction. A review that lost a race (the item moved
    /// on, `written` is None) or came second writes nothing, not even a
    /// conflict of its own.
    async fn mark_settled(
        &self,
        conn: &mut AnyConnection,
        ctx: WriteCtx<'_>,
        settles: &Settles,
        request: &SetRequest,
        written: Option<&Item>,
        current: Vec<Item>,
    ) -> TxResult<()> {
        let Some(item) = written else {
            return Ok(Err(match current.into_iter().next() {
                Some(now) => ApiError::VersionConflict {
                    expected: request.version,
                    current: Box::new(now),
                    status: SetStatus::Rejected,
                    conflict_id: Some(settles.conflict_id.clone()),
                },
                None => no_row(),
            }));
        };
        let value = item.value.as_ref().map(|v| v.get());
        let settled = conflicts::mark_resolved_in(
            conn,
            &self.db,
            &settles.conflict_id,
            &settles.resolver,
            value,
            item.seq,
            ctx.now,
        )
        .await?;
        if !settled {
            return Ok(Err(ApiError::InvalidBody(
                "the conflict is already resolved".into(),
            )));
        }
        Ok(Ok(()))
    }

    /// One audit entry per changed row, in the write's transaction.
    async fn audit_changes(
        &self,
        conn: &mut AnyConnection,
        ctx: WriteCtx<'_>,
        source: &Source,
        changed: &[Item],
    ) -> Result<(), sqlx::Error> {
        let entries: Vec<audit::Entry> = changed
            .iter()
            .map(|i| {
                audit::change_entry(
                    ctx.user_id,
                    source,
                    &i.key,
                    i.is_deleted,
                    i.seq,
                    &i.instance_id,
                    ctx.now,
                )
            })
            .collect();
        storage::audit::insert(conn, &self.db, &entries).await
    }

    /// Stores `req` under `key` for the user, settling a concurrent write
    /// by the conflict strategy.
    pub async fn set(
        &self,
        user_id: &str,
        instance_id: &str,
        source: &Source,
        key: &str,
        req: &SetRequest,
        op: Option<&OperationId>,
    ) -> Result<SetReply, ApiError> {
        self.set_settling(user_id, instance_id, source, key, req, op, None)
            .await
    }

    /// [`Self::set`] as a review's resolution of a pending conflict: the
    /// value is written and the conflict marked resolved in one
    /// transaction, or neither happens (a second review of the same
    /// conflict finds it resolved and writes nothing).
    pub async fn settle(
        &self,
        user_id: &str,
        source: &Source,
        key: &str,
        req: &SetRequest,
        settles: Settles,
    ) -> Result<SetReply, ApiError> {
        self.set_settling(
            user_id,
            CONFLICT_RESOLVER,
            source,
            key,
            req,
            None,
            Some(settles),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)] // the two public doors name them
    async fn set_settling(
        &self,
        user_id: &str,
        instance_id: &str,
        source: &Source,
        key: &str,
        req: &SetRequest,
        op: Option<&OperationId>,
        settles: Option<Settles>,
    ) -> Result<SetReply, ApiError> {
        let command = Command::Set {
            key: key.to_owned(),
            request: Box::new(req.clone()),
            assist: Assist::NotAsked,
            settles,
        };
        match self
            .execute(user_id, instance_id, source, command, op)
            .await?
            .reply
        {
            Some(Reply::Set(reply)) => Ok(*reply),
            _ => Err(no_row()),
        }
    }

    /// Removes a visible item, leaving a tombstone.
    pub async fn remove(
        &self,
        user_id: &str,
        instance_id: &str,
        source: &Source,
        key: &str,
        op: Option<&OperationId>,
    ) -> Result<Removed, ApiError> {
        let command = Command::Remove {
            key: key.to_owned(),
        };
        match self
            .execute(user_id, instance_id, source, command, op)
            .await?
            .reply
        {
            Some(Reply::Remove(removed)) => Ok(removed),
            _ => Err(no_row()),
        }
    }

    /// Removes every item of the user. Each removal takes its own sequence
    /// number, so offline devices replay a clear as ordinary removals.
    pub async fn clear(
        &self,
        user_id: &str,
        instance_id: &str,
        source: &Source,
        op: Option<&OperationId>,
    ) -> Result<Cleared, ApiError> {
        match self
            .execute(user_id, instance_id, source, Command::Clear, op)
            .await?
            .reply
        {
            Some(Reply::Clear(cleared)) => Ok(cleared),
            _ => Err(no_row()),
        }
    }

    /// A visible item, or NOT_FOUND.
    pub async fn get(&self, user_id: &str, key: &str) -> Result<Item, ApiError> {
        validate_key(key)?;
        items::get_visible(&self.db, user_id, key, now_ms())
            .await?
            .ok_or_else(|| ApiError::NotFound {
                key: key.to_string(),
            })
    }

    /// Visible items whose key starts with `prefix`, in key order.
    pub async fn list(&self, user_id: &str, prefix: &str) -> Result<Vec<Item>, ApiError> {
        validate_prefix(prefix)?;
        Ok(items::list_visible(&self.db, user_id, prefix, now_ms()).await?)
    }

    /// Keys of visible items starting with `prefix`, in key order.
    pub async fn keys(&self, user_id: &str, prefix: &str) -> Result<Vec<String>, ApiError> {
        validate_prefix(prefix)?;
        Ok(items::list_keys(&self.db, user_id, prefix, now_ms()).await?)
    }

    /// Turns every item past its TTL into a tombstone through the write path,
    /// in batches. Returns how many were purged.
    pub async fn purge_expired(&self) -> Result<usize, ApiError> {
        const BATCH: i64 = 500;
        let mut purged = 0;
        loop {
            let batch = items::expired(&self.db, now_ms(), BATCH).await?;
            let full = batch.len() as i64 == BATCH;
            for (user_id, key) in batch {
                match self
                    .execute(
                        &user_id,
                        plan::EXPIRY_INSTANCE,
                        &Source::default(),
                        Command::Expire { key },
                        None,
                    )
                    .await
                {
                    Ok(_) => purged += 1,
                    Err(ApiError::NotFound { .. }) => {} // rewritten since the scan
                    Err(e) => return Err(e),
                }
            }
            if !full {
                return Ok(purged);
            }
        }
    }
}

/// Storage limits, in bytes.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_item_bytes: i64,
    pub max_storage_bytes_per_user: i64,
    pub ttl_cleanup_interval: std::time::Duration,
    /// How often expired items are turned into removals (and fanned out).
    pub ttl_expiry_interval: std::time::Duration,
    /// How long tombstones are kept for offline devices.
    pub tombstone_retention: std::time::Duration,
    /// How long a write's operation id is remembered: a retry within it gets
    /// the first reply.
    pub idempotency_window: std::time::Duration,
}

/// The floor of [`Limits::max_body_bytes`]: 4 MiB.
pub const MIN_MESSAGE_BYTES: usize = 4 << 20;

impl Limits {
    /// The largest REST body or Socket.IO message that is read, the same on
    /// both edges: room for a maximal value and metadata with JSON overhead,
    /// and at least [`MIN_MESSAGE_BYTES`], so that ITEM_TOO_LARGE (a precise
    /// answer, on either edge) wins over the cruder PAYLOAD_TOO_LARGE for a
    /// message that is merely too big. Larger ones are refused unread: 413
    /// on REST, and engine.io closes the socket's transport.
    pub fn max_body_bytes(&self) -> usize {
        usize::try_from(self.max_item_bytes)
            .unwrap_or(usize::MAX / 4)
            .saturating_mul(2)
            .saturating_add(64 * 1024)
            .max(MIN_MESSAGE_BYTES)
    }
}
/// The span of one write (the trace's "write" step under the request or
/// socket event), named by its command; only the command, never the key
/// or the value, is recorded.
fn write_span(command: &Command) -> tracing::Span {
    let name = match command {
        Command::Set { .. } => "set",
        Command::Remove { .. } => "remove",
        Command::Clear => "clear",
        Command::Expire { .. } => "expire",
    };
    tracing::info_span!(
        target: TARGET,
        "sync.write",
        otel.name = %format!("write {name}"),
        syncstore.command = name,
        syncstore.changes = tracing::field::Empty,
        syncstore.seq = tracing::field::Empty,
    )
}

/// What the write did: how many rows it changed and the last seq, or the
/// client's error code.
fn end_write_span(span: &tracing::Span, done: &Result<Outcome, ApiError>) {
    if span.is_disabled() {
        return;
    }
    match done {
        Ok(outcome) => {
            // An i64, which is exported as an int (unsigned as a string).
            span.record(
                "syncstore.changes",
                i64::try_from(outcome.changed.len()).unwrap_or(i64::MAX),
            );
            if let Some(last) = outcome.changed.last() {
                span.record("syncstore.seq", last.seq);
            }
        }
        Err(e @ ApiError::Internal(_)) | Err(e @ ApiError::ServiceUnavailable) => {
            telemetry::context::fail(span, e.code())
        }
        Err(e) => telemetry::context::set_attribute(span, "error.type", e.code()),
    }
}

/// One try of the write transaction, as a database client span.
fn transaction_span(dialect: storage::Dialect) -> tracing::Span {
    let system = match dialect.name() {
        "postgres" => "postgresql",
        other => other,
    };
    tracing::info_span!(
        target: TARGET,
        "db.transaction",
        otel.name = "transaction",
        otel.kind = "client",
        db.system.name = system,
        db.operation.name = "transaction",
    )
}

/// A try that the database failed (a deadlock or busy lock, retried, or
/// an outage) is an error of the span; a refusal of the write is not.
fn end_transaction_span<T>(span: &tracing::Span, result: &TxResult<T>) {
    if let Err(e) = result {
        let kind = if storage::is_retryable(e) {
            "retryable"
        } else {
            "database"
        };
        telemetry::context::fail(span, kind);
    }
}

/// The decision of a write against the current row: version check,
/// conflict strategy, merge (pure; see [`plan::plan`]).
fn decision_span() -> tracing::Span {
    tracing::info_span!(
        target: TARGET,
        "sync.decide",
        otel.name = "conflict decision",
        syncstore.write.status = tracing::field::Empty,
        syncstore.conflict.strategy = tracing::field::Empty,
        syncstore.conflict.outcome = tracing::field::Empty,
    )
}

fn end_decision_span(span: &tracing::Span, plan: &Result<plan::Plan, ApiError>) {
    if span.is_disabled() {
        return;
    }
    match plan {
        Ok(plan) => {
            if let Some(status) = plan.set_status {
                span.record("syncstore.write.status", status.as_str());
            }
            if let Some(conflict) = &plan.conflict {
                span.record("syncstore.conflict.strategy", conflict.strategy.as_str());
                span.record("syncstore.conflict.outcome", conflict.outcome.as_str());
            }
        }
        Err(e) => telemetry::context::set_attribute(span, "error.type", e.code()),
    }
}
