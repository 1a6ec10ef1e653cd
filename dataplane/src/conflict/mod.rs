//! Conflict detection and the strategies that settle a concurrent write.
//!
//! Everything here is pure: `sync::plan` asks [`decide`] what to do with a
//! concurrent write and records the answer; the only I/O strategy
//! (`ASSISTED`, a webhook) is run by the sync service outside the write
//! transaction, in [`resolver`].

pub mod analysis;
pub mod merge;
pub mod resolver;

use serde_json::Value;

pub use merge::{merge3, Merged, Side};

pub use crate::domain::Strategy;
use crate::{domain::Item, error::ApiError};

/// A recorded conflict's sides, as a review sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct Sides {
    /// The version both writers started from, if it is still kept.
    pub base: Option<Value>,
    /// The stored value the incoming write met.
    pub current: Value,
    pub incoming: Value,
    /// Whether the incoming write is the later one by (timestamp, instance),
    /// last-write-wins' order.
    pub incoming_is_later: bool,
}

/// The value a review settles a conflict with: the reviewer's own
/// (`resolvedValue`), or what `strategy` makes of the sides. `MANUAL` and
/// `ASSISTED` need the reviewer's value; a merge that clashes names the
/// clashing paths.
pub fn settle(strategy: Strategy, given: Option<Value>, sides: Sides) -> Result<Value, ApiError> {
    if let Some(value) = given {
        return Ok(value);
    }
    match strategy {
        Strategy::FirstWriteWins => Ok(sides.current),
        Strategy::LastWriteWins if sides.incoming_is_later => Ok(sides.incoming),
        Strategy::LastWriteWins => Ok(sides.current),
        Strategy::Merge => match merge3(sides.base.as_ref(), &sides.current, &sides.incoming, None)
        {
            Merged::Value(v) => Ok(v),
            Merged::Clash(paths) => Err(ApiError::InvalidBody(format!(
                "the merge clashes at {}; give resolvedValue",
                paths.join(", ")
            ))),
        },
        Strategy::Manual | Strategy::Assisted => Err(ApiError::InvalidBody(
            "resolvedValue is required for this strategy".into(),
        )),
    }
}

/// Everything the write path needs to settle conflicts.
#[derive(Clone)]
pub struct Settings {
    pub policy: Policy,
    pub resolver: Option<resolver::Resolver>,
    pub history_versions: i64,
}

impl Settings {
    pub fn from_config(cfg: &ConflictConfig) -> Result<Self, reqwest::Error> {
        Ok(Settings {
            policy: Policy {
                default_strategy: cfg.default_strategy,
                merge_tiebreak_manual: cfg.merge_tiebreak_manual,
            },
            resolver: cfg
                .resolver_url
                .clone()
                .map(|url| resolver::Resolver::new(url, cfg.resolver_timeout))
                .transpose()?,
            history_versions: cfg.history_versions,
        })
    }

    /// A store with one strategy and no resolver (tests, tools).
    pub fn with_strategy(strategy: Strategy) -> Self {
        Settings {
            policy: Policy {
                default_strategy: strategy,
                merge_tiebreak_manual: false,
            },
            resolver: None,
            history_versions: 10,
        }
    }
}

/// The store's conflict settings.
#[derive(Debug, Clone)]
pub struct Policy {
    pub default_strategy: Strategy,
    /// For MERGE: `true` sends fields changed on both sides to review,
    /// `false` settles them last-write-wins.
    pub merge_tiebreak_manual: bool,
}

/// One side of a conflict.
#[derive(Debug, Clone, Copy)]
pub struct Contender<'a> {
    pub value: &'a Value,
    pub timestamp: i64,
    pub instance_id: &'a str,
}

/// What to do with a concurrent write.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The incoming value replaces the current one.
    Incoming,
    /// The current value stays; the incoming one is recorded as the loser.
    Current,
    /// A value combining both.
    Merged(Value),
    /// Nothing changes; the conflict waits for a person.
    Review,
    /// Ask the resolver webhook.
    Assist,
}

/// Whether a write is concurrent with the stored row: it names a version
/// that is not the current one, or, naming none, it carries a timestamp
/// older than the stored item's and comes from another instance. A removal
/// (tombstone) is a state like any other: an offline device's older blind
/// write is concurrent with a newer removal, and its strategy settles it
/// (under LAST_WRITE_WINS the removal stands), instead of resurrecting the
/// key.
pub fn is_concurrent(
    current: &Item,
    based_on: Option<i64>,
    timestamp: Option<i64>,
    instance_id: &str,
) -> bool {
    match based_on {
        Some(v) => v != current.version,
        None => {
            timestamp.is_some_and(|t| t < current.timestamp) && instance_id != current.instance_id
        }
    }
}

/// Last-write-wins: the later client timestamp wins; a tie goes to the
/// larger instance id, so every replica picks the same winner.
pub fn lww(current: Contender<'_>, incoming: Contender<'_>) -> Side {
    if (incoming.timestamp, incoming.instance_id) > (current.timestamp, current.instance_id) {
        Side::Incoming
    } else {
        Side::Current
    }
}

/// Settles a concurrent write with `strategy`.
pub fn decide(
    strategy: Strategy,
    policy: &Policy,
    base: Option<&Value>,
    current: Contender<'_>,
    incoming: Contender<'_>,
) -> Decision {
    match strategy {
        Strategy::LastWriteWins => match lww(current, incoming) {
            Side::Incoming => Decision::Incoming,
            Side::Current => Decision::Current,
        },
        Strategy::FirstWriteWins => Decision::Current,
        Strategy::Manual => Decision::Review,
        Strategy::Assisted => Decision::Assist,
        Strategy::Merge => {
            let tiebreak = (!policy.merge_tiebreak_manual).then(|| lww(current, incoming));
            match merge3(base, current.value, incoming.value, tiebreak) {
                Merged::Value(v) if &v == incoming.value => Decision::Incoming,
                Merged::Value(v) if &v == current.value => Decision::Current,
                Merged::Value(v) => Decision::Merged(v),
                Merged::Clash(_) => Decision::Review,
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ConflictConfig {
    pub default_strategy: Strategy,
    pub merge_tiebreak_manual: bool,
    pub resolver_url: Option<String>,
    pub resolver_timeout: std::time::Duration,
    pub history_versions: i64,
}

#[cfg(test)]
mod tests {
    use super::Strategy;

    fn sides(incoming_is_later: bool) -> Sides {
        Sides {
            base: Some(serde_json::json!({"a": 1, "b": 1})),
            current: serde_json::json!({"a": 2, "b": 1}),
            incoming: serde_json::json!({"a": 1, "b": 3}),
            incoming_is_later,
        }
    }

    #[test]
    fn a_review_settles_by_its_value_or_the_strategy() {
        let given = serde_json::json!("mine");
        assert_eq!(
            settle(Strategy::Manual, Some(given.clone()), sides(true)).ok(),
            Some(given)
        );
        assert_eq!(
            settle(Strategy::FirstWriteWins, None, sides(true)).ok(),
            Some(sides(true).current)
        );
        assert_eq!(
            settle(Strategy::LastWriteWins, None, sides(true)).ok(),
            Some(sides(true).incoming)
        );
        assert_eq!(
            settle(Strategy::LastWriteWins, None, sides(false)).ok(),
            Some(sides(false).current)
        );
        assert_eq!(
            settle(Strategy::Merge, None, sides(true)).ok(),
            Some(serde_json::json!({"a": 2, "b": 3}))
        );
        for needs_value in [Strategy::Manual, Strategy::Assisted] {
            let err = settle(needs_value, None, sides(true)).expect_err("needs resolvedValue");
            assert_eq!(err.code(), "INVALID_BODY");
        }
        let clash = Sides {
            base: Some(serde_json::json!({"a": 1})),
            current: serde_json::json!({"a": 2}),
            incoming: serde_json::json!({"a": 3}),
            incoming_is_later: true,
        };
        let err = settle(Strategy::Merge, None, clash).expect_err("clash");
        assert!(err.to_string().contains("clashes at"), "{err}");
    }
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn policy() -> Policy {
        Policy {
            default_strategy: Strategy::LastWriteWins,
            merge_tiebreak_manual: false,
        }
    }

    #[test]
    fn lww_prefers_the_later_timestamp_then_the_larger_instance() {
        let a = json!(1);
        let c = Contender {
            value: &a,
            timestamp: 10,
            instance_id: "a",
        };
        assert_eq!(lww(c, Contender { timestamp: 11, ..c }), Side::Incoming);
        assert_eq!(lww(c, Contender { timestamp: 9, ..c }), Side::Current);
        assert_eq!(
            lww(
                c,
                Contender {
                    instance_id: "b",
                    ..c
                }
            ),
            Side::Incoming
        );
        assert_eq!(
            lww(
                Contender {
                    instance_id: "b",
                    ..c
                },
                c
            ),
            Side::Current
        );
    }

    #[test]
    fn each_strategy_decides() {
        let (cv, iv, bv) = (
            json!({"a": 1, "b": 1}),
            json!({"a": 0, "b": 2}),
            json!({"a": 0, "b": 1}),
        );
        let cur = Contender {
            value: &cv,
            timestamp: 5,
            instance_id: "x",
        };
        let inc = Contender {
            value: &iv,
            timestamp: 6,
            instance_id: "y",
        };
        let p = policy();
        assert_eq!(
            decide(Strategy::LastWriteWins, &p, None, cur, inc),
            Decision::Incoming
        );
        assert_eq!(
            decide(Strategy::FirstWriteWins, &p, None, cur, inc),
            Decision::Current
        );
        assert_eq!(
            decide(Strategy::Manual, &p, None, cur, inc),
            Decision::Review
        );
        assert_eq!(
            decide(Strategy::Assisted, &p, None, cur, inc),
            Decision::Assist
        );
        assert_eq!(
            decide(Strategy::Merge, &p, Some(&bv), cur, inc),
            Decision::Merged(json!({"a": 1, "b": 2}))
        );
        let clash = json!({"a": 9, "b": 1});
        let manual = Policy {
            merge_tiebreak_manual: true,
            ..p
        };
        let inc2 = Contender {
            value: &clash,
            ..inc
        };
        assert_eq!(
            decide(Strategy::Merge, &manual, Some(&bv), cur, inc2),
            Decision::Review
        );
    }

    proptest! {
        /// Whatever order two concurrent writes arrive in, LWW keeps the same one.
        #[test]
        fn lww_converges_whatever_the_arrival_order(t1 in 0i64..5, t2 in 0i64..5, i1 in "[ab]", i2 in "[ab]") {
            let (v1, v2) = (json!(1), json!(2));
            let w1 = Contender { value: &v1, timestamp: t1, instance_id: &i1 };
            let w2 = Contender { value: &v2, timestamp: t2, instance_id: &i2 };
            // w1 stored, w2 arrives; or w2 stored, w1 arrives.
            let first = match lww(w1, w2) { Side::Incoming => v2.clone(), Side::Current => v1.clone() };
            let second = match lww(w2, w1) { Side::Incoming => v1.clone(), Side::Current => v2.clone() };
            if (t1, &i1) != (t2, &i2) {
                prop_assert_eq!(first, second);
            }
        }
    }
}
