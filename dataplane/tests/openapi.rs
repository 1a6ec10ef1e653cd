//! The OpenAPI spec and the router must agree: every operation in the spec
//! is routed (the live server answers it with something other than "no
//! route" or "method not allowed"), and every route of the router is in the
//! spec. Error answers on the way must be `{message, code, details}`.

mod common;

use std::collections::BTreeSet;

use common::Server;
use serde_json::Value;

const KEY: &str = "sk_live_openapiopenapiopenapi0001";

/// Routes that are not REST operations: the two helpers that only turn a
/// missing item key into INVALID_KEY, and the HTML dashboard.
const NOT_OPERATIONS: [&str; 5] = [
    "/api/v1/sync-storage/item",
    "/api/v1/sync-storage/item/",
    "/dashboard",
    "/dashboard/app.js",
    "/dashboard/app.css",
];

/// `{*key}` → `{key}`, so axum's catch-all matches the spec's parameter.
fn normalise(path: &str) -> String {
    path.replace("{*", "{")
}

/// Every `.route("…")` literal of the router, with `/api/v1` in front of
/// those inside the nested `api` routers (`protected` and `public`).
fn router_paths() -> BTreeSet<String> {
    let src = include_str!("../src/http/mod.rs");
    let api_start = src
        .find("let protected = Router::new()")
        .expect("the api routers");
    let api_end = src[api_start..]
        .find(".nest(")
        .map(|i| api_start + i)
        .expect("the nest");
    let mut out = BTreeSet::new();
    for (at, _) in src.match_indices(".route(") {
        let rest = &src[at + ".route(".len()..];
        let Some(open) = rest.find('"') else { continue };
        let Some(close) = rest[open + 1..].find('"') else {
            continue;
        };
        let path = &rest[open + 1..open + 1 + close];
        let full = if (api_start..api_end).contains(&at) {
            format!("/api/v1{path}")
        } else {
            path.to_string()
        };
        out.insert(normalise(&full));
    }
    out
}

#[tokio::test]
async fn spec_and_router_agree() {
    let server =
        Server::start(&[("BOOTSTRAP_API_KEY", KEY), ("BOOTSTRAP_USER_ID", "openapi")]).await;
    let spec: Value = reqwest::get(server.url("/api/v1/openapi.json"))
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    assert!(
        spec["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")),
        "{}",
        spec["openapi"]
    );
    let paths = spec["paths"].as_object().expect("paths");
    let documented: BTreeSet<String> = paths.keys().cloned().collect();

    let routed = router_paths();
    let missing: Vec<&String> = routed
        .iter()
        .filter(|p| !documented.contains(*p) && !NOT_OPERATIONS.contains(&p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI spec: {missing:?}"
    );
    let phantom: Vec<&String> = documented.iter().filter(|p| !routed.contains(*p)).collect();
    assert!(phantom.is_empty(), "spec paths with no route: {phantom:?}");
    assert!(
        documented.len() >= 30,
        "only {} paths documented",
        documented.len()
    );

    let client = reqwest::Client::new();
    let mut operations = 0;
    for (path, item) in paths {
        let url_path = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in ["get", "put", "post", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            operations += 1;
            assert!(
                op["responses"]["default"].is_object(),
                "{method} {path} lacks the error response"
            );
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let mut req = client
                .request(m, server.url(&url_path))
                .header("X-API-Key", KEY);
            if matches!(method, "put" | "post" | "patch") {
                req = req.json(&serde_json::json!({}));
            }
            let res = req.send().await.expect("request");
            let status = res.status().as_u16();
            let text = res.text().await.unwrap_or_default();
            assert_ne!(status, 405, "{method} {path}: method not allowed");
            assert!(status < 500, "{method} {path}: {status} {text}");
            if status >= 400 {
                let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                assert!(
                    body["message"].is_string()
                        && body["code"].is_string()
                        && body.get("details").is_some(),
                    "{method} {path}: error body {text}"
                );
                let unrouted = status == 404 && body["details"].get("path").is_some();
                assert!(!unrouted, "{method} {path} is in the spec but not routed");
            }
        }
    }
    assert!(operations >= 35, "{operations} operations");
}
