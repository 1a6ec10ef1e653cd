//! User tokens over REST: issue, use, rotate, reuse detection, logout, and
//! forgery attempts.

mod common;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use common::{send, unique_user, TestApp};
use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "test-access-secret-0123456789abcdefghij";
const REFRESH: &str = "test-refresh-secret-0123456789abcdefghij";

async fn start() -> (TestApp, String) {
    let app = TestApp::start(&[
        ("JWT_SECRET", SECRET),
        ("JWT_REFRESH_SECRET", REFRESH),
        ("JWT_EXPIRES_IN", "10m"),
    ])
    .await;
    let issuer = app.key("backend", &["--scopes", "read,write,tokens:issue"]);
    (app, issuer)
}

async fn get_with_bearer(app: &TestApp, token: &str) -> (StatusCode, Value) {
    send(
        app.http
            .get(app.url("/api/v1/sync-storage/keys"))
            .bearer_auth(token),
    )
    .await
}

#[tokio::test]
async fn tokens_act_as_their_user_and_refresh_tokens_rotate_once() {
    let (app, issuer) = start().await;
    let (server, http) = (&app.server, &app.http);
    let user = unique_user("tok");
    let (s, pair) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            Some(&issuer),
            Some(json!({"userId": user})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{pair}");
    assert_eq!(
        (pair["tokenType"].as_str(), pair["expiresIn"].as_u64()),
        (Some("Bearer"), Some(600))
    );
    let access = pair["accessToken"].as_str().unwrap().to_string();
    // The token acts as the user it names, not as the issuing key's user.
    let r = http
        .put(server.url("/api/v1/sync-storage/item/k"))
        .bearer_auth(&access)
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["item"]["userId"],
        user.as_str()
    );
    assert_eq!(get_with_bearer(&app, &access).await.1, json!(["k"]));

    // Rotation: each refresh token works once.
    let first = pair["refreshToken"].as_str().unwrap().to_string();
    let (s, second) = app
        .call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refreshToken": first})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let second_refresh = second["refreshToken"].as_str().unwrap().to_string();
    assert_ne!(second_refresh, first);
    // Reusing the first revokes the family: the second stops working too.
    let (s, b) = app
        .call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refreshToken": first})),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str(), b["details"]["reason"].as_str()),
        (
            StatusCode::UNAUTHORIZED,
            Some("UNAUTHORIZED"),
            Some("token_reused")
        )
    );
    let (s, b) = app
        .call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refreshToken": second_refresh})),
        )
        .await;
    assert_eq!(
        (s, b["details"]["reason"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );

    // Logout revokes a fresh family.
    let (_, pair) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            Some(&issuer),
            Some(json!({"userId": user})),
        )
        .await;
    let refresh = pair["refreshToken"].as_str().unwrap();
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            Some(json!({"refreshToken": refresh})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refreshToken": refresh})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // No secret, key or token reached the logs.
    let log = server.log();
    assert!(!log.contains(SECRET) && !log.contains(&issuer) && !log.contains(&access));
}

#[tokio::test]
async fn only_tokens_issue_keys_mint_tokens_and_never_wider_than_themselves() {
    let (app, _) = start().await;
    let (server, http) = (&app.server, &app.http);
    let plain = server.create_key("someone", &[]);
    let (s, b) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            Some(&plain),
            Some(json!({"userId": "x"})),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("SCOPE_REQUIRED"))
    );
    let read_issuer = server.create_key("ro-backend", &["--scopes", "read,tokens:issue"]);
    let (_, pair) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            Some(&read_issuer),
            Some(json!({"userId": "y", "scopes": ["read", "write"]})),
        )
        .await;
    let token = pair["accessToken"].as_str().unwrap();
    let r = http
        .put(server.url("/api/v1/sync-storage/item/k"))
        .bearer_auth(token)
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Without JWT secrets the endpoints say so.
    let bare = TestApp::start(&[]).await;
    let key = bare.key("b", &["--scopes", "read,tokens:issue"]);
    let (s, b) = bare
        .call(
            Method::POST,
            "/api/v1/auth/token",
            Some(&key),
            Some(json!({"userId": "z"})),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("TOKENS_DISABLED"))
    );
}

/// A token carries read, write and analytics:read only: asking for another
/// scope is refused naming the field, not answered with a token that
/// silently lacks it (it used to be 200 with `scope: []`).
#[tokio::test]
async fn a_token_asked_for_a_scope_it_cannot_carry_is_refused() {
    let (app, _) = start().await;
    let admin_issuer = app.key("admin-backend", &["--scopes", "admin"]);
    for scopes in [
        json!(["admin"]),
        json!(["read", "tokens:issue"]),
        json!(["keys:manage"]),
    ] {
        let (s, b) = app
            .call(
                Method::POST,
                "/api/v1/auth/token",
                Some(&admin_issuer),
                Some(json!({"userId": "u", "scopes": scopes})),
            )
            .await;
        common::assert_error(s, &b, 400, "INVALID_BODY");
        assert_eq!(b["details"]["field"], "scopes", "{b}");
    }
    let (s, pair) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            Some(&admin_issuer),
            Some(json!({"userId": "u", "scopes": ["read", "analytics:read"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{pair}");
    let claims = pair["accessToken"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["scope"], json!(["read", "analytics:read"]));
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let (app, issuer) = start().await;
    let (server, http) = (&app.server, &app.http);
    let now = chrono::Utc::now().timestamp();
    // A genuine token names its issuing key (`kid`), which must still be
    // valid: take the real one from a minted token.
    let (_, pair) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            Some(&issuer),
            Some(json!({"userId": "victim"})),
        )
        .await;
    let payload = pair["accessToken"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap();
    let minted: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let claims = json!({"sub": "victim", "iat": now, "exp": now + 600, "jti": "j", "typ": "access", "scope": ["read", "write"], "kid": minted["kid"]});
    // alg: none, no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims)
    );
    // HS/RS confusion: an RS256 header over an HMAC made with the secret.
    let mut rs = Header::new(jsonwebtoken::Algorithm::HS256);
    let hs_body = encode(&rs, &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap();
    let sig = hs_body.rsplit('.').next().unwrap().to_string();
    rs.alg = jsonwebtoken::Algorithm::RS256;
    let confused = format!(
        "{}.{}.{sig}",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(&claims)
    );
    // Signed with another secret.
    let wrong = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not"),
    )
    .unwrap();
    // Expired, correctly signed.
    let mut old = claims.clone();
    old["exp"] = json!(now - 3600);
    let expired = encode(
        &Header::default(),
        &old,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // A refresh token used as an access token.
    let mut refresh = claims.clone();
    refresh["typ"] = json!("refresh");
    let wrong_kind = encode(
        &Header::default(),
        &refresh,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for (name, token, reason) in [
        ("alg none", none.as_str(), "invalid_token"),
        ("RS256 confusion", confused.as_str(), "invalid_token"),
        ("wrong secret", wrong.as_str(), "invalid_token"),
        ("expired", expired.as_str(), "token_expired"),
        ("refresh as access", wrong_kind.as_str(), "invalid_token"),
        ("garbage", "a.b.c", "invalid_token"),
    ] {
        let (s, b) = get_with_bearer(&app, token).await;
        assert_eq!(
            (s, b["details"]["reason"].as_str()),
            (StatusCode::UNAUTHORIZED, Some(reason)),
            "{name}: {b}"
        );
    }
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("syncstore_auth_denials_total{code=\"UNAUTHORIZED\"} 6"),
        "forgeries are counted"
    );
    // The genuine article works, to show the refusals are not blanket.
    let good = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(get_with_bearer(&app, &good).await.0, StatusCode::OK);
}

/// User A's key or token reaches nothing of user B's, through any endpoint.
#[tokio::test]
async fn tenants_are_isolated_across_every_endpoint() {
    let (app, issuer) = start().await;
    let (server, http) = (&app.server, &app.http);
    let alice = unique_user("alice");
    let bob = unique_user("bob");
    let bob_key = server.create_key(&bob, &["--scopes", "read,write,keys:manage"]);
    let (_, pair) = app
        .call(
            Method::POST,
            "/api/v1/auth/token",
            Some(&issuer),
            Some(json!({"userId": alice})),
        )
        .await;
    let alice_token = pair["accessToken"].as_str().unwrap().to_string();
    let alice_key = server.create_key(&alice, &["--scopes", "read,write,keys:manage"]);
    // Bob's data: an item, a pending conflict, a key.
    let bob_put = |v: Value| {
        http.put(server.url("/api/v1/sync-storage/item/secret"))
            .header("X-API-Key", &bob_key)
            .json(&v)
            .send()
    };
    bob_put(json!({"value": "bob's"})).await.unwrap();
    bob_put(json!({"value": "bob's 2", "version": 1}))
        .await
        .unwrap();
    let conflict: Value =
        bob_put(json!({"value": "x", "version": 1, "metadata": {"conflictStrategy": "MANUAL"}}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    let conflict_id = conflict["conflictId"].as_str().unwrap().to_string();
    let bob_keys: Value = http
        .get(server.url("/api/v1/api-keys"))
        .header("X-API-Key", &bob_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bob_key_id = bob_keys[0]["id"].as_str().unwrap().to_string();

    for (who, auth) in [
        ("alice's key", ("X-API-Key", alice_key.clone())),
        (
            "alice's token",
            ("Authorization", format!("Bearer {alice_token}")),
        ),
    ] {
        let req = |m: reqwest::Method, path: &str| {
            http.request(m, server.url(path))
                .header(auth.0, auth.1.as_str())
        };
        let item = req(reqwest::Method::GET, "/api/v1/sync-storage/item/secret")
            .send()
            .await
            .unwrap();
        assert_eq!(item.status(), StatusCode::NOT_FOUND, "{who}");
        let keys: Value = req(reqwest::Method::GET, "/api/v1/sync-storage/keys")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(keys, json!([]), "{who}");
        let items: Value = req(reqwest::Method::GET, "/api/v1/sync-storage/items")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(items, json!([]), "{who}");
        assert_eq!(
            req(reqwest::Method::DELETE, "/api/v1/sync-storage/item/secret")
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::NOT_FOUND,
            "{who}"
        );
        let sessions: Value = req(reqwest::Method::GET, "/api/v1/sync-storage/sessions")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(sessions, json!([]), "{who}");
        let queue: Value = req(reqwest::Method::GET, "/api/v1/sync-storage/conflicts")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(queue["items"], json!([]), "{who}");
        let history: Value = req(
            reqwest::Method::GET,
            "/api/v1/sync-storage/conflicts/history/secret",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(history, json!([]), "{who}");
        let resolve = req(
            reqwest::Method::PUT,
            &format!("/api/v1/sync-storage/conflicts/resolve/{conflict_id}"),
        )
        .json(&json!({"strategy": "MANUAL", "resolvedValue": "stolen"}))
        .send()
        .await
        .unwrap();
        assert_eq!(resolve.status(), StatusCode::NOT_FOUND, "{who}");
        let clear: Value = req(reqwest::Method::DELETE, "/api/v1/sync-storage/clear")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(clear["cleared"], 0, "{who}");
        assert_eq!(
            req(reqwest::Method::GET, "/api/v1/audit")
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::FORBIDDEN,
            "{who}"
        );
    }
    // Key management: alice's manager key sees and touches none of bob's keys.
    let km = |m: reqwest::Method, path: String| {
        http.request(m, server.url(&path))
            .header("X-API-Key", &alice_key)
    };
    assert_eq!(
        km(
            reqwest::Method::GET,
            format!("/api/v1/api-keys/{bob_key_id}")
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        km(
            reqwest::Method::DELETE,
            format!("/api/v1/api-keys/{bob_key_id}")
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        km(
            reqwest::Method::POST,
            format!("/api/v1/api-keys/{bob_key_id}/rotate")
        )
        .send()
        .await
        .unwrap()
        .status(),
        StatusCode::NOT_FOUND
    );
    // And bob still has everything.
    let mine: Value = http
        .get(server.url("/api/v1/sync-storage/item/secret"))
        .header("X-API-Key", &bob_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["value"], "bob's 2");
    // CORS preflights are answered for the API headers.
    let pre = http
        .request(
            reqwest::Method::OPTIONS,
            server.url("/api/v1/sync-storage/keys"),
        )
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "PUT")
        .header("Access-Control-Request-Headers", "x-api-key,content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
}
