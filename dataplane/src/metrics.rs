//! Prometheus metrics, held in one registry owned by the app state (no
//! global registry, so tests can run several servers in one process).

use prometheus::{
    core::Collector, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 5 s.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub items_written: IntCounter,
    pub items_removed: IntCounter,
    pub db_pool_size: IntGauge,
    pub db_pool_idle: IntGauge,
    pub sockets_connected: IntGauge,
    pub socket_events: IntCounterVec,
    pub socket_errors: IntCounterVec,
    pub socket_refusals: IntCounterVec,
    pub fanout_latency: Histogram,
    pub fanout_publish_seconds: Histogram,
    pub fanout_dropped: IntCounter,
    pub redis_reconnects: IntCounter,
    pub catchups: IntCounterVec,
    pub conflations: IntCounter,
    pub conflicts: IntCounterVec,
    /// Retried writes answered with their first reply instead of applied
    /// again, by how they were recognised: `operation_id` or `identical`.
    pub write_replays: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub rate_limit_errors: IntCounterVec,
    pub audit_dropped: IntCounter,
    /// Analytics events by outcome: `queued`, `produced`, `dropped` (buffer
    /// full), `failed` (Kafka did not take them in time), `aggregated`.
    pub analytics_events: IntCounterVec,
    pub auth_denials: IntCounterVec,
}

/// One open socket in the `sockets_connected` gauge: the gauge goes up
/// when this is made and down when it is dropped, so an increment and its
/// decrement are paired by construction (a disconnect handled before its
/// connect once took the gauge to -1).
#[must_use = "the gauge goes down again when this is dropped"]
pub struct GaugeHeld(IntGauge);

impl GaugeHeld {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeHeld {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Makes collectors and registers them in one registry, so that
/// [`Metrics::new`] reads as a table of name, help and labels.
struct Reg(Registry);

type Made<C> = Result<C, prometheus::Error>;

impl Reg {
    fn add<C: Collector + Clone + 'static>(&self, c: C) -> Made<C> {
        self.0.register(Box::new(c.clone()))?;
        Ok(c)
    }
    fn counter(&self, name: &str, help: &str) -> Made<IntCounter> {
        self.add(IntCounter::new(name, help)?)
    }
    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> Made<IntCounterVec> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }
    fn gauge(&self, name: &str, help: &str) -> Made<IntGauge> {
        self.add(IntGauge::new(name, help)?)
    }
    /// A latency histogram in seconds, on [`LATENCY_BUCKETS`].
    fn latency(&self, name: &str, help: &str) -> Made<Histogram> {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.add(Histogram::with_opts(opts)?)
    }
    fn latencies(&self, name: &str, help: &str, labels: &[&str]) -> Made<HistogramVec> {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.add(HistogramVec::new(opts, labels)?)
    }
}

impl Metrics {
    /// Every metric, registered under the `syncstore_` prefix.
    ///
    /// Long because it is one table, an entry per metric: split, it would
    /// only be harder to scan for a name.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Reg(Registry::new_custom(Some("syncstore".into()), None)?);
        Ok(Self {
            http_requests: r.counters(
                "http_requests_total",
                "HTTP requests by route, method and status",
                &["route", "method", "status"],
            )?,
            http_latency: r.latencies(
                "http_request_duration_seconds",
                "HTTP request latency by route and method",
                &["route", "method"],
            )?,
            items_written: r.counter("items_written_total", "Items created or updated")?,
            items_removed: r.counter("items_removed_total", "Items removed (tombstoned)")?,
            db_pool_size: r.gauge("db_pool_connections", "Open database connections")?,
            db_pool_idle: r.gauge("db_pool_idle_connections", "Idle database connections")?,
            sockets_connected: r.gauge("sockets_connected", "Connected /sync sockets")?,
            socket_events: r.counters(
                "socket_events_total",
                "Socket.IO events by name and direction (in/out)",
                &["event", "direction"],
            )?,
            socket_errors: r.counters(
                "socket_errors_total",
                "Socket event failures by event and code",
                &["event", "code"],
            )?,
            socket_refusals: r.counters(
                "socket_refusals_total",
                "Refused handshakes by code",
                &["code"],
            )?,
            fanout_latency: r.latency(
                "fanout_latency_seconds",
                "From a change's publication to its emission to a device",
            )?,
            fanout_publish_seconds: r.latency(
                "fanout_publish_seconds",
                "Time to PUBLISH one envelope to Redis",
            )?,
            fanout_dropped: r.counter(
                "fanout_dropped_total",
                "Envelopes not published (queue full or Redis down)",
            )?,
            redis_reconnects: r
                .counter("redis_reconnects_total", "Redis subscriber reconnections")?,
            catchups: r.counters(
                "catchups_total",
                "Device catch-ups from the database, by reason",
                &["reason"],
            )?,
            conflations: r.counter(
                "conflations_total",
                "Changes not sent one by one because a newer state of the key was sent instead",
            )?,
            conflicts: r.counters(
                "conflicts_total",
                "Concurrent writes by strategy and outcome",
                &["strategy", "outcome"],
            )?,
            write_replays: r.counters(
                "write_replays_total",
                "Retried writes answered with their first reply, by how they were recognised",
                &["kind"],
            )?,
            rate_limited: r.counters(
                "rate_limited_total",
                "Requests refused by a limit, by code",
                &["code"],
            )?,
            rate_limit_errors: r.counters(
                "rate_limit_errors_total",
                "Limit checks Redis did not answer (allowed), by reason: timeout or unreachable",
                &["reason"],
            )?,
            audit_dropped: r.counter(
                "audit_dropped_total",
                "Audit entries the database refused for good",
            )?,
            analytics_events: r.counters(
                "analytics_events_total",
                "Analytics events by outcome",
                &["outcome"],
            )?,
            auth_denials: r.counters(
                "auth_denials_total",
                "Refused credentials and restrictions, by code",
                &["code"],
            )?,
            registry: r.0,
        })
    }

    /// The registry in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
