//! The traces of reconciles: one trace per reconcile of one object, its
//! root span named by the kind, with the provisioning, apply and status
//! steps as children. Spans use the data plane's trace-only target
//! ([`syncstore::telemetry::TARGET`]), so without an exporter they cost a
//! disabled callsite each.

use std::{future::Future, sync::Arc};

use kube::{runtime::controller::Action, Resource, ResourceExt};
use syncstore::telemetry::{context::fail, TARGET};
use tracing::Instrument;

use crate::context::{Context, Error, Result};

/// Runs `reconcile` for `object` as the root of a trace of its own (not a
/// child of whatever kube-runtime's controller has open), marked with the
/// failure's reason when it fails.
pub async fn reconcile<K, F, Fut>(
    kind: &'static str,
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action>
where
    K: Resource,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    let span = tracing::info_span!(
        target: TARGET,
        parent: None,
        "operator.reconcile",
        otel.name = %format!("reconcile {kind}"),
        k8s.namespace.name = object.namespace().unwrap_or_default(),
        syncstore.resource.kind = kind,
        syncstore.resource.name = object.name_any(),
        syncstore.resource.generation = object.meta().generation.unwrap_or_default(),
    );
    let result = reconcile(object, ctx).instrument(span.clone()).await;
    if let Err(e) = &result {
        failed(&span, e);
    }
    result
}

/// Runs one step of a reconcile (provisioning the database, applying the
/// children, revoking a key) as a child span named `name`.
pub async fn step<T>(name: &'static str, work: impl Future<Output = Result<T>>) -> Result<T> {
    let span = tracing::info_span!(target: TARGET, "operator.step", otel.name = name);
    let result = work.instrument(span.clone()).await;
    if let Err(e) = &result {
        failed(&span, e);
    }
    result
}

/// A failed span carries the error's reason (the same word status and
/// events show), never its message, which may quote a server or a URL.
fn failed(span: &tracing::Span, e: &Error) {
    fail(span, e.reason());
}
