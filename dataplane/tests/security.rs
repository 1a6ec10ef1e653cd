//! Security regressions of the outside penetration test (issue 13), against
//! the real binary on SQLite and PostgreSQL: key management cannot escalate,
//! user tokens die with their issuing key, a refresh racing a logout never
//! survives it, token users have their own rate limits, and `nbf` is
//! honoured.

mod common;

use common::{key_id, send, unique_user, Server};
use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const SECRET: &str = "security-access-secret-0123456789abcdefgh";
const REFRESH: &str = "security-refresh-secret-0123456789abcdefg";

/// A server on `backend` with user tokens on, plus `extra` variables.
async fn start(backend: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("JWT_SECRET", SECRET), ("JWT_REFRESH_SECRET", REFRESH)];
    env.extend_from_slice(extra);
    Server::with_database(common::database_url(backend), &env).await
}

/// `syncstore keys create` on the server's database; returns (key, id).
async fn key(server: &Server, user: &str, extra: &[&str]) -> (String, String) {
    let key = server.create_key(user, extra);
    let id = key_id(server, &key).await;
    (key, id)
}

async fn call(
    http: &Client,
    method: reqwest::Method,
    url: String,
    auth: (&str, &str),
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url).header(auth.0, auth.1);
    if let Some(b) = body {
        req = req.json(&b);
    }
    send(req).await
}

fn exceeds(body: &Value) -> Vec<String> {
    body["details"]["exceeds"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn key_management_never_leaves_a_key_stronger_than_its_manager(backend: &str) {
    let server = start(backend, &[]).await;
    let http = Client::new();
    let user = unique_user("esc");
    let (admin, admin_id) = key(&server, &user, &["--scopes", "admin"]).await;
    let (manager, manager_id) = key(&server, &user, &["--scopes", "read,keys:manage"]).await;
    let (_, writer_id) = key(&server, &user, &["--scopes", "read,write"]).await;
    let (_, reader_id) = key(&server, &user, &["--scopes", "read"]).await;
    let m = ("X-API-Key", manager.as_str());
    let a = ("X-API-Key", admin.as_str());
    let url = |p: &str| server.url(&format!("/api/v1/api-keys{p}"));
    use reqwest::Method as M;

    // Rotating the admin key would mint a working admin key: refused.
    let (s, b) = call(&http, M::POST, url(&format!("/{admin_id}/rotate")), m, None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN")),
        "{b}"
    );
    assert_eq!(
        exceeds(&b),
        [
            "write",
            "admin",
            "analytics:read",
            "tokens:issue",
            "canWrite"
        ]
    );
    // Renaming it would leave it holding admin: refused.
    let (s, _) = call(
        &http,
        M::PATCH,
        url(&format!("/{admin_id}")),
        m,
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // canWrite on a read key, though the manager has no write.
    let (s, b) = call(
        &http,
        M::PATCH,
        url(&format!("/{reader_id}")),
        m,
        Some(json!({"canWrite": true})),
    )
    .await;
    assert_eq!(
        (s, exceeds(&b)),
        (StatusCode::FORBIDDEN, vec!["canWrite".to_string()]),
        "{b}"
    );
    // An admin deactivates the write key; the manager may not re-activate it.
    let (s, _) = call(
        &http,
        M::PATCH,
        url(&format!("/{writer_id}")),
        a,
        Some(json!({"isActive": false})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = call(
        &http,
        M::PATCH,
        url(&format!("/{writer_id}")),
        m,
        Some(json!({"isActive": true})),
    )
    .await;
    assert_eq!(
        (s, exceeds(&b)),
        (
            StatusCode::FORBIDDEN,
            // Re-activation is judged like creation: the writer was made
            // after the manager, so its default lifetime outlives it too.
            vec![
                "write".to_string(),
                "canWrite".to_string(),
                "expiresAt".to_string()
            ]
        ),
        "{b}"
    );
    // Creating a key with a scope the manager lacks.
    let (s, b) = call(
        &http,
        M::POST,
        url(""),
        m,
        Some(json!({"scopes": ["read", "tokens:issue"]})),
    )
    .await;
    assert_eq!(
        (s, exceeds(&b)),
        (StatusCode::FORBIDDEN, vec!["tokens:issue".to_string()]),
        "{b}"
    );
    // An inactive key is judged as if active: no stronger key waits for a
    // re-activation, and no longer-lived one.
    let (s, b) = call(
        &http,
        M::POST,
        url(""),
        m,
        Some(json!({"scopes": ["admin"], "isActive": false, "expiresAt": 4_611_686_018_427_387_904_i64})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        exceeds(&b).contains(&"expiresAt".to_string())
            && exceeds(&b).contains(&"admin".to_string()),
        "{b}"
    );
    // What the manager holds itself it may grant, rotate and take away.
    let (s, b) = call(
        &http,
        M::POST,
        url(""),
        m,
        Some(json!({"scopes": ["read"]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(
        (b["canRead"].as_bool(), b["canWrite"].as_bool()),
        (Some(true), Some(false))
    );
    let (s, b) = call(
        &http,
        M::POST,
        url(&format!("/{reader_id}/rotate")),
        m,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // The rotated key never outlives the manager that rotated it.
    let (_, me) = call(&http, M::GET, url(&format!("/{manager_id}")), a, None).await;
    assert!(
        b["expiresAt"].as_i64().is_some() && b["expiresAt"].as_i64() <= me["expiresAt"].as_i64(),
        "{b} {me}"
    );
    let (s, b) = call(
        &http,
        M::PATCH,
        url(&format!("/{admin_id}")),
        m,
        Some(json!({"isActive": false})),
    )
    .await;
    assert_eq!(
        (s, b["isActive"].as_bool()),
        (StatusCode::OK, Some(false)),
        "deactivating grants nothing"
    );
    let (s, _) = call(
        &http,
        M::PATCH,
        url(&format!("/{admin_id}")),
        m,
        Some(json!({"isActive": true})),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "re-activating is judged like creating"
    );
    // The old admin key stays deactivated: it cannot read the audit trail.
    let (s, _) = call(&http, M::GET, server.url("/api/v1/audit"), a, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Restrictions, expiry and quotas: a restricted manager may only tighten.
    let (limited, _) = key(
        &server,
        &user,
        &[
            "--scopes",
            "read,keys:manage",
            "--ip",
            "127.0.0.0/8",
            "--quota-per-minute",
            "100",
        ],
    )
    .await;
    let l = ("X-API-Key", limited.as_str());
    let (s, b) = call(
        &http,
        M::POST,
        url(""),
        l,
        Some(json!({"scopes": ["read"]})),
    )
    .await;
    assert_eq!(
        (s, exceeds(&b)),
        (
            StatusCode::FORBIDDEN,
            vec!["ipRestrictions".to_string(), "quotaPerMinute".to_string()]
        ),
        "{b}"
    );
    let (s, b) = call(
        &http,
        M::POST,
        url(""),
        l,
        Some(json!({"scopes": ["read"], "ipRestrictions": ["127.0.0.1"], "quotaPerMinute": 10})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn key_management_never_escalates_sqlite() {
    key_management_never_leaves_a_key_stronger_than_its_manager("sqlite").await;
}

#[tokio::test]
async fn key_management_never_escalates_postgres() {
    key_management_never_leaves_a_key_stronger_than_its_manager("postgres").await;
}

async fn mint(http: &Client, server: &Server, issuer: &str, user: &str) -> (StatusCode, Value) {
    call(
        http,
        reqwest::Method::POST,
        server.url("/api/v1/auth/token"),
        ("X-API-Key", issuer),
        Some(json!({"userId": user})),
    )
    .await
}

async fn refresh(http: &Client, server: &Server, token: &str) -> (StatusCode, Value) {
    send(
        http.post(server.url("/api/v1/auth/refresh"))
            .json(&json!({"refreshToken": token})),
    )
    .await
}

async fn put_with(http: &Client, server: &Server, access: &str) -> (StatusCode, Value) {
    call(
        http,
        reqwest::Method::PUT,
        server.url("/api/v1/sync-storage/item/k"),
        ("Authorization", &format!("Bearer {access}")),
        Some(json!({"value": 1})),
    )
    .await
}

fn reason(b: &Value) -> Option<&str> {
    b["details"]["reason"].as_str()
}

async fn tokens_die_with_their_issuing_key(backend: &str) {
    let server = start(backend, &[]).await;
    let http = Client::new();
    let owner = unique_user("iss");
    let (admin, _) = key(&server, &owner, &["--scopes", "admin"]).await;
    let (issuer, issuer_id) = key(&server, &owner, &["--scopes", "read,write,tokens:issue"]).await;
    let patch = |body: Value| {
        call(
            &http,
            reqwest::Method::PATCH,
            server.url(&format!("/api/v1/api-keys/{issuer_id}")),
            ("X-API-Key", admin.as_str()),
            Some(body),
        )
    };
    let user = unique_user("tok");
    let (s, pair) = mint(&http, &server, &issuer, &user).await;
    assert_eq!(s, StatusCode::OK, "{pair}");
    let access = pair["accessToken"].as_str().unwrap().to_string();
    assert_eq!(put_with(&http, &server, &access).await.0, StatusCode::OK);

    // The key loses write: the token loses it too, and so does a refreshed pair.
    assert_eq!(
        patch(json!({"scopes": ["read", "tokens:issue"]})).await.0,
        StatusCode::OK
    );
    let (s, b) = put_with(&http, &server, &access).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN")),
        "{b}"
    );
    let (s, pair2) = refresh(&http, &server, pair["refreshToken"].as_str().unwrap()).await;
    assert_eq!(s, StatusCode::OK, "{pair2}");
    let (s, _) = put_with(&http, &server, pair2["accessToken"].as_str().unwrap()).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Deactivated, losing tokens:issue, or expired: access and refresh are refused.
    for (change, undo) in [
        (
            json!({"isActive": false}),
            // Re-activation is judged like creation: within the admin's own lifetime.
            json!({"isActive": true, "expiresAt": chrono::Utc::now().timestamp_millis() + 86_400_000}),
        ),
        (
            json!({"scopes": ["read"]}),
            json!({"scopes": ["read", "tokens:issue"]}),
        ),
        (
            json!({"expiresAt": 1_000}),
            // Not "never": the admin key itself expires, after the default lifetime.
            json!({"expiresAt": chrono::Utc::now().timestamp_millis() + 86_400_000}),
        ),
    ] {
        let (_, pair) = mint(&http, &server, &issuer, &user).await;
        assert_eq!(patch(change.clone()).await.0, StatusCode::OK);
        let (s, b) = put_with(&http, &server, pair["accessToken"].as_str().unwrap()).await;
        assert_eq!(
            (s, reason(&b)),
            (StatusCode::UNAUTHORIZED, Some("issuer_revoked")),
            "{change}: {b}"
        );
        let (s, b) = refresh(&http, &server, pair["refreshToken"].as_str().unwrap()).await;
        assert_eq!(
            (s, reason(&b)),
            (StatusCode::UNAUTHORIZED, Some("issuer_revoked")),
            "{change}: {b}"
        );
        assert_eq!(patch(undo).await.0, StatusCode::OK);
    }

    // Deleted.
    let (_, pair) = mint(&http, &server, &issuer, &user).await;
    let (s, _) = call(
        &http,
        reqwest::Method::DELETE,
        server.url(&format!("/api/v1/api-keys/{issuer_id}")),
        ("X-API-Key", admin.as_str()),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = put_with(&http, &server, pair["accessToken"].as_str().unwrap()).await;
    assert_eq!(
        (s, reason(&b)),
        (StatusCode::UNAUTHORIZED, Some("issuer_revoked")),
        "{b}"
    );
    let (s, b) = refresh(&http, &server, pair["refreshToken"].as_str().unwrap()).await;
    assert_eq!(
        (s, reason(&b)),
        (StatusCode::UNAUTHORIZED, Some("issuer_revoked")),
        "{b}"
    );
}

#[tokio::test]
async fn tokens_die_with_their_issuing_key_sqlite() {
    tokens_die_with_their_issuing_key("sqlite").await;
}

#[tokio::test]
async fn tokens_die_with_their_issuing_key_postgres() {
    tokens_die_with_their_issuing_key("postgres").await;
}

async fn refresh_racing_logout_never_survives(backend: &str) {
    let server = start(backend, &[]).await;
    let http = Client::new();
    let (issuer, _) = key(
        &server,
        &unique_user("race"),
        &["--scopes", "read,write,tokens:issue"],
    )
    .await;
    let user = unique_user("race");
    let logout = |t: String| {
        let req = http
            .post(server.url("/api/v1/auth/logout"))
            .json(&json!({"refreshToken": t}));
        async move { req.send().await.unwrap().status() }
    };

    // Logout first: the refresh is refused.
    let (_, pair) = mint(&http, &server, &issuer, &user).await;
    let r = pair["refreshToken"].as_str().unwrap().to_string();
    assert_eq!(logout(r.clone()).await, StatusCode::OK);
    let (s, b) = refresh(&http, &server, &r).await;
    assert_eq!(
        (s, reason(&b)),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );

    // Refresh first: the logout of the spent token ends the new one too.
    let (_, pair) = mint(&http, &server, &issuer, &user).await;
    let r = pair["refreshToken"].as_str().unwrap().to_string();
    let (s, next) = refresh(&http, &server, &r).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(logout(r).await, StatusCode::OK);
    let (s, b) = refresh(&http, &server, next["refreshToken"].as_str().unwrap()).await;
    assert_eq!(
        (s, reason(&b)),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );

    // Both at once, many times: whatever the interleaving, nothing survives.
    let mut refreshed = 0;
    for _ in 0..25 {
        let (_, pair) = mint(&http, &server, &issuer, &user).await;
        let r = pair["refreshToken"].as_str().unwrap().to_string();
        let ((s, next), _) = tokio::join!(refresh(&http, &server, &r), logout(r.clone()));
        if s == StatusCode::OK {
            refreshed += 1;
            let (s, b) = refresh(&http, &server, next["refreshToken"].as_str().unwrap()).await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "a refresh outlived its logout: {b}"
            );
        }
    }
    eprintln!("{backend}: {refreshed} of 25 refreshes won the race; none survived");
}

#[tokio::test]
async fn refresh_racing_logout_never_survives_sqlite() {
    refresh_racing_logout_never_survives("sqlite").await;
}

#[tokio::test]
async fn refresh_racing_logout_never_survives_postgres() {
    refresh_racing_logout_never_survives("postgres").await;
}

#[tokio::test]
async fn token_users_have_their_own_rate_limit_and_minting_counts_quotas() {
    let server = start("sqlite", &[("RATE_LIMIT_MAX_REQUESTS", "30")]).await;
    let http = Client::new();
    let (issuer, _) = key(
        &server,
        &unique_user("app"),
        &[
            "--scopes",
            "read,write,tokens:issue",
            "--quota-per-minute",
            "5",
        ],
    )
    .await;
    let (a, b) = (unique_user("a"), unique_user("b"));
    let (_, pa) = mint(&http, &server, &issuer, &a).await;
    let (_, pb) = mint(&http, &server, &issuer, &b).await;
    let get = |t: &str| {
        let req = http
            .get(server.url("/api/v1/sync-storage/keys"))
            .bearer_auth(t);
        async move { req.send().await.unwrap().status() }
    };
    let ta = pa["accessToken"].as_str().unwrap().to_string();
    for i in 0..30 {
        assert_eq!(get(&ta).await, StatusCode::OK, "request {i} of user a");
    }
    assert_eq!(get(&ta).await, StatusCode::TOO_MANY_REQUESTS, "a's 31st");
    // Refreshing counts against the user too: a's refresh is refused now.
    let (s, b) = refresh(&http, &server, pa["refreshToken"].as_str().unwrap()).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("RATE_LIMITED")),
        "{b}"
    );
    assert_eq!(
        get(pb["accessToken"].as_str().unwrap()).await,
        StatusCode::OK,
        "b is not locked out by a"
    );

    // Minting is the key's own use: 2 done, 3 more within its quota of 5 a minute.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (s, b) = mint(&http, &server, &issuer, &unique_user("c")).await;
        statuses.push((s, b["code"].as_str().map(str::to_owned)));
    }
    let ok = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .count();
    let refused = statuses
        .iter()
        .filter(|(s, c)| {
            *s == StatusCode::TOO_MANY_REQUESTS && c.as_deref() == Some("QUOTA_EXCEEDED")
        })
        .count();
    assert_eq!((ok, refused), (3, 2), "{statuses:?}");
}

#[tokio::test]
async fn tokens_not_yet_valid_are_refused() {
    let server = start("sqlite", &[]).await;
    let http = Client::new();
    let (issuer, issuer_id) = key(
        &server,
        &unique_user("nbf"),
        &["--scopes", "read,write,tokens:issue"],
    )
    .await;
    let now = chrono::Utc::now().timestamp();
    let token = |nbf: i64| {
        encode(
            &Header::default(),
            &json!({"sub": "nbf-user", "iat": now, "nbf": nbf, "exp": now + 7200, "jti": "j",
                    "typ": "access", "scope": ["read", "write"], "kid": issuer_id}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let (s, b) = put_with(&http, &server, &token(now + 3600)).await;
    assert_eq!(
        (s, reason(&b)),
        (StatusCode::UNAUTHORIZED, Some("token_not_yet_valid")),
        "{b}"
    );
    // Within the documented 5 s leeway, and in the past: accepted.
    assert_eq!(
        put_with(&http, &server, &token(now + 2)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        put_with(&http, &server, &token(now - 60)).await.0,
        StatusCode::OK
    );
    drop(issuer);
}
