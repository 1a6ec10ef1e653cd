//! Three-way JSON merge: the incoming and current values, each against the
//! base both were derived from.
//!
//! Object fields changed on one side only are taken from that side (a field
//! removed on one side and untouched on the other is removed). Objects
//! changed on both sides merge recursively. Anything else changed on both
//! sides differently (scalars, arrays, a type change) is a clash, settled
//! by the tiebreak.

use serde_json::{Map, Value};

/// Which side wins a field changed on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Current,
    Incoming,
}

/// The result of a merge, or the paths that clashed when there is no
/// tiebreak (manual review).
#[derive(Debug, Clone, PartialEq)]
pub enum Merged {
    Value(Value),
    Clash(Vec<String>),
}

/// Merges `incoming` into `current` against `base`. With `tiebreak`, clashes
/// go to that side; without, any clash makes the result [`Merged::Clash`].
pub fn merge3(
    base: Option<&Value>,
    current: &Value,
    incoming: &Value,
    tiebreak: Option<Side>,
) -> Merged {
    let mut clashes = Vec::new();
    let value = merge_value(
        base,
        Some(current),
        Some(incoming),
        tiebreak,
        "",
        &mut clashes,
    );
    if tiebreak.is_none() && !clashes.is_empty() {
        return Merged::Clash(clashes);
    }
    Merged::Value(value.unwrap_or(Value::Null))
}

fn merge_value(
    base: Option<&Value>,
    current: Option<&Value>,
    incoming: Option<&Value>,
    tiebreak: Option<Side>,
    path: &str,
    clashes: &mut Vec<String>,
) -> Option<Value> {
    if current == incoming {
        return current.cloned();
    }
    if current == base {
        return incoming.cloned();
    }
    if incoming == base {
        return current.cloned();
    }
    if let (Some(Value::Object(c)), Some(Value::Object(i))) = (current, incoming) {
        let b = match base {
            Some(Value::Object(b)) => Some(b),
            _ => None,
        };
        return Some(Value::Object(merge_objects(
            b, c, i, tiebreak, path, clashes,
        )));
    }
    clashes.push(if path.is_empty() {
        "$".to_string()
    } else {
        path.to_string()
    });
    match tiebreak {
        Some(Side::Current) | None => current.cloned(),
        Some(Side::Incoming) => incoming.cloned(),
    }
}

fn merge_objects(
    base: Option<&Map<String, Value>>,
    current: &Map<String, Value>,
    incoming: &Map<String, Value>,
    tiebreak: Option<Side>,
    path: &str,
    clashes: &mut Vec<String>,
) -> Map<String, Value> {
    let mut keys: Vec<&String> = current.keys().chain(incoming.keys()).collect();
    if let Some(b) = base {
        keys.extend(b.keys());
    }
    keys.sort();
    keys.dedup();
    let mut out = Map::new();
    for key in keys {
        let child = format!("{path}.{key}");
        let merged = merge_value(
            base.and_then(|b| b.get(key)),
            current.get(key),
            incoming.get(key),
            tiebreak,
            &child,
            clashes,
        );
        if let Some(v) = merged {
            out.insert(key.clone(), v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn one_sided_changes_are_both_kept() {
        let base = json!({"name": "A", "age": 1, "tags": ["x"]});
        let current = json!({"name": "B", "age": 1, "tags": ["x"]});
        let incoming = json!({"name": "A", "age": 2, "tags": ["x"], "new": true});
        assert_eq!(
            merge3(Some(&base), &current, &incoming, None),
            Merged::Value(json!({"name": "B", "age": 2, "tags": ["x"], "new": true}))
        );
    }

    #[test]
    fn removals_on_one_side_are_kept() {
        let base = json!({"a": 1, "b": 2});
        let current = json!({"a": 1});
        let incoming = json!({"a": 1, "b": 2, "c": 3});
        assert_eq!(
            merge3(Some(&base), &current, &incoming, None),
            Merged::Value(json!({"a": 1, "c": 3}))
        );
    }

    #[test]
    fn nested_objects_merge_and_scalar_clashes_go_to_the_tiebreak() {
        let base = json!({"p": {"x": 1, "y": 1}, "n": 0});
        let current = json!({"p": {"x": 2, "y": 1}, "n": 5});
        let incoming = json!({"p": {"x": 1, "y": 3}, "n": 7});
        assert_eq!(
            merge3(Some(&base), &current, &incoming, None),
            Merged::Clash(vec![".n".into()])
        );
        assert_eq!(
            merge3(Some(&base), &current, &incoming, Some(Side::Incoming)),
            Merged::Value(json!({"p": {"x": 2, "y": 3}, "n": 7}))
        );
        assert_eq!(
            merge3(Some(&base), &current, &incoming, Some(Side::Current)),
            Merged::Value(json!({"p": {"x": 2, "y": 3}, "n": 5}))
        );
    }

    #[test]
    fn arrays_changed_on_both_sides_clash_whole() {
        let base = json!({"l": [1]});
        let r = merge3(
            Some(&base),
            &json!({"l": [1, 2]}),
            &json!({"l": [1, 3]}),
            None,
        );
        assert_eq!(r, Merged::Clash(vec![".l".into()]));
        assert_eq!(
            merge3(None, &json!(1), &json!(2), None),
            Merged::Clash(vec!["$".into()])
        );
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0i64..5).prop_map(Value::from)
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn object() -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map("[a-f]", json_value(), 0..5)
            .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #[test]
        fn merge_is_deterministic(b in json_value(), c in json_value(), i in json_value()) {
            for tb in [None, Some(Side::Current), Some(Side::Incoming)] {
                prop_assert_eq!(merge3(Some(&b), &c, &i, tb), merge3(Some(&b), &c, &i, tb));
            }
        }

        #[test]
        fn non_overlapping_changes_from_both_sides_are_kept(base in object(), cur_changes in object(), inc_changes in object()) {
            // Current changes keys a-c only, incoming d-f only: no overlap.
            let mut current = base.clone();
            let mut incoming = base.clone();
            for (k, v) in cur_changes.iter().filter(|(k, _)| k.as_str() <= "c") { current.insert(k.clone(), v.clone()); }
            for (k, v) in inc_changes.iter().filter(|(k, _)| k.as_str() > "c") { incoming.insert(k.clone(), v.clone()); }
            let merged = merge3(Some(&Value::Object(base.clone())), &Value::Object(current.clone()), &Value::Object(incoming.clone()), None);
            let Merged::Value(Value::Object(m)) = merged else { return Err(TestCaseError::fail("expected a clean merge")); };
            for (k, v) in &m {
                let expected = if k.as_str() <= "c" { current.get(k) } else { incoming.get(k) };
                prop_assert_eq!(Some(v), expected);
            }
            for k in current.keys().filter(|k| k.as_str() <= "c").chain(incoming.keys().filter(|k| k.as_str() > "c")) {
                prop_assert!(m.contains_key(k));
            }
        }

        #[test]
        fn identical_sides_merge_to_themselves(b in json_value(), v in json_value()) {
            prop_assert_eq!(merge3(Some(&b), &v, &v, None), Merged::Value(v.clone()));
        }
    }
}
