//! Rate limits and quotas: fixed windows counted in Redis (one atomic script
//! per request, shared by every pod) or in-process without Redis.
//!
//! Each request counts against the global `RATE_LIMIT_MAX_REQUESTS` per
//! `RATE_LIMIT_WINDOW_MS` window, once for its key and once for its user,
//! and against the key's own per-minute/hour/day/month quotas. Windows are
//! aligned to the epoch, so every pod agrees on where one starts.
//!
//! On a Redis Cluster a script may only touch keys of one slot, so each
//! counter's key carries a hash tag: `{u:<user>}` for the user's counter,
//! `{k:<key id>}` for the key's rate and quota counters. A request's
//! counters are counted with one script call per tag, each atomic in its
//! slot; counters of different tags never needed to change together (every
//! counter is bumped unconditionally, and each one alone decides).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use super::Principal;
use crate::{error::ApiError, metrics::Metrics, storage::now_ms, telemetry::throttle::Throttle};

/// Which kind of limit a counter enforces (it decides the error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rate,
    Quota,
}

/// One counter to bump for a request.
#[derive(Debug, Clone)]
struct Counter {
    id: String,
    max: u64,
    window_ms: u64,
    kind: Kind,
}

pub use crate::domain::RateInfo;

/// Windows of the four key quotas, in the order of `ApiKey::quotas`.
const QUOTA_WINDOWS_MS: [u64; 4] = [60_000, 3_600_000, 86_400_000, 30 * 86_400_000];

const SCRIPT: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ARGV[i]) end
  out[i] = n
end
return out
"#;

enum Store {
    /// Counter id → (count, when its window ends in Unix ms).
    Local(Mutex<HashMap<String, (u64, u64)>>),
    Redis {
        conn: crate::redis_conn::Conn,
        script: redis::Script,
        timeout: Duration,
    },
}

#[derive(Clone)]
pub struct Limiter {
    store: Arc<Store>,
    prefix: String,
    window: Duration,
    max_requests: u64,
    metrics: Arc<Metrics>,
    usage: super::usage::Usage,
}

impl Limiter {
    pub fn local(window: Duration, max_requests: u64, metrics: Arc<Metrics>) -> Self {
        Self {
            store: Arc::new(Store::Local(Mutex::new(HashMap::new()))),
            prefix: String::new(),
            window,
            max_requests,
            metrics,
            usage: Default::default(),
        }
    }

    /// Counters in Redis, shared by every pod. The script is loaded here,
    /// so the first requests do not each pay `NOSCRIPT` and a reload; a
    /// check that waits longer than `timeout` allows the request (the API
    /// stays up when Redis does not) and is counted as a timeout.
    pub async fn redis(
        mut conn: crate::redis_conn::Conn,
        store: &str,
        window: Duration,
        max_requests: u64,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, redis::RedisError> {
        let script = redis::Script::new(SCRIPT);
        script.prepare_invoke().load_async(&mut conn).await?;
        Ok(Self {
            store: Arc::new(Store::Redis {
                conn,
                script,
                timeout,
            }),
            prefix: format!("ss:{store}:rl:"),
            window,
            max_requests,
            metrics,
            usage: Default::default(),
        })
    }

    fn counters(&self, who: &Principal, now: u64) -> Vec<Counter> {
        let window_ms = u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut counters = vec![Counter {
            id: format!("{{u:{}}}", who.user_id),
            max: self.max_requests,
            window_ms,
            kind: Kind::Rate,
        }];
        // A key's own counter counts its direct use only: the users of the
        // tokens it issued each have theirs (the user counter), so one
        // user's traffic never locks out the others.
        if who.credential == super::Credential::ApiKey {
            counters.push(Counter {
                id: format!("{{k:{}}}", who.key.id),
                max: self.max_requests,
                window_ms,
                kind: Kind::Rate,
            });
        }
        for (i, quota) in who.key.quotas.iter().enumerate() {
            if let Some(max) = quota.and_then(|q| u64::try_from(q).ok()) {
                counters.push(Counter {
                    id: format!("{{k:{}}}:q{i}", who.key.id),
                    max,
                    window_ms: QUOTA_WINDOWS_MS[i],
                    kind: Kind::Quota,
                });
            }
        }
        for c in &mut counters {
            let start = now - now % c.window_ms;
            c.id = format!("{}{}:{start}", self.prefix, c.id);
        }
        counters
    }

    /// The per-key usage counters this limiter feeds.
    pub fn usage(&self) -> &super::usage::Usage {
        &self.usage
    }

    /// Counts one request of `who`; refuses it when any limit is spent.
    pub async fn admit(&self, who: &Principal) -> Result<RateInfo, ApiError> {
        self.usage.add(&who.key.id);
        let now = u64::try_from(now_ms()).unwrap_or(0);
        let counters = self.counters(who, now);
        let counts = match self.count(&counters).await {
            Some(c) => c,
            // Fail open: an unreachable Redis must not take the API down.
            None => {
                self.decided("unchecked");
                return Ok(RateInfo {
                    limit: self.max_requests,
                    remaining: self.max_requests,
                    reset_secs: 0,
                });
            }
        };
        let mut tightest: Option<(RateInfo, Kind, bool)> = None;
        for (c, n) in counters.iter().zip(counts) {
            let reset_secs = (c.window_ms - now % c.window_ms).div_ceil(1000);
            let info = RateInfo {
                limit: c.max,
                remaining: c.max.saturating_sub(n),
                reset_secs,
            };
            let exceeded = n > c.max;
            let tighter = match &tightest {
                None => true,
                Some((t, _, t_exceeded)) => {
                    (exceeded && !t_exceeded)
                        || (exceeded == *t_exceeded && info.remaining < t.remaining)
                }
            };
            if tighter {
                tightest = Some((info, c.kind, exceeded));
            }
        }
        match tightest {
            Some((info, kind, true)) => {
                self.decided(if kind == Kind::Quota {
                    "quota_exceeded"
                } else {
                    "rate_limited"
                });
                Err(ApiError::RateLimited {
                    quota: kind == Kind::Quota,
                    info,
                })
            }
            Some((info, _, false)) => {
                self.decided("allowed");
                Ok(info)
            }
            None => {
                self.decided("allowed");
                Ok(RateInfo {
                    limit: self.max_requests,
                    remaining: self.max_requests,
                    reset_secs: 0,
                })
            }
        }
    }

    /// Counts one decision in `syncstore_rate_limit_decisions_total`.
    fn decided(&self, outcome: &str) {
        self.metrics
            .rate_limit_decisions
            .with_label_values(&[outcome])
            .inc();
    }

    async fn count(&self, counters: &[Counter]) -> Option<Vec<u64>> {
        match self.store.as_ref() {
            Store::Local(map) => {
                let now = u64::try_from(now_ms()).unwrap_or(0);
                let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
                if map.len() > 100_000 {
                    // Windows that have ended are never read again.
                    map.retain(|_, (_, ends)| *ends > now);
                }
                Some(
                    counters
                        .iter()
                        .map(|c| {
                            let ends = now - now % c.window_ms + c.window_ms;
                            let (n, _) = map.entry(c.id.clone()).or_insert((0, ends));
                            *n += 1;
                            *n
                        })
                        .collect(),
                )
            }
            Store::Redis {
                conn,
                script,
                timeout,
            } => {
                let groups = slot_groups(counters);
                let calls = groups.iter().map(|group| {
                    let mut invocation = script.prepare_invoke();
                    for &i in group {
                        invocation.key(&counters[i].id).arg(counters[i].window_ms);
                    }
                    let mut conn = conn.clone();
                    async move { invocation.invoke_async::<Vec<u64>>(&mut conn).await }
                });
                let reply =
                    tokio::time::timeout(*timeout, futures_util::future::try_join_all(calls)).await;
                let reason = match reply {
                    Ok(Ok(replies)) => {
                        let mut counts = vec![0; counters.len()];
                        for (group, reply) in groups.iter().zip(replies) {
                            for (&i, n) in group.iter().zip(reply) {
                                counts[i] = n;
                            }
                        }
                        return Some(counts);
                    }
                    Ok(Err(e)) if e.is_timeout() => "timeout",
                    Err(_) => "timeout",
                    Ok(Err(e)) => {
                        // Every request fails the same way while Redis is
                        // down; the metric counts each, the log one a minute.
                        static LOG: Throttle = Throttle::new(Duration::from_secs(60));
                        if let Some(suppressed) = LOG.admit() {
                            tracing::warn!(error = %e, suppressed, "rate limiter cannot reach Redis; allowing");
                        }
                        "unreachable"
                    }
                };
                self.metrics
                    .rate_limit_errors
                    .with_label_values(&[reason])
                    .inc();
                None
            }
        }
    }
}

/// The counters' indexes grouped by hash tag, in order of first appearance: one
/// script call each, so no call spans two Cluster slots.
fn slot_groups(counters: &[Counter]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, c) in counters.iter().enumerate() {
        let tag = hash_tag(&c.id);
        match groups.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, g)) => g.push(i),
            None => groups.push((tag, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// What Redis Cluster hashes of a key: the text between the first `{` and
/// the next `}` when that is not empty, else the whole key.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(len) = key[open + 1..].find('}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ApiKey, Scope};

    #[test]
    fn a_requests_counters_split_into_one_script_call_per_slot() {
        let mut l = limiter(10);
        l.prefix = "ss:shop:rl:".into();
        let p = principal("alice", "key1", [Some(5), None, Some(7), None]);
        let counters = l.counters(&p, 120_000);
        let ids: Vec<&str> = counters.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "ss:shop:rl:{u:alice}:0",
                "ss:shop:rl:{k:key1}:0",
                "ss:shop:rl:{k:key1}:q0:120000",
                "ss:shop:rl:{k:key1}:q2:0"
            ]
        );
        assert_eq!(slot_groups(&counters), [vec![0], vec![1, 2, 3]]);
        // Braces in a user id cannot split one group over two slots: every
        // key of a group starts with the same text up to its tag's end.
        let odd = principal("a}b{c", "k}", [Some(1), None, None, None]);
        let counters = l.counters(&odd, 0);
        assert_eq!(
            counters.iter().map(|c| hash_tag(&c.id)).collect::<Vec<_>>(),
            ["u:a", "k:k", "k:k"]
        );
        assert_eq!(slot_groups(&counters), [vec![0], vec![1, 2]]);
    }

    #[test]
    fn hash_tags_follow_the_cluster_rule() {
        assert_eq!(hash_tag("a{b}c"), "b");
        assert_eq!(hash_tag("a{}c{d}"), "a{}c{d}");
        assert_eq!(hash_tag("abc"), "abc");
        assert_eq!(hash_tag("a{b"), "a{b");
    }

    fn principal(user: &str, key: &str, quotas: [Option<i64>; 4]) -> Principal {
        let key = ApiKey {
            id: key.into(),
            name: "k".into(),
            key_hash: String::new(),
            user_id: user.into(),
            is_active: true,
            expires_at: None,
            can_read: true,
            can_write: true,
            scopes: vec![Scope::Read],
            restrictions: Default::default(),
            quotas,
        };
        Principal {
            user_id: user.into(),
            key: Arc::new(key),
            credential: crate::auth::Credential::ApiKey,
        }
    }

    fn limiter(max: u64) -> Limiter {
        Limiter::local(
            Duration::from_secs(3600),
            max,
            Arc::new(Metrics::new().unwrap()),
        )
    }

    #[tokio::test]
    async fn the_tightest_limit_decides_and_names_itself() {
        let l = limiter(3);
        let p = principal("u", "k", [None, Some(2), None, None]);
        let first = l.admit(&p).await.unwrap();
        assert_eq!(
            (first.limit, first.remaining),
            (2, 1),
            "the hourly quota of 2 is tighter than 3"
        );
        l.admit(&p).await.unwrap();
        match l.admit(&p).await {
            Err(ApiError::RateLimited { quota: true, info }) => {
                assert_eq!((info.limit, info.remaining), (2, 0))
            }
            other => panic!("expected QUOTA_EXCEEDED, got {other:?}"),
        }
        // The user counter is spent too (3 counted), whatever key comes next.
        match l.admit(&principal("u", "other-key", [None; 4])).await {
            Err(ApiError::RateLimited { quota: false, .. }) => {}
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
        assert!(l.admit(&principal("v", "third", [None; 4])).await.is_ok());
    }

    #[tokio::test]
    async fn every_decision_is_counted_by_outcome() {
        let l = limiter(2);
        let p = principal("u", "k", [None; 4]);
        l.admit(&p).await.unwrap();
        l.admit(&p).await.unwrap();
        assert!(l.admit(&p).await.is_err());
        let q = principal("v", "q", [None, Some(1), None, None]);
        l.admit(&q).await.unwrap();
        assert!(l.admit(&q).await.is_err());
        let count = |outcome: &str| {
            l.metrics
                .rate_limit_decisions
                .with_label_values(&[outcome])
                .get()
        };
        assert_eq!(
            [
                count("allowed"),
                count("rate_limited"),
                count("quota_exceeded"),
                count("unchecked")
            ],
            [3, 1, 1, 0]
        );
    }

    #[tokio::test]
    async fn ended_windows_are_evicted_not_live_ones() {
        let l = limiter(1_000_000);
        let Store::Local(map) = l.store.as_ref() else {
            unreachable!()
        };
        {
            let mut m = map.lock().unwrap();
            for i in 0..100_001 {
                m.insert(format!("old-{i}"), (1, 1)); // ended long ago
            }
            m.insert("live".into(), (5, u64::MAX));
        }
        l.admit(&principal("u", "k", [None; 4])).await.unwrap();
        let m = map.lock().unwrap();
        assert!(m.contains_key("live") && !m.contains_key("old-0"));
    }
}
