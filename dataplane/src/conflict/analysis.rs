//! `POST /conflicts/analyze`: what an item's conflict history says, and which
//! strategy would suit it. Pure: it reads a history, nothing else.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use super::{merge3, Merged, Strategy};

/// One recorded conflict, as much of it as the analysis needs.
#[derive(Debug, Clone)]
pub struct Record {
    pub base: Option<Value>,
    pub current: Value,
    pub incoming: Value,
    pub current_instance: String,
    pub incoming_instance: String,
    pub current_ts: i64,
    pub incoming_ts: i64,
}

/// What the conflicts of one item show.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analysis {
    pub conflicts: usize,
    /// Conflicts per write of the item.
    pub conflict_rate: f64,
    pub instances: Vec<String>,
    /// Median time between the two competing writes, in milliseconds.
    pub median_gap_ms: Option<i64>,
    /// How many of the conflicts a three-way merge would settle without a clash.
    pub clean_merges: usize,
    pub suggested_strategy: &'static str,
    pub reason: String,
}

/// Analyses the conflicts of an item that has had `writes` writes.
pub fn analyze(records: &[Record], writes: i64) -> Analysis {
    let instances: BTreeSet<String> = records
        .iter()
        .flat_map(|r| [r.current_instance.clone(), r.incoming_instance.clone()])
        .collect();
    let mut gaps: Vec<i64> = records
        .iter()
        .map(|r| (r.incoming_ts - r.current_ts).abs())
        .collect();
    gaps.sort_unstable();
    let median_gap_ms = (!gaps.is_empty()).then(|| gaps[gaps.len() / 2]);
    let clean_merges = records
        .iter()
        .filter(|r| {
            matches!(
                merge3(r.base.as_ref(), &r.current, &r.incoming, None),
                Merged::Value(_)
            )
        })
        .count();
    let n = records.len();
    let conflict_rate = n as f64 / writes.max(1) as f64;
    let (strategy, reason) = if n == 0 {
        (
            Strategy::LastWriteWins,
            "no conflicts recorded: the default is fine".to_string(),
        )
    } else if clean_merges * 5 >= n * 4 {
        (
            Strategy::Merge,
            format!("{clean_merges} of {n} conflicts touch different fields and merge cleanly"),
        )
    } else if conflict_rate > 0.25 {
        (
            Strategy::Manual,
            format!(
                "{:.0}% of writes conflict and most overlap: a person should decide",
                conflict_rate * 100.0
            ),
        )
    } else {
        (
            Strategy::LastWriteWins,
            format!("conflicts are rare ({n} in {writes} writes) and overlap: keep the latest"),
        )
    };
    Analysis {
        conflicts: n,
        conflict_rate,
        instances: instances.into_iter().collect(),
        median_gap_ms,
        clean_merges,
        suggested_strategy: strategy.as_str(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(base: Value, current: Value, incoming: Value, gap: i64) -> Record {
        Record {
            base: Some(base),
            current,
            incoming,
            current_instance: "phone".into(),
            incoming_instance: "laptop".into(),
            current_ts: 1000,
            incoming_ts: 1000 + gap,
        }
    }

    #[test]
    fn no_conflicts_suggests_the_default() {
        let a = analyze(&[], 10);
        assert_eq!(
            (a.conflicts, a.suggested_strategy, a.median_gap_ms),
            (0, "LAST_WRITE_WINS", None)
        );
    }

    #[test]
    fn disjoint_field_changes_suggest_merge() {
        let r = rec(
            json!({"a": 1, "b": 1}),
            json!({"a": 2, "b": 1}),
            json!({"a": 1, "b": 2}),
            40,
        );
        let a = analyze(&[r.clone(), r], 10);
        assert_eq!(
            (a.suggested_strategy, a.clean_merges, a.median_gap_ms),
            ("MERGE", 2, Some(40))
        );
        assert_eq!(a.instances, vec!["laptop".to_string(), "phone".to_string()]);
        assert!((a.conflict_rate - 0.2).abs() < 1e-9);
    }

    #[test]
    fn frequent_overlapping_conflicts_suggest_review() {
        let r = rec(json!(1), json!(2), json!(3), 5);
        assert_eq!(
            analyze(&[r.clone(), r.clone(), r], 4).suggested_strategy,
            "MANUAL"
        );
        let r = rec(json!(1), json!(2), json!(3), 5);
        assert_eq!(analyze(&[r], 100).suggested_strategy, "LAST_WRITE_WINS");
    }
}
