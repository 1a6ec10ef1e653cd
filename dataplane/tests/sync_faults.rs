//! Sync faults from the field (issue 14), against the real binary on SQLite
//! and PostgreSQL.

mod common;

use common::{unique_user, Server};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

async fn start(backend: &str) -> Server {
    Server::with_database(common::database_url(backend), &[]).await
}

fn create_key(server: &Server, user: &str) -> String {
    server.create_key(user, &["--scopes", "read,write"])
}

/// §4: phone writes `x` at T-20 s and removes it; the tablet, offline, later
/// sends a blind write stamped T-10 s. The removal stands, and the outcome
/// is recorded as a conflict.
async fn an_older_blind_write_does_not_undo_a_newer_removal(backend: &str) {
    let server = start(backend).await;
    let http = Client::new();
    let user = unique_user("tomb");
    let key = create_key(&server, &user);
    let url = server.url("/api/v1/sync-storage/item/x");
    let now = chrono::Utc::now().timestamp_millis();
    let send = |req: reqwest::RequestBuilder, instance: &str| {
        common::send(
            req.header("X-API-Key", &key)
                .header("X-Instance-Id", instance),
        )
    };
    let (s, _) = send(
        http.put(&url)
            .json(&json!({"value": 1, "timestamp": now - 20_000})),
        "phone",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = send(http.delete(&url), "phone").await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = send(
        http.put(&url)
            .json(&json!({"value": 2, "timestamp": now - 10_000})),
        "tablet",
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str(), b["status"].as_str()),
        (
            StatusCode::CONFLICT,
            Some("VERSION_CONFLICT"),
            Some("rejected")
        ),
        "{b}"
    );
    assert!(b["conflictId"].is_string(), "{b}");
    let (s, _) = send(http.get(&url), "phone").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the key stays removed");
    let (s, history) = send(
        http.get(server.url("/api/v1/sync-storage/conflicts/history/x")),
        "phone",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    // A write made after the removal re-creates the key.
    let (s, b) = send(http.put(&url).json(&json!({"value": 3})), "tablet").await;
    assert_eq!(
        (s, b["status"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{b}"
    );
}

#[tokio::test]
async fn an_older_blind_write_does_not_undo_a_newer_removal_sqlite() {
    an_older_blind_write_does_not_undo_a_newer_removal("sqlite").await;
}

#[tokio::test]
async fn an_older_blind_write_does_not_undo_a_newer_removal_postgres() {
    an_older_blind_write_does_not_undo_a_newer_removal("postgres").await;
}

/// §9: every request served before SIGTERM is counted in analytics: the
/// server stops accepting, drains, flushes the embedded aggregator and the
/// audit trail, and only then closes the database.
#[tokio::test]
async fn analytics_of_requests_served_before_sigterm_are_all_counted() {
    let mut server = Server::start(&[]).await;
    let http = Client::new();
    let user = unique_user("term");
    let key = create_key(&server, &user);
    for i in 0..40 {
        let r = http
            .put(server.url(&format!("/api/v1/sync-storage/item/k{i}")))
            .header("X-API-Key", &key)
            .json(&json!({"value": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::task::spawn_blocking(move || {
        let status = server.child.wait().unwrap();
        (server, status)
    });
    let (mut server, status) = exit.await.unwrap();
    assert!(status.success(), "{status:?}");
    let log = server.log();
    assert!(!log.contains("analytics batch not written"), "{log}");
    assert!(!log.contains("were not written"), "{log}");
    let dir = std::mem::replace(&mut server.data_dir, tempfile::tempdir().unwrap());
    let restarted = Server::start_in(dir, &[]).await;
    let admin = common::create_key(
        restarted.data_dir.path(),
        &[],
        "ops",
        &["--scopes", "read,analytics:read"],
    );
    let r = http
        .get(restarted.url(&format!("/api/v1/analytics/users/{user}")))
        .header("X-API-Key", &admin)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["totals"]["requests"], 40, "{body}");
}

/// §3, the write path: an item past its TTL is removed before a write meets
/// it, whoever removes it: the write itself (`sweep_ms` of an hour: this
/// process's sweeper never runs) or a sweeper first (`sweep_ms` of 100; on a
/// shared database any pod's). A MERGE does not bring its fields back, a
/// lost write's 409 and the conflict history show the removal, not the
/// value, and the expiry takes its own seq.
async fn a_write_never_meets_an_expired_value(backend: &str, sweep_ms: &str) {
    let server = Server::with_database(
        common::database_url(backend),
        &[("TTL_EXPIRY_INTERVAL_MS", sweep_ms)],
    )
    .await;
    let http = Client::new();
    let user = unique_user("expired-write");
    let key = create_key(&server, &user);
    let put = |k: &str, body: Value, instance: &str| {
        let req = http
            .put(server.url(&format!("/api/v1/sync-storage/item/{k}")))
            .header("X-API-Key", &key)
            .header("X-Instance-Id", instance)
            .json(&body);
        common::send(req)
    };
    let (s, first) = put(
        "m",
        json!({"value": {"s": "SECRET", "a": 1}, "ttl": 1}),
        "phone",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let (s, _) = put(
        "f",
        json!({"value": "SECRET", "ttl": 1, "tags": ["SECRETTAG"], "priority": 42}),
        "phone",
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // A write waiting for review when the item expires: resolving it later
    // must not bring the expired value back.
    let (s, _) = put("r", json!({"value": "SECRET", "ttl": 1}), "phone").await;
    assert_eq!(s, StatusCode::OK);
    let (s, review) = put(
        "r",
        json!({"value": "mine", "version": 7, "metadata": {"conflictStrategy": "MANUAL"}}),
        "tablet",
    )
    .await;
    assert_eq!(
        (s, review["status"].as_str()),
        (StatusCode::CONFLICT, Some("pending_review")),
        "{review}"
    );
    let review_id = review["conflictId"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;

    // Based on the expired version, under MERGE: the removal is the current
    // state, so the write re-creates the key with its own fields only.
    let (s, merged) = put(
        "m",
        json!({"value": {"a": 2}, "version": 1, "metadata": {"conflictStrategy": "MERGE"}}),
        "tablet",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{merged}\n{}", server.log());
    assert_eq!(merged["item"]["value"], json!({"a": 2}), "{merged}");
    assert_eq!(merged["item"]["ttl"], Value::Null);
    // The expiry of "m" took a seq of its own after the three writes (4),
    // so the new write has 5, or 6 or 7 if a sweeper expired "f" and "r"
    // first.
    let seq = merged["item"]["seq"].as_i64().unwrap_or_default();
    assert!((5..=7).contains(&seq), "{merged}");

    // A write that loses (FIRST_WRITE_WINS against the removal) shows the
    // removal as the current item.
    let (s, lost) = put(
        "f",
        json!({"value": "new", "version": 1, "metadata": {"conflictStrategy": "FIRST_WRITE_WINS"}}),
        "tablet",
    )
    .await;
    assert_eq!(
        (s, lost["status"].as_str()),
        (StatusCode::CONFLICT, Some("rejected")),
        "{lost}"
    );
    assert_eq!(lost["item"]["isDeleted"], true, "{lost}");
    assert_eq!(lost["item"]["value"], Value::Null);
    assert!(!lost.to_string().contains("SECRET"), "{lost}");
    let history = http
        .get(server.url("/api/v1/sync-storage/conflicts/history/f"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!history.contains("SECRET"), "{history}");
    assert_eq!(lost["item"]["tags"], Value::Null, "{lost}");
    assert_eq!(lost["item"]["priority"], 0, "{lost}");
    for strategy in ["FIRST_WRITE_WINS", "LAST_WRITE_WINS"] {
        let r = http
            .put(server.url(&format!(
                "/api/v1/sync-storage/conflicts/resolve/{review_id}"
            )))
            .header("X-API-Key", &key)
            .json(&json!({"strategy": strategy}))
            .send()
            .await
            .unwrap();
        let (s, b) = (r.status(), r.json::<Value>().await.unwrap());
        assert_eq!(
            (s, b["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("NOT_FOUND")),
            "{b}"
        );
    }
    let r = http
        .get(server.url("/api/v1/sync-storage/item/r"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the expired item stays gone"
    );
    let (s, _) = put("g", json!({"value": 1}), "phone").await;
    assert_eq!(s, StatusCode::OK);
    // The expiry's own instance id is the server's: a client cannot write
    // (or remove) as it.
    let (s, refused) = put("g", json!({"value": 2}), "ttl-cleanup").await;
    assert_eq!(
        (s, refused["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_BODY")),
        "{refused}"
    );
    assert!(refused["message"]
        .as_str()
        .is_some_and(|m| m.contains("X-Instance-Id") && m.contains("TTL expiry")));
}

#[tokio::test]
async fn a_write_never_meets_an_expired_value_sqlite() {
    a_write_never_meets_an_expired_value("sqlite", "3600000").await;
}

#[tokio::test]
async fn a_write_never_meets_a_value_the_sweeper_expired_sqlite() {
    a_write_never_meets_an_expired_value("sqlite", "100").await;
}

#[tokio::test]
async fn a_write_never_meets_an_expired_value_postgres() {
    a_write_never_meets_an_expired_value("postgres", "3600000").await;
}

#[tokio::test]
async fn a_write_never_meets_a_value_the_sweeper_expired_postgres() {
    a_write_never_meets_an_expired_value("postgres", "100").await;
}

#[tokio::test]
async fn a_write_never_meets_an_expired_value_mysql() {
    a_write_never_meets_an_expired_value("mysql", "3600000").await;
}

#[tokio::test]
async fn a_write_never_meets_a_value_the_sweeper_expired_mysql() {
    a_write_never_meets_an_expired_value("mysql", "100").await;
}
