//! Connections to Redis in its forms: one server (`redis://`,
//! `redis+unix://`) or a Redis Cluster (`redis+cluster://h1:7000,h2:7001`).
//! TLS (`rediss://`) is refused until this build has it.
//!
//! [`Target`] is the parsed, validated form of `REDIS_URL` (pure, so its
//! rules are unit-tested); [`Conn`] is a command connection to either form
//! that the limiter, the live figures and the publisher share. A cluster
//! connection follows `MOVED`/`ASK` and refreshes its slot map after a
//! failover by itself; fan-out's subscriptions need more care and live in
//! `fanout::redis_cluster`.
//!
//! The URLs hold passwords: [`Target`]'s `Debug` and [`Target::describe`]
//! never print them.

use std::time::Duration;

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    Cmd, Pipeline, RedisFuture, Value,
};

use crate::domain::Secret;

/// Where Redis is.
#[derive(Clone)]
pub enum Target {
    /// One server, by its URL.
    Single(Secret),
    /// A Redis Cluster, by seed nodes: one URL per node, each carrying the
    /// credentials and TLS scheme of the whole cluster. The rest of the
    /// topology is discovered (`CLUSTER SLOTS`).
    Cluster(Vec<Secret>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Target {
    /// Parses `REDIS_URL`. A cluster is written
    /// `redis+cluster://[user[:password]@]host:port[,host:port…][/db][?query]`;
    /// `redis://` or `redis+unix://` is one server. TLS (`rediss://`) is
    /// refused: this build has no TLS to Redis.
    pub fn parse(url: &str) -> Result<Target, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("must be a URL such as redis://host:6379".into());
        };
        let node_scheme = match scheme.to_ascii_lowercase().as_str() {
            "redis" | "redis+unix" => return Ok(Target::Single(Secret::new(url))),
            "redis+cluster" => "redis",
            // Refused here rather than at connect time, where the `redis`
            // crate (built without its TLS features) answers "the feature
            // is not enabled" after startup has begun (issue 19 §3).
            "rediss" | "rediss+cluster" => {
                return Err(
                    "TLS to Redis (rediss://) is not supported yet: use redis:// \
                     on a trusted network, or a TLS proxy beside the pod"
                        .into(),
                )
            }
            _ => return Err("must start with redis://, redis+unix:// or redis+cluster://".into()),
        };
        // Userinfo may hold '@', ',' or '/' only percent-encoded, as in any URL.
        let (auth, hosts_and_tail) = match rest.rsplit_once('@') {
            Some((auth, tail)) => (format!("{auth}@"), tail),
            None => (String::new(), rest),
        };
        let split = hosts_and_tail
            .find(['/', '?'])
            .unwrap_or(hosts_and_tail.len());
        let (hosts, tail) = hosts_and_tail.split_at(split);
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            let host = host.trim();
            let port_ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(format!(
                    "cluster node {host:?} must be host:port (e.g. redis+cluster://10.0.0.1:7000,10.0.0.2:7000)"
                ));
            }
            nodes.push(Secret::new(format!("{node_scheme}://{auth}{host}{tail}")));
        }
        Ok(Target::Cluster(nodes))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// The target without credentials, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            Target::Single(url) => format!("redis {}", redact(url.expose())),
            Target::Cluster(nodes) => format!(
                "redis cluster [{}]",
                nodes
                    .iter()
                    .map(|n| redact(n.expose()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// A cluster client with our timeouts; `push` receives pub/sub
    /// messages and confirmations (RESP3), when given.
    pub fn cluster_client(
        nodes: &[Secret],
        timeout: Duration,
        push: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> redis::RedisResult<ClusterClient> {
        let mut builder = ClusterClientBuilder::new(nodes.iter().map(|n| n.expose().to_string()))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            // A failover takes the cluster a few seconds (node timeout and
            // election): retry that long, not the default half second.
            .retries(8)
            .min_retry_wait(50)
            .max_retry_wait(1000);
        if let Some(push) = push {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(push);
        }
        builder.build()
    }

    /// A command connection that reconnects by itself; fails when Redis
    /// cannot be reached now.
    pub async fn connect(&self, timeout: Duration) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout));
                let client = redis::Client::open(url.expose())?;
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            Target::Cluster(nodes) => Ok(Conn::Cluster(
                Self::cluster_client(nodes, timeout, None)?
                    .get_async_connection()
                    .await?,
            )),
        }
    }
}

/// A URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://***@{host}"),
            },
            None => url.to_string(),
        },
        None => "***".into(),
    }
}

/// A command connection to one server or to a cluster. Cheap to clone;
/// clones share the connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(t: &Target) -> Vec<String> {
        match t {
            Target::Cluster(n) => n.iter().map(|s| s.expose().to_string()).collect(),
            Target::Single(u) => vec![u.expose().to_string()],
        }
    }

    #[test]
    fn a_cluster_url_becomes_one_url_per_seed_node_with_the_shared_credentials() {
        let t = Target::parse("redis+cluster://app:s3cret@h1:7000,h2:7001/0?protocol=3").unwrap();
        assert!(t.is_cluster());
        assert_eq!(
            nodes(&t),
            [
                "redis://app:s3cret@h1:7000/0?protocol=3",
                "redis://app:s3cret@h2:7001/0?protocol=3"
            ]
        );
        let plain = Target::parse("redis+cluster://127.0.0.1:7000").unwrap();
        assert_eq!(nodes(&plain), ["redis://127.0.0.1:7000"]);
    }

    #[test]
    fn single_server_urls_stay_as_they_are() {
        for url in [
            "redis://h:6379/2",
            "redis://u:p@h:6380",
            "redis+unix:///run/redis.sock",
        ] {
            let t = Target::parse(url).unwrap();
            assert!(!t.is_cluster());
            assert_eq!(nodes(&t), [url]);
        }
    }

    #[test]
    fn bad_cluster_nodes_and_schemes_are_refused_by_name() {
        let e = Target::parse("redis+cluster://h1:7000,h2").unwrap_err();
        assert!(e.contains("\"h2\""), "{e}");
        assert!(Target::parse("redis+cluster://h1:0").is_err());
        assert!(Target::parse("redis+cluster://:7000").is_err());
        assert!(Target::parse("http://h:1")
            .unwrap_err()
            .contains("redis+cluster://"));
        assert!(Target::parse("h:6379").is_err());
        // No TLS in this build: refused before startup, not at connect.
        for tls in ["rediss://u:p@h:6380", "rediss+cluster://u:p@h1:7000"] {
            let e = Target::parse(tls).unwrap_err();
            assert!(
                e.starts_with("TLS to Redis (rediss://) is not supported yet"),
                "{e}"
            );
            assert!(!e.contains(":p@"), "{e}");
        }
    }

    #[test]
    fn descriptions_never_show_the_password() {
        let t = Target::parse("redis+cluster://app:s3cret@h1:7000,h2:7001").unwrap();
        let shown = format!("{t:?} {}", t.describe());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            t.describe(),
            "redis cluster [redis://app:***@h1:7000, redis://app:***@h2:7001]"
        );
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
