//! Dates as the seed writes them (issue 14 §8): wherever a date is accepted,
//! Unix milliseconds and RFC 3339 (the ISO 8601 profile of the seed's
//! `DateTime`) both work, and responses carry Unix milliseconds.

mod common;

use common::{unique_user, Server};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// 2026-12-01T00:00:00Z in Unix milliseconds.
const DEC_1: i64 = 1_796_083_200_000;

#[tokio::test]
async fn dates_are_accepted_as_iso_8601_or_unix_ms() {
    let server = Server::start(&[]).await;
    let http = Client::new();
    let user = unique_user("dates");
    let admin = server.create_key(&user, &["--scopes", "admin"]);
    let send = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = http
            .request(method, server.url(path))
            .header("X-API-Key", &admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        common::send(req)
    };
    use reqwest::Method as M;

    // The seed's ApiKey expiresAt, in both forms (and a patch of it).
    for at in [
        json!("2026-12-01T00:00:00Z"),
        json!(DEC_1),
        json!("2026-12-01T01:00:00+01:00"),
    ] {
        let (s, b) = send(
            M::POST,
            "/api/v1/api-keys",
            Some(json!({"name": "d", "scopes": ["read"], "expiresAt": at})),
        )
        .await;
        assert_eq!(
            (s, b["expiresAt"].as_i64()),
            (StatusCode::CREATED, Some(DEC_1)),
            "{at}: {b}"
        );
        let id = b["id"].as_str().unwrap().to_string();
        let (s, b) = send(
            M::PATCH,
            &format!("/api/v1/api-keys/{id}"),
            Some(json!({"expiresAt": "2026-12-01T00:00:01.5Z"})),
        )
        .await;
        assert_eq!(
            (s, b["expiresAt"].as_i64()),
            (StatusCode::OK, Some(DEC_1 + 1_500)),
            "{b}"
        );
    }
    let (s, b) = send(
        M::POST,
        "/api/v1/api-keys",
        Some(json!({"name": "d", "expiresAt": "next tuesday"})),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_BODY")),
        "{b}"
    );
    assert!(b["message"].as_str().unwrap().contains("RFC 3339"), "{b}");

    // An item's client timestamp.
    let (s, b) = send(
        M::PUT,
        "/api/v1/sync-storage/item/when",
        Some(json!({"value": 1, "timestamp": "2026-12-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        (s, b["item"]["timestamp"].as_i64()),
        (StatusCode::OK, Some(DEC_1)),
        "{b}"
    );

    // A ttl already past is refused, like a ttl of 0 seconds.
    let (s, b) = send(
        M::PUT,
        "/api/v1/sync-storage/item/old",
        Some(json!({"value": 1, "ttl": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_BODY")),
        "{b}"
    );

    // Audit filters.
    for from in ["2000-01-01T00:00:00Z", "946684800000"] {
        let (s, b) = send(
            M::GET,
            &format!("/api/v1/audit?userId={user}&from={from}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert!(!b["entries"].as_array().unwrap().is_empty(), "{b}");
    }
    let (s, b) = send(M::GET, "/api/v1/audit?from=yesterday", None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("INVALID_QUERY")),
        "{b}"
    );
}
