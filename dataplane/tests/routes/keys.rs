//! `/api/v1/api-keys`: create, list, patch, rotate and delete over REST,
//! and key usage.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::Api;

#[tokio::test]
async fn keys_are_managed_over_rest_create_list_patch_rotate_delete() {
    let admin = "sk_live_admin_for_key_mgmt_tests_0123456789";
    let api = Api::start(&[
        ("BOOTSTRAP_API_KEY", admin),
        ("API_KEY_ROTATION_GRACE_SECONDS", "0"),
    ])
    .await;
    let call = |method: Method, path: &str, key: &str, body: Option<Value>| {
        api.call(method, path, Some(key), body)
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
