//! `GET /api/v1/analytics/*`, the seed's analytics endpoints: each parses
//! its window (and ids) and asks [`Reports`] for the report, which decides
//! what the caller may see (see `analytics::report`).
//!
//! Every endpoint takes `from` and `to` (ms since the epoch or RFC 3339;
//! default: the last 24 hours) and `granularity` (`minute`, `hour`, `day`;
//! default: minute up to 2 hours, hour up to 7 days, day beyond).

use axum::{
    extract::{RawQuery, State},
    Json,
};

use super::extract::PathId;
use crate::{
    analytics::report::{
        Behavior, Dashboard, Engagement, InstanceHealth, InstancePerformance, InstanceReport,
        KeyReport, KeySecurity, KeyTrends, Realtime, UserReport,
    },
    auth::Principal,
    error::ApiError,
    state::AppState,
};

/// The query parameters every analytics endpoint takes, for the OpenAPI
/// spec; `analytics::report::window` parses them (with its own error
/// messages): anything else is 400 `INVALID_QUERY`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct WindowParams {
    /// Start: ms since the epoch or RFC 3339 (default: 24 h ago).
    from: Option<String>,
    /// End (default: now).
    to: Option<String>,
    /// The bucket width (default: minute up to 2 hours, hour up to 7 days,
    /// day beyond); at most 10 000 buckets.
    #[param(inline)]
    granularity: Option<Granularity>,
}

/// The width of a bucket of a report's series.
// Only the OpenAPI spec's: `analytics::report::window` parses the query.
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum Granularity {
    Minute,
    Hour,
    Day,
}

/// `?userId=` of the instance endpoints, checked as any user id.
fn user_param(raw: Option<&str>) -> Result<Option<String>, ApiError> {
    let raw = raw.unwrap_or_default();
    crate::text::well_encoded(raw)
        .map_err(|reason| crate::text::Invalid::new("query", reason).query())?;
    let Some((_, user)) = form_urlencoded::parse(raw.as_bytes()).find(|(k, _)| k == "userId")
    else {
        return Ok(None);
    };
    crate::sync::validate_user_id(&user).map_err(crate::text::Invalid::query)?;
    Ok(Some(user.into_owned()))
}

#[utoipa::path(get, path = "/analytics/dashboard", tag = "analytics", params(WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "Totals, latency, users, cohorts, series, top routes, denials, conflicts", body = Dashboard)))]
pub async fn dashboard(
    State(state): State<AppState>,
    who: Principal,
    RawQuery(q): RawQuery,
) -> Result<Json<Dashboard>, ApiError> {
    let viewer = who.analytics_viewer();
    Ok(Json(state.reports.dashboard(&viewer, q.as_deref()).await?))
}

#[utoipa::path(get, path = "/analytics/realtime", tag = "analytics", responses((status = 200, description = "Sockets now and operations per second, all pods", body = Realtime)))]
pub async fn realtime(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Realtime>, ApiError> {
    Ok(Json(state.reports.realtime(&who.analytics_viewer()).await?))
}

#[utoipa::path(get, path = "/analytics/users/{user}", tag = "analytics", params(("user" = String, Path, description = "User id"), WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "The user's totals and series", body = UserReport)))]
pub async fn user(
    State(state): State<AppState>,
    who: Principal,
    PathId(user): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<UserReport>, ApiError> {
    let viewer = who.analytics_viewer();
    Ok(Json(
        state.reports.user(&viewer, &user, q.as_deref()).await?,
    ))
}

#[utoipa::path(get, path = "/analytics/users/{user}/engagement", tag = "analytics", params(("user" = String, Path, description = "User id"), WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "Sessions and operations", body = Engagement)))]
pub async fn engagement(
    State(state): State<AppState>,
    who: Principal,
    PathId(user): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Engagement>, ApiError> {
    let viewer = who.analytics_viewer();
    Ok(Json(
        state
            .reports
            .engagement(&viewer, &user, q.as_deref())
            .await?,
    ))
}

#[utoipa::path(get, path = "/analytics/users/{user}/behavior", tag = "analytics", params(("user" = String, Path, description = "User id"), WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "Top keys, prefixes, hours, devices", body = Behavior)))]
pub async fn behavior(
    State(state): State<AppState>,
    who: Principal,
    PathId(user): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Behavior>, ApiError> {
    let viewer = who.analytics_viewer();
    Ok(Json(
        state.reports.behavior(&viewer, &user, q.as_deref()).await?,
    ))
}

#[utoipa::path(get, path = "/analytics/api-keys/{id}", tag = "analytics", params(("id" = String, Path, description = "Key id"), WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "Usage", body = KeyReport)))]
pub async fn api_key(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<KeyReport>, ApiError> {
    let viewer = who.analytics_viewer();
    Ok(Json(state.reports.key(&viewer, &id, q.as_deref()).await?))
}

#[utoipa::path(get, path = "/analytics/api-keys/{id}/security", tag = "analytics", params(("id" = String, Path, description = "Key id"), WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "Denials by reason, IP and country", body = KeySecurity)))]
pub async fn api_key_security(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<KeySecurity>, ApiError> {
    let viewer = who.analytics_viewer();
    Ok(Json(
        state
            .reports
            .key_security(&viewer, &id, q.as_deref())
            .await?,
    ))
}

#[utoipa::path(get, path = "/analytics/api-keys/{id}/trends", tag = "analytics", params(("id" = String, Path, description = "Key id"), WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "Series and change", body = KeyTrends)))]
pub async fn api_key_trends(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<KeyTrends>, ApiError> {
    let viewer = who.analytics_viewer();
    Ok(Json(
        state.reports.key_trends(&viewer, &id, q.as_deref()).await?,
    ))
}

#[utoipa::path(get, path = "/analytics/instances/{id}", tag = "analytics", params(("id" = String, Path, description = "Instance id"), ("userId" = Option<String>, Query, description = "Whose device (analytics:read only; default: every user's device of this name)"), WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "Totals and series", body = InstanceReport)))]
pub async fn instance(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<InstanceReport>, ApiError> {
    let asked = user_param(q.as_deref())?;
    let viewer = who.analytics_viewer();
    Ok(Json(
        state
            .reports
            .instance(&viewer, &id, asked, q.as_deref())
            .await?,
    ))
}

#[utoipa::path(get, path = "/analytics/instances/{id}/performance", tag = "analytics", params(("id" = String, Path, description = "Instance id"), ("userId" = Option<String>, Query, description = "Whose device (analytics:read only; default: every user's device of this name)"), WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "Latency percentiles", body = InstancePerformance)))]
pub async fn instance_performance(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<InstancePerformance>, ApiError> {
    let asked = user_param(q.as_deref())?;
    let viewer = who.analytics_viewer();
    let report = state
        .reports
        .instance_performance(&viewer, &id, asked, q.as_deref());
    Ok(Json(report.await?))
}

#[utoipa::path(get, path = "/analytics/instances/{id}/health", tag = "analytics", params(("id" = String, Path, description = "Instance id"), ("userId" = Option<String>, Query, description = "Whose device (analytics:read only; default: every user's device of this name)"), WindowParams), responses((status = 400, description = "INVALID_QUERY: a malformed from or to, from not before to, a granularity other than minute, hour or day, or over 10 000 buckets", body = crate::http::openapi::ErrorBody), (status = 200, description = "Status, last seen, error rate, reconnects", body = InstanceHealth)))]
pub async fn instance_health(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<InstanceHealth>, ApiError> {
    let asked = user_param(q.as_deref())?;
    let viewer = who.analytics_viewer();
    Ok(Json(
        state
            .reports
            .instance_health(&viewer, &id, asked, q.as_deref())
            .await?,
    ))
}
