//! `/api/v1/sync-storage/item/{key}`, `/items`, `/keys` and `/clear`.

use axum::{extract::State, Json};

use super::extract::{IdempotencyKey, InstanceId, ItemKey, JsonBody, Prefix};
use crate::{
    auth::{Principal, RequestContext, Scope},
    error::ApiError,
    state::AppState,
    sync::{Cleared, Item, Removed, SetReply, SetRequest},
};

#[utoipa::path(get, path = "/sync-storage/item/{*key}", tag = "items", params(("key" = String, Path, description = "Item key (percent-encoded; may contain /)")), responses((status = 200, description = "The item", body = Item)))]
pub async fn get_item(
    State(state): State<AppState>,
    who: Principal,
    ItemKey(key): ItemKey,
) -> Result<Json<Item>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(state.sync.get(&who.user_id, &key).await?))
}

#[utoipa::path(put, path = "/sync-storage/item/{*key}", tag = "items", params(("key" = String, Path, description = "Item key"), ("X-Instance-Id" = Option<String>, Header, description = "The writing device (default rest)"), ("Idempotency-Key" = Option<String>, Header, description = "An operation id (draft-ietf-httpapi-idempotency-key-header; a quoted sf-string or a bare token, 1-255 bytes): a retry within IDEMPOTENCY_WINDOW_MS gets the first reply and changes nothing; reused on another request: 422 IDEMPOTENCY_KEY_REUSED")), request_body(content = SetRequest, description = "The value and its metadata"), responses((status = 200, description = "Applied or merged: {status, item, conflictId?}", body = SetReply), (status = 400, description = "INVALID_KEY: a malformed key; INVALID_BODY: a malformed body (e.g. more than 64 tags, a bad ttl, metadata not an object), X-Instance-Id or Idempotency-Key", body = crate::http::openapi::ErrorBody), (status = 409, description = "Lost, or waiting for review: the error envelope with status, item and conflictId", body = crate::http::openapi::ErrorBody)))]
pub async fn put_item(
    State(state): State<AppState>,
    who: Principal,
    context: RequestContext,
    InstanceId(instance): InstanceId,
    IdempotencyKey(op): IdempotencyKey,
    ItemKey(key): ItemKey,
    JsonBody(body): JsonBody<SetRequest>,
) -> Result<Json<SetReply>, ApiError> {
    who.require(Scope::Write)?;
    let source = context.source();
    let op = op.or(body.operation()?);
    let reply = state
        .sync
        .set(&who.user_id, &instance, &source, &key, &body, op.as_ref())
        .await?;
    Ok(Json(reply.won(body.version)?))
}

#[utoipa::path(delete, path = "/sync-storage/item/{*key}", tag = "items", params(("key" = String, Path, description = "Item key"), ("X-Instance-Id" = Option<String>, Header, description = "The writing device"), ("Idempotency-Key" = Option<String>, Header, description = "An operation id: a retry gets the first reply")), responses((status = 200, description = "Removed (a tombstone)", body = Removed)))]
pub async fn delete_item(
    State(state): State<AppState>,
    who: Principal,
    context: RequestContext,
    InstanceId(instance): InstanceId,
    IdempotencyKey(op): IdempotencyKey,
    ItemKey(key): ItemKey,
) -> Result<Json<Removed>, ApiError> {
    who.require(Scope::Write)?;
    let source = context.source();
    let removed = state
        .sync
        .remove(&who.user_id, &instance, &source, &key, op.as_ref())
        .await?;
    Ok(Json(removed))
}

/// `/sync-storage/item/` with no key at all.
/// The same refusal as an empty key anywhere else (`sync:get {key: ""}`).
pub async fn missing_key(_who: Principal) -> ApiError {
    match crate::sync::validate_key("") {
        Err(e) => e,
        Ok(()) => ApiError::Internal("an empty key was accepted".into()),
    }
}

#[utoipa::path(get, path = "/sync-storage/items", tag = "items", params(("prefix" = Option<String>, Query, description = "Only keys starting with this")), responses((status = 200, description = "Items, by key", body = Vec<Item>)))]
pub async fn list_items(
    State(state): State<AppState>,
    who: Principal,
    Prefix(prefix): Prefix,
) -> Result<Json<Vec<Item>>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(state.sync.list(&who.user_id, &prefix).await?))
}

#[utoipa::path(get, path = "/sync-storage/keys", tag = "items", params(("prefix" = Option<String>, Query, description = "Only keys starting with this")), responses((status = 200, description = "Keys", body = Vec<String>)))]
pub async fn list_keys(
    State(state): State<AppState>,
    who: Principal,
    Prefix(prefix): Prefix,
) -> Result<Json<Vec<String>>, ApiError> {
    who.require(Scope::Read)?;
    Ok(Json(state.sync.keys(&who.user_id, &prefix).await?))
}

#[utoipa::path(delete, path = "/sync-storage/clear", tag = "items", params(("X-Instance-Id" = Option<String>, Header, description = "The writing device (default rest)"), ("Idempotency-Key" = Option<String>, Header, description = "An operation id: a retry gets the first reply")), responses((status = 200, description = "How many items were removed", body = Cleared)))]
pub async fn clear(
    State(state): State<AppState>,
    who: Principal,
    context: RequestContext,
    InstanceId(instance): InstanceId,
    IdempotencyKey(op): IdempotencyKey,
) -> Result<Json<Cleared>, ApiError> {
    who.require(Scope::Write)?;
    let source = context.source();
    let cleared = state
        .sync
        .clear(&who.user_id, &instance, &source, op.as_ref())
        .await?;
    Ok(Json(cleared))
}
