//! Analytics end to end: known traffic through the real binary produces
//! exactly the expected counts in the analytics endpoints, embedded and
//! through a real Kafka broker, across a `kill -9` of the consumer.

mod common;

use std::time::{Duration, Instant};

use common::{create_key, key_id, postgres_url, send, unique_user, Server};
use serde_json::Value;

/// Kafka started by `scripts/kafka-up.sh` (the test command exports it).
fn kafka() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!("TEST_KAFKA_BROKERS is not set: run scripts/kafka-up.sh (the test command does)")
    })
}

async fn get(url: &str, key: &str) -> (u16, Value) {
    let (status, body) = send(reqwest::Client::new().get(url).header("X-API-Key", key)).await;
    (status.as_u16(), body)
}

async fn put(server: &Server, key: &str, item: &str) -> u16 {
    reqwest::Client::new()
        .put(server.url(&format!("/api/v1/sync-storage/item/{item}")))
        .header("X-API-Key", key)
        .header("X-Instance-Id", "laptop")
        .json(&serde_json::json!({ "value": { "n": 1 } }))
        .send()
        .await
        .expect("put")
        .status()
        .as_u16()
}

/// Polls `url` until `check` accepts the body, or panics with the last one.
async fn until(url: &str, key: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, body) = get(url, key).await;
        if status == 200 && check(&body) {
            return body;
        }
        if Instant::now() > deadline {
            panic!("{url} never matched; last answer {status}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn kafka_counts_are_exact_across_a_consumer_crash() {
    let store = unique_user("store");
    let topic = format!("analytics-{store}");
    let brokers = kafka();
    let db = postgres_url();
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("SYNCSTORE_STORE", store.as_str()),
        ("ANALYTICS_BATCH_SIZE", "25"),
        ("ANALYTICS_CONSUMER_BATCH", "25"),
    ];
    let serve = Server::start(&env).await;
    let dir = serve.data_dir.path();
    let admin = create_key(
        dir,
        &env,
        &unique_user("admin"),
        &["--scopes", "read,analytics:read"],
    );
    let user = unique_user("alice");
    let key = create_key(dir, &env, &user, &[]);
    let fenced = create_key(dir, &env, &user, &["--ip", "10.0.0.0/8"]);
    let fenced_id = key_id(&serve, &fenced).await;
    let mut consumer =
        Server::start_command("analytics", tempfile::tempdir().expect("dir"), &env).await;

    for i in 0..30 {
        assert_eq!(put(&serve, &key, &format!("notes%2F{}", i % 3)).await, 200);
    }
    for _ in 0..10 {
        let (status, _) = get(&serve.url("/api/v1/sync-storage/item/todo%2Fa"), &key).await;
        assert_eq!(status, 404);
    }
    for _ in 0..5 {
        assert_eq!(put(&serve, &fenced, "notes%2Fx").await, 403);
    }

    let base = serve.url("/api/v1/analytics");
    let u = until(&format!("{base}/users/{user}"), &admin, 60, |b| {
        b["totals"]["requests"] == 40
    })
    .await;
    assert_eq!(u["totals"]["denials"], 0);
    assert_eq!(u["activeDays"], 1);
    let sec = until(
        &format!("{base}/api-keys/{fenced_id}/security"),
        &admin,
        30,
        |b| b["denials"] == 5,
    )
    .await;
    assert_eq!(
        sec["byReason"][0],
        serde_json::json!({ "reason": "IP_NOT_ALLOWED", "count": 5 })
    );
    assert_eq!(
        sec["byIp"][0],
        serde_json::json!({ "ip": "127.0.0.1", "count": 5 })
    );
    let b = until(&format!("{base}/users/{user}/behavior"), &admin, 30, |b| {
        b["topPrefixes"][0]["count"] == 30
    })
    .await;
    assert_eq!(b["topPrefixes"][0]["prefix"], "notes");
    assert_eq!(
        b["topPrefixes"][1],
        serde_json::json!({ "prefix": "todo", "count": 10 })
    );
    assert_eq!(b["topKeys"][0]["count"], 10);
    let perf = until(
        &format!("{base}/instances/laptop/performance"),
        &admin,
        30,
        |b| b["requests"].as_i64() >= Some(30),
    )
    .await;
    assert!(
        perf["latencyMs"]["p99"].as_f64().is_some_and(|p| p > 0.0),
        "{perf}"
    );

    // A burst, and the consumer killed (SIGKILL) while it works through it.
    let burst = 600;
    let writer = {
        let (base, key) = (serve.base.clone(), key.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..burst {
                let r = client
                    .put(format!("{base}/api/v1/sync-storage/item/burst%2F{}", i % 7))
                    .header("X-API-Key", &key)
                    .json(&serde_json::json!({ "value": i }))
                    .send()
                    .await
                    .expect("put");
                assert_eq!(r.status().as_u16(), 200);
            }
        })
    };
    until(&format!("{base}/users/{user}"), &admin, 60, |b| {
        b["totals"]["requests"].as_i64() > Some(60)
    })
    .await;
    consumer.child.kill().expect("kill -9");
    let _ = consumer.child.wait();
    let after_kill = get(&format!("{base}/users/{user}"), &admin).await.1["totals"]["requests"]
        .as_i64()
        .unwrap_or(0);
    writer.await.expect("burst done");
    assert!(
        after_kill < 40 + burst,
        "the kill must land mid-stream (counted {after_kill})"
    );

    let _consumer =
        Server::start_command("analytics", tempfile::tempdir().expect("dir"), &env).await;
    let expected = 40 + burst;
    until(&format!("{base}/users/{user}"), &admin, 90, |b| {
        b["totals"]["requests"] == expected
    })
    .await;
    // And it stays exact: nothing is counted twice later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, u) = get(&format!("{base}/users/{user}"), &admin).await;
    assert_eq!(u["totals"]["requests"], expected);
    let r = until(&format!("{base}/users/{user}/behavior"), &admin, 10, |_| {
        true
    })
    .await;
    let burst_count: i64 = r["topKeys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| k["key"].as_str().is_some_and(|k| k.starts_with("burst/")))
        .map(|k| k["count"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(burst_count, burst);

    let metrics = reqwest::get(serve.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert_eq!(
        metric(
            &metrics,
            "syncstore_analytics_events_total{outcome=\"dropped\"}"
        ),
        0
    );
}

#[tokio::test]
async fn embedded_analytics_are_exact_and_scoped() {
    let serve = Server::start(&[]).await;
    let dir = serve.data_dir.path();
    let admin = create_key(dir, &[], "ops", &["--scopes", "read,analytics:read"]);
    let alice = create_key(dir, &[], "alice", &[]);
    let bob = create_key(dir, &[], "bob", &[]);
    for i in 0..12 {
        assert_eq!(
            put(&serve, &alice, &format!("settings%2F{}", i % 2)).await,
            200
        );
    }
    assert_eq!(put(&serve, &bob, "x").await, 200);
    let base = serve.url("/api/v1/analytics");
    let u = until(&format!("{base}/users/alice"), &admin, 30, |b| {
        b["totals"]["requests"] == 12
    })
    .await;
    assert!(u["series"].as_array().is_some_and(|s| !s.is_empty()));
    let (status, d) = get(
        &format!(
            "{base}/dashboard?granularity=minute&from={}",
            syncstore::storage::now_ms() - 600_000
        ),
        &admin,
    )
    .await;
    assert_eq!(status, 200);
    assert!(d["totals"]["requests"].as_i64() >= Some(13), "{d}");
    assert!(d["users"]["dau"].as_i64() >= Some(2));
    assert!(d["latencyMs"]["p50"].as_f64().is_some());
    let (status, rt) = get(&format!("{base}/realtime"), &admin).await;
    assert_eq!(status, 200);
    assert_eq!(rt["opsPerSecondSeries"].as_array().map(Vec::len), Some(60));

    // Without analytics:read a caller sees only itself.
    let (status, own) = get(&format!("{base}/users/alice"), &alice).await;
    assert_eq!(status, 200);
    assert_eq!(
        own["totals"]["requests"].as_i64().map(|n| n >= 12),
        Some(true)
    );
    let (status, body) = get(&format!("{base}/users/bob"), &alice).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("SCOPE_REQUIRED"))
    );
    assert_eq!(get(&format!("{base}/dashboard"), &alice).await.0, 403);
    assert_eq!(get(&format!("{base}/realtime"), &alice).await.0, 403);
    let bob_id = key_id(&serve, &bob).await;
    let (status, body) = get(&format!("{base}/api-keys/{bob_id}"), &alice).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "another user's key does not exist for alice"
    );
    assert_eq!(
        get(&format!("{base}/api-keys/{bob_id}"), &admin).await.0,
        200
    );
    // Devices are per user: bob's `laptop` is his own, never alice's.
    let laptop = until(&format!("{base}/instances/laptop"), &bob, 10, |b| {
        b["totals"]["requests"] == 1
    })
    .await;
    assert_eq!(laptop["userId"], "bob");
    assert_eq!(get(&format!("{base}/instances/desktop"), &bob).await.0, 404);

    // Bad parameters are clear errors, never 500s.
    let (status, body) = get(&format!("{base}/users/alice?granularity=fortnight"), &admin).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("INVALID_QUERY"))
    );
    let (status, _) = get(&format!("{base}/users/alice?from=9&to=3"), &admin).await;
    assert_eq!(status, 400);
}

/// Rate-limit and quota refusals are denials by reason (issue 14 §7), in the
/// key's security view and the dashboard, not successes.
#[tokio::test]
async fn rate_limit_and_quota_refusals_are_denials_by_reason() {
    let serve = Server::start(&[]).await;
    let dir = serve.data_dir.path();
    let admin = create_key(dir, &[], "ops", &["--scopes", "admin"]);
    let user = common::unique_user("quota");
    // Per hour rather than per minute: 12 requests never straddle the window.
    let limited = create_key(dir, &[], &user, &["--quota-per-hour", "5"]);
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(put(&serve, &limited, &format!("k{i}")).await);
    }
    assert_eq!(
        (
            statuses.iter().filter(|s| **s == 200).count(),
            statuses.iter().filter(|s| **s == 429).count()
        ),
        (5, 7)
    );
    let list = get(
        &serve.url(&format!("/api/v1/api-keys?userId={user}")),
        &admin,
    )
    .await
    .1;
    let id = list
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["userId"] == user.as_str()))
        .and_then(|k| k["id"].as_str())
        .expect("the key is listed")
        .to_string();
    let url = serve.url(&format!("/api/v1/analytics/api-keys/{id}/security"));
    let security = until(&url, &admin, 30, |b| b["denials"] == 7).await;
    assert_eq!(
        security["byReason"],
        serde_json::json!([{"reason": "QUOTA_EXCEEDED", "count": 7}]),
        "{security}"
    );
}
