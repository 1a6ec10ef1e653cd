//! Fan-out between pods through Redis, one channel per user
//! (`ss:{store}:u:{userId}`), subscribed only while this pod hosts a device
//! of that user. No pattern subscription: a pod never receives traffic for
//! users it does not host.
//!
//! The subscriber is our own reconnect loop over the `redis` crate's pub/sub
//! connection: after any disconnect it reconnects with backoff, resubscribes
//! every hosted channel, and asks every local device to catch up from the
//! database, since messages published meanwhile are gone.
//!
//! Behind Redis Sentinel the server is the master the sentinels name: each
//! reconnect asks them, and a new master (a failover that dropped nothing,
//! the old master demoted or stopped) makes the subscriber reconnect there.

use std::{sync::Arc, time::Duration};

use futures_util::{future::BoxFuture, StreamExt};
use tokio::sync::{mpsc, watch};

use super::{
    hosting::{wait_live, Hosting},
    relay::{self, Outgoing, PUBLISH_QUEUE},
    Bus, Envelope, Hub,
};
use crate::{
    metrics::Metrics,
    redis_conn::{bounded, Conn, Sentinel, Target, Tls},
    telemetry::throttle::Throttle,
};

/// Where the subscriber connects: one fixed server, or Sentinel's master
/// with the publisher's signal that it moved.
enum Server {
    Fixed(Box<redis::Client>),
    Sentinel(Box<Sentinel>, watch::Receiver<u64>),
}

impl Server {
    async fn client(&mut self) -> redis::RedisResult<redis::Client> {
        match self {
            Server::Fixed(client) => Ok(client.as_ref().clone()),
            Server::Sentinel(sentinel, _) => sentinel.master().await,
        }
    }

    /// Resolves when the master moved (never for a fixed server).
    async fn moved(&mut self) {
        if let Server::Sentinel(_, moved) = self {
            if moved.changed().await.is_ok() {
                return;
            }
        }
        std::future::pending().await
    }
}

enum SubCommand {
    /// Subscribe, then mark the channel live.
    Subscribe(String),
    Unsubscribe(String),
}

pub struct RedisBus {
    hub: Arc<Hub>,
    pod: String,
    channel_prefix: String,
    publish_tx: mpsc::Sender<Outgoing>,
    sub_tx: mpsc::UnboundedSender<SubCommand>,
    hosting: Arc<Hosting>,
    metrics: Arc<Metrics>,
}

impl RedisBus {
    /// Connects the publisher to one server or Sentinel's master (failing
    /// fast if Redis is unreachable at start) and starts the publisher and
    /// subscriber tasks; a cluster has its own bus.
    pub async fn connect(
        target: &Target,
        timeout: Duration,
        tls: &Tls,
        store: &str,
        pod: &str,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        let (publisher, server) = match target {
            Target::Single(url) => {
                let client = tls.client(url)?;
                let publisher = redis::aio::ConnectionManager::new(client.clone()).await?;
                (Conn::Single(publisher), Server::Fixed(Box::new(client)))
            }
            _ => {
                let publisher = target.connect(timeout, tls).await?;
                let Conn::Sentinel(watched) = &publisher else {
                    return Err((
                        redis::ErrorKind::InvalidClientConfig,
                        "a cluster has its own bus",
                    )
                        .into());
                };
                let moved = watched.rebuilt();
                (
                    publisher,
                    Server::Sentinel(Box::new(target.sentinel(timeout, tls)?), moved),
                )
            }
        };
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let hosting = Arc::new(Hosting::default());
        tokio::spawn(relay::publish_loop(
            publisher,
            publish_rx,
            metrics.clone(),
            "PUBLISH",
            timeout,
        ));
        tokio::spawn(subscribe_loop(
            server,
            timeout * 2,
            sub_rx,
            hosting.clone(),
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
            hosting,
            metrics,
        })
    }

    fn channel(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.channel_prefix)
    }
}

impl Bus for RedisBus {
    fn publish(&self, envelope: Envelope) {
        // Local devices first, without a round trip through Redis.
        self.hub.deliver(&envelope);
        let channel = self.channel(&envelope.user_id);
        relay::enqueue(&self.publish_tx, &self.metrics, channel, envelope);
    }

    fn host(&self, user_id: &str) -> BoxFuture<'static, ()> {
        let channel = self.channel(user_id);
        let (first, live) = self.hosting.add(&channel, user_id);
        if first {
            let _ = self.sub_tx.send(SubCommand::Subscribe(channel));
        }
        // If the subscriber reconnects meanwhile or this times out, the
        // resync after its reconnect covers the device.
        Box::pin(wait_live(live))
    }

    fn unhost(&self, user_id: &str) {
        let channel = self.channel(user_id);
        if self.hosting.remove(&channel) {
            let _ = self.sub_tx.send(SubCommand::Unsubscribe(channel));
        }
    }

    fn pod(&self) -> &str {
        &self.pod
    }
}

/// Subscribes a new connection to every hosted channel; how many, or None
/// when one SUBSCRIBE failed (the caller reconnects).
async fn resubscribe(
    sink: &mut redis::aio::PubSubSink,
    hosting: &Hosting,
    metrics: &Metrics,
    attempt: Duration,
) -> Option<usize> {
    let channels = hosting.channels();
    for channel in &channels {
        if bounded(attempt, sink.subscribe(channel)).await.is_err() {
            metrics
                .fanout_errors
                .with_label_values(&["subscribe"])
                .inc();
            return None;
        }
        hosting.mark_live(channel);
    }
    Some(channels.len())
}

/// One SUBSCRIBE or UNSUBSCRIBE on a live connection: false when it failed,
/// took longer than `attempt` (a server that stopped answering without
/// closing the connection), or the master moved meanwhile; the caller then
/// reconnects.
async fn command(
    server: &mut Server,
    attempt: Duration,
    command: impl std::future::Future<Output = redis::RedisResult<()>>,
) -> bool {
    tokio::select! {
        done = bounded(attempt, command) => done.is_ok(),
        () = server.moved() => false,
    }
}

/// A pub/sub connection to the server (Sentinel's master now), retried
/// with backoff until one answers.
async fn connect(server: &mut Server, attempt: Duration, metrics: &Metrics) -> redis::aio::PubSub {
    let mut backoff = Duration::from_millis(100);
    loop {
        // A server that accepts and never answers (stopped) holds no one.
        let pubsub = match server.client().await {
            Ok(client) => bounded(attempt, client.get_async_pubsub()).await,
            Err(e) => Err(e),
        };
        match pubsub {
            Ok(p) => return p,
            Err(e) => {
                metrics.redis_connected(false);
                metrics.fanout_errors.with_label_values(&["connect"]).inc();
                static LOG: Throttle = Throttle::new(Duration::from_secs(60));
                if let Some(suppressed) = LOG.admit() {
                    tracing::warn!(error = %e, suppressed, "redis subscriber cannot connect; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn subscribe_loop(
    mut server: Server,
    attempt: Duration,
    mut rx: mpsc::UnboundedReceiver<SubCommand>,
    hosting: Arc<Hosting>,
    hub: Arc<Hub>,
    pod: String,
    metrics: Arc<Metrics>,
) {
    let mut first = true;
    loop {
        let pubsub = connect(&mut server, attempt, &metrics).await;
        let (mut sink, mut stream) = pubsub.split();
        let Some(channels) = resubscribe(&mut sink, &hosting, &metrics, attempt).await else {
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
                cmd = rx.recv() => {
                    let done = match cmd {
                        Some(SubCommand::Subscribe(channel)) => {
                            let done = command(&mut server, attempt, sink.subscribe(&channel)).await;
                            if done {
                                hosting.mark_live(&channel);
                            }
                            done
                        }
                        Some(SubCommand::Unsubscribe(channel)) => {
                            command(&mut server, attempt, sink.unsubscribe(&channel)).await
                        }
                        None => return, // the bus is gone
                    };
                    if !done {
                        // Reconnect; a channel to subscribe is in `hosting`.
                        metrics.redis_connected(false);
                        metrics.fanout_errors.with_label_values(&["subscribe"]).inc();
                        tracing::warn!("redis subscriber got no answer; reconnecting");
                        break;
                    }
                }
                () = server.moved() => {
                    metrics.redis_connected(false);
                    tracing::info!("redis master moved; subscribing there");
                    break;
                },
                msg = stream.next() => match msg {
                    Some(msg) => relay::receive(&hub, &pod, msg.get_payload_bytes()),
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
