//! The operator's traces in a real collector (Jaeger v2, built by
//! `scripts/jaeger-bin.sh`, path in `TEST_JAEGER_BIN`): the reconcile of
//! one SyncStore is one trace, its root named by the kind, with the
//! database provisioning, the apply of the children and the status writes
//! as its children, against the real apiserver and PostgreSQL.

mod common;
#[path = "../../dataplane/tests/common/jaeger.rs"]
mod jaeger;

use std::time::{Duration, Instant};

use common::{kubeconfig, postgres_admin, Cluster};
use jaeger::{spans_of, tag, tree, Jaeger, Span};

#[tokio::test]
async fn a_stores_reconcile_is_one_trace_with_its_steps() {
    let jaeger = Jaeger::start().await;
    let mut c = Cluster::new("traces");
    c.secret("pg-admin", &[("url", &postgres_admin())]);
    let endpoint = format!("http://127.0.0.1:{}", jaeger.otlp_http);
    c.start_operator_with(
        "op-traces",
        &kubeconfig(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let yaml = "apiVersion: syncstore.dev/v1alpha1\nkind: SyncStore\nmetadata: {name: traced}\nspec:\n  image: ghcr.io/syncstore/syncstore:0.1.0\n  database: {engine: postgres, adminSecretRef: {name: pg-admin, key: url}}\n";
    let path = std::env::temp_dir().join(format!("{}-traced.yaml", c.ns));
    std::fs::write(&path, yaml).expect("write");
    c.kubectl(&["apply", "-f", &path.to_string_lossy()]);
    c.wait_condition("syncstore/traced", "DatabaseReady", 120);

    // The first reconcile that provisioned the store, as Jaeger has it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (root, spans) = loop {
        let found = jaeger
            .traces_of("syncstore-operator")
            .await
            .iter()
            .map(spans_of)
            .find_map(|spans| {
                let root = spans.iter().find(|s| {
                    s.name == "reconcile SyncStore"
                        && tag(s, "syncstore.resource.name") == "traced"
                        && tag(s, "k8s.namespace.name") == c.ns.as_str()
                })?;
                let provisioned = spans.iter().any(|s| s.name == "provision database");
                provisioned.then(|| (root.clone(), spans.clone()))
            });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no reconcile trace of SyncStore traced; operator log:\n{}",
            c.log_of(0)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("the trace of one reconcile:\n{}", tree(&spans));
    // A root of its own, not inside kube-runtime's or a previous trace.
    assert_eq!(root.parent, None, "{root:#?}");
    assert_eq!(root.service, "syncstore-operator");
    assert_eq!(root.instance, "op-traces");
    let children = |name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|s| s.name == name && s.parent.as_ref() == Some(&root.id))
            .collect()
    };
    for step in ["provision database", "apply children", "write status"] {
        assert!(
            !children(step).is_empty(),
            "no {step:?} under the reconcile; the trace has {:?}",
            spans
                .iter()
                .map(|s| (&s.name, &s.parent))
                .collect::<Vec<_>>()
        );
    }
    // Nothing else: every span of the trace is the root or a step of it.
    assert!(
        spans
            .iter()
            .all(|s| s.id == root.id || s.parent.as_ref() == Some(&root.id)),
        "{spans:#?}"
    );
    // No credential: the admin URL (with its password) never reaches a span.
    let text =
        serde_json::to_string(&spans.iter().map(|s| &s.tags).collect::<Vec<_>>()).expect("json");
    assert!(!text.contains(&postgres_admin()), "{text}");
    assert!(!text.contains("postgres://"), "{text}");
}
