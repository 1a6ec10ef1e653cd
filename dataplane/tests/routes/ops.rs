//! `/health`, `/ready` and `/metrics`, request ids and security headers on
//! every answer, and the drain on SIGTERM.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::Server;
use crate::Api;

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

/// The lower-cased entries of a comma-separated header.
fn header_list(r: &reqwest::Response, name: &str) -> Vec<String> {
    r.headers()
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

/// A page on another origin may send every header the API reads
/// (`Idempotency-Key` was missing) and read every header it documents (only
/// `X-Request-Id` was exposed); a preflight's answer carries a request id.
#[tokio::test]
async fn cors_allows_the_api_request_headers_and_exposes_its_response_headers() {
    let api = Api::start(&[]).await;
    let origin = "https://app.example.com";
    let pre = api
        .request(Method::OPTIONS, "/api/v1/sync-storage/item/a", None)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "PUT")
        .header(
            "Access-Control-Request-Headers",
            "content-type,x-api-key,idempotency-key",
        )
        .header("X-Request-Id", "rid-preflight")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), StatusCode::OK);
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    let allowed = header_list(&pre, "access-control-allow-headers");
    for h in [
        "content-type",
        "authorization",
        "x-api-key",
        "x-instance-id",
        "x-request-id",
        "idempotency-key",
    ] {
        assert!(allowed.iter().any(|a| a == h), "{h} not in {allowed:?}");
    }
    assert_eq!(pre.headers()["x-request-id"], "rid-preflight");

    let r = api
        .request(Method::GET, "/api/v1/sync-storage/keys", Some(&api.key))
        .header("Origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let exposed = header_list(&r, "access-control-expose-headers");
    for h in [
        "x-request-id",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "retry-after",
    ] {
        assert!(exposed.iter().any(|e| e == h), "{h} not in {exposed:?}");
    }
    assert!(r.headers().contains_key("x-ratelimit-limit"));
}

/// engine.io's answers (`/socket.io/`) carry `X-Request-Id` as REST's do:
/// the client's, or a generated one.
#[tokio::test]
async fn engine_io_answers_carry_the_request_id() {
    let api = Api::start(&[]).await;
    let handshake = "/socket.io/?EIO=4&transport=polling";
    let r = api
        .request(Method::GET, handshake, None)
        .header("X-Request-Id", "rid-eio")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-request-id"], "rid-eio");
    let r = api
        .request(Method::GET, handshake, None)
        .send()
        .await
        .unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "a UUID is generated: {generated}");
    let pre = api
        .request(Method::OPTIONS, handshake, None)
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.headers()["x-request-id"].len(), 36);
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
