//! Pure decisions of the write path: given the current row and the user's
//! state, what the new row and state are, or why the write is refused.
//! No I/O here, so every rule is unit-tested directly.

use serde_json::value::RawValue;

use super::item::{Item, SetRequest};
use crate::{config::Limits, conflict, error::ApiError, storage::items::UserState};

/// A command on one user's items: everything that changes them.
#[derive(Debug, Clone)]
pub enum Command {
    Set {
        key: String,
        request: Box<SetRequest>,
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

/// Plans `command` against the rows it touches (`current`: the key's row, or
/// every non-tombstone row for a clear). Returns the changed rows in seq
/// order and the user's new state.
pub fn plan(
    ctx: WriteCtx<'_>,
    command: &Command,
    current: &[Item],
    state: UserState,
    limits: &Limits,
) -> Result<(Vec<Item>, UserState), ApiError> {
    let one = |p: Planned| (vec![p.item], p.state);
    match command {
        Command::Set { key, request } => {
            plan_set(ctx, key, request, current.first(), state, limits).map(one)
        }
        Command::Remove { key } => plan_remove(ctx, key, current.first(), state).map(one),
        Command::Expire { key } => match current
            .first()
            .filter(|c| !c.is_deleted && !c.is_visible(ctx.now))
        {
            Some(c) => Ok(one(tombstone(ctx, c, state))),
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
            Ok((changed, state))
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

/// Plans a set of `key`.
pub fn plan_set(
    ctx: WriteCtx<'_>,
    key: &str,
    req: &SetRequest,
    current: Option<&Item>,
    state: UserState,
    limits: &Limits,
) -> Result<Planned, ApiError> {
    req.validate()?;
    let metadata = req.metadata_text();
    let size =
        i64::try_from(req.value.get().len() + metadata.map_or(0, str::len)).unwrap_or(i64::MAX);
    if size > limits.max_item_bytes {
        return Err(ApiError::ItemTooLarge {
            size,
            limit: limits.max_item_bytes,
        });
    }
    if let Some(current) = current.filter(|c| conflict::is_concurrent(c, req.version)) {
        // The seam for the conflict strategies: today every concurrent write
        // is refused with the current item, for the client to rebase on.
        return Err(ApiError::VersionConflict {
            expected: req.version.unwrap_or_default(),
            current: Box::new(current.clone()),
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
        value: Some(req.value.clone()),
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
    use std::time::Duration;

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
            tombstone_retention: Duration::from_secs(86400),
        }
    }

    fn req(json: &str) -> SetRequest {
        serde_json::from_str(json).expect("valid request")
    }

    fn set(current: Option<&Item>, state: UserState, body: &str) -> Result<Planned, ApiError> {
        plan_set(CTX, "k", &req(body), current, state, &limits())
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
    fn update_bumps_version_and_replaces_bytes() {
        let first = set(None, EMPTY, r#"{"value":"0123456789"}"#).unwrap();
        let second = set(Some(&first.item), first.state, r#"{"value":1,"version":1}"#).unwrap();
        assert_eq!((second.item.version, second.item.seq), (2, 2));
        assert_eq!(second.state.bytes_used, 1);
        assert_eq!(second.item.id, first.item.id);
    }

    #[test]
    fn stale_version_is_a_conflict_carrying_the_current_item() {
        let first = set(None, EMPTY, r#"{"value":1}"#).unwrap();
        let second = set(Some(&first.item), first.state, r#"{"value":2}"#).unwrap();
        match set(
            Some(&second.item),
            second.state,
            r#"{"value":3,"version":1}"#,
        ) {
            Err(ApiError::VersionConflict {
                expected: 1,
                current,
            }) => assert_eq!(current.version, 2),
            other => panic!("expected a conflict, got {other:?}"),
        }
        // A write that names no version is not checked.
        assert!(set(Some(&second.item), second.state, r#"{"value":3}"#).is_ok());
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
        let o = plan_set(
            later,
            "k",
            &req(r#"{"value":2}"#),
            Some(&p.item),
            p.state,
            &limits(),
        )
        .unwrap();
        assert_eq!((o.item.ttl, o.item.version), (None, 2));
    }
}
