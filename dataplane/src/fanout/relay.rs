//! What the two Redis buses ([`super::RedisBus`], [`super::RedisClusterBus`])
//! do alike: an envelope leaves inside a publish span whose W3C context it
//! carries, is published with a few retries, and on another pod is handed
//! to the devices inside a span of the publisher's trace.

use std::{sync::Arc, time::Duration};

use tokio::sync::mpsc;

use super::{Envelope, Hub};
use crate::{
    metrics::Metrics,
    redis_conn::{bounded, Conn},
    telemetry::{throttle::Throttle, TraceContext, TARGET},
};

/// Envelopes waiting to be published; past this, new ones are dropped (and
/// counted): devices repair the gap from the database.
pub(super) const PUBLISH_QUEUE: usize = 10_000;

/// The channel of every user, as span names and attributes show it: the
/// real name holds the user id.
const CHANNEL_TEMPLATE: &str = "ss:{store}:u:{userId}";
const CHANNEL_SPAN_NAME_PUBLISH: &str = "publish ss:{store}:u:{userId}";
const CHANNEL_SPAN_NAME_RECEIVE: &str = "receive ss:{store}:u:{userId}";

/// One envelope on its way to Redis, with its publish span: a child of the
/// write that lasts until Redis took the message (or it was given up).
pub(super) struct Outgoing {
    channel: String,
    payload: Vec<u8>,
    _span: tracing::Span,
}

/// Queues `envelope` for `channel`: the pods that receive it continue the
/// publish span's trace. A full queue drops it (counted).
pub(super) fn enqueue(
    queue: &mpsc::Sender<Outgoing>,
    metrics: &Metrics,
    channel: String,
    mut envelope: Envelope,
) {
    let span = tracing::info_span!(
        target: TARGET,
        "fanout.publish",
        otel.name = CHANNEL_SPAN_NAME_PUBLISH,
        otel.kind = "producer",
        messaging.system = "redis",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.template = CHANNEL_TEMPLATE,
    );
    envelope.trace = TraceContext::of(&span);
    match serde_json::to_vec(&envelope) {
        Ok(payload) => {
            let out = Outgoing {
                channel,
                payload,
                _span: span,
            };
            if queue.try_send(out).is_err() {
                metrics.fanout_dropped.inc();
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot encode envelope"),
    }
}

/// Hands another pod's envelope to this pod's devices, inside a span of
/// the publisher's trace when it is traced and sampled: the devices'
/// deliveries are then its children. `pod` is this pod: its own messages
/// were delivered locally when published.
pub(super) fn receive(hub: &Hub, pod: &str, payload: &[u8]) {
    let envelope = match serde_json::from_slice::<Envelope>(payload) {
        Ok(env) if env.pod != pod => env,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "undecodable fan-out message");
            return;
        }
    };
    let Some(trace) = envelope.trace.as_ref().filter(|t| t.is_sampled()) else {
        hub.deliver(&envelope);
        return;
    };
    let span = tracing::info_span!(
        target: TARGET,
        "fanout.receive",
        otel.name = CHANNEL_SPAN_NAME_RECEIVE,
        otel.kind = "consumer",
        messaging.system = "redis",
        messaging.operation.type = "receive",
        messaging.operation.name = "message",
        messaging.destination.template = CHANNEL_TEMPLATE,
    );
    trace.adopt(&span);
    span.in_scope(|| hub.deliver(&envelope));
}

/// At most this many queued envelopes are published at once.
const PUBLISH_BATCH: usize = 128;

/// Publishes what is queued with `command` (`PUBLISH`, or `SPUBLISH` on a
/// cluster). What is waiting goes out together, each envelope its own
/// command on the shared multiplexed connection(s), sent in queue order:
/// one slow round trip (a cluster routes each to its channel's shard) no
/// longer holds the queue behind it. What failed is then retried one at a
/// time, in queue order, with backoff: a failure delays those envelopes
/// (the subscribers' gap wait and repair cover it) but does not shuffle
/// them, nor send the whole batch again at every try. Past 10 s an
/// envelope is dropped and the subscribers' repair-resync covers it.
pub(super) async fn publish_loop(
    conn: Conn,
    mut queue: mpsc::Receiver<Outgoing>,
    metrics: Arc<Metrics>,
    command: &'static str,
    attempt: Duration,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queue.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let started = std::time::Instant::now();
        let sent = futures_util::future::join_all(
            batch
                .iter()
                .map(|out| send(conn.clone(), out, command, attempt)),
        )
        .await;
        for (out, first) in batch.drain(..).zip(sent) {
            let done = match first {
                Ok(()) => true,
                Err(e) => retry(&conn, &out, e, &metrics, command, attempt, started).await,
            };
            if done {
                metrics
                    .fanout_publish_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
        }
    }
}

/// One try, bounded: a connection waiting out its own reconnects to a
/// master that is gone would otherwise hold the queue long after the
/// connection was made again elsewhere.
async fn send(
    mut conn: Conn,
    out: &Outgoing,
    command: &'static str,
    attempt: Duration,
) -> redis::RedisResult<()> {
    bounded(
        attempt,
        redis::cmd(command)
            .arg(&out.channel)
            .arg(&out.payload)
            .query_async::<i64>(&mut conn),
    )
    .await
    .map(drop)
}

/// Tries a failed envelope again until 10 s after `started`; whether it
/// went out (else it is dropped and counted).
async fn retry(
    conn: &Conn,
    out: &Outgoing,
    mut error: redis::RedisError,
    metrics: &Metrics,
    command: &'static str,
    attempt: Duration,
    started: std::time::Instant,
) -> bool {
    let mut delay = Duration::from_millis(50);
    loop {
        metrics.fanout_errors.with_label_values(&["publish"]).inc();
        if started.elapsed() >= Duration::from_secs(10) {
            static LOG: Throttle = Throttle::new(Duration::from_secs(60));
            if let Some(suppressed) = LOG.admit() {
                tracing::warn!(error = %error, channel = %out.channel, suppressed, "publish dropped after retries");
            }
            metrics.fanout_dropped.inc();
            return false;
        }
        tracing::debug!(error = %error, command, "publish failed, retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        match send(conn.clone(), out, command, attempt).await {
            Ok(()) => return true,
            Err(e) => error = e,
        }
    }
}
