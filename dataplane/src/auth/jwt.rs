//! User tokens: short-lived HS256 access tokens and rotating refresh tokens.
//!
//! Only HS256 is accepted, with the algorithm pinned in the validation, so a
//! token claiming `alg: none` or an asymmetric algorithm (the HS/RS
//! confusion) is refused before its signature is even considered. Refresh
//! tokens are JWTs signed with a separate secret whose `jti` is tracked in
//! `refresh_tokens`: each is good for one use, and presenting a used one
//! revokes every token of its family (someone has a stolen copy).

use std::{sync::Arc, time::Duration};

use jsonwebtoken::{
    decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

use super::{ApiKey, Principal, Scope};
use crate::{
    domain::Secret,
    error::ApiError,
    storage::{audit, now_ms, refresh_tokens, Db},
};

/// User tokens (`JWT_*`), as `config` parses them.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// (JWKS source, issuer, audience) of an outside identity provider.
    pub external: Option<(String, String, String)>,
    pub secret: Option<Secret>,
    pub expires_in: std::time::Duration,
    pub refresh_secret: Option<Secret>,
    pub refresh_expires_in: std::time::Duration,
}

/// Scopes a user token may carry: what an app's user does, never key or
/// token administration.
const TOKEN_SCOPES: [Scope; 3] = [Scope::Read, Scope::Write, Scope::AnalyticsRead];

/// The scopes asked of `POST /auth/token`: each must be one a token may
/// carry ([`TOKEN_SCOPES`]). Another (`admin`, `tokens:issue`,
/// `keys:manage`) is refused as `INVALID_BODY` naming `scopes`, not dropped
/// from the token unseen.
pub fn check_token_scopes(asked: &[Scope]) -> Result<(), ApiError> {
    match asked.iter().find(|s| !TOKEN_SCOPES.contains(s)) {
        Some(s) => Err(crate::text::Invalid::new(
            "scopes",
            format!(
                "a token may carry read, write and analytics:read, not {}",
                s.as_str()
            ),
        )
        .body()),
        None => Ok(()),
    }
}

/// The OpenAPI schema of the scopes a token may be asked for: a list of
/// [`TOKEN_SCOPES`].
pub fn token_scope_list() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(TOKEN_SCOPES.map(Scope::as_str))),
        )
        .build()
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    sub: String,
    iat: i64,
    exp: i64,
    jti: String,
    typ: String,
    scope: Vec<Scope>,
    /// The API key that issued the token family.
    kid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct RefreshClaims {
    sub: String,
    iat: i64,
    exp: i64,
    jti: String,
    typ: String,
    fam: String,
}

/// A token pair, as `/auth/token` and `/auth/refresh` return it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    /// A JWT, sent as `Authorization: Bearer …`.
    pub access_token: String,
    /// Spent by `/auth/refresh`, revoked with its family by `/auth/logout`.
    pub refresh_token: String,
    /// Access token lifetime in seconds.
    pub expires_in: u64,
    /// Always `Bearer`.
    #[schema(value_type = String, example = "Bearer")]
    pub token_type: &'static str,
}

#[derive(Clone)]
pub struct Tokens {
    access: (EncodingKey, DecodingKey),
    refresh: (EncodingKey, DecodingKey),
    access_ttl: Duration,
    refresh_ttl: Duration,
    db: Db,
}

/// Clock skew tolerated on `exp` and `nbf`, in seconds, for our tokens and
/// identity providers' alike (RFC 7519 §4.1.4–5 allow "some small leeway").
pub const LEEWAY_SECS: u64 = 5;

fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "sub"]);
    v
}

/// A refused token's reason: `token_expired`, `token_not_yet_valid` (its
/// `nbf` is ahead) or `invalid_token`.
pub fn invalid(e: jsonwebtoken::errors::Error) -> ApiError {
    let reason = match e.kind() {
        ErrorKind::ExpiredSignature => "token_expired",
        ErrorKind::ImmatureSignature => "token_not_yet_valid",
        _ => "invalid_token",
    };
    ApiError::Unauthorized { reason }
}

/// A verified access token, before its issuing key is consulted.
#[derive(Debug)]
pub struct Access {
    pub user_id: String,
    pub issued_by: String,
    scopes: Vec<Scope>,
    expires_at: i64,
}

impl Access {
    /// The user a refresh token acts for, to count its refreshes against
    /// that user's limit.
    pub fn of_refresh(row: &refresh_tokens::Stored) -> Self {
        Access {
            user_id: row.user_id.clone(),
            issued_by: row.issued_by.clone(),
            scopes: row.scopes.clone(),
            expires_at: i64::MAX,
        }
    }

    /// The rights a token principal carried when it was admitted, to be
    /// narrowed again by its issuing key as it stands now.
    pub fn held(p: &Principal) -> Self {
        Access {
            user_id: p.user_id.clone(),
            issued_by: p.key.id.clone(),
            scopes: p.key.scopes.clone(),
            expires_at: p.key.expires_at.unwrap_or(i64::MAX),
        }
    }

    /// What the token may do now: its scopes, narrowed to what the issuing
    /// key still holds, and never past the key's own expiry.
    pub fn principal(self, issuer: &ApiKey) -> Principal {
        let scopes: Vec<Scope> = self
            .scopes
            .into_iter()
            .filter(|s| issuer.allows(*s))
            .collect();
        let key = ApiKey {
            id: self.issued_by,
            name: "user token".into(),
            key_hash: String::new(),
            user_id: self.user_id.clone(),
            is_active: true,
            expires_at: Some(
                issuer
                    .expires_at
                    .map_or(self.expires_at, |e| e.min(self.expires_at)),
            ),
            can_read: issuer.allows(Scope::Read),
            can_write: issuer.allows(Scope::Write),
            scopes,
            restrictions: Default::default(),
            quotas: [None; 4],
        };
        Principal {
            user_id: self.user_id,
            key: Arc::new(key),
            credential: super::principal::Credential::UserToken,
        }
    }
}

fn sign<T: Serialize>(claims: &T, key: &EncodingKey) -> Result<String, ApiError> {
    encode(&Header::new(Algorithm::HS256), claims, key)
        .map_err(|e| ApiError::Internal(format!("cannot sign a token: {e}")))
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Tokens {
    /// `None` when `JWT_SECRET` is not configured: tokens are then off.
    pub fn new(cfg: &JwtConfig, db: Db) -> Option<Self> {
        let access = cfg.secret.as_ref()?;
        let refresh = cfg.refresh_secret.as_ref()?;
        Some(Self {
            access: (
                EncodingKey::from_secret(access.expose().as_bytes()),
                DecodingKey::from_secret(access.expose().as_bytes()),
            ),
            refresh: (
                EncodingKey::from_secret(refresh.expose().as_bytes()),
                DecodingKey::from_secret(refresh.expose().as_bytes()),
            ),
            access_ttl: cfg.expires_in,
            refresh_ttl: cfg.refresh_expires_in,
            db,
        })
    }

    /// Starts a token family for `user_id` on behalf of the issuing key.
    pub async fn issue(
        &self,
        user_id: &str,
        scopes: &[Scope],
        issued_by: &str,
    ) -> Result<Issued, ApiError> {
        let scopes: Vec<Scope> = scopes
            .iter()
            .copied()
            .filter(|s| TOKEN_SCOPES.contains(s))
            .collect();
        self.mint(user_id, &scopes, issued_by, &new_id(), None)
            .await
    }

    async fn mint(
        &self,
        user_id: &str,
        scopes: &[Scope],
        issued_by: &str,
        family: &str,
        parent: Option<&str>,
    ) -> Result<Issued, ApiError> {
        let (issued, row) = self.pair(user_id, scopes, issued_by, family, parent)?;
        let mut conn = self.db.acquire().await?;
        refresh_tokens::insert(&mut conn, &self.db, &row).await?;
        Ok(issued)
    }

    /// A signed pair and the refresh token's row, not yet stored.
    fn pair(
        &self,
        user_id: &str,
        scopes: &[Scope],
        issued_by: &str,
        family: &str,
        parent: Option<&str>,
    ) -> Result<(Issued, refresh_tokens::Row), ApiError> {
        let now = now_ms() / 1000;
        let access = AccessClaims {
            sub: user_id.to_string(),
            iat: now,
            exp: now + self.access_ttl.as_secs() as i64,
            jti: new_id(),
            typ: "access".into(),
            scope: scopes.to_vec(),
            kid: issued_by.to_string(),
        };
        let refresh = RefreshClaims {
            sub: user_id.to_string(),
            iat: now,
            exp: now + self.refresh_ttl.as_secs() as i64,
            jti: new_id(),
            typ: "refresh".into(),
            fam: family.to_string(),
        };
        let row = refresh_tokens::Row {
            jti: refresh.jti.clone(),
            family_id: family.to_string(),
            parent_jti: parent.map(str::to_string),
            user_id: user_id.to_string(),
            issued_by: issued_by.to_string(),
            scopes: scopes.to_vec(),
            expires_at: refresh.exp * 1000,
        };
        let issued = Issued {
            access_token: sign(&access, &self.access.0)?,
            refresh_token: sign(&refresh, &self.refresh.0)?,
            expires_in: self.access_ttl.as_secs(),
            token_type: "Bearer",
        };
        Ok((issued, row))
    }

    /// Verifies an access token's signature, type and times.
    pub fn verify_access(&self, token: &str) -> Result<Access, ApiError> {
        let data = decode::<AccessClaims>(token, &self.access.1, &validation()).map_err(invalid)?;
        let c = data.claims;
        if c.typ != "access" {
            return Err(ApiError::Unauthorized {
                reason: "invalid_token",
            });
        }
        // Even a token signed with our secret carries only what user tokens
        // may carry, for a user id the API would accept.
        crate::sync::validate_user_id(&c.sub).map_err(|_| ApiError::Unauthorized {
            reason: "invalid_token",
        })?;
        Ok(Access {
            user_id: c.sub,
            issued_by: c.kid,
            scopes: c
                .scope
                .into_iter()
                .filter(|s| TOKEN_SCOPES.contains(s))
                .collect(),
            expires_at: c.exp.saturating_mul(1000),
        })
    }

    fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, ApiError> {
        let data =
            decode::<RefreshClaims>(token, &self.refresh.1, &validation()).map_err(invalid)?;
        if data.claims.typ != "refresh" {
            return Err(ApiError::Unauthorized {
                reason: "invalid_token",
            });
        }
        Ok(data.claims)
    }

    /// The stored row of a refresh token that may still be redeemed (its
    /// signature, type and times verified, not revoked). Redeeming it is
    /// [`Self::rotate`], once its issuing key has been checked.
    pub async fn redeemable(&self, token: &str) -> Result<refresh_tokens::Stored, ApiError> {
        let claims = self.verify_refresh(token)?;
        let row =
            refresh_tokens::get(&self.db, &claims.jti)
                .await?
                .ok_or(ApiError::Unauthorized {
                    reason: "invalid_token",
                })?;
        if row.revoked_at.is_some() {
            return Err(ApiError::Unauthorized {
                reason: "token_revoked",
            });
        }
        Ok(row)
    }

    /// Spends `spent` and mints its successor in one transaction. The token
    /// is refused when any token of its family was revoked (a logout that
    /// raced an earlier rotation still ends the family) and when it was
    /// already used: then the whole family is revoked, since someone holds
    /// a stolen copy. The new pair carries no scope `issuer` lacks now.
    pub async fn rotate(
        &self,
        spent: &refresh_tokens::Stored,
        issuer: &ApiKey,
    ) -> Result<Issued, ApiError> {
        let scopes: Vec<Scope> = spent
            .scopes
            .iter()
            .copied()
            .filter(|s| issuer.allows(*s))
            .collect();
        let (issued, row) = self.pair(
            &spent.user_id,
            &scopes,
            &spent.issued_by,
            &spent.family_id,
            Some(&spent.jti),
        )?;
        let now = now_ms();
        let turn = self.db.write_turn().await;
        let mut tx = self.db.begin().await?;
        // The write comes first: on SQLite it takes the writer lock before
        // anything is read (a read-then-write transaction can fail busy).
        if !refresh_tokens::mark_used(&mut tx, &self.db, &spent.jti, now).await? {
            drop(tx);
            drop(turn);
            return Err(self.reused(spent).await);
        }
        if refresh_tokens::family_revoked(&mut tx, &self.db, &spent.family_id).await? {
            // Rolled back with the transaction: the token stays unspent.
            return Err(ApiError::Unauthorized {
                reason: "token_revoked",
            });
        }
        refresh_tokens::insert(&mut tx, &self.db, &row).await?;
        tx.commit().await?;
        Ok(issued)
    }

    /// A spent refresh token came back: revoke its family and say so.
    async fn reused(&self, row: &refresh_tokens::Stored) -> ApiError {
        if let Err(e) = refresh_tokens::revoke_family(&self.db, &row.family_id, now_ms()).await {
            return e.into();
        }
        let entry = crate::audit::Entry {
            actor: row.user_id.clone(),
            key_id: Some(row.issued_by.clone()),
            action: "token.reuse_detected",
            target: Some(row.family_id.clone()),
            result: "family_revoked".into(),
            ..Default::default()
        };
        if let Err(e) = audit::record(&self.db, &entry).await {
            tracing::warn!(error = %e, "audit entry not written");
        }
        tracing::warn!(family = %row.family_id, user_id = %row.user_id, "refresh token reused; family revoked");
        ApiError::Unauthorized {
            reason: "token_reused",
        }
    }

    /// Revokes the family of a refresh token.
    pub async fn logout(&self, token: &str) -> Result<(), ApiError> {
        let claims = self.verify_refresh(token)?;
        refresh_tokens::revoke_family(&self.db, &claims.fam, now_ms()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{domain::Secret, storage::DatabaseConfig};
    use proptest::prelude::*;

    /// Tokens over a throwaway SQLite file (verification never touches it).
    fn tokens() -> Tokens {
        let dir = std::env::temp_dir().join(format!("syncstore-jwt-{}", std::process::id()));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let db = rt
            .block_on(Db::connect(
                &DatabaseConfig {
                    url: None,
                    connection_limit: 1,
                    ssl: false,
                },
                &dir,
            ))
            .expect("sqlite");
        let cfg = JwtConfig {
            external: None,
            secret: Some(Secret::new("a-test-secret-of-at-least-32-characters")),
            expires_in: Duration::from_secs(900),
            refresh_secret: Some(Secret::new("another-test-secret-of-32-characters!")),
            refresh_expires_in: Duration::from_secs(86400),
        };
        Tokens::new(&cfg, db).expect("tokens on")
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        URL_SAFE_NO_PAD.encode(bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any string is refused as UNAUTHORIZED, never a panic or another error.
        #[test]
        fn arbitrary_text_is_unauthorized(token in ".{0,300}") {
            let t = tokens();
            let refused = matches!(t.verify_access(&token), Err(ApiError::Unauthorized { .. }));
            prop_assert!(refused, "{:?}", token);
        }

        /// Well-formed JWTs with arbitrary headers, claims and signatures:
        /// still refused cleanly, unless signed with our key.
        #[test]
        fn forged_structures_are_unauthorized(
            header in prop::collection::vec(any::<u8>(), 0..80),
            claims in prop::collection::vec(any::<u8>(), 0..200),
            sig in prop::collection::vec(any::<u8>(), 0..64),
            alg in prop::sample::select(vec!["HS256", "none", "RS256", "HS512", ""]),
        ) {
            let t = tokens();
            let h = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
            for token in [
                format!("{}.{}.{}", b64(&header), b64(&claims), b64(&sig)),
                format!("{}.{}.{}", b64(h.as_bytes()), b64(&claims), b64(&sig)),
                format!("{}.{}.", b64(h.as_bytes()), b64(br#"{"sub":"u","exp":99999999999,"typ":"access","kid":"k","scope":[]}"#)),
            ] {
                let refused = matches!(t.verify_access(&token), Err(ApiError::Unauthorized { .. }));
                prop_assert!(refused, "{}", token);
            }
        }
    }
}
