//! `/api/v1/sync-storage/item/{key}`, `/items`, `/keys` and `/clear`.

use axum::{extract::State, Json};

use super::extract::{InstanceId, ItemKey, JsonBody, Prefix};
use crate::{
    app::AppState,
    auth::{Principal, Scope},
    error::ApiError,
    sync::{Cleared, Item, Removed, SetReply, SetRequest},
};

pub async fn get_item(
    State(state): State<AppState>,
    who: Principal,
    ItemKey(key): ItemKey,
) -> Result<Json<Item>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(state.sync.get(&who.user_id, &key).await?))
}

pub async fn put_item(
    State(state): State<AppState>,
    who: Principal,
    InstanceId(instance): InstanceId,
    ItemKey(key): ItemKey,
    JsonBody(body): JsonBody<SetRequest>,
) -> Result<Json<SetReply>, ApiError> {
    who.require(Scope::Write)?;
    let reply = state
        .sync
        .set(&who.user_id, &instance, None, &key, &body)
        .await?;
    Ok(Json(reply.won(body.version)?))
}

pub async fn delete_item(
    State(state): State<AppState>,
    who: Principal,
    InstanceId(instance): InstanceId,
    ItemKey(key): ItemKey,
) -> Result<Json<Removed>, ApiError> {
    who.require(Scope::Write)?;
    Ok(Json(
        state.sync.remove(&who.user_id, &instance, &key).await?,
    ))
}

/// `/sync-storage/item/` with no key at all.
pub async fn missing_key(_who: Principal) -> ApiError {
    ApiError::InvalidKey("key must not be empty".into())
}

pub async fn list_items(
    State(state): State<AppState>,
    who: Principal,
    Prefix(prefix): Prefix,
) -> Result<Json<Vec<Item>>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(state.sync.list(&who.user_id, &prefix).await?))
}

pub async fn list_keys(
    State(state): State<AppState>,
    who: Principal,
    Prefix(prefix): Prefix,
) -> Result<Json<Vec<String>>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(state.sync.keys(&who.user_id, &prefix).await?))
}

pub async fn clear(
    State(state): State<AppState>,
    who: Principal,
    InstanceId(instance): InstanceId,
) -> Result<Json<Cleared>, ApiError> {
    who.require(Scope::Write)?;
    Ok(Json(state.sync.clear(&who.user_id, &instance).await?))
}
