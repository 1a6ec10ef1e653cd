//! `/api/v1/api-keys`: key management for keys with `keys:manage`. Such a
//! key manages its own user's keys; an admin key manages everyone's. The
//! rules live in the `keys` service and `auth::policy`.

use axum::{extract::State, http::StatusCode, Json};
use serde_json::{json, Value};

use super::extract::{JsonBody, PathId};
use crate::{
    audit::Entry,
    auth::{key_fields::KeyFields, policy::Authority, NewKey, Principal, Scope},
    error::ApiError,
    keys::Created,
    state::AppState,
    storage::{keys::KeyView, now_ms},
    sync::validate_user_id,
};

/// Waits for the trail's queue if it is full: key management is never
/// dropped from the audit trail.
async fn audit(state: &AppState, who: &Principal, action: &'static str, id: &str) {
    state
        .audit
        .record(Entry {
            actor: who.user_id.clone(),
            key_id: Some(who.key.id.clone()),
            action,
            target: Some(id.to_string()),
            result: "ok".into(),
            ..Default::default()
        })
        .await;
}

fn shown_once(created: Created) -> Result<Value, ApiError> {
    let mut out =
        serde_json::to_value(&created.view).map_err(|e| ApiError::Internal(e.to_string()))?;
    out["key"] = json!(created.key);
    Ok(out)
}

/// `POST /api-keys`: 201 with the key, shown this once, as `key`.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys", request_body(content = Object, description = "The seed's ApiKey fields"), responses((status = 201, description = "The key, shown once, and its record", body = Object), (status = 403, description = "FORBIDDEN: the key would hold more than the caller (details.exceeds)")))]
pub async fn create(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<KeyFields>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    who.require(Scope::KeysManage)?;
    body.check_text()?;
    let user_id = body.user_id.clone().unwrap_or_else(|| who.user_id.clone());
    validate_user_id(&user_id).map_err(crate::text::Invalid::body)?;
    if who.tenant().is_some_and(|own| own != user_id) {
        return Err(ApiError::Forbidden {
            action: "manage another user's keys",
        });
    }
    let defaults = &state.config.api_keys;
    let new = NewKey {
        name: body.name.clone().unwrap_or_else(|| "api key".into()),
        user_id,
        scopes: body
            .scopes
            .clone()
            .unwrap_or_else(|| defaults.default_scopes.clone()),
        // Unless the body says, a key expires after the default lifetime,
        // and never after the key that creates it.
        expires_at: body.expires_at.flatten().or_else(|| {
            let default = defaults
                .expiration_days
                .map(|d| now_ms() + i64::from(d) * 86_400_000);
            match (default, who.key.expires_at) {
                (Some(d), Some(bound)) => Some(d.min(bound)),
                (d, bound) => d.or(bound),
            }
        }),
        ..NewKey::default()
    };
    let settings = KeyFields {
        name: None,
        user_id: None,
        scopes: None,
        expires_at: None,
        ..body
    };
    let created = state
        .keys
        .create(Authority::Key(&who.key), &new, settings)
        .await?;
    audit(&state, &who, "api_key.create", &created.view.id).await;
    Ok((StatusCode::CREATED, Json(shown_once(created)?)))
}

/// `GET /api-keys`.
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys", responses((status = 200, description = "Keys", body = Vec<Object>)))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    who.require(Scope::KeysManage)?;
    Ok(Json(state.keys.list(who.tenant()).await?))
}

/// `GET /api-keys/{id}`.
#[utoipa::path(get, path = "/api/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "Key id")), responses((status = 200, description = "The key record", body = Object)))]
pub async fn get(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
) -> Result<Json<KeyView>, ApiError> {
    who.require(Scope::KeysManage)?;
    Ok(Json(state.keys.get(&id, who.tenant()).await?))
}

/// `PATCH /api-keys/{id}`: restrictions, quotas, flags, scopes, expiry.
#[utoipa::path(patch, path = "/api/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "Key id")), request_body(content = Object, description = "Fields to change"), responses((status = 200, description = "The key record", body = Object), (status = 403, description = "FORBIDDEN: the key would hold more than the caller (details.exceeds)")))]
pub async fn patch(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    JsonBody(body): JsonBody<KeyFields>,
) -> Result<Json<KeyView>, ApiError> {
    who.require(Scope::KeysManage)?;
    let view = state
        .keys
        .update(Authority::Key(&who.key), &id, who.tenant(), body)
        .await?;
    audit(&state, &who, "api_key.update", &id).await;
    Ok(Json(view))
}

/// `DELETE /api-keys/{id}`.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "Key id")), responses((status = 200, description = "Deleted", body = Object)))]
pub async fn delete(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    who.require(Scope::KeysManage)?;
    state.keys.delete(&id, who.tenant()).await?;
    audit(&state, &who, "api_key.delete", &id).await;
    Ok(Json(json!({ "deleted": true, "id": id })))
}

/// `POST /api-keys/{id}/rotate`: a new key with the same settings; the old
/// one keeps working for `API_KEY_ROTATION_GRACE_SECONDS`.
#[utoipa::path(post, path = "/api/v1/api-keys/{id}/rotate", tag = "api-keys", params(("id" = String, Path, description = "Key id")), responses((status = 201, description = "The new key, shown once", body = Object), (status = 403, description = "FORBIDDEN: the key would hold more than the caller (details.exceeds)")))]
pub async fn rotate(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    who.require(Scope::KeysManage)?;
    let (created, old_expires_at) = state
        .keys
        .rotate(Authority::Key(&who.key), &id, who.tenant())
        .await?;
    audit(&state, &who, "api_key.rotate", &id).await;
    let mut out = shown_once(created)?;
    out["previousKeyExpiresAt"] = json!(old_expires_at);
    Ok((StatusCode::CREATED, Json(out)))
}
