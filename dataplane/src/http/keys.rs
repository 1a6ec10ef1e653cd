//! `/api/v1/api-keys`: key management for keys with `keys:manage`. Such a
//! key manages its own user's keys; an admin key manages everyone's. The
//! rules live in the `keys` service and `auth::policy`.

use axum::{extract::State, http::StatusCode, Json};
use serde::Serialize;
use utoipa::ToSchema;

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

/// A new key: its record, and the key itself as `key`, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    view: KeyView,
    /// The key. It is not stored, so it is never shown again.
    key: String,
}

impl From<Created> for CreatedKey {
    fn from(created: Created) -> Self {
        Self {
            view: created.view,
            key: created.key,
        }
    }
}

/// A rotation's new key, and until when the old one still works.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedKey {
    #[serde(flatten)]
    new: CreatedKey,
    /// The old key's new expiry (Unix ms): the end of the rotation grace
    /// (`API_KEY_ROTATION_GRACE_SECONDS`), or its own expiry if sooner.
    previous_key_expires_at: Option<i64>,
}

/// What a delete answers.
#[derive(Serialize, ToSchema)]
pub struct DeletedKey {
    /// Always true.
    deleted: bool,
    id: String,
}

/// `POST /api-keys`: 201 with the key, shown this once, as `key`.
#[utoipa::path(post, path = "/api-keys", tag = "api-keys", request_body(content = KeyFields, description = "The seed's ApiKey fields"), responses((status = 201, description = "The key, shown once, and its record", body = CreatedKey), (status = 403, description = "FORBIDDEN: the key would hold more than the caller (details.exceeds)")))]
pub async fn create(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<KeyFields>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// `GET /api-keys`.
#[utoipa::path(get, path = "/api-keys", tag = "api-keys", responses((status = 200, description = "Keys", body = Vec<KeyView>)))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    who.require(Scope::KeysManage)?;
    Ok(Json(state.keys.list(who.tenant()).await?))
}

/// `GET /api-keys/{id}`.
#[utoipa::path(get, path = "/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "Key id")), responses((status = 200, description = "The key record", body = KeyView)))]
pub async fn get(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
) -> Result<Json<KeyView>, ApiError> {
    who.require(Scope::KeysManage)?;
    Ok(Json(state.keys.get(&id, who.tenant()).await?))
}

/// `PATCH /api-keys/{id}`: restrictions, quotas, flags, scopes, expiry.
#[utoipa::path(patch, path = "/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "Key id")), request_body(content = KeyFields, description = "Fields to change"), responses((status = 200, description = "The key record", body = KeyView), (status = 403, description = "FORBIDDEN: the key would hold more than the caller (details.exceeds)")))]
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
#[utoipa::path(delete, path = "/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "Key id")), responses((status = 200, description = "Deleted", body = DeletedKey)))]
pub async fn delete(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
) -> Result<Json<DeletedKey>, ApiError> {
    who.require(Scope::KeysManage)?;
    state.keys.delete(&id, who.tenant()).await?;
    audit(&state, &who, "api_key.delete", &id).await;
    Ok(Json(DeletedKey { deleted: true, id }))
}

/// `POST /api-keys/{id}/rotate`: a new key with the same settings; the old
/// one keeps working for `API_KEY_ROTATION_GRACE_SECONDS`.
#[utoipa::path(post, path = "/api-keys/{id}/rotate", tag = "api-keys", params(("id" = String, Path, description = "Key id")), responses((status = 201, description = "The new key, shown once, and the old one's expiry", body = RotatedKey), (status = 403, description = "FORBIDDEN: the key would hold more than the caller (details.exceeds)")))]
pub async fn rotate(
    State(state): State<AppState>,
    who: Principal,
    PathId(id): PathId,
) -> Result<(StatusCode, Json<RotatedKey>), ApiError> {
    who.require(Scope::KeysManage)?;
    let (created, old_expires_at) = state
        .keys
        .rotate(Authority::Key(&who.key), &id, who.tenant())
        .await?;
    audit(&state, &who, "api_key.rotate", &id).await;
    Ok((
        StatusCode::CREATED,
        Json(RotatedKey {
            new: created.into(),
            previous_key_expires_at: old_expires_at,
        }),
    ))
}
