//! W3C trace context across the hops a write takes: the REST request and
//! the Socket.IO handshake bring one in, the Redis fan-out envelope and the
//! Kafka analytics record carry one on, and the pod or consumer at the
//! other end continues the trace from it.
//!
//! Spans that exist only for traces are created with [`TARGET`]: the log
//! formatter ignores that target, and without an exporter no layer wants
//! it, so each such span is a disabled callsite (one relaxed load) and
//! every helper here returns at once. A [`TraceContext`] is only ever made
//! from a live span, so with tracing off none is carried anywhere.

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, TraceContextExt},
    Key, Value,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::{Deserialize, Serialize};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{registry::LookupSpan, Registry};

/// The `tracing` target of spans that exist for traces only.
pub const TARGET: &str = "syncstore_trace";

/// The W3C `traceparent` and `tracestate` of one span, as they travel in
/// HTTP headers, the Socket.IO handshake's `auth`, a fan-out envelope and
/// Kafka record headers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracestate: String,
}

impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" => self.tracestate = value,
            _ => {}
        }
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent.as_str()),
            "tracestate" if !self.tracestate.is_empty() => Some(self.tracestate.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

impl TraceContext {
    /// From two header-like values: `traceparent` and an optional
    /// `tracestate`. `None` unless the `traceparent` is well formed (W3C
    /// version 00 parsing, as the propagator does it).
    pub fn from_parts(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let carried = Self {
            traceparent: traceparent?.trim().to_owned(),
            tracestate: tracestate.unwrap_or_default().trim().to_owned(),
        };
        carried.span_context().is_valid().then_some(carried)
    }

    /// The `traceparent`/`tracestate` headers of a request (REST, or the
    /// Socket.IO handshake's HTTP request).
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Self::from_parts(text("traceparent"), text("tracestate"))
    }

    /// The context of `span`, or of the nearest traced span around it (a
    /// log-only span, such as REST's `request`, sits inside the server
    /// span); `None` when there is none. Starts the span on the
    /// OpenTelemetry side, so its parent must be set before.
    pub fn of(span: &Span) -> Option<Self> {
        let cx = traced_context(span)?;
        let mut carried = Self::default();
        TraceContextPropagator::new().inject_context(&cx, &mut carried);
        Some(carried)
    }

    /// The context of the current span, if it is traced.
    pub fn current() -> Option<Self> {
        Self::of(&Span::current())
    }

    fn span_context(&self) -> SpanContext {
        TraceContextPropagator::new()
            .extract(self)
            .span()
            .span_context()
            .clone()
    }

    /// Whether the trace was sampled where it started: only then is it
    /// worth continuing with spans of our own (a trace that was not
    /// sampled stays unsampled under the parent-based samplers).
    pub fn is_sampled(&self) -> bool {
        self.span_context().is_sampled()
    }

    /// The trace id, as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        self.span_context().trace_id().to_string()
    }

    /// Makes `span` a child of this context. Call before the span is first
    /// entered.
    pub fn adopt(&self, span: &Span) {
        let parent = TraceContextPropagator::new().extract(self);
        // Fails only when the span is not traced, and then there is
        // nothing to adopt.
        let _ = span.set_parent(parent);
    }

    /// Links `span` to this context (a batch to the requests it folds in;
    /// a socket's event to the handshake it belongs to).
    pub fn link(&self, span: &Span) {
        span.add_link(self.span_context());
    }
}

/// The OpenTelemetry context of `span` or, if it has none, of its nearest
/// ancestor that has a valid one. Looked up in the registry, since the
/// spans the log formatter sees and those the trace layer sees differ.
pub(super) fn traced_context(span: &Span) -> Option<opentelemetry::Context> {
    let id = span.id()?;
    tracing::dispatcher::get_default(|dispatch| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let found = registry.span(&id)?.scope().find_map(|s| {
            tracing_opentelemetry::get_otel_context(&s.id(), dispatch)
                .filter(|cx| cx.span().span_context().is_valid())
        });
        found
    })
}

/// Sets an OpenTelemetry attribute on `span` without making it a `tracing`
/// field (which the log formatter would print).
pub fn set_attribute(span: &Span, key: impl Into<Key>, value: impl Into<Value>) {
    if !span.is_disabled() {
        span.set_attribute(key, value);
    }
}

/// Marks `span` as failed with a stable, low-cardinality `error.type` (an
/// error code, never a message: messages may quote input).
pub fn fail(span: &Span, error_type: &str) {
    if span.is_disabled() {
        return;
    }
    span.set_attribute("error.type", error_type.to_owned());
    span.set_status(opentelemetry::trace::Status::error(error_type.to_owned()));
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_wellformed_traceparent_is_taken_and_garbage_is_not() {
        let t = TraceContext::from_parts(Some(PARENT), Some("vendor=x")).expect("valid");
        assert!(t.is_sampled());
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.tracestate, "vendor=x");
        let unsampled = PARENT.replace("-01", "-00");
        assert!(!TraceContext::from_parts(Some(&unsampled), None)
            .expect("valid")
            .is_sampled());
        for bad in [
            "",
            "garbage",
            // All-zero ids are invalid by the W3C rules.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert_eq!(TraceContext::from_parts(Some(bad), None), None, "{bad}");
        }
        assert_eq!(TraceContext::from_parts(None, Some("vendor=x")), None);
    }

    #[test]
    fn headers_carry_it_and_the_envelope_form_leaves_out_an_empty_state() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", PARENT.parse().unwrap());
        let t = TraceContext::from_headers(&headers).expect("from headers");
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({ "traceparent": PARENT })
        );
    }

    #[test]
    fn without_a_tracing_layer_nothing_is_carried() {
        // No OpenTelemetry layer: spans have no trace context, so nothing
        // would be sent on, and the helpers do nothing.
        let span = tracing::info_span!(target: TARGET, "untraced");
        assert_eq!(TraceContext::of(&span), None);
        assert_eq!(TraceContext::current(), None);
        fail(&span, "X");
        set_attribute(&span, "k", "v");
    }
}
