//! `/metrics` and `/health` of the operator process.

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};

use crate::{health::Health, metrics::Metrics};

#[derive(Clone)]
struct Served {
    metrics: Metrics,
    health: Health,
}

pub fn router(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route("/health", get(health_of))
        .route("/metrics", get(render))
        .with_state(Served { metrics, health })
}

async fn health_of(State(s): State<Served>) -> impl IntoResponse {
    match s.health.check() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "unhealthy", "reason": reason })),
        ),
    }
}

async fn render(State(s): State<Served>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
