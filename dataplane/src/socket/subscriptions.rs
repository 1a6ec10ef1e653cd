//! Which keys a device wants: all of them until it subscribes to some.

use std::collections::BTreeSet;

use crate::{error::ApiError, sync::validate_key};

/// Most keys and prefixes one device may subscribe to.
pub const MAX_SUBSCRIPTIONS: usize = 1000;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Subscriptions {
    keys: BTreeSet<String>,
    prefixes: BTreeSet<String>,
}

/// Whether the set `after` covers keys `before` did not (`[]` is every
/// key): the changes to those keys were skipped under `before`, so a device
/// moving to `after` must re-fetch. Adding a pattern counts even when an
/// existing one already covers it (a needless re-fetch, never a missed one).
pub fn widens(before: &[String], after: &[String]) -> bool {
    !before.is_empty() && (after.is_empty() || after.iter().any(|p| !before.contains(p)))
}

impl Subscriptions {
    /// With no subscriptions a device receives every key of its user.
    pub fn wants(&self, key: &str) -> bool {
        (self.keys.is_empty() && self.prefixes.is_empty())
            || self.keys.contains(key)
            || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// Adds keys; a trailing `*` makes a prefix (`settings/*`; `*` alone is
    /// every key). Validates all before changing anything.
    pub fn subscribe(&mut self, patterns: &[String]) -> Result<(), ApiError> {
        let parsed = parse(patterns)?;
        let mut next = self.clone();
        for (pattern, is_prefix) in parsed {
            if is_prefix {
                next.prefixes.insert(pattern);
            } else {
                next.keys.insert(pattern);
            }
        }
        if next.keys.len() + next.prefixes.len() > MAX_SUBSCRIPTIONS {
            return Err(ApiError::InvalidBody(format!(
                "at most {MAX_SUBSCRIPTIONS} subscriptions per device"
            )));
        }
        *self = next;
        Ok(())
    }

    pub fn unsubscribe(&mut self, patterns: &[String]) -> Result<(), ApiError> {
        for (pattern, is_prefix) in parse(patterns)? {
            if is_prefix {
                self.prefixes.remove(&pattern);
            } else {
                self.keys.remove(&pattern);
            }
        }
        Ok(())
    }

    /// The subscription set as clients wrote it (prefixes with their `*`).
    pub fn list(&self) -> Vec<String> {
        self.keys
            .iter()
            .cloned()
            .chain(self.prefixes.iter().map(|p| format!("{p}*")))
            .collect()
    }
}

fn parse(patterns: &[String]) -> Result<Vec<(String, bool)>, ApiError> {
    if patterns.len() > MAX_SUBSCRIPTIONS {
        return Err(ApiError::InvalidBody(format!(
            "at most {MAX_SUBSCRIPTIONS} keys per call"
        )));
    }
    patterns
        .iter()
        .map(|p| match p.strip_suffix('*') {
            Some(prefix) => {
                crate::sync::validate_prefix(prefix)
                    .map_err(|e| ApiError::InvalidKey(e.to_string()))?;
                Ok((prefix.to_string(), true))
            }
            None => validate_key(p).map(|()| (p.clone(), false)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn subs(patterns: &[&str]) -> Subscriptions {
        let mut s = Subscriptions::default();
        s.subscribe(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>())
            .unwrap();
        s
    }

    #[test]
    fn no_subscription_means_every_key() {
        assert!(Subscriptions::default().wants("anything"));
    }

    #[test]
    fn exact_keys_and_prefixes_filter() {
        let s = subs(&["profile", "settings/*"]);
        assert!(s.wants("profile") && s.wants("settings/theme") && s.wants("settings/"));
        assert!(!s.wants("profile2") && !s.wants("other"));
        assert_eq!(
            s.list(),
            vec!["profile".to_string(), "settings/*".to_string()]
        );
    }

    #[test]
    fn unsubscribing_everything_restores_all_keys() {
        let mut s = subs(&["a", "b*"]);
        s.unsubscribe(&["a".into(), "b*".into()]).unwrap();
        assert_eq!(s, Subscriptions::default());
        assert!(s.wants("zzz"));
    }

    #[test]
    fn invalid_patterns_change_nothing() {
        let mut s = subs(&["a"]);
        assert!(s.subscribe(&["ok".into(), "bad\nkey".into()]).is_err());
        assert_eq!(s.list(), vec!["a".to_string()]);
        assert!(s.subscribe(&[String::new()]).is_err());
    }

    proptest! {
        #[test]
        fn a_prefix_wants_exactly_the_keys_it_starts(prefix in "[a-c]{0,3}", key in "[a-c]{1,5}") {
            let s = subs(&[&format!("{prefix}*")]);
            prop_assert_eq!(s.wants(&key), key.starts_with(&prefix));
        }
    }
}
