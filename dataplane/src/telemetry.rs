//! Logging and traces: `tracing` to stderr, as JSON or text, with
//! credentials masked on the way out; and, when the `OTEL_*` variables ask
//! for it, OTLP trace export ([`traces`]) with W3C context carried across
//! pods and Kafka ([`context`]).
//!
//! An infrastructure module: its settings types are its own, and it knows
//! nothing of the edges.

pub mod context;
mod ids;
pub mod redact;
pub mod throttle;
pub mod traces;

use std::{
    io::{self, IsTerminal},
    sync::Arc,
};

use tracing::{Level, Metadata};
use tracing_subscriber::{
    filter::{filter_fn, FilterExt},
    fmt::{self, MakeWriter},
    layer::SubscriberExt,
    util::SubscriberInitExt,
    EnvFilter, Layer, Registry,
};

pub use context::{TraceContext, TARGET};
pub use ids::WithTraceIds;
pub use redact::Redactor;
pub use traces::{Exporting, PipelineError, TraceConfigError, TraceSettings};

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// What is logged and how (`LOG_LEVEL`, `LOG_FORMAT`).
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

/// Crates that dump raw transport frames at debug and trace: the Socket.IO
/// CONNECT frame, and with it the handshake's API key or token, among them
/// (tungstenite even as hex, which no redaction can recognise).
const TRANSPORT_TARGETS: [&str; 7] = [
    "socketioxide",
    "socketioxide_core",
    "socketioxide_parser_common",
    "engineioxide",
    "engineioxide_core",
    "tungstenite",
    "tokio_tungstenite",
];

/// Whether an event may be logged at all: the transport crates are capped
/// at `info` whatever `LOG_LEVEL` asks, since what they log below it is
/// the traffic itself. Our own `socket` module logs what a trace needs.
pub fn allowed(meta: &Metadata<'_>) -> bool {
    *meta.level() <= Level::INFO || !is_transport(meta.target())
}

fn is_transport(target: &str) -> bool {
    let krate = target.split("::").next().unwrap_or(target);
    TRANSPORT_TARGETS.contains(&krate)
}

/// Whether the log formatter wants a callsite: everything but the spans
/// that exist for traces only, which would otherwise replace the request's
/// span (and its `request_id`) on the lines logged inside them.
pub fn for_logs(meta: &Metadata<'_>) -> bool {
    meta.target() != TARGET
}

/// Installs the global subscriber, writing to stderr so that a command's
/// stdout (a created key, a migration count) stays machine-readable.
/// A plain level such as `info` keeps sqlx's per-query and NOTICE chatter at
/// `warn`; a full directive (`info,sqlx=debug`) is taken as given. Every
/// line passes through `redactor`. With `traces`, spans are exported too,
/// whatever `LOG_LEVEL` says, and JSON lines carry their trace and span ids;
/// the returned pipeline must be shut down before exit.
pub fn init(
    cfg: &LogConfig,
    redactor: Redactor,
    traces: Option<&TraceSettings>,
) -> Result<Option<Exporting>, PipelineError> {
    let directive = if cfg.filter.contains('=') {
        cfg.filter.clone()
    } else {
        format!("{},sqlx=warn", cfg.filter)
    };
    let filter = EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("info"));
    let filter = filter.and(filter_fn(for_logs));
    // Colours only for a person at a terminal: a file or a pipe (a log
    // collector) gets plain text.
    let logs = fmt::layer()
        .with_target(false)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(Redacting::new(io::stderr, redactor));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match cfg.format {
        LogFormat::Json => logs
            .json()
            .event_format(WithTraceIds(
                fmt::format()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(false),
            ))
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => logs.with_filter(filter).boxed(),
    };
    let (spans, exporting) = match traces {
        Some(settings) => {
            let (layer, exporting) = traces::pipeline(settings)?;
            (Some(layer), Some(exporting))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .with(filter_fn(allowed))
        .try_init();
    Ok(exporting)
}

/// A [`MakeWriter`] that masks credentials in each line before the inner
/// writer sees it. The formatter writes one event per writer; the line is
/// redacted whole when that writer is dropped, so a secret split across
/// several `write` calls is still recognised.
#[derive(Clone)]
pub struct Redacting<M> {
    inner: M,
    redactor: Arc<Redactor>,
}

impl<M> Redacting<M> {
    pub fn new(inner: M, redactor: Redactor) -> Self {
        Self {
            inner,
            redactor: Arc::new(redactor),
        }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingLine<'a, M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingLine {
            buf: Vec::new(),
            inner: self.inner.make_writer(),
            redactor: &self.redactor,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        RedactingLine {
            buf: Vec::new(),
            inner: self.inner.make_writer_for(meta),
            redactor: &self.redactor,
        }
    }
}

/// One event's output, held until it is complete.
pub struct RedactingLine<'a, W: io::Write> {
    buf: Vec<u8>,
    inner: W,
    redactor: &'a Redactor,
}

impl<W: io::Write> io::Write for RedactingLine<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: io::Write> Drop for RedactingLine<'_, W> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.buf);
        let line = self.redactor.redact(&text);
        // A log line that cannot be written has nowhere to be reported.
        let _ = self.inner.write_all(line.as_bytes());
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::fmt::fmt;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_are_redacted_and_transport_frames_capped() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = fmt()
            .with_max_level(Level::TRACE)
            .with_writer(Redacting::new(
                move || sink.clone(),
                Redactor::new("sk_live_", []),
            ))
            .finish()
            .with(filter_fn(allowed));
        tracing::subscriber::with_default(subscriber, || {
            let key = "sk_live_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";
            tracing::trace!(api_key = key, "our own line");
            tracing::info!(password = "hunter2-but-longer", "a coloured field");
            tracing::debug!(target: "socketioxide::client", "auth: {key}");
            tracing::trace!(target: "tungstenite::protocol", "frame 0x736b5f6c697665");
            tracing::info!(target: "engineioxide::engine", "engine started");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("our own line") && text.contains("***"),
            "{text}"
        );
        assert!(!text.contains("0123456789abcdef"), "{text}");
        assert!(!text.contains("hunter2-but-longer"), "{text}");
        assert!(
            !text.contains("auth:") && !text.contains("frame 0x"),
            "{text}"
        );
        assert!(text.contains("engine started"), "{text}");
    }
}
