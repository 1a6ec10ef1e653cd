//! Extractors that turn axum's rejections into our error codes, so a bad
//! path, query or body gets the same `{message, code, details}` as any error.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{request::Parts, StatusCode},
};
use serde::de::DeserializeOwned;

use crate::{app::AppState, error::ApiError, server::BodyDeadline, sync::validate_instance_id};

/// A JSON body, limited in size by the router's body limit.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let deadline = req.extensions().get::<BodyDeadline>().copied();
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if deadline.is_some_and(|d| d.passed()) {
                ApiError::RequestTimeout {
                    limit_ms: state.config.http.body_timeout.as_millis(),
                }
            } else if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: state.config.limits.max_body_bytes(),
                }
            } else {
                ApiError::InvalidBody(rejection.body_text())
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidBody(e.to_string()))
    }
}

/// The `{*key}` path segment, percent-decoded.
pub struct ItemKey(pub String);

impl FromRequestParts<AppState> for ItemKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(key) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| {
                ApiError::InvalidKey("the key must be valid percent-encoded UTF-8".into())
            })?;
        Ok(ItemKey(key))
    }
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
        let Query(p) = Query::<PrefixParams>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
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
        validate_instance_id(id).map_err(ApiError::InvalidBody)?;
        Ok(InstanceId(id.to_string()))
    }
}

/// Query parameters; a malformed query is INVALID_QUERY, not axum's plain
/// text (schemathesis found that one).
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned> FromRequestParts<AppState> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryParams(q))
            .map_err(|e| ApiError::InvalidQuery(e.body_text()))
    }
}
