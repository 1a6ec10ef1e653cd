//! `/api/v1/sync-storage/item/{key}`, `/items`, `/keys` and `/clear`:
//! round trips, isolation between users, the error codes of bad input,
//! quotas and TTLs.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::assert_error;
use crate::Api;

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
    // Up to the message limit (4 MiB here), a value too big is measured and
    // answered precisely, as `sync:set` answers it.
    let (s, b) = api.put("big", json!({"value": "x".repeat(200_000)})).await;
    assert_error(s, &b, 413, "ITEM_TOO_LARGE");
    assert_eq!(b["details"]["size"], 200_002);
    // Past it, the server answers from Content-Length alone, before the
    // body (so the body is not sent here: a client still writing it would
    // see the connection close under it).
    let (s, b) = oversized_put(&api).await;
    assert_error(s, &b, 413, "PAYLOAD_TOO_LARGE");
    assert_eq!(b["details"]["limit"], 4 << 20);
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

/// A PUT announcing a 5 MiB body, as raw HTTP/1.1; the status and JSON body
/// the server answers before any of it is sent.
async fn oversized_put(api: &Api) -> (StatusCode, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", api.server.port))
        .await
        .unwrap();
    let head = format!(
        "PUT /api/v1/sync-storage/item/huge HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        api.key,
        5 << 20
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply))
        .await
        .expect("answered without the body")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    let status: u16 = reply[9..12].parse().unwrap();
    // The JSON object of the body, whether sent with a length or chunked.
    let json = match (reply.find('{'), reply.rfind('}')) {
        (Some(a), Some(b)) if a < b => &reply[a..=b],
        _ => "",
    };
    (
        StatusCode::from_u16(status).unwrap(),
        serde_json::from_str(json).unwrap_or(Value::String(reply.to_string())),
    )
}
