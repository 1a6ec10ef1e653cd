//! The app under test over REST: a real [`Server`] and a client, with the
//! request helpers every REST test uses.

use std::future::Future;

use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::Value;

use super::{database_url, Server};

/// A running `syncstore serve` and a client for it.
pub struct TestApp {
    pub server: Server,
    pub http: Client,
}

impl TestApp {
    pub fn new(server: Server) -> TestApp {
        TestApp {
            server,
            http: Client::new(),
        }
    }

    /// The binary on its own SQLite, with `env`.
    pub async fn start(env: &[(&str, &str)]) -> TestApp {
        TestApp::new(Server::start(env).await)
    }

    /// The binary on the database at `url` (its own SQLite when `None`).
    pub async fn with_database(url: Option<String>, env: &[(&str, &str)]) -> TestApp {
        TestApp::new(Server::with_database(url, env).await)
    }

    /// The binary on `backend` (`sqlite`, `postgres` or `mysql`).
    pub async fn on(backend: &str, env: &[(&str, &str)]) -> TestApp {
        TestApp::with_database(database_url(backend), env).await
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// `syncstore keys create` on the server's database.
    pub fn key(&self, user: &str, extra: &[&str]) -> String {
        self.server.create_key(user, extra)
    }

    /// The id of an API key.
    pub async fn key_id(&self, key: &str) -> String {
        key_id(&self.server, key).await
    }

    /// A request to `path`, with `X-API-Key` when `key` is given.
    pub fn request(&self, method: Method, path: &str, key: Option<&str>) -> RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match key {
            Some(k) => req.header("X-API-Key", k),
            None => req,
        }
    }

    /// A request with an optional key and JSON body; see [`send`]. The
    /// request is built at once, so the future borrows nothing.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> impl Future<Output = (StatusCode, Value)> {
        let mut req = self.request(method, path, key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        send(req)
    }

    pub fn get(&self, path: &str, key: &str) -> impl Future<Output = (StatusCode, Value)> {
        self.call(Method::GET, path, Some(key), None)
    }

    /// A PUT of item `item` (as it goes in the path, percent-encoded); the
    /// whole reply (`{status, item}` on success).
    pub fn put(
        &self,
        item: &str,
        key: &str,
        body: Value,
    ) -> impl Future<Output = (StatusCode, Value)> {
        let path = format!("/api/v1/sync-storage/item/{item}");
        self.call(Method::PUT, &path, Some(key), Some(body))
    }
}

/// Sends `req`: the status and the JSON body, or the body's text as a
/// JSON string when it is not JSON.
pub async fn send(req: RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Every error body has exactly message, code and details.
pub fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(
        status.as_u16(),
        want_status,
        "status for {want_code}: {body}"
    );
    assert_eq!(body["code"], want_code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body.get("details").is_some(), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(3), "{body}");
}

/// The id of an API key, looked up by its hash in the server's database
/// (SQLite, PostgreSQL or MariaDB alike).
pub async fn key_id(server: &Server, key: &str) -> String {
    let db = server.db().await;
    syncstore::storage::keys::find_by_hash(&db, &syncstore::auth::hash_key(key))
        .await
        .expect("key lookup")
        .expect("the key is stored")
        .id
}
