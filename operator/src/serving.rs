//! Whether a store serves, read from its data-plane Deployment's status
//! (which the Deployment controller fills from the kubelet's pod reports):
//! `Ready` needs at least one available replica, `Degraded` means fewer
//! than the minimum are available once the rollout is over, and the phase
//! says which of `Progressing`, `Degraded` or `Running` the store is in.

use k8s_openapi::api::apps::v1::Deployment;
use syncstore_crds::SyncStore;

use crate::conditions::Verdict;

/// What the Deployment says about serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    /// Pods the Deployment has now (the HPA's count under autoscaling).
    pub replicas: Option<i32>,
    pub ready_replicas: i32,
    pub phase: &'static str,
    pub ready: Verdict,
    pub available: Verdict,
    pub progressing: Verdict,
    pub degraded: Verdict,
}

/// The fewest replicas the store should have available: `minReplicas`
/// when an autoscaler owns the count, `replicas` otherwise.
pub fn minimum(store: &SyncStore) -> i32 {
    store
        .spec
        .autoscaling
        .as_ref()
        .map_or(store.spec.replicas, |a| a.min_replicas)
}

/// Where the Deployment's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rollout {
    /// Every replica runs the latest template.
    Complete,
    /// Under way: the Deployment controller has not yet seen the latest
    /// spec, or not every replica runs the latest template; why, as a
    /// clause.
    Under(String),
    /// Stuck: the Deployment reports `Progressing=False`, reason
    /// `ProgressDeadlineExceeded` (an image that never pulls, pods that
    /// never become ready); its message, as a clause.
    Stalled(String),
}

/// The Deployment's `ProgressDeadlineExceeded` message as a clause: its
/// first line, without a closing period, or a stand-in when it has none.
fn stalled_message(d: &Deployment, message: Option<&str>) -> String {
    let text = message
        .and_then(|m| m.lines().next())
        .map(|m| m.trim().trim_end_matches('.').trim())
        .filter(|m| !m.is_empty());
    match text {
        Some(m) => format!("the rollout stalled past its progress deadline ({m})"),
        None => format!(
            "the rollout of Deployment {} stalled past its progress deadline",
            d.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// Where the rollout stands. A stall reported for an older spec (the
/// controller has not seen the latest one) does not count: the new spec
/// starts a new rollout.
fn rollout(d: &Deployment, desired: i32) -> Rollout {
    let status = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::Under(
            "the Deployment controller has not yet picked up the latest spec".into(),
        );
    }
    let stalled = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(c) = stalled {
        return Rollout::Stalled(stalled_message(d, c.message.as_deref()));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < desired || total > updated {
        return Rollout::Under(format!(
            "{updated} of {desired} replicas run the latest version"
        ));
    }
    Rollout::Complete
}

/// Capitalises the first letter of a clause, to open a sentence.
fn sentence(clause: &str) -> String {
    let mut chars = clause.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn ready_verdict(available: i32, rollout: &Rollout, counted: &str) -> Verdict {
    match rollout {
        _ if available > 0 => Verdict::ok("Ready", "Serving", format!("{counted}.")),
        Rollout::Under(_) => Verdict::fail(
            "Ready",
            "RolloutInProgress",
            format!("No replica is available yet while the rollout is under way ({counted})."),
        ),
        Rollout::Stalled(why) => Verdict::fail(
            "Ready",
            "ProgressDeadlineExceeded",
            format!("No replica is available because {why}."),
        ),
        Rollout::Complete => Verdict::fail(
            "Ready",
            "NoReplicasAvailable",
            format!("No replica is available ({counted})."),
        ),
    }
}

fn progressing_verdict(rollout: &Rollout) -> Verdict {
    match rollout {
        Rollout::Under(why) => Verdict::ok(
            "Progressing",
            "RolloutInProgress",
            format!("{}.", sentence(why)),
        ),
        Rollout::Stalled(why) => Verdict::fail(
            "Progressing",
            "ProgressDeadlineExceeded",
            format!("{}.", sentence(why)),
        ),
        Rollout::Complete => Verdict::fail(
            "Progressing",
            "RolloutComplete",
            "Every replica runs the latest version.",
        ),
    }
}

fn degraded_verdict(available: i32, min: i32, rollout: &Rollout, counted: &str) -> Verdict {
    let replicas = match available {
        1 => "1 replica is".to_string(),
        n => format!("{n} replicas are"),
    };
    match rollout {
        Rollout::Stalled(why) => Verdict::ok(
            "Degraded",
            "ProgressDeadlineExceeded",
            format!("{}, and {counted}.", sentence(why)),
        ),
        Rollout::Complete if available < min => Verdict::ok(
            "Degraded",
            "InsufficientReplicas",
            format!("{replicas} available, fewer than the minimum of {min}."),
        ),
        _ => Verdict::fail(
            "Degraded",
            "MinimumReplicasAvailable",
            format!("At least the minimum of {min} replicas is available or on its way."),
        ),
    }
}

/// Reads the verdicts from the store's applied Deployment.
pub fn serving(store: &SyncStore, d: &Deployment) -> Serving {
    let status = d.status.clone().unwrap_or_default();
    let available = status.available_replicas.unwrap_or(0);
    let desired = d
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or_else(|| minimum(store));
    let min = minimum(store);
    let rollout = rollout(d, desired);
    let counted = format!("{available} of {desired} replicas are available");
    let degraded = degraded_verdict(available, min, &rollout, &counted);
    let phase = match rollout {
        Rollout::Under(_) => "Progressing",
        _ if degraded.is_true() => "Degraded",
        _ => "Running",
    };
    let available_verdict = if available > 0 {
        Verdict::ok("Available", "ReplicasAvailable", format!("{counted}."))
    } else {
        Verdict::fail("Available", "NoReplicasAvailable", format!("{counted}."))
    };
    Serving {
        replicas: status.replicas,
        ready_replicas: status.ready_replicas.unwrap_or(0),
        phase,
        ready: ready_verdict(available, &rollout, &counted),
        available: available_verdict,
        progressing: progressing_verdict(&rollout),
        degraded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(yaml: &str) -> SyncStore {
        let spec = serde_yaml::from_str(yaml).expect("spec parses");
        SyncStore::new("chat", spec)
    }

    fn deployment(generation: i64, replicas: i32, status: &str) -> Deployment {
        let mut d: Deployment = serde_json::from_str(&format!(
            r#"{{"metadata":{{"name":"chat","generation":{generation}}},"spec":{{"replicas":{replicas},"selector":{{}},"template":{{}}}},"status":{status}}}"#
        ))
        .expect("deployment");
        d.metadata.generation = Some(generation);
        d
    }

    const SPEC: &str =
        "image: x\nreplicas: 3\ndatabase: {engine: postgres, adminSecretRef: {name: a}}\n";

    #[test]
    fn a_fresh_deployment_is_progressing_and_not_ready() {
        let s = serving(&store(SPEC), &deployment(1, 3, "{}"));
        assert_eq!(s.phase, "Progressing");
        assert!(!s.ready.is_true());
        assert_eq!(s.ready.reason, "RolloutInProgress");
        assert!(!s.degraded.is_true());
    }

    #[test]
    fn all_available_is_running_and_ready() {
        let d = deployment(
            2,
            3,
            r#"{"observedGeneration":2,"replicas":3,"updatedReplicas":3,"readyReplicas":3,"availableReplicas":3}"#,
        );
        let s = serving(&store(SPEC), &d);
        assert_eq!(s.phase, "Running");
        assert_eq!(
            (
                s.ready.is_true(),
                s.ready.reason.as_str(),
                s.ready.message.as_str()
            ),
            (true, "Serving", "3 of 3 replicas are available.")
        );
        assert_eq!(s.ready_replicas, 3);
    }

    #[test]
    fn fewer_than_the_minimum_is_degraded_but_still_ready() {
        let d = deployment(
            1,
            3,
            r#"{"observedGeneration":1,"replicas":3,"updatedReplicas":3,"readyReplicas":1,"availableReplicas":1}"#,
        );
        let s = serving(&store(SPEC), &d);
        assert_eq!(s.phase, "Degraded");
        assert!(s.ready.is_true());
        assert_eq!(s.degraded.reason, "InsufficientReplicas");
        assert!(s.degraded.is_true());
    }

    #[test]
    fn none_available_after_the_rollout_is_degraded_and_not_ready() {
        let d = deployment(
            1,
            3,
            r#"{"observedGeneration":1,"replicas":3,"updatedReplicas":3,"availableReplicas":0}"#,
        );
        let s = serving(&store(SPEC), &d);
        assert_eq!(s.phase, "Degraded");
        assert_eq!(s.ready.reason, "NoReplicasAvailable");
    }

    #[test]
    fn the_autoscaler_minimum_counts() {
        let st = store(&format!(
            "{SPEC}autoscaling: {{minReplicas: 2, maxReplicas: 5}}\n"
        ));
        let d = deployment(
            3,
            4,
            r#"{"observedGeneration":3,"replicas":4,"updatedReplicas":4,"availableReplicas":1}"#,
        );
        let s = serving(&st, &d);
        assert_eq!(s.phase, "Degraded");
        assert_eq!(
            s.degraded.message,
            "1 replica is available, fewer than the minimum of 2."
        );
    }

    const STALLED: &str = r#"{"type":"Progressing","status":"False","reason":"ProgressDeadlineExceeded","message":"ReplicaSet \"chat-5d8f7c9b4\" has timed out progressing."}"#;

    /// An image that never pulls: the Deployment gives up at its progress
    /// deadline, and the store says so with the Deployment's message.
    #[test]
    fn a_stalled_rollout_is_degraded_with_the_deployments_message() {
        let d = deployment(
            2,
            3,
            &format!(
                r#"{{"observedGeneration":2,"replicas":1,"updatedReplicas":1,"availableReplicas":0,"conditions":[{STALLED}]}}"#
            ),
        );
        let s = serving(&store(SPEC), &d);
        assert_eq!(s.phase, "Degraded");
        let why = "the rollout stalled past its progress deadline (ReplicaSet \"chat-5d8f7c9b4\" has timed out progressing)";
        assert_eq!(
            (
                s.ready.status,
                s.ready.reason.as_str(),
                s.ready.message.clone()
            ),
            (
                crate::conditions::Status::False,
                "ProgressDeadlineExceeded",
                format!("No replica is available because {why}.")
            )
        );
        assert_eq!(
            (s.progressing.status, s.progressing.reason.as_str()),
            (crate::conditions::Status::False, "ProgressDeadlineExceeded")
        );
        assert_eq!(
            s.progressing.message,
            "The rollout stalled past its progress deadline (ReplicaSet \"chat-5d8f7c9b4\" has timed out progressing)."
        );
        assert_eq!(
            (s.degraded.is_true(), s.degraded.reason.as_str()),
            (true, "ProgressDeadlineExceeded")
        );
        assert_eq!(
            s.degraded.message,
            "The rollout stalled past its progress deadline (ReplicaSet \"chat-5d8f7c9b4\" has timed out progressing), and 0 of 3 replicas are available."
        );

        // The old replicas still serve: Ready, but the stall shows.
        let d = deployment(
            2,
            3,
            &format!(
                r#"{{"observedGeneration":2,"replicas":4,"updatedReplicas":1,"availableReplicas":3,"conditions":[{STALLED}]}}"#
            ),
        );
        let s = serving(&store(SPEC), &d);
        assert_eq!(s.phase, "Degraded");
        assert_eq!(s.ready.reason, "Serving");
        assert_eq!(s.degraded.reason, "ProgressDeadlineExceeded");

        // A new spec starts a new rollout: the old stall does not count.
        let d = deployment(
            3,
            3,
            &format!(
                r#"{{"observedGeneration":2,"replicas":4,"updatedReplicas":1,"availableReplicas":3,"conditions":[{STALLED}]}}"#
            ),
        );
        let s = serving(&store(SPEC), &d);
        assert_eq!(s.phase, "Progressing");
        assert_eq!(s.progressing.reason, "RolloutInProgress");
    }
}
