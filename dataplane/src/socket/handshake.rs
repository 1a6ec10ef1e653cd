//! The `/sync` handshake: who is connecting, as which user and device.
//!
//! Runs as a socketioxide connect middleware, so a refusal is a
//! `connect_error` before the namespace is joined. socketioxide sends only
//! `{message}` in a connect_error, so the message is itself the JSON text
//! `{"message": …, "code": …, "details": …}`: clients `JSON.parse(err.message)`.

use std::{convert::Infallible, sync::Arc};

use socketioxide::{
    adapter::Adapter,
    extract::{Data, SocketRef, State},
    handler::{FromConnectParts, Value},
    socket::Socket,
};
use tracing::Instrument;

use crate::{
    auth::{restrictions::Caller, Authorization, Presented, Principal, Scope},
    error::ApiError,
    state::AppState,
    sync::{validate_client_instance_id, validate_user_id},
    telemetry::{self, TraceContext, TARGET},
};

/// The authenticated device behind a socket.
#[derive(Debug, Clone)]
pub struct Device {
    /// The credential as admitted at the handshake; the session re-checks
    /// it (and holds a renewed one) while the socket stays open.
    pub principal: Principal,
    /// What the handshake told about the client, for re-checking the
    /// key's restrictions.
    pub caller: Caller,
    pub user_id: String,
    pub instance_id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The handshake request's `X-Request-Id` (the client's, or the one
    /// `http::edge` generated), for the log lines of this socket.
    pub request_id: Option<String>,
    /// The trace of the handshake, when traced: the socket's events link
    /// to it.
    pub trace: Option<TraceContext>,
}

/// A refused handshake, displayed as the JSON the client receives: the
/// error's one body (`ApiError::body`), as every REST error and ack carries.
pub struct Refusal(ApiError);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.body())
    }
}

/// The `auth` object of the handshake, or nothing; never fails to extract.
pub struct HandshakeAuth(Option<serde_json::Value>);

impl<A: Adapter> FromConnectParts<A> for HandshakeAuth {
    type Error = Infallible;
    fn from_connect_parts(s: &Arc<Socket<A>>, auth: &Option<Value>) -> Result<Self, Infallible> {
        Ok(HandshakeAuth(
            Data::<serde_json::Value>::from_connect_parts(s, auth)
                .ok()
                .map(|Data(v)| v),
        ))
    }
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The request id of the handshake's HTTP request.
fn request_id(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn auth_field<'a>(auth: &'a Option<serde_json::Value>, name: &str) -> Option<&'a str> {
    auth.as_ref()?.get(name)?.as_str()
}

/// Authenticates the handshake and stores the [`Device`] in the socket's
/// extensions. A refusal counts in the metrics and, as a REST denial does,
/// in analytics (event `connect`, with the refused key's id once known).
pub async fn authenticate(
    s: SocketRef,
    State(app): State<AppState>,
    HandshakeAuth(auth): HandshakeAuth,
) -> Result<(), Refusal> {
    let started = std::time::Instant::now();
    let parts = s.req_parts();
    let caller = app.auth.caller(&parts.headers, &parts.extensions);
    let span = connect_span(&parts.headers, &auth);
    let device = identify(&s, &app, &auth, caller.clone())
        .instrument(span.clone())
        .await
        .map(|device| Device {
            trace: TraceContext::of(&span),
            ..device
        })
        .map_err(|(e, key_id)| {
            if e.status().is_server_error() {
                telemetry::context::fail(&span, e.code());
            } else {
                telemetry::context::set_attribute(&span, "error.type", e.code());
            }
            app.metrics
                .socket_refusals
                .with_label_values(&[e.code()])
                .inc();
            let rid = request_id(&parts.headers);
            super::events::log_failure("connect", &s.id.to_string(), rid.as_deref(), &e);
            let mut event = refusal_event(&s, &caller, &e, key_id, started);
            event.trace = TraceContext::of(&span);
            app.analytics.record(event);
            Refusal(e)
        })?;
    super::admit(&s, &app, device);
    Ok(())
}

/// The span of a handshake: a Socket.IO `connect` as a messaging span,
/// continuing the client's trace from `auth.traceparent` (browsers cannot
/// set headers on a WebSocket) or else the `traceparent` header. It
/// records nothing of `auth`, which holds the credential.
fn connect_span(
    headers: &axum::http::HeaderMap,
    auth: &Option<serde_json::Value>,
) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "socket.connect",
        otel.name = "connect /sync",
        otel.kind = "server",
        messaging.system = "socket.io",
        messaging.operation.type = "process",
        messaging.operation.name = "connect",
        messaging.destination.name = "/sync",
    );
    if !span.is_disabled() {
        let parent = TraceContext::from_parts(
            auth_field(auth, "traceparent"),
            auth_field(auth, "tracestate"),
        )
        .or_else(|| TraceContext::from_headers(headers));
        if let Some(parent) = parent {
            parent.adopt(&span);
        }
    }
    span
}

/// The analytics record of a refused handshake.
fn refusal_event(
    s: &SocketRef,
    caller: &Caller,
    e: &ApiError,
    key_id: Option<String>,
    started: std::time::Instant,
) -> crate::analytics::Event {
    let query = s.req_parts().uri.query().unwrap_or("");
    crate::analytics::Event {
        kind: "socket".into(),
        route_or_event: "connect".into(),
        user_id: query_param(query, "userId"),
        instance_id: query_param(query, "instanceId"),
        api_key_id: key_id,
        status: e.status().as_u16(),
        error_code: Some(e.code().to_string()),
        latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        country: caller.country.clone(),
        ua_family: caller
            .user_agent
            .as_deref()
            .map(|ua| crate::analytics::event::ua_family(ua).to_string()),
        ip: caller.ip.map(|ip| ip.to_string()),
        ..Default::default()
    }
}

/// The device a handshake admits, or the refusal with the id of a key that
/// was found but refused.
async fn identify(
    s: &SocketRef,
    app: &AppState,
    auth: &Option<serde_json::Value>,
    caller: Caller,
) -> Result<Device, (ApiError, Option<String>)> {
    let parts = s.req_parts();
    let query = parts.uri.query().unwrap_or("");
    // Browsers apply CORS to polling but not to WebSockets: the handshake
    // checks the page's Origin against CORS_ORIGIN itself. Clients that are
    // not browsers send no Origin and are not affected.
    if let crate::config::CorsOrigins::List(allowed) = &app.config.cors.origins {
        let origin = parts
            .headers
            .get(axum::http::header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if origin.is_some_and(|o| !allowed.iter().any(|a| a == o)) {
            let e = ApiError::Forbidden {
                action: "connect from this origin (CORS_ORIGIN)",
            };
            return Err((e, None));
        }
    }
    let in_query = query_param(query, "apiKey");
    let api_key = auth_field(auth, "apiKey")
        .map(str::to_owned)
        .or_else(|| in_query.clone());
    let not_text = |name| {
        auth.as_ref()
            .and_then(|a| a.get(name))
            .is_some_and(|v| !v.is_string() && !v.is_null())
    };
    let presented = Presented {
        api_key: api_key.as_deref(),
        authorization: auth_field(auth, "token").map(Authorization::Bearer),
        malformed: not_text("apiKey")
            || not_text("token")
            || in_query.is_some_and(|q| api_key.as_deref() != Some(q.as_str())),
    };
    let principal = app.auth.authenticate(presented, &caller).await?;
    let key_id = principal.key.id.clone();
    device(app, query, &parts.headers, principal, caller)
        .await
        .map_err(|e| (e, Some(key_id)))
}

/// What an authenticated handshake must still satisfy: the `read` scope, the
/// limits, and a valid `userId` and `instanceId` it may act for.
async fn device(
    app: &AppState,
    query: &str,
    headers: &axum::http::HeaderMap,
    principal: Principal,
    caller: Caller,
) -> Result<Device, ApiError> {
    principal.require(Scope::Read)?;
    app.limiter.admit(&principal).await?;
    let required = |name: &str| crate::text::Invalid::new(name, "is required").handshake();
    let user_id = query_param(query, "userId").ok_or_else(|| required("userId"))?;
    let instance_id = query_param(query, "instanceId").ok_or_else(|| required("instanceId"))?;
    validate_user_id(&user_id).map_err(crate::text::Invalid::handshake)?;
    validate_client_instance_id("instanceId", &instance_id)
        .map_err(crate::text::Invalid::handshake)?;
    // A credential acts for its own user; only an admin key may act for others.
    if user_id != principal.user_id && !principal.key.allows(Scope::Admin) {
        return Err(ApiError::Forbidden {
            action: "act for this user",
        });
    }
    // The device record and the session's analytics carry the resolved
    // client, as REST does, not the proxy that connected.
    let ip = caller.ip.map(|ip| ip.to_string());
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(Device {
        principal,
        caller,
        user_id,
        instance_id,
        ip,
        user_agent,
        request_id: request_id(headers),
        trace: None,
    })
}
