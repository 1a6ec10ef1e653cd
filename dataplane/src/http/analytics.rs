//! `GET /api/v1/analytics/*`, the seed's analytics endpoints.
//!
//! `analytics:read` (or `admin`) sees everything. Without it a caller sees
//! only its own user, its own keys and its own devices; the dashboard and
//! the realtime view, which span users, need the scope.
//!
//! Every endpoint takes `from` and `to` (ms since the epoch or RFC 3339;
//! default: the last 24 hours) and `granularity` (`minute`, `hour`, `day`;
//! default: minute up to 2 hours, hour up to 7 days, day beyond).

use axum::{
    extract::{RawQuery, State},
    Json,
};
use serde_json::{json, Value};

use super::extract::PathId;
use crate::{
    analytics::query::{self, Owner, Seen, Window},
    auth::{Principal, Scope},
    error::ApiError,
    state::AppState,
    storage::{instances, keys, now_ms},
};

const DAY_MS: i64 = 86_400_000;

/// The query parameters every analytics endpoint takes, for the OpenAPI
/// spec; [`window`] parses them (with its own error messages).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct WindowParams {
    /// Start: ms since the epoch or RFC 3339 (default: 24 h ago).
    from: Option<String>,
    /// End (default: now).
    to: Option<String>,
    /// `minute`, `hour` or `day` (default: by span).
    granularity: Option<String>,
}

fn privileged(who: &Principal) -> bool {
    who.key.allows(Scope::AnalyticsRead)
}

fn require_scope(who: &Principal) -> Result<(), ApiError> {
    if privileged(who) {
        Ok(())
    } else {
        Err(ApiError::ScopeRequired {
            scope: Scope::AnalyticsRead.as_str(),
        })
    }
}

fn parse_time(name: &str, v: &str) -> Result<i64, ApiError> {
    crate::instant::parse(v).map_err(|e| ApiError::InvalidQuery(format!("{name}: {e}")))
}

/// The window the query asks for, with the defaults above.
pub fn window(raw: Option<&str>, now: i64) -> Result<Window, ApiError> {
    let (mut from, mut to, mut granularity) = (None, None, None);
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "from" => from = Some(parse_time("from", &v)?),
            "to" => to = Some(parse_time("to", &v)?),
            "granularity" => {
                granularity = Some(match v.as_ref() {
                    "minute" => "m",
                    "hour" => "h",
                    "day" => "d",
                    _ => {
                        return Err(ApiError::InvalidQuery(
                            "granularity is minute, hour or day".into(),
                        ))
                    }
                })
            }
            _ => {}
        }
    }
    let to = to.unwrap_or(now + 1);
    let from = from.unwrap_or(to - DAY_MS);
    if from >= to {
        return Err(ApiError::InvalidQuery("from must be before to".into()));
    }
    let span = to - from;
    let granularity = granularity.unwrap_or(if span <= 2 * 3_600_000 {
        "m"
    } else if span <= 7 * DAY_MS {
        "h"
    } else {
        "d"
    });
    let buckets = span
        / match granularity {
            "m" => 60_000,
            "h" => 3_600_000,
            _ => DAY_MS,
        };
    if buckets > 10_000 {
        return Err(ApiError::InvalidQuery(
            "the window holds more than 10000 buckets; use a coarser granularity".into(),
        ));
    }
    Ok(Window {
        from,
        to,
        granularity,
    })
}

/// `[(value, n)]` as `[{<name>: value, "count": n}]`.
fn counted(v: Vec<(String, i64)>, name: &str) -> Vec<Value> {
    v.into_iter()
        .map(|(k, n)| json!({ name: k, "count": n }))
        .collect()
}

fn range_json(w: &Window) -> Value {
    let name = match w.granularity {
        "m" => "minute",
        "h" => "hour",
        _ => "day",
    };
    json!({ "from": w.from, "to": w.to, "granularity": name })
}

#[utoipa::path(get, path = "/api/v1/analytics/dashboard", tag = "analytics", params(WindowParams), responses((status = 200, description = "Totals, latency, users, cohorts, series, top routes, denials, conflicts", body = Object)))]
pub async fn dashboard(
    State(state): State<AppState>,
    who: Principal,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    require_scope(&who)?;
    let now = now_ms();
    let w = window(q.as_deref(), now)?;
    let db = state.sync.db();
    let totals = query::totals(db, w, "all", Owner::Anyone, "").await?;
    let series = query::series(db, w, "all", Owner::Anyone, "").await?;
    let latency = query::percentiles(db, w, "all", Owner::Anyone, "").await?;
    let routes = query::top_subjects(db, w, "route", Owner::Anyone, "", 10).await?;
    let denials = query::facet(db, w, "all", "", "denial", 20).await?;
    let dau = query::active_users(db, now - DAY_MS, now + 1).await?;
    let wau = query::active_users(db, now - 7 * DAY_MS, now + 1).await?;
    let mau = query::active_users(db, now - 30 * DAY_MS, now + 1).await?;
    let cohorts = query::cohorts(db, now - 8 * query::WEEK_MS, now).await?;
    let conflict_rows = crate::storage::conflicts::counts(db, None, w.from).await?;
    let conflicts = json!({
        "total": conflict_rows.iter().map(|r| r.3).sum::<i64>(),
        "pending": conflict_rows.iter().filter(|r| r.2 == "pending").map(|r| r.3).sum::<i64>(),
    });
    let live = realtime_figures(&state).await;
    Ok(Json(json!({
        "range": range_json(&w),
        "totals": {
            "requests": totals.requests,
            "errors": totals.errors,
            "errorRate": totals.error_rate(),
            "denials": totals.denials,
            "bytesIn": totals.bytes_in,
            "bytesOut": totals.bytes_out,
        },
        "latencyMs": latency,
        "users": { "dau": dau, "wau": wau, "mau": mau },
        "cohorts": cohorts,
        "series": series,
        "topRoutes": routes.into_iter().map(|(r, t)| json!({ "route": r, "requests": t.requests, "errors": t.errors })).collect::<Vec<_>>(),
        "denials": counted(denials, "code"),
        "conflicts": conflicts,
        "connectedSockets": live["connectedSockets"],
    })))
}

/// This pod's live figures, or every pod's summed through Redis.
async fn realtime_figures(state: &AppState) -> Value {
    let mut figures = state.analytics.live().figures();
    let mut pods = 1;
    if let Some(conn) = &state.live_redis {
        let mut conn = conn.clone();
        match crate::analytics::live::shared::total(&mut conn, &state.config.store_name).await {
            Ok((sum, n)) if n > 0 => {
                figures = sum;
                pods = n;
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "live figures of other pods unavailable"),
        }
    }
    let last_minute = figures.ops_last_minute();
    json!({
        "connectedSockets": figures.connected_sockets,
        "opsLastMinute": last_minute,
        "opsPerSecond": last_minute as f64 / 60.0,
        "opsPerSecondSeries": figures.ops_per_second,
        "pods": pods,
        "at": now_ms(),
    })
}

#[utoipa::path(get, path = "/api/v1/analytics/realtime", tag = "analytics", responses((status = 200, description = "Sockets now and operations per second, all pods", body = Object)))]
pub async fn realtime(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Value>, ApiError> {
    require_scope(&who)?;
    Ok(Json(realtime_figures(&state).await))
}

fn may_see_user(who: &Principal, user: &str) -> Result<(), ApiError> {
    if privileged(who) || who.user_id == user {
        Ok(())
    } else {
        Err(ApiError::ScopeRequired {
            scope: Scope::AnalyticsRead.as_str(),
        })
    }
}

#[utoipa::path(get, path = "/api/v1/analytics/users/{user}", tag = "analytics", params(("user" = String, Path, description = "User id"), WindowParams), responses((status = 200, description = "The user's totals and series", body = Object)))]
pub async fn user(
    State(state): State<AppState>,
    who: Principal,
    PathId(user): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    may_see_user(&who, &user)?;
    let w = window(q.as_deref(), now_ms())?;
    let db = state.sync.db();
    let totals = query::totals(db, w, "user", Owner::User(&user), &user).await?;
    let seen = query::seen(db, Seen::User, Owner::User(&user), &user).await?;
    Ok(Json(json!({
        "userId": user,
        "range": range_json(&w),
        "firstSeen": seen.map(|s| s.0),
        "lastSeen": seen.map(|s| s.1),
        "activeDays": query::active_days(db, &user, w.from, w.to).await?,
        "totals": totals,
        "errorRate": totals.error_rate(),
        "series": query::series(db, w, "user", Owner::User(&user), &user).await?,
        "topRoutes": routes_of(db, w, "user_route", Owner::User(&user), &user).await?,
    })))
}

/// The top routes of a user (`user_route`) or a device (`instance_route`):
/// the owner's rows whose subject starts with `who` and the separator.
async fn routes_of(
    db: &crate::storage::Db,
    w: Window,
    dim: &str,
    owner: Owner<'_>,
    who: &str,
) -> Result<Vec<Value>, ApiError> {
    let rows = query::top_subjects(db, w, dim, owner, &query::pair(who, ""), 20).await?;
    Ok(rows
        .into_iter()
        .map(|(s, t)| json!({ "route": query::second(&s), "requests": t.requests, "errors": t.errors }))
        .collect())
}

#[utoipa::path(get, path = "/api/v1/analytics/users/{user}/engagement", tag = "analytics", params(("user" = String, Path, description = "User id"), WindowParams), responses((status = 200, description = "Sessions and operations", body = Object)))]
pub async fn engagement(
    State(state): State<AppState>,
    who: Principal,
    PathId(user): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    may_see_user(&who, &user)?;
    let now = now_ms();
    let w = window(q.as_deref(), now)?;
    let db = state.sync.db();
    let mine = Owner::User(&user);
    let all = query::totals(db, w, "user", mine, &user).await?;
    let connects = query::totals(
        db,
        w,
        "user_route",
        mine,
        &query::pair(&user, "socket:connect"),
    )
    .await?;
    let ends = query::totals(
        db,
        w,
        "user_route",
        mine,
        &query::pair(&user, "socket:disconnect"),
    )
    .await?;
    let sessions = connects.requests;
    let operations = all.requests - connects.requests - ends.requests;
    let seen = query::seen(db, Seen::User, mine, &user).await?;
    Ok(Json(json!({
        "userId": user,
        "range": range_json(&w),
        "sessions": sessions,
        "completedSessions": ends.requests,
        "avgSessionSeconds": if ends.requests > 0 { ends.latency_sum_us as f64 / ends.requests as f64 / 1e6 } else { 0.0 },
        "operations": operations,
        "operationsPerSession": if sessions > 0 { operations as f64 / sessions as f64 } else { operations as f64 },
        "activeDays": query::active_days(db, &user, w.from, w.to).await?,
        "activeLast7Days": query::active_days(db, &user, now - 7 * DAY_MS, now + 1).await?,
        "activeLast30Days": query::active_days(db, &user, now - 30 * DAY_MS, now + 1).await?,
        "cohortWeek": seen.map(|s| query::week_of(s.0)),
    })))
}

#[utoipa::path(get, path = "/api/v1/analytics/users/{user}/behavior", tag = "analytics", params(("user" = String, Path, description = "User id"), WindowParams), responses((status = 200, description = "Top keys, prefixes, hours, devices", body = Object)))]
pub async fn behavior(
    State(state): State<AppState>,
    who: Principal,
    PathId(user): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    may_see_user(&who, &user)?;
    let w = window(q.as_deref(), now_ms())?;
    let db = state.sync.db();
    let keys = query::facet(db, w, "user", &user, "item_key", 1000).await?;
    let mut prefixes: std::collections::BTreeMap<String, i64> = Default::default();
    for (k, n) in &keys {
        let prefix = k.split_once(['/', ':', '.']).map_or(k.as_str(), |(p, _)| p);
        *prefixes.entry(prefix.to_string()).or_default() += n;
    }
    let mut prefixes: Vec<(String, i64)> = prefixes.into_iter().collect();
    prefixes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut hours = [0i64; 24];
    for (h, n) in query::facet(db, w, "user", &user, "hour", 24).await? {
        if let Some(slot) = h.parse::<usize>().ok().and_then(|i| hours.get_mut(i)) {
            *slot += n;
        }
    }
    let devices = query::facet(db, w, "user", &user, "ua", 20).await?;
    Ok(Json(json!({
        "userId": user,
        "range": range_json(&w),
        "topKeys": counted(keys.into_iter().take(20).collect(), "key"),
        "topPrefixes": counted(prefixes.into_iter().take(20).collect(), "prefix"),
        "activeHoursUtc": hours,
        "devices": counted(devices, "family"),
        "topRoutes": routes_of(db, w, "user_route", Owner::User(&user), &user).await?,
    })))
}

/// The key, if the caller may see it; otherwise the same NOT_FOUND as a
/// key that does not exist, so ids of other users' keys leak nothing.
async fn visible_key(
    state: &AppState,
    who: &Principal,
    id: &str,
) -> Result<keys::KeyView, ApiError> {
    let owner = (!privileged(who)).then_some(who.user_id.as_str());
    keys::get(state.sync.db(), id, owner)
        .await?
        .ok_or_else(|| ApiError::NotFound { key: id.into() })
}

#[utoipa::path(get, path = "/api/v1/analytics/api-keys/{id}", tag = "analytics", params(("id" = String, Path, description = "Key id"), WindowParams), responses((status = 200, description = "Usage", body = Object)))]
pub async fn api_key(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let key = visible_key(&state, &who, &id).await?;
    let w = window(q.as_deref(), now_ms())?;
    let db = state.sync.db();
    let totals = query::totals(db, w, "key", Owner::Anyone, &id).await?;
    Ok(Json(json!({
        "keyId": id,
        "name": key.name,
        "userId": key.user_id,
        "range": range_json(&w),
        "totals": totals,
        "errorRate": totals.error_rate(),
        "latencyMs": query::percentiles(db, w, "key", Owner::Anyone, &id).await?,
        "usageToday": key.usage_today,
        "usageThisMonth": key.usage_this_month,
        "lastUsedAt": key.last_used_at,
        "quotas": { "perMinute": key.quota_per_minute, "perHour": key.quota_per_hour, "perDay": key.quota_per_day, "perMonth": key.quota_per_month },
    })))
}

#[utoipa::path(get, path = "/api/v1/analytics/api-keys/{id}/security", tag = "analytics", params(("id" = String, Path, description = "Key id"), WindowParams), responses((status = 200, description = "Denials by reason, IP and country", body = Object)))]
pub async fn api_key_security(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    visible_key(&state, &who, &id).await?;
    let w = window(q.as_deref(), now_ms())?;
    let db = state.sync.db();
    let totals = query::totals(db, w, "key", Owner::Anyone, &id).await?;
    Ok(Json(json!({
        "keyId": id,
        "range": range_json(&w),
        "requests": totals.requests,
        "denials": totals.denials,
        "denialRate": if totals.requests > 0 { totals.denials as f64 / totals.requests as f64 } else { 0.0 },
        "byReason": counted(query::facet(db, w, "key", &id, "denial", 50).await?, "reason"),
        "byIp": counted(query::facet(db, w, "key", &id, "ip", 50).await?, "ip"),
        "byCountry": counted(query::facet(db, w, "key", &id, "country", 50).await?, "country"),
    })))
}

#[utoipa::path(get, path = "/api/v1/analytics/api-keys/{id}/trends", tag = "analytics", params(("id" = String, Path, description = "Key id"), WindowParams), responses((status = 200, description = "Series and change", body = Object)))]
pub async fn api_key_trends(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    visible_key(&state, &who, &id).await?;
    let w = window(q.as_deref(), now_ms())?;
    let db = state.sync.db();
    let series = query::series(db, w, "key", Owner::Anyone, &id).await?;
    // Change between the first and second half of the window.
    let mid = w.from + (w.to - w.from) / 2;
    let (early, late): (i64, i64) = series.iter().fold((0, 0), |(e, l), p| {
        if p.bucket < mid {
            (e + p.totals.requests, l)
        } else {
            (e, l + p.totals.requests)
        }
    });
    Ok(Json(json!({
        "keyId": id,
        "range": range_json(&w),
        "series": series,
        "requestsFirstHalf": early,
        "requestsSecondHalf": late,
        "changePercent": if early > 0 { Some((late - early) as f64 * 100.0 / early as f64) } else { None },
    })))
}

/// Whose device `id` a request asks about. Devices are per user: a caller
/// without the scope sees only its own devices' figures (and 404 for a name
/// none of its devices had); with the scope, `?userId=` picks the user,
/// and without it the figures of every user's device of that name are
/// summed.
async fn device_owner(
    state: &AppState,
    who: &Principal,
    id: &str,
    raw: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let asked = user_param(raw)?;
    if privileged(who) {
        return Ok(asked);
    }
    if asked.as_ref().is_some_and(|u| *u != who.user_id) {
        return Err(ApiError::ScopeRequired {
            scope: Scope::AnalyticsRead.as_str(),
        });
    }
    let db = state.sync.db();
    let connected = instances::list(db, &who.user_id)
        .await?
        .iter()
        .any(|i| i.instance_id == id);
    let seen = query::seen(db, Seen::Instance, Owner::User(&who.user_id), id)
        .await?
        .is_some();
    if connected || seen {
        Ok(Some(who.user_id.clone()))
    } else {
        Err(ApiError::NotFound { key: id.into() })
    }
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

fn owner_of(user: &Option<String>) -> Owner<'_> {
    user.as_deref().map_or(Owner::Anyone, Owner::User)
}

#[utoipa::path(get, path = "/api/v1/analytics/instances/{id}", tag = "analytics", params(("id" = String, Path, description = "Instance id"), ("userId" = Option<String>, Query, description = "Whose device (analytics:read only; default: every user's device of this name)"), WindowParams), responses((status = 200, description = "Totals and series", body = Object)))]
pub async fn instance(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let user = device_owner(&state, &who, &id, q.as_deref()).await?;
    let owner = owner_of(&user);
    let w = window(q.as_deref(), now_ms())?;
    let db = state.sync.db();
    let totals = query::totals(db, w, "instance", owner, &id).await?;
    let seen = query::seen(db, Seen::Instance, owner, &id).await?;
    Ok(Json(json!({
        "instanceId": id,
        "userId": user,
        "range": range_json(&w),
        "firstSeen": seen.map(|s| s.0),
        "lastSeen": seen.map(|s| s.1),
        "totals": totals,
        "errorRate": totals.error_rate(),
        "series": query::series(db, w, "instance", owner, &id).await?,
        "topRoutes": routes_of(db, w, "instance_route", owner, &id).await?,
    })))
}

#[utoipa::path(get, path = "/api/v1/analytics/instances/{id}/performance", tag = "analytics", params(("id" = String, Path, description = "Instance id"), ("userId" = Option<String>, Query, description = "Whose device (analytics:read only; default: every user's device of this name)"), WindowParams), responses((status = 200, description = "Latency percentiles", body = Object)))]
pub async fn instance_performance(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let user = device_owner(&state, &who, &id, q.as_deref()).await?;
    let owner = owner_of(&user);
    let w = window(q.as_deref(), now_ms())?;
    let db = state.sync.db();
    let totals = query::totals(db, w, "instance", owner, &id).await?;
    let series = query::series(db, w, "instance", owner, &id).await?;
    let mut latency = query::percentiles_by_bucket(db, w, "instance", owner, &id).await?;
    let points: Vec<Value> = series
        .iter()
        .map(|p| {
            let ms = latency.remove(&p.bucket).unwrap_or_default();
            json!({ "bucket": p.bucket, "requests": p.totals.requests, "latencyMs": ms })
        })
        .collect();
    Ok(Json(json!({
        "instanceId": id,
        "userId": user,
        "range": range_json(&w),
        "requests": totals.requests,
        "avgLatencyMs": if totals.requests > 0 { totals.latency_sum_us as f64 / totals.requests as f64 / 1000.0 } else { 0.0 },
        "latencyMs": query::percentiles(db, w, "instance", owner, &id).await?,
        "bytesIn": totals.bytes_in,
        "bytesOut": totals.bytes_out,
        "series": points,
    })))
}

#[utoipa::path(get, path = "/api/v1/analytics/instances/{id}/health", tag = "analytics", params(("id" = String, Path, description = "Instance id"), ("userId" = Option<String>, Query, description = "Whose device (analytics:read only; default: every user's device of this name)"), WindowParams), responses((status = 200, description = "Status, last seen, error rate, reconnects", body = Object)))]
pub async fn instance_health(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let user = device_owner(&state, &who, &id, q.as_deref()).await?;
    let owner = owner_of(&user);
    let now = now_ms();
    let w = window(q.as_deref(), now)?;
    let db = state.sync.db();
    let totals = query::totals(db, w, "instance", owner, &id).await?;
    let reconnects = query::totals(
        db,
        w,
        "instance_route",
        owner,
        &query::pair(&id, "socket:connect"),
    )
    .await?
    .requests;
    let seen = query::seen(db, Seen::Instance, owner, &id).await?;
    let last_seen = seen.map(|s| s.1);
    let quiet_ms = last_seen.map(|l| now - l);
    let status = match (quiet_ms, totals.error_rate()) {
        (None, _) => "unknown",
        (Some(q), _) if q > 10 * 60_000 => "inactive",
        (_, rate) if rate > 0.05 => "degraded",
        _ => "healthy",
    };
    Ok(Json(json!({
        "instanceId": id,
        "userId": user,
        "range": range_json(&w),
        "status": status,
        "lastSeen": last_seen,
        "requests": totals.requests,
        "errors": totals.errors,
        "errorRate": totals.error_rate(),
        "reconnects": reconnects,
        // Reliability: the share of requests served without a server error.
        "reliability": if totals.requests > 0 { 1.0 - totals.error_rate() } else { 1.0 },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_default_and_validate() {
        let now = 10 * DAY_MS;
        let w = window(None, now).expect("default");
        assert_eq!((w.to - w.from, w.granularity), (DAY_MS, "h"));
        let w = window(Some("from=0&to=3600000"), now).expect("an hour");
        assert_eq!(w.granularity, "m");
        let w = window(
            Some("from=2026-11-01T00:00:00Z&granularity=day"),
            1_830_000_000_000,
        )
        .expect("rfc3339");
        assert_eq!(w.granularity, "d");
        assert!(window(Some("granularity=week"), now).is_err());
        assert!(window(Some("from=5&to=5"), now).is_err());
        assert!(window(Some("from=yesterday"), now).is_err());
        assert!(window(Some("from=0&to=999999999999&granularity=minute"), now).is_err());
    }
}
