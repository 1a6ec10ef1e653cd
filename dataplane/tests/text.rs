//! Text the database cannot store or compare (issue 13, item 9), through
//! the real binary on SQLite, PostgreSQL and MariaDB: ids and keys compare
//! byte-exactly, every text field with a NUL is refused naming the field,
//! and malformed percent-encoding in a path or query is refused.

mod common;

use common::{mysql_url, postgres_url, unique_user, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A 400 in the house envelope, with the given code and `details.field`.
fn assert_refused(got: &(StatusCode, Value), code: &str, field: &str) {
    let (status, body) = got;
    assert_eq!(status.as_u16(), 400, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["details"]["field"], field, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

/// `alice` and `alice ` are two tenants; `a` and `a ` two keys.
async fn trailing_spaces_make_other_tenants_and_other_keys(database_url: Option<String>) {
    let api = TestApp::with_database(database_url, &[]).await;
    let alice = unique_user("alice");
    let padded = format!("{alice} ");
    let (ka, kp) = (api.key(&alice, &[]), api.key(&padded, &[]));
    for k in ["a", "b", "c"] {
        let got = api
            .call(
                Method::PUT,
                &format!("/api/v1/sync-storage/item/{k}"),
                Some(&ka),
                Some(json!({"value": k})),
            )
            .await;
        assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    }
    // The key `a ` next to `a`: 200, not the 500 of a unique-index clash.
    let got = api
        .call(
            Method::PUT,
            "/api/v1/sync-storage/item/a%20",
            Some(&ka),
            Some(json!({"value": "a-space"})),
        )
        .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    assert_eq!(got.1["item"]["key"], "a ");
    let (_, keys) = api
        .call(
            Method::GET,
            "/api/v1/sync-storage/keys?prefix=a",
            Some(&ka),
            None,
        )
        .await;
    assert_eq!(keys, json!(["a", "a "]));
    let (_, one) = api
        .call(Method::GET, "/api/v1/sync-storage/item/a", Some(&ka), None)
        .await;
    assert_eq!(one["value"], "a");

    // The padded user sees none of alice's items, and has its own.
    let (_, theirs) = api
        .call(Method::GET, "/api/v1/sync-storage/items", Some(&kp), None)
        .await;
    assert_eq!(theirs, json!([]));
    let got = api
        .call(
            Method::PUT,
            "/api/v1/sync-storage/item/a",
            Some(&kp),
            Some(json!({"value": "padded"})),
        )
        .await;
    assert_eq!(
        (
            got.0,
            got.1["item"]["version"].as_i64(),
            got.1["item"]["seq"].as_i64()
        ),
        (StatusCode::OK, Some(1), Some(1)),
        "a new item at the start of its own sequence: {}",
        got.1
    );
    let (_, cleared) = api
        .call(
            Method::DELETE,
            "/api/v1/sync-storage/clear",
            Some(&kp),
            None,
        )
        .await;
    assert_eq!(cleared["cleared"], 1);
    let (_, mine) = api
        .call(Method::GET, "/api/v1/sync-storage/items", Some(&ka), None)
        .await;
    assert_eq!(mine.as_array().map(Vec::len), Some(4), "{mine}");
    assert!(mine
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["userId"] == alice.as_str()));
}

/// A NUL in any text field is a 400 naming the field (it was a 500 on
/// PostgreSQL), and a malformed escape is refused rather than stored.
async fn unstorable_text_is_refused_naming_the_field(database_url: Option<String>) {
    let api = TestApp::with_database(database_url, &[]).await;
    let user = unique_user("nul");
    // Manages its own keys (so its list is its own); `admin` for the rest.
    let manager = api.key(&user, &["--scopes", "read,write,keys:manage"]);
    let key = api.key(&user, &["--scopes", "read,write,keys:manage,admin"]);
    let put = |path: &'static str, body: Value| api.call(Method::PUT, path, Some(&key), Some(body));
    for (field, body) in [
        (
            "compressionType",
            json!({"value": 1, "compressionType": "gz\0"}),
        ),
        (
            "encryptionType",
            json!({"value": 1, "encryptionType": "a\0b"}),
        ),
        ("tags", json!({"value": 1, "tags": ["x\0"]})),
    ] {
        assert_refused(
            &put("/api/v1/sync-storage/item/k", body).await,
            "INVALID_BODY",
            field,
        );
    }
    // Key management: the name, the owner and each restriction list.
    for (field, body) in [
        ("name", json!({"name": "phone\0app"})),
        ("userId", json!({"userId": "bob\0"})),
        (
            "ipRestrictions",
            json!({"ipRestrictions": ["10.0.0.0/8\0"]}),
        ),
        (
            "countryRestrictions",
            json!({"countryRestrictions": ["G\0"]}),
        ),
        (
            "domainRestrictions",
            json!({"domainRestrictions": ["a.example\0"]}),
        ),
        ("userAgentPatterns", json!({"userAgentPatterns": ["^A\0"]})),
    ] {
        let got = api
            .call(Method::POST, "/api/v1/api-keys", Some(&manager), Some(body))
            .await;
        assert_refused(&got, "INVALID_BODY", field);
    }
    let (_, listed) = api
        .call(Method::GET, "/api/v1/api-keys", Some(&manager), None)
        .await;
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(2),
        "nothing was created"
    );
    // Ids in paths and queries.
    for (path, code, field) in [
        ("/api/v1/sync-storage/item/a%00b", "INVALID_KEY", "key"),
        ("/api/v1/sync-storage/item/a%ZZ", "INVALID_KEY", "key"),
        ("/api/v1/sync-storage/item/a%2", "INVALID_KEY", "key"),
        (
            "/api/v1/sync-storage/keys?prefix=a%ZZ",
            "INVALID_QUERY",
            "query",
        ),
        (
            "/api/v1/sync-storage/keys?prefix=a%00",
            "INVALID_QUERY",
            "prefix",
        ),
        ("/api/v1/api-keys/k%00", "INVALID_QUERY", "id"),
        (
            "/api/v1/sync-storage/conflicts/history/x%00",
            "INVALID_KEY",
            "item",
        ),
        ("/api/v1/audit?userId=u%00", "INVALID_QUERY", "userId"),
        ("/api/v1/audit?requestId=r%00", "INVALID_QUERY", "requestId"),
        ("/api/v1/analytics/users/u%00", "INVALID_QUERY", "user"),
        ("/api/v1/analytics/instances/i%00", "INVALID_QUERY", "id"),
        (
            "/api/v1/analytics/instances/i?userId=u%00",
            "INVALID_QUERY",
            "userId",
        ),
    ] {
        let got = api.call(Method::GET, path, Some(&key), None).await;
        assert_refused(&got, code, field);
    }
    let got = api
        .call(
            Method::PUT,
            "/api/v1/sync-storage/conflicts/resolve/c%00",
            Some(&key),
            Some(json!({"strategy": "MANUAL", "resolvedValue": 1})),
        )
        .await;
    assert_refused(&got, "INVALID_QUERY", "id");
    let got = api
        .call(
            Method::POST,
            "/api/v1/sync-storage/conflicts/analyze",
            Some(&key),
            Some(json!({"itemIds": ["ok", "x\0"]})),
        )
        .await;
    assert_refused(&got, "INVALID_BODY", "itemIds");
    let got = put("/api/v1/sync-storage/item/a%ZZ", json!({"value": 1})).await;
    assert_refused(&got, "INVALID_KEY", "key");
    // Nothing above was stored: `a%ZZ` in particular is not a key.
    let (_, keys) = api
        .call(Method::GET, "/api/v1/sync-storage/keys", Some(&key), None)
        .await;
    assert_eq!(keys, json!([]));
    // Good escapes still decode.
    let got = put(
        "/api/v1/sync-storage/item/100%25%2Fa%C3%A9",
        json!({"value": 1}),
    )
    .await;
    assert_eq!(
        (got.0, got.1["item"]["key"].as_str()),
        (StatusCode::OK, Some("100%/aé"))
    );
}

/// Socket.IO: keys and fields in event payloads are not percent-encoded,
/// so the same validation is all that applies, with the same codes and
/// `details.field`; the handshake's ids likewise.
#[tokio::test]
async fn socket_events_refuse_unstorable_text_naming_the_field() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let api = TestApp::with_database(None, &[]).await;
    let user = unique_user("sock");
    let key = api.key(&user, &[]);
    let (port, key) = (api.server.port, key.as_str());
    let open = move |query: String| async move {
        let url = format!("ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&{query}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
        ws.next().await.expect("open").expect("frame");
        ws.send(Message::text(format!("40/sync,{{\"apiKey\":\"{key}\"}}")))
            .await
            .expect("connect");
        ws
    };
    // The next frame that starts with `prefix`, as JSON after it.
    async fn next_after<S>(ws: &mut S, prefix: &str) -> Value
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        loop {
            let msg = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
                .await
                .expect("a reply in time")
                .expect("open")
                .expect("frame");
            if let Some(rest) = msg.to_text().unwrap_or("").strip_prefix(prefix) {
                return serde_json::from_str(rest).expect("json");
            }
        }
    }

    let mut refused = open(format!("userId={}%00&instanceId=d", user)).await;
    let err = next_after(&mut refused, "44/sync,").await;
    let err: Value = serde_json::from_str(err["message"].as_str().unwrap()).unwrap();
    assert_eq!(err["code"], "INVALID_HANDSHAKE");

    let mut ws = open(format!("userId={user}&instanceId=d")).await;
    next_after(&mut ws, "40/sync,").await;
    for (n, (payload, code, field)) in [
        (
            json!({"key": "k", "value": 1, "compressionType": "gz\0"}),
            "INVALID_BODY",
            "compressionType",
        ),
        (
            json!({"key": "k", "value": 1, "encryptionType": "\0"}),
            "INVALID_BODY",
            "encryptionType",
        ),
        (
            json!({"key": "k", "value": 1, "tags": ["\0"]}),
            "INVALID_BODY",
            "tags",
        ),
        (json!({"key": "a\0b", "value": 1}), "INVALID_KEY", "key"),
        (
            json!({"key": "a%ZZ\u{7}", "value": 1}),
            "INVALID_KEY",
            "key",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let frame = format!("42/sync,{n}{}", json!(["sync:set", payload]));
        ws.send(Message::text(frame)).await.expect("send");
        let ack = next_after(&mut ws, &format!("43/sync,{n}")).await;
        assert_eq!(ack[0]["error"]["code"], code, "{ack}");
        assert_eq!(ack[0]["error"]["details"]["field"], field, "{ack}");
    }
    // A literal `a%ZZ` in an event is just a key (nothing is decoded there).
    let frame = format!(
        "42/sync,7{}",
        json!(["sync:set", {"key": "a%ZZ", "value": 1}])
    );
    ws.send(Message::text(frame)).await.expect("send");
    let ack = next_after(&mut ws, "43/sync,7").await;
    assert_eq!(
        (ack[0]["status"].as_str(), ack[0]["item"]["key"].as_str()),
        (Some("applied"), Some("a%ZZ")),
        "{ack}"
    );
}

#[tokio::test]
async fn sqlite_trailing_spaces_make_other_tenants_and_other_keys() {
    trailing_spaces_make_other_tenants_and_other_keys(None).await;
}

#[tokio::test]
async fn postgres_trailing_spaces_make_other_tenants_and_other_keys() {
    trailing_spaces_make_other_tenants_and_other_keys(Some(postgres_url())).await;
}

#[tokio::test]
async fn mariadb_trailing_spaces_make_other_tenants_and_other_keys() {
    trailing_spaces_make_other_tenants_and_other_keys(Some(mysql_url())).await;
}

#[tokio::test]
async fn sqlite_unstorable_text_is_refused_naming_the_field() {
    unstorable_text_is_refused_naming_the_field(None).await;
}

#[tokio::test]
async fn postgres_unstorable_text_is_refused_naming_the_field() {
    unstorable_text_is_refused_naming_the_field(Some(postgres_url())).await;
}

#[tokio::test]
async fn mariadb_unstorable_text_is_refused_naming_the_field() {
    unstorable_text_is_refused_naming_the_field(Some(mysql_url())).await;
}
