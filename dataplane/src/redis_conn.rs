//! Connections to Redis in its forms: one server (`redis://`,
//! `redis+unix://`), a Redis Cluster (`redis+cluster://h1:7000,h2:7001`) or
//! the master that Redis Sentinel names
//! (`redis+sentinel://s1:26379,s2:26379/mymaster`, the sentinels' own
//! credentials in [`SentinelAuth`]). TLS is `rediss://`, `rediss+cluster://`
//! or `rediss+sentinel://`, verified against the system's roots or the CA
//! file of [`Tls`] (`REDIS_TLS_CA_FILE`).
//!
//! [`Target`] is the parsed, validated form of `REDIS_URL` (pure, so its
//! rules are unit-tested); [`Conn`] is a command connection to either form
//! that the limiter, the live figures and the publisher share. A cluster
//! connection follows `MOVED`/`ASK` and a dropped node by itself; a master
//! that stops answering without closing its connections, and any Sentinel
//! failover, need [`Watched`]'s watch. Fan-out's subscriptions need more care still
//! and live in `fanout::redis_cluster`.
//!
//! The URLs hold passwords: [`Target`]'s `Debug` and [`Target::describe`]
//! never print them.

use std::{
    collections::BTreeSet,
    future::Future,
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    cluster::{ClusterClient, ClusterClientBuilder},
    cluster_async::ClusterConnection,
    cluster_routing::{RoutingInfo, SingleNodeRoutingInfo},
    sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType},
    Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, TlsMode, Value,
};
use tokio::sync::watch;

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
    /// The master Redis Sentinel names `master`, asked of `sentinels`
    /// (`redis://host:port` or `rediss://host:port`, no credentials);
    /// `node` is a URL of no host that carries the credentials, database
    /// and TLS scheme for the master; `auth`, the sentinels' own
    /// credentials (`REDIS_SENTINEL_USERNAME`, `REDIS_SENTINEL_PASSWORD`).
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        node: Secret,
        auth: Option<SentinelAuth>,
    },
}

/// The credentials of the sentinels themselves, when they require any
/// (`requirepass` or an ACL user in sentinel.conf): distinct from the
/// master's, which the URL carries.
#[derive(Clone)]
pub struct SentinelAuth {
    pub username: Option<String>,
    pub password: Secret,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Target {
    /// Parses `REDIS_URL`. A cluster is written
    /// `redis+cluster://[user[:password]@]host:port[,host:port…][/db][?query]`,
    /// Sentinel `redis+sentinel://[user[:password]@]host:port[,host:port…]/master[/db]`
    /// (the credentials are the master's; the sentinels' own, if any, are
    /// added by [`Target::with_sentinel_auth`]); `redis://` or
    /// `redis+unix://` is one server. `rediss://`, `rediss+cluster://` and
    /// `rediss+sentinel://` are the same over TLS (for Sentinel: to the
    /// sentinels and to the master).
    pub fn parse(url: &str) -> Result<Target, String> {
        let target = Self::parse_form(url)?;
        // What the `redis` crate would refuse at connect time (an
        // unencoded '/' or '?' in a password, an unbracketed IPv6 host) is
        // refused now, without echoing the URL.
        let urls: Vec<&str> = match &target {
            Target::Single(url) => vec![url.expose()],
            Target::Cluster(nodes) => nodes.iter().map(|n| n.expose()).collect(),
            Target::Sentinel {
                sentinels, node, ..
            } => sentinels
                .iter()
                .map(String::as_str)
                .chain([node.expose()])
                .collect(),
        };
        for u in urls {
            if u.contains(char::is_whitespace) || u.into_connection_info().is_err() {
                return Err("is not a valid Redis URL: percent-encode '@', '/', '?', '#' and ',' in the user and password, and bracket IPv6 hosts ([::1]:6379)".into());
            }
        }
        Ok(target)
    }

    fn parse_form(url: &str) -> Result<Target, String> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err("must be a URL such as redis://host:6379".into());
        };
        let node_scheme = match scheme.to_ascii_lowercase().as_str() {
            "redis" | "redis+unix" | "rediss" => return Ok(Target::Single(Secret::new(url))),
            "redis+cluster" | "redis+sentinel" => "redis",
            "rediss+cluster" | "rediss+sentinel" => "rediss",
            _ => {
                return Err(
                    "must start with redis://, rediss://, redis+unix://, redis+cluster://, \
                 rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
                        .into(),
                )
            }
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
        let sentinel = scheme.to_ascii_lowercase().ends_with("+sentinel");
        let example = if sentinel {
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster"
        } else {
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"
        };
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            let host = host.trim();
            let port_ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(format!("node {host:?} must be host:port (e.g. {example})"));
            }
            nodes.push(host.to_string());
        }
        if sentinel {
            return sentinel_target(node_scheme, nodes, &auth, tail);
        }
        Ok(Target::Cluster(
            nodes
                .iter()
                .map(|host| Secret::new(format!("{node_scheme}://{auth}{host}{tail}")))
                .collect(),
        ))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// Whether its connections use TLS (`rediss`).
    pub fn uses_tls(&self) -> bool {
        match self {
            Target::Single(url) => url
                .expose()
                .get(..9)
                .is_some_and(|s| s.eq_ignore_ascii_case("rediss://")),
            Target::Cluster(nodes) => nodes.iter().any(|n| n.expose().starts_with("rediss://")),
            Target::Sentinel { node, .. } => node.expose().starts_with("rediss://"),
        }
    }

    /// The target with the sentinels' own credentials; an error for any
    /// target that is not Sentinel's.
    pub fn with_sentinel_auth(mut self, credentials: SentinelAuth) -> Result<Target, String> {
        match &mut self {
            Target::Sentinel { auth, .. } => {
                *auth = Some(credentials);
                Ok(self)
            }
            _ => Err("is set, but REDIS_URL is not a Sentinel URL (redis+sentinel://)".into()),
        }
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
            Target::Sentinel {
                sentinels, master, ..
            } => format!("redis sentinel [{}] master {master}", sentinels.join(", ")),
        }
    }

    /// A cluster client with our timeouts; `push` receives pub/sub
    /// messages and confirmations (RESP3), when given.
    pub fn cluster_client(
        nodes: &[Secret],
        timeout: Duration,
        tls: &Tls,
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
        if let Some(certs) = tls.certificates() {
            builder = builder.certs(certs);
        }
        builder.build()
    }

    /// A command connection that reconnects by itself; fails when Redis
    /// cannot be reached now.
    pub async fn connect(&self, timeout: Duration, tls: &Tls) -> redis::RedisResult<Conn> {
        match self {
            Target::Single(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(timeout))
                    .set_connection_timeout(Some(timeout));
                Ok(Conn::Single(
                    ConnectionManager::new_with_config(tls.client(url)?, config).await?,
                ))
            }
            Target::Cluster(nodes) => Ok(Conn::Cluster(
                Watched::start(
                    Cluster {
                        client: Self::cluster_client(nodes, timeout, tls, None)?,
                    },
                    timeout,
                )
                .await?,
            )),
            Target::Sentinel { .. } => Ok(Conn::Sentinel(
                Watched::start(self.sentinel(timeout, tls)?, timeout).await?,
            )),
        }
    }

    /// The Sentinel locator of a `Target::Sentinel` (an error for others):
    /// the sentinels asked with their own credentials, the master with the
    /// URL's; over TLS to both with `rediss+sentinel://`, verified against
    /// `tls`.
    pub fn sentinel(&self, timeout: Duration, tls: &Tls) -> redis::RedisResult<Sentinel> {
        let Target::Sentinel {
            sentinels,
            master,
            node,
            auth,
        } = self
        else {
            return Err((
                redis::ErrorKind::InvalidClientConfig,
                "not a Sentinel target",
            )
                .into());
        };
        let addrs = sentinels
            .iter()
            .map(|s| Ok(s.as_str().into_connection_info()?.addr().clone()))
            .collect::<redis::RedisResult<Vec<_>>>()?;
        let node = node.expose().into_connection_info()?;
        let settings = node.redis_settings();
        let mut builder = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)?
            .set_client_to_redis_db(settings.db());
        if let Some(user) = settings.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(auth) = auth {
            if let Some(user) = &auth.username {
                builder = builder.set_client_to_sentinel_username(user);
            }
            builder = builder.set_client_to_sentinel_password(auth.password.expose());
        }
        if matches!(node.addr(), ConnectionAddr::TcpTls { .. }) {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certs) = tls.certificates() {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let client = builder.build()?;
        Ok(Sentinel {
            client,
            master: master.clone(),
            asked: None,
            config: ConnectionManagerConfig::new()
                .set_response_timeout(Some(timeout))
                .set_connection_timeout(Some(timeout)),
        })
    }
}

/// `redis+sentinel://auth@hosts/master[/db]` (or `rediss+sentinel`, whose
/// `scheme` is `rediss`) into its parts.
fn sentinel_target(
    scheme: &str,
    hosts: Vec<String>,
    auth: &str,
    tail: &str,
) -> Result<Target, String> {
    if tail.contains('?') {
        return Err("a Sentinel URL takes no query: the database is its last path segment".into());
    }
    let path = tail;
    let mut parts = path.trim_start_matches('/').split('/');
    let master = parts.next().unwrap_or_default();
    let db = parts.next().unwrap_or("0");
    if master.is_empty() || parts.next().is_some() || db.parse::<u32>().is_err() {
        return Err(
            "a Sentinel URL ends with the master's name and an optional database, \
             e.g. redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0"
                .into(),
        );
    }
    Ok(Target::Sentinel {
        sentinels: hosts.iter().map(|h| format!("{scheme}://{h}")).collect(),
        master: master.to_string(),
        node: Secret::new(format!("{scheme}://{auth}localhost/{db}")),
        auth: None,
    })
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

/// `command`, given up after `limit` with a timed-out I/O error: a server
/// that accepts and never answers (a stopped master) holds no caller, and
/// the caller handles the timeout as any other failure.
pub async fn bounded<T>(
    limit: Duration,
    command: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(limit, command)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
}

/// How Redis servers' TLS certificates are verified: against the CA
/// certificates of `REDIS_TLS_CA_FILE` (PEM), or the system's roots.
#[derive(Clone, Default)]
pub struct Tls {
    ca: Option<Vec<u8>>,
}

impl Tls {
    /// Reads the CA file, if any; the error says what is wrong with it.
    pub fn load(ca_file: Option<&std::path::Path>) -> Result<Tls, String> {
        let Some(path) = ca_file else {
            return Ok(Tls::default());
        };
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        check_ca(&pem).map_err(|e| format!("{} {e}", path.display()))?;
        Ok(Tls { ca: Some(pem) })
    }

    fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.ca.clone().map(|root_cert| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        })
    }

    /// A client for one server's URL, trusting the CA file when there is
    /// one (the URL's scheme says whether TLS is used at all).
    pub fn client(&self, url: &Secret) -> redis::RedisResult<redis::Client> {
        match self.certificates() {
            Some(certs) => redis::Client::build_with_tls(url.expose(), certs),
            None => redis::Client::open(url.expose()),
        }
    }
}

/// Checks a PEM CA bundle as the TLS stack will read it: at least one
/// `CERTIFICATE` block, each a certificate that can be a trust anchor.
/// Returns how many there are; the error completes "<the file> …". The
/// operator checks a CA Secret with it too.
pub fn check_ca(pem: &[u8]) -> Result<usize, String> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not valid PEM ({e})"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    for (n, der) in certificates.iter().enumerate() {
        webpki::anchor_from_trusted_cert(der).map_err(|e| {
            format!(
                "holds a certificate (#{}) that is not valid X.509 ({e})",
                n + 1
            )
        })?;
    }
    Ok(certificates.len())
}

/// A command connection to one server, a cluster or Sentinel's master.
/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(Watched<ClusterConnection>),
    Sentinel(Watched<ConnectionManager>),
}

/// How often [`Watched`] asks where the writable nodes are.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Where writes go now, and a connection made for it. One per form that
/// can move: a cluster's masters, Sentinel's master.
pub trait Locate<C>: Send + 'static {
    /// The writable nodes now (`host:port`), or None when nobody says.
    fn locate(&mut self, current: &C) -> impl Future<Output = Option<BTreeSet<String>>> + Send;
    /// A new connection to them.
    fn connect(&mut self) -> impl Future<Output = redis::RedisResult<C>> + Send;
}

/// A connection made again when the nodes that take writes change.
///
/// - On a cluster, the `redis` crate refreshes its slot map only on a
///   redirect or a dropped connection, so a master that stops answering
///   without closing its connections (a paused VM, `SIGSTOP`) keeps every
///   request to its slots timing out long after a replica has taken them
///   over.
/// - With Sentinel, a connection stays with the server it was made to,
///   master or not.
///
/// So every [`WATCH_EVERY`] the locator is asked where writes go; a new
/// answer, given twice in a row so one node's stale view does not count,
/// makes a new connection, and [`Self::rebuilt`] tells its users. Cheap to
/// clone; clones share the connection and its watch, which ends with the
/// last clone.
pub struct Watched<C> {
    current: Arc<RwLock<C>>,
    rebuilt: watch::Receiver<u64>,
}

impl<C> Clone for Watched<C> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
            rebuilt: self.rebuilt.clone(),
        }
    }
}

impl<C: Clone + Send + Sync + 'static> Watched<C> {
    /// Connects now (failing when nothing answers) and starts the watch;
    /// `timeout` bounds each question to the locator.
    pub async fn start<L: Locate<C>>(
        mut locator: L,
        timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let current = Arc::new(RwLock::new(locator.connect().await?));
        let (tx, rebuilt) = watch::channel(0);
        tokio::spawn(watch(locator, Arc::downgrade(&current), tx, timeout));
        Ok(Self { current, rebuilt })
    }

    /// The connection now (a clone sharing it).
    pub fn get(&self) -> C {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes each time the connection was made again; a connection that
    /// carries subscriptions must subscribe them on the new one.
    pub fn rebuilt(&self) -> watch::Receiver<u64> {
        self.rebuilt.clone()
    }
}

/// [`Watched`]'s watch: runs until every clone is dropped.
async fn watch<C: Clone + Send + Sync + 'static, L: Locate<C>>(
    mut locator: L,
    current: Weak<RwLock<C>>,
    rebuilt: watch::Sender<u64>,
    timeout: Duration,
) {
    let mut known: Option<BTreeSet<String>> = None;
    let mut candidate: Option<BTreeSet<String>> = None;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(conn) = current
            .upgrade()
            .map(|c| c.read().unwrap_or_else(|p| p.into_inner()).clone())
        else {
            return;
        };
        let Ok(Some(now)) = tokio::time::timeout(timeout, locator.locate(&conn)).await else {
            continue;
        };
        drop(conn);
        match &known {
            None => known = Some(now),
            Some(k) if *k == now => candidate = None,
            Some(_) if candidate.as_ref() != Some(&now) => candidate = Some(now),
            Some(k) => {
                tracing::warn!(before = ?k, after = ?now, "redis masters changed; reconnecting");
                let fresh = bounded(timeout * 4, locator.connect()).await;
                let (Ok(fresh), Some(current)) = (fresh, current.upgrade()) else {
                    continue; // the next tick tries again
                };
                *current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                rebuilt.send_modify(|n| *n += 1);
                known = Some(now);
                candidate = None;
            }
        }
    }
}

/// A cluster's masters, from its slot map (`CLUSTER SLOTS`, asked of any
/// node that answers).
pub struct Cluster {
    pub client: ClusterClient,
}

impl Locate<ClusterConnection> for Cluster {
    async fn locate(&mut self, current: &ClusterConnection) -> Option<BTreeSet<String>> {
        let reply = current
            .clone()
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .ok()?;
        masters(&reply)
    }

    async fn connect(&mut self) -> redis::RedisResult<ClusterConnection> {
        self.client.get_async_connection().await
    }
}

/// The master Sentinel names (`SENTINEL GET-MASTER-ADDR-BY-NAME`, asked of
/// the first sentinel that answers; a connection to it is kept).
pub struct Sentinel {
    client: SentinelClient,
    master: String,
    asked: Option<MultiplexedConnection>,
    config: ConnectionManagerConfig,
}

impl Sentinel {
    /// A client for the master now: the sentinels name it, and it says it
    /// is one (`ROLE`).
    pub async fn master(&mut self) -> redis::RedisResult<redis::Client> {
        self.client.async_get_client().await
    }
}

impl Locate<ConnectionManager> for Sentinel {
    async fn locate(&mut self, _: &ConnectionManager) -> Option<BTreeSet<String>> {
        if self.asked.is_none() {
            let sentinel = self.client.async_get_sentinel_client().await.ok()?;
            self.asked = sentinel.get_multiplexed_async_connection().await.ok();
        }
        let reply: redis::RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master)
            .query_async(self.asked.as_mut()?)
            .await;
        match reply {
            Ok(addr) => addr.map(|(host, port)| BTreeSet::from([format!("{host}:{port}")])),
            Err(_) => {
                self.asked = None; // ask another sentinel next time
                None
            }
        }
    }

    async fn connect(&mut self) -> redis::RedisResult<ConnectionManager> {
        let client = self.master().await?;
        ConnectionManager::new_with_config(client, self.config.clone()).await
    }
}

/// The masters' `host:port` in a `CLUSTER SLOTS` reply: each entry is
/// `[start, end, [host, port, id, …], replicas…]`.
fn masters(slots: &Value) -> Option<BTreeSet<String>> {
    let Value::Array(entries) = slots else {
        return None;
    };
    entries
        .iter()
        .map(|entry| match entry {
            Value::Array(e) => match e.get(2) {
                Some(Value::Array(node)) => match (node.first(), node.get(1)) {
                    (Some(Value::BulkString(h)), Some(Value::Int(p))) => {
                        Some(format!("{}:{p}", String::from_utf8_lossy(h)))
                    }
                    (Some(Value::SimpleString(h)), Some(Value::Int(p))) => Some(format!("{h}:{p}")),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect()
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
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
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

/// Each command goes to the connection of the moment it is sent.
impl<C: ConnectionLike + Clone + Send + Sync + 'static> ConnectionLike for Watched<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut c = self.get();
        Box::pin(async move { c.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut c = self.get();
        Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        self.get().get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(t: &Target) -> Vec<String> {
        match t {
            Target::Cluster(n) => n.iter().map(|s| s.expose().to_string()).collect(),
            Target::Single(u) => vec![u.expose().to_string()],
            Target::Sentinel {
                sentinels, node, ..
            } => sentinels
                .iter()
                .cloned()
                .chain([node.expose().to_string()])
                .collect(),
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
        // TLS: one server and a cluster; not Sentinel yet.
        let t = Target::parse("rediss+cluster://u:p@h1:7000,h2:7001").unwrap();
        assert_eq!(nodes(&t), ["rediss://u:p@h1:7000", "rediss://u:p@h2:7001"]);
        assert!(t.uses_tls());
        assert!(Target::parse("rediss://u:p@h:6380").unwrap().uses_tls());
        assert!(!Target::parse("redis://h:6380").unwrap().uses_tls());
        // Sentinel over TLS: to the sentinels and to the master.
        let t = Target::parse("rediss+sentinel://u:p@s1:26379/m").unwrap();
        assert_eq!(nodes(&t), ["rediss://s1:26379", "rediss://u:p@localhost/0"]);
        assert!(t.uses_tls());
        assert!(!Target::parse("redis+sentinel://s1:26379/m")
            .unwrap()
            .uses_tls());
    }

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_its_credentials() {
        let t = Target::parse("redis+sentinel://app:s3cret@s1:26379,s2:26380/mymaster/2").unwrap();
        let Target::Sentinel { master, .. } = &t else {
            panic!("{t:?}");
        };
        assert_eq!(master, "mymaster");
        assert_eq!(
            nodes(&t),
            [
                "redis://s1:26379",
                "redis://s2:26380",
                "redis://app:s3cret@localhost/2"
            ]
        );
        assert_eq!(
            t.describe(),
            "redis sentinel [redis://s1:26379, redis://s2:26380] master mymaster"
        );
        let plain = Target::parse("redis+sentinel://s1:26379/m").unwrap();
        assert_eq!(nodes(&plain), ["redis://s1:26379", "redis://localhost/0"]);
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:26379/",
            "redis+sentinel://s1:26379/m/x",
            "redis+sentinel://s1:26379/m/0/extra",
            "redis+sentinel://s1/m",
            "redis+sentinel://s1:26379/m?db=3",
            "redis+sentinel://u:pa/ss@s1:26379/m",
            "redis+sentinel://::1:26379/m",
            "redis://u:p w@h:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sentinel_credentials_go_only_with_a_sentinel_url_and_are_never_shown() {
        let auth = || SentinelAuth {
            username: Some("watcher".into()),
            password: Secret::new("s3ntinel"),
        };
        let t = Target::parse("redis+sentinel://s1:26379/m")
            .unwrap()
            .with_sentinel_auth(auth())
            .unwrap();
        assert!(
            matches!(&t, Target::Sentinel { auth: Some(a), .. } if a.username.as_deref() == Some("watcher"))
        );
        assert!(!format!("{t:?}").contains("s3ntinel"));
        for other in ["redis://h:6379", "redis+cluster://h1:7000"] {
            let e = Target::parse(other)
                .unwrap()
                .with_sentinel_auth(auth())
                .unwrap_err();
            assert!(e.contains("not a Sentinel URL"), "{e}");
        }
    }

    #[test]
    fn a_ca_bundle_must_hold_parsable_certificates() {
        let block = |body: &str| {
            format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
        };
        assert_eq!(check_ca(b"").unwrap_err(), "holds no PEM certificate");
        assert_eq!(check_ca(b"hello").unwrap_err(), "holds no PEM certificate");
        let e = check_ca(block("not base64 !!!").as_bytes()).unwrap_err();
        assert!(e.starts_with("is not valid PEM"), "{e}");
        let e = check_ca(block("AAAA").as_bytes()).unwrap_err();
        assert!(
            e.starts_with("holds a certificate (#1) that is not valid X.509"),
            "{e}"
        );
    }

    #[test]
    fn the_masters_of_a_cluster_slots_reply() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7001),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("127.0.0.1", 7001),
            ]),
        ]);
        let got: Vec<String> = masters(&reply).unwrap().into_iter().collect();
        assert_eq!(got, ["127.0.0.1:7000", "127.0.0.1:7001"]);
        assert_eq!(masters(&Value::Int(1)), None);
        assert_eq!(masters(&Value::Array(vec![Value::Int(1)])), None);
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
