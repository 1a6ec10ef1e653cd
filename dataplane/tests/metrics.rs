//! `/metrics` after known actions: each series issue 18 added shows the
//! exact count of what was done, against the real binary (SQLite, and a
//! private Redis that the test stops and starts again).

mod common;

use std::time::{Duration, Instant};

use common::{redis::PrivateRedis, unique_user, ws, Server};
use serde_json::json;

async fn scrape(server: &Server) -> String {
    reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The value of the series written exactly as `series` (name and labels),
/// or None when the scrape does not have it.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

/// Polls the scrape until `series` has `want`.
async fn eventually(server: &Server, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(server).await;
        if value(&text, series) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never became {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads frames until `n` events named `event` have arrived (with or
/// without an ack id).
async fn receive(socket: &mut ws::Ws, event: &str, n: usize) {
    let name = format!("[\"{event}\"");
    let mut seen = 0;
    while seen < n {
        let frame = ws::next_text(socket, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("only {seen} of {n} {event}"));
        let is_event = frame
            .strip_prefix("42/sync,")
            .map(|rest| rest.trim_start_matches(|c: char| c.is_ascii_digit()))
            .is_some_and(|rest| rest.starts_with(&name));
        if is_event {
            seen += 1;
        }
    }
}

async fn device(server: &Server, user: &str, instance: &str, key: &str) -> ws::Ws {
    ws::connect(
        server.port,
        &format!("userId={user}&instanceId={instance}"),
        &json!({ "apiKey": key }),
    )
    .await
    .expect("handshake accepted")
}

#[tokio::test]
async fn deliveries_sockets_limits_and_the_pool_count_what_was_done() {
    let server = Server::start(&[("DB_CONNECTION_LIMIT", "7")]).await;
    let user = unique_user("metrics");
    let key = server.create_key(&user, &["--scopes", "read,write"]);

    // Without Redis, /ready has no Redis field.
    assert_eq!(
        ready(&server).await,
        json!({"status": "ready", "database": "sqlite"})
    );
    let text = scrape(&server).await;
    let version = format!(
        "syncstore_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&text, &version), Some(1.0), "{text}");
    for zero in [
        "syncstore_deliveries_total{path=\"live\"}",
        "syncstore_deliveries_total{path=\"pending\"}",
        "syncstore_fanout_errors_total{operation=\"publish\"}",
        "syncstore_rate_limit_decisions_total{outcome=\"quota_exceeded\"}",
        "syncstore_key_cache_lookups_total{cache=\"hash\",result=\"hit\"}",
        "syncstore_sockets_connected",
    ] {
        assert_eq!(value(&text, zero), Some(0.0), "{zero} starts at 0:\n{text}");
    }
    assert!(
        !text.contains("syncstore_redis_connected"),
        "no Redis, no Redis gauge:\n{text}"
    );

    let mut phone = device(&server, &user, "phone", &key).await;
    let mut laptop = device(&server, &user, "laptop", &key).await;
    receive(&mut laptop, "pending-updates", 1).await;
    let text = eventually(&server, "syncstore_sockets_connected", 2.0).await;
    // The first handshake looked the key up in the database, the second
    // found it cached.
    assert_eq!(
        value(
            &text,
            "syncstore_key_cache_lookups_total{cache=\"hash\",result=\"miss\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            "syncstore_key_cache_lookups_total{cache=\"hash\",result=\"hit\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );

    for k in ["a", "b"] {
        let reply = ws::call(
            &mut phone,
            "sync:set",
            &json!({"key": k, "value": 1}).to_string(),
        )
        .await;
        assert_eq!(reply["status"], "applied", "{reply}");
    }
    receive(&mut laptop, "sync:update", 2).await;
    let text = eventually(&server, "syncstore_deliveries_total{path=\"live\"}", 2.0).await;
    assert_eq!(
        value(&text, "syncstore_delivery_latency_seconds_count"),
        Some(2.0),
        "{text}"
    );
    // Two handshakes and two events, each one check of the limits.
    assert_eq!(
        value(
            &text,
            "syncstore_rate_limit_decisions_total{outcome=\"allowed\"}"
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "syncstore_db_pool_max_connections"),
        Some(7.0),
        "{text}"
    );
    assert!(
        value(&text, "syncstore_db_pool_acquire_duration_seconds_count").is_some_and(|n| n >= 2.0),
        "each write's transaction waited for a connection:\n{text}"
    );
    for idle in [
        "syncstore_sqlite_writer_queue_depth",
        "syncstore_audit_queue_depth",
    ] {
        assert_eq!(value(&text, idle), Some(0.0), "{idle}:\n{text}");
    }

    // A device that was away gets what it missed in `pending-updates`.
    drop(laptop);
    eventually(&server, "syncstore_sockets_connected", 1.0).await;
    for k in ["c", "d", "e"] {
        ws::call(
            &mut phone,
            "sync:set",
            &json!({"key": k, "value": 2}).to_string(),
        )
        .await;
    }
    let _laptop = device(&server, &user, "laptop", &key).await;
    eventually(&server, "syncstore_deliveries_total{path=\"pending\"}", 3.0).await;
    let text = eventually(&server, "syncstore_sockets_connected", 2.0).await;
    assert_eq!(
        value(&text, "syncstore_deliveries_total{path=\"live\"}"),
        Some(2.0),
        "{text}"
    );
}

/// Reads take their connections from the pool too: each is one observed
/// wait, not only the writes' transactions.
#[tokio::test]
async fn every_read_waits_for_a_pooled_connection_in_the_histogram() {
    let server = Server::start(&[]).await;
    let user = unique_user("acquire");
    let key = server.create_key(&user, &["--scopes", "read"]);
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(server.url(path))
            .header("x-api-key", &key)
            .send()
    };
    // The first request looks the key up; later ones find it cached.
    assert_eq!(
        get("/api/v1/sync-storage/items").await.unwrap().status(),
        200
    );
    let count = |text: &str| value(text, "syncstore_db_pool_acquire_duration_seconds_count");
    let before = count(&scrape(&server).await).expect("histogram exported");
    for _ in 0..10 {
        let status = get("/api/v1/sync-storage/item/absent")
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404);
    }
    let after = count(&scrape(&server).await).unwrap();
    assert!(
        after - before >= 10.0,
        "10 reads, {} waits recorded",
        after - before
    );
}

#[tokio::test]
async fn redis_outage_shows_in_the_gauge_errors_and_reconnects() {
    let mut redis = PrivateRedis::start();
    let url = redis.url();
    let server = Server::start(&[("REDIS_URL", url.as_str())]).await;
    let text = eventually(&server, "syncstore_redis_connected", 1.0).await;
    assert_eq!(
        value(
            &text,
            "syncstore_fanout_errors_total{operation=\"connect\"}"
        ),
        Some(0.0),
        "{text}"
    );

    redis.stop();
    let text = eventually(&server, "syncstore_redis_connected", 0.0).await;
    assert_eq!(
        value(&text, "syncstore_redis_reconnects_total"),
        Some(0.0),
        "{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while value(
        &scrape(&server).await,
        "syncstore_fanout_errors_total{operation=\"connect\"}",
    )
    .unwrap_or(0.0)
        < 1.0
    {
        assert!(Instant::now() < deadline, "no connect error counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Still ready (it serves its own sockets), and says why fan-out waits.
    assert_eq!(
        ready(&server).await,
        json!({"status": "ready", "database": "sqlite", "redis": "reconnecting"})
    );

    redis.restart();
    eventually(&server, "syncstore_redis_connected", 1.0).await;
    eventually(&server, "syncstore_redis_reconnects_total", 1.0).await;
    assert_eq!(ready(&server).await["redis"], "connected");
}

/// `GET /ready`, which must answer 200.
async fn ready(server: &Server) -> serde_json::Value {
    let r = reqwest::get(server.url("/ready")).await.expect("ready");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

/// Every series of the scrape whose name starts with `prefix`.
fn series_of(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_string()))
        .collect()
}

#[tokio::test]
async fn methods_and_paths_a_client_makes_up_add_no_series() {
    let server = Server::start(&[]).await;
    let client = reqwest::Client::new();
    let item = server.url("/api/v1/sync-storage/item/k");
    for i in 0..5 {
        let method = reqwest::Method::from_bytes(format!("FOO{i}").as_bytes()).unwrap();
        let status = client.request(method, &item).send().await.unwrap().status();
        assert_eq!(status, 405);
        let path = server.url(&format!("/made-up/{i}/{}", "x".repeat(i * 100)));
        assert_eq!(client.get(path).send().await.unwrap().status(), 404);
    }
    let text = scrape(&server).await;
    assert_eq!(
        value(
            &text,
            "syncstore_http_requests_total{method=\"_OTHER\",route=\"/api/v1/sync-storage/item/{*key}\",status=\"405\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "syncstore_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"
        ),
        Some(5.0),
        "{text}"
    );
    for name in [
        "syncstore_http_requests_total",
        "syncstore_http_request_duration_seconds_count",
    ] {
        let made_up: Vec<String> = series_of(&text, name)
            .into_iter()
            .filter(|s| s.contains("FOO") || s.contains("made-up"))
            .collect();
        assert_eq!(made_up, Vec::<String>::new(), "{text}");
    }
    // One series per (route, method, status) actually seen: the 405s, the
    // 404s and this scrape's predecessors (none).
    assert_eq!(
        series_of(&text, "syncstore_http_requests_total{").len(),
        // /health of the start-up wait, the 405s and the 404s.
        3,
        "{text}"
    );
}
