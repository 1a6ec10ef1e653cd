//! Status conditions with the Kubernetes convention that
//! `lastTransitionTime` moves only when the status flips, so watchers can
//! tell how long a store has been (un)ready, and repeated reconciles write
//! byte-identical status (which is what keeps them from re-triggering).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};

/// A condition's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    /// The operator cannot tell (say, the schema version while migrating
    /// fails).
    Unknown,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// One condition as a reconcile decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub type_: &'static str,
    pub status: Status,
    pub reason: String,
    pub message: String,
}

impl Verdict {
    fn new(type_: &'static str, status: Status, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: one_line(&message.into()),
        }
    }

    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self::new(type_, Status::True, reason, message)
    }

    pub fn fail(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self::new(type_, Status::False, reason, message)
    }

    pub fn unknown(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self::new(type_, Status::Unknown, reason, message)
    }

    /// Whether the condition is True.
    pub fn is_true(&self) -> bool {
        self.status == Status::True
    }
}

/// `text` as one line: every run of whitespace that holds a line break
/// (a driver's or a parser's multi-line error, such as the regex crate's
/// `regex parse error:\n    (unclosed\n    ^\nerror: unclosed group`) becomes
/// one space, so a condition or event message reads as one sentence.
pub fn one_line(text: &str) -> String {
    if !text.contains(['\n', '\r']) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut pending = String::new();
    for c in text.trim().chars() {
        if c.is_whitespace() {
            pending.push(c);
            continue;
        }
        if !pending.is_empty() {
            out.push_str(if pending.contains(['\n', '\r']) {
                " "
            } else {
                &pending
            });
            pending.clear();
        }
        out.push(c);
    }
    out
}

/// Merges `verdicts` into `current`. A condition keeps its
/// `lastTransitionTime` unless its status changed; reason, message and
/// observedGeneration always follow the verdict. Conditions not named by a
/// verdict are kept as they are.
pub fn merge(
    current: &[Condition],
    verdicts: &[Verdict],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = current.to_vec();
    for v in verdicts {
        let status = v.status.as_str().to_string();
        match out.iter_mut().find(|c| c.type_ == v.type_) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = Time(now);
                }
                c.status = status;
                c.reason = v.reason.clone();
                c.message = v.message.clone();
                c.observed_generation = generation;
            }
            None => out.push(Condition {
                type_: v.type_.to_string(),
                status,
                reason: v.reason.clone(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time: Time(now),
            }),
        }
    }
    out
}

/// Whether condition `type_` is True in `conditions`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line() {
        let v = Verdict::fail("Ready", "InvalidSpec", "a:\n    (x\n    ^\nerror: b  c");
        assert_eq!(v.message, "a: (x ^ error: b  c");
        assert_eq!(one_line("already  one line"), "already  one line");
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    #[test]
    fn a_new_condition_gets_now() {
        let out = merge(
            &[],
            &[Verdict::ok("Ready", "Reconciled", "ok")],
            Some(3),
            at(100),
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].status, "True");
        assert_eq!(out[0].last_transition_time, Time(at(100)));
        assert_eq!(out[0].observed_generation, Some(3));
    }

    #[test]
    fn same_status_keeps_the_transition_time_but_takes_the_new_message() {
        let first = merge(
            &[],
            &[Verdict::fail("Ready", "DatabaseUnreachable", "a")],
            Some(1),
            at(100),
        );
        let second = merge(
            &first,
            &[Verdict::fail("Ready", "SecretMissing", "b")],
            Some(2),
            at(200),
        );
        assert_eq!(second[0].last_transition_time, Time(at(100)));
        assert_eq!(second[0].reason, "SecretMissing");
        assert_eq!(second[0].message, "b");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn a_flip_moves_the_transition_time() {
        let first = merge(&[], &[Verdict::fail("Ready", "Pending", "")], None, at(100));
        let second = merge(
            &first,
            &[Verdict::ok("Ready", "Reconciled", "")],
            None,
            at(200),
        );
        assert_eq!(second[0].last_transition_time, Time(at(200)));
        assert!(is_true(&second, "Ready"));
    }

    #[test]
    fn unrelated_conditions_are_kept_and_repeats_are_identical() {
        let first = merge(
            &[],
            &[
                Verdict::ok("DatabaseReady", "Connected", ""),
                Verdict::ok("Ready", "Reconciled", ""),
            ],
            Some(1),
            at(100),
        );
        let again = merge(
            &first,
            &[Verdict::ok("Ready", "Reconciled", "")],
            Some(1),
            at(500),
        );
        assert_eq!(first, again);
    }
}
