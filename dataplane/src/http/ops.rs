//! `/health`, `/ready` and `/metrics`.

use axum::{extract::State, http::header, response::IntoResponse, Json};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error::ApiError, state::AppState};

/// `GET /health`.
// Not `Health`: that is a device's health in analytics, and schema names
// are one namespace.
#[derive(Serialize, ToSchema)]
pub struct Alive {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
}

/// `GET /ready`.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(value_type = String, example = "ready")]
    status: &'static str,
    /// The database engine: `sqlite`, `postgres` or `mysql`.
    #[schema(value_type = String, example = "postgres")]
    database: &'static str,
    /// With `REDIS_URL` set: `connected`, or `reconnecting` while fan-out
    /// to other pods is down. Informational: the pod stays ready, as it
    /// still serves its own sockets and REST with limits failing open (the
    /// `RedisUnreachable` alert pages for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "connected")]
    redis: Option<&'static str>,
}

/// Alive: the process answers. Never touches the database, so a database
/// outage does not get healthy pods restarted.
#[utoipa::path(get, path = "/health", tag = "ops", security(()), responses((status = 200, description = "The process is alive", body = Alive)))]
pub async fn health() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// Ready: the database answers, so this pod can serve traffic.
#[utoipa::path(get, path = "/ready", tag = "ops", security(()), responses((status = 200, description = "The database answers and the process is not draining", body = Ready)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if state.shutting_down() {
        return Err(ApiError::ServiceUnavailable);
    }
    match state.sync.database_ready().await {
        Some(database) => Ok(Json(Ready {
            status: "ready",
            database,
            redis: state.config.redis.as_ref().map(|_| {
                if state.metrics.redis_is_connected() {
                    "connected"
                } else {
                    "reconnecting"
                }
            }),
        })),
        None => Err(ApiError::ServiceUnavailable),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "ops", security(()), responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // Gauges of queues and pools are read when scraped.
    let m = &state.metrics;
    m.pool(state.sync.pool_stats());
    m.sqlite_writer_queue
        .set(i64::try_from(state.sync.db().writers_waiting()).unwrap_or(i64::MAX));
    m.audit_queue
        .set(i64::try_from(state.audit.queue_depth()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
