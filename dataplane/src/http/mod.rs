//! The REST router. A URL's handler lives in the file named for its area:
//! `/api/v1/sync-storage/*` in `items.rs`, `/health|/ready|/metrics` in `ops.rs`.

mod analytics;
mod audit;
mod auth;
mod authenticate;
mod conflicts;
mod dashboard;
pub mod error;
pub mod extract;
mod items;
mod keys;
pub mod openapi;
mod ops;
mod sessions;

use std::{convert::Infallible, sync::OnceLock, time::Instant};

use axum::http::{header, HeaderValue, StatusCode};
use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, Method, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, Route},
    Router,
};
use tower::{layer::util::Identity, Layer, Service};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    trace::TraceLayer,
};
use tracing::Instrument;

use utoipa::OpenApi;
use utoipa_axum::{
    router::{OpenApiRouter, UtoipaMethodRouter},
    routes,
};

use crate::{
    access::restrictions::Caller,
    auth::RequestContext,
    config::{CorsConfig, CorsOrigins},
    error::ApiError,
    state::AppState,
    telemetry::{self, TraceContext, TARGET},
};

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// `OpenApiRouter::routes`, for the handlers of one path only: `routes!`
/// mounts all its handlers on every path they name, so handlers of two
/// paths in one `routes!` would answer on each other's path.
trait OnePath {
    fn operations(self, at_one_path: UtoipaMethodRouter<AppState>) -> Self;
}

impl OnePath for OpenApiRouter<AppState> {
    fn operations(self, at_one_path: UtoipaMethodRouter<AppState>) -> Self {
        let paths = &at_one_path.1.paths;
        assert_eq!(paths.len(), 1, "one path per routes!: {:?}", paths.keys());
        self.routes(at_one_path)
    }
}

/// Every route, with the OpenAPI operation of each REST handler: a handler
/// is registered once, through `routes!`, which brings its
/// `#[utoipa::path]` (path, method, parameters, bodies) along, so the
/// document cannot drift from the routes. `authenticate` wraps the
/// routes that need a credential (a route layer, so it never runs for a
/// path that is not routed). The routes that are not operations (the
/// missing-key helpers, the dashboard) are plain axum routes.
fn route_tree<L>(authenticate: L) -> OpenApiRouter<AppState>
where
    L: Layer<Route> + Clone + Send + Sync + 'static,
    L::Service: Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
    <L::Service as Service<Request>>::Response: IntoResponse + 'static,
    <L::Service as Service<Request>>::Future: Send + 'static,
{
    // Every route here needs a credential; `authenticate` establishes it
    // once, before the handler.
    let protected = OpenApiRouter::new()
        .operations(routes!(
            items::get_item,
            items::put_item,
            items::delete_item
        ))
        .route("/sync-storage/item", any(items::missing_key))
        .route("/sync-storage/item/", any(items::missing_key))
        .operations(routes!(items::list_items))
        .operations(routes!(items::list_keys))
        .operations(routes!(items::clear))
        .operations(routes!(sessions::list))
        .operations(routes!(audit::list))
        .operations(routes!(keys::list, keys::create))
        .operations(routes!(keys::get, keys::patch, keys::delete))
        .operations(routes!(keys::rotate))
        .operations(routes!(auth::token))
        .operations(routes!(conflicts::list))
        .operations(routes!(conflicts::stats))
        .operations(routes!(conflicts::analyze))
        .operations(routes!(conflicts::history))
        .operations(routes!(conflicts::resolve))
        .operations(routes!(analytics::dashboard))
        .operations(routes!(analytics::realtime))
        .operations(routes!(analytics::user))
        .operations(routes!(analytics::engagement))
        .operations(routes!(analytics::behavior))
        .operations(routes!(analytics::api_key))
        .operations(routes!(analytics::api_key_security))
        .operations(routes!(analytics::api_key_trends))
        .operations(routes!(analytics::instance))
        .operations(routes!(analytics::instance_performance))
        .operations(routes!(analytics::instance_health))
        .route_layer(authenticate);
    let public = OpenApiRouter::new()
        .operations(routes!(auth::refresh))
        .operations(routes!(auth::logout))
        .operations(routes!(openapi::spec));

    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", protected.merge(public))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/app.css", get(dashboard::style))
        .operations(routes!(ops::health))
        .operations(routes!(ops::ready))
        .operations(routes!(ops::metrics))
}

/// The OpenAPI document, rendered once from the first router's split.
static SPEC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();

/// The OpenAPI document of the REST API, as `/api/v1/openapi.json` serves
/// it: the operations [`router`] registers, with what they share.
pub fn api_spec() -> &'static utoipa::openapi::OpenApi {
    SPEC.get_or_init(|| openapi::render(route_tree(Identity::new()).into_openapi()))
}

/// Every operation the router registers with its OpenAPI operation, as
/// (method, path) in axum's syntax (`/api/v1/sync-storage/item/{*key}`),
/// for tests to compare with the document and the live server.
pub fn operations() -> Vec<(Method, String)> {
    let api = route_tree(Identity::new()).into_openapi();
    let mut out = Vec::new();
    for (path, item) in &api.paths.paths {
        for (method, op) in [
            (Method::GET, &item.get),
            (Method::PUT, &item.put),
            (Method::POST, &item.post),
            (Method::DELETE, &item.delete),
            (Method::PATCH, &item.patch),
            (Method::HEAD, &item.head),
            (Method::OPTIONS, &item.options),
            (Method::TRACE, &item.trace),
        ] {
            if op.is_some() {
                out.push((method, path.clone()));
            }
        }
    }
    out
}

/// The REST service: [`route_tree`] with its fallbacks and every layer.
pub fn router(state: AppState) -> Router {
    let authenticate = middleware::from_fn_with_state(state.clone(), authenticate::authenticate);
    let (routes, spec) = route_tree(authenticate).split_for_parts();
    SPEC.get_or_init(|| openapi::render(spec));
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes()))
        // The usual hardening for an API that never serves HTML.
        .layer(SetResponseHeaderLayer::if_not_present(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::if_not_present(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        // The request id is set by `edge`, outside this router.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(middleware::from_fn(trace_request))
        .with_state(state)
}

/// What wraps REST and the engine.io endpoint (`/socket.io/`) alike: the
/// CORS policy, and the `X-Request-Id` every answer carries, a CORS
/// preflight's and engine.io's included. The id is set on the request
/// before anything inside sees it, so REST's log span and the Socket.IO
/// handshake (`socket::handshake`) read the same id the client gets back.
pub fn edge(app: Router, cfg: &CorsConfig) -> Router {
    app.layer(cors(cfg))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn(usable_request_id))
}

/// A client's `X-Request-Id` that the audit trail could not store as sent
/// (empty, over 128 bytes, control characters) is replaced by a fresh one,
/// so the id a client sees is always the id recorded.
async fn usable_request_id(mut req: Request, next: Next) -> Response {
    let unusable = req.headers().get(&REQUEST_ID).is_some_and(|v| {
        v.to_str().map_or(true, |s| {
            crate::text::check(
                "X-Request-Id",
                s,
                crate::text::Rule {
                    max_bytes: 128,
                    may_be_empty: false,
                },
            )
            .is_err()
        })
    });
    if unusable {
        req.headers_mut().remove(&REQUEST_ID);
    }
    next.run(req).await
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::RouteNotFound {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Counts and times every request by its route template (never the raw
/// path, which would make one time series per key).
async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    // What is known of the request, resolved once: `authenticate`, the
    // handlers, the audit trail and the analytics event all take it from here.
    let context = RequestContext {
        request_id: req
            .headers()
            .get(&REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        client: state.auth.caller(req.headers(), req.extensions()),
        principal: None,
    };
    let facts = analytics_facts(&req, &context.client);
    req.extensions_mut().insert(context);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // A bounded label: any token is a valid HTTP method, so a client could
    // otherwise mint a series (and an analytics row) per request.
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    state
        .metrics
        .http_latency
        .with_label_values(&[&route, method])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, method, status.as_str()])
        .inc();
    let failure = response.extensions().get::<error::ResponseError>();
    match failure {
        Some(failure) => failure.log(&route),
        None if status.is_server_error() => {
            tracing::warn!(status = status.as_u16(), %route, "request failed")
        }
        None => tracing::debug!(status = status.as_u16(), %route, "request done"),
    }
    if let Some(mut event) = facts {
        let who = response
            .extensions()
            .get::<authenticate::Identified>()
            .cloned()
            .unwrap_or_default();
        event.route_or_event = format!("{method} {route}");
        event.user_id = who.user_id;
        event.api_key_id = who.key_id;
        event.status = status.as_u16();
        event.latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        event.bytes_out = axum::body::HttpBody::size_hint(response.body())
            .exact()
            .unwrap_or(0);
        event.error_code = failure.map(|f| f.0.code().to_string());
        // The consumer that aggregates the event continues this trace.
        event.trace = TraceContext::current();
        state.analytics.record(event);
    }
    response
}

/// Runs a REST request inside its server span (see [`server_span`]), and
/// records the answer on it. Outside the log span of `TraceLayer`, so that
/// every line logged for the request carries the trace's ids. Probes and
/// scrapes (`/health`, `/ready`, `/metrics`), every few seconds from each
/// kubelet and Prometheus, are not traced.
async fn trace_request(req: Request, next: Next) -> Response {
    if matches!(req.uri().path(), "/health" | "/ready" | "/metrics") {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str());
    let span = server_span(&req, route);
    let response = next.run(req).instrument(span.clone()).await;
    let failure = response.extensions().get::<error::ResponseError>();
    end_server_span(&span, response.status(), failure);
    response
}

/// The server span of a REST request, by the HTTP semantic conventions,
/// continuing the caller's trace when it sent a `traceparent`. It is named
/// by the route template, never the path (which holds the item key), and
/// carries no header: credentials travel in them.
fn server_span(req: &Request, route: &str) -> tracing::Span {
    let method = method_label(req.method());
    let matched = route != "unmatched";
    let span = tracing::info_span!(
        target: TARGET,
        "http.server",
        otel.name = %if matched { format!("{method} {route}") } else { method.to_string() },
        otel.kind = "server",
        http.request.method = method,
        http.route = matched.then_some(route),
        url.path = capped(req.uri().path(), URL_PATH_MAX),
        url.scheme = "http",
        network.protocol.version = protocol_version(req.version()),
        request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()),
        http.response.status_code = tracing::field::Empty,
    );
    if !span.is_disabled() {
        if let Some(parent) = TraceContext::from_headers(req.headers()) {
            parent.adopt(&span);
        }
    }
    span
}

/// The method as metrics, analytics and spans name it: one of the nine of
/// RFC 9110 (and PATCH), else `_OTHER`, as the HTTP semantic conventions
/// say. Any token is a valid method, so the raw one would let a client
/// add a series per request.
pub(crate) fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method.as_str())
        .unwrap_or("_OTHER")
}

/// The most of a path a server span keeps: the client chooses the path (up
/// to the URI limit), and a sampled `traceparent` of its own makes every
/// request's span stored by the collector.
const URL_PATH_MAX: usize = 256;

/// `text` cut to at most `max` bytes, on a character boundary.
fn capped(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `network.protocol.version` as the conventions write it.
fn protocol_version(version: axum::http::Version) -> &'static str {
    match version {
        axum::http::Version::HTTP_09 => "0.9",
        axum::http::Version::HTTP_10 => "1.0",
        axum::http::Version::HTTP_2 => "2",
        axum::http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// Records the answer on the server span: the status, and for a failure
/// its stable code as `error.type` (a 5xx also marks the span an error;
/// a 4xx is the client's, so the server span stays unset).
fn end_server_span(
    span: &tracing::Span,
    status: StatusCode,
    failure: Option<&error::ResponseError>,
) {
    if span.is_disabled() {
        return;
    }
    // As an i64: tracing-opentelemetry exports unsigned fields as strings,
    // and the conventions (and queries like `>= 500`) want an int.
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_client_error() || status.is_server_error() {
        let code = failure.map_or_else(|| status.as_str().to_string(), |f| f.0.code().to_string());
        if status.is_server_error() {
            telemetry::context::fail(span, &code);
        } else {
            telemetry::context::set_attribute(span, "error.type", code);
        }
    }
}

/// What the request itself says for its analytics event; None for the
/// operational endpoints, which probes call every few seconds.
fn analytics_facts(req: &Request, caller: &Caller) -> Option<crate::analytics::Event> {
    let path = req.uri().path();
    if matches!(path, "/health" | "/ready" | "/metrics") || path.starts_with("/dashboard") {
        return None;
    }
    let headers = req.headers();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let item_key = path
        .strip_prefix("/api/v1/sync-storage/item/")
        .map(percent_decode);
    Some(crate::analytics::Event {
        kind: "rest".into(),
        instance_id: Some(text("x-instance-id").unwrap_or("rest").to_string()),
        bytes_in: text("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        country: caller.country.clone(),
        ua_family: text("user-agent").map(|ua| crate::analytics::event::ua_family(ua).to_string()),
        ip: caller.ip.map(|ip| ip.to_string()),
        item_key,
        ..Default::default()
    })
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("k={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map_or_else(|| s.to_string(), |(_, v)| v.into_owned())
}

/// The request headers a page on another origin may send: every header
/// the API reads (README, "API reference" and "Retries and idempotency").
const CORS_REQUEST_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-instance-id"),
    REQUEST_ID,
    HeaderName::from_static("idempotency-key"),
];

/// The response headers a page on another origin may read: every header
/// the API documents beyond the CORS-safelisted ones (the request id, the
/// rate limit's standing, and when to retry a 429 or 503).
const CORS_EXPOSED_HEADERS: [HeaderName; 5] = [
    REQUEST_ID,
    HeaderName::from_static("x-ratelimit-limit"),
    HeaderName::from_static("x-ratelimit-remaining"),
    HeaderName::from_static("x-ratelimit-reset"),
    header::RETRY_AFTER,
];

/// The CORS policy (`CORS_ORIGIN`, `CORS_CREDENTIALS`). [`edge`] applies it
/// outside the Socket.IO layer, so REST and the engine.io endpoints
/// (`/socket.io/`, whose polling transport a browser on another origin
/// starts with) answer preflights and carry the same headers.
fn cors(cfg: &CorsConfig) -> CorsLayer {
    let origins = match &cfg.origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().filter_map(|o| o.parse().ok())),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_credentials(cfg.credentials)
        .allow_methods([
            Method::GET,
            Method::PUT,
            Method::PATCH,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(CORS_REQUEST_HEADERS)
        .expose_headers(CORS_EXPOSED_HEADERS)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::{trace::TracerProvider as _, Value};
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
    };
    use tracing_subscriber::{layer::SubscriberExt, Layer};

    use super::*;

    /// Keeps what the SDK exports, as a collector would receive it.
    #[derive(Debug, Clone, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// The attributes of the server span of a request with `method` that
    /// was answered `status`, as exported.
    fn exported_server_span(method: &str, status: StatusCode) -> Vec<opentelemetry::KeyValue> {
        exported_span_of(method, "/api/v1/sync-storage/item/k", status)
    }

    fn exported_span_of(
        method: &str,
        path: &str,
        status: StatusCode,
    ) -> Vec<opentelemetry::KeyValue> {
        let kept = Kept::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(kept.clone())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_filter(tracing_subscriber::filter::filter_fn(
                telemetry::traces::wanted,
            ));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            let span = server_span(&req, "/api/v1/sync-storage/item/{*key}");
            end_server_span(&span, status, None);
        });
        let spans = kept.0.lock().unwrap().clone();
        assert_eq!(spans.len(), 1, "{spans:?}");
        spans[0].attributes.clone()
    }

    fn attribute(attributes: &[opentelemetry::KeyValue], key: &str) -> Option<Value> {
        attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    }

    #[test]
    fn a_method_outside_the_known_set_is_other_in_labels_and_spans() {
        assert_eq!(method_label(&Method::PUT), "PUT");
        assert_eq!(
            method_label(&Method::from_bytes(b"PURGE").unwrap()),
            "_OTHER"
        );
        assert_eq!(method_label(&Method::from_bytes(b"get").unwrap()), "_OTHER");
        let attributes = exported_server_span("FOO123", StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            attribute(&attributes, "http.request.method"),
            Some(Value::from("_OTHER"))
        );
    }

    #[test]
    fn the_status_code_is_exported_as_an_int() {
        let attributes = exported_server_span("PUT", StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            attribute(&attributes, "http.response.status_code"),
            Some(Value::I64(503))
        );
    }

    #[test]
    fn a_long_path_is_capped_in_the_span() {
        let path = format!("/api/v1/sync-storage/item/{}", "%C3%A9".repeat(2000));
        let attributes = exported_span_of("GET", &path, StatusCode::OK);
        let Some(Value::String(kept)) = attribute(&attributes, "url.path") else {
            panic!("no url.path in {attributes:?}");
        };
        assert_eq!(kept.as_str().len(), URL_PATH_MAX);
        assert!(path.starts_with(kept.as_str()));
        assert_eq!(capped("/a/é", 4), "/a/");
    }
}
