//! Analytics are per user (issue 13, item 10), against the real binary on
//! SQLite, PostgreSQL and MariaDB: a user without `analytics:read` who names
//! a device like another user's (or `rest`, every REST call's default) sees
//! only its own figures, and user ids that LIKE would confuse (`u_1` and
//! `u\x1`, `u%` and `u\q`) see only their own routes.

mod common;

use std::{
    ops::Deref,
    time::{Duration, Instant},
};

use common::{mysql_url, postgres_url, send, TestApp};
use reqwest::Method;
use serde_json::Value;

/// A [`TestApp`] whose writes name a device and whose reads are analytics.
struct Api(TestApp);

impl Deref for Api {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.0
    }
}

impl Api {
    async fn start(database_url: Option<String>) -> Api {
        Api(TestApp::with_database(database_url, &[]).await)
    }

    /// A write as device `instance` (REST's default `rest` when None).
    async fn put(&self, key: &str, instance: Option<&str>, item: &str) {
        let path = format!("/api/v1/sync-storage/item/{item}");
        let mut req = self.request(Method::PUT, &path, Some(key));
        if let Some(i) = instance {
            req = req.header("X-Instance-Id", i);
        }
        let r = req
            .json(&serde_json::json!({"value": 1}))
            .send()
            .await
            .expect("put");
        assert_eq!(r.status().as_u16(), 200);
    }

    /// An analytics read, made as device `reader` so that reading never
    /// adds to the figures read.
    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let path = format!("/api/v1/analytics{path}");
        let req = self
            .request(Method::GET, &path, Some(key))
            .header("X-Instance-Id", "reader");
        let (status, body) = send(req).await;
        (status.as_u16(), body)
    }

    /// Polls until `path` answers 200 with `requests` at `pointer`.
    async fn until(&self, key: &str, path: &str, pointer: &str, requests: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.get(key, path).await;
            if status == 200 && body.pointer(pointer) == Some(&Value::from(requests)) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {pointer} never became {requests}; last {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Path-safe form of a user id (`%`, `\`, `_` and spaces included).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn tag() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

async fn devices_named_alike_show_only_their_own_users_traffic(database_url: Option<String>) {
    let exact_everyone = database_url.is_none(); // a database of its own
    let api = Api::start(database_url).await;
    let t = tag();
    let (alice, bob) = (format!("{t}-alice"), format!("{t}-bob"));
    let admin = api.key(&format!("{t}-ops"), &["--scopes", "read,analytics:read"]);
    let (ka, kb) = (api.key(&alice, &[]), api.key(&bob, &[]));
    let phone = format!("{t}-phone");
    for i in 0..5 {
        api.put(&ka, None, &format!("a{i}")).await; // device `rest`
    }
    for i in 0..3 {
        api.put(&ka, Some(&phone), &format!("p{i}")).await;
    }
    for i in 0..2 {
        api.put(&kb, None, &format!("b{i}")).await;
    }
    api.put(&kb, Some(&phone), "b-phone").await; // named like alice's device

    // Wait until the aggregator has everything (the admin may pick a user).
    api.until(
        &admin,
        &format!("/instances/rest?userId={alice}"),
        "/totals/requests",
        5,
    )
    .await;
    api.until(
        &admin,
        &format!("/instances/{phone}?userId={alice}"),
        "/totals/requests",
        3,
    )
    .await;
    api.until(
        &admin,
        &format!("/instances/{phone}?userId={bob}"),
        "/totals/requests",
        1,
    )
    .await;

    // Bob, without analytics:read, sees his own `rest` and his own phone.
    let (status, rest) = api.get(&kb, "/instances/rest").await;
    assert_eq!(status, 200, "{rest}");
    assert_eq!(
        rest["totals"]["requests"], 2,
        "only bob's REST writes: {rest}"
    );
    assert_eq!(rest["userId"], bob.as_str());
    assert_eq!(
        rest["topRoutes"].as_array().map(Vec::len),
        Some(1),
        "{rest}"
    );
    assert_eq!(rest["topRoutes"][0]["requests"], 2);
    let (_, perf) = api.get(&kb, "/instances/rest/performance").await;
    assert_eq!(perf["requests"], 2, "{perf}");
    let (_, health) = api.get(&kb, "/instances/rest/health").await;
    assert_eq!(health["requests"], 2, "{health}");
    let (_, his_phone) = api.get(&kb, &format!("/instances/{phone}")).await;
    assert_eq!(his_phone["totals"]["requests"], 1, "{his_phone}");
    // Alice's figures through bob's key: never.
    let (status, body) = api
        .get(&kb, &format!("/instances/{phone}?userId={alice}"))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("SCOPE_REQUIRED"))
    );
    let (status, _) = api.get(&kb, &format!("/instances/{t}-never")).await;
    assert_eq!(status, 404);
    // Alice sees hers.
    let (_, hers) = api.get(&ka, &format!("/instances/{phone}")).await;
    assert_eq!(hers["totals"]["requests"], 3, "{hers}");
    // The cross-user view of analytics:read sums every user's device of
    // that name (exactly knowable only on a database of its own).
    let (_, both) = api.get(&admin, &format!("/instances/{phone}")).await;
    assert_eq!(both["totals"]["requests"], 4, "{both}");
    if exact_everyone {
        let (_, every_rest) = api.get(&admin, "/instances/rest").await;
        assert_eq!(every_rest["totals"]["requests"], 7, "{every_rest}");
    }
}

async fn user_ids_that_like_confuses_see_only_their_own_routes(database_url: Option<String>) {
    let api = Api::start(database_url).await;
    let t = tag();
    let admin = api.key(&format!("{t}-ops"), &["--scopes", "read,analytics:read"]);
    // Pairs whose prefix patterns an unescaped LIKE confuses: `_` and `%`
    // are wildcards, and SQLite has no default escape (`\` is literal).
    let users = [
        (format!("{t}u_1"), 1),
        (format!("{t}u\\x1"), 2),
        (format!("{t}u%"), 3),
        (format!("{t}u\\q"), 4),
    ];
    // Each writes as a device named alike: `{t}d_1`, `{t}d\x1`, …
    let device = |user: &str| user.replacen(&format!("{t}u"), &format!("{t}d"), 1);
    let mut keys = Vec::new();
    for (user, writes) in &users {
        let key = api.key(user, &[]);
        for i in 0..*writes {
            api.put(&key, Some(&device(user)), &format!("k{i}")).await;
        }
        keys.push(key);
    }
    for (user, writes) in &users {
        let body = api
            .until(
                &admin,
                &format!("/users/{}", enc(user)),
                "/totals/requests",
                *writes,
            )
            .await;
        let routes = body["topRoutes"].as_array().expect("routes");
        assert_eq!(routes.len(), 1, "{user}: {body}");
        assert_eq!(routes[0]["requests"], *writes, "{user}: {body}");
        assert_eq!(routes[0]["route"], "PUT /api/v1/sync-storage/item/{*key}");
    }
    // The cross-user device view sums users but never other devices: its
    // top routes are a prefix query too.
    for (user, writes) in &users {
        let path = format!("/instances/{}", enc(&device(user)));
        let body = api.until(&admin, &path, "/totals/requests", *writes).await;
        let routes = body["topRoutes"].as_array().expect("routes");
        assert_eq!(routes.len(), 1, "{path}: {body}");
        assert_eq!(routes[0]["requests"], *writes, "{path}: {body}");
    }
    // Each user reads its own analytics without the scope, and sees only
    // its own writes (its reads count from the next aggregation on).
    for ((user, writes), key) in users.iter().zip(&keys) {
        let (status, body) = api
            .get(key, &format!("/users/{}/behavior", enc(user)))
            .await;
        assert_eq!(status, 200, "{body}");
        let put_routes: Vec<&Value> = body["topRoutes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["route"].as_str().unwrap_or("").starts_with("PUT "))
            .collect();
        assert_eq!(put_routes.len(), 1, "{user}: {body}");
        assert_eq!(put_routes[0]["requests"], *writes, "{user}: {body}");
    }
}

#[tokio::test]
async fn sqlite_devices_named_alike_show_only_their_own_users_traffic() {
    devices_named_alike_show_only_their_own_users_traffic(None).await;
}

#[tokio::test]
async fn postgres_devices_named_alike_show_only_their_own_users_traffic() {
    devices_named_alike_show_only_their_own_users_traffic(Some(postgres_url())).await;
}

#[tokio::test]
async fn mariadb_devices_named_alike_show_only_their_own_users_traffic() {
    devices_named_alike_show_only_their_own_users_traffic(Some(mysql_url())).await;
}

#[tokio::test]
async fn sqlite_user_ids_that_like_confuses_see_only_their_own_routes() {
    user_ids_that_like_confuses_see_only_their_own_routes(None).await;
}

#[tokio::test]
async fn postgres_user_ids_that_like_confuses_see_only_their_own_routes() {
    user_ids_that_like_confuses_see_only_their_own_routes(Some(postgres_url())).await;
}

#[tokio::test]
async fn mariadb_user_ids_that_like_confuses_see_only_their_own_routes() {
    user_ids_that_like_confuses_see_only_their_own_routes(Some(mysql_url())).await;
}
