//! `GET /api/v1/sync-storage/sessions`: the caller's devices.

use axum::{extract::State, Json};
use serde::Serialize;

use crate::{
    app::AppState,
    auth::{Principal, Scope},
    error::ApiError,
    storage::{instances, now_ms},
};

/// A device counts as online while it has a connection and its pod has
/// refreshed `lastSeen` recently (a pod killed with -9 cannot say goodbye).
const ONLINE_WINDOW_MS: i64 = 90_000;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    #[serde(flatten)]
    instance: instances::Instance,
    online: bool,
}

#[utoipa::path(get, path = "/api/v1/sync-storage/sessions", tag = "items", responses((status = 200, description = "The user's devices and connected sessions", body = Vec<Object>)))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    who.require(Scope::Read)?;
    let now = now_ms();
    let list = instances::list(state.sync.db(), &who.user_id).await?;
    Ok(Json(
        list.into_iter()
            .map(|instance| SessionView {
                online: instance.connections > 0 && now - instance.last_seen < ONLINE_WINDOW_MS,
                instance,
            })
            .collect(),
    ))
}
