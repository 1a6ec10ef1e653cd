//! `/api/v1/sync-storage/conflicts/*`: history, the review queue, stats,
//! and resolving a conflict through the normal write path.

use axum::{extract::State, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::{ItemKey, JsonBody, PathId, QueryParams};
use crate::{
    auth::{Principal, RequestContext, Scope},
    conflict::{analysis, Sides, Strategy},
    error::ApiError,
    state::AppState,
    storage::{conflicts, now_ms},
    sync::{json_value, SetRequest, SetStatus, Settles},
    text,
};

#[derive(Deserialize)]
pub struct Page {
    #[serde(default = "pending")]
    status: String,
    #[serde(default = "fifty")]
    limit: i64,
    #[serde(default)]
    offset: i64,
}

fn pending() -> String {
    "pending".into()
}

fn fifty() -> i64 {
    50
}

/// `GET /conflicts?status=pending&limit=&offset=`: the review queue, oldest first.
#[utoipa::path(get, path = "/api/v1/sync-storage/conflicts", tag = "conflicts", params(("status" = Option<String>, Query, description = "pending or resolved"), ("limit" = Option<i64>, Query, description = "1 to 1000"), ("cursor" = Option<String>, Query, description = "nextCursor of the previous page")), responses((status = 200, description = "Conflicts, newest first", body = Object)))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
    QueryParams(page): QueryParams<Page>,
) -> Result<Json<Value>, ApiError> {
    who.require(Scope::Read)?;
    if !matches!(page.status.as_str(), "pending" | "resolved")
        || !(1..=500).contains(&page.limit)
        || page.offset < 0
    {
        return Err(ApiError::InvalidQuery(
            "status is pending|resolved, limit 1..=500, offset >= 0".into(),
        ));
    }
    let items = conflicts::list(
        state.sync.db(),
        who.tenant(),
        &page.status,
        page.limit,
        page.offset,
    )
    .await?;
    Ok(Json(
        json!({ "items": items, "limit": page.limit, "offset": page.offset }),
    ))
}

/// `GET /conflicts/history/{itemId}`: by item id or key, newest first.
#[utoipa::path(get, path = "/api/v1/sync-storage/conflicts/history/{item}", tag = "conflicts", params(("item" = String, Path, description = "Item id or key")), responses((status = 200, description = "The item's conflicts, newest first", body = Vec<Object>)))]
pub async fn history(
    State(state): State<AppState>,
    who: Principal,
    ItemKey(item): ItemKey,
) -> Result<Json<Vec<conflicts::Conflict>>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(
        conflicts::history(state.sync.db(), who.tenant(), &item, 200).await?,
    ))
}

/// `GET /conflicts/stats`: counts by strategy and outcome in 1 h, 24 h and
/// 7 d, and the share settled (automatically or by review).
#[utoipa::path(get, path = "/api/v1/sync-storage/conflicts/stats", tag = "conflicts", responses((status = 200, description = "Counts by strategy and outcome over 1 h, 24 h and 7 d", body = Object)))]
pub async fn stats(State(state): State<AppState>, who: Principal) -> Result<Json<Value>, ApiError> {
    who.require(Scope::Read)?;
    let now = now_ms();
    let mut windows = serde_json::Map::new();
    for (name, ms) in [
        ("1h", 3_600_000i64),
        ("24h", 86_400_000),
        ("7d", 7 * 86_400_000),
    ] {
        let rows = conflicts::counts(state.sync.db(), who.tenant(), now - ms).await?;
        let total: i64 = rows.iter().map(|r| r.3).sum();
        let resolved: i64 = rows.iter().filter(|r| r.2 == "resolved").map(|r| r.3).sum();
        let mut by_strategy = serde_json::Map::new();
        let mut by_outcome = serde_json::Map::new();
        for (strategy, outcome, _, n) in &rows {
            *by_strategy.entry(strategy.clone()).or_insert(json!(0)) = json!(
                by_strategy
                    .get(strategy)
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    + n
            );
            *by_outcome.entry(outcome.clone()).or_insert(json!(0)) =
                json!(by_outcome.get(outcome).and_then(Value::as_i64).unwrap_or(0) + n);
        }
        let rate = if total == 0 {
            1.0
        } else {
            resolved as f64 / total as f64
        };
        windows.insert(
            name.into(),
            json!({ "total": total, "pending": total - resolved, "byStrategy": by_strategy, "byOutcome": by_outcome, "resolutionRate": rate }),
        );
    }
    Ok(Json(Value::Object(windows)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolve {
    strategy: String,
    #[serde(default)]
    resolved_value: Option<Value>,
}

/// `PUT /conflicts/resolve/{conflictId}`: settles a conflict and writes the
/// result through the normal write path (new seq, fan-out to devices).
#[utoipa::path(put, path = "/api/v1/sync-storage/conflicts/resolve/{id}", tag = "conflicts", params(("id" = String, Path, description = "Conflict id")), request_body(content = Object, description = "{resolution: local|remote|merged|custom, value?}"), responses((status = 200, description = "The resolved item", body = Object)))]
pub async fn resolve(
    State(state): State<AppState>,
    who: Principal,
    context: RequestContext,
    PathId(id): PathId,
    JsonBody(body): JsonBody<Resolve>,
) -> Result<Json<Value>, ApiError> {
    who.require(Scope::Write)?;
    let db = state.sync.db();
    let conflict = conflicts::get(db, &id, who.tenant())
        .await?
        .ok_or(ApiError::NotFound { key: id.clone() })?;
    if conflict.status != "pending" {
        return Err(ApiError::InvalidBody(
            "the conflict is already resolved".into(),
        ));
    }
    let strategy: Strategy = body.strategy.parse().map_err(ApiError::InvalidBody)?;
    let parse =
        |v: &Option<Box<serde_json::value::RawValue>>| json_value(v.as_deref()).unwrap_or_default();
    let sides = Sides {
        base: conflict
            .base_value
            .as_ref()
            .map(|_| parse(&conflict.base_value)),
        current: parse(&conflict.current_value),
        incoming: parse(&conflict.incoming_value),
        incoming_is_later: (conflict.incoming_timestamp, &conflict.incoming_instance)
            > (conflict.current_timestamp, &conflict.current_instance),
    };
    let value = crate::conflict::settle(strategy, body.resolved_value, sides)?;
    // A resolution settles the item as the conflict saw it. If it has
    // changed since (written, removed, expired), writing it would undo that
    // change, or bring back a value every reader sees as gone: 404 if it is
    // gone, 409 with the current item if it moved on.
    let now = state.sync.get(&conflict.user_id, &conflict.key).await?;
    let expected = Some(conflict.current_version);
    if now.version != conflict.current_version {
        return Err(ApiError::VersionConflict {
            expected,
            current: Box::new(now),
            status: SetStatus::Rejected,
            conflict_id: Some(id),
        });
    }
    // Based on that version, so a write racing this one is a conflict too.
    let request: SetRequest =
        serde_json::from_value(json!({ "value": value, "version": conflict.current_version }))
            .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    let source = context.source();
    let settles = Settles {
        conflict_id: id.clone(),
        resolver: who.key.id.clone(),
    };
    let reply = state
        .sync
        .settle(&conflict.user_id, &source, &conflict.key, &request, settles)
        .await?
        .won(expected)?;
    state
        .audit
        .record(crate::audit::Entry {
            actor: who.user_id.clone(),
            key_id: source.key_id.clone(),
            action: "conflict.resolve",
            target: Some(id.clone()),
            ip: source.ip.clone(),
            result: strategy.as_str().into(),
            request_id: source.request_id.clone(),
            details: Some(json!({ "key": conflict.key, "seq": reply.item.seq })),
            ..Default::default()
        })
        .await;
    Ok(Json(
        json!({ "status": "resolved", "conflictId": id, "item": reply.item }),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Analyze {
    item_ids: Vec<String>,
}

/// `POST /conflicts/analyze {itemIds}`: per item (id or key), the conflict
/// rate, the instances involved, the median time between competing writes,
/// and a suggested strategy with the reason.
#[utoipa::path(post, path = "/api/v1/sync-storage/conflicts/analyze", tag = "conflicts", request_body(content = Object, description = "{itemIds: [...]}"), responses((status = 200, description = "Analysis per item", body = Object)))]
pub async fn analyze(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<Analyze>,
) -> Result<Json<Value>, ApiError> {
    who.require(Scope::Read)?;
    if body.item_ids.is_empty() || body.item_ids.len() > 100 {
        return Err(ApiError::InvalidBody(
            "itemIds must hold 1 to 100 item ids or keys".into(),
        ));
    }
    text::check_all("itemIds", &body.item_ids, text::KEY).map_err(text::Invalid::body)?;
    let parse = |v: &Option<Box<serde_json::value::RawValue>>| json_value(v.as_deref());
    let mut out = serde_json::Map::new();
    for id in &body.item_ids {
        let history = conflicts::history(state.sync.db(), who.tenant(), id, 1000).await?;
        let records: Vec<analysis::Record> = history
            .iter()
            .map(|c| analysis::Record {
                base: parse(&c.base_value),
                current: parse(&c.current_value).unwrap_or(Value::Null),
                incoming: parse(&c.incoming_value).unwrap_or(Value::Null),
                current_instance: c.current_instance.clone(),
                incoming_instance: c.incoming_instance.clone(),
                current_ts: c.current_timestamp,
                incoming_ts: c.incoming_timestamp,
            })
            .collect();
        // Each conflict's current version counts the writes before it.
        let writes = history
            .iter()
            .map(|c| c.current_version + 1)
            .max()
            .unwrap_or(0);
        let key = history.first().map_or(id.clone(), |c| c.key.clone());
        out.insert(
            id.clone(),
            json!({ "key": key, "analysis": analysis::analyze(&records, writes) }),
        );
    }
    Ok(Json(Value::Object(out)))
}
