//! Pure decisions of the write path: given the current row and the user's
//! state, what the new row and state are, or why the write is refused.
//! No I/O here, so every rule is unit-tested directly.

use serde_json::value::RawValue;

use super::{
    item::{SetRequest, Ttl},
    Limits,
};
use crate::{
    conflict::{self, Contender, Decision, Policy},
    domain::{ConflictRecord, Item, SetStatus},
    error::ApiError,
    storage::items::UserState,
};

/// A command on one user's items: everything that changes them.
#[derive(Debug, Clone)]
pub enum Command {
    Set {
        key: String,
        request: Box<SetRequest>,
        assist: Assist,
        /// The pending conflict this write settles (a review's resolution):
        /// marked resolved in the write's own transaction, or the write is
        /// not made.
        settles: Option<Settles>,
    },
    /// A client's remove: only a visible item can be removed.
    Remove { key: String },
    /// Every item of the user.
    Clear,
    /// The TTL sweeper's remove: only an item that is (still) past its TTL,
    /// so a fresh write racing the sweep is never lost.
    Expire { key: String },
}

impl Command {
    /// Whether an item of the key past its TTL is expired first, in the
    /// same transaction, so the command meets the removal readers already
    /// see rather than the value (a clear removes expired rows itself; the
    /// sweeper's own command is the expiry).
    pub fn expires_first(&self) -> bool {
        matches!(self, Command::Set { .. } | Command::Remove { .. })
    }

    /// The one key the command touches; `None` for all of the user's.
    pub fn key(&self) -> Option<&str> {
        match self {
            Command::Set { key, .. } | Command::Remove { key } | Command::Expire { key } => {
                Some(key)
            }
            Command::Clear => None,
        }
    }
}

/// A reviewed conflict a write settles, and who settled it.
#[derive(Debug, Clone)]
pub struct Settles {
    pub conflict_id: String,
    /// The key id of the reviewer.
    pub resolver: String,
}

/// The result of planning a command.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Rows to store, in seq order.
    pub changed: Vec<Item>,
    /// The user's state after them.
    pub state: UserState,
    /// For a set: how it ended, and the conflict to record if there was one.
    pub set_status: Option<SetStatus>,
    pub conflict: Option<ConflictRecord>,
    /// For an ASSISTED set: ask the webhook, then run the set again.
    pub needs_assist: bool,
    /// A set recognised as a retry of the write that made the current row
    /// (see [`is_replay`]): nothing is written, the reply is `applied`.
    pub replayed: bool,
}

impl Plan {
    fn rows(changed: Vec<Item>, state: UserState) -> Self {
        Plan {
            changed,
            state,
            set_status: None,
            conflict: None,
            needs_assist: false,
            replayed: false,
        }
    }
}

/// Plans `command` against the rows it touches (`current`: the key's row, or
/// every non-tombstone row for a clear; `base`: for a concurrent set, the
/// version it was based on, if still kept).
pub fn plan(
    ctx: WriteCtx<'_>,
    command: &Command,
    current: &[Item],
    base: Option<&Item>,
    state: UserState,
    rules: Rules<'_>,
) -> Result<Plan, ApiError> {
    let one = |p: Planned| Plan::rows(vec![p.item], p.state);
    match command {
        Command::Set {
            key,
            request,
            assist,
            ..
        } => {
            let set = Set {
                key,
                req: request,
                assist,
            };
            let found = Found {
                current: current.first(),
                base,
            };
            let p = plan_set(ctx, set, found, state, rules)?;
            let (changed, state) = match p.written {
                Some(w) => (vec![w.item], w.state),
                None => (Vec::new(), state),
            };
            Ok(Plan {
                changed,
                state,
                set_status: Some(p.status),
                conflict: p.conflict,
                needs_assist: p.needs_assist,
                replayed: p.replayed,
            })
        }
        Command::Remove { key } => plan_remove(ctx, key, current.first(), state).map(one),
        Command::Expire { key } => match current
            .first()
            .filter(|c| !c.is_deleted && !c.is_visible(ctx.now))
        {
            Some(c) => Ok(one(expiry(ctx, c, state))),
            None => Err(ApiError::NotFound { key: key.clone() }),
        },
        Command::Clear => {
            let mut state = state;
            let mut changed = Vec::with_capacity(current.len());
            for row in current.iter().filter(|c| !c.is_deleted) {
                let p = tombstone(ctx, row, state);
                state = p.state;
                changed.push(p.item);
            }
            Ok(Plan::rows(changed, state))
        }
    }
}

/// Who writes, and when, for one write.
#[derive(Debug, Clone, Copy)]
pub struct WriteCtx<'a> {
    pub user_id: &'a str,
    pub instance_id: &'a str,
    pub now: i64,
}

/// The outcome of a planned write: the row to store and the user's new state.
#[derive(Debug, Clone)]
pub struct Planned {
    pub item: Item,
    pub state: UserState,
}

/// Bytes the item counts against the user's quota while it is not a tombstone.
fn live_size(current: Option<&Item>) -> i64 {
    current.filter(|c| !c.is_deleted).map_or(0, |c| c.size)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What the resolver webhook said, for a set being retried after asking it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Assist {
    #[default]
    NotAsked,
    /// Its value, computed against this current version.
    Answered {
        value: serde_json::Value,
        against_version: i64,
    },
    Failed,
}

/// A planned set: its status, the row written (if any), the conflict (if any).
#[derive(Debug, Clone)]
pub struct SetPlan {
    pub status: SetStatus,
    pub written: Option<Planned>,
    pub conflict: Option<ConflictRecord>,
    /// The strategy is ASSISTED and the webhook has not been asked yet.
    pub needs_assist: bool,
    /// A retry of the write that made the current row.
    pub replayed: bool,
}

fn parse(raw: Option<&RawValue>) -> serde_json::Value {
    super::json_value(raw).unwrap_or_default()
}

/// Whether `req` is a retry, without an operation id, of the very write
/// that made `current` (issue 14 §2): from the same device, with the same
/// value, metadata, tags, priority, compression and encryption types and
/// client timestamp, based on the version just before (or on none). Such a
/// retry is answered `applied` with the current row; applied again it would
/// bump the version, and judged as concurrent it would lose to itself and
/// record a conflict. Never recognised: a write without a timestamp (the
/// server's clock makes every one of them new) and one with a `ttl` in
/// seconds (relative to when it arrives, so its expiry differs): those
/// need an operation id.
pub fn is_replay(current: &Item, req: &SetRequest, instance_id: &str) -> bool {
    let text = |raw: &Option<Box<RawValue>>| raw.as_deref().map(RawValue::get).map(str::to_owned);
    let tags = req
        .tags
        .as_ref()
        .and_then(|t| serde_json::to_string(t).ok());
    let ttl_same = match &req.ttl {
        None => current.ttl.is_none(),
        Some(at @ Ttl::At(_)) => at.expires_at(0).ok() == current.ttl,
        Some(Ttl::Seconds(_)) => false,
    };
    !current.is_deleted
        && current.instance_id == instance_id
        && req.timestamp == Some(current.timestamp)
        && req.version.is_none_or(|v| v + 1 == current.version)
        && current.value.as_deref().map(RawValue::get) == Some(req.value.get())
        && current.metadata.as_deref().map(RawValue::get) == req.metadata_text()
        && text(&current.tags) == tags
        && req.priority.unwrap_or(0) == current.priority
        && req.compression_type == current.compression_type
        && req.encryption_type == current.encryption_type
        && ttl_same
}

/// What every write is judged by: the store's limits and conflict policy.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    pub limits: &'a Limits,
    pub policy: &'a Policy,
}

/// One set, as the client asked for it.
#[derive(Debug, Clone, Copy)]
pub struct Set<'a> {
    pub key: &'a str,
    pub req: &'a SetRequest,
    pub assist: &'a Assist,
}

/// The rows a set meets: the key's row, and for a concurrent set the
/// version it was based on, if still kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Found<'a> {
    pub current: Option<&'a Item>,
    pub base: Option<&'a Item>,
}

impl SetPlan {
    fn settled(status: SetStatus, written: Option<Planned>) -> Self {
        Self {
            status,
            written,
            conflict: None,
            needs_assist: false,
            replayed: false,
        }
    }
}

/// Plans a set: a plain write, or the settlement of a concurrent one.
pub fn plan_set(
    ctx: WriteCtx<'_>,
    set: Set<'_>,
    found: Found<'_>,
    state: UserState,
    rules: Rules<'_>,
) -> Result<SetPlan, ApiError> {
    let req = set.req;
    req.validate()?;
    if found
        .current
        .is_some_and(|c| is_replay(c, req, ctx.instance_id))
    {
        return Ok(SetPlan {
            replayed: true,
            ..SetPlan::settled(SetStatus::Applied, None)
        });
    }
    let write =
        |value, current| write_value(ctx, set.key, req, value, current, state, rules.limits);
    let Some(current) = found
        .current
        .filter(|c| conflict::is_concurrent(c, req.version, req.timestamp, ctx.instance_id))
    else {
        let written = write(req.value.clone(), found.current)?;
        return Ok(SetPlan::settled(SetStatus::Applied, Some(written)));
    };
    let contest = Contest {
        ctx,
        set,
        current,
        base: found.base,
        strategy: req
            .strategy_override()?
            .unwrap_or(rules.policy.default_strategy),
    };
    let (status, written) = match contest.decide(rules.policy) {
        Decision::Assist => {
            return Ok(SetPlan {
                needs_assist: true,
                ..SetPlan::settled(SetStatus::PendingReview, None)
            })
        }
        Decision::Incoming => (
            SetStatus::Applied,
            Some(write(req.value.clone(), Some(current))?),
        ),
        Decision::Merged(v) => {
            let raw = serde_json::value::to_raw_value(&v)
                .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
            (SetStatus::Merged, Some(write(raw, Some(current))?))
        }
        Decision::Current => (SetStatus::Rejected, None),
        Decision::Review => (SetStatus::PendingReview, None),
    };
    Ok(SetPlan {
        conflict: Some(contest.record(status, written.as_ref())),
        ..SetPlan::settled(status, written)
    })
}

/// A set that met a concurrent write: what its settlement reads.
struct Contest<'a> {
    ctx: WriteCtx<'a>,
    set: Set<'a>,
    current: &'a Item,
    base: Option<&'a Item>,
    strategy: conflict::Strategy,
}

impl Contest<'_> {
    /// The incoming write's time: the client's clock, or the server's.
    fn timestamp(&self) -> i64 {
        self.set.req.timestamp.unwrap_or(self.ctx.now)
    }

    /// Who wins: the resolver's answer when it was asked (and the row did
    /// not move on meanwhile), else the strategy.
    fn decide(&self, policy: &Policy) -> Decision {
        match self.set.assist {
            Assist::Answered {
                value,
                against_version,
            } if *against_version == self.current.version => Decision::Merged(value.clone()),
            Assist::Answered { .. } | Assist::Failed => Decision::Review,
            Assist::NotAsked => {
                let (cur_v, inc_v, base_v) = (
                    parse(self.current.value.as_deref()),
                    parse(Some(&self.set.req.value)),
                    self.base.map(|b| parse(b.value.as_deref())),
                );
                let cur = Contender {
                    value: &cur_v,
                    timestamp: self.current.timestamp,
                    instance_id: &self.current.instance_id,
                };
                let inc = Contender {
                    value: &inc_v,
                    timestamp: self.timestamp(),
                    instance_id: self.ctx.instance_id,
                };
                conflict::decide(self.strategy, policy, base_v.as_ref(), cur, inc)
            }
        }
    }

    /// The conflict as recorded for review and history.
    fn record(&self, status: SetStatus, written: Option<&Planned>) -> ConflictRecord {
        let (ctx, req, current, base) = (self.ctx, self.set.req, self.current, self.base);
        let text = |v: &Option<Box<RawValue>>| v.as_ref().map(|v| v.get().to_string());
        ConflictRecord {
            id: new_id(),
            user_id: ctx.user_id.to_string(),
            key: self.set.key.to_string(),
            item_id: current.id.clone(),
            strategy: self.strategy,
            outcome: status,
            base_version: base.map(|b| b.version),
            base_value: base.and_then(|b| text(&b.value)),
            current_version: current.version,
            current_value: text(&current.value),
            current_instance: current.instance_id.clone(),
            current_ts: current.timestamp,
            incoming_value: req.value.get().to_string(),
            incoming_metadata: req.metadata_text().map(str::to_string),
            incoming_instance: ctx.instance_id.to_string(),
            incoming_ts: self.timestamp(),
            result_value: written.and_then(|w| text(&w.item.value)),
            result_seq: written.map(|w| w.item.seq),
            created_at: ctx.now,
        }
    }
}

/// The row a set writes, with `value` (the incoming one, or a merge), after
/// the size and quota checks.
fn write_value(
    ctx: WriteCtx<'_>,
    key: &str,
    req: &SetRequest,
    value: Box<RawValue>,
    current: Option<&Item>,
    state: UserState,
    limits: &Limits,
) -> Result<Planned, ApiError> {
    let metadata = req.metadata_text();
    let size = i64::try_from(value.get().len() + metadata.map_or(0, str::len)).unwrap_or(i64::MAX);
    if size > limits.max_item_bytes {
        return Err(ApiError::ItemTooLarge {
            size,
            limit: limits.max_item_bytes,
        });
    }
    let old = live_size(current);
    let bytes_used = state.bytes_used - old + size;
    if size > old && bytes_used > limits.max_storage_bytes_per_user {
        return Err(ApiError::StorageQuotaExceeded {
            would_use: bytes_used,
            limit: limits.max_storage_bytes_per_user,
        });
    }
    let ttl = req
        .ttl
        .as_ref()
        .map(|t| t.expires_at(ctx.now))
        .transpose()?;
    let tags = req
        .tags
        .as_ref()
        .map(|t| {
            serde_json::value::to_raw_value(t).map_err(|e| ApiError::InvalidBody(e.to_string()))
        })
        .transpose()?;
    let seq = state.last_seq + 1;
    let item = Item {
        id: current.map_or_else(new_id, |c| c.id.clone()),
        user_id: ctx.user_id.to_string(),
        instance_id: ctx.instance_id.to_string(),
        key: key.to_string(),
        value: Some(value),
        metadata: metadata
            .map(|m| RawValue::from_string(m.to_string()))
            .transpose()
            .map_err(|e| ApiError::InvalidBody(e.to_string()))?,
        version: current.map_or(1, |c| c.version + 1),
        timestamp: req.timestamp.unwrap_or(ctx.now),
        last_modified: ctx.now,
        is_deleted: false,
        size,
        compression_type: req.compression_type.clone(),
        encryption_type: req.encryption_type.clone(),
        tags,
        ttl,
        priority: req.priority.unwrap_or(0),
        seq,
    };
    Ok(Planned {
        item,
        state: UserState {
            last_seq: seq,
            bytes_used,
        },
    })
}

/// Turns `current` into a tombstone at the next sequence number: the value
/// is gone and its bytes are returned to the quota, but the row keeps its
/// `seq`, so devices that were offline learn of the removal.
pub fn tombstone(ctx: WriteCtx<'_>, current: &Item, state: UserState) -> Planned {
    let seq = state.last_seq + 1;
    let item = Item {
        instance_id: ctx.instance_id.to_string(),
        value: None,
        metadata: None,
        version: current.version + 1,
        timestamp: ctx.now,
        last_modified: ctx.now,
        is_deleted: true,
        size: 0,
        ttl: None,
        // Nothing of what was removed stays readable on its tombstone.
        tags: None,
        priority: 0,
        compression_type: None,
        encryption_type: None,
        seq,
        ..current.clone()
    };
    Planned {
        item,
        state: UserState {
            last_seq: seq,
            bytes_used: state.bytes_used - live_size(Some(current)),
        },
    }
}

/// The device an expiry is written as.
pub const EXPIRY_INSTANCE: &str = "ttl-cleanup";

/// The removal an item past its TTL becomes: a tombstone written as
/// [`EXPIRY_INSTANCE`] and stamped with the moment it expired, so a write
/// made after that moment wins over it under LAST_WRITE_WINS and one made
/// before loses.
pub fn expiry(ctx: WriteCtx<'_>, current: &Item, state: UserState) -> Planned {
    let ctx = WriteCtx {
        instance_id: EXPIRY_INSTANCE,
        ..ctx
    };
    let mut p = tombstone(ctx, current, state);
    p.item.timestamp = current.ttl.unwrap_or(ctx.now);
    p
}

/// The version `current` removed, if it is an expiry's tombstone: that
/// version's value is gone for every reader and must not come back as a
/// merge base or in a conflict record.
pub fn expired_version(current: &Item) -> Option<i64> {
    (current.is_deleted && current.instance_id == EXPIRY_INSTANCE).then(|| current.version - 1)
}

/// Plans a remove requested by a client: only a visible item can be removed.
pub fn plan_remove(
    ctx: WriteCtx<'_>,
    key: &str,
    current: Option<&Item>,
    state: UserState,
) -> Result<Planned, ApiError> {
    match current {
        Some(c) if c.is_visible(ctx.now) => Ok(tombstone(ctx, c, state)),
        _ => Err(ApiError::NotFound {
            key: key.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Strategy;
    use std::time::Duration;

    #[test]
    fn only_an_expirys_tombstone_names_the_version_it_expired() {
        let live = set(None, EMPTY, r#"{"value":1}"#).unwrap();
        assert_eq!(expired_version(&live.item), None, "a live item");
        let expired = expiry(CTX, &live.item, live.state);
        assert_eq!(expired_version(&expired.item), Some(live.item.version));
        let removed = tombstone(CTX, &live.item, live.state);
        assert_eq!(expired_version(&removed.item), None, "a device's removal");
    }

    const CTX: WriteCtx<'static> = WriteCtx {
        user_id: "u1",
        instance_id: "phone",
        now: 1_000_000,
    };

    fn limits() -> Limits {
        Limits {
            max_item_bytes: 100,
            max_storage_bytes_per_user: 250,
            ttl_cleanup_interval: Duration::from_secs(3600),
            ttl_expiry_interval: Duration::from_secs(1),
            tombstone_retention: Duration::from_secs(86400),
            idempotency_window: Duration::from_secs(86400),
        }
    }

    fn req(json: &str) -> SetRequest {
        serde_json::from_str(json).expect("valid request")
    }

    fn policy(strategy: Strategy) -> Policy {
        Policy {
            default_strategy: strategy,
            merge_tiebreak_manual: false,
        }
    }

    /// A set under MANUAL, returning the written row (none means refused).
    fn set(current: Option<&Item>, state: UserState, body: &str) -> Result<Planned, ApiError> {
        set_at(CTX, current, state, body)
    }

    fn set_at(
        ctx: WriteCtx<'_>,
        current: Option<&Item>,
        state: UserState,
        body: &str,
    ) -> Result<Planned, ApiError> {
        let p = plan_set(
            ctx,
            Set {
                key: "k",
                req: &req(body),
                assist: &Assist::NotAsked,
            },
            Found {
                current,
                base: None,
            },
            state,
            Rules {
                limits: &limits(),
                policy: &policy(Strategy::Manual),
            },
        )?;
        p.written
            .ok_or(ApiError::Internal(format!("not written: {:?}", p.status)))
    }

    const EMPTY: UserState = UserState {
        last_seq: 0,
        bytes_used: 0,
    };

    #[test]
    fn first_write_is_version_one_at_the_next_seq() {
        let p = set(
            None,
            UserState {
                last_seq: 7,
                bytes_used: 0,
            },
            r#"{"value":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!((p.item.version, p.item.seq, p.item.size), (1, 8, 7));
        assert_eq!(
            p.state,
            UserState {
                last_seq: 8,
                bytes_used: 7
            }
        );
        assert_eq!(p.item.timestamp, CTX.now);
    }

    #[test]
    fn an_identical_retry_is_recognised_and_nothing_else_is() {
        let first = set(None, EMPTY, r#"{"value":1,"timestamp":5}"#).unwrap();
        let body = r#"{"value":2,"version":1,"timestamp":9,"metadata":{"m":1}}"#;
        let second = set(Some(&first.item), first.state, body).unwrap();
        let current = &second.item;
        assert!(is_replay(current, &req(body), CTX.instance_id));
        assert!(is_replay(
            current,
            &req(r#"{"value":2,"timestamp":9,"metadata":{"m":1}}"#),
            CTX.instance_id
        ));
        for other in [
            r#"{"value":3,"version":1,"timestamp":9,"metadata":{"m":1}}"#,
            r#"{"value":2,"version":2,"timestamp":9,"metadata":{"m":1}}"#,
            r#"{"value":2,"version":1,"timestamp":8,"metadata":{"m":1}}"#,
            r#"{"value":2,"version":1,"metadata":{"m":1}}"#,
            r#"{"value":2,"version":1,"timestamp":9}"#,
            r#"{"value":2,"version":1,"timestamp":9,"metadata":{"m":1},"tags":["b"]}"#,
            r#"{"value":2,"version":1,"timestamp":9,"metadata":{"m":1},"priority":7}"#,
            // A ttl in seconds counts from arrival: never the same write.
            r#"{"value":2,"version":1,"timestamp":9,"metadata":{"m":1},"ttl":5}"#,
        ] {
            assert!(!is_replay(current, &req(other), CTX.instance_id), "{other}");
        }
        assert!(!is_replay(current, &req(body), "another-device"));
        // Planned, the retry writes nothing and is answered `applied`.
        let p = plan_set(
            CTX,
            Set {
                key: "k",
                req: &req(body),
                assist: &Assist::NotAsked,
            },
            Found {
                current: Some(current),
                base: None,
            },
            second.state,
            Rules {
                limits: &limits(),
                policy: &policy(Strategy::Manual),
            },
        )
        .unwrap();
        assert_eq!(
            (
                p.status,
                p.written.is_none(),
                p.conflict.is_none(),
                p.replayed
            ),
            (SetStatus::Applied, true, true, true)
        );
    }

    #[test]
    fn update_bumps_version_and_replaces_bytes() {
        let first = set(None, EMPTY, r#"{"value":"0123456789"}"#).unwrap();
        let second = set(Some(&first.item), first.state, r#"{"value":1,"version":1}"#).unwrap();
        assert_eq!((second.item.version, second.item.seq), (2, 2));
        assert_eq!(second.state.bytes_used, 1);
        assert_eq!(second.item.id, first.item.id);
    }

    #[test]
    fn stale_versions_are_settled_by_strategy_and_recorded() {
        let first = set(None, EMPTY, r#"{"value":{"a":1,"b":1}}"#).unwrap();
        let second = set(
            Some(&first.item),
            first.state,
            r#"{"value":{"a":2,"b":1},"version":1}"#,
        )
        .unwrap();
        let stale = req(r#"{"value":{"a":1,"b":3},"version":1}"#);
        let run = |strategy, base: Option<&Item>| {
            plan_set(
                WriteCtx {
                    instance_id: "tablet",
                    ..CTX
                },
                Set {
                    key: "k",
                    req: &stale,
                    assist: &Assist::NotAsked,
                },
                Found {
                    current: Some(&second.item),
                    base,
                },
                second.state,
                Rules {
                    limits: &limits(),
                    policy: &policy(strategy),
                },
            )
            .unwrap()
        };
        let manual = run(Strategy::Manual, None);
        assert_eq!(manual.status, SetStatus::PendingReview);
        assert!(manual.written.is_none());
        let c = manual.conflict.expect("recorded");
        assert_eq!(
            (
                c.current_version,
                c.current_value.as_deref(),
                c.incoming_value.as_str()
            ),
            (2, Some(r#"{"a":2,"b":1}"#), r#"{"a":1,"b":3}"#)
        );
        let fww = run(Strategy::FirstWriteWins, None);
        assert_eq!(
            (fww.status, fww.written.is_none()),
            (SetStatus::Rejected, true)
        );
        // LWW: the incoming write carries the server's clock, later than the stored one.
        let lww = run(Strategy::LastWriteWins, None);
        assert_eq!(lww.status, SetStatus::Applied);
        assert_eq!(lww.written.unwrap().item.version, 3);
        let merged = run(Strategy::Merge, Some(&first.item));
        assert_eq!(merged.status, SetStatus::Merged);
        assert_eq!(
            merged.written.unwrap().item.value.unwrap().get(),
            r#"{"a":2,"b":3}"#
        );
        assert!(run(Strategy::Assisted, None).needs_assist);
        // A write that names no version is not checked by version.
        assert!(set(Some(&second.item), second.state, r#"{"value":3}"#).is_ok());
    }

    #[test]
    fn an_older_timestamp_from_another_instance_is_concurrent() {
        let first = set(None, EMPTY, r#"{"value":1}"#).unwrap();
        let older = req(&format!(r#"{{"value":2,"timestamp":{}}}"#, CTX.now - 5));
        let other = WriteCtx {
            instance_id: "tablet",
            ..CTX
        };
        let p = plan_set(
            other,
            Set {
                key: "k",
                req: &older,
                assist: &Assist::NotAsked,
            },
            Found {
                current: Some(&first.item),
                base: None,
            },
            first.state,
            Rules {
                limits: &limits(),
                policy: &policy(Strategy::LastWriteWins),
            },
        )
        .unwrap();
        assert_eq!(p.status, SetStatus::Rejected);
        // The same instance rewriting its own value is not a conflict.
        let p = plan_set(
            CTX,
            Set {
                key: "k",
                req: &older,
                assist: &Assist::NotAsked,
            },
            Found {
                current: Some(&first.item),
                base: None,
            },
            first.state,
            Rules {
                limits: &limits(),
                policy: &policy(Strategy::LastWriteWins),
            },
        )
        .unwrap();
        assert_eq!((p.status, p.conflict.is_none()), (SetStatus::Applied, true));
    }

    #[test]
    fn an_older_blind_write_does_not_undo_a_newer_removal() {
        let first = set(None, EMPTY, r#"{"value":1}"#).unwrap();
        let later = WriteCtx {
            now: CTX.now + 20_000,
            ..CTX
        };
        let removed = tombstone(later, &first.item, first.state);
        // An offline tablet's write from between the two, naming no version.
        let older = req(&format!(
            r#"{{"value":2,"timestamp":{}}}"#,
            CTX.now + 10_000
        ));
        let tablet = WriteCtx {
            instance_id: "tablet",
            now: CTX.now + 30_000,
            ..CTX
        };
        let plan = |strategy| {
            plan_set(
                tablet,
                Set {
                    key: "k",
                    req: &older,
                    assist: &Assist::NotAsked,
                },
                Found {
                    current: Some(&removed.item),
                    base: None,
                },
                removed.state,
                Rules {
                    limits: &limits(),
                    policy: &policy(strategy),
                },
            )
            .unwrap()
        };
        let lww = plan(Strategy::LastWriteWins);
        assert_eq!(
            (lww.status, lww.written.is_none(), lww.conflict.is_some()),
            (SetStatus::Rejected, true, true),
            "the removal stands, and the conflict is recorded"
        );
        // A write newer than the removal re-creates the key.
        let newer = req(&format!(
            r#"{{"value":2,"timestamp":{}}}"#,
            CTX.now + 25_000
        ));
        let p = plan_set(
            tablet,
            Set {
                key: "k",
                req: &newer,
                assist: &Assist::NotAsked,
            },
            Found {
                current: Some(&removed.item),
                base: None,
            },
            removed.state,
            Rules {
                limits: &limits(),
                policy: &policy(Strategy::LastWriteWins),
            },
        )
        .unwrap();
        assert_eq!(p.status, SetStatus::Applied);
    }

    #[test]
    fn item_and_storage_limits_are_enforced() {
        let big = format!(r#"{{"value":"{}"}}"#, "x".repeat(99));
        assert!(matches!(
            set(None, EMPTY, &big),
            Err(ApiError::ItemTooLarge {
                size: 101,
                limit: 100
            })
        ));
        let near_full = UserState {
            last_seq: 3,
            bytes_used: 240,
        };
        assert!(matches!(
            set(None, near_full, r#"{"value":"0123456789"}"#),
            Err(ApiError::StorageQuotaExceeded {
                would_use: 252,
                limit: 250
            })
        ));
        // Shrinking an item is allowed even over quota.
        let p = set(None, EMPTY, r#"{"value":"0123456789"}"#).unwrap();
        let over = UserState {
            bytes_used: 300,
            ..p.state
        };
        assert!(set(Some(&p.item), over, r#"{"value":1}"#).is_ok());
    }

    #[test]
    fn remove_makes_a_tombstone_and_frees_bytes() {
        let p = set(None, EMPTY, r#"{"value":"abc","metadata":{"m":1}}"#).unwrap();
        let r = plan_remove(CTX, "k", Some(&p.item), p.state).unwrap();
        assert!(r.item.is_deleted && r.item.value.is_none() && r.item.size == 0);
        assert_eq!((r.item.version, r.item.seq, r.state.bytes_used), (2, 2, 0));
        assert!(matches!(
            plan_remove(CTX, "k", Some(&r.item), r.state),
            Err(ApiError::NotFound { .. })
        ));
        assert!(matches!(
            plan_remove(CTX, "k", None, EMPTY),
            Err(ApiError::NotFound { .. })
        ));
        // Writing again after a remove continues the version line.
        let again = set(Some(&r.item), r.state, r#"{"value":1,"version":2}"#).unwrap();
        assert_eq!(again.item.version, 3);
    }

    #[test]
    fn expired_items_cannot_be_removed_but_can_be_overwritten() {
        let p = set(None, EMPTY, r#"{"value":1,"ttl":1}"#).unwrap();
        assert_eq!(p.item.ttl, Some(CTX.now + 1000));
        let later = WriteCtx {
            now: CTX.now + 1000,
            ..CTX
        };
        assert!(plan_remove(later, "k", Some(&p.item), p.state).is_err());
        let o = set_at(later, Some(&p.item), p.state, r#"{"value":2}"#).unwrap();
        assert_eq!((o.item.ttl, o.item.version), (None, 2));
    }

    proptest::proptest! {
        /// Every losing write leaves exactly one conflict record holding the
        /// losing value, and writes that did not race leave none.
        #[test]
        fn conflict_records_match_losing_writes(
            writes in proptest::collection::vec((0i64..3, 0usize..3, 0i64..100), 1..30)
        ) {
            let strategies = [Strategy::LastWriteWins, Strategy::FirstWriteWins, Strategy::Manual];
            let first = set(None, EMPTY, r#"{"value":0}"#).unwrap();
            let (mut current, mut state) = (first.item, first.state);
            let (mut records, mut losers) = (0, 0);
            for (n, (lag, strategy, ts)) in writes.into_iter().enumerate() {
                let based_on = (current.version - lag).max(1);
                let body = format!(r#"{{"value":{},"version":{based_on},"timestamp":{ts}}}"#, n + 1);
                let ctx = WriteCtx { instance_id: if n % 2 == 0 { "a" } else { "b" }, ..CTX };
                let plan = plan_set(ctx, Set { key: "k", req: &req(&body), assist: &Assist::NotAsked }, Found { current: Some(&current), base: None }, state, Rules { limits: &limits(), policy: &policy(strategies[strategy]) }).unwrap();
                let raced = based_on != current.version;
                if let Some(c) = &plan.conflict {
                    records += 1;
                    // The loser's value is in the record.
                    match &plan.written {
                        Some(_) => proptest::prop_assert_eq!(c.current_value.as_deref(), current.value.as_ref().map(|v| v.get())),
                        None => proptest::prop_assert_eq!(c.incoming_value.clone(), (n + 1).to_string()),
                    }
                }
                if raced {
                    losers += 1;
                }
                if let Some(w) = plan.written {
                    current = w.item;
                    state = w.state;
                }
            }
            proptest::prop_assert_eq!(records, losers);
        }
    }
}
