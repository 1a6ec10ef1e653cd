//! Handlers of the client events of `/sync`.
//!
//! Each replies through the acknowledgement when the client passed a
//! callback; otherwise a failure is emitted as `error`. Writes go through
//! the same write path as REST.

use std::{convert::Infallible, sync::Arc, time::Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, value::RawValue};
use socketioxide::{
    adapter::Adapter,
    extract::{AckSender, Event, Extension, SocketRef, State},
    handler::{FromMessageParts, Value},
    socket::Socket,
};

use tracing::Instrument;

use super::{session::Session, subscriptions::Subscriptions};
use crate::{
    auth::Scope,
    error::ApiError,
    state::AppState,
    sync::{OperationId, SetRequest},
    telemetry::{self, TraceContext, TARGET},
};

/// Whether the client passed an ack callback (socketioxide's `AckSender`
/// does not say).
pub struct WantsAck(bool);

impl<A: Adapter> FromMessageParts<A> for WantsAck {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        _: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(WantsAck(ack_id.is_some()))
    }
}

/// One handled event, for its analytics record and its span.
struct Call<'a> {
    event: &'static str,
    session: &'a Session,
    started: Instant,
    item_key: Option<String>,
    /// The event as a messaging span, linked to the handshake's trace
    /// rather than inside it: a socket lives for hours, and one trace per
    /// event keeps each trace the size of one operation.
    span: tracing::Span,
}

impl<'a> Call<'a> {
    fn new(event: &'static str, session: &'a Session) -> Self {
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "socket.event",
            otel.name = %format!("{event} /sync"),
            otel.kind = "consumer",
            messaging.system = "socket.io",
            messaging.operation.type = "process",
            messaging.operation.name = event,
            messaging.destination.name = "/sync",
        );
        if let Some(connect) = &session.device.trace {
            connect.link(&span);
        }
        Self {
            event,
            session,
            started: Instant::now(),
            item_key: None,
            span,
        }
    }

    /// Records how the event ended on its span: a failure's stable code
    /// as `error.type`, and an error status when it is the server's.
    fn end_span(&self, error: Option<&ApiError>) {
        let Some(e) = error else { return };
        if e.status().is_server_error() {
            telemetry::context::fail(&self.span, e.code());
        } else {
            telemetry::context::set_attribute(&self.span, "error.type", e.code());
        }
    }

    fn record(self, app: &AppState, error: Option<&ApiError>) {
        let latency = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut e = super::device_event(
            &self.session.device,
            format!("socket:{}", self.event),
            latency,
        );
        if let Some(err) = error {
            e.status = err.status().as_u16();
            e.error_code = Some(err.code().to_string());
        }
        e.item_key = self.item_key;
        e.trace = TraceContext::of(&self.span);
        app.analytics.record(e);
    }
}

/// The device's credential, re-checked, counted against its limits.
async fn admitted(app: &AppState, session: &Session) -> Result<crate::auth::Principal, ApiError> {
    let who = session.authorize().await?;
    app.limiter.admit(&who).await?;
    Ok(who)
}

/// Replies to one event: success through the ack, failure through the ack
/// as `{error}` or, with no callback, as an `error` event. A session whose
/// credential was found revoked is disconnected once the reply is out.
fn reply<T: Serialize>(
    s: &SocketRef,
    ack: AckSender,
    wants: bool,
    call: Call<'_>,
    app: &AppState,
    result: Result<T, ApiError>,
) {
    let event = call.event;
    let session = call.session;
    call.end_span(result.as_ref().err());
    call.record(app, result.as_ref().err());
    app.metrics
        .socket_events
        .with_label_values(&[event, "in"])
        .inc();
    let sent = match result {
        Ok(value) => ack.send(&value),
        Err(e) => {
            app.metrics
                .socket_errors
                .with_label_values(&[event, e.code()])
                .inc();
            log_failure(
                event,
                &session.sid,
                session.device.request_id.as_deref(),
                &e,
            );
            let body = e.body();
            // A revoked socket is always told with an `error` event, as an
            // idle one is, besides the ack.
            if wants && session.is_revoked() {
                let _ = s.emit("error", &body);
            }
            if wants {
                ack.send(&json!({ "error": body }))
            } else {
                s.emit("error", &body)
            }
        }
    };
    if let Err(e) = sent {
        tracing::debug!(event, error = %e, "reply not sent");
    }
    session.end_if_revoked();
}

/// Logs a refused handshake (`event` `connect`) or event once, as REST
/// logs a refused request (`http::error`), at the same levels: our bug
/// (`INTERNAL`, with its cause, which never reaches the client) as an
/// error, a database outage as a warning, a refusal at debug. With the
/// event, the code, the socket id and the handshake's request id.
pub(super) fn log_failure(event: &str, sid: &str, request_id: Option<&str>, e: &ApiError) {
    let code = e.code();
    match e {
        ApiError::Internal(cause) => {
            tracing::error!(event, code, sid, request_id, %cause, "socket event failed")
        }
        ApiError::ServiceUnavailable => {
            tracing::warn!(event, code, sid, request_id, "database unavailable")
        }
        _ => tracing::debug!(event, code, sid, request_id, "socket event rejected"),
    }
}

/// The audit source of this socket's writes: its key, its address, and the
/// session itself (whose own changes are not echoed back to it).
fn source(session: &Session) -> crate::audit::Source {
    crate::audit::Source {
        key_id: Some(session.device.principal.key.id.clone()),
        ip: session.device.ip.clone(),
        request_id: None,
        socket: Some(session.sid.clone()),
    }
}

/// An event's first argument as the client wrote it, read from the packet's
/// JSON text (`["event", arg, …]`); `Ok(None)` when there is none.
/// socketioxide's own `TryData` reads through a wrapper that cannot hand
/// out raw JSON at the top level, and decoding into the target type there
/// would lose the field path of a type error.
pub struct Payload {
    arg: Result<Option<Box<RawValue>>, String>,
    /// Whether the event carried binary attachments. Socket.IO replaces
    /// each Buffer in a payload by a `{"_placeholder": true, "num": n}`
    /// object and sends the bytes beside it; stored as JSON, the placeholder
    /// would stand in for the bytes and they would be lost, so a write with
    /// any is refused.
    binary: bool,
}

impl<A: Adapter> FromMessageParts<A> for Payload {
    type Error = Infallible;
    fn from_message_parts(
        _: &Arc<Socket<A>>,
        v: &mut Value,
        _: &Option<i64>,
    ) -> Result<Self, Infallible> {
        Ok(match v {
            Value::Str(text, bins) => Payload {
                arg: serde_json::from_str::<Vec<Box<RawValue>>>(text.as_str())
                    .map(|args| args.into_iter().nth(1))
                    .map_err(|e| e.to_string()),
                binary: bins.as_ref().is_some_and(|b| !b.is_empty()),
            },
            Value::Bytes(_) => Payload {
                arg: Err("a binary packet is not an event payload".into()),
                binary: true,
            },
        })
    }
}

/// An event's payload, decoded as REST decodes a body
/// ([`crate::error::decode_object`]): the same bad input gets the same code
/// and `details.field` on either edge.
fn payload<T: DeserializeOwned>(data: Payload) -> Result<T, ApiError> {
    optional_payload(data)?.ok_or_else(|| ApiError::InvalidBody("a payload is required".into()))
}

/// [`payload`] of an event whose payload may be left out (or `null`).
fn optional_payload<T: DeserializeOwned>(data: Payload) -> Result<Option<T>, ApiError> {
    match data.arg.map_err(ApiError::InvalidBody)? {
        Some(raw) if raw.get() != "null" => {
            crate::error::decode_object(raw.get().as_bytes()).map(Some)
        }
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
struct KeyPayload {
    key: String,
}

/// `sync:remove`: the key, and an optional operation id (see `sync:set`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RemovePayload {
    key: String,
    #[serde(default)]
    op_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct PrefixPayload {
    #[serde(default)]
    prefix: Option<String>,
}

#[derive(Deserialize)]
struct KeysPayload {
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct AckPayload {
    seq: i64,
}

pub fn register(s: &SocketRef) {
    s.on("sync:set", set);
    s.on("sync:remove", remove);
    s.on("sync:get", get);
    s.on("sync:getAll", get_all);
    s.on("sync:subscribe", subscribe);
    s.on("sync:unsubscribe", unsubscribe);
    s.on("sync:ack", ack_cursor);
    s.on("sync:auth", renew);
    s.on_fallback(unknown);
}

/// Any other event: an UNKNOWN_EVENT error rather than silence, so a client
/// with a typo in an event name learns it at once.
async fn unknown(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    Event(name): Event,
    ack: AckSender,
    WantsAck(wants): WantsAck,
) {
    let call = Call::new("unknown", &session);
    let result: Result<(), ApiError> = Err(ApiError::UnknownEvent {
        event: name.chars().take(64).collect(),
    });
    reply(&s, ack, wants, call, &app, result);
}

async fn set(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    data: Payload,
    ack: AckSender,
    WantsAck(wants): WantsAck,
) {
    let mut call = Call::new("sync:set", &session);
    let binary = data.binary;
    let data = payload::<SetRequest>(data);
    call.item_key = data.as_ref().ok().and_then(|r| r.key.clone());
    let result = async {
        let who = admitted(&app, &session).await?;
        who.require(Scope::Write)?;
        if binary {
            return Err(ApiError::InvalidBody(
                "binary attachments (Buffer, Blob, ArrayBuffer) cannot be stored: send JSON, e.g. the bytes as base64 text".into(),
            ));
        }
        let request = data?;
        let key = request
            .key
            .clone()
            .ok_or_else(|| ApiError::InvalidBody("key is required".into()))?;
        let op = request.operation()?;
        let d = &session.device;
        // A lost conflict is a reply (`rejected`/`pending_review`), not an error.
        app.sync
            .set(
                &d.user_id,
                &d.instance_id,
                &source(&session),
                &key,
                &request,
                op.as_ref(),
            )
            .await
    }
    .instrument(call.span.clone())
    .await;
    reply(&s, ack, wants, call, &app, result);
}

async fn remove(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    data: Payload,
    ack: AckSender,
    WantsAck(wants): WantsAck,
) {
    let mut call = Call::new("sync:remove", &session);
    let data = payload::<RemovePayload>(data);
    call.item_key = data.as_ref().ok().map(|p| p.key.clone());
    let result = async {
        let who = admitted(&app, &session).await?;
        who.require(Scope::Write)?;
        let RemovePayload { key, op_id } = data?;
        let op = OperationId::from_op_id(op_id.as_deref())?;
        let d = &session.device;
        app.sync
            .remove(
                &d.user_id,
                &d.instance_id,
                &source(&session),
                &key,
                op.as_ref(),
            )
            .await
    }
    .instrument(call.span.clone())
    .await;
    reply(&s, ack, wants, call, &app, result);
}

async fn get(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    data: Payload,
    ack: AckSender,
    WantsAck(wants): WantsAck,
) {
    let mut call = Call::new("sync:get", &session);
    let data = payload::<KeyPayload>(data);
    call.item_key = data.as_ref().ok().map(|p| p.key.clone());
    let result = async {
        let who = admitted(&app, &session).await?;
        who.require(Scope::Read)?;
        let KeyPayload { key } = data?;
        match app.sync.get(&session.device.user_id, &key).await {
            // Sent as stored (the item's raw JSON), like REST's GET: a JSON
            // tree would rewrite `-0`, long numbers and duplicate keys, and
            // has no form at all for `1e400`.
            Ok(item) => Ok(Some(item)),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
    .instrument(call.span.clone())
    .await;
    reply(&s, ack, wants, call, &app, result);
}

async fn get_all(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    data: Payload,
    ack: AckSender,
    WantsAck(wants): WantsAck,
) {
    let call = Call::new("sync:getAll", &session);
    let result = async {
        let who = admitted(&app, &session).await?;
        who.require(Scope::Read)?;
        let prefix = optional_payload::<PrefixPayload>(data)?
            .unwrap_or_default()
            .prefix
            .unwrap_or_default();
        let items = app.sync.list(&session.device.user_id, &prefix).await?;
        // The re-fetch a `sync:resync` asked for: the device is current as
        // of the resync now, so its next connection resumes from there
        // instead of being told to resync again (and again).
        if prefix.is_empty() {
            if let Some(seq) = session.take_resync() {
                let d = &session.device;
                app.sync
                    .devices()
                    .resynced(&d.user_id, &d.instance_id, seq)
                    .await?;
            }
        }
        Ok(items)
    }
    .instrument(call.span.clone())
    .await;
    reply(&s, ack, wants, call, &app, result);
}

async fn subscribe(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    data: Payload,
    ack: AckSender,
    WantsAck(wants): WantsAck,
) {
    let call = Call::new("sync:subscribe", &session);
    let result = async {
        admitted(&app, &session).await?;
        change_subscriptions(&app, &session, data, Subscriptions::subscribe).await
    }
    .instrument(call.span.clone())
    .await;
    reply(&s, ack, wants, call, &app, result);
}

async fn unsubscribe(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    data: Payload,
    ack: AckSender,
    WantsAck(wants): WantsAck,
) {
    let call = Call::new("sync:unsubscribe", &session);
    let result = async {
        admitted(&app, &session).await?;
        change_subscriptions(&app, &session, data, Subscriptions::unsubscribe).await
    }
    .instrument(call.span.clone())
    .await;
    reply(&s, ack, wants, call, &app, result);
}

/// Applies `change` to the device's subscriptions and stores them with the
/// device, so its next connection (on any pod) starts with them; replies
/// with the new set. Nothing changes if they cannot be stored.
async fn change_subscriptions(
    app: &AppState,
    session: &Session,
    data: Payload,
    change: fn(&mut Subscriptions, &[String]) -> Result<(), ApiError>,
) -> Result<Vec<String>, ApiError> {
    let KeysPayload { keys } = payload::<KeysPayload>(data)?;
    let _storing = session.subscriptions_store.lock().await;
    let mut next = session
        .subscriptions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let before = next.list();
    change(&mut next, &keys)?;
    let list = next.list();
    let d = &session.device;
    app.sync
        .devices()
        .save_subscriptions(&d.user_id, &d.instance_id, &list)
        .await?;
    *session
        .subscriptions
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = next;
    // Changes to keys outside the old set were skipped, not sent: a device
    // whose set now covers more keys re-fetches, or it would keep what was
    // removed meanwhile and miss what was written.
    if super::subscriptions::widens(&before, &list) {
        let (last_seq, _) = app.sync.devices().heads(&d.user_id).await?;
        session
            .tell_resync("subscriptions_widened", session.delivered(), last_seq)
            .await?;
    }
    Ok(list)
}

/// `sync:ack {seq}`: the device has everything up to `seq`. The cursor never
/// moves past what this socket was actually sent.
async fn ack_cursor(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    data: Payload,
    ack: AckSender,
    WantsAck(wants): WantsAck,
) {
    let call = Call::new("sync:ack", &session);
    let result = async {
        admitted(&app, &session).await?;
        let AckPayload { seq } = payload::<AckPayload>(data)?;
        if seq < 0 {
            return Err(ApiError::InvalidBody("seq must not be negative".into()));
        }
        let cursor = seq.min(session.delivered());
        let d = &session.device;
        app.sync
            .devices()
            .advance_cursor(&d.user_id, &d.instance_id, cursor)
            .await?;
        Ok(json!({ "cursor": cursor }))
    }
    .instrument(call.span.clone())
    .await;
    reply(&s, ack, wants, call, &app, result);
}

#[derive(Deserialize)]
struct AuthPayload {
    token: String,
}

/// `sync:auth {token}`: replaces a token-authenticated socket's token with
/// a fresh one of the same user (after `/auth/refresh`), so it can outlive
/// its first access token without reconnecting. Replies `{expiresAt}` (Unix
/// ms). A socket opened with an API key has nothing to renew.
async fn renew(
    s: SocketRef,
    State(app): State<AppState>,
    Extension(session): Extension<Arc<Session>>,
    data: Payload,
    ack: AckSender,
    WantsAck(wants): WantsAck,
) {
    let call = Call::new("sync:auth", &session);
    let result = async {
        let AuthPayload { token } = payload::<AuthPayload>(data)?;
        if session.device.principal.credential == crate::auth::Credential::ApiKey {
            return Err(ApiError::InvalidBody(
                "this socket authenticated with an API key; only tokens are renewed".into(),
            ));
        }
        let fresh = app.auth.bearer(&token).await?;
        if fresh.user_id != session.device.principal.user_id {
            return Err(ApiError::Forbidden {
                action: "renew another user's socket",
            });
        }
        app.limiter.admit(&fresh).await?;
        let expires_at = fresh.key.expires_at;
        session.renew(fresh);
        Ok(json!({ "expiresAt": expires_at }))
    }
    .instrument(call.span.clone())
    .await;
    reply(&s, ack, wants, call, &app, result);
}
