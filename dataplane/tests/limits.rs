//! Rate limits and quotas: 429 with its code and headers, and a quota held
//! exactly across two processes sharing Redis.

mod common;

use common::{redis::PrivateRedis, unique_user, Server};
use reqwest::{Client, StatusCode};
use serde_json::Value;

async fn get(http: &Client, server: &Server, key: &str) -> reqwest::Response {
    http.get(server.url("/api/v1/sync-storage/keys"))
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
}

/// The Redis Cluster started by `scripts/redis-cluster-up.sh` (the test
/// command exports its seed nodes), as a `REDIS_URL`.
fn cluster_url() -> String {
    let nodes = std::env::var("TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
        panic!("TEST_REDIS_CLUSTER is not set: run scripts/redis-cluster-up.sh (the test command does)")
    });
    format!("redis+cluster://{nodes}")
}

/// The Sentinel setup started by `scripts/redis-sentinel-up.sh` (the test
/// command exports its `REDIS_URL`).
fn sentinel_url() -> String {
    std::env::var("TEST_REDIS_SENTINEL").unwrap_or_else(|_| {
        panic!("TEST_REDIS_SENTINEL is not set: run scripts/redis-sentinel-up.sh (the test command does)")
    })
}

#[tokio::test]
async fn a_key_quota_holds_exactly_across_two_processes_sharing_redis() {
    let redis = PrivateRedis::start();
    quota_holds_exactly(&redis.url()).await;
}

/// On a cluster the key's counters share a hash tag, so the script that
/// counts them stays one atomic call on the slot's master.
#[tokio::test]
async fn a_key_quota_holds_exactly_across_two_processes_on_a_redis_cluster() {
    quota_holds_exactly(&cluster_url()).await;
}

/// Behind Sentinel both processes count on the master it names.
#[tokio::test]
async fn a_key_quota_holds_exactly_across_two_processes_behind_redis_sentinel() {
    quota_holds_exactly(&sentinel_url()).await;
}

/// Over TLS (`rediss://`), verified against the test CA.
#[tokio::test]
async fn a_key_quota_holds_exactly_across_two_processes_over_tls() {
    let redis = PrivateRedis::start_tls();
    quota_holds_exactly_with(&redis.url(), &[("REDIS_TLS_CA_FILE", &test_ca())]).await;
}

/// A cluster over TLS (`rediss+cluster://`): the test cluster serves TLS
/// on each node's port + 1000, and tells TLS clients those ports.
#[tokio::test]
async fn a_key_quota_holds_exactly_across_two_processes_on_a_redis_cluster_over_tls() {
    quota_holds_exactly_with(&cluster_tls_url(), &[("REDIS_TLS_CA_FILE", &test_ca())]).await;
}

fn test_ca() -> String {
    format!("{}/ca.pem", common::redis::tls_certs())
}

/// [`cluster_url`] over TLS.
fn cluster_tls_url() -> String {
    let nodes: Vec<String> = cluster_url()
        .trim_start_matches("redis+cluster://")
        .split(',')
        .map(|n| {
            let (host, port) = n.rsplit_once(':').expect("host:port");
            format!("{host}:{}", port.parse::<u16>().expect("port") + 1000)
        })
        .collect();
    format!("rediss+cluster://{}", nodes.join(","))
}

async fn quota_holds_exactly(url: &str) {
    quota_holds_exactly_with(url, &[]).await;
}

async fn quota_holds_exactly_with(url: &str, extra: &[(&str, &str)]) {
    let pg = common::postgres_url();
    let mut env = vec![("DATABASE_URL", pg.as_str()), ("REDIS_URL", url)];
    env.extend_from_slice(extra);
    let a = Server::start(&env).await;
    let b = Server::start(&env).await;
    let key = common::create_key(
        a.data_dir.path(),
        &env,
        &unique_user("quota"),
        &["--quota-per-hour", "7"],
    );
    let http = Client::new();
    let mut ok = 0;
    for i in 0..7 {
        let server = if i % 2 == 0 { &a } else { &b };
        let r = get(&http, server, &key).await;
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"],
            (6 - i).to_string().as_str()
        );
        ok += 1;
    }
    assert_eq!(ok, 7);
    for server in [&a, &b] {
        let r = get(&http, server, &key).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(r.headers().contains_key("retry-after"));
        assert_eq!(r.headers()["x-ratelimit-limit"], "7");
        assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "QUOTA_EXCEEDED");
    }
}

#[tokio::test]
async fn the_global_rate_limit_counts_per_key_and_per_user_in_process() {
    let server = Server::start(&[
        ("RATE_LIMIT_MAX_REQUESTS", "3"),
        ("RATE_LIMIT_WINDOW_MS", "3600000"),
    ])
    .await;
    let http = Client::new();
    let user = unique_user("rl");
    let k1 = server.create_key(&user, &[]);
    let k2 = server.create_key(&user, &[]);
    for _ in 0..3 {
        assert_eq!(get(&http, &server, &k1).await.status(), StatusCode::OK);
    }
    let r = get(&http, &server, &k1).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "RATE_LIMITED");
    // Another key of the same user: the user's own counter is spent too.
    assert_eq!(
        get(&http, &server, &k2).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another user is unaffected.
    let other = server.create_key(&unique_user("rl2"), &[]);
    assert_eq!(get(&http, &server, &other).await.status(), StatusCode::OK);
}

/// A cold burst (fresh Redis, fresh processes, 100 concurrent requests over
/// two of them) admits exactly the quota: the limiter is connected and its
/// script loaded before serving, and a slow first reply is waited for
/// (`RATE_LIMIT_REDIS_TIMEOUT_MS`) rather than failing open.
#[tokio::test]
async fn a_cold_burst_over_two_processes_admits_exactly_the_quota() {
    let redis = PrivateRedis::start();
    cold_burst_admits_exactly(&redis.url()).await;
}

#[tokio::test]
async fn a_cold_burst_over_two_processes_on_a_redis_cluster_admits_exactly_the_quota() {
    cold_burst_admits_exactly(&cluster_url()).await;
}

async fn cold_burst_admits_exactly(url: &str) {
    let pg = common::postgres_url();
    let env = [("DATABASE_URL", pg.as_str()), ("REDIS_URL", url)];
    let a = Server::start(&env).await;
    let b = Server::start(&env).await;
    let key = common::create_key(
        a.data_dir.path(),
        &env,
        &unique_user("burst"),
        &["--quota-per-hour", "12"],
    );
    let http = Client::new();
    let requests = (0..100).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        get(&http, server, &key)
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let admitted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((admitted, refused), (12, 88));
    // Nothing was allowed for want of an answer.
    for server in [&a, &b] {
        let metrics = http
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !metrics
                .lines()
                .any(|l| l.starts_with("syncstore_rate_limit_errors_total{") && !l.ends_with(" 0")),
            "{metrics}"
        );
    }
}
