//! Kafka transport: an idempotent producer keyed by user id (so one user's
//! events stay in order on one partition), and the consumer behind
//! `syncstore analytics`, which stores its offsets in the same transaction
//! as the aggregates.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use rdkafka::{
    config::ClientConfig,
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders},
    producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer},
    ClientContext, Offset, TopicPartitionList,
};

use tracing::Instrument;

use super::{aggregate, event::Event};
use crate::{
    metrics::Metrics,
    storage::Db,
    telemetry::{TraceContext, TARGET},
};

/// Counts what Kafka did with each event.
struct Outcomes(Arc<Metrics>);

impl ClientContext for Outcomes {}

impl ProducerContext for Outcomes {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let outcome = if result.is_ok() { "produced" } else { "failed" };
        self.0.analytics_events.with_label_values(&[outcome]).inc();
    }
}

pub struct Producer {
    inner: ThreadedProducer<Outcomes>,
    topic: String,
    metrics: Arc<Metrics>,
}

impl Producer {
    /// `timeout_ms`: how long librdkafka keeps an undeliverable event
    /// (Kafka down) before giving it up and counting it as failed.
    pub fn new(
        brokers: &str,
        topic: &str,
        batch: usize,
        timeout_ms: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let inner = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("batch.num.messages", batch.max(1).to_string())
            // The bounded buffer: past this, send fails at once (QueueFull)
            // and the event is dropped, never waited for.
            .set("queue.buffering.max.messages", "200000")
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("compression.type", "lz4")
            .set("log_level", "3")
            .create_with_context(Outcomes(metrics.clone()))
            .map_err(|e| format!("cannot create the Kafka producer: {e}"))?;
        Ok(Self {
            inner,
            topic: topic.into(),
            metrics,
        })
    }

    pub fn send(&self, e: &Event) {
        let payload = match serde_json::to_vec(e) {
            Ok(p) => p,
            Err(_) => return,
        };
        let key = e.user_id.as_deref().unwrap_or_default();
        let mut record = BaseRecord::to(&self.topic).key(key).payload(&payload);
        if let Some(trace) = &e.trace {
            record = record.headers(trace_headers(trace));
        }
        let outcome = match self.inner.send(record) {
            Ok(()) => "queued",
            // Queue full, or the producer unusable: the event is dropped.
            Err(_) => "dropped",
        };
        self.metrics
            .analytics_events
            .with_label_values(&[outcome])
            .inc();
    }

    pub fn flush(&self, timeout: Duration) {
        let _ = self.inner.flush(timeout);
    }
}

/// The W3C trace context as Kafka record headers (the names the
/// OpenTelemetry instrumentations of Kafka clients use).
fn trace_headers(trace: &TraceContext) -> OwnedHeaders {
    let headers = OwnedHeaders::new_with_capacity(2).insert(Header {
        key: "traceparent",
        value: Some(trace.traceparent.as_bytes()),
    });
    if trace.tracestate.is_empty() {
        return headers;
    }
    headers.insert(Header {
        key: "tracestate",
        value: Some(trace.tracestate.as_bytes()),
    })
}

/// The trace context a record's headers carry, if any.
fn record_trace(m: &BorrowedMessage<'_>) -> Option<TraceContext> {
    let headers = m.headers()?;
    let text = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    TraceContext::from_parts(text("traceparent"), text("tracestate"))
}

/// Where `syncstore analytics` reads from.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub brokers: &'a str,
    pub topic: &'a str,
    /// Stores may share a topic; other stores' events are skipped.
    pub store: &'a str,
    pub group: &'a str,
    /// Events per aggregation transaction.
    pub batch: usize,
}

/// How long a consumer may go without partitions before it is replaced.
/// After a broker restart librdkafka sometimes never gets its group
/// coordinator back (its requests time out every minute, for good); a new
/// consumer rejoins at once, and the offsets in the database make the
/// switch safe.
const REJOIN_AFTER: Duration = Duration::from_secs(30);

/// Why one consumer stopped.
enum Ended {
    Shutdown,
    Stuck,
}

/// Consumes the analytics events of `source` and aggregates them into `db`
/// until `shutdown`.
pub async fn consume(
    source: Source<'_>,
    db: Db,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    tokio::pin!(shutdown);
    loop {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", source.brokers)
            .set("group.id", source.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "true")
            // Rejoin quickly after a broker restart.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .set("log_level", "3")
            .create()
            .map_err(|e| format!("cannot create the Kafka consumer: {e}"))?;
        consumer
            .subscribe(&[source.topic])
            .map_err(|e| format!("cannot subscribe to {}: {e}", source.topic))?;
        tracing::info!(
            topic = source.topic,
            group = source.group,
            "consuming analytics events"
        );
        match drain(&consumer, source, &db, &metrics, &mut shutdown).await {
            Ended::Shutdown => return Ok(()),
            Ended::Stuck => {
                tracing::warn!(after = ?REJOIN_AFTER, "no partitions assigned; replacing the Kafka consumer")
            }
        }
    }
}

/// Runs one consumer until shutdown, or until it has been without
/// partitions for [`REJOIN_AFTER`].
async fn drain(
    consumer: &StreamConsumer,
    source: Source<'_>,
    db: &Db,
    metrics: &Metrics,
    shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Ended {
    let Source {
        topic,
        store,
        batch,
        ..
    } = source;
    let batch = batch.max(1);
    let mut assigned_at = tokio::time::Instant::now();
    let mut lag = Lag::default();
    loop {
        let first = tokio::select! {
            m = consumer.recv() => m,
            () = shutdown.as_mut() => return Ended::Shutdown,
            () = tokio::time::sleep(Duration::from_secs(5)) => {
                if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    assigned_at = tokio::time::Instant::now();
                } else if assigned_at.elapsed() > REJOIN_AFTER {
                    return Ended::Stuck;
                }
                lag.measure(consumer, topic, metrics);
                continue;
            }
        };
        let mut messages = match first {
            Ok(m) => vec![m],
            Err(e) => {
                tracing::warn!(error = %e, "Kafka receive failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        while messages.len() < batch {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => messages.push(m),
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let (batch_span, record_spans) = batch_spans(source, &messages);
        let applied = store_batch(db, topic, store, &messages)
            .instrument(batch_span)
            .await;
        metrics
            .analytics_events
            .with_label_values(&["aggregated"])
            .inc_by(applied as u64);
        // Kafka's own committed offsets only say where to resume; the
        // database's decide what counts.
        let mut tpl = TopicPartitionList::new();
        for (part, next) in next_offsets(&messages) {
            let _ = tpl.add_partition_offset(topic, part, Offset::Offset(next));
            lag.processed.insert(part, next);
        }
        let _ = consumer.commit(&tpl, CommitMode::Async);
        // The requests' traces show their events as counted from here on.
        drop(record_spans);
        if lag.measured.elapsed() >= Duration::from_secs(1) {
            lag.measure(consumer, topic, metrics);
        }
    }
}

/// Stores one batch, whatever it takes: a database error is retried with
/// the same messages, never skipped. Returns how many events it counted.
async fn store_batch(db: &Db, topic: &str, store: &str, messages: &[BorrowedMessage<'_>]) -> usize {
    let mut attempt = 0u32;
    loop {
        match apply(db, topic, store, messages).await {
            Ok(n) => return n,
            Err(e) => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "analytics batch not stored; retrying");
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(50)))).await;
            }
        }
    }
}

/// `syncstore_analytics_consumer_lag{partition}`: for each partition this
/// consumer holds, the partition's high watermark less the next offset to
/// aggregate. Measured at most once a second and every 5 s when idle; the
/// watermark is one request to the partition's leader (rdkafka has no
/// async form of it, so it runs where the runtime allows blocking).
struct Lag {
    /// The next offset of each partition, after the last batch stored.
    processed: BTreeMap<i32, i64>,
    /// Partitions with a series now.
    shown: std::collections::BTreeSet<i32>,
    measured: std::time::Instant,
}

impl Default for Lag {
    fn default() -> Self {
        Self {
            processed: BTreeMap::new(),
            shown: Default::default(),
            measured: std::time::Instant::now(),
        }
    }
}

impl Lag {
    fn measure(&mut self, consumer: &StreamConsumer, topic: &str, metrics: &Metrics) {
        self.measured = std::time::Instant::now();
        let held: Vec<i32> = consumer
            .assignment()
            .map(|a| {
                a.elements_for_topic(topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        let positions = consumer.position().ok();
        let mut now = std::collections::BTreeSet::new();
        for part in held {
            let fetch = || consumer.fetch_watermarks(topic, part, Duration::from_secs(1));
            let watermarks = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => fetch(),
                _ => tokio::task::block_in_place(fetch),
            };
            let Ok((_, high)) = watermarks else {
                continue;
            };
            let position = positions
                .as_ref()
                .and_then(|p| p.find_partition(topic, part))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let Some(next) = self.processed.get(&part).copied().or(position) else {
                continue;
            };
            if high < 0 {
                continue;
            }
            metrics
                .analytics_lag
                .with_label_values(&[&part.to_string()])
                .set((high - next).max(0));
            now.insert(part);
        }
        for gone in self.shown.difference(&now) {
            let _ = metrics
                .analytics_lag
                .remove_label_values(&[&gone.to_string()]);
        }
        self.shown = now;
    }
}

/// The spans of one batch: the batch's own, a consumer span linked to
/// every traced request whose event it aggregates; and for each record of
/// a sampled trace, a span in that request's trace (linked back to the
/// batch), so that the request's trace reaches the consumer. The record
/// spans end once the batch is stored. Without tracing, none exist.
fn batch_spans(
    source: Source<'_>,
    messages: &[BorrowedMessage<'_>],
) -> (tracing::Span, Vec<tracing::Span>) {
    let batch = tracing::info_span!(
        target: TARGET,
        "analytics.batch",
        otel.name = %format!("process {}", source.topic),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = source.topic,
        messaging.consumer.group.name = source.group,
        messaging.batch.message_count = i64::try_from(messages.len()).unwrap_or(i64::MAX),
    );
    if batch.is_disabled() {
        return (batch, Vec::new());
    }
    let traced: Vec<(&BorrowedMessage<'_>, TraceContext)> = messages
        .iter()
        .filter_map(|m| record_trace(m).map(|t| (m, t)))
        .collect();
    for (_, trace) in &traced {
        trace.link(&batch);
    }
    let batch_trace = TraceContext::of(&batch);
    let records = traced
        .into_iter()
        .filter(|(_, trace)| trace.is_sampled())
        .map(|(m, trace)| {
            let span = tracing::info_span!(
                target: TARGET,
                "analytics.record",
                otel.name = %format!("process {}", source.topic),
                otel.kind = "consumer",
                messaging.system = "kafka",
                messaging.operation.type = "process",
                messaging.operation.name = "process",
                messaging.destination.name = source.topic,
                messaging.consumer.group.name = source.group,
                messaging.destination.partition.id = %m.partition(),
                messaging.kafka.offset = m.offset(),
            );
            trace.adopt(&span);
            if let Some(batch) = &batch_trace {
                batch.link(&span);
            }
            span
        })
        .collect();
    (batch, records)
}

fn next_offsets(messages: &[BorrowedMessage<'_>]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for m in messages {
        let e = next.entry(m.partition()).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    next
}

/// Aggregates the messages not yet counted and moves the stored offsets,
/// in one transaction. Returns how many events it counted.
async fn apply(
    db: &Db,
    topic: &str,
    store: &str,
    messages: &[BorrowedMessage<'_>],
) -> Result<usize, sqlx::Error> {
    let next = next_offsets(messages);
    let parts: Vec<i32> = next.keys().copied().collect();
    let mut tx = db.begin().await?;
    let stored = aggregate::offsets(&mut tx, db.dialect(), topic, &parts).await?;
    let mut delta = aggregate::Delta::default();
    for m in messages {
        if m.offset() < stored.get(&m.partition()).copied().unwrap_or(0) {
            continue; // counted before a crash or a rebalance
        }
        match m.payload().map(serde_json::from_slice::<Event>) {
            Some(Ok(e)) if e.store == store => delta.add(&e),
            Some(Ok(_)) => {} // another store's event on a shared topic
            _ => tracing::debug!(
                partition = m.partition(),
                offset = m.offset(),
                "undecodable analytics event skipped"
            ),
        }
    }
    aggregate::write(&mut tx, db.dialect(), &delta).await?;
    aggregate::advance(&mut tx, db.dialect(), topic, &next).await?;
    tx.commit().await?;
    Ok(delta.events)
}
