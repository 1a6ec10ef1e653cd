//! The same input gets the same answer over REST and over Socket.IO: the
//! two edges decode payloads, measure values and pick credentials through
//! one shared path each, and these tests hold them to it.

mod common;

use common::{ws, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn start() -> (TestApp, String, String) {
    let app = TestApp::start(&[]).await;
    let user = common::unique_user("edges");
    let key = app.key(&user, &[]);
    (app, key, user)
}

async fn socket(app: &TestApp, key: &str, user: &str) -> ws::Ws {
    ws::connect(
        app.server.port,
        &format!("userId={user}&instanceId=tab"),
        &json!({ "apiKey": key }),
    )
    .await
    .expect("connected")
}

/// An ack's error (`{error: {…}}` or the error itself).
fn ack_error(ack: &Value) -> Value {
    ack.get("error").cloned().unwrap_or_else(|| ack.clone())
}

#[tokio::test]
async fn a_bad_payload_gets_the_same_code_and_field_on_both_edges() {
    let (app, key, user) = start().await;
    let mut sock = socket(&app, &key, &user).await;
    let cases = [
        (json!({"value": 1, "tags": ["a", 5]}), Some("tags[1]")),
        (json!({"value": 1, "priority": "high"}), Some("priority")),
        (json!({"value": 1, "version": "2"}), Some("version")),
        (
            json!({"value": 1, "timestamp": "yesterday"}),
            Some("timestamp"),
        ),
        (
            json!({"value": 1, "metadata": {"conflictStrategy": "NOPE"}}),
            Some("metadata.conflictStrategy"),
        ),
        (
            json!({"value": 1, "metadata": {"conflictStrategy": 5}}),
            Some("metadata.conflictStrategy"),
        ),
    ];
    for (body, field) in cases {
        let (status, rest) = app.put("k", &key, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {rest}");
        let mut with_key = body.clone();
        with_key["key"] = json!("k");
        let sock_err = ack_error(&ws::call(&mut sock, "sync:set", &with_key.to_string()).await);
        assert_eq!(rest["code"], "INVALID_BODY", "{body}: {rest}");
        assert_eq!(sock_err["code"], rest["code"], "{body}: {sock_err}");
        assert_eq!(sock_err["details"], rest["details"], "{body}: {sock_err}");
        assert_eq!(rest["details"]["field"].as_str(), field, "{body}: {rest}");
    }
    // An array is no body on either edge (serde would read a struct from
    // its fields in order).
    let (status, rest) = app
        .call(
            Method::PUT,
            "/api/v1/sync-storage/item/k",
            Some(&key),
            Some(json!(["k", 1])),
        )
        .await;
    assert_eq!(
        (status, &rest["code"]),
        (StatusCode::BAD_REQUEST, &json!("INVALID_BODY"))
    );
    let sock_err = ack_error(&ws::call(&mut sock, "sync:set", r#"["k",1]"#).await);
    assert_eq!(sock_err["code"], "INVALID_BODY", "{sock_err}");
    let sock_err = ack_error(&ws::call(&mut sock, "sync:remove", r#"{"key":5}"#).await);
    assert_eq!(sock_err["details"], json!({"field": "key"}), "{sock_err}");
    // Nothing was written by any of it.
    let (status, _) = app.get("/api/v1/sync-storage/item/k", &key).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_value_is_measured_without_its_formatting_on_both_edges() {
    let (app, key, user) = start().await;
    let mut sock = socket(&app, &key, &user).await;
    let pretty = "{\n  \"value\": [1,\n    2, {\"a b\": \"x  y\"}],\n  \"metadata\": {\"m\": 1}\n}";
    let resp = app
        .request(Method::PUT, "/api/v1/sync-storage/item/pretty", Some(&key))
        .header("Content-Type", "application/json")
        .body(pretty)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let rest: Value = resp.json().await.unwrap();
    let ack = ws::call(
        &mut sock,
        "sync:set",
        r#"{"key":"compact","value":[1,2,{"a b":"x  y"}],"metadata":{"m":1}}"#,
    )
    .await;
    let (_, by_rest) = app.get("/api/v1/sync-storage/item/pretty", &key).await;
    let (_, by_socket) = app.get("/api/v1/sync-storage/item/compact", &key).await;
    assert_eq!(by_rest["value"], json!([1, 2, {"a b": "x  y"}]), "{rest}");
    assert_eq!(by_rest["size"], by_socket["size"], "{rest} {ack}");
    // `[1,2,{"a b":"x  y"}]` and `{"m":1}`: whitespace inside strings stays.
    assert_eq!(by_rest["size"], 27);
}

#[tokio::test]
async fn an_api_key_wins_over_any_other_credential_on_both_edges() {
    let (app, key, user) = start().await;
    let list = "/api/v1/sync-storage/keys";
    for authorization in ["Basic c3RhZ2luZzpzZWNyZXQ=", "Bearer not-a-token"] {
        let resp = app
            .request(Method::GET, list, Some(&key))
            .header("Authorization", authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{authorization}");
    }
    let with_token = json!({ "apiKey": key, "token": "not-a-token" });
    let connected = ws::connect(
        app.server.port,
        &format!("userId={user}&instanceId=tab"),
        &with_token,
    )
    .await;
    assert!(connected.is_ok(), "{:?}", connected.err());
    // Without a key, the other credential is the one judged, on both edges.
    let resp = app
        .request(Method::GET, list, None)
        .header("Authorization", "Bearer not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let rest: Value = resp.json().await.unwrap();
    let refused = ws::connect(
        app.server.port,
        &format!("userId={user}&instanceId=tab"),
        &json!({ "token": "not-a-token" }),
    )
    .await
    .expect_err("a bad token is refused");
    assert_eq!(refused["code"], rest["code"], "{refused}");
    assert_eq!(refused["details"], rest["details"], "{refused}");
    assert_eq!(rest["details"]["reason"], "invalid_token");
    let resp = app
        .request(Method::GET, list, None)
        .header("Authorization", "Basic c3RhZ2luZzpzZWNyZXQ=")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["details"]["reason"], "invalid_authorization_header");
    // A credential that names no one credential is refused, not guessed at.
    let resp = app
        .request(Method::GET, list, Some("sk_live_not_a_key"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["details"]["reason"], "malformed_credentials");
    for auth in [
        json!({ "apiKey": 5, "token": "not-a-token" }),
        json!({ "apiKey": key, "token": 5 }),
    ] {
        let refused = ws::connect(
            app.server.port,
            &format!("userId={user}&instanceId=tab&apiKey=sk_live_other"),
            &auth,
        )
        .await
        .expect_err("refused");
        assert_eq!(
            refused["details"]["reason"], "malformed_credentials",
            "{auth}"
        );
    }
}

#[tokio::test]
async fn refusals_name_the_field_they_are_about() {
    let admin = "sk_live_admin_for_the_edges_field_tests_012345";
    let app = TestApp::start(&[("BOOTSTRAP_API_KEY", admin)]).await;
    let keys = "/api/v1/api-keys";
    for (body, field) in [
        (
            json!({"name": "n", "userId": "u", "ipRestrictions": ["not-an-ip"]}),
            "ipRestrictions",
        ),
        (
            json!({"name": "n", "userId": "u", "userAgentPatterns": ["("]}),
            "userAgentPatterns",
        ),
        (
            json!({"name": "n", "userId": "u", "quotaPerHour": -1}),
            "quotaPerHour",
        ),
    ] {
        let (status, b) = app
            .call(Method::POST, keys, Some(admin), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {b}");
        assert_eq!(b["details"]["field"], field, "{body}: {b}");
    }
    for (path, field) in [
        ("/api/v1/sync-storage/conflicts?limit=0", "limit"),
        ("/api/v1/sync-storage/conflicts?status=gone", "status"),
        ("/api/v1/audit?limit=0", "limit"),
        ("/api/v1/analytics/dashboard?granularity=x", "granularity"),
        ("/api/v1/sync-storage/keys?prefix=a&prefix=b", "prefix"),
    ] {
        let (status, b) = app.get(path, admin).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {b}");
        assert_eq!(b["code"], "INVALID_QUERY", "{path}: {b}");
        assert_eq!(b["details"]["field"], field, "{path}: {b}");
    }
    let (status, b) = app.put("k", admin, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["details"]["field"], "value", "{b}");
    for (query, field) in [("instanceId=tab", "userId"), ("userId=u", "instanceId")] {
        let refused = ws::connect(app.server.port, query, &json!({ "apiKey": admin }))
            .await
            .expect_err("refused");
        assert_eq!(refused["code"], "INVALID_HANDSHAKE", "{refused}");
        assert_eq!(refused["details"]["field"], field, "{refused}");
    }
}

/// A few valid JSON texts have no tree form (`1e400`); they are answered as
/// stored, by `sync:get` as by REST, and a conflict over one is a 409, not a
/// dropped connection.
#[tokio::test]
async fn values_without_a_tree_form_are_answered_as_stored() {
    let (app, key, user) = start().await;
    let mut sock = socket(&app, &key, &user).await;
    let (status, _) = app.put("big", &key, json!({"value": 1})).await;
    assert_eq!(status, StatusCode::OK);
    let resp = app
        .request(Method::PUT, "/api/v1/sync-storage/item/big", Some(&key))
        .header("Content-Type", "application/json")
        .body(r#"{"value": {"a": 1e400, "b": -0}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The socket's raw frame keeps the text: `1e400` is not re-read.
    ws_send_raw(&mut sock, r#"42/sync,7["sync:get",{"key":"big"}]"#).await;
    let ack = ws_ack_text(&mut sock).await;
    assert!(ack.contains(r#""value":{"a":1e400,"b":-0}"#), "{ack}");
    let conflict = json!({"value": 2, "version": 1, "metadata": {"conflictStrategy": "MANUAL"}});
    let (status, body) = app.put("big", &key, conflict).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["details"]["current"]["value"], r#"{"a":1e400,"b":-0}"#);
}

async fn ws_send_raw(ws: &mut ws::Ws, frame: &str) {
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(frame))
        .await
        .expect("send");
}

async fn ws_ack_text(ws: &mut ws::Ws) -> String {
    loop {
        let text = ws::next_text(ws, std::time::Duration::from_secs(5))
            .await
            .expect("an ack");
        if text.starts_with("43/sync,7") {
            return text;
        }
    }
}
