//! Retried writes are the same write (issue 14 §2), against the real binary
//! on SQLite, PostgreSQL and MariaDB: a retry with the same `Idempotency-Key`
//! gets the first reply on any pod and changes nothing; the key on another
//! request is 422; an identical replay without a key is recognised too.

mod common;

use common::{send, unique_user, Server};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};

/// Two pods on one database (one for SQLite, which is one process's).
async fn pods(backend: &str, extra: &[(&str, &str)]) -> (Server, Option<Server>) {
    let url = common::database_url(backend);
    let a = Server::with_database(url.clone(), extra).await;
    let b = match url {
        Some(url) => Some(Server::with_database(Some(url), extra).await),
        None => None,
    };
    (a, b)
}

struct Device<'a> {
    http: Client,
    key: String,
    server: &'a Server,
}

impl Device<'_> {
    fn req(&self, method: reqwest::Method, path: &str, op: Option<&str>) -> RequestBuilder {
        let mut req = self
            .http
            .request(method, self.server.url(path))
            .header("X-API-Key", &self.key)
            .header("X-Instance-Id", "phone");
        if let Some(op) = op {
            req = req.header("Idempotency-Key", op);
        }
        req
    }

    fn on<'b>(&self, server: &'b Server) -> Device<'b> {
        Device {
            http: self.http.clone(),
            key: self.key.clone(),
            server,
        }
    }

    async fn put(&self, key: &str, body: Value, op: Option<&str>) -> (StatusCode, Value) {
        let path = format!("/api/v1/sync-storage/item/{key}");
        send(self.req(reqwest::Method::PUT, &path, op).json(&body)).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.req(reqwest::Method::GET, path, None)).await
    }

    async fn conflicts(&self, key: &str) -> usize {
        let (s, history) = self
            .get(&format!("/api/v1/sync-storage/conflicts/history/{key}"))
            .await;
        assert_eq!(s, StatusCode::OK, "{history}");
        history.as_array().map_or(usize::MAX, Vec::len)
    }
}

async fn a_retry_with_the_same_key_gets_the_first_reply_on_every_pod(backend: &str) {
    let (a, b) = pods(backend, &[]).await;
    let user = unique_user("idem");
    let phone = Device {
        http: Client::new(),
        key: a.create_key(&user, &["--scopes", "read,write"]),
        server: &a,
    };
    let other = b.as_ref().map(|b| phone.on(b));
    let retrier = other.as_ref().unwrap_or(&phone);
    let t = chrono::Utc::now().timestamp_millis();

    let (s, first) = phone.put("x", json!({"value": 1}), None).await;
    assert_eq!(
        (s, first["item"]["version"].as_i64()),
        (StatusCode::OK, Some(1))
    );

    // The write whose reply was lost, and its retry on the other pod.
    let write = json!({"value": 2, "version": 1, "timestamp": t});
    let (s, reply) = phone.put("x", write.clone(), Some("op-1")).await;
    assert_eq!(
        (s, reply["status"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{reply}"
    );
    assert_eq!(reply["item"]["version"], 2);
    for _ in 0..2 {
        let (s, again) = retrier.put("x", write.clone(), Some("op-1")).await;
        assert_eq!(s, StatusCode::OK, "{again}");
        assert_eq!(again, reply, "a retry gets the first reply, byte for byte");
    }
    let (_, now) = phone.get("/api/v1/sync-storage/item/x").await;
    assert_eq!(
        (now["version"].as_i64(), now["value"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(phone.conflicts("x").await, 0, "no conflict against itself");

    // The draft's form (a quoted Structured Field string) names the same id.
    let (s, quoted) = retrier.put("x", write.clone(), Some("\"op-1\"")).await;
    assert_eq!((s, &quoted), (StatusCode::OK, &reply));

    // The id on another request: 422, and nothing changes.
    let (s, e) = retrier
        .put("x", json!({"value": 3, "version": 2}), Some("op-1"))
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("IDEMPOTENCY_KEY_REUSED")
        ),
        "{e}"
    );
    let (_, now) = phone.get("/api/v1/sync-storage/item/x").await;
    assert_eq!(now["version"], 2);

    // A lost write's reply (409) is the same on a retry, and its conflict is
    // recorded once.
    let stale = json!({"value": 9, "version": 1, "timestamp": t - 60_000});
    let (s, lost) = phone.put("x", stale.clone(), Some("op-2")).await;
    assert_eq!(
        (s, lost["status"].as_str()),
        (StatusCode::CONFLICT, Some("rejected")),
        "{lost}"
    );
    let (s, lost_again) = retrier.put("x", stale, Some("op-2")).await;
    assert_eq!((s, &lost_again), (StatusCode::CONFLICT, &lost));
    assert_eq!(phone.conflicts("x").await, 1);

    // A remove and a clear, retried.
    let (s, _) = phone.put("y", json!({"value": 1}), None).await;
    assert_eq!(s, StatusCode::OK);
    let del =
        |d: &Device, path: &str, op: &str| send(d.req(reqwest::Method::DELETE, path, Some(op)));
    let (s, removed) = del(&phone, "/api/v1/sync-storage/item/y", "op-3").await;
    assert_eq!(
        (s, removed["status"].as_str()),
        (StatusCode::OK, Some("removed")),
        "{removed}"
    );
    let (s, again) = del(retrier, "/api/v1/sync-storage/item/y", "op-3").await;
    assert_eq!(
        (s, &again),
        (StatusCode::OK, &removed),
        "not 404 on the retry"
    );
    let (s, cleared) = del(&phone, "/api/v1/sync-storage/clear", "op-4").await;
    assert_eq!(
        (s, cleared["cleared"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{cleared}"
    );
    let (s, again) = del(retrier, "/api/v1/sync-storage/clear", "op-4").await;
    assert_eq!((s, &again), (StatusCode::OK, &cleared));

    // Another user's same id is another operation.
    let stranger = Device {
        http: Client::new(),
        key: a.create_key(&unique_user("idem-other"), &["--scopes", "read,write"]),
        server: &a,
    };
    let (s, theirs) = stranger.put("x", json!({"value": 5}), Some("op-1")).await;
    assert_eq!(
        (s, theirs["item"]["version"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{theirs}"
    );

    let metrics = Client::new()
        .get(retrier.server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Two retries, the quoted form, the lost write, the remove, the clear.
    let replays = metrics
        .lines()
        .find(|l| l.starts_with("syncstore_write_replays_total{kind=\"operation_id\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(replays, Some(6.0), "replays answered by the retrying pod");
}

async fn an_identical_replay_without_a_key_is_the_same_write(backend: &str) {
    let (a, _) = pods(backend, &[]).await;
    let user = unique_user("replay");
    let phone = Device {
        http: Client::new(),
        key: a.create_key(&user, &["--scopes", "read,write"]),
        server: &a,
    };
    let t = chrono::Utc::now().timestamp_millis();
    let (s, _) = phone
        .put("x", json!({"value": 1, "timestamp": t - 1}), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // The case: PUT {value: 2, version: 1, timestamp: T} from the
    // phone, twice.
    let write = json!({"value": 2, "version": 1, "timestamp": t, "metadata": {"m": 1}});
    let (s, first) = phone.put("x", write.clone(), None).await;
    assert_eq!(
        (s, first["status"].as_str()),
        (StatusCode::OK, Some("applied")),
        "{first}"
    );
    let (s, again) = phone.put("x", write, None).await;
    assert_eq!(
        (
            s,
            again["status"].as_str(),
            again["item"]["version"].as_i64()
        ),
        (StatusCode::OK, Some("applied"), Some(2)),
        "{again}"
    );
    assert_eq!(again["item"], first["item"]);
    assert_eq!(phone.conflicts("x").await, 0);
    // A different value from the same base is a real concurrent write.
    let (s, other) = phone
        .put(
            "x",
            json!({"value": 3, "version": 1, "timestamp": t - 5}),
            None,
        )
        .await;
    assert_eq!(
        (s, other["status"].as_str()),
        (StatusCode::CONFLICT, Some("rejected")),
        "{other}"
    );
    assert_eq!(phone.conflicts("x").await, 1);
}

async fn malformed_keys_and_the_window(backend: &str) {
    let (a, _) = pods(backend, &[("IDEMPOTENCY_WINDOW_MS", "1000")]).await;
    let user = unique_user("idem-window");
    let phone = Device {
        http: Client::new(),
        key: a.create_key(&user, &["--scopes", "read,write"]),
        server: &a,
    };
    for bad in ["two words", "\"unterminated", "\"\""] {
        let (s, e) = phone.put("x", json!({"value": 1}), Some(bad)).await;
        assert_eq!(
            (s, e["code"].as_str(), e["details"]["field"].as_str()),
            (
                StatusCode::BAD_REQUEST,
                Some("INVALID_BODY"),
                Some("Idempotency-Key")
            ),
            "{bad:?}: {e}"
        );
    }
    let long = "k".repeat(256);
    let (s, _) = phone.put("x", json!({"value": 1}), Some(&long)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = phone
        .put("x", json!({"value": 1}), Some(&long[..255]))
        .await;
    assert_eq!(s, StatusCode::OK);

    // Past the window the id is free again: another request under it is new.
    let (s, _) = phone.put("w", json!({"value": 1}), Some("op-w")).await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(1_300)).await;
    let (s, later) = phone.put("w", json!({"value": 2}), Some("op-w")).await;
    assert_eq!(
        (s, later["item"]["version"].as_i64()),
        (StatusCode::OK, Some(2)),
        "{later}"
    );
}

macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name("sqlite").await
                }
                #[tokio::test]
                async fn postgres() {
                    super::$name("postgres").await
                }
                #[tokio::test]
                async fn mysql() {
                    super::$name("mysql").await
                }
            }
        )*
    };
}

on_every_backend!(
    a_retry_with_the_same_key_gets_the_first_reply_on_every_pod,
    an_identical_replay_without_a_key_is_the_same_write,
    malformed_keys_and_the_window,
);
