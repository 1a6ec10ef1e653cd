//! Kubernetes Events on notable actions and failures, and the mapping of
//! finalizer errors to ours.
//!
//! Events are recorded by our own [`Recorder`] rather than kube-rs's: that
//! one groups repeats into a series keyed by type, reason and action but
//! not by the message, so `kubectl describe` went on showing the first
//! message of a series (`password authentication failed (x5)`) while the
//! status already said `Connection refused`. Here each distinct message is
//! an event of its own, and only exact repeats grow a series.

use kube::{runtime::finalizer, Resource};

pub use kube::runtime::events::EventType;

use crate::context::{Context, Error};

/// Publishes an event about `obj`. A failure to publish is logged, never
/// fatal: events are for humans, not for correctness.
pub async fn publish<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: &str,
    action: &str,
) {
    let mut regarding = obj.object_ref(&());
    // The version changes with every status write; it would only make the
    // reference differ between repeats of one event.
    regarding.resource_version = None;
    if let Err(e) = ctx
        .recorder
        .publish(type_, reason, note, action, &regarding)
        .await
    {
        tracing::debug!(error = %e, reason, "event not published");
    }
}

pub fn unwrap_finalizer(e: finalizer::Error<Error>) -> Error {
    match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::Finalizer(other.to_string()),
    }
}

/// Books a failed reconcile of `obj`: the failure count behind its backoff,
/// the metrics, a log line and a Warning event. Returns the count.
pub async fn failed<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    kind: &'static str,
    obj: &K,
    err: &Error,
) -> u32 {
    let failures = ctx.failed(obj.meta().uid.as_deref().unwrap_or_default());
    let namespace = obj.meta().namespace.as_deref().unwrap_or_default();
    let name = obj.meta().name.as_deref().unwrap_or_default();
    ctx.metrics.failed(kind, err.reason());
    ctx.metrics.object_failed(kind, crate::metrics::Id::of(obj));
    tracing::warn!(
        kind,
        name,
        namespace,
        reason = err.reason(),
        error = %err,
        failures,
        "reconcile failed"
    );
    publish(
        ctx,
        obj,
        EventType::Warning,
        err.reason(),
        &err.to_string(),
        "Reconcile",
    )
    .await;
    failures
}
