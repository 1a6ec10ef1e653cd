//! The OpenAPI spec and the router must agree. The router registers every
//! REST handler through utoipa-axum, which brings the handler's operation
//! into the spec; `syncstore::http::operations()` lists what it registered
//! that way, and the served spec must document exactly those (and be the
//! router's own document). Every operation in the spec is routed (the live
//! server answers it with something other than "no route" or "method not
//! allowed"), the routes that are not operations are routed but not
//! documented, and every success body has a type. Error answers on the way
//! must be `{message, code, details}`.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use common::Server;
use reqwest::Method as M;
use serde_json::Value;
use syn::visit::Visit;

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

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// `{*key}` → `{key}`, so axum's catch-all matches the spec's parameter.
fn normalise(path: &str) -> String {
    path.replace("{*", "{")
}

/// What the router registered with an OpenAPI operation, as
/// (lowercase method, path in the spec's syntax).
fn router_operations() -> BTreeSet<(String, String)> {
    syncstore::http::operations()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_lowercase(), normalise(&path)))
        .collect()
}

/// The error envelope, and not axum's "no route" or "method not allowed".
fn assert_routed(what: &str, status: u16, text: &str) {
    assert_ne!(status, 405, "{what}: method not allowed");
    assert!(status < 500, "{what}: {status} {text}");
    if status >= 400 {
        let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        assert!(
            body["message"].is_string()
                && body["code"].is_string()
                && body.get("details").is_some(),
            "{what}: error body {text}"
        );
        let unrouted = status == 404 && body["details"].get("path").is_some();
        assert!(!unrouted, "{what} is not routed");
    }
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
    assert_eq!(
        spec,
        serde_json::to_value(syncstore::http::api_spec()).expect("spec as JSON"),
        "the served spec is not the router's document"
    );
    let paths = spec["paths"].as_object().expect("paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(move |m| (m.to_string(), path.clone()))
        })
        .collect();

    let routed = router_operations();
    let missing: Vec<_> = routed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the OpenAPI spec: {missing:?}"
    );
    let phantom: Vec<_> = documented.difference(&routed).collect();
    assert!(
        phantom.is_empty(),
        "spec operations with no route: {phantom:?}"
    );
    assert!(paths.len() >= 30, "only {} paths documented", paths.len());

    let client = reqwest::Client::new();
    for path in NOT_OPERATIONS {
        assert!(
            !paths.contains_key(path),
            "{path} is not an operation but is in the spec"
        );
        let res = client
            .get(server.url(path))
            .header("X-API-Key", KEY)
            .send()
            .await
            .expect("request");
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        assert_routed(&format!("GET {path}"), status, &text);
    }

    let mut operations = 0;
    for (path, item) in paths {
        let url_path = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            operations += 1;
            assert!(
                op["responses"]["default"].is_object(),
                "{method} {path} lacks the error response"
            );
            // A success body is a named schema or a typed one, never a bare
            // `Object` (the spec document itself excepted).
            for (status, response) in op["responses"].as_object().expect("responses") {
                if !status.starts_with('2') || path == "/api/v1/openapi.json" {
                    continue;
                }
                for (media, content) in response["content"].as_object().into_iter().flatten() {
                    let schema = &content["schema"];
                    let bare = schema.get("$ref").is_none()
                        && schema["type"] == "object"
                        && schema.get("properties").is_none()
                        && schema.get("additionalProperties").is_none();
                    let untyped = schema.as_object().is_none_or(|s| s.is_empty());
                    assert!(
                        !bare && !untyped,
                        "{method} {path} {status} {media}: untyped body {schema}"
                    );
                }
            }
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
            assert_routed(&format!("{method} {path}"), status, &text);
        }
    }
    assert!(operations >= 35, "{operations} operations");
}

/// The name a `#[derive(ToSchema)]` type has in the spec: `#[schema(as =
/// …)]`, else its own.
fn schema_name(attrs: &[syn::Attribute], ident: &syn::Ident) -> Option<String> {
    let derives_schema = attrs.iter().any(|a| {
        a.path().is_ident("derive")
            && a.parse_args_with(
                syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
            )
            .is_ok_and(|paths| {
                paths
                    .iter()
                    .any(|p| p.segments.last().is_some_and(|s| s.ident == "ToSchema"))
            })
    });
    if !derives_schema {
        return None;
    }
    let mut name = ident.to_string();
    for a in attrs.iter().filter(|a| a.path().is_ident("schema")) {
        let _ = a.parse_nested_meta(|meta| {
            if meta.path.is_ident("as") {
                let path: syn::Path = meta.value()?.parse()?;
                name = path.segments.last().expect("a name").ident.to_string();
            } else if meta.input.peek(syn::Token![=]) {
                meta.value()?.parse::<proc_macro2::TokenStream>()?;
            }
            Ok(())
        });
    }
    Some(name)
}

struct Schemas<'a> {
    file: &'a Path,
    names: &'a mut BTreeMap<String, Vec<String>>,
}

impl<'ast> Visit<'ast> for Schemas<'_> {
    fn visit_item_struct(&mut self, s: &'ast syn::ItemStruct) {
        if let Some(name) = schema_name(&s.attrs, &s.ident) {
            let at = format!("{} ({})", self.file.display(), s.ident);
            self.names.entry(name).or_default().push(at);
        }
        syn::visit::visit_item_struct(self, s);
    }
    fn visit_item_enum(&mut self, e: &'ast syn::ItemEnum) {
        if let Some(name) = schema_name(&e.attrs, &e.ident) {
            let at = format!("{} ({})", self.file.display(), e.ident);
            self.names.entry(name).or_default().push(at);
        }
        syn::visit::visit_item_enum(self, e);
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Schemas are one namespace: two types with one name would silently
/// replace each other in the spec (a `/health` body once replaced the
/// analytics `Health` enum). Every `ToSchema` type of the crate has its
/// own name.
#[test]
fn schema_names_are_unique() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut names = BTreeMap::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("source");
        let ast = syn::parse_file(&text).expect("parsable source");
        Schemas {
            file: file.strip_prefix(&src).unwrap_or(file),
            names: &mut names,
        }
        .visit_file(&ast);
    }
    assert!(names.contains_key("Item") && names.contains_key("SetRequest"));
    let clashes: Vec<_> = names.iter().filter(|(_, at)| at.len() > 1).collect();
    assert!(clashes.is_empty(), "schema names used twice: {clashes:?}");
}

/// The spec as the server renders it.
fn spec() -> Value {
    serde_json::to_value(syncstore::http::api_spec()).expect("spec as JSON")
}

/// A schema, its `$ref` followed.
fn resolved<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.rsplit('/').next().expect("a name");
            &spec["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// Every string a schema enumerates, through `$ref`, `oneOf`, `anyOf` and
/// `allOf` (a nullable enum is written either way).
fn enum_values(spec: &Value, schema: &Value) -> BTreeSet<String> {
    let schema = resolved(spec, schema);
    let mut out: BTreeSet<String> = schema["enum"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    for combinator in ["oneOf", "anyOf", "allOf"] {
        for sub in schema[combinator].as_array().into_iter().flatten() {
            out.extend(enum_values(spec, sub));
        }
    }
    out
}

/// The parameter `name` of an operation.
fn param<'a>(spec: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    let op = &spec["paths"][path][method];
    op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}: {op}"))
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

/// Values that may be any JSON (a scalar, an array, an object, null) have
/// no type in the schema: `Conflict`'s values were typed `object|null`, and
/// a conflict over `1` answered `currentValue: 1`.
#[test]
fn any_json_values_are_untyped() {
    let spec = spec();
    let schemas = &spec["components"]["schemas"];
    for (schema, field) in [
        ("Conflict", "baseValue"),
        ("Conflict", "currentValue"),
        ("Conflict", "incomingValue"),
        ("Conflict", "resultValue"),
        ("Item", "value"),
        ("SetRequest", "value"),
        ("Resolve", "resolvedValue"),
    ] {
        let s = &schemas[schema]["properties"][field];
        assert!(s.is_object(), "{schema}.{field} is missing");
        for constraint in ["type", "$ref", "enum", "oneOf", "anyOf", "allOf"] {
            assert!(
                s.get(constraint).is_none(),
                "{schema}.{field} is typed: {s}"
            );
        }
    }
    // Metadata is checked to be an object, and so typed.
    for (schema, field) in [("Item", "metadata"), ("Conflict", "incomingMetadata")] {
        assert_eq!(
            schemas[schema]["properties"][field]["type"],
            serde_json::json!(["object", "null"]),
            "{schema}.{field}"
        );
    }
}

/// `/auth/refresh` and `/auth/logout` take no credential (the refresh
/// token is the body), so they declare an empty requirement instead of
/// inheriting the global one; `/auth/token` keeps it.
#[test]
fn the_token_endpoints_that_need_no_credential_say_so() {
    let spec = spec();
    for path in ["/api/v1/auth/refresh", "/api/v1/auth/logout"] {
        assert_eq!(
            spec["paths"][path]["post"]["security"],
            serde_json::json!([{}]),
            "{path}"
        );
    }
    assert!(spec["paths"]["/api/v1/auth/token"]["post"]
        .get("security")
        .is_none());
    assert!(spec["security"].as_array().is_some_and(|s| s.len() == 2));
}

/// Limits, defaults and enums are in the schema, not only in prose, and
/// the 400 they cause is documented.
#[test]
fn limits_defaults_and_enums_are_in_the_schema() {
    let spec = spec();
    let conflicts = "/api/v1/sync-storage/conflicts";
    let limit = &param(&spec, conflicts, "get", "limit")["schema"];
    assert_eq!(
        (&limit["minimum"], &limit["maximum"], &limit["default"]),
        (&1.into(), &500.into(), &50.into()),
        "{limit}"
    );
    let status = &param(&spec, conflicts, "get", "status")["schema"];
    assert_eq!(enum_values(&spec, status), set(&["pending", "resolved"]));
    assert_eq!(status["default"], "pending", "{status}");
    let offset = &param(&spec, conflicts, "get", "offset")["schema"];
    assert_eq!(offset["minimum"], 0, "{offset}");
    let audit = &param(&spec, "/api/v1/audit", "get", "limit")["schema"];
    assert_eq!(
        (&audit["minimum"], &audit["maximum"], &audit["default"]),
        (&1.into(), &1000.into(), &100.into()),
        "{audit}"
    );
    let mut windows = 0;
    for (path, item) in spec["paths"].as_object().expect("paths") {
        let Some(op) = item.get("get") else { continue };
        let params = op["parameters"].as_array().into_iter().flatten();
        for p in params.filter(|p| p["name"] == "granularity") {
            windows += 1;
            let values = enum_values(&spec, &p["schema"]);
            assert_eq!(values, set(&["minute", "hour", "day"]), "{path}");
            assert!(op["responses"]["400"].is_object(), "{path}: no 400");
        }
    }
    assert!(windows >= 10, "{windows} operations take a granularity");
    for (path, method) in [
        (conflicts, "get"),
        ("/api/v1/audit", "get"),
        ("/api/v1/sync-storage/item/{key}", "put"),
        ("/api/v1/sync-storage/conflicts/analyze", "post"),
        ("/api/v1/auth/token", "post"),
    ] {
        let bad = &spec["paths"][path][method]["responses"]["400"];
        assert!(bad["description"].is_string(), "{method} {path}: no 400");
    }
    let schemas = &spec["components"]["schemas"];
    assert_eq!(schemas["SetRequest"]["properties"]["tags"]["maxItems"], 64);
    let ids = &schemas["Analyze"]["properties"]["itemIds"];
    assert_eq!(
        (&ids["minItems"], &ids["maxItems"]),
        (&1.into(), &100.into())
    );
}

/// A body that refuses unknown fields says `additionalProperties: false`;
/// one that ignores them does not. And a token may be asked only for the
/// scopes a token carries.
#[test]
fn request_bodies_state_what_they_accept() {
    let spec = spec();
    let schemas = &spec["components"]["schemas"];
    assert_eq!(schemas["KeyFields"]["additionalProperties"], false);
    for lenient in [
        "SetRequest",
        "TokenRequest",
        "RefreshRequest",
        "Analyze",
        "Resolve",
    ] {
        assert_ne!(
            schemas[lenient]["additionalProperties"], false,
            "{lenient} ignores unknown fields"
        );
    }
    let scopes = &schemas["TokenRequest"]["properties"]["scopes"]["items"];
    assert_eq!(
        enum_values(&spec, scopes),
        set(&["read", "write", "analytics:read"])
    );
}

/// What the spec states, the live server does: the bounds, enums and
/// unknown fields of the previous tests, and `X-Instance-Id` on `/clear`.
#[tokio::test]
async fn the_server_does_what_the_schema_states() {
    let server =
        Server::start(&[("BOOTSTRAP_API_KEY", KEY), ("BOOTSTRAP_USER_ID", "openapi")]).await;
    let client = reqwest::Client::new();
    let status = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = client
            .request(method, server.url(path))
            .header("X-API-Key", KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move { req.send().await.expect("request").status().as_u16() }
    };
    for (query, want) in [
        ("limit=500", 200),
        ("limit=501", 400),
        ("limit=0", 400),
        ("status=resolved", 200),
        ("status=all", 400),
        ("offset=-1", 400),
    ] {
        let path = format!("/api/v1/sync-storage/conflicts?{query}");
        assert_eq!(status(M::GET, &path, None).await, want, "{query}");
    }
    for (query, want) in [("limit=1000", 200), ("limit=1001", 400), ("limit=0", 400)] {
        let path = format!("/api/v1/audit?{query}");
        assert_eq!(status(M::GET, &path, None).await, want, "{query}");
    }
    for (query, want) in [("granularity=hour", 200), ("granularity=week", 400)] {
        let path = format!("/api/v1/analytics/dashboard?{query}");
        assert_eq!(status(M::GET, &path, None).await, want, "{query}");
    }
    let tags = |n: usize| (0..n).map(|i| format!("t{i}")).collect::<Vec<_>>();
    let item = "/api/v1/sync-storage/item/spec";
    for (n, want) in [(64, 200), (65, 400)] {
        let body = serde_json::json!({"value": 1, "tags": tags(n)});
        assert_eq!(status(M::PUT, item, Some(body)).await, want, "{n} tags");
    }
    let unknown = serde_json::json!({"value": 1, "surplus": true});
    assert_eq!(status(M::PUT, item, Some(unknown)).await, 200);
    let unknown = serde_json::json!({"name": "x", "surplus": true});
    assert_eq!(
        status(M::POST, "/api/v1/api-keys", Some(unknown)).await,
        400
    );
    let res = client
        .delete(server.url("/api/v1/sync-storage/clear"))
        .header("X-API-Key", KEY)
        .header("X-Instance-Id", "")
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 400);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["details"]["field"], "X-Instance-Id", "{body}");
    let spec = spec();
    let documented = param(
        &spec,
        "/api/v1/sync-storage/clear",
        "delete",
        "X-Instance-Id",
    );
    assert_eq!(documented["in"], "header", "{documented}");
}

/// The types of `#[utoipa::path]` handlers' arguments that read a header,
/// and the header each documents.
const HEADER_EXTRACTORS: [(&str, &str); 2] = [
    ("InstanceId", "X-Instance-Id"),
    ("IdempotencyKey", "Idempotency-Key"),
];

/// Every handler that takes a header extractor documents that header in its
/// operation (`/clear` read `X-Instance-Id` without saying so).
#[test]
fn handlers_document_the_headers_they_read() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source");
        let ast = syn::parse_file(&text).expect("parsable source");
        for item in ast.items {
            let syn::Item::Fn(f) = item else { continue };
            let Some(path_attr) = f.attrs.iter().find(|a| {
                let p = a.path();
                p.segments.len() == 2 && p.segments[1].ident == "path"
            }) else {
                continue;
            };
            let documented = quote_tokens(path_attr);
            let inputs = f
                .sig
                .inputs
                .iter()
                .map(|i| match i {
                    syn::FnArg::Typed(t) => quote_type(&t.ty),
                    syn::FnArg::Receiver(_) => String::new(),
                })
                .collect::<Vec<_>>();
            for (extractor, header) in HEADER_EXTRACTORS {
                if inputs.iter().any(|t| t == extractor) {
                    checked += 1;
                    assert!(
                        documented.contains(&format!("\"{header}\"")),
                        "{} ({}) reads {header} but does not document it",
                        f.sig.ident,
                        file.display()
                    );
                }
            }
        }
    }
    assert!(checked >= 6, "{checked} header extractors found");
}

fn quote_tokens(attr: &syn::Attribute) -> String {
    match &attr.meta {
        syn::Meta::List(list) => list.tokens.to_string(),
        _ => String::new(),
    }
}

/// The last segment of a type's path (`InstanceId` of `super::extract::InstanceId`).
fn quote_type(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}
