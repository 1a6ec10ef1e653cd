//! The HTTP form of an [`ApiError`]: its status, the `{message, code,
//! details}` body, and the headers that go with some errors
//! (`Retry-After`, `X-RateLimit-*`, `Connection: close`).

use axum::{
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
    Json,
};

use crate::{domain::RateInfo, error::ApiError};

/// The stable code of an error response, left in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(cause) => {
                tracing::error!(code = self.code(), %cause, "request failed")
            }
            ApiError::ServiceUnavailable => {
                tracing::warn!(code = self.code(), "database unavailable")
            }
            _ => tracing::debug!(code = self.code(), "request rejected"),
        }
        let mut response = (status, Json(self.body())).into_response();
        // For the analytics event of this request (denials by reason).
        response.extensions_mut().insert(ErrorCode(self.code()));
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
    }
}

/// The X-RateLimit-* headers for `info`.
pub fn rate_headers(headers: &mut HeaderMap, info: &RateInfo) {
    headers.insert("x-ratelimit-limit", HeaderValue::from(info.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(info.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(info.reset_secs));
}
