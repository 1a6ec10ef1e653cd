//! `/api/v1/auth/*`: user tokens for apps' backends to hand to their users.

use axum::{extract::State, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::JsonBody;
use crate::{
    audit::Entry,
    auth::{Issued, Principal, Scope},
    error::ApiError,
    state::AppState,
    sync::validate_user_id,
};

/// The body of `POST /auth/token`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    /// The user the token acts as.
    user_id: String,
    /// The token's scopes, of read, write and analytics:read (default read
    /// and write); narrowed to what the issuing key holds. Any other scope
    /// is 400 `INVALID_BODY` with `details.field` `scopes`.
    #[serde(default)]
    #[schema(schema_with = crate::auth::token_scope_list)]
    scopes: Option<Vec<Scope>>,
}

/// The body of `POST /auth/refresh` and `/auth/logout`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    refresh_token: String,
}

/// The answer to a logout.
#[derive(Serialize, ToSchema)]
pub struct Revoked {
    /// Always true.
    revoked: bool,
}

/// `POST /auth/token {userId, scopes?}` with a `tokens:issue` key.
#[utoipa::path(post, path = "/auth/token", tag = "auth", request_body(content = TokenRequest, description = "The user, and scopes if narrower"), responses((status = 200, description = "A token pair", body = Issued), (status = 400, description = "INVALID_BODY: a malformed body or user id, or a scope a token cannot carry (details.field scopes)", body = crate::http::openapi::ErrorBody)))]
pub async fn token(
    State(state): State<AppState>,
    who: Principal,
    JsonBody(body): JsonBody<TokenRequest>,
) -> Result<Json<Issued>, ApiError> {
    who.require(Scope::TokensIssue)?;
    validate_user_id(&body.user_id).map_err(crate::text::Invalid::body)?;
    let wanted = body
        .scopes
        .unwrap_or_else(|| vec![Scope::Read, Scope::Write]);
    crate::auth::check_token_scopes(&wanted)?;
    // A token never carries more than its issuing key could do itself.
    let scopes: Vec<Scope> = wanted.into_iter().filter(|s| who.key.allows(*s)).collect();
    let issued = state
        .auth
        .tokens()?
        .issue(&body.user_id, &scopes, &who.key.id)
        .await?;
    state
        .audit
        .record(Entry {
            actor: who.user_id.clone(),
            key_id: Some(who.key.id.clone()),
            action: "token.issue",
            target: Some(body.user_id.clone()),
            result: "ok".into(),
            ..Default::default()
        })
        .await;
    Ok(Json(issued))
}

/// `POST /auth/refresh {refreshToken}`: a new pair; the old token is spent.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", security(()), request_body(content = RefreshRequest, description = "The refresh token"), responses((status = 200, description = "A new token pair", body = Issued)))]
pub async fn refresh(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Json<Issued>, ApiError> {
    // A refresh counts against its user's limit, like the user's requests.
    let refresh = state.auth.refreshable(&body.refresh_token).await?;
    state.limiter.admit(&refresh.user()).await?;
    let tokens = state.auth.tokens()?;
    Ok(Json(tokens.rotate(&refresh.spent, &refresh.issuer).await?))
}

/// `POST /auth/logout {refreshToken}`: revokes the token's whole family.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(()), request_body(content = RefreshRequest, description = "The refresh token"), responses((status = 200, description = "The token family is revoked", body = Revoked)))]
pub async fn logout(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Json<Revoked>, ApiError> {
    state.auth.tokens()?.logout(&body.refresh_token).await?;
    Ok(Json(Revoked { revoked: true }))
}
