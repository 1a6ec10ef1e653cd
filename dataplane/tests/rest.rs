//! REST tests against the real `syncstore serve` binary on a free port.

mod common;

use std::time::Duration;

use common::{unique_user, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

struct Api {
    server: Server,
    http: Client,
    key: String,
}

impl Api {
    async fn start(env: &[(&str, &str)]) -> Api {
        let server = Server::start(env).await;
        let key = server.create_key(&unique_user("user"), &[]);
        Api {
            server,
            http: Client::new(),
            key,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.server.url(path));
        if let Some(k) = key {
            req = req.header("X-API-Key", k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A PUT; on success returns the written item (the reply's `item`).
    async fn put(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let (status, reply) = self
            .call(
                Method::PUT,
                &format!("/api/v1/sync-storage/item/{key}"),
                Some(&self.key),
                Some(body),
            )
            .await;
        if status == StatusCode::OK {
            assert!(
                matches!(reply["status"].as_str(), Some("applied" | "merged")),
                "{reply}"
            );
            return (status, reply["item"].clone());
        }
        (status, reply)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&self.key), None).await
    }

    async fn raw_put(&self, key: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let resp = self
            .http
            .put(self.server.url(&format!("/api/v1/sync-storage/item/{key}")))
            .header("X-API-Key", &self.key)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

/// Every error body has exactly message, code and details.
fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(
        status.as_u16(),
        want_status,
        "status for {want_code}: {body}"
    );
    assert_eq!(body["code"], want_code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body.get("details").is_some(), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(3), "{body}");
}

#[tokio::test]
async fn items_round_trip_through_rest_with_versions_and_seq() {
    let api = Api::start(&[]).await;
    let (s, item) = api.put("settings%2Ftheme", json!({"value": {"mode": "dark"}, "metadata": {"src": "t"}, "tags": ["ui"], "priority": 2})).await;
    assert_eq!(s, StatusCode::OK, "{item}");
    assert_eq!(item["key"], "settings/theme");
    assert_eq!(item["value"], json!({"mode": "dark"}));
    assert_eq!(
        (item["version"].as_i64(), item["seq"].as_i64()),
        (Some(1), Some(1))
    );
    for field in [
        "id",
        "userId",
        "instanceId",
        "timestamp",
        "lastModified",
        "size",
        "isDeleted",
        "tags",
        "ttl",
        "priority",
        "compressionType",
        "encryptionType",
        "metadata",
    ] {
        assert!(item.get(field).is_some(), "item has {field}: {item}");
    }
    let (_, v2) = api
        .put(
            "settings%2Ftheme",
            json!({"value": {"mode": "light"}, "version": 1}),
        )
        .await;
    assert_eq!(
        (v2["version"].as_i64(), v2["seq"].as_i64()),
        (Some(2), Some(2))
    );
    let (s, got) = api.get("/api/v1/sync-storage/item/settings%2Ftheme").await;
    assert_eq!(
        (s, &got["value"]),
        (StatusCode::OK, &json!({"mode": "light"}))
    );
    api.put("settings%2Flang", json!({"value": "en"})).await;
    api.put("profile", json!({"value": {"name": "A"}})).await;
    let (_, keys) = api
        .get("/api/v1/sync-storage/keys?prefix=settings%2F")
        .await;
    assert_eq!(keys, json!(["settings/lang", "settings/theme"]));
    let (_, items) = api.get("/api/v1/sync-storage/items").await;
    assert_eq!(items.as_array().map(Vec::len), Some(3));
    let (s, removed) = api
        .call(
            Method::DELETE,
            "/api/v1/sync-storage/item/profile",
            Some(&api.key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (removed["seq"].as_i64(), removed["key"].as_str()),
        (Some(5), Some("profile"))
    );
    let (s, body) = api.get("/api/v1/sync-storage/item/profile").await;
    assert_error(s, &body, 404, "NOT_FOUND");
    let (s, cleared) = api
        .call(
            Method::DELETE,
            "/api/v1/sync-storage/clear",
            Some(&api.key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cleared, json!({"cleared": 2, "lastSeq": 7}));
    let (_, keys) = api.get("/api/v1/sync-storage/keys").await;
    assert_eq!(keys, json!([]));
}

#[tokio::test]
async fn prefix_with_percent_matches_only_the_literal() {
    let api = Api::start(&[]).await;
    for k in ["a%25x", "abc", "a_1"] {
        api.put(k, json!({"value": 1})).await;
    }
    let (_, keys) = api.get("/api/v1/sync-storage/keys?prefix=a%25").await;
    assert_eq!(keys, json!(["a%x"]));
    let (_, keys) = api.get("/api/v1/sync-storage/keys?prefix=a_").await;
    assert_eq!(keys, json!(["a_1"]));
}

#[tokio::test]
async fn authentication_errors_have_their_codes() {
    let api = Api::start(&[]).await;
    let (s, b) = api
        .call(Method::GET, "/api/v1/sync-storage/keys", None, None)
        .await;
    assert_error(s, &b, 401, "UNAUTHORIZED");
    let (s, b) = api
        .call(
            Method::GET,
            "/api/v1/sync-storage/keys",
            Some("sk_live_nope"),
            None,
        )
        .await;
    assert_error(s, &b, 401, "UNAUTHORIZED");

    let reader = api.server.create_key("reader", &["--read-only"]);
    let (s, _) = api
        .call(
            Method::GET,
            "/api/v1/sync-storage/keys",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .call(
            Method::PUT,
            "/api/v1/sync-storage/item/x",
            Some(&reader),
            Some(json!({"value": 1})),
        )
        .await;
    assert_error(s, &b, 403, "FORBIDDEN");
    let (s, b) = api
        .call(
            Method::DELETE,
            "/api/v1/sync-storage/clear",
            Some(&reader),
            None,
        )
        .await;
    assert_error(s, &b, 403, "FORBIDDEN");
}

#[tokio::test]
async fn revoked_and_expired_keys_are_refused() {
    let server = Server::start(&[]).await;
    let http = Client::new();
    let key = server.create_key("someone", &[]);
    let id = key_id(&server, &key).await;
    let out = std::process::Command::new(common::binary())
        .env_clear()
        .env("SYNCSTORE_DATA_DIR", server.data_dir.path())
        .args(["keys", "revoke", "--id", &id])
        .output()
        .unwrap();
    assert!(out.status.success());
    let r = http
        .get(server.url("/api/v1/sync-storage/keys"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "KEY_INACTIVE");

    let key = server.create_key("someone", &[]);
    set_column(&server, &key, "expires_at = 1").await;
    let r = http
        .get(server.url("/api/v1/sync-storage/keys"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "KEY_EXPIRED");
}

async fn open_db(server: &Server) -> syncstore::storage::Db {
    let cfg = syncstore::config::DatabaseConfig {
        url: None,
        connection_limit: 1,
        ssl: false,
    };
    syncstore::storage::Db::connect(&cfg, server.data_dir.path())
        .await
        .unwrap()
}

async fn key_id(server: &Server, key: &str) -> String {
    let db = open_db(server).await;
    let row = sqlx::query("SELECT id FROM api_keys WHERE key_hash = ?")
        .bind(syncstore::auth::hash_key(key))
        .fetch_one(db.pool())
        .await
        .unwrap();
    syncstore::storage::RowExt::str_at(&row, 0).unwrap()
}

async fn set_column(server: &Server, key: &str, assignment: &str) {
    let db = open_db(server).await;
    sqlx::query(&format!(
        "UPDATE api_keys SET {assignment} WHERE key_hash = ?"
    ))
    .bind(syncstore::auth::hash_key(key))
    .execute(db.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn users_never_see_each_others_items() {
    let api = Api::start(&[]).await;
    let other = api.server.create_key("other-user", &[]);
    api.put("secret", json!({"value": "mine"})).await;
    let (s, b) = api
        .call(
            Method::GET,
            "/api/v1/sync-storage/item/secret",
            Some(&other),
            None,
        )
        .await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (_, keys) = api
        .call(Method::GET, "/api/v1/sync-storage/keys", Some(&other), None)
        .await;
    assert_eq!(keys, json!([]));
    let (s, b) = api
        .call(
            Method::DELETE,
            "/api/v1/sync-storage/item/secret",
            Some(&other),
            None,
        )
        .await;
    assert_error(s, &b, 404, "NOT_FOUND");
    api.call(
        Method::DELETE,
        "/api/v1/sync-storage/clear",
        Some(&other),
        None,
    )
    .await;
    // And the other way round: the owner still has it, the other's writes are theirs.
    let (s, _) = api.get("/api/v1/sync-storage/item/secret").await;
    assert_eq!(s, StatusCode::OK);
    let (_, theirs) = api
        .call(
            Method::PUT,
            "/api/v1/sync-storage/item/secret",
            Some(&other),
            Some(json!({"value": "theirs"})),
        )
        .await;
    assert_eq!(theirs["item"]["seq"], 1);
    let (_, mine) = api.get("/api/v1/sync-storage/item/secret").await;
    assert_eq!(mine["value"], "mine");
}

#[tokio::test]
async fn bad_input_gets_stable_error_codes_never_500() {
    let api = Api::start(&[("MAX_ITEM_SIZE_KB", "1")]).await;
    // Keys
    let long = "k".repeat(257);
    for bad in ["a%0Ab", "%7F", long.as_str(), "%FF%FE"] {
        let (s, b) = api.put(bad, json!({"value": 1})).await;
        assert_error(s, &b, 400, "INVALID_KEY");
    }
    let (s, b) = api
        .call(
            Method::GET,
            "/api/v1/sync-storage/item/",
            Some(&api.key),
            None,
        )
        .await;
    assert_error(s, &b, 400, "INVALID_KEY");
    let (s, b) = api
        .call(
            Method::GET,
            "/api/v1/sync-storage/item/%00",
            Some(&api.key),
            None,
        )
        .await;
    assert_error(s, &b, 400, "INVALID_KEY");
    // Bodies
    for bad in [
        &b"{\"value\":"[..],
        b"not json",
        b"{}",
        b"{\"value\":1,\"metadata\":[1]}",
        b"{\"value\":1,\"version\":\"one\"}",
        b"{\"value\":1,\"ttl\":-5}",
        b"",
        b"[1,2]",
        b"[\"k\",1]",
        b"{\"value\":1}x",
        b"{\"value\":1} {\"value\":2}",
    ] {
        let (s, b) = api.raw_put("k", bad.to_vec()).await;
        assert_error(s, &b, 400, "INVALID_BODY");
    }
    // A wrong field is named in details.field, as the README promises.
    for (bad, field) in [
        (json!({"value": 1, "version": "1"}), "version"),
        (json!({"value": 1, "version": -1}), "version"),
        (json!({"value": 1, "tags": ["a", 1]}), "tags[1]"),
        (json!({"value": 1, "ttl": -1}), "ttl"),
        (json!({"value": 1, "ttl": "yesterday"}), "ttl"),
        (
            json!({"value": 1, "timestamp": "2026-13-01T00:00:00Z"}),
            "timestamp",
        ),
        (json!({"value": 1, "metadata": [1]}), "metadata"),
        (json!({"value": 1, "opId": 5}), "opId"),
    ] {
        let (s, b) = api.put("k", bad.clone()).await;
        assert_error(s, &b, 400, "INVALID_BODY");
        assert_eq!(b["details"]["field"], field, "{bad}: {b}");
    }
    // Sizes
    let (s, b) = api.put("big", json!({"value": "x".repeat(2000)})).await;
    assert_error(s, &b, 413, "ITEM_TOO_LARGE");
    assert_eq!(b["details"]["limit"], 1024);
    // The server answers before reading all of an oversized body and closes
    // that connection, so this one goes on a client of its own.
    let huge = Client::new()
        .put(api.server.url("/api/v1/sync-storage/item/huge"))
        .header("X-API-Key", &api.key)
        .body(format!("{{\"value\":\"{}\"}}", "x".repeat(200_000)))
        .send()
        .await
        .unwrap();
    let s = huge.status();
    assert_error(s, &huge.json().await.unwrap(), 413, "PAYLOAD_TOO_LARGE");
    // Queries, routes, methods
    let (s, b) = api
        .get(&format!(
            "/api/v1/sync-storage/keys?prefix={}",
            "p".repeat(300)
        ))
        .await;
    assert_error(s, &b, 400, "INVALID_QUERY");
    let (s, b) = api.get("/api/v1/nothing-here").await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (s, b) = api
        .call(
            Method::POST,
            "/api/v1/sync-storage/item/k",
            Some(&api.key),
            Some(json!({})),
        )
        .await;
    assert_error(s, &b, 405, "METHOD_NOT_ALLOWED");
    // A stale write that loses (first write wins) is a 409 carrying the
    // current item, as an error and as the writer's reply.
    api.put("doc", json!({"value": 1})).await;
    api.put("doc", json!({"value": 2})).await;
    let stale =
        json!({"value": 3, "version": 1, "metadata": {"conflictStrategy": "FIRST_WRITE_WINS"}});
    let (s, b) = api.put("doc", stale).await;
    assert_eq!(
        (s.as_u16(), b["code"].as_str()),
        (409, Some("VERSION_CONFLICT")),
        "{b}"
    );
    assert!(b["message"].is_string() && b.get("details").is_some());
    assert_eq!(
        (b["status"].as_str(), b["item"]["version"].as_i64()),
        (Some("rejected"), Some(2))
    );
    assert!(b["conflictId"].is_string());
    assert_eq!(
        (
            b["details"]["current"]["version"].as_i64(),
            &b["details"]["current"]["value"]
        ),
        (Some(2), &json!(2))
    );
}

#[tokio::test]
async fn storage_quota_is_enforced_per_user() {
    let api = Api::start(&[
        ("MAX_ITEM_SIZE_KB", "600"),
        ("MAX_STORAGE_PER_USER_MB", "1"),
    ])
    .await;
    let chunk = "x".repeat(500 * 1024);
    let (s, _) = api.put("a", json!({"value": chunk})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api.put("b", json!({"value": chunk})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api.put("c", json!({"value": chunk})).await;
    assert_error(s, &b, 413, "STORAGE_QUOTA_EXCEEDED");
    // Another user has a quota of their own.
    let other = api.server.create_key("quota-other", &[]);
    let (s, _) = api
        .call(
            Method::PUT,
            "/api/v1/sync-storage/item/c",
            Some(&other),
            Some(json!({"value": chunk})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Removing frees the space.
    api.call(
        Method::DELETE,
        "/api/v1/sync-storage/item/a",
        Some(&api.key),
        None,
    )
    .await;
    let (s, _) = api.put("c", json!({"value": chunk})).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn ttl_hides_at_once_and_the_sweeper_purges() {
    let api = Api::start(&[("TTL_CLEANUP_INTERVAL_HOURS", "0.0002")]).await; // ~0.7 s
    let (s, item) = api
        .put("session", json!({"value": "tok", "ttl": 0.3}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(item["ttl"].as_str().is_some_and(|t| t.ends_with('Z')));
    api.put("keep", json!({"value": 1, "ttl": "2999-01-01T00:00:00Z"}))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, b) = api.get("/api/v1/sync-storage/item/session").await;
    assert_error(s, &b, 404, "NOT_FOUND");
    let (_, keys) = api.get("/api/v1/sync-storage/keys").await;
    assert_eq!(keys, json!(["keep"]));
    // The sweeper turns the expired row into a tombstone (counted as a removal).
    let mut purged = false;
    for _ in 0..50 {
        let text = api
            .http
            .get(api.server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.lines().any(|l| l == "syncstore_items_removed_total 1") {
            purged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(purged, "the TTL sweeper purged the expired item");
}

#[tokio::test]
async fn request_ids_are_echoed_and_logged() {
    let api = Api::start(&[("LOG_FORMAT", "json"), ("LOG_LEVEL", "debug")]).await;
    let r = api
        .http
        .get(api.server.url("/api/v1/sync-storage/item/missing"))
        .header("X-API-Key", &api.key)
        .header("X-Request-Id", "req-test-4242")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-test-4242");
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(r.headers()[name], value, "{name}");
    }
    let r = api
        .http
        .get(api.server.url("/health"))
        .send()
        .await
        .unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a UUID is generated");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = api.server.log();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let ours: Vec<&Value> = lines
        .iter()
        .filter(|l| l.to_string().contains("req-test-4242"))
        .collect();
    assert!(
        !ours.is_empty(),
        "the request's log lines carry its id:\n{log}"
    );
    assert!(ours
        .iter()
        .all(|l| l["span"]["request_id"] == "req-test-4242"));
}

#[tokio::test]
async fn health_ready_and_metrics_answer() {
    let api = Api::start(&[]).await;
    let (s, b) = api.call(Method::GET, "/health", None, None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({"status": "ok"})));
    let (s, b) = api.call(Method::GET, "/ready", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["database"], "sqlite");
    api.put("m", json!({"value": 1})).await;
    api.get("/api/v1/sync-storage/item/m").await;
    let text = api
        .http
        .get(api.server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"syncstore_http_requests_total{method="PUT",route="/api/v1/sync-storage/item/{*key}",status="200"} 1"#,
        r#"syncstore_http_request_duration_seconds_bucket{method="GET",route="/api/v1/sync-storage/item/{*key}""#,
        "syncstore_items_written_total 1",
        "syncstore_db_pool_connections",
        "syncstore_db_pool_idle_connections",
    ] {
        assert!(text.contains(needle), "metrics contain {needle}:\n{text}");
    }
}

#[tokio::test]
async fn bootstrap_key_acts_as_the_bootstrap_user_with_every_scope() {
    let boot = "sk_live_bootstrap_for_tests_0123456789";
    let server = Server::start(&[("BOOTSTRAP_API_KEY", boot), ("BOOTSTRAP_USER_ID", "ops")]).await;
    let http = Client::new();
    let r = http
        .put(server.url("/api/v1/sync-storage/item/a"))
        .header("X-API-Key", boot)
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["item"]["userId"], "ops");
    drop(server);
    // Restarting with the same key is fine (created once).
    let server2 = Server::start(&[("BOOTSTRAP_API_KEY", boot)]).await;
    let r = http
        .get(server2.url("/api/v1/sync-storage/keys"))
        .header("X-API-Key", boot)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_cleanly() {
    let mut api = Api::start(&[]).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (http, url, key) = (
            api.http.clone(),
            api.server.url(&format!("/api/v1/sync-storage/item/k{i}")),
            api.key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let status = http
                .put(url)
                .header("X-API-Key", key)
                .json(&json!({"value": i}))
                .send()
                .await
                .map(|r| r.status());
            (i, status)
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let pid = api.server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut acknowledged = Vec::new();
    for t in tasks {
        let (i, status) = t.await.unwrap();
        match status {
            Ok(status) => {
                assert_eq!(status, StatusCode::OK, "an accepted request completes");
                acknowledged.push(i);
            }
            // Refused or closed before the request was read: the client knows
            // it was not done and may retry.
            Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = api.server.child.try_wait().unwrap() {
            assert!(status.success(), "clean exit: {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server stops after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every acknowledged write is durable.
    let dir = std::mem::replace(&mut api.server.data_dir, tempfile::tempdir().unwrap());
    let restarted = Server::start_in(dir, &[]).await;
    for i in acknowledged {
        let r = api
            .http
            .get(restarted.url(&format!("/api/v1/sync-storage/item/k{i}")))
            .header("X-API-Key", &api.key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "k{i} was acknowledged, so it is stored"
        );
    }
}

#[tokio::test]
async fn review_queue_round_trip_resolves_through_the_write_path() {
    let admin = "sk_live_admin_for_conflict_tests_0123456789";
    let api = Api::start(&[
        ("CONFLICT_DEFAULT_STRATEGY", "MANUAL"),
        ("BOOTSTRAP_API_KEY", admin),
    ])
    .await;
    api.put("doc", json!({"value": {"t": "A"}})).await;
    api.put("doc", json!({"value": {"t": "B"}, "version": 1}))
        .await;
    let (s, b) = api
        .put("doc", json!({"value": {"t": "C"}, "version": 1}))
        .await;
    assert_eq!(
        (s.as_u16(), b["status"].as_str()),
        (409, Some("pending_review")),
        "{b}"
    );
    let conflict_id = b["conflictId"].as_str().unwrap().to_string();
    // The value is unchanged while the conflict waits.
    let (_, item) = api.get("/api/v1/sync-storage/item/doc").await;
    assert_eq!(item["value"], json!({"t": "B"}));

    let (s, queue) = api
        .get("/api/v1/sync-storage/conflicts?status=pending")
        .await;
    assert_eq!(s, StatusCode::OK);
    let items = queue["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], conflict_id.as_str());
    assert_eq!(
        (&items[0]["currentValue"], &items[0]["incomingValue"]),
        (&json!({"t": "B"}), &json!({"t": "C"}))
    );
    // An admin key sees every user's conflicts; another user cannot see or
    // resolve it.
    let (_, all) = api
        .call(
            Method::GET,
            "/api/v1/sync-storage/conflicts",
            Some(admin),
            None,
        )
        .await;
    assert!(all["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["id"] == conflict_id.as_str()));
    let other = api.server.create_key("someone-else", &[]);
    let (_, theirs) = api
        .call(
            Method::GET,
            "/api/v1/sync-storage/conflicts",
            Some(&other),
            None,
        )
        .await;
    assert_eq!(theirs["items"], json!([]));
    let path = format!("/api/v1/sync-storage/conflicts/resolve/{conflict_id}");
    let (s, b) = api
        .call(
            Method::PUT,
            &path,
            Some(&other),
            Some(json!({"strategy": "MANUAL", "resolvedValue": 1})),
        )
        .await;
    assert_error(s, &b, 404, "NOT_FOUND");

    let (s, b) = api
        .call(
            Method::PUT,
            &path,
            Some(&api.key),
            Some(json!({"strategy": "MANUAL"})),
        )
        .await;
    assert_error(s, &b, 400, "INVALID_BODY");
    let (s, resolved) = api
        .call(
            Method::PUT,
            &path,
            Some(&api.key),
            Some(json!({"strategy": "MANUAL", "resolvedValue": {"t": "B+C"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{resolved}");
    assert_eq!(
        (
            resolved["item"]["value"].clone(),
            resolved["item"]["seq"].as_i64()
        ),
        (json!({"t": "B+C"}), Some(3))
    );
    let (s, b) = api
        .call(
            Method::PUT,
            &path,
            Some(&api.key),
            Some(json!({"strategy": "MANUAL", "resolvedValue": 2})),
        )
        .await;
    assert_error(s, &b, 400, "INVALID_BODY");

    let (_, queue) = api.get("/api/v1/sync-storage/conflicts").await;
    assert_eq!(queue["items"], json!([]));
    let (_, history) = api.get("/api/v1/sync-storage/conflicts/history/doc").await;
    assert_eq!(history.as_array().map(Vec::len), Some(1));
    assert_eq!(history[0]["status"], "resolved");
    assert_eq!(history[0]["resultValue"], json!({"t": "B+C"}));
    let (_, stats) = api.get("/api/v1/sync-storage/conflicts/stats").await;
    assert_eq!(stats["24h"]["total"], 1);
    assert_eq!(stats["24h"]["byStrategy"]["MANUAL"], 1);
    assert_eq!(stats["24h"]["resolutionRate"], 1.0);
}

/// Reviews racing on one conflict: exactly one writes (one new version,
/// the conflict resolved with its value, in the same transaction); the
/// others write nothing, not even a conflict of their own, and get 409 (the
/// item moved on) or 400 (already resolved).
#[tokio::test]
async fn racing_reviews_of_one_conflict_write_once() {
    let api = Api::start(&[("CONFLICT_DEFAULT_STRATEGY", "MANUAL")]).await;
    api.put("doc", json!({"value": 0})).await;
    api.put("doc", json!({"value": 1, "version": 1})).await;
    let (_, b) = api.put("doc", json!({"value": 2, "version": 1})).await;
    let id = b["conflictId"]
        .as_str()
        .expect("a pending conflict")
        .to_string();
    let path = format!("/api/v1/sync-storage/conflicts/resolve/{id}");
    let answers = futures_util::future::join_all((0..8).map(|i| {
        api.call(
            Method::PUT,
            &path,
            Some(&api.key),
            Some(json!({"strategy": "MANUAL", "resolvedValue": 100 + i})),
        )
    }))
    .await;
    let won: Vec<&(StatusCode, Value)> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .collect();
    assert_eq!(won.len(), 1, "{answers:?}");
    for (s, b) in answers.iter().filter(|(s, _)| *s != StatusCode::OK) {
        assert!(
            matches!(
                (s.as_u16(), b["code"].as_str()),
                (409, Some("VERSION_CONFLICT")) | (400, Some("INVALID_BODY"))
            ),
            "{s} {b}"
        );
    }
    let winner = won[0].1["item"]["value"].clone();
    let (_, item) = api.get("/api/v1/sync-storage/item/doc").await;
    assert_eq!(
        (item["value"].clone(), item["version"].as_i64()),
        (winner.clone(), Some(3))
    );
    let (_, pending) = api
        .get("/api/v1/sync-storage/conflicts?status=pending")
        .await;
    assert_eq!(pending["items"], json!([]));
    let (_, history) = api.get("/api/v1/sync-storage/conflicts/history/doc").await;
    assert_eq!(history.as_array().map(Vec::len), Some(1), "{history}");
    assert_eq!(
        (history[0]["status"].as_str(), &history[0]["resultValue"]),
        (Some("resolved"), &winner)
    );
}

/// A real resolver webhook for ASSISTED: `/good` merges, `/slow` answers too
/// late, `/bad` answers something that is not `{value}`.
async fn start_resolver() -> String {
    use axum::{routing::post, Json as AxJson, Router};
    let app = Router::new()
        .route(
            "/good",
            post(|AxJson(body): AxJson<Value>| async move {
                let mut merged = body["current"].clone();
                merged["resolvedBy"] = json!("webhook");
                merged["incoming"] = body["incoming"].clone();
                AxJson(json!({ "value": merged }))
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                AxJson(json!({ "value": "too late" }))
            }),
        )
        .route(
            "/bad",
            post(|| async { AxJson(json!(["not", "an", "answer"])) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn assisted_conflicts_apply_the_webhook_answer_or_go_to_review() {
    let resolver = start_resolver().await;
    for (path, expect_status) in [("good", 200u16), ("slow", 409), ("bad", 409)] {
        let url = format!("{resolver}/{path}");
        let api = Api::start(&[
            ("CONFLICT_DEFAULT_STRATEGY", "ASSISTED"),
            ("CONFLICT_RESOLVER_URL", &url),
            ("CONFLICT_RESOLVER_TIMEOUT_MS", "500"),
        ])
        .await;
        api.put("doc", json!({"value": {"n": 1}})).await;
        api.put("doc", json!({"value": {"n": 2}, "version": 1}))
            .await;
        let (s, b) = api
            .put("doc", json!({"value": {"n": 3}, "version": 1}))
            .await;
        assert_eq!(s.as_u16(), expect_status, "{path}: {b}");
        if path == "good" {
            assert_eq!(
                b["value"],
                json!({"n": 2, "resolvedBy": "webhook", "incoming": {"n": 3}}),
                "{b}"
            );
        } else {
            assert_eq!(b["status"], "pending_review", "{path}: {b}");
            let (_, queue) = api.get("/api/v1/sync-storage/conflicts").await;
            assert_eq!(queue["items"][0]["strategy"], "ASSISTED");
        }
    }
}

#[tokio::test]
async fn merge_takes_both_sides_and_sends_clashes_to_review_and_analyze_explains() {
    let api = Api::start(&[
        ("CONFLICT_DEFAULT_STRATEGY", "MERGE"),
        ("CONFLICT_MERGE_TIEBREAK", "MANUAL"),
    ])
    .await;
    api.put(
        "profile",
        json!({"value": {"name": "Ada", "city": "Paris", "tags": ["a"]}}),
    )
    .await;
    api.put(
        "profile",
        json!({"value": {"name": "Ada L.", "city": "Paris", "tags": ["a"]}, "version": 1}),
    )
    .await;
    // Based on version 1: changes only the city, so it merges.
    let (s, merged) = api
        .put(
            "profile",
            json!({"value": {"name": "Ada", "city": "London", "tags": ["a"]}, "version": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        merged["value"],
        json!({"name": "Ada L.", "city": "London", "tags": ["a"]})
    );
    assert_eq!(merged["version"], 3);
    // Based on version 2: the tags array changed on both sides: review.
    api.put(
        "profile",
        json!({"value": {"name": "Ada L.", "city": "London", "tags": ["a", "b"]}, "version": 3}),
    )
    .await;
    let (s, b) = api
        .put(
            "profile",
            json!({"value": {"name": "Ada L.", "city": "London", "tags": ["c"]}, "version": 3}),
        )
        .await;
    assert_eq!(
        (s.as_u16(), b["status"].as_str()),
        (409, Some("pending_review")),
        "{b}"
    );

    let id = merged["id"].as_str().unwrap().to_string();
    let (s, report) = api
        .call(
            Method::POST,
            "/api/v1/sync-storage/conflicts/analyze",
            Some(&api.key),
            Some(json!({"itemIds": [id.clone(), "nothing"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{report}");
    let a = &report[&id]["analysis"];
    assert_eq!(
        (a["conflicts"].as_i64(), a["cleanMerges"].as_i64()),
        (Some(2), Some(1)),
        "{a}"
    );
    assert_eq!(report[&id]["key"], "profile");
    assert!(
        a["suggestedStrategy"].is_string() && a["reason"].as_str().is_some_and(|r| !r.is_empty())
    );
    assert_eq!(report["nothing"]["analysis"]["conflicts"], 0);
    let (s, b) = api
        .call(
            Method::POST,
            "/api/v1/sync-storage/conflicts/analyze",
            Some(&api.key),
            Some(json!({"itemIds": []})),
        )
        .await;
    assert_error(s, &b, 400, "INVALID_BODY");
}

#[tokio::test]
async fn the_audit_trail_records_writes_and_refusals_for_admins_only() {
    let admin = "sk_live_admin_for_audit_tests_0123456789abc";
    let api = Api::start(&[("BOOTSTRAP_API_KEY", admin)]).await;
    let user = api
        .call(
            Method::GET,
            "/api/v1/sync-storage/keys",
            Some(&api.key),
            None,
        )
        .await;
    assert_eq!(user.0, StatusCode::OK);
    api.put("a", json!({"value": 1})).await;
    api.put("b", json!({"value": 2})).await;
    api.call(
        Method::DELETE,
        "/api/v1/sync-storage/item/a",
        Some(&api.key),
        None,
    )
    .await;
    let wrong = "sk_live_wrong_key_for_the_audit_test_000";
    api.call(Method::GET, "/api/v1/sync-storage/keys", Some(wrong), None)
        .await;
    let restricted = api.server.create_key("audited", &["--ip", "192.0.2.0/24"]);
    api.call(
        Method::GET,
        "/api/v1/sync-storage/keys",
        Some(&restricted),
        None,
    )
    .await;

    let (s, b) = api.get("/api/v1/audit").await;
    assert_error(s, &b, 403, "SCOPE_REQUIRED");
    let audit = |query: &str| {
        let path = format!("/api/v1/audit{query}");
        let http = api.http.clone();
        let url = api.server.url(&path);
        async move {
            http.get(url)
                .header("X-API-Key", admin)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    // Entries are written in the background; give the writer a moment.
    let mut sets = json!(null);
    for _ in 0..50 {
        sets = audit("?action=item.set").await;
        if sets["entries"].as_array().is_some_and(|e| e.len() >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let entries = sets["entries"].as_array().unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e["target"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["b", "a"]
    );
    let removes = audit("?action=item.remove").await;
    assert_eq!(removes["entries"][0]["target"], "a");
    // Refusals are summed per IP, code and key over a short window first.
    let mut codes = Vec::new();
    for _ in 0..100 {
        let denied = audit("?action=auth.denied").await;
        codes = denied["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["result"].as_str().unwrap().to_string(),
                    e["count"].as_i64(),
                )
            })
            .collect();
        if codes.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    codes.sort();
    assert_eq!(
        codes,
        vec![
            ("IP_NOT_ALLOWED".to_string(), Some(1)),
            ("UNAUTHORIZED".to_string(), Some(1))
        ]
    );
    // Cursor pagination walks the same entries one at a time.
    let page1 = audit("?action=item.set&limit=1").await;
    let cursor = page1["nextCursor"].as_str().unwrap().to_string();
    let page2 = audit(&format!("?action=item.set&limit=1&cursor={cursor}")).await;
    assert_eq!(
        (
            page1["entries"][0]["target"].as_str(),
            page2["entries"][0]["target"].as_str()
        ),
        (Some("b"), Some("a"))
    );
    // No credential is ever written to the trail or the logs.
    let everything = audit("?limit=1000").await.to_string();
    for secret in [admin, wrong, api.key.as_str(), restricted.as_str()] {
        assert!(!everything.contains(secret));
        assert!(!api.server.log().contains(secret));
    }
}

#[tokio::test]
async fn keys_are_managed_over_rest_create_list_patch_rotate_delete() {
    let admin = "sk_live_admin_for_key_mgmt_tests_0123456789";
    let api = Api::start(&[
        ("BOOTSTRAP_API_KEY", admin),
        ("API_KEY_ROTATION_GRACE_SECONDS", "0"),
    ])
    .await;
    let http = &api.http;
    let call = |method: Method, path: &str, key: &str, body: Option<Value>| {
        let mut req = http
            .request(method, api.server.url(path))
            .header("X-API-Key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // The admin creates a managing key for alice.
    let (s, mgr) = call(Method::POST, "/api/v1/api-keys", admin, Some(json!({"name": "alice-admin", "userId": "alice", "scopes": ["read", "write", "keys:manage"]}))).await;
    assert_eq!(s, StatusCode::CREATED, "{mgr}");
    let mgr_key = mgr["key"].as_str().unwrap().to_string();
    assert_eq!(
        (mgr["userId"].as_str(), mgr["canRead"].as_bool()),
        (Some("alice"), Some(true))
    );
    // Alice's manager creates a restricted key for herself, but not for bob, and not wider than itself.
    let (s, web) = call(Method::POST, "/api/v1/api-keys", &mgr_key, Some(json!({"name": "web", "scopes": ["read"], "domainRestrictions": ["*.example.com"], "quotaPerHour": 10}))).await;
    assert_eq!(s, StatusCode::CREATED, "{web}");
    assert_eq!(
        (
            web["domainRestrictions"][0].as_str(),
            web["quotaPerHour"].as_i64()
        ),
        (Some("*.example.com"), Some(10))
    );
    assert!(web.get("keyHash").is_none());
    let (s, b) = call(
        Method::POST,
        "/api/v1/api-keys",
        &mgr_key,
        Some(json!({"userId": "bob"})),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN"))
    );
    let (s, b) = call(
        Method::POST,
        "/api/v1/api-keys",
        &mgr_key,
        Some(json!({"scopes": ["admin"]})),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN"))
    );
    let (s, b) = call(
        Method::POST,
        "/api/v1/api-keys",
        &mgr_key,
        Some(json!({"ipRestrictions": ["10.0.0.0/99"]})),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_BODY"))
    );
    let (s, b) = call(
        Method::POST,
        "/api/v1/api-keys",
        &mgr_key,
        Some(json!({"bogus": 1})),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_BODY"))
    );
    // Lists: alice sees her keys only; the admin sees everyone's.
    let (_, mine) = call(Method::GET, "/api/v1/api-keys", &mgr_key, None).await;
    assert!(mine
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["userId"] == "alice"));
    let (_, all) = call(Method::GET, "/api/v1/api-keys", admin, None).await;
    assert!(all.as_array().unwrap().len() > mine.as_array().unwrap().len());
    // A key without keys:manage cannot manage.
    let (s, _) = call(Method::GET, "/api/v1/api-keys", &api.key, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Patch: lift the domain restriction, clear the quota.
    let web_id = web["id"].as_str().unwrap().to_string();
    let web_key = web["key"].as_str().unwrap().to_string();
    let (s, _) = call(Method::GET, "/api/v1/sync-storage/keys", &web_key, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the domain restriction applies");
    let (s, patched) = call(
        Method::PATCH,
        &format!("/api/v1/api-keys/{web_id}"),
        &mgr_key,
        Some(json!({"domainRestrictions": [], "quotaPerHour": null})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{patched}");
    assert_eq!(
        (
            patched["domainRestrictions"].clone(),
            patched["quotaPerHour"].clone()
        ),
        (json!([]), Value::Null)
    );
    let (s, _) = call(Method::GET, "/api/v1/sync-storage/keys", &web_key, None).await;
    assert_eq!(s, StatusCode::OK, "the patch applies at once on this pod");

    // Rotate (grace 0 here): the new key works, the old one stops.
    let (s, rotated) = call(
        Method::POST,
        &format!("/api/v1/api-keys/{web_id}/rotate"),
        &mgr_key,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{rotated}");
    let new_key = rotated["key"].as_str().unwrap().to_string();
    assert_eq!(rotated["scopes"], json!(["read"]));
    assert_eq!(
        call(Method::GET, "/api/v1/sync-storage/keys", &new_key, None)
            .await
            .0,
        StatusCode::OK
    );
    let (s, b) = call(Method::GET, "/api/v1/sync-storage/keys", &web_key, None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("KEY_EXPIRED"))
    );

    // Delete: gone for good.
    let new_id = rotated["id"].as_str().unwrap().to_string();
    let (s, _) = call(
        Method::DELETE,
        &format!("/api/v1/api-keys/{new_id}"),
        &mgr_key,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        call(Method::GET, "/api/v1/sync-storage/keys", &new_key, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (s, _) = call(
        Method::GET,
        &format!("/api/v1/api-keys/{new_id}"),
        &mgr_key,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn key_usage_is_flushed_within_seconds() {
    let admin = "sk_live_admin_for_usage_tests_0123456789ab";
    let api = Api::start(&[("BOOTSTRAP_API_KEY", admin)]).await;
    let (_, created) = api
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(admin),
            Some(json!({"name": "counted", "userId": "counted"})),
        )
        .await;
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    assert_eq!(
        (
            created["usageToday"].as_i64(),
            created["lastUsedAt"].clone()
        ),
        (Some(0), Value::Null)
    );
    for _ in 0..3 {
        api.call(Method::GET, "/api/v1/sync-storage/keys", Some(&key), None)
            .await;
    }
    let mut seen = json!(null);
    for _ in 0..60 {
        seen = api
            .call(
                Method::GET,
                &format!("/api/v1/api-keys/{id}"),
                Some(admin),
                None,
            )
            .await
            .1;
        if seen["usageToday"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (seen["usageToday"].as_i64(), seen["usageThisMonth"].as_i64()),
        (Some(3), Some(3)),
        "{seen}"
    );
    assert!(seen["lastUsedAt"].as_i64().is_some());
}
