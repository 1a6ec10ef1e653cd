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

/// Whether a rollout is under way: the Deployment controller has not yet
/// seen the latest spec, or not every replica runs the latest template.
/// A rollout past its progress deadline is no longer "under way": it is
/// stuck, and the shortfall shows as `Degraded`.
fn rolling(d: &Deployment, desired: i32) -> Option<String> {
    let status = d.status.clone().unwrap_or_default();
    let stalled = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if stalled {
        return None;
    }
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Some("the Deployment controller has not yet picked up the latest spec".into());
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < desired || total > updated {
        return Some(format!(
            "{updated} of {desired} replicas run the latest version"
        ));
    }
    None
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
    let rollout = rolling(d, desired);
    let counted = format!("{available} of {desired} replicas are available");

    let ready = match (available > 0, &rollout) {
        (true, _) => Verdict::ok("Ready", "Serving", format!("{counted}.")),
        (false, Some(_)) => Verdict::fail(
            "Ready",
            "RolloutInProgress",
            format!("No replica is available yet while the rollout is under way ({counted})."),
        ),
        (false, None) => Verdict::fail(
            "Ready",
            "NoReplicasAvailable",
            format!("No replica is available ({counted})."),
        ),
    };
    let available_verdict = if available > 0 {
        Verdict::ok("Available", "ReplicasAvailable", format!("{counted}."))
    } else {
        Verdict::fail("Available", "NoReplicasAvailable", format!("{counted}."))
    };
    let progressing = match &rollout {
        Some(why) => Verdict::ok("Progressing", "RolloutInProgress", format!("{why}.")),
        None => Verdict::fail(
            "Progressing",
            "RolloutComplete",
            "Every replica runs the latest version.",
        ),
    };
    let short = available < min && rollout.is_none();
    let degraded = if short {
        Verdict::ok(
            "Degraded",
            "InsufficientReplicas",
            format!(
                "{} available, fewer than the minimum of {min}.",
                match available {
                    1 => "1 replica is".to_string(),
                    n => format!("{n} replicas are"),
                }
            ),
        )
    } else {
        Verdict::fail(
            "Degraded",
            "MinimumReplicasAvailable",
            format!("At least the minimum of {min} replicas is available or on its way."),
        )
    };
    let phase = if rollout.is_some() {
        "Progressing"
    } else if short {
        "Degraded"
    } else {
        "Running"
    };
    Serving {
        replicas: status.replicas,
        ready_replicas: status.ready_replicas.unwrap_or(0),
        phase,
        ready,
        available: available_verdict,
        progressing,
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
    fn the_autoscaler_minimum_counts_and_a_stalled_rollout_is_degraded() {
        let st = store(&format!(
            "{SPEC}autoscaling: {{minReplicas: 2, maxReplicas: 5}}\n"
        ));
        let d = deployment(
            3,
            4,
            r#"{"observedGeneration":3,"replicas":4,"updatedReplicas":1,"availableReplicas":1,"conditions":[{"type":"Progressing","status":"False","reason":"ProgressDeadlineExceeded"}]}"#,
        );
        let s = serving(&st, &d);
        assert_eq!(s.phase, "Degraded");
        assert_eq!(
            s.degraded.message,
            "1 replica is available, fewer than the minimum of 2."
        );
    }
}
