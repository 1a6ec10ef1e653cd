//! Logging setup: tracing to stdout, as JSON or text.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber, writing to stderr so that a command's
/// stdout (a created key, a migration count) stays machine-readable.
/// A plain level such as `info` keeps sqlx's per-query and NOTICE chatter at
/// `warn`; a full directive (`info,sqlx=debug`) is taken as given.
pub fn init(cfg: &LogConfig) {
    let directive = if cfg.filter.contains('=') {
        cfg.filter.clone()
    } else {
        format!("{},sqlx=warn", cfg.filter)
    };
    let filter = EnvFilter::try_new(directive).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
