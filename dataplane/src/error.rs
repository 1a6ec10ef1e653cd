//! The one error type of the data plane.
//!
//! Every failure a client can see is an [`ApiError`] variant with a stable
//! `code`, `details` and the HTTP status the seed gives it (Socket.IO acks
//! carry the same number). The edges turn it into their wire form, each in
//! one place: `http::error` (a response with headers) and `socket::events`
//! (an ack or `connect_error`), so no handler decides a code on its own.

use http::StatusCode;
use serde_json::{json, value::RawValue, Value};

use crate::domain::{Item, RateInfo, SetStatus};

/// A failure that reaches a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key or user token is required")]
    Unauthorized { reason: &'static str },
    #[error("this credential may not {action}")]
    Forbidden { action: &'static str },
    /// A key-management action would leave a key holding more than the
    /// acting credential (see `auth::policy`).
    #[error("a key may not be left holding more than the credential that manages it: {}", exceeds.join(", "))]
    ExceedsCaller { exceeds: Vec<&'static str> },
    #[error("this API key may not be used from {what}")]
    Restricted {
        code: &'static str,
        what: &'static str,
    },
    #[error("this credential lacks the '{scope}' scope")]
    ScopeRequired { scope: &'static str },
    #[error("this API key has been deactivated")]
    KeyInactive,
    #[error("this API key has expired")]
    KeyExpired,
    #[error("item not found")]
    NotFound { key: String },
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("unknown event {event}")]
    UnknownEvent { event: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the item changed concurrently ({status:?}); see details.current")]
    VersionConflict {
        expected: Option<i64>,
        current: Box<Item>,
        status: SetStatus,
        conflict_id: Option<String>,
    },
    /// The draft's 422: an operation id sent again with another request.
    #[error(
        "this operation id (Idempotency-Key or opId) was already used for a different request"
    )]
    IdempotencyKeyReused,
    #[error("the item is {size} bytes, over the limit of {limit} bytes")]
    ItemTooLarge { size: i64, limit: i64 },
    #[error("this write would use {would_use} bytes, over the user's quota of {limit} bytes")]
    StorageQuotaExceeded { would_use: i64, limit: i64 },
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid body: {0}")]
    InvalidBody(String),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("invalid handshake: {0}")]
    InvalidHandshake(String),
    /// A text field the database could not store or compare as sent; `code`
    /// is the edge's own (`INVALID_KEY`, `INVALID_BODY`, …), see `text`.
    #[error("invalid {field}: {reason}")]
    InvalidText {
        code: &'static str,
        field: String,
        reason: String,
    },
    #[error("the request body is over the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive within {limit_ms} ms")]
    RequestTimeout { limit_ms: u128 },
    #[error(
        "user tokens are not configured on this server (set JWT_SECRET and JWT_REFRESH_SECRET)"
    )]
    TokensDisabled,
    #[error("too many requests; retry in {} s", info.reset_secs)]
    RateLimited { quota: bool, info: RateInfo },
    #[error("the database is unavailable")]
    ServiceUnavailable,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable, documented machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "UNAUTHORIZED",
            Self::Forbidden { .. } | Self::ExceedsCaller { .. } => "FORBIDDEN",
            Self::KeyInactive => "KEY_INACTIVE",
            Self::ScopeRequired { .. } => "SCOPE_REQUIRED",
            Self::Restricted { code, .. } | Self::InvalidText { code, .. } => code,
            Self::KeyExpired => "KEY_EXPIRED",
            Self::NotFound { .. } | Self::RouteNotFound { .. } => "NOT_FOUND",
            Self::UnknownEvent { .. } => "UNKNOWN_EVENT",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::VersionConflict { .. } => "VERSION_CONFLICT",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::ItemTooLarge { .. } => "ITEM_TOO_LARGE",
            Self::StorageQuotaExceeded { .. } => "STORAGE_QUOTA_EXCEEDED",
            Self::InvalidKey(_) => "INVALID_KEY",
            Self::InvalidBody(_) => "INVALID_BODY",
            Self::InvalidQuery(_) => "INVALID_QUERY",
            Self::InvalidHandshake(_) => "INVALID_HANDSHAKE",
            Self::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::RequestTimeout { .. } => "REQUEST_TIMEOUT",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::TokensDisabled => "TOKENS_DISABLED",
            Self::RateLimited { quota: true, .. } => "QUOTA_EXCEEDED",
            Self::RateLimited { quota: false, .. } => "RATE_LIMITED",
            Self::Internal(_) => "INTERNAL",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. }
            | Self::ExceedsCaller { .. }
            | Self::ScopeRequired { .. }
            | Self::KeyInactive
            | Self::KeyExpired
            | Self::Restricted { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } | Self::RouteNotFound { .. } | Self::UnknownEvent { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::VersionConflict { .. } => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ItemTooLarge { .. }
            | Self::StorageQuotaExceeded { .. }
            | Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidKey(_)
            | Self::InvalidBody(_)
            | Self::InvalidQuery(_)
            | Self::InvalidHandshake(_)
            | Self::InvalidText { .. } => StatusCode::BAD_REQUEST,
            Self::ServiceUnavailable | Self::TokensDisabled => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Structured context for the client. Internal details stay in the logs.
    pub fn details(&self) -> Value {
        match self {
            Self::Unauthorized { reason } => json!({ "reason": reason }),
            Self::Forbidden { action } => json!({ "required": action }),
            Self::ExceedsCaller { exceeds } => {
                json!({ "required": "hold every right it grants", "exceeds": exceeds })
            }
            Self::ScopeRequired { scope } => json!({ "required": scope }),
            Self::NotFound { key } => json!({ "key": key }),
            Self::RouteNotFound { method, path } => json!({ "method": method, "path": path }),
            Self::UnknownEvent { event } => json!({ "event": event }),
            Self::VersionConflict {
                expected, current, ..
            } => {
                json!({ "expectedVersion": expected, "currentVersion": current.version, "current": item_json(current) })
            }
            Self::ItemTooLarge { size, limit } => json!({ "size": size, "limit": limit }),
            Self::StorageQuotaExceeded { would_use, limit } => {
                json!({ "wouldUse": would_use, "limit": limit })
            }
            Self::PayloadTooLarge { limit } => json!({ "limit": limit }),
            Self::RequestTimeout { limit_ms } => json!({ "limitMs": limit_ms }),
            Self::InvalidText { field, .. } => json!({ "field": field }),
            Self::RateLimited { info, .. } => {
                json!({ "limit": info.limit, "resetSeconds": info.reset_secs })
            }
            _ => json!({}),
        }
    }

    /// The error as the JSON body every client sees. A lost conflict also
    /// carries the writer's reply (`status`, `item`, `conflictId`) at the
    /// top level, so the 409 body is that reply as well as an error.
    pub fn body(&self) -> Value {
        let mut body =
            json!({ "message": self.to_string(), "code": self.code(), "details": self.details() });
        if let (
            Self::VersionConflict {
                current,
                status,
                conflict_id,
                ..
            },
            Value::Object(map),
        ) = (self, &mut body)
        {
            map.insert("status".into(), json!(status));
            map.insert("item".into(), item_json(current));
            if let Some(id) = conflict_id {
                map.insert("conflictId".into(), json!(id));
            }
        }
        body
    }
}

/// An item as a JSON tree for an error body. Values are stored as sent, and
/// a few valid JSON texts have no tree form (a number past f64's range such
/// as `1e400`, a lone surrogate escape): those keep their JSON text as a
/// string rather than fail the answer (`json!` would panic on them).
fn item_json(item: &Item) -> Value {
    serde_json::to_value(item).unwrap_or_else(|_| {
        let as_text = |raw: &RawValue| {
            serde_json::to_string(raw.get())
                .ok()
                .and_then(|s| RawValue::from_string(s).ok())
        };
        let mut text = item.clone();
        text.value = item.value.as_deref().and_then(as_text);
        text.metadata = item.metadata.as_deref().and_then(as_text);
        serde_json::to_value(&text).unwrap_or(Value::Null)
    })
}

/// The house codes for a refused text value, by where it arrived (see
/// `text`, which decides *whether* a value is refused, not how).
impl crate::text::Invalid {
    fn with_code(self, code: &'static str) -> ApiError {
        ApiError::InvalidText {
            code,
            field: self.field,
            reason: self.reason,
        }
    }

    /// An item key (in the path or an event): `INVALID_KEY`.
    pub fn key(self) -> ApiError {
        self.with_code("INVALID_KEY")
    }

    /// A field of a request body or a header: `INVALID_BODY`.
    pub fn body(self) -> ApiError {
        self.with_code("INVALID_BODY")
    }

    /// A query parameter or an id in the path: `INVALID_QUERY`.
    pub fn query(self) -> ApiError {
        self.with_code("INVALID_QUERY")
    }

    /// A Socket.IO handshake parameter: `INVALID_HANDSHAKE`.
    pub fn handshake(self) -> ApiError {
        self.with_code("INVALID_HANDSHAKE")
    }
}

/// Decodes a request body or a socket event's payload: one JSON object,
/// nothing after it, and a type error names its field (`details.field`,
/// e.g. `tags[0]`, through `serde_path_to_error`, which serde_json's
/// message does not). REST and Socket.IO both decode through this, so the
/// same bad input gets the same answer on either edge.
pub fn decode_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from an array of its fields in order
    // (`["k", 1]`).
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::InvalidBody(
            "the body must be a JSON object".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    let body = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| refusal(e, crate::text::Invalid::body, ApiError::InvalidBody))?;
    // Nothing may follow the object (`{"value":1} {"value":2}`).
    de.end().map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    Ok(body)
}

/// Decodes a query string (`a=1&b=x`) as [`decode_object`] decodes a body:
/// a refusal is INVALID_QUERY naming its parameter.
pub fn decode_query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de)
        .map_err(|e| refusal(e, crate::text::Invalid::query, ApiError::InvalidQuery))
}

/// A decoding refusal naming its field: the path to a value of the wrong
/// type, or for a field missing, repeated or unknown at the top, the name
/// serde's message quotes (serde's own wording: "missing field `x`").
fn refusal<E: std::fmt::Display>(
    e: serde_path_to_error::Error<E>,
    named: fn(crate::text::Invalid) -> ApiError,
    unnamed: fn(String) -> ApiError,
) -> ApiError {
    let path = e.path().to_string();
    let reason = e.into_inner().to_string();
    let quoted = ["missing field `", "duplicate field `", "unknown field `"]
        .iter()
        .find_map(|p| reason.strip_prefix(p))
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_string());
    match (path.as_str(), quoted) {
        (".", Some(name)) => named(crate::text::Invalid::new(&name, reason)),
        (".", None) => unnamed(reason),
        _ => named(crate::text::Invalid::new(&path, reason)),
    }
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        tags: Option<Vec<String>>,
        n: Option<i64>,
    }

    fn refusal(json: &str) -> (String, Value) {
        let e = decode_object::<Body>(json.as_bytes()).expect_err(json);
        (e.code().to_string(), e.details())
    }

    #[test]
    fn type_errors_name_their_field() {
        assert_eq!(
            refusal(r#"{"tags": ["a", 5]}"#),
            ("INVALID_BODY".into(), json!({"field": "tags[1]"}))
        );
        assert_eq!(
            refusal(r#"{"n": "x"}"#),
            ("INVALID_BODY".into(), json!({"field": "n"}))
        );
    }

    #[test]
    fn missing_and_repeated_fields_are_named() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Needs {
            value: i64,
        }
        let e = decode_object::<Needs>(b"{}").unwrap_err();
        assert_eq!(e.details(), json!({"field": "value"}));
        let e = decode_query::<Body>("n=1&n=2").unwrap_err();
        assert_eq!(
            (e.code(), e.details()),
            ("INVALID_QUERY", json!({"field": "n"}))
        );
        let e = decode_query::<Body>("n=x").unwrap_err();
        assert_eq!(
            (e.code(), e.details()),
            ("INVALID_QUERY", json!({"field": "n"}))
        );
    }

    #[test]
    fn only_one_object_is_a_body() {
        for json in [r#"["a", 1]"#, "5", "", r#"{"n": 1} {"n": 2}"#] {
            assert_eq!(refusal(json).0, "INVALID_BODY", "{json}");
        }
        assert!(decode_object::<Body>(br#" {"n": 1} "#).is_ok());
    }
}
