//! `spec.monitoring`: the store's PodMonitor, against a real kube-apiserver
//! with and without the Prometheus Operator's real PodMonitor CRD (from its
//! Go module, `scripts/prometheus-operator-crds.sh`), the operator running
//! under the chart's RBAC.
//!
//! One test, in order: the CRD is removed, then installed. It is the only
//! test that touches that CRD, so nothing else in the suite depends on
//! whether the cluster has it.

mod common;

use common::{condition, postgres_admin, Cluster};

const CRD: &str = "podmonitors.monitoring.coreos.com";

fn crd_file() -> String {
    let dir = std::env::var("TEST_PROMETHEUS_OPERATOR_CRDS").unwrap_or_else(|_| {
        panic!("TEST_PROMETHEUS_OPERATOR_CRDS is not set: run `scripts/prometheus-operator-crds.sh` (the test command does) and export its output")
    });
    format!("{dir}/monitoring.coreos.com_podmonitors.yaml")
}

/// The chart's RBAC for `release`, rendered by helm.
fn chart_rbac(release: &str, ns: &str) -> String {
    let helm = std::env::var("TEST_HELM")
        .unwrap_or_else(|_| panic!("TEST_HELM is not set: scripts/helm-bin.sh builds helm"));
    let out = std::process::Command::new(helm)
        .args(["template", release])
        .arg(common::repo().join("charts/syncstore-operator"))
        .args(["-n", ns])
        .args(["--show-only", "templates/rbac.yaml"])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn monitoring_condition(c: &Cluster) -> Option<(String, String, String)> {
    let store = c.get("syncstore", "chat")?;
    let cond = condition(&store, "MonitoringReady")?;
    let s = |k: &str| cond[k].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

fn warnings(c: &Cluster) -> Vec<(String, String)> {
    c.events_of("chat")
        .into_iter()
        .filter(|(kind, _, _)| kind == "Warning")
        .map(|(_, reason, message)| (reason, message))
        .collect()
}

fn patch_monitoring(c: &Cluster, monitoring: &str) {
    c.kubectl(&[
        "patch",
        "syncstore",
        "chat",
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"monitoring":{monitoring}}}}}"#),
    ]);
}

#[test]
fn a_store_runs_without_the_pod_monitor_crd_and_gets_its_pod_monitor_once_installed() {
    let crd = crd_file();
    let mut c = Cluster::new("mon");
    let _ = c.try_kubectl(&[
        "delete",
        "crd",
        CRD,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=60s",
    ]);
    c.secret("pg-admin", &[("url", &postgres_admin())]);
    c.secret("redis", &[("url", "redis://127.0.0.1:6379")]);
    let release = format!("r-{}", c.ns);
    let rbac = std::env::temp_dir().join(format!("rbac-{}.yaml", c.ns));
    std::fs::write(&rbac, chart_rbac(&release, &c.ns)).expect("write");
    c.kubectl(&["apply", "-f", &rbac.to_string_lossy()]);
    let sa = format!("{release}-syncstore-operator");
    let config = c.service_account_kubeconfig(&sa);
    c.start_operator_as("mon", &config);

    // No CRD: the store serves all the same, and says why it has no
    // PodMonitor, once.
    c.apply_example("syncstore-postgres.yaml");
    patch_monitoring(&c, r#"{"enabled":true,"labels":{"release":"prometheus"}}"#);
    c.wait_condition("syncstore/chat", "Ready", 90);
    let (status, reason, message) = c.eventually("MonitoringReady=False", 30, || {
        monitoring_condition(&c).filter(|(s, _, _)| s == "False")
    });
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "PodMonitorCRDMissing")
    );
    assert!(message.contains("spec.monitoring.enabled"), "{message}");
    let told = c.eventually("a MonitoringUnavailable event", 30, || {
        let w: Vec<_> = warnings(&c)
            .into_iter()
            .filter(|(r, _)| r == "MonitoringUnavailable")
            .collect();
        (!w.is_empty()).then_some(w)
    });
    assert!(told[0].1.contains("PodMonitor CRD"), "{told:?}");
    let store = c.must_get("syncstore", "chat");
    assert_eq!(store["status"]["phase"], "Running", "{store}");

    // With the CRD, the next reconcile (here: a spec change) makes it.
    c.kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &crd]);
    c.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        &format!("crd/{CRD}"),
    ]);
    patch_monitoring(&c, r#"{"interval":"15s"}"#);
    // (Another reconcile, of the Deployments' status, may make it first.)
    let pm = c.eventually("PodMonitor chat at 15s", 30, || {
        c.get(CRD, "chat")
            .filter(|pm| pm["spec"]["podMetricsEndpoints"][0]["interval"] == "15s")
    });
    assert_eq!(pm["metadata"]["labels"]["release"], "prometheus", "{pm}");
    assert_eq!(
        pm["metadata"]["ownerReferences"][0]["kind"], "SyncStore",
        "{pm}"
    );
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "chat"
    );
    assert_eq!(
        pm["spec"]["podMetricsEndpoints"],
        serde_json::json!([{"port": "http", "path": "/metrics", "interval": "15s"}])
    );
    // The pods it selects have the port it names, the analytics consumer too.
    for deployment in ["chat", "chat-analytics"] {
        let d = c.must_get("deployment", deployment);
        let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
        for (k, v) in pm["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels")
        {
            assert_eq!(&pod_labels[k], v, "{deployment} pods carry {k}");
        }
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"], "http",
            "{deployment}"
        );
    }
    c.eventually("MonitoringReady=True", 30, || {
        monitoring_condition(&c).filter(|(s, r, _)| s == "True" && r == "PodMonitorApplied")
    });

    // Off again: the PodMonitor and the condition go.
    patch_monitoring(&c, r#"{"enabled":false}"#);
    c.eventually("the PodMonitor deleted", 30, || {
        c.get(CRD, "chat").is_none().then_some(())
    });
    c.eventually("MonitoringReady removed", 30, || {
        monitoring_condition(&c).is_none().then_some(())
    });
    c.wait_condition("syncstore/chat", "Ready", 30);
    let logs = c.operator_logs();
    assert!(
        !logs.contains("forbidden"),
        "the chart's RBAC lacks a permission:\n{}",
        common::tail(&logs, 20)
    );
    let _ = c.try_kubectl(&["delete", "clusterrole,clusterrolebinding", &sa]);
    for role in ["view", "edit"] {
        let _ = c.try_kubectl(&["delete", "clusterrole", &format!("{sa}-{role}")]);
    }
}
