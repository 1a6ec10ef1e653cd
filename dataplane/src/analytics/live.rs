//! The live figures behind `/analytics/realtime`: sockets connected now and
//! operations per second over the last minute. Each pod counts its own in
//! a 60-slot ring; with Redis, every pod publishes its figures each second
//! and the endpoint sums those of all pods.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;

const SLOTS: usize = 60;

/// This pod's counters.
pub struct Live {
    /// (second, count) per slot; a slot whose second is stale reads as 0.
    seconds: [AtomicI64; SLOTS],
    counts: [AtomicU64; SLOTS],
    sockets: AtomicI64,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            seconds: std::array::from_fn(|_| AtomicI64::new(-1)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sockets: AtomicI64::new(0),
        }
    }
}

fn now_s() -> i64 {
    crate::storage::now_ms() / 1000
}

/// One pod's (or the sum of all pods') live figures.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    pub connected_sockets: i64,
    /// Operations in each of the last 60 seconds, oldest first.
    pub ops_per_second: Vec<u64>,
}

impl Figures {
    pub fn ops_last_minute(&self) -> u64 {
        self.ops_per_second.iter().sum()
    }

    pub fn add(&mut self, other: &Figures) {
        self.connected_sockets += other.connected_sockets;
        if self.ops_per_second.len() < other.ops_per_second.len() {
            self.ops_per_second.resize(other.ops_per_second.len(), 0);
        }
        for (a, b) in self.ops_per_second.iter_mut().zip(&other.ops_per_second) {
            *a += b;
        }
    }
}

impl Live {
    pub fn op(&self) {
        self.op_at(now_s());
    }

    fn op_at(&self, second: i64) {
        let slot = second.rem_euclid(SLOTS as i64) as usize;
        let seen = self.seconds[slot].swap(second, Ordering::AcqRel);
        if seen != second {
            // First op of a new second in this slot: restart its count. A
            // race here can lose an op or two in the slot's first
            // microseconds, which a live gauge tolerates.
            self.counts[slot].store(0, Ordering::Release);
        }
        self.counts[slot].fetch_add(1, Ordering::AcqRel);
    }

    pub fn socket_connected(&self) {
        self.sockets.fetch_add(1, Ordering::AcqRel);
    }

    pub fn socket_disconnected(&self) {
        self.sockets.fetch_sub(1, Ordering::AcqRel);
    }

    /// The last 60 complete seconds (the current one excluded), oldest first.
    pub fn figures(&self) -> Figures {
        self.figures_at(now_s())
    }

    fn figures_at(&self, now: i64) -> Figures {
        let ops = (now - SLOTS as i64..now)
            .map(|s| {
                let slot = s.rem_euclid(SLOTS as i64) as usize;
                if self.seconds[slot].load(Ordering::Acquire) == s {
                    self.counts[slot].load(Ordering::Acquire)
                } else {
                    0
                }
            })
            .collect();
        Figures {
            connected_sockets: self.sockets.load(Ordering::Acquire),
            ops_per_second: ops,
        }
    }
}

/// Publishes this pod's figures to Redis every second, and reads all pods'.
///
/// The keys share the hash tag `{<store>}`, so on a Redis Cluster the
/// pipeline that writes them lands on one node; the figures are a few
/// hundred bytes per pod, so one slot per store is plenty.
pub mod shared {
    use super::{Figures, Live};
    use redis::AsyncCommands;
    use std::sync::Arc;

    fn pods_key(store: &str) -> String {
        format!("ss:{{{store}}}:live:pods")
    }

    fn pod_key(store: &str, pod: &str) -> String {
        format!("ss:{{{store}}}:live:pod:{pod}")
    }

    pub async fn publish_forever(
        mut conn: crate::redis_conn::Conn,
        store: String,
        pod: String,
        live: Arc<Live>,
    ) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Ok(json) = serde_json::to_string(&live.figures()) else {
                continue;
            };
            let result: redis::RedisResult<()> = redis::pipe()
                .set_ex(pod_key(&store, &pod), json, 5)
                .sadd(pods_key(&store), &pod)
                .query_async(&mut conn)
                .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "live figures not published");
            }
        }
    }

    /// The sum over the pods that published in the last 5 seconds.
    pub async fn total(
        conn: &mut crate::redis_conn::Conn,
        store: &str,
    ) -> redis::RedisResult<(Figures, usize)> {
        let pods: Vec<String> = conn.smembers(pods_key(store)).await?;
        let mut sum = Figures::default();
        let mut live_pods = 0;
        for pod in pods {
            let json: Option<String> = conn.get(pod_key(store, &pod)).await?;
            match json.and_then(|j| serde_json::from_str::<Figures>(&j).ok()) {
                Some(f) => {
                    sum.add(&f);
                    live_pods += 1;
                }
                None => {
                    let _: redis::RedisResult<()> = conn.srem(pods_key(store), &pod).await;
                }
            }
        }
        Ok((sum, live_pods))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_second_and_forgets_after_a_minute() {
        let live = Live::default();
        for _ in 0..5 {
            live.op_at(1000);
        }
        live.op_at(1001);
        let f = live.figures_at(1002);
        assert_eq!(f.ops_per_second.len(), 60);
        assert_eq!(f.ops_per_second[58..], [5, 1]);
        assert_eq!(f.ops_last_minute(), 6);
        // A minute later the slots are stale.
        assert_eq!(live.figures_at(1062).ops_last_minute(), 0);
        // Reusing a slot restarts its count.
        live.op_at(1060);
        assert_eq!(live.figures_at(1061).ops_per_second[59], 1);
    }

    #[test]
    fn pods_add_up() {
        let mut a = Figures {
            connected_sockets: 2,
            ops_per_second: vec![1, 2],
        };
        a.add(&Figures {
            connected_sockets: 3,
            ops_per_second: vec![10, 20],
        });
        assert_eq!(
            a,
            Figures {
                connected_sockets: 5,
                ops_per_second: vec![11, 22]
            }
        );
    }
}
