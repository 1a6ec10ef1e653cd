//! Kubernetes Events on notable actions and failures, and the mapping of
//! finalizer errors to ours.

use kube::{
    runtime::{
        events::{Event, EventType},
        finalizer,
    },
    Resource,
};

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
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &obj.object_ref(&())).await {
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
/// the metric, a log line and a Warning event. Returns the count.
pub async fn failed<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    kind: &'static str,
    obj: &K,
    err: &Error,
) -> u32 {
    let failures = ctx.failed(obj.meta().uid.as_deref().unwrap_or_default());
    ctx.metrics.failed(kind, err.reason());
    tracing::warn!(
        kind,
        name = obj.meta().name.as_deref().unwrap_or_default(),
        namespace = obj.meta().namespace.as_deref().unwrap_or_default(),
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
