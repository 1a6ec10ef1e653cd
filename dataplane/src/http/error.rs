//! The HTTP form of an [`ApiError`]: its status, the `{message, code,
//! details}` body, and the headers that go with some errors
//! (`Retry-After`, `X-RateLimit-*`, `Connection: close`).

use std::sync::Arc;

use axum::{
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};

use crate::{domain::RateInfo, error::ApiError};

/// The error a response was made from, left in its extensions so that the
/// request middleware logs it (with the route) and counts it, once: turning
/// an error into a response does not log (axum's error-handling example).
#[derive(Debug, Clone)]
pub struct ResponseError(pub Arc<ApiError>);

impl ResponseError {
    /// Logs the error at the level its kind deserves: our bug (`INTERNAL`,
    /// with its cause, which never reaches the client) as an error, a
    /// database outage as a warning, a refused request at debug.
    pub fn log(&self, route: &str) {
        let code = self.0.code();
        match &*self.0 {
            ApiError::Internal(cause) => tracing::error!(code, %cause, %route, "request failed"),
            ApiError::ServiceUnavailable => {
                tracing::warn!(code, %route, "database unavailable")
            }
            _ => tracing::debug!(code, %route, "request rejected"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        if matches!(self, ApiError::RequestTimeout { .. }) {
            // The rest of the body may still be trickling in; the connection
            // is not reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, ApiError::ServiceUnavailable) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ApiError::RateLimited { info, .. } = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(info.reset_secs.max(1)),
            );
            rate_headers(response.headers_mut(), info);
        }
        response
            .extensions_mut()
            .insert(ResponseError(Arc::new(self)));
        response
    }
}

/// The X-RateLimit-* headers for `info`.
pub fn rate_headers(headers: &mut HeaderMap, info: &RateInfo) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(info.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(info.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(info.reset_secs));
}
