//! `/api/v1/sync-storage/conflicts/*`: the review queue and resolving
//! through the write path, racing reviews, ASSISTED through a real resolver
//! webhook, MERGE and `analyze`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::assert_error;
use crate::Api;

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
