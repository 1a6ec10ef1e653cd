//! `/health`, `/ready` and `/metrics`.

use axum::{extract::State, http::header, response::IntoResponse, Json};
use serde_json::{json, Value};

use crate::{error::ApiError, state::AppState};

/// Alive: the process answers. Never touches the database, so a database
/// outage does not get healthy pods restarted.
#[utoipa::path(get, path = "/health", tag = "ops", security(()), responses((status = 200, description = "The process is alive", body = Object)))]
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the database answers, so this pod can serve traffic.
#[utoipa::path(get, path = "/ready", tag = "ops", security(()), responses((status = 200, description = "The database answers and the process is not draining", body = Object)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.shutting_down() {
        return Err(ApiError::ServiceUnavailable);
    }
    match state.sync.database_ready().await {
        Some(database) => Ok(Json(json!({ "status": "ready", "database": database }))),
        None => Err(ApiError::ServiceUnavailable),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "ops", security(()), responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let (size, idle) = state.sync.pool_stats();
    state.metrics.db_pool_size.set(i64::from(size));
    state
        .metrics
        .db_pool_idle
        .set(i64::try_from(idle).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
