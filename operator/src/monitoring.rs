//! The store's Prometheus Operator `PodMonitor` (`spec.monitoring`): built
//! by a pure function like every child, applied after the others, and never
//! a reason for the store to fail. Where the PodMonitor CRD is not
//! installed (or the operator may not write PodMonitors) the store runs on,
//! and its `MonitoringReady` condition and a Warning event say why there is
//! no PodMonitor.
//!
//! The PodMonitor is not watched: a cluster without its CRD would fail the
//! watch (and the operator's health with it). Drift is reverted at the
//! store's next reconcile, as for every child.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{CustomResource, Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use syncstore_crds::SyncStore;

use crate::{
    apply::{apply, delete_orphans},
    children::labels,
    conditions::{Status, Verdict},
    context::{Context, Error},
    events::{publish, EventType},
};

/// The condition that says whether the store's PodMonitor is in place; a
/// store without `spec.monitoring.enabled` has none.
pub const MONITORING_READY: &str = "MonitoringReady";

/// The part of `monitoring.coreos.com/v1` PodMonitor the operator writes.
/// Fields it does not set are left out, so under server-side apply they
/// stay whoever else's they are.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "PodMonitor",
    namespaced,
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
    /// Pod labels copied onto every series scraped from the pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_target_labels: Vec<String>,
}

/// One scraped port of the selected pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodMetricsEndpoint {
    pub port: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// The PodMonitor of `store`, named like it: every pod of the store (the
/// data plane's and the analytics consumer's, both serve `/metrics` on
/// their `http` port). None unless `spec.monitoring.enabled`.
pub fn pod_monitor(store: &SyncStore) -> Option<PodMonitor> {
    let m = store.spec.monitoring.as_ref().filter(|m| m.enabled)?;
    let mut meta_labels = m.labels.clone();
    let mut own = labels(store, "monitoring");
    meta_labels.append(&mut own);
    let selector = [
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
    ]
    .into_iter()
    .map(|k| (k.to_string(), meta_labels[k].clone()))
    .collect();
    Some(PodMonitor {
        metadata: ObjectMeta {
            name: Some(store.name_any()),
            namespace: store.namespace(),
            labels: Some(meta_labels),
            owner_references: store.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: PodMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            pod_metrics_endpoints: vec![PodMetricsEndpoint {
                port: "http".into(),
                path: "/metrics".into(),
                interval: m.interval.clone(),
            }],
            pod_target_labels: vec!["app.kubernetes.io/component".into()],
        },
    })
}

/// What the API said to applying or deleting PodMonitors, as the
/// condition's reason and a sentence.
fn unavailable(e: &Error) -> (&'static str, String) {
    match e {
        Error::Kube(kube::Error::Api(s)) if s.code == 404 => (
            "PodMonitorCRDMissing",
            "the PodMonitor CRD (monitoring.coreos.com/v1) is not installed in this cluster: install the Prometheus Operator's CRDs, or set spec.monitoring.enabled to false; the store runs unmonitored meanwhile".into(),
        ),
        Error::Kube(kube::Error::Api(s)) if s.code == 403 => (
            "PodMonitorForbidden",
            format!("the operator may not write PodMonitors ({}): grant it podmonitors in monitoring.coreos.com (the chart's RBAC does); the store runs unmonitored meanwhile", s.message),
        ),
        other => (
            "PodMonitorNotApplied",
            format!("the PodMonitor was not applied: {other}; retried at the next reconcile, and the store runs meanwhile"),
        ),
    }
}

/// Applies or deletes the store's PodMonitor. Returns the `MonitoringReady`
/// verdict, or None when monitoring is off (the condition is then removed).
/// Never fails: a missing CRD, missing rights or any other refusal become
/// the verdict, plus a Warning event when the condition turns False.
pub async fn reconcile(ctx: &Context, store: &SyncStore) -> Option<Verdict> {
    let Some(wanted) = pod_monitor(store) else {
        // Only a store that had monitoring on can have a PodMonitor to
        // delete; the others make no request (and need no CRD).
        if had_condition(store) {
            let ns = store.namespace().unwrap_or_default();
            if let Err(e) =
                delete_orphans::<PodMonitor>(&ctx.client, &ns, &store.name_any(), &[]).await
            {
                tracing::debug!(error = %e, "no PodMonitor deleted");
            }
        }
        return None;
    };
    match apply(&ctx.client, &wanted).await {
        Ok(_) => Some(Verdict::ok(
            MONITORING_READY,
            "PodMonitorApplied",
            format!(
                "PodMonitor {} scrapes /metrics of the store's pods on port http.",
                wanted.name_any()
            ),
        )),
        Err(e) => {
            let (reason, message) = unavailable(&e);
            let verdict = Verdict::fail(MONITORING_READY, reason, message);
            if !already(store, &verdict) {
                publish(
                    ctx,
                    store,
                    EventType::Warning,
                    "MonitoringUnavailable",
                    &format!("No PodMonitor: {}.", verdict.message),
                    "Reconcile",
                )
                .await;
            }
            Some(verdict)
        }
    }
}

fn current(
    store: &SyncStore,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    store
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == MONITORING_READY)
}

fn had_condition(store: &SyncStore) -> bool {
    current(store).is_some()
}

/// Whether the store's status already shows `verdict`'s status and reason.
fn already(store: &SyncStore, verdict: &Verdict) -> bool {
    let status = match verdict.status {
        Status::True => "True",
        Status::False => "False",
        Status::Unknown => "Unknown",
    };
    current(store).is_some_and(|c| c.status == status && c.reason == verdict.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncstore_crds::MonitoringSpec;

    fn store(monitoring: Option<MonitoringSpec>) -> SyncStore {
        let mut s: SyncStore = serde_json::from_value(serde_json::json!({
            "apiVersion": "syncstore.dev/v1alpha1",
            "kind": "SyncStore",
            "metadata": {"name": "chat", "namespace": "team-a", "uid": "u-1"},
            "spec": {"database": {"engine": "postgres", "adminSecretRef": {"name": "pg"}}},
        }))
        .expect("a store");
        s.spec.monitoring = monitoring;
        s
    }

    #[test]
    fn no_pod_monitor_unless_enabled() {
        assert!(pod_monitor(&store(None)).is_none());
        assert!(pod_monitor(&store(Some(MonitoringSpec::default()))).is_none());
    }

    #[test]
    fn the_pod_monitor_selects_every_pod_of_the_store_on_its_http_port() {
        let m = pod_monitor(&store(Some(MonitoringSpec {
            enabled: true,
            interval: Some("15s".into()),
            labels: [
                ("release".to_string(), "prometheus".to_string()),
                ("app.kubernetes.io/instance".into(), "not-ours".into()),
            ]
            .into(),
        })))
        .expect("a PodMonitor");
        let json = serde_json::to_value(&m).expect("serialises");
        assert_eq!(json["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(json["kind"], "PodMonitor");
        assert_eq!(json["metadata"]["name"], "chat");
        assert_eq!(json["metadata"]["labels"]["release"], "prometheus");
        assert_eq!(
            json["metadata"]["labels"]["app.kubernetes.io/instance"], "chat",
            "the operator's labels win"
        );
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "SyncStore");
        assert_eq!(
            json["spec"]["selector"]["matchLabels"],
            serde_json::json!({
                "app.kubernetes.io/name": "syncstore",
                "app.kubernetes.io/instance": "chat",
                "app.kubernetes.io/managed-by": "syncstore-operator",
            }),
            "no component: the analytics consumer is scraped too"
        );
        assert_eq!(
            json["spec"]["podMetricsEndpoints"],
            serde_json::json!([{"port": "http", "path": "/metrics", "interval": "15s"}])
        );
    }

    #[test]
    fn a_missing_crd_and_missing_rights_say_what_to_do() {
        let api = |code: u16| {
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "podmonitors.monitoring.coreos.com is forbidden".into(),
                ..Default::default()
            })))
        };
        let (reason, message) = unavailable(&api(404));
        assert_eq!(reason, "PodMonitorCRDMissing");
        assert!(message.contains("spec.monitoring.enabled"), "{message}");
        let (reason, message) = unavailable(&api(403));
        assert_eq!(reason, "PodMonitorForbidden");
        assert!(message.contains("is forbidden"), "{message}");
    }
}
