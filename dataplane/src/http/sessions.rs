//! `GET /api/v1/sync-storage/sessions`: the caller's devices.

use axum::{extract::State, Json};
use serde::Serialize;

use crate::{
    auth::{Principal, Scope},
    error::ApiError,
    state::AppState,
    sync::devices::Instance,
};

/// A device and its presence. `connections` counts the device's sockets on
/// processes that are alive (their heartbeat has not expired), and
/// `online` is whether there is one: see [`crate::presence`]. While it is
/// online, `lastSeen` is the latest heartbeat of the processes holding
/// its sockets (nothing writes the row while it is connected).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    #[serde(flatten)]
    instance: Instance,
    /// The device's sockets on live processes.
    connections: i64,
    /// Whether it has one.
    online: bool,
}

#[utoipa::path(get, path = "/sync-storage/sessions", tag = "items", responses((status = 200, description = "The user's devices and connected sessions", body = Vec<SessionView>)))]
pub async fn list(
    State(state): State<AppState>,
    who: Principal,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    who.require(Scope::Read)?;
    let list = state.sync.devices().list(&who.user_id).await?;
    let live = state.presence.live(&who.user_id).await?;
    Ok(Json(
        list.into_iter()
            .map(|mut instance| {
                let now = live.get(&instance.instance_id);
                if let Some(now) = now {
                    instance.last_seen = instance.last_seen.max(now.seen_at);
                }
                let connections = now.map_or(0, |l| l.connections);
                SessionView {
                    instance,
                    connections,
                    online: connections > 0,
                }
            })
            .collect(),
    ))
}
