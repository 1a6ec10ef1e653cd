//! REST tests against the real `syncstore serve` binary on a free port, one
//! module per URL area, as the handlers are in `src/http/`:
//!
//! | module | URLs |
//! |---|---|
//! | `items` | `/api/v1/sync-storage/item/{key}`, `/items`, `/keys`, `/clear` |
//! | `authenticate` | what every protected route refuses: no, unknown, revoked or expired key, read-only writes; the bootstrap key |
//! | `keys` | `/api/v1/api-keys` |
//! | `conflicts` | `/api/v1/sync-storage/conflicts/*` (review, resolve, merge, analyze) |
//! | `audit` | `/api/v1/audit` |
//! | `ops` | `/health`, `/ready`, `/metrics`, request ids, SIGTERM drain |
//!
//! User tokens (`/api/v1/auth/*`) are in `tests/tokens.rs`, analytics in
//! `tests/analytics*.rs`, key restrictions in `tests/restrictions.rs`.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod authenticate;
mod conflicts;
mod items;
mod keys;
mod ops;

use std::ops::{Deref, DerefMut};

use common::{send, unique_user, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A [`TestApp`] and a key of a user of its own, which `put`, `get` and
/// `raw_put` send.
struct Api {
    app: TestApp,
    key: String,
}

impl Deref for Api {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl DerefMut for Api {
    fn deref_mut(&mut self) -> &mut TestApp {
        &mut self.app
    }
}

impl Api {
    async fn start(env: &[(&str, &str)]) -> Api {
        let app = TestApp::start(env).await;
        let key = app.key(&unique_user("user"), &[]);
        Api { app, key }
    }

    /// A PUT; on success returns the written item (the reply's `item`).
    async fn put(&self, key: &str, body: Value) -> (StatusCode, Value) {
        let (status, reply) = self.app.put(key, &self.key, body).await;
        if status == StatusCode::OK {
            assert!(
                matches!(reply["status"].as_str(), Some("applied" | "merged")),
                "{reply}"
            );
            return (status, reply["item"].clone());
        }
        (status, reply)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.app.get(path, &self.key).await
    }

    /// A PUT of raw bytes as `application/json`.
    async fn raw_put(&self, key: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let path = format!("/api/v1/sync-storage/item/{key}");
        let req = self
            .request(Method::PUT, &path, Some(&self.key))
            .header("Content-Type", "application/json")
            .body(body);
        send(req).await
    }
}
