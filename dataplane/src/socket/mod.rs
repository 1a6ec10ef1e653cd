//! The Socket.IO `/sync` namespace (protocol v5, as `socket.io-client` 4.x
//! speaks it), served by socketioxide on the REST port at `/socket.io`.

mod delivery;
mod events;
mod handshake;
mod session;
mod subscriptions;

use std::{sync::Arc, time::Duration};

use socketioxide::{
    extract::{Extension, SocketRef, State},
    handler::ConnectHandler,
    layer::SocketIoLayer,
    SocketIo,
};

pub use handshake::Device;
use session::{Session, Stage};
pub use subscriptions::Subscriptions;

use crate::{
    fanout::Sink,
    metrics::GaugeHeld,
    presence::Connection,
    state::AppState,
    storage::now_ms,
    sync::devices::{Arrival, Cursors},
};

/// Packets that may wait in one socket's send buffer. Small buffers keep an
/// idle connection cheap; a slow consumer past this is conflated from the
/// database instead of being queued.
const SOCKET_BUFFER: usize = 16;

/// How long a transport may stay open without a `/sync` handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// This process's presence heartbeat, every `PRESENCE_HEARTBEAT_MS`, for as
/// long as it runs. It is also what a connected device's `lastSeen` reads
/// (see `http::sessions`), so no per-device row is written while sockets
/// stay open: with thousands of devices such writes held SQLite's single
/// writer for tens of milliseconds every round (issue 17).
pub async fn heartbeat(app: AppState) {
    let mut every = tokio::time::interval(app.presence.interval());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let hub = app.hub.clone();
        // Only read if another process swept this one's rows: what is in
        // the hub is exactly what is connected (see `session::Stage`).
        let open = move || {
            let now = now_ms();
            hub.sockets()
                .into_iter()
                .map(|(user_id, socket_id, instance_id)| Connection {
                    socket_id,
                    user_id,
                    instance_id,
                    connected_at: now,
                })
                .collect()
        };
        if let Err(e) = app.presence.beat(open).await {
            tracing::warn!(error = %e, "presence heartbeat not stored");
        }
    }
}

/// Builds the Socket.IO layer for the router, with `/sync` registered.
pub fn layer(state: AppState) -> (SocketIoLayer, SocketIo) {
    let message_limit = state.config.limits.max_body_bytes();
    let (layer, io) = SocketIo::builder()
        .with_state(state)
        .max_buffer_size(SOCKET_BUFFER)
        .ws_read_buffer_size(1024)
        // One message limit for both edges (see `Limits::max_body_bytes`):
        // engine.io applies `max_payload` to polling only, and a WebSocket
        // message would otherwise be read up to 64 MiB before any check.
        .max_payload(message_limit as u64)
        .ws_max_message_size(message_limit)
        .ws_max_frame_size(message_limit)
        .ack_timeout(Duration::from_secs(30))
        // An engine.io connection that joins no namespace is closed after
        // this (socketioxide's default is 45 s): unauthenticated clients
        // cannot sit on connection slots (`HTTP_MAX_CONNECTIONS`).
        .connect_timeout(CONNECT_TIMEOUT)
        .build_layer();
    io.ns("/sync", on_connect.with(handshake::authenticate));
    (layer, io)
}

/// Called by the handshake middleware once the device is admitted, before
/// socketioxide answers the connect: the client may emit as soon as it sees
/// the connect, and an event that arrives before its handler is registered
/// is dropped without a reply (the protocol fuzz test caught that, when the
/// registration still ran in the connect handler, which is spawned).
fn admit(s: &SocketRef, app: &AppState, device: Device) {
    let session = Arc::new(Session::new(s.clone(), device, app.clone()));
    s.extensions.insert(session.clone());
    events::register(s);
    s.on_disconnect(on_disconnect);
    tokio::spawn(forget_if_never_connected(Arc::downgrade(&session)));
}

/// A transport that closed while the handshake was being checked never
/// gets its connect answered, and then socketioxide runs neither the
/// connect nor the disconnect handler. The session would stay in the
/// socket's extensions, holding the socket: a cycle never freed. Once the
/// answer is long overdue, such a session is let go. Holds the session
/// weakly, so a socket that came and went is freed without waiting for it.
async fn forget_if_never_connected(session: std::sync::Weak<Session>) {
    tokio::time::sleep(CONNECT_TIMEOUT).await;
    let Some(session) = session.upgrade() else {
        return;
    };
    let mut stage = session.stage.lock().await;
    let s = session.socket();
    if matches!(*stage, Stage::Admitted) && !s.connected() {
        *stage = Stage::Gone;
        s.extensions.remove::<Arc<Session>>();
    }
}

async fn on_connect(State(app): State<AppState>, Extension(session): Extension<Arc<Session>>) {
    // Held until everything below is done: a disconnect waits for it.
    let mut stage = session.stage.lock().await;
    if !matches!(*stage, Stage::Admitted) {
        tracing::debug!(sid = %session.sid, "disconnected before its connect was handled");
        return;
    }
    *stage = Stage::Live(GaugeHeld::new(&app.metrics.sockets_connected));
    app.analytics.live().socket_connected();
    session_event(&app, &session, "socket:connect", 0);

    let user = session.device.user_id.clone();
    app.hub.add(&user, session.clone() as Arc<dyn Sink>);
    app.sync.bus().host(&user).await;
    let d = &session.device;
    let now = now_ms();
    let arrival = Arrival {
        user_id: &d.user_id,
        instance_id: &d.instance_id,
        pod: app.sync.bus().pod(),
        ip: d.ip.as_deref(),
        user_agent: d.user_agent.as_deref(),
        now,
    };
    let cursors = match app.sync.devices().arrive(&arrival).await {
        Ok(cursors) => cursors,
        Err(e) => {
            tracing::warn!(error = %e, "cannot record device; starting from its full state");
            Cursors::default()
        }
    };
    app.presence
        .opened(Connection {
            socket_id: session.sid.clone(),
            user_id: d.user_id.clone(),
            instance_id: d.instance_id.clone(),
            connected_at: now,
        })
        .await;
    {
        // Under the lock a `sync:subscribe` takes to store its change, so
        // that one sent before this point (whose row may not have existed
        // yet) is stored now, and one sent after builds on what is restored.
        let _storing = session.subscriptions_store.lock().await;
        session.restore_subscriptions(&cursors.subscriptions);
        let now = session.subscription_list();
        if now != cursors.subscriptions {
            if let Err(e) = app
                .sync
                .devices()
                .save_subscriptions(&d.user_id, &d.instance_id, &now)
                .await
            {
                tracing::warn!(error = %e, "cannot store the device's subscriptions");
            }
        }
    }
    drop(stage);
    tokio::spawn(session.run(cursors));
}

/// Another connection of the same device (the same instance id, on any
/// pod) may have widened the device's subscriptions while this one kept
/// filtering by the old set: the changes it skipped are then owed to the
/// device, which re-fetches on its next connection.
async fn owe_resync_if_outdated(app: &AppState, session: &Session) -> Result<(), sqlx::Error> {
    let d = &session.device;
    let stored = app
        .sync
        .devices()
        .subscriptions(&d.user_id, &d.instance_id)
        .await?;
    if subscriptions::widens(&session.subscription_list(), &stored) {
        app.sync
            .devices()
            .owe_resync(&d.user_id, &d.instance_id)
            .await?;
    }
    Ok(())
}

async fn on_disconnect(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    reason: socketioxide::socket::DisconnectReason,
) {
    tracing::debug!(sid = %session.sid, %reason, "device disconnected");
    // The session holds the socket and the socket's extensions hold the
    // session: a cycle that kept every disconnected device in memory.
    s.extensions.remove::<Arc<Session>>();
    session.close();
    // Waits for a connect handler still at work, then undoes exactly what
    // it did: nothing if it has not run (it will find the session gone).
    let mut stage = session.stage.lock().await;
    let Stage::Live(gauge) = std::mem::replace(&mut *stage, Stage::Gone) else {
        tracing::debug!(sid = %session.sid, "disconnected before its connect was handled");
        return;
    };
    app.analytics.live().socket_disconnected();
    let length = u64::try_from(session.connected_at.elapsed().as_micros()).unwrap_or(u64::MAX);
    session_event(&app, &session, "socket:disconnect", length);
    let d = &session.device;
    app.hub.remove(&d.user_id, &session.sid);
    app.sync.bus().unhost(&d.user_id);
    app.presence.closed(&session.sid).await;
    if let Err(e) = owe_resync_if_outdated(&app, &session).await {
        tracing::debug!(error = %e, "cannot compare the device's subscriptions");
    }
    let delivered = session.delivered();
    if let Err(e) = app
        .sync
        .devices()
        .leave(&d.user_id, &d.instance_id, delivered, now_ms())
        .await
    {
        tracing::debug!(error = %e, "cannot record disconnect");
    }
    drop(gauge);
}

/// The analytics event of a session's start or end. A disconnect carries
/// the session's length where other events carry their latency.
fn session_event(app: &AppState, session: &Session, event: &str, latency_us: u64) {
    app.analytics
        .record(device_event(&session.device, event.into(), latency_us));
}

/// An analytics event of a device, with what its handshake told.
pub(crate) fn device_event(
    d: &handshake::Device,
    route: String,
    latency_us: u64,
) -> crate::analytics::Event {
    crate::analytics::Event {
        kind: "socket".into(),
        route_or_event: route,
        user_id: Some(d.user_id.clone()),
        instance_id: Some(d.instance_id.clone()),
        api_key_id: Some(d.principal.key.id.clone()),
        status: 200,
        latency_us,
        ua_family: d
            .user_agent
            .as_deref()
            .map(|ua| crate::analytics::event::ua_family(ua).to_string()),
        ip: d.ip.clone(),
        trace: d.trace.clone(),
        ..Default::default()
    }
}
