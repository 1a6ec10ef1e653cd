//! Prometheus metrics, held in one registry owned by the app state (no
//! global registry, so tests can run several servers in one process).

use prometheus::{
    core::Collector, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets from 0.5 ms to 5 s.
const LATENCY_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every series of one process. The names follow Prometheus' conventions:
/// the `syncstore_` prefix, base units (`_seconds`), `_total` on counters,
/// and labels whose values come from a fixed set (routes, event names,
/// codes, outcomes, partitions), never a user, a key or an id. A label of a
/// fixed set is initialised to 0 for each of its values, so a rate over it
/// exists before the first event and a dashboard shows 0, not "no data".
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub items_written: IntCounter,
    pub items_removed: IntCounter,
    pub db_pool_size: IntGauge,
    pub db_pool_idle: IntGauge,
    /// The pool's `DB_CONNECTION_LIMIT`.
    pub db_pool_max: IntGauge,
    /// How long a transaction waited for a pooled connection (and its
    /// `BEGIN`).
    pub db_pool_acquire: Histogram,
    /// Writers waiting for SQLite's one write turn (0 on the servers).
    pub sqlite_writer_queue: IntGauge,
    pub sockets_connected: IntGauge,
    pub socket_events: IntCounterVec,
    pub socket_errors: IntCounterVec,
    pub socket_refusals: IntCounterVec,
    /// Changes emitted to devices, by path: `live` (fan-out), `catchup`
    /// (re-read from the database after a gap, an overflow or a Redis
    /// reconnect) or `pending` (the `pending-updates` of a connect).
    pub deliveries: IntCounterVec,
    /// From a change's publication to its live emission to a device.
    pub delivery_latency: Histogram,
    pub fanout_publish_seconds: Histogram,
    pub fanout_dropped: IntCounter,
    /// Failed Redis operations of the fan-out, by operation: `publish` (one
    /// try; retried), `subscribe` (a SUBSCRIBE or UNSUBSCRIBE) or `connect`
    /// (the subscriber's connection).
    pub fanout_errors: IntCounterVec,
    /// Whether the fan-out's Redis subscriber is connected (1) or not (0);
    /// absent without Redis (a vector without labels, whose one series
    /// appears when [`Metrics::redis_connected`] is first called).
    redis_connected: IntGaugeVec,
    pub redis_reconnects: IntCounter,
    pub catchups: IntCounterVec,
    pub conflations: IntCounter,
    pub conflicts: IntCounterVec,
    /// Retried writes answered with their first reply instead of applied
    /// again, by how they were recognised: `operation_id` or `identical`.
    pub write_replays: IntCounterVec,
    /// Every rate-limit check, by outcome: `allowed`, `rate_limited`,
    /// `quota_exceeded` or `unchecked` (Redis did not answer; allowed).
    pub rate_limit_decisions: IntCounterVec,
    pub rate_limit_errors: IntCounterVec,
    /// Entries waiting for the audit writer.
    pub audit_queue: IntGauge,
    pub audit_dropped: IntCounter,
    /// Analytics events by outcome: `queued`, `produced`, `dropped` (buffer
    /// full), `failed` (Kafka did not take them in time), `aggregated`.
    pub analytics_events: IntCounterVec,
    /// Events of each assigned partition the `syncstore analytics`
    /// consumer has not aggregated yet.
    pub analytics_lag: IntGaugeVec,
    /// API key lookups, by cache (`hash`: presented keys, `id`: the issuing
    /// key of a user token) and result (`hit`, `miss`).
    pub key_cache: IntCounterVec,
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
    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> Made<IntGaugeVec> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
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
        let build = r.gauges(
            "build_info",
            "Always 1; the version of this binary in its label",
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let m = Self {
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
            db_pool_max: r.gauge(
                "db_pool_max_connections",
                "Most connections the pool may open (DB_CONNECTION_LIMIT)",
            )?,
            db_pool_acquire: r.latency(
                "db_pool_acquire_duration_seconds",
                "Wait for a pooled database connection (for a transaction: and its BEGIN)",
            )?,
            sqlite_writer_queue: r.gauge(
                "sqlite_writer_queue_depth",
                "Writers waiting for SQLite's one write turn (0 on PostgreSQL and MariaDB)",
            )?,
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
            deliveries: r.counters(
                "deliveries_total",
                "Changes emitted to devices, by path: live, catchup or pending",
                &["path"],
            )?,
            delivery_latency: r.latency(
                "delivery_latency_seconds",
                "From a change's publication to its live emission to a device",
            )?,
            fanout_publish_seconds: r.latency(
                "fanout_publish_duration_seconds",
                "Time to PUBLISH one envelope to Redis, retries included",
            )?,
            fanout_dropped: r.counter(
                "fanout_dropped_total",
                "Envelopes not published (queue full or Redis down)",
            )?,
            fanout_errors: r.counters(
                "fanout_errors_total",
                "Failed Redis operations of the fan-out, by operation: publish, subscribe or connect",
                &["operation"],
            )?,
            redis_connected: r.gauges(
                "redis_connected",
                "Whether the fan-out's Redis subscriber is connected (1) or not (0)",
                &[],
            )?,
            redis_reconnects: r
                .counter("redis_reconnects_total", "Redis subscriber reconnections")?,
            catchups: r.counters(
                "catchups_total",
                "Device catch-ups (gap repairs) from the database, by reason",
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
            rate_limit_decisions: r.counters(
                "rate_limit_decisions_total",
                "Rate-limit checks by outcome: allowed, rate_limited, quota_exceeded or unchecked",
                &["outcome"],
            )?,
            rate_limit_errors: r.counters(
                "rate_limit_errors_total",
                "Limit checks Redis did not answer (allowed), by reason: timeout or unreachable",
                &["reason"],
            )?,
            audit_queue: r.gauge(
                "audit_queue_depth",
                "Audit entries waiting for the writer",
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
            analytics_lag: r.gauges(
                "analytics_consumer_lag",
                "Events of an assigned partition not aggregated yet, by partition",
                &["partition"],
            )?,
            key_cache: r.counters(
                "key_cache_lookups_total",
                "API key lookups by cache (hash, id) and result (hit, miss)",
                &["cache", "result"],
            )?,
            auth_denials: r.counters(
                "auth_denials_total",
                "Refused credentials and restrictions, by code",
                &["code"],
            )?,
            registry: r.0,
        };
        m.initialise();
        Ok(m)
    }

    /// Sets the pool gauges from [`crate::storage::Db::pool_stats`]'s open,
    /// idle and most connections (read when scraped).
    pub fn pool(&self, (size, idle, max): (u32, usize, u32)) {
        self.db_pool_size.set(i64::from(size));
        self.db_pool_idle
            .set(i64::try_from(idle).unwrap_or(i64::MAX));
        self.db_pool_max.set(i64::from(max));
    }

    /// Says whether the fan-out's Redis subscriber is connected.
    pub fn redis_connected(&self, connected: bool) {
        self.redis_connected
            .with_label_values(&[] as &[&str])
            .set(i64::from(connected));
    }

    /// What [`Self::redis_connected`] last reported.
    pub fn redis_is_connected(&self) -> bool {
        self.redis_connected.with_label_values(&[] as &[&str]).get() == 1
    }

    /// Sets every series of a label with a fixed set of values to 0.
    fn initialise(&self) {
        let zero = |vec: &IntCounterVec, sets: &[&[&str]]| {
            for labels in sets {
                vec.with_label_values(labels);
            }
        };
        zero(&self.deliveries, &[&["live"], &["catchup"], &["pending"]]);
        zero(
            &self.fanout_errors,
            &[&["publish"], &["subscribe"], &["connect"]],
        );
        zero(
            &self.catchups,
            &[&["gap"], &["overflow"], &["resync"], &["stalled"]],
        );
        zero(
            &self.rate_limit_decisions,
            &[
                &["allowed"],
                &["rate_limited"],
                &["quota_exceeded"],
                &["unchecked"],
            ],
        );
        zero(&self.rate_limit_errors, &[&["timeout"], &["unreachable"]]);
        zero(
            &self.analytics_events,
            &[
                &["queued"],
                &["produced"],
                &["dropped"],
                &["failed"],
                &["aggregated"],
            ],
        );
        zero(
            &self.key_cache,
            &[
                &["hash", "hit"],
                &["hash", "miss"],
                &["id", "hit"],
                &["id", "miss"],
            ],
        );
        zero(&self.write_replays, &[&["operation_id"], &["identical"]]);
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
