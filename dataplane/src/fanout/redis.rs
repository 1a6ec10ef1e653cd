//! Fan-out between pods through Redis, one channel per user
//! (`ss:{store}:u:{userId}`), subscribed only while this pod hosts a device
//! of that user. No pattern subscription: a pod never receives traffic for
//! users it does not host.
//!
//! The subscriber is our own reconnect loop over the `redis` crate's pub/sub
//! connection: after any disconnect it reconnects with backoff, resubscribes
//! every hosted channel, and asks every local device to catch up from the
//! database, since messages published meanwhile are gone.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{future::BoxFuture, StreamExt};
use redis::AsyncCommands;
use tokio::sync::{mpsc, watch};

use super::{Bus, Envelope, Hub};
use crate::{
    metrics::Metrics,
    telemetry::{TraceContext, TARGET},
};

/// Envelopes waiting to be published; past this, new ones are dropped (and
/// counted): devices repair the gap from the database.
const PUBLISH_QUEUE: usize = 10_000;

enum SubCommand {
    /// Subscribe, then say so on the channel's readiness.
    Subscribe(String, watch::Sender<bool>),
    Unsubscribe(String),
}

/// A channel this pod subscribes to: how many local devices need it, and
/// whether its subscription is live yet. Every device of the user waits on
/// the same readiness, not only the first: a second device that connects
/// while the first one's SUBSCRIBE is still in flight must not read its
/// pending updates before the subscription is live either, or a change
/// published in between reaches neither its query nor its socket.
struct Hosted {
    devices: usize,
    live: watch::Receiver<bool>,
}

pub struct RedisBus {
    hub: Arc<Hub>,
    pod: String,
    channel_prefix: String,
    publish_tx: mpsc::Sender<(String, Vec<u8>, tracing::Span)>,
    sub_tx: mpsc::UnboundedSender<SubCommand>,
    hosted: Arc<Mutex<HashMap<String, Hosted>>>,
    metrics: Arc<Metrics>,
}

impl RedisBus {
    /// Connects the publisher (failing fast if Redis is unreachable at
    /// start) and starts the publisher and subscriber tasks.
    pub async fn connect(
        url: &str,
        store: &str,
        pod: &str,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let publisher = redis::aio::ConnectionManager::new(client.clone()).await?;
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let hosted = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(publish_loop(publisher, publish_rx, metrics.clone()));
        tokio::spawn(subscribe_loop(
            client,
            sub_rx,
            hosted.clone(),
            hub.clone(),
            pod.to_string(),
            metrics.clone(),
        ));
        Ok(Self {
            hub,
            pod: pod.to_string(),
            channel_prefix: format!("ss:{store}:u:"),
            publish_tx,
            sub_tx,
            hosted,
            metrics,
        })
    }

    fn channel(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.channel_prefix)
    }
}

impl Bus for RedisBus {
    fn publish(&self, mut envelope: Envelope) {
        // Local devices first, without a round trip through Redis.
        self.hub.deliver(&envelope);
        let channel = self.channel(&envelope.user_id);
        // A child of the write; it lasts until Redis took the message, and
        // the pods that receive it continue from it.
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
            Ok(bytes) => {
                if self.publish_tx.try_send((channel, bytes, span)).is_err() {
                    self.metrics.fanout_dropped.inc();
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode envelope"),
        }
    }

    fn host(&self, user_id: &str) -> BoxFuture<'static, ()> {
        let channel = self.channel(user_id);
        let mut live = {
            let mut hosted = self.hosted.lock().unwrap_or_else(|p| p.into_inner());
            match hosted.get_mut(&channel) {
                Some(h) => {
                    h.devices += 1;
                    h.live.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(false);
                    hosted.insert(
                        channel.clone(),
                        Hosted {
                            devices: 1,
                            live: rx.clone(),
                        },
                    );
                    let _ = self.sub_tx.send(SubCommand::Subscribe(channel, tx));
                    rx
                }
            }
        };
        Box::pin(async move {
            // Wait (bounded) until the subscription is live, so nothing
            // published after this returns can be missed. If the subscriber
            // reconnects meanwhile (the readiness is dropped) or this times
            // out, the resync after its reconnect covers the device.
            let _ = tokio::time::timeout(Duration::from_secs(2), live.wait_for(|live| *live)).await;
        })
    }

    fn unhost(&self, user_id: &str) {
        let channel = self.channel(user_id);
        let last = {
            let mut hosted = self.hosted.lock().unwrap_or_else(|p| p.into_inner());
            match hosted.get_mut(&channel) {
                Some(h) if h.devices > 1 => {
                    h.devices -= 1;
                    false
                }
                Some(_) => {
                    hosted.remove(&channel);
                    true
                }
                None => false,
            }
        };
        if last {
            let _ = self.sub_tx.send(SubCommand::Unsubscribe(channel));
        }
    }

    fn pod(&self) -> &str {
        &self.pod
    }
}

/// The channel of every user, as span names and attributes show it: the
/// real name holds the user id.
const CHANNEL_TEMPLATE: &str = "ss:{store}:u:{userId}";
const CHANNEL_SPAN_NAME_PUBLISH: &str = "publish ss:{store}:u:{userId}";
const CHANNEL_SPAN_NAME_RECEIVE: &str = "receive ss:{store}:u:{userId}";

/// Hands another pod's envelope to this pod's devices, inside a span of
/// the publisher's trace when it is traced and sampled: the devices'
/// deliveries are then its children.
fn receive(hub: &Hub, envelope: &Envelope) {
    let Some(trace) = envelope.trace.as_ref().filter(|t| t.is_sampled()) else {
        hub.deliver(envelope);
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
    span.in_scope(|| hub.deliver(envelope));
}

async fn publish_loop(
    mut conn: redis::aio::ConnectionManager,
    mut rx: mpsc::Receiver<(String, Vec<u8>, tracing::Span)>,
    metrics: Arc<Metrics>,
) {
    // The publish span, held to the end of its message's turn, lasts until
    // Redis took the message (or it was given up).
    while let Some((channel, payload, _publish_span)) = rx.recv().await {
        let started = std::time::Instant::now();
        // A few tries ride out a Redis restart; after that the message is
        // dropped and the subscribers' reconnect-resync covers it.
        let mut delay = Duration::from_millis(50);
        loop {
            match conn.publish::<_, _, i64>(&channel, &payload).await {
                Ok(_) => {
                    metrics
                        .fanout_publish_seconds
                        .observe(started.elapsed().as_secs_f64());
                    break;
                }
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    metrics.fanout_errors.with_label_values(&["publish"]).inc();
                    tracing::debug!(error = %e, "publish failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    metrics.fanout_errors.with_label_values(&["publish"]).inc();
                    tracing::warn!(error = %e, %channel, "publish dropped after retries");
                    metrics.fanout_dropped.inc();
                    break;
                }
            }
        }
    }
}

/// Subscribes a new connection to every hosted channel; how many, or None
/// when one SUBSCRIBE failed (the caller reconnects).
async fn resubscribe(
    sink: &mut redis::aio::PubSubSink,
    hosted: &Mutex<HashMap<String, Hosted>>,
    metrics: &Metrics,
) -> Option<usize> {
    let channels: Vec<String> = hosted
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .keys()
        .cloned()
        .collect();
    for channel in &channels {
        if sink.subscribe(channel).await.is_err() {
            metrics
                .fanout_errors
                .with_label_values(&["subscribe"])
                .inc();
            return None;
        }
    }
    Some(channels.len())
}

async fn subscribe_loop(
    client: redis::Client,
    mut rx: mpsc::UnboundedReceiver<SubCommand>,
    hosted: Arc<Mutex<HashMap<String, Hosted>>>,
    hub: Arc<Hub>,
    pod: String,
    metrics: Arc<Metrics>,
) {
    let mut first = true;
    let mut backoff = Duration::from_millis(100);
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                metrics.redis_connected(false);
                metrics.fanout_errors.with_label_values(&["connect"]).inc();
                tracing::warn!(error = %e, "redis subscriber cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let (mut sink, mut stream) = pubsub.split();
        let Some(channels) = resubscribe(&mut sink, &hosted, &metrics).await else {
            continue;
        };
        metrics.redis_connected(true);
        if !first {
            metrics.redis_reconnects.inc();
            tracing::info!(channels, "redis subscriber reconnected; resyncing devices");
            hub.resync_all();
        }
        first = false;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(SubCommand::Subscribe(channel, done)) => {
                        if sink.subscribe(&channel).await.is_err() {
                            metrics.fanout_errors.with_label_values(&["subscribe"]).inc();
                            break; // reconnect; the channel is in `hosted`
                        }
                        let _ = done.send(true);
                    }
                    Some(SubCommand::Unsubscribe(channel)) => {
                        if sink.unsubscribe(&channel).await.is_err() {
                            metrics.fanout_errors.with_label_values(&["subscribe"]).inc();
                            break;
                        }
                    }
                    None => return, // the bus is gone
                },
                msg = stream.next() => match msg {
                    Some(msg) => match serde_json::from_slice::<Envelope>(msg.get_payload_bytes()) {
                        Ok(env) if env.pod != pod => receive(&hub, &env),
                        Ok(_) => {} // our own publish: delivered locally already
                        Err(e) => tracing::warn!(error = %e, "undecodable fan-out message"),
                    },
                    None => {
                        metrics.redis_connected(false);
                        tracing::warn!("redis subscriber disconnected");
                        break;
                    }
                },
            }
        }
    }
}
