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
