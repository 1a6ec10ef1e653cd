//! The authenticated caller of a request, and how it is established.

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::request::Parts};

use super::{
    restrictions::{caller_from, Caller},
    ApiKey, KeyStore, Scope, Tokens,
};
use crate::{app::AppState, error::ApiError, storage::now_ms};

/// The caller: the user it acts as, and the key that vouched for it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub key: Arc<ApiKey>,
}

impl Principal {
    /// Refuses the request unless the credential grants `scope`.
    /// The seed's `canRead`/`canWrite` flags answer FORBIDDEN; a missing
    /// scope answers SCOPE_REQUIRED.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        let flag = match scope {
            Scope::Read => self.key.can_read,
            Scope::Write => self.key.can_write,
            _ => true,
        };
        if !flag {
            Err(ApiError::Forbidden {
                action: scope.as_str(),
            })
        } else if !self.key.allows(scope) {
            Err(ApiError::ScopeRequired {
                scope: scope.as_str(),
            })
        } else {
            Ok(())
        }
    }
}

/// Turns presented credentials into a [`Principal`]; shared by REST and, later,
/// the socket handshake, so both apply the same rules.
#[derive(Clone)]
pub struct Authenticator {
    keys: KeyStore,
    api_keys_enabled: bool,
    tokens: Option<Tokens>,
    trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    country_header: Option<String>,
    audit: Option<crate::audit::Auditor>,
    geoip: Option<super::geoip::GeoIp>,
    external: Option<super::jwks::External>,
}

impl Authenticator {
    pub fn new(
        keys: KeyStore,
        api_keys_enabled: bool,
        tokens: Option<Tokens>,
        trusted_proxies: Vec<ipnet::IpNet>,
        country_header: Option<String>,
    ) -> Self {
        Self {
            keys,
            api_keys_enabled,
            tokens,
            trusted_proxies: Arc::new(trusted_proxies),
            country_header,
            audit: None,
            geoip: None,
            external: None,
        }
    }

    /// Accepts tokens of an outside identity provider too.
    pub fn with_external(mut self, external: Option<super::jwks::External>) -> Self {
        self.external = external;
        self
    }

    /// Looks countries up in a MaxMind database when no trusted header says.
    pub fn with_geoip(mut self, geoip: Option<super::geoip::GeoIp>) -> Self {
        self.geoip = geoip;
        self
    }

    /// What is known about a caller from its headers and peer address.
    pub fn caller(
        &self,
        headers: &axum::http::HeaderMap,
        peer: Option<std::net::IpAddr>,
    ) -> Caller {
        let mut caller = caller_from(
            headers,
            peer,
            &self.trusted_proxies,
            self.country_header.as_deref(),
        );
        if caller.country.is_none() {
            caller.country = caller
                .ip
                .zip(self.geoip.as_ref())
                .and_then(|(ip, g)| g.country(ip));
        }
        caller
    }

    /// The token service, or TOKENS_DISABLED when `JWT_SECRET` is unset.
    pub fn tokens(&self) -> Result<&Tokens, ApiError> {
        self.tokens.as_ref().ok_or(ApiError::TokensDisabled)
    }

    /// Authenticates a user token: ours (HS256) or, with a JWKS configured,
    /// an identity provider's (RS256/ES256). The header only routes the
    /// token; each path pins its own algorithm.
    pub fn bearer(&self, token: &str) -> Result<Principal, ApiError> {
        let token = token.trim();
        let header = jsonwebtoken::decode_header(token).map_err(|_| ApiError::Unauthorized {
            reason: "invalid_token",
        })?;
        let invalid = ApiError::Unauthorized {
            reason: "invalid_token",
        };
        match (header.alg, &self.tokens, &self.external) {
            (jsonwebtoken::Algorithm::HS256, Some(tokens), _) => tokens.verify_access(token),
            (jsonwebtoken::Algorithm::HS256, None, _) | (_, _, None) => Err(invalid),
            (alg, _, Some(external)) => external.verify(token, alg, header.kid.as_deref()),
        }
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Authenticates a presented API key and applies its restrictions to
    /// the caller: the one check REST and Socket.IO share.
    pub async fn api_key(
        &self,
        presented: Option<&str>,
        caller: &Caller,
    ) -> Result<Principal, ApiError> {
        self.api_key_traced(presented, caller)
            .await
            .map_err(|(e, _)| e)
    }

    /// [`Self::api_key`], with the refused key's id once it is known (for
    /// analytics of denials per key).
    pub async fn api_key_traced(
        &self,
        presented: Option<&str>,
        caller: &Caller,
    ) -> Result<Principal, (ApiError, Option<String>)> {
        let result = self.check_api_key(presented, caller).await;
        if let Err((e, key_id)) = &result {
            self.refused(e, key_id.as_deref(), caller);
        }
        result
    }

    /// The checks, in order; a refusal carries the key id once it is known.
    async fn check_api_key(
        &self,
        presented: Option<&str>,
        caller: &Caller,
    ) -> Result<Principal, (ApiError, Option<String>)> {
        let unknown = |reason| (ApiError::Unauthorized { reason }, None);
        let Some(presented) = presented.map(str::trim).filter(|k| !k.is_empty()) else {
            return Err(unknown("missing_credentials"));
        };
        if !self.api_keys_enabled {
            return Err(unknown("api_keys_disabled"));
        }
        if presented.len() > 512 {
            return Err(unknown("unknown_key"));
        }
        let key = self
            .keys
            .find(presented)
            .await
            .map_err(|e| (e, None))?
            .ok_or_else(|| unknown("unknown_key"))?;
        let denied = |e: ApiError| (e, Some(key.id.clone()));
        if !key.is_active {
            return Err(denied(ApiError::KeyInactive));
        }
        if key.expires_at.is_some_and(|t| t <= now_ms()) {
            return Err(denied(ApiError::KeyExpired));
        }
        if let Err(e) = key.restrictions.check(caller) {
            tracing::info!(key_id = %key.id, code = e.code(), ip = ?caller.ip, "API key restriction denied");
            return Err(denied(e));
        }
        Ok(Principal {
            user_id: key.user_id.clone(),
            key,
        })
    }

    /// Audits a refused credential (never the credential itself): counted
    /// per client IP, code and key, so that a flood costs bounded rows.
    pub fn refused(&self, error: &ApiError, key_id: Option<&str>, caller: &Caller) {
        if matches!(error, ApiError::ServiceUnavailable | ApiError::Internal(_)) {
            return;
        }
        if let Some(audit) = &self.audit {
            audit.denied(
                error.code(),
                caller.ip.map(|ip| ip.to_string()),
                key_id.map(str::to_owned),
            );
        }
    }

    /// Records authentication failures and restriction denials.
    pub fn with_audit(mut self, audit: crate::audit::Auditor) -> Self {
        self.audit = Some(audit);
        self
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(auth) = parts.headers.get(axum::http::header::AUTHORIZATION) {
            let token = auth
                .to_str()
                .ok()
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                })
                .ok_or(ApiError::Unauthorized {
                    reason: "invalid_authorization_header",
                })?;
            let principal = state.auth.bearer(token).inspect_err(|e| {
                let peer = parts
                    .extensions
                    .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                    .map(|c| c.0.ip());
                state
                    .auth
                    .refused(e, None, &state.auth.caller(&parts.headers, peer));
            })?;
            return admit(parts, state, principal).await;
        }
        let presented = parts
            .headers
            .get("x-api-key")
            .map(|v| v.to_str().unwrap_or_default());
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let caller = state.auth.caller(&parts.headers, peer);
        let principal = match state.auth.api_key_traced(presented, &caller).await {
            Ok(p) => p,
            Err((e, key_id)) => {
                if let Some(slot) = parts.extensions.get::<crate::http::CallerSlot>() {
                    slot.set(None, key_id);
                }
                return Err(e);
            }
        };
        admit(parts, state, principal).await
    }
}

/// Counts the request against the caller's limits and leaves its standing
/// for the response headers.
async fn admit(
    parts: &Parts,
    state: &AppState,
    principal: Principal,
) -> Result<Principal, ApiError> {
    if let Some(slot) = parts.extensions.get::<crate::http::CallerSlot>() {
        slot.set(
            Some(principal.user_id.clone()),
            Some(principal.key.id.clone()),
        );
    }
    let info = state.limiter.admit(&principal).await?;
    if let Some(slot) = parts.extensions.get::<crate::http::RateSlot>() {
        slot.set(info);
    }
    Ok(principal)
}
