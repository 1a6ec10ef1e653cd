//! `/api/v1/sync-storage/conflicts/*`: history, the review queue, stats,
//! and resolving a conflict through the normal write path; the rules are
//! the review service's (`sync::review`).

use std::collections::BTreeMap;

use axum::{extract::State, Json};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{ItemKey, JsonBody, PathId, QueryParams};
use crate::{
    auth::{Principal, RequestContext, Scope},
    error::ApiError,
    state::AppState,
    storage::conflicts::Conflict,
    sync::review::{ConflictStats, ItemAnalysis, QueuePage, Resolved, Reviewer},
};

/// The review queue's query; anything else is 400 `INVALID_QUERY`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// Conflicts awaiting review, or settled ones.
    #[serde(default)]
    #[param(inline, default = "pending")]
    status: ReviewStatus,
    /// Conflicts per page.
    #[serde(default = "fifty")]
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: i64,
    /// Conflicts to skip.
    #[serde(default)]
    #[param(minimum = 0, default = 0)]
    offset: i64,
}

/// Which conflicts `GET /conflicts` lists.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReviewStatus {
    #[default]
    Pending,
    Resolved,
}

impl ReviewStatus {
    fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Pending => "pending",
            ReviewStatus::Resolved => "resolved",
        }
    }
}

fn fifty() -> i64 {
    50
}

/// `GET /conflicts?status=pending&limit=&offset=`: the review queue, oldest first.
#[utoipa::path(get, path = "/sync-storage/conflicts", tag = "conflicts", params(Page), responses((status = 200, description = "Conflicts, oldest first", body = QueuePage), (status = 400, description = "INVALID_QUERY: a status other than pending or resolved, a limit outside 1 to 500, a negative offset", body = crate::http::openapi::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<QueuePage>, ApiError> {
    who.require(Scope::Read)?;
    let queue = state
        .review
        .queue(who.tenant(), page.status.as_str(), page.limit, page.offset);
    Ok(Json(queue.await?))
}

/// `GET /conflicts/history/{itemId}`: by item id or key, newest first.
#[utoipa::path(get, path = "/sync-storage/conflicts/history/{*item}", tag = "conflicts", params(("item" = String, Path, description = "Item id or key")), responses((status = 200, description = "The item's conflicts, newest first", body = Vec<Conflict>)))]
pub async fn history(
    State(state): State<AppState>,
    who: Principal,
    ItemKey(item): ItemKey,
) -> Result<Json<Vec<Conflict>>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(state.review.history(who.tenant(), &item).await?))
}

/// `GET /conflicts/stats`: counts by strategy and outcome in 1 h, 24 h and
/// 7 d, and the share settled (automatically or by review).
#[utoipa::path(get, path = "/sync-storage/conflicts/stats", tag = "conflicts", responses((status = 200, description = "Counts by strategy and outcome over 1 h, 24 h and 7 d", body = ConflictStats)))]
pub async fn stats(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<ConflictStats>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(state.review.stats(who.tenant()).await?))
}

/// The body of a resolution.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resolve {
    /// `FIRST_WRITE_WINS` (keep the stored value), `LAST_WRITE_WINS` (the
    /// later write by timestamp, then instance id), `MERGE` (three-way
    /// merge; 400 naming the clashing paths), or `MANUAL`/`ASSISTED` with
    /// `resolvedValue`.
    strategy: String,
    /// The value to write; required for `MANUAL` and `ASSISTED`, and used
    /// instead of the strategy's when given.
    #[serde(default)]
    resolved_value: Option<Value>,
}

/// `PUT /conflicts/resolve/{conflictId}`: settles a conflict and writes the
/// result through the normal write path (new seq, fan-out to devices).
#[utoipa::path(put, path = "/sync-storage/conflicts/resolve/{id}", tag = "conflicts", params(("id" = String, Path, description = "Conflict id")), request_body(content = Resolve), responses((status = 200, description = "The resolved item", body = Resolved)))]
pub async fn resolve(
    State(state): State<AppState>,
    who: Principal,
    context: RequestContext,
    PathId(id): PathId,
    JsonBody(body): JsonBody<Resolve>,
) -> Result<Json<Resolved>, ApiError> {
    who.require(Scope::Write)?;
    let source = context.source();
    let reviewer = Reviewer {
        tenant: who.tenant(),
        actor: &who.user_id,
        source: &source,
    };
    let resolved = state
        .review
        .resolve(reviewer, &id, &body.strategy, body.resolved_value);
    Ok(Json(resolved.await?))
}

/// The body of an analysis.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Analyze {
    /// 1 to 100 item ids or keys.
    #[schema(min_items = 1, max_items = 100)]
    item_ids: Vec<String>,
}

/// `POST /conflicts/analyze {itemIds}`: per item (id or key), the conflict
/// rate, the instances involved, the median time between competing writes,
/// and a suggested strategy with the reason.
#[utoipa::path(post, path = "/sync-storage/conflicts/analyze", tag = "conflicts", request_body(content = Analyze), responses((status = 200, description = "Analysis per item", body = BTreeMap<String, ItemAnalysis>), (status = 400, description = "INVALID_BODY: no item ids or more than 100", body = crate::http::openapi::ErrorBody)))]
pub async fn analyze(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<Analyze>,
) -> Result<Json<BTreeMap<String, ItemAnalysis>>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(
        state.review.analyze(who.tenant(), &body.item_ids).await?,
    ))
}
