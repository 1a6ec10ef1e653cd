//! Authentication of the protected routes: once per request, before the
//! handler, by a middleware rather than an extractor, so that what it
//! learns (who called, their rate standing) travels in the request's
//! context down to the handler and in the response's extensions up to
//! `track`, with no shared slots between them.

use axum::{
    extract::{Request, State},
    http::HeaderMap,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::error::rate_headers;
use crate::{
    access::restrictions::Caller,
    auth::{Authorization, Presented, Principal, RequestContext},
    error::ApiError,
    state::AppState,
};

/// Who a response was for, for the request's analytics event: the user
/// and key of an admitted caller, or only the key id of a refused key.
#[derive(Debug, Clone, Default)]
pub struct Identified {
    pub user_id: Option<String>,
    pub key_id: Option<String>,
}

/// Establishes the caller (a bearer token or an `X-API-Key`), admits it
/// through the rate limiter, and runs the handler with the principal in
/// the request's context. The `X-RateLimit-*` headers of an admitted
/// caller go on whatever the handler answers.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(mut context) = req.extensions().get::<RequestContext>().cloned() else {
        return ApiError::Internal("no request context: route outside track".into())
            .into_response();
    };
    let principal = match principal(&state, req.headers(), &context.client).await {
        Ok(p) => p,
        Err((error, key_id)) => {
            return identified(
                error.into_response(),
                Identified {
                    user_id: None,
                    key_id,
                },
            );
        }
    };
    let who = Identified {
        user_id: Some(principal.user_id.clone()),
        key_id: Some(principal.key.id.clone()),
    };
    let standing = match state.limiter.admit(&principal).await {
        Ok(info) => info,
        Err(error) => return identified(error.into_response(), who),
    };
    context.principal = Some(principal);
    req.extensions_mut().insert(context);
    let mut response = next.run(req).await;
    if !response.headers().contains_key("x-ratelimit-limit") {
        rate_headers(response.headers_mut(), &standing);
    }
    identified(response, who)
}

fn identified(mut response: Response, who: Identified) -> Response {
    response.extensions_mut().insert(who);
    response
}

/// The principal a request's credentials name, or the refusal (with the
/// id of a key that was found but refused, for the analytics event); the
/// rule between an API key and a token is `Authenticator::authenticate`'s.
async fn principal(
    state: &AppState,
    headers: &HeaderMap,
    client: &Caller,
) -> Result<Principal, (ApiError, Option<String>)> {
    let twice = |name| headers.get_all(name).iter().nth(1).is_some();
    let presented = Presented {
        api_key: headers
            .get("x-api-key")
            .map(|v| v.to_str().unwrap_or_default()),
        authorization: headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| Authorization::parse(v.as_bytes())),
        malformed: twice("x-api-key") || twice(axum::http::header::AUTHORIZATION.as_str()),
    };
    state.auth.authenticate(presented, client).await
}
