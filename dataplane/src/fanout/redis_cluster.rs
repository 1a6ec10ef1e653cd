//! Fan-out between pods through a Redis Cluster, with sharded pub/sub
//! (`SSUBSCRIBE`/`SPUBLISH`, Redis ≥ 7) on the per-user channels
//! `ss:{store}:u:{userId}`.
//!
//! A channel name is one key for the cluster's hashing, so one user's
//! channel lives in one slot while users spread over every slot. A message
//! then travels only to the shard that owns its channel (its master and
//! replicas) and from there to the pods hosting that user, never to every
//! node as classic pub/sub does on a cluster.
//!
//! The `redis` crate's cluster connection routes `SSUBSCRIBE` to the owner
//! and resubscribes what it tracks after a reconnect, but a slot that moves
//! (resharding) makes the old owner send `SUNSUBSCRIBE`, which the crate
//! takes as final. So the subscriptions are repaired here, on three signals:
//! - a server `SUNSUBSCRIBE` of a channel still hosted: subscribe it again
//!   (the crate follows `MOVED` to the new owner);
//! - a node connection lost (`Disconnection`): subscribe every hosted
//!   channel again, retrying until the cluster has promoted a replica;
//! - the masters changed with no connection lost (a stopped master whose
//!   replica took over): [`Watched`] makes a new connection, and every
//!   hosted channel is subscribed on it.
//!
//! Each attempt is bounded ([`Shared::attempt`]) and retried per channel, so
//! a node that does not answer holds no repair; repairs asked for while one
//! runs make one more after it, not one each.
//!
//! Each repaired subscription, once live, asks that user's devices to catch
//! up from the database, as [`super::RedisBus`] does after a reconnect:
//! messages published while it was down are gone, the changes are not.

use std::{sync::Arc, time::Duration};

use futures_util::{future::BoxFuture, StreamExt};
use redis::{cluster_async::ClusterConnection, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, Notify};

use super::{
    hosting::{wait_live, Hosting},
    relay::{self, Outgoing, PUBLISH_QUEUE},
    Bus, Envelope, Hub,
};
use crate::{
    metrics::Metrics,
    redis_conn::{bounded, Cluster, Conn, Target, Tls, Watched},
};

/// Subscriptions repaired at once after a node is lost.
const REPAIR_CONCURRENCY: usize = 64;

pub struct RedisClusterBus {
    hub: Arc<Hub>,
    pod: String,
    channel_prefix: String,
    publish_tx: mpsc::Sender<Outgoing>,
    shared: Arc<Shared>,
}

/// What the bus and its tasks share.
struct Shared {
    /// The subscribing connection (RESP3, pushes to the push loop).
    conn: Watched<ClusterConnection>,
    /// How long one `SSUBSCRIBE` may take before it is tried again.
    attempt: Duration,
    /// Asks the repairer for one more pass over every hosted channel.
    repair: Notify,
    hosting: Hosting,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

impl RedisClusterBus {
    /// Connects to the cluster (failing fast if no seed node answers) and
    /// starts the publisher and the push loop.
    pub async fn connect(
        nodes: &[crate::domain::Secret],
        timeout: Duration,
        tls: &Tls,
        store: &str,
        pod: &str,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        let client = |push| {
            Target::cluster_client(nodes, timeout, tls, push).map(|client| Cluster { client })
        };
        let publisher = Watched::start(client(None)?, timeout).await?;
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let conn = Watched::start(client(Some(push_tx))?, timeout).await?;
        metrics.redis_connected(true);
        let shared = Arc::new(Shared {
            conn,
            attempt: timeout * 2,
            repair: Notify::new(),
            hosting: Hosting::default(),
            hub: hub.clone(),
            metrics: metrics.clone(),
        });
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(relay::publish_loop(
            Conn::Cluster(publisher),
            publish_rx,
            metrics,
            "SPUBLISH",
            timeout,
        ));
        tokio::spawn(push_loop(push_rx, shared.clone(), pod.to_string()));
        tokio::spawn(follow_rebuilds(shared.clone()));
        tokio::spawn(repairer(shared.clone()));
        Ok(Self {
            hub,
            pod: pod.to_string(),
            channel_prefix: format!("ss:{store}:u:"),
            publish_tx,
            shared,
        })
    }

    fn channel(&self, user_id: &str) -> String {
        format!("{}{user_id}", self.channel_prefix)
    }
}

impl Bus for RedisClusterBus {
    fn publish(&self, envelope: Envelope) {
        // Local devices first, without a round trip through Redis.
        self.hub.deliver(&envelope);
        let channel = self.channel(&envelope.user_id);
        relay::enqueue(&self.publish_tx, &self.shared.metrics, channel, envelope);
    }

    fn host(&self, user_id: &str) -> BoxFuture<'static, ()> {
        let channel = self.channel(user_id);
        let (first, live) = self.shared.hosting.add(&channel, user_id);
        if first {
            tokio::spawn(subscribe(self.shared.clone(), channel, false));
        }
        Box::pin(wait_live(live))
    }

    fn unhost(&self, user_id: &str) {
        let channel = self.channel(user_id);
        if self.shared.hosting.remove(&channel) {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let mut conn = shared.conn.get();
                if bounded(shared.attempt, conn.sunsubscribe(&channel))
                    .await
                    .is_err()
                {
                    shared
                        .metrics
                        .fanout_errors
                        .with_label_values(&["subscribe"])
                        .inc();
                }
            });
        }
    }

    fn pod(&self) -> &str {
        &self.pod
    }
}

/// Subscribes `channel`, retrying until it is live or no longer hosted;
/// `repair` when it had been live before (then the user's devices catch up).
async fn subscribe(shared: Arc<Shared>, channel: String, repair: bool) {
    let mut delay = Duration::from_millis(50);
    loop {
        let Some(user) = shared.hosting.user_of(&channel) else {
            return;
        };
        // The connection now: a rebuild between attempts is followed.
        let mut conn = shared.conn.get();
        match bounded(shared.attempt, conn.ssubscribe(&channel)).await {
            Ok(()) => {
                shared.hosting.mark_live(&channel);
                if repair {
                    shared.hub.resync_user(&user);
                }
                break;
            }
            Err(e) => {
                shared
                    .metrics
                    .fanout_errors
                    .with_label_values(&["subscribe"])
                    .inc();
                tracing::debug!(error = %e, "SSUBSCRIBE failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
    // The last device may have left while the subscribe was in flight.
    if shared.hosting.user_of(&channel).is_none() {
        let mut conn = shared.conn.get();
        let _ = bounded(shared.attempt, conn.sunsubscribe(&channel)).await;
    }
}

/// Runs the repairs one at a time. The bus lives as long as the process
/// (its push loop holds it), and so do these tasks.
async fn repairer(shared: Arc<Shared>) {
    loop {
        // Notified while a repair runs: the stored permit makes one more pass.
        shared.repair.notified().await;
        repair_all(shared.clone()).await;
    }
}

/// A rebuilt subscribing connection holds no subscriptions yet.
async fn follow_rebuilds(shared: Arc<Shared>) {
    let mut rebuilt = shared.conn.rebuilt();
    while rebuilt.changed().await.is_ok() {
        // Not live again until the repair has subscribed everything.
        shared.metrics.redis_connected(false);
        shared.metrics.redis_reconnects.inc();
        shared.repair.notify_one();
    }
}

/// Subscribes every hosted channel again (after a node was lost, or on a
/// new connection).
async fn repair_all(shared: Arc<Shared>) {
    let started = std::time::Instant::now();
    let channels = shared.hosting.channels();
    let count = channels.len();
    futures_util::stream::iter(channels)
        .for_each_concurrent(REPAIR_CONCURRENCY, |channel| {
            subscribe(shared.clone(), channel, true)
        })
        .await;
    shared.metrics.redis_connected(true);
    tracing::info!(
        channels = count,
        ms = started.elapsed().as_millis() as u64,
        "redis cluster subscriptions repaired; devices resynced"
    );
}

/// Messages, and the signals that a subscription was lost.
async fn push_loop(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    shared: Arc<Shared>,
    pod: String,
) {
    while let Some(push) = pushes.recv().await {
        match push.kind {
            PushKind::SMessage => {
                let Some(payload) = push.data.get(1).and_then(bytes) else {
                    continue;
                };
                relay::receive(&shared.hub, &pod, payload);
            }
            PushKind::SUnsubscribe => {
                // Ours after an unhost (no longer hosted), or the server's
                // when the channel's slot moved to another node.
                let Some(channel) = push.data.first().and_then(bytes) else {
                    continue;
                };
                let channel = String::from_utf8_lossy(channel).into_owned();
                if shared.hosting.user_of(&channel).is_some() {
                    tracing::info!(%channel, "sharded channel moved; resubscribing");
                    tokio::spawn(subscribe(shared.clone(), channel, true));
                }
            }
            PushKind::Disconnection => {
                shared.metrics.redis_connected(false);
                shared.metrics.redis_reconnects.inc();
                tracing::warn!("redis cluster node connection lost; repairing subscriptions");
                shared.repair.notify_one();
            }
            _ => {}
        }
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}
