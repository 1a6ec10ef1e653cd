//! Authentication of the protected routes: missing, unknown, read-only,
//! revoked and expired keys get their codes; the bootstrap key acts as its
//! user with every scope.

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{self, assert_error, key_id, Server};
use crate::Api;

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

async fn set_column(server: &Server, key: &str, assignment: &str) {
    let db = server.db().await;
    sqlx::query(&db.sql(&format!(
        "UPDATE api_keys SET {assignment} WHERE key_hash = ?"
    )))
    .bind(syncstore::auth::hash_key(key))
    .execute(db.pool())
    .await
    .unwrap();
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
