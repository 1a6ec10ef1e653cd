//! Logging setup: tracing to stderr, as JSON or text, with credentials
//! masked on the way out.

pub mod redact;

use std::{
    io::{self, IsTerminal},
    sync::Arc,
};

use tracing::{Level, Metadata};
use tracing_subscriber::{
    filter::filter_fn, fmt, fmt::MakeWriter, layer::SubscriberExt, util::SubscriberInitExt,
    EnvFilter,
};

pub use redact::Redactor;

use crate::config::{LogConfig, LogFormat};

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

/// Installs the global subscriber, writing to stderr so that a command's
/// stdout (a created key, a migration count) stays machine-readable.
/// A plain level such as `info` keeps sqlx's per-query and NOTICE chatter at
/// `warn`; a full directive (`info,sqlx=debug`) is taken as given. Every
/// line passes through `redactor`.
pub fn init(cfg: &LogConfig, redactor: Redactor) {
    let directive = if cfg.filter.contains('=') {
        cfg.filter.clone()
    } else {
        format!("{},sqlx=warn", cfg.filter)
    };
    let filter = EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file or a pipe (a log
    // collector) gets plain text.
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(io::stderr().is_terminal())
        .with_writer(Redacting::new(io::stderr, redactor));
    let cap = filter_fn(allowed);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .finish()
            .with(cap)
            .try_init(),
        LogFormat::Text => builder.finish().with(cap).try_init(),
    };
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
