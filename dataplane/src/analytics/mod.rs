//! Analytics (DESIGN §8): one event per REST request and socket event,
//! sent to Kafka or, embedded, through a bounded channel into the same
//! aggregator the Kafka consumer uses. Recording never waits and never
//! fails a request: a full buffer drops the event and counts it.

pub mod aggregate;
pub mod event;
pub mod histogram;
pub mod kafka;
pub mod live;
pub mod query;
pub mod report;

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

pub use event::Event;
pub use live::Live;

use crate::{metrics::Metrics, storage::Db};

/// Events buffered in embedded mode before new ones are dropped.
const LOCAL_BUFFER: usize = 50_000;
/// How long an embedded batch waits to fill before it is written anyway.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct Analytics {
    sink: Option<Arc<Sink>>,
    live: Arc<Live>,
}

struct Sink {
    transport: Transport,
    metrics: Arc<Metrics>,
    store: String,
    pod: String,
}

enum Transport {
    Kafka(kafka::Producer),
    Local(mpsc::Sender<Msg>),
}

/// What the embedded aggregator receives: events, and at shutdown a flush
/// marker. The channel is FIFO, so when the marker is answered every event
/// recorded before it has been written. Nearly every message is an event:
/// boxing it to shrink the rare marker would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Event),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Analytics {
    /// Starts the configured sink: Kafka with `KAFKA_BROKERS`, else the
    /// in-process aggregator; nothing with `ENABLE_ANALYTICS=false`.
    pub fn start(
        cfg: &AnalyticsConfig,
        db: Db,
        store: &str,
        pod: &str,
        metrics: Arc<Metrics>,
        live: Arc<Live>,
    ) -> Result<Self, String> {
        if !cfg.enabled {
            return Ok(Self { sink: None, live });
        }
        let transport = match &cfg.kafka_brokers {
            Some(brokers) => Transport::Kafka(kafka::Producer::new(
                brokers,
                &cfg.kafka_topic,
                cfg.batch_size,
                cfg.kafka_timeout_ms,
                metrics.clone(),
            )?),
            None => {
                let (tx, rx) = mpsc::channel(LOCAL_BUFFER);
                tokio::spawn(aggregate_locally(
                    rx,
                    db,
                    cfg.batch_size.max(1),
                    metrics.clone(),
                ));
                Transport::Local(tx)
            }
        };
        Ok(Self {
            sink: Some(Arc::new(Sink {
                transport,
                metrics,
                store: store.into(),
                pod: pod.into(),
            })),
            live,
        })
    }

    /// Analytics switched off (tests, tools).
    pub fn disabled(live: Arc<Live>) -> Self {
        Self { sink: None, live }
    }

    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Records one event. Never blocks.
    pub fn record(&self, mut e: Event) {
        self.live.op();
        let Some(sink) = &self.sink else { return };
        if e.id.is_empty() {
            e.id = uuid::Uuid::now_v7().to_string();
        }
        if e.ts == 0 {
            e.ts = crate::storage::now_ms();
        }
        e.store.clone_from(&sink.store);
        e.pod.clone_from(&sink.pod);
        let outcome = &sink.metrics.analytics_events;
        match &sink.transport {
            Transport::Kafka(p) => p.send(&e),
            Transport::Local(tx) => match tx.try_send(Msg::Event(e)) {
                Ok(()) => outcome.with_label_values(&["queued"]).inc(),
                Err(_) => outcome.with_label_values(&["dropped"]).inc(),
            },
        }
    }

    /// Waits (briefly) for buffered events to leave, at shutdown.
    pub async fn flush(&self) {
        const WAIT: Duration = Duration::from_secs(5);
        match self.sink.as_ref().map(|s| &s.transport) {
            Some(Transport::Kafka(p)) => p.flush(WAIT),
            Some(Transport::Local(tx)) => {
                let (done, written) = tokio::sync::oneshot::channel();
                let flushed = async {
                    tx.send(Msg::Flush(done)).await.ok()?;
                    written.await.ok()
                };
                if tokio::time::timeout(WAIT, flushed)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    tracing::warn!("analytics events still buffered at shutdown were not written");
                }
            }
            None => {}
        }
    }
}

/// Embedded mode: batches from the channel into the aggregate tables.
async fn aggregate_locally(
    mut rx: mpsc::Receiver<Msg>,
    db: Db,
    batch: usize,
    metrics: Arc<Metrics>,
) {
    let mut events = Vec::with_capacity(batch);
    loop {
        let mut flushed = None;
        match rx.recv().await {
            None => return,
            Some(Msg::Event(e)) => events.push(e),
            Some(Msg::Flush(done)) => flushed = Some(done),
        }
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while events.len() < batch && flushed.is_none() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Msg::Event(e))) => events.push(e),
                Ok(Some(Msg::Flush(done))) => flushed = Some(done),
                Ok(None) | Err(_) => break,
            }
        }
        if !events.is_empty() {
            write_batch(&db, &mut events, &metrics).await;
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// Aggregates `events` in one transaction (retried a few times) and empties it.
async fn write_batch(db: &Db, events: &mut Vec<Event>, metrics: &Metrics) {
    let mut delta = aggregate::Delta::default();
    events.iter().for_each(|e| delta.add(e));
    // A failed write is retried a few times, then the batch is counted
    // as lost: the buffer must keep moving.
    let mut written = false;
    for attempt in 0..3 {
        match aggregate::write_alone(db, &delta).await {
            Ok(()) => {
                written = true;
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "analytics batch not written");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    let outcome = if written { "aggregated" } else { "failed" };
    metrics
        .analytics_events
        .with_label_values(&[outcome])
        .inc_by(events.len() as u64);
    events.clear();
}

#[derive(Debug, Clone)]
pub struct AnalyticsConfig {
    pub enabled: bool,
    /// Producer batch (ANALYTICS_BATCH_SIZE, the seed's).
    pub batch_size: usize,
    /// Events per aggregation transaction of the consumer: large batches
    /// fold many events into each row they touch.
    pub consumer_batch: usize,
    pub kafka_timeout_ms: u64,
    pub kafka_brokers: Option<String>,
    pub kafka_topic: String,
}
