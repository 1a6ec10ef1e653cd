//! `/api/v1/audit`: writes and refusals are recorded, for admin keys only,
//! and no credential is ever written.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::assert_error;
use crate::Api;

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
