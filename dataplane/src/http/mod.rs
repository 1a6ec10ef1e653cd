//! The REST router. A URL's handler lives in the file named for its area:
//! `/api/v1/sync-storage/*` in `items.rs`, `/health|/ready|/metrics` in `ops.rs`.

mod audit;
mod auth;
mod conflicts;
pub mod extract;
mod items;
mod keys;
mod ops;
mod sessions;

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::http::{header, HeaderMap, HeaderValue};
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
    app::AppState,
    auth::limiter::RateInfo,
    config::{CorsConfig, CorsOrigins},
    error::ApiError,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let api = Router::new()
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
        .route("/auth/refresh", axum::routing::post(auth::refresh))
        .route("/auth/logout", axum::routing::post(auth::logout))
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
        );

    Router::new()
        .nest("/api/v1", api)
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(state.config.limits.max_body_bytes()))
        .layer(cors(&state.config.cors))
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
        .with_state(state)
}

/// Where the principal extractor leaves the caller's rate-limit standing,
/// for `track` to turn into X-RateLimit-* headers on the response.
#[derive(Clone, Default)]
pub struct RateSlot(Arc<Mutex<Option<RateInfo>>>);

impl RateSlot {
    pub fn set(&self, info: RateInfo) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(info);
    }
}

/// The X-RateLimit-* headers for `info`.
pub fn rate_headers(headers: &mut HeaderMap, info: &RateInfo) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(info.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(info.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(info.reset_secs));
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
    let slot = RateSlot::default();
    req.extensions_mut().insert(slot.clone());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let started = Instant::now();
    let mut response = next.run(req).await;
    if let Some(info) = slot.0.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        if !response.headers().contains_key("x-ratelimit-limit") {
            rate_headers(response.headers_mut(), info);
        }
    }
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
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), %route, "request failed");
    } else {
        tracing::debug!(status = status.as_u16(), %route, "request done");
    }
    response
}

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
