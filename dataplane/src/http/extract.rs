//! Extractors that turn axum's rejections into our error codes, so a bad
//! path, query or body gets the same `{message, code, details}` as any error.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, RawPathParams, Request},
    http::{request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::{
    auth::{Principal, RequestContext},
    error::ApiError,
    state::AppState,
    sync::OperationId,
    text,
};

/// When a request's body must have arrived; `JsonBody` tells a body that
/// missed it (408) from a malformed one (400).
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub tokio::time::Instant);

impl BodyDeadline {
    pub fn passed(&self) -> bool {
        self.0 <= tokio::time::Instant::now()
    }
}

/// A JSON body, limited in size by the router's body limit.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let deadline = req.extensions().get::<BodyDeadline>().copied();
        let limit = state.config.limits.max_body_bytes();
        // A body announced too big is refused unread, rather than read up to
        // the limit first.
        let announced = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if deadline.is_some_and(|d| d.passed()) {
                ApiError::RequestTimeout {
                    limit_ms: state.config.http.body_timeout.as_millis(),
                }
            } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::InvalidBody(rejection.body_text())
            }
        })?;
        crate::error::decode_object(&bytes).map(JsonBody)
    }
}

/// The one parameter of the matched route, percent-decoded strictly and
/// checked by `rule`; a refusal names the parameter and answers `code`.
///
/// axum decodes `%ZZ` as the text `%ZZ`; the raw path is checked first so
/// that a malformed escape is refused instead of becoming part of the value
/// (the route's fixed segments hold no `%`, so any bad escape is the
/// parameter's).
async fn path_text(
    parts: &mut Parts,
    state: &AppState,
    rule: text::Rule,
    refuse: fn(text::Invalid) -> ApiError,
) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| {
            refuse(text::Invalid::new(
                "path",
                "is not UTF-8 once percent-decoded",
            ))
        })?;
    let (name, value) = params
        .iter()
        .next()
        .ok_or_else(|| ApiError::Internal("route without a path parameter".into()))?;
    text::well_encoded(parts.uri.path())
        .map_err(|reason| refuse(text::Invalid::new(name, reason)))?;
    text::check(name, value, rule).map_err(refuse)?;
    Ok(value.to_string())
}

/// The `{*key}` path segment (an item key, or an item id or key),
/// percent-decoded: `INVALID_KEY` when malformed.
pub struct ItemKey(pub String);

impl FromRequestParts<AppState> for ItemKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        path_text(parts, state, text::KEY, text::Invalid::key)
            .await
            .map(ItemKey)
    }
}

/// An id in the path (`{id}`, `{user}`): `INVALID_QUERY` when malformed,
/// so that an id no row can have never reaches a query.
pub struct PathId(pub String);

impl FromRequestParts<AppState> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        path_text(parts, state, text::ID, text::Invalid::query)
            .await
            .map(PathId)
    }
}

/// A raw query string whose every `%` starts a valid escape.
fn well_encoded_query(parts: &Parts) -> Result<(), ApiError> {
    text::well_encoded(parts.uri.query().unwrap_or_default())
        .map_err(|reason| text::Invalid::new("query", reason).query())
}

/// `?prefix=`; absent means every key.
#[derive(Debug, serde::Deserialize)]
pub struct PrefixParams {
    #[serde(default)]
    pub prefix: String,
}

pub struct Prefix(pub String);

impl FromRequestParts<AppState> for Prefix {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let QueryParams(p) = QueryParams::<PrefixParams>::from_request_parts(parts, state).await?;
        Ok(Prefix(p.prefix))
    }
}

/// The device making a REST write: `X-Instance-Id`, or `rest` when absent.
pub struct InstanceId(pub String);

impl FromRequestParts<AppState> for InstanceId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get("x-instance-id") else {
            return Ok(InstanceId("rest".into()));
        };
        let id = value
            .to_str()
            .map_err(|_| ApiError::InvalidBody("X-Instance-Id must be visible ASCII".into()))?;
        crate::sync::validate_client_instance_id("X-Instance-Id", id)
            .map_err(text::Invalid::body)?;
        Ok(InstanceId(id.to_string()))
    }
}

/// A write's `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-
/// header), if any: a retry with the same key gets the first reply (see
/// `sync::OperationId`). A malformed one is INVALID_BODY naming the header.
pub struct IdempotencyKey(pub Option<OperationId>);

impl FromRequestParts<AppState> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        parts
            .headers
            .get("idempotency-key")
            .map(|v| OperationId::from_header(v.as_bytes()).map_err(text::Invalid::body))
            .transpose()
            .map(IdempotencyKey)
    }
}

/// Query parameters; a malformed query is INVALID_QUERY, not axum's plain
/// text (schemathesis found that one).
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &AppState) -> Result<Self, ApiError> {
        well_encoded_query(parts)?;
        crate::error::decode_query(parts.uri.query().unwrap_or_default()).map(QueryParams)
    }
}

/// The request's context, as `track` built it and `authenticate`
/// completed it.
impl FromRequestParts<AppState> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .ok_or_else(|| ApiError::Internal("no request context: route outside track".into()))
    }
}

/// The caller, as `authenticate` established it before the handler ran.
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<RequestContext>()
            .and_then(|c| c.principal.clone())
            .ok_or_else(|| ApiError::Internal("no principal: route not behind authenticate".into()))
    }
}
