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

use std::time::Instant;

use axum::http::{header, HeaderValue};
use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderName, Method, Uri},
    middleware::{self, Next},
    response::Response,
    routing::{delete, get},
    Router,
};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    trace::TraceLayer,
};

use crate::{
    access::restrictions::Caller,
    auth::RequestContext,
    config::{CorsConfig, CorsOrigins},
    error::ApiError,
    state::AppState,
};

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    // Every route here needs a credential; `authenticate` establishes it
    // once, before the handler.
    let protected = Router::new()
        .route(
            "/sync-storage/item/{*key}",
            get(items::get_item)
                .put(items::put_item)
                .delete(items::delete_item),
        )
        .route("/sync-storage/item", axum::routing::any(items::missing_key))
        .route(
            "/sync-storage/item/",
            axum::routing::any(items::missing_key),
        )
        .route("/sync-storage/items", get(items::list_items))
        .route("/sync-storage/keys", get(items::list_keys))
        .route("/sync-storage/clear", delete(items::clear))
        .route("/sync-storage/sessions", get(sessions::list))
        .route("/audit", get(audit::list))
        .route("/api-keys", get(keys::list).post(keys::create))
        .route(
            "/api-keys/{id}",
            get(keys::get).patch(keys::patch).delete(keys::delete),
        )
        .route("/api-keys/{id}/rotate", axum::routing::post(keys::rotate))
        .route("/auth/token", axum::routing::post(auth::token))
        .route("/sync-storage/conflicts", get(conflicts::list))
        .route("/sync-storage/conflicts/stats", get(conflicts::stats))
        .route(
            "/sync-storage/conflicts/analyze",
            axum::routing::post(conflicts::analyze),
        )
        .route(
            "/sync-storage/conflicts/history/{*item}",
            get(conflicts::history),
        )
        .route(
            "/sync-storage/conflicts/resolve/{id}",
            axum::routing::put(conflicts::resolve),
        )
        .route("/analytics/dashboard", get(analytics::dashboard))
        .route("/analytics/realtime", get(analytics::realtime))
        .route("/analytics/users/{user}", get(analytics::user))
        .route(
            "/analytics/users/{user}/engagement",
            get(analytics::engagement),
        )
        .route("/analytics/users/{user}/behavior", get(analytics::behavior))
        .route("/analytics/api-keys/{id}", get(analytics::api_key))
        .route(
            "/analytics/api-keys/{id}/security",
            get(analytics::api_key_security),
        )
        .route(
            "/analytics/api-keys/{id}/trends",
            get(analytics::api_key_trends),
        )
        .route("/analytics/instances/{id}", get(analytics::instance))
        .route(
            "/analytics/instances/{id}/performance",
            get(analytics::instance_performance),
        )
        .route(
            "/analytics/instances/{id}/health",
            get(analytics::instance_health),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate::authenticate,
        ));
    let public = Router::new()
        .route("/auth/refresh", axum::routing::post(auth::refresh))
        .route("/auth/logout", axum::routing::post(auth::logout))
        .route("/openapi.json", get(openapi::spec));
    let api = protected.merge(public);

    Router::new()
        .nest("/api/v1", api)
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/app.css", get(dashboard::style))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
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
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn(usable_request_id))
        .with_state(state)
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
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    state
        .metrics
        .http_latency
        .with_label_values(&[&route, method.as_str()])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, method.as_str(), status.as_str()])
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
        state.analytics.record(event);
    }
    response
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

/// The CORS policy (`CORS_ORIGIN`, `CORS_CREDENTIALS`). `app` applies it
/// outside the Socket.IO layer, so REST and the engine.io endpoints
/// (`/socket.io/`, whose polling transport a browser on another origin
/// starts with) answer preflights and carry the same headers.
pub fn cors(cfg: &CorsConfig) -> CorsLayer {
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
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-instance-id"),
            REQUEST_ID,
        ])
        .expose_headers([REQUEST_ID])
}
