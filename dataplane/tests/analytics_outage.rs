//! Kafka stopped while traffic flows: requests still succeed, the failed
//! metric rises, and events flow again once Kafka is back. This stops the
//! shared broker, so it lives in a test binary of its own (cargo runs test
//! binaries one after another).

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::{create_key, postgres_url, send, unique_user, Server};

fn kafka_script(arg: Option<&str>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/kafka-up.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script);
    if let Some(a) = arg {
        cmd.arg(a);
    }
    let out = cmd.output().expect("kafka-up.sh runs");
    assert!(
        out.status.success(),
        "kafka-up.sh {arg:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts Kafka again even if the test fails halfway.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        kafka_script(None);
    }
}

async fn counter(server: &Server, outcome: &str) -> u64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let needle = format!("syncstore_analytics_events_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn put(server: &Server, key: &str, i: usize) {
    let started = Instant::now();
    let status = reqwest::Client::new()
        .put(server.url(&format!("/api/v1/sync-storage/item/k{i}")))
        .header("X-API-Key", key)
        .json(&serde_json::json!({ "value": i }))
        .send()
        .await
        .expect("put")
        .status();
    assert_eq!(status.as_u16(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a request waited on Kafka"
    );
}

async fn user_requests(server: &Server, admin: &str, user: &str) -> i64 {
    let (_, body) = send(
        reqwest::Client::new()
            .get(server.url(&format!("/api/v1/analytics/users/{user}")))
            .header("X-API-Key", admin),
    )
    .await;
    body["totals"]["requests"].as_i64().unwrap_or(-1)
}

async fn wait(what: &str, secs: u64, logs: &[&Server], mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        if Instant::now() > deadline {
            let tails: Vec<String> = logs
                .iter()
                .map(|s| {
                    s.log()
                        .lines()
                        .rev()
                        .take(15)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            panic!(
                "timed out waiting for {what}; logs (newest first):\n{}",
                tails.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn kafka_outage_never_fails_requests_and_recovers() {
    let brokers =
        std::env::var("TEST_KAFKA_BROKERS").expect("TEST_KAFKA_BROKERS (scripts/kafka-up.sh)");
    let store = unique_user("outage");
    let topic = format!("analytics-{store}");
    let db = postgres_url();
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("SYNCSTORE_STORE", store.as_str()),
        ("ANALYTICS_KAFKA_TIMEOUT_MS", "3000"),
    ];
    let serve = Server::start(&env).await;
    let dir = serve.data_dir.path();
    let admin = create_key(
        dir,
        &env,
        &unique_user("admin"),
        &["--scopes", "read,analytics:read"],
    );
    let user = unique_user("u");
    let key = create_key(dir, &env, &user, &[]);
    let consumer =
        Server::start_command("analytics", tempfile::tempdir().expect("dir"), &env).await;

    for i in 0..10 {
        put(&serve, &key, i).await;
    }
    wait("the first events", 60, &[&serve, &consumer], async || {
        user_requests(&serve, &admin, &user).await == 10
    })
    .await;

    kafka_script(Some("stop"));
    let _restart = Restart;
    for i in 10..30 {
        put(&serve, &key, i).await;
    }
    wait(
        "the failed metric to rise",
        30,
        &[&serve, &consumer],
        async || counter(&serve, "failed").await > 0,
    )
    .await;

    kafka_script(None);
    for i in 30..40 {
        put(&serve, &key, i).await;
    }
    // The 10 after the outage arrive; those given up during it do not.
    // Traffic goes on after the outage, as it would: events resume once the
    // producer has reconnected and the consumer has rejoined its group.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut i = 40;
    while user_requests(&serve, &admin, &user).await < 20 {
        put(&serve, &key, i).await;
        i += 1;
        if Instant::now() > deadline {
            panic!(
                "events after the outage never arrived: queued {} produced {} failed {} dropped {}; consumer aggregated {}; counted {}\nconsumer log:\n{}",
                counter(&serve, "queued").await,
                counter(&serve, "produced").await,
                counter(&serve, "failed").await,
                counter(&serve, "dropped").await,
                counter(&consumer, "aggregated").await,
                user_requests(&serve, &admin, &user).await,
                consumer.log().lines().rev().take(10).collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let counted = user_requests(&serve, &admin, &user).await;
    assert!((20..=i as i64).contains(&counted), "{counted}");
    assert!(counter(&serve, "produced").await >= 20);
}
