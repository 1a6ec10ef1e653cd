//! `GET /api/v1/audit`: the audit trail, newest first, for admin keys.

use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::QueryParams;
use crate::{
    audit::{Filter, Row},
    auth::{Principal, Scope},
    error::ApiError,
    state::AppState,
    text,
};

/// The filters and page of `GET /audit`; a malformed one is 400
/// `INVALID_QUERY`.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// The acting user.
    user_id: Option<String>,
    /// The key used.
    key_id: Option<String>,
    /// What was done, e.g. `item.set`.
    action: Option<String>,
    /// What it was done to (an item key, a key id, a user id).
    target: Option<String>,
    /// The `X-Request-Id` of the request that wrote the entry.
    request_id: Option<String>,
    /// Unix milliseconds or RFC 3339, inclusive.
    #[serde(default, deserialize_with = "crate::instant::option")]
    #[param(value_type = Option<String>)]
    from: Option<i64>,
    /// Unix milliseconds or RFC 3339.
    #[serde(default, deserialize_with = "crate::instant::option")]
    #[param(value_type = Option<String>)]
    to: Option<i64>,
    /// `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Entries per page.
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: Option<i64>,
}

/// One page of the trail, newest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub entries: Vec<Row>,
    /// The `cursor` of the next page; null on the last one.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/audit", tag = "audit", params(Params), responses((status = 200, description = "Entries, newest first, and the cursor of the next page", body = AuditPage), (status = 400, description = "INVALID_QUERY: a limit outside 1 to 1000, a malformed date or filter", body = crate::http::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
    QueryParams(p): QueryParams<Params>,
) -> Result<Json<AuditPage>, ApiError> {
    who.require(Scope::Admin)?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(crate::text::Invalid::new("limit", "is 1 to 1000").query());
    }
    for (field, value) in [
        ("userId", &p.user_id),
        ("keyId", &p.key_id),
        ("action", &p.action),
        ("target", &p.target),
        ("requestId", &p.request_id),
        ("cursor", &p.cursor),
    ] {
        if let Some(v) = value {
            text::check(field, v, text::KEY).map_err(text::Invalid::query)?;
        }
    }
    let filter = Filter {
        actor: p.user_id.as_deref(),
        key_id: p.key_id.as_deref(),
        action: p.action.as_deref(),
        target: p.target.as_deref(),
        request_id: p.request_id.as_deref(),
        from: p.from,
        to: p.to,
        before: p.cursor.as_deref(),
        limit,
    };
    let entries = state.audit.entries(&filter).await?;
    let next_cursor = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_cursor,
    }))
}
