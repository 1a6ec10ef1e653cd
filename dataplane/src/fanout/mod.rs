//! Fan-out: getting a committed change to every device of its user, on
//! whichever pod the device is connected.
//!
//! The [`Hub`] is this pod's registry of connected devices by user. A [`Bus`]
//! carries changes between pods: [`LocalBus`] when there is one process,
//! [`RedisBus`] with one channel per user, [`RedisClusterBus`] with one
//! sharded channel per user on a Redis Cluster. The bus is only a fast path:
//! devices track the last `seq` they got and repair any gap from the
//! database, so a lost message delays a change but never loses it.

mod hosting;
mod hub;
mod local;
mod redis;
mod redis_cluster;
mod relay;

use futures_util::future::BoxFuture;
pub use hub::{Hub, Sink};
pub use local::LocalBus;
pub use redis::RedisBus;
pub use redis_cluster::RedisClusterBus;
use serde::{Deserialize, Serialize};

use crate::{domain::Change, telemetry::TraceContext};

/// Changes of one user from one command, in seq order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub user_id: String,
    /// The socket that wrote, which must not get its own write back.
    /// `None` for REST writes, which reach every device.
    pub origin: Option<String>,
    /// The pod that published, so it can skip its own messages.
    pub pod: String,
    /// Wall-clock microseconds at publication, for the fan-out latency metric.
    pub published_us: i64,
    pub changes: Vec<Change>,
    /// The W3C context of the publish, when the write is traced: the pod
    /// that delivers the changes continues the trace. Absent from the JSON
    /// otherwise, and ignored by a pod that predates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

/// Carries envelopes between pods. Methods never block: a write never waits
/// on fan-out.
pub trait Bus: Send + Sync {
    /// Delivers to this pod's devices now and to other pods' soon.
    fn publish(&self, envelope: Envelope);
    /// This pod now hosts a device of `user_id` (reference-counted). The
    /// future resolves once changes published from now on will arrive.
    fn host(&self, user_id: &str) -> BoxFuture<'static, ()>;
    /// One device of `user_id` left this pod.
    fn unhost(&self, user_id: &str);
    /// This pod's name, as stamped on its envelopes.
    fn pod(&self) -> &str;
}
