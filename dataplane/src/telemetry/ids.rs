//! `trace_id` and `span_id` on JSON log lines, so that a line found in the
//! logs leads to its trace and back.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
};

/// Wraps a JSON event formatter: when the event happens inside a traced
/// span, the line starts with `"trace_id"` and `"span_id"` (of the
/// innermost span, trace-only spans included, which the line's own `span`
/// object leaves out); otherwise it is the inner formatter's line as is.
/// Without an OpenTelemetry layer no span has a trace context, and the
/// wrapper costs a walk up the event's spans.
#[derive(Debug, Clone)]
pub struct WithTraceIds<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // The JSON formatters write one object per line.
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

/// The trace and span id of the innermost traced span around the event.
fn current_ids() -> Option<(String, String)> {
    let cx = super::context::traced_context(&tracing::Span::current())?;
    let span = cx.span();
    let sc = span.span_context();
    Some((sc.trace_id().to_string(), sc.span_id().to_string()))
}
