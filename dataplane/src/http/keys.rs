//! `/api/v1/api-keys`: key management for keys with `keys:manage`. Such a
//! key manages its own user's keys; an admin key manages everyone's.

use axum::{extract::State, http::StatusCode, Json};
use serde_json::{json, Value};

use super::extract::{JsonBody, PathId};
use crate::{
    app::AppState,
    audit::Entry,
    auth::{key_fields::KeyFields, NewKey, Principal, Scope},
    error::ApiError,
    storage::{keys, keys::KeyView, now_ms},
    sync::validate_user_id,
};

fn owner_scope(who: &Principal) -> Option<&str> {
    (!who.key.allows(Scope::Admin)).then_some(who.user_id.as_str())
}

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

async fn load(state: &AppState, who: &Principal, id: &str) -> Result<KeyView, ApiError> {
    who.require(Scope::KeysManage)?;
    keys::get(state.sync.db(), id, owner_scope(who))
        .await?
        .ok_or(ApiError::NotFound {
            key: id.to_string(),
        })
}

/// `POST /api-keys`: 201 with the key, shown this once, as `key`.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys", request_body(content = Object, description = "The seed's ApiKey fields"), responses((status = 201, description = "The key, shown once, and its record", body = Object)))]
pub async fn create(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<KeyFields>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    who.require(Scope::KeysManage)?;
    body.check_text()?;
    let user_id = body.user_id.clone().unwrap_or_else(|| who.user_id.clone());
    validate_user_id(&user_id).map_err(crate::text::Invalid::body)?;
    if user_id != who.user_id && !who.key.allows(Scope::Admin) {
        return Err(ApiError::Forbidden {
            action: "manage another user's keys",
        });
    }
    let new = NewKey {
        name: body.name.clone().unwrap_or_else(|| "api key".into()),
        user_id,
        scopes: body
            .scopes
            .clone()
            .unwrap_or_else(|| state.config.api_keys.default_scopes.clone()),
        expires_at: body.expires_at.flatten().or_else(|| {
            state
                .config
                .api_keys
                .expiration_days
                .map(|d| now_ms() + i64::from(d) * 86_400_000)
        }),
        ..NewKey::default()
    };
    // A key may not grant what its creator cannot do.
    if new.scopes.iter().any(|s| !who.key.allows(*s)) {
        return Err(ApiError::Forbidden {
            action: "grant scopes it does not hold",
        });
    }
    // Restrictions, quotas and flags go through the same path as a patch,
    // checked before anything is stored.
    let settings = KeyFields {
        name: None,
        user_id: None,
        scopes: None,
        expires_at: None,
        ..body
    };
    settings.clone().apply(&mut KeyView::default())?;
    let (record, key) = state
        .auth
        .keys()
        .create(&new, &state.config.api_keys.token_prefix)
        .await?;
    let mut view = keys::get(state.sync.db(), &record.id, None)
        .await?
        .ok_or_else(|| ApiError::Internal("key vanished".into()))?;
    settings.apply(&mut view)?;
    keys::update(state.sync.db(), &view).await?;
    audit(&state, &who, "api_key.create", &record.id).await;
    let mut out = serde_json::to_value(&view).map_err(|e| ApiError::Internal(e.to_string()))?;
    out["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /api-keys`.
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys", responses((status = 200, description = "Keys", body = Vec<Object>)))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    who.require(Scope::KeysManage)?;
    Ok(Json(keys::list(state.sync.db(), owner_scope(&who)).await?))
}

/// `GET /api-keys/{id}`.
#[utoipa::path(get, path = "/api/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "Key id")), responses((status = 200, description = "The key record", body = Object)))]
pub async fn get(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(load(&state, &who, &id).await?))
}

/// `PATCH /api-keys/{id}`: restrictions, quotas, flags, scopes, expiry.
#[utoipa::path(patch, path = "/api/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "Key id")), request_body(content = Object, description = "Fields to change"), responses((status = 200, description = "The key record", body = Object)))]
pub async fn patch(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
    JsonBody(body): JsonBody<KeyFields>,
) -> Result<Json<KeyView>, ApiError> {
    let mut view = load(&state, &who, &id).await?;
    if body.user_id.is_some() {
        return Err(ApiError::InvalidBody("userId cannot change".into()));
    }
    if body
        .scopes
        .as_ref()
        .is_some_and(|s| s.iter().any(|s| !who.key.allows(*s)))
    {
        return Err(ApiError::Forbidden {
            action: "grant scopes it does not hold",
        });
    }
    body.apply(&mut view)?;
    keys::update(state.sync.db(), &view).await?;
    state.auth.keys().forget(&view.key_hash);
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
    let view = load(&state, &who, &id).await?;
    keys::delete(state.sync.db(), &id).await?;
    state.auth.keys().forget(&view.key_hash);
    audit(&state, &who, "api_key.delete", &id).await;
    Ok(Json(json!({ "deleted": true, "id": id })))
}

/// `POST /api-keys/{id}/rotate`: a new key with the same settings; the old
/// one keeps working for `API_KEY_ROTATION_GRACE_SECONDS`.
#[utoipa::path(post, path = "/api/v1/api-keys/{id}/rotate", tag = "api-keys", params(("id" = String, Path, description = "Key id")), responses((status = 201, description = "The new key, shown once", body = Object)))]
pub async fn rotate(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let old = load(&state, &who, &id).await?;
    let (view, key, old_expires_at) = state
        .auth
        .keys()
        .rotate(
            old,
            &state.config.api_keys.token_prefix,
            state.config.api_keys.rotation_grace,
        )
        .await?;
    audit(&state, &who, "api_key.rotate", &id).await;
    let mut out = serde_json::to_value(&view).map_err(|e| ApiError::Internal(e.to_string()))?;
    out["key"] = json!(key);
    out["previousKeyExpiresAt"] = json!(old_expires_at);
    Ok((StatusCode::CREATED, Json(out)))
}
