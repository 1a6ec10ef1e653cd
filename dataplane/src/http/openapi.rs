//! The OpenAPI 3.1 description of the REST API, served at
//! `/api/v1/openapi.json`. The router registers every handler through
//! `utoipa_axum::routes!`, which brings the handler's `#[utoipa::path]`
//! operation (and the schemas of its bodies) with it, so the document is
//! the router's own (see `super::route_tree`); this module holds what every
//! operation shares and renders the document once. `tests/openapi.rs`
//! calls every operation on a live server; schemathesis fuzzes the live
//! server against the document.

use axum::Json;
use utoipa::{
    openapi::{
        path::PathsMap,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
        RefOr, Response, ResponseBuilder,
    },
    Modify, OpenApi, ToSchema,
};

/// Every error: a stable `code`, a human `message`, and `details` (an
/// object, possibly empty).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// What went wrong, for humans.
    message: String,
    /// Stable machine code, e.g. `INVALID_KEY`, `VERSION_CONFLICT`.
    code: String,
    /// More about the error (an object).
    details: serde_json::Map<String, serde_json::Value>,
}

/// The document the router's operations are added to: its `info`, the
/// error envelope and the default security.
#[derive(OpenApi)]
#[openapi(
    info(title = "syncstore", description = "Real-time key/value sync service: REST API. The Socket.IO /sync namespace is described in the README."),
    components(schemas(ErrorBody)),
    security(("apiKey" = []), ("bearer" = []))
)]
pub struct ApiDoc;

/// The router's document as it is served: [`Conventions`] applied.
pub(super) fn render(mut api: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    Conventions.modify(&mut api);
    api
}

/// What every operation shares: the two ways to authenticate, and the
/// error envelope as the `default` response, so any status a handler did
/// not list is still described (and checked) as an error body. And paths
/// as OpenAPI writes them: axum's catch-all `{*key}` (a key may contain
/// `/`) is the path parameter `{key}`.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        let error: RefOr<Response> = ResponseBuilder::new()
            .description("An error: {message, code, details}")
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
            .into();
        let mut paths = PathsMap::new();
        for (path, mut item) in std::mem::take(&mut openapi.paths.paths) {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .entry("default".into())
                    .or_insert_with(|| error.clone());
            }
            paths.insert(path.replace("{*", "{"), item);
        }
        openapi.paths.paths = paths;
    }
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", security(()), responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
pub async fn spec() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(super::api_spec())
}
