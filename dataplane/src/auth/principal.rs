//! The authenticated caller of a request, and how it is established.

use std::sync::Arc;

use super::{
    restrictions::{caller_from, Caller},
    ApiKey, KeyStore, Scope, Tokens,
};
use crate::{analytics::report::Viewer, error::ApiError, storage::now_ms};

/// The credentials a request or a handshake presents.
#[derive(Debug, Default, Clone, Copy)]
pub struct Presented<'a> {
    /// `X-API-Key`, or the handshake's `auth.apiKey` (or `?apiKey=`).
    pub api_key: Option<&'a str>,
    /// `Authorization`, or the handshake's `auth.token` as a bearer token.
    pub authorization: Option<Authorization<'a>>,
    /// A credential was presented in a form that names no one credential:
    /// a header sent twice, a handshake field that is not a string, or an
    /// API key in both the handshake's `auth` and its query that differ.
    pub malformed: bool,
}

/// An `Authorization` value.
#[derive(Debug, Clone, Copy)]
pub enum Authorization<'a> {
    /// `Bearer <token>` (RFC 6750; the scheme is case-insensitive).
    Bearer(&'a str),
    /// Any other scheme, or a value that is not text.
    Other,
}

impl<'a> Authorization<'a> {
    /// Reads an `Authorization` header value.
    pub fn parse(value: &'a [u8]) -> Self {
        let text = std::str::from_utf8(value).unwrap_or_default();
        match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Authorization::Bearer(token)
            }
            _ => Authorization::Other,
        }
    }
}

/// The caller: the user it acts as, and the key that vouched for it.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    /// The API key presented, or for a user token the rights it carries now
    /// (its issuing key's id, scopes narrowed to what that key holds).
    pub key: Arc<ApiKey>,
    pub credential: Credential,
}

/// A refresh token about to be traded, and the key that issued its family.
pub struct Refresh {
    pub spent: crate::storage::refresh_tokens::Stored,
    pub issuer: Arc<ApiKey>,
}

impl Refresh {
    /// The token's user, as the limiter counts it (the user's own counter).
    pub fn user(&self) -> Principal {
        super::jwt::Access::of_refresh(&self.spent).principal(&self.issuer)
    }
}

/// What was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    ApiKey,
    /// One of our user tokens (`key` is the issuing key).
    UserToken,
    /// An identity provider's token (JWKS).
    External,
}

impl Principal {
    /// Tenant scoping: the user whose data this caller may reach, or `None`
    /// for an admin credential, which reaches every user's.
    pub fn tenant(&self) -> Option<&str> {
        (!self.key.allows(super::Scope::Admin)).then_some(self.user_id.as_str())
    }

    /// What this caller may see of the analytics: everything with
    /// `analytics:read` (or `admin`), otherwise its own user's figures.
    pub fn analytics_viewer(&self) -> Viewer {
        if self.key.allows(Scope::AnalyticsRead) {
            Viewer::All
        } else {
            Viewer::Own(self.user_id.clone())
        }
    }

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

    /// What is known about the caller of a request (REST) or handshake
    /// (Socket.IO): its client address, country, origin and user agent.
    ///
    /// The one place the TCP peer (`ConnectInfo`) is read, so that
    /// restrictions, sessions, the audit trail and analytics all see the
    /// same client. It runs once per REST request (the router's `track`
    /// puts it in the request's [`super::RequestContext`]) and once per
    /// Socket.IO handshake.
    pub fn caller(
        &self,
        headers: &axum::http::HeaderMap,
        extensions: &axum::http::Extensions,
    ) -> Caller {
        let peer = extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
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

    /// The one rule for which credential counts, on every edge (REST
    /// headers, the Socket.IO handshake): an API key when one is presented,
    /// else a bearer token. A proxy's `Authorization: Basic …` or a stale
    /// token beside a valid key does not override the key. Every refusal is
    /// recorded (see [`Self::refused`]), with the key's id once known.
    pub async fn authenticate(
        &self,
        presented: Presented<'_>,
        caller: &Caller,
    ) -> Result<Principal, (ApiError, Option<String>)> {
        let key = presented.api_key.filter(|k| !k.trim().is_empty());
        let unauthorized = |reason| Err(ApiError::Unauthorized { reason });
        let result = match (presented.malformed, key, presented.authorization) {
            (true, ..) => unauthorized("malformed_credentials"),
            (false, None, Some(Authorization::Bearer(token))) => self.bearer(token).await,
            (false, None, Some(Authorization::Other)) => {
                unauthorized("invalid_authorization_header")
            }
            _ => return self.api_key(presented.api_key, caller).await,
        };
        result.map_err(|e| {
            self.refused(&e, None, caller);
            (e, None)
        })
    }

    /// Authenticates a user token: ours (HS256) or, with a JWKS configured,
    /// an identity provider's (RS256/ES256). The header only routes the
    /// token; each path pins its own algorithm.
    pub async fn bearer(&self, token: &str) -> Result<Principal, ApiError> {
        let token = token.trim();
        let header = jsonwebtoken::decode_header(token).map_err(|_| ApiError::Unauthorized {
            reason: "invalid_token",
        })?;
        let invalid = ApiError::Unauthorized {
            reason: "invalid_token",
        };
        match (header.alg, &self.tokens, &self.external) {
            (jsonwebtoken::Algorithm::HS256, Some(tokens), _) => {
                let access = tokens.verify_access(token)?;
                let issuer = self.issuer(&access.issued_by).await?;
                Ok(access.principal(&issuer))
            }
            (jsonwebtoken::Algorithm::HS256, None, _) | (_, _, None) => Err(invalid),
            (alg, _, Some(external)) => external.verify(token, alg, header.kid.as_deref()),
        }
    }

    /// The key that issued a token family, if it may still vouch for it:
    /// active, unexpired and holding `tokens:issue`. Otherwise every token
    /// of its families is refused (401, `issuer_revoked`), within the key
    /// cache's lifetime.
    pub async fn issuer(&self, key_id: &str) -> Result<Arc<ApiKey>, ApiError> {
        let revoked = || ApiError::Unauthorized {
            reason: "issuer_revoked",
        };
        let key = self.keys.by_id(key_id).await?.ok_or_else(revoked)?;
        let valid = key.is_active
            && key.expires_at.is_none_or(|t| t > now_ms())
            && key.allows(Scope::TokensIssue);
        if valid {
            Ok(key)
        } else {
            Err(revoked())
        }
    }

    /// A refresh token that may be traded for a new pair: verified, not
    /// revoked, and its issuing key still valid. [`Refresh::user`] is who
    /// to count it against; [`super::Tokens::rotate`] trades it.
    pub async fn refreshable(&self, token: &str) -> Result<Refresh, ApiError> {
        let spent = self.tokens()?.redeemable(token).await?;
        let issuer = self.issuer(&spent.issued_by).await?;
        Ok(Refresh { spent, issuer })
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Authenticates an API key, recording a refusal; the refused key's id,
    /// once it is known, comes with the error (for analytics of denials per
    /// key).
    async fn api_key(
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
        let id = key.id.clone();
        Self::admit_key(key, caller).map_err(|e| (e, Some(id)))
    }

    /// A found key's own checks: active, unexpired, restrictions met.
    fn admit_key(key: Arc<ApiKey>, caller: &Caller) -> Result<Principal, ApiError> {
        if !key.is_active {
            return Err(ApiError::KeyInactive);
        }
        if key.expires_at.is_some_and(|t| t <= now_ms()) {
            return Err(ApiError::KeyExpired);
        }
        if let Err(e) = key.restrictions.check(caller) {
            // The address as text, or no `ip` field when it is unknown.
            let ip = caller.ip.map(tracing::field::display);
            tracing::info!(key_id = %key.id, code = e.code(), ip, "API key restriction denied");
            return Err(e);
        }
        Ok(Principal {
            user_id: key.user_id.clone(),
            key,
            credential: Credential::ApiKey,
        })
    }

    /// Re-checks a credential that a socket presented at its handshake (or
    /// renewed since), as it stands now: the key deactivated, deleted,
    /// expired, rotated past its grace period or restricted anew; the token
    /// expired or its issuing key no longer valid. The answer is the error
    /// REST would give for the same credential.
    pub async fn recheck(&self, held: &Principal, caller: &Caller) -> Result<Principal, ApiError> {
        match held.credential {
            Credential::ApiKey => {
                let key = self.keys.find_hash(&held.key.key_hash).await?.ok_or(
                    ApiError::Unauthorized {
                        reason: "unknown_key",
                    },
                )?;
                Self::admit_key(key, caller)
            }
            Credential::UserToken => {
                let issuer = self.issuer(&held.key.id).await?;
                expiry(held)?;
                Ok(super::jwt::Access::held(held).principal(&issuer))
            }
            Credential::External => {
                expiry(held)?;
                Ok(held.clone())
            }
        }
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

/// A token past its `exp` (beyond the leeway) is refused as REST would.
fn expiry(held: &Principal) -> Result<(), ApiError> {
    let leeway_ms = i64::try_from(super::jwt::LEEWAY_SECS * 1000).unwrap_or(0);
    match held.key.expires_at {
        Some(exp) if exp + leeway_ms <= now_ms() => Err(ApiError::Unauthorized {
            reason: "token_expired",
        }),
        _ => Ok(()),
    }
}
