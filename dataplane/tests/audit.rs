//! The audit trail cannot be blinded (issue 13, item 8), against the real
//! binary: a flood of unauthenticated requests runs while 100 real writes
//! are made; every write is in the trail with its key id, client IP and
//! request id, and the refusals are summed into a bounded number of rows
//! whose counts add up to the refusals exactly.

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{create_key, key_id, postgres_url, unique_user, Server};
use reqwest::{Client, StatusCode};
use serde_json::Value;

const ADMIN: &str = "sk_live_admin_for_the_audit_flood_0123456789";

/// Every entry of `query`, newest first, following `nextCursor`.
async fn entries(http: &Client, server: &Server, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = server.url(&format!("/api/v1/audit?limit=1000&{query}{cursor}"));
        let page: Value = http
            .get(url)
            .header("X-API-Key", ADMIN)
            .send()
            .await
            .expect("audit")
            .json()
            .await
            .expect("json");
        out.extend(page["entries"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return out,
        }
    }
}

/// What floods: requests without a credential, or (on a shared database,
/// where other tests' refusals mix in) a key refused for its IP, whose rows
/// its key id tells apart.
#[derive(Clone, Copy, PartialEq)]
enum Flood {
    Unauthenticated,
    RestrictedKey,
}

async fn a_flood_of_refusals(database_url: Option<String>, flood_with: Flood) {
    let mut env = vec![("BOOTSTRAP_API_KEY", ADMIN.to_string())];
    if let Some(url) = database_url {
        env.push(("DATABASE_URL", url));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(&env).await;
    let dir = server.data_dir.path();
    let http = Client::new();
    let writer = unique_user("writer");
    let key = create_key(dir, &env, &writer, &[]);
    let fenced_user = unique_user("fenced");
    let fenced = create_key(dir, &env, &fenced_user, &["--ip", "192.0.2.0/24"]);
    let fenced_id = key_id(&server, &fenced).await;
    let key_id = key_id(&server, &key).await;
    let (refused_status, code, credential, denied) = match flood_with {
        Flood::Unauthenticated => (
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            None,
            "action=auth.denied".to_string(),
        ),
        Flood::RestrictedKey => (
            StatusCode::FORBIDDEN,
            "IP_NOT_ALLOWED",
            Some(fenced),
            format!("action=auth.denied&keyId={fenced_id}"),
        ),
    };

    // The flood: refused requests as fast as these tasks can send them.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let flood: Vec<_> = (0..48)
        .map(|_| {
            let (stop, refused, http) = (stop.clone(), refused.clone(), http.clone());
            let url = server.url("/api/v1/sync-storage/keys");
            let credential = credential.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut req = http.get(&url);
                    if let Some(k) = &credential {
                        req = req.header("X-API-Key", k);
                    }
                    if let Ok(r) = req.send().await {
                        if r.status() == refused_status {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 100 real writes during the flood, 10 at a time; every other one names
    // its own request id, and one sends an id too long to store as is.
    let mut request_ids: HashMap<String, String> = HashMap::new();
    for round in 0..10 {
        let writes: Vec<_> = (0..10)
            .map(|i| {
                let n = round * 10 + i;
                let (http, key) = (http.clone(), key.clone());
                let url = server.url(&format!("/api/v1/sync-storage/item/k{n}"));
                tokio::spawn(async move {
                    let mut req = http.put(url).header("X-API-Key", key);
                    if n % 2 == 0 {
                        req = req.header(
                            "X-Request-Id",
                            format!("client-{n}-{}", uuid::Uuid::new_v4()),
                        );
                    }
                    if n == 7 {
                        req = req.header("X-Request-Id", "x".repeat(300));
                    }
                    let r = req
                        .json(&serde_json::json!({"value": n}))
                        .send()
                        .await
                        .expect("write");
                    assert_eq!(r.status(), StatusCode::OK);
                    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
                    (format!("k{n}"), id)
                })
            })
            .collect();
        for w in writes {
            let (k, id) = w.await.expect("write task");
            request_ids.insert(k, id);
        }
    }
    // Keep flooding a little past the writes, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.expect("flood task");
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let refused = refused.load(Ordering::Relaxed);
    assert!(refused > 1000, "the flood was only {refused} requests");
    assert!(
        request_ids["k0"].starts_with("client-0-"),
        "a client's id is kept"
    );
    assert_ne!(
        request_ids["k7"],
        "x".repeat(300),
        "an unstorable one is replaced"
    );

    // Every write is in the trail at once (written with the change), with
    // the key id, the client address and the request id the client saw.
    let writes = entries(&http, &server, &format!("userId={writer}&action=item.set")).await;
    assert_eq!(writes.len(), 100, "every committed write is audited");
    for e in &writes {
        let target = e["target"].as_str().unwrap();
        assert_eq!(e["keyId"], key_id.as_str(), "{e}");
        assert_eq!(e["ip"], "127.0.0.1", "{e}");
        assert_eq!(e["requestId"], request_ids[target].as_str(), "{e}");
        assert_eq!(e["count"], 1);
    }
    let by_id = entries(&http, &server, &format!("requestId={}", request_ids["k42"])).await;
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0]["target"], "k42");

    // The refusals: summed per window, so a handful of rows whose counts
    // add up to exactly the refused requests.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (rows, total) = loop {
        let rows = entries(&http, &server, &denied).await;
        let total: i64 = rows.iter().map(|e| e["count"].as_i64().unwrap()).sum();
        if total as u64 >= refused || Instant::now() > deadline {
            break (rows, total);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(total as u64, refused, "{} rows", rows.len());
    // One group (127.0.0.1, the code, the key if any): one row per 2 s
    // window the flood touched.
    let windows = (flood_secs / 2.0).ceil() as usize + 2;
    assert!(
        rows.len() <= windows,
        "{} rows for {refused} refusals in {flood_secs:.1} s",
        rows.len()
    );
    assert!(rows
        .iter()
        .all(|e| e["ip"] == "127.0.0.1" && e["result"] == code && e["actor"] == "anonymous"));
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "syncstore_audit_dropped_total 0"),
        "nothing dropped"
    );
    eprintln!(
        "{refused} refusals in {flood_secs:.1} s: {} audit rows; 100 of 100 writes audited",
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_flood_of_refusals_neither_hides_writes_nor_costs_a_row_each() {
    a_flood_of_refusals(None, Flood::Unauthenticated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_flood_of_refusals_neither_hides_writes_nor_costs_a_row_each() {
    a_flood_of_refusals(Some(postgres_url()), Flood::RestrictedKey).await;
}
