//! Tokens from an outside identity provider: RS256/ES256 JWTs verified with
//! the provider's JWKS (`JWT_JWKS_URL`, a file path or an http(s) URL read
//! at startup), checking `iss` (`JWT_ISSUER`) and `aud` (`JWT_AUDIENCE`).
//!
//! Each key's algorithm comes from the key itself (RSA -> RS256, EC P-256 ->
//! ES256), never from the token header, and symmetric keys in the set are
//! ignored: a token cannot pick its own verification.

use std::{collections::HashMap, sync::Arc};

use jsonwebtoken::{
    decode,
    jwk::{AlgorithmParameters, JwkSet},
    Algorithm, DecodingKey, Validation,
};
use serde::Deserialize;

use super::{ApiKey, Principal, Scope};
use crate::error::ApiError;

/// Scopes an outside token may grant (a `scope` claim narrows them).
const GRANTABLE: [Scope; 3] = [Scope::Read, Scope::Write, Scope::AnalyticsRead];

#[derive(Clone)]
pub struct External {
    keys: Arc<HashMap<String, (DecodingKey, Algorithm)>>,
    issuer: String,
    audience: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    scope: Option<String>,
}

impl External {
    /// Reads the key set from a file or URL.
    pub async fn load(source: &str, issuer: &str, audience: &str) -> Result<Self, String> {
        let text = if source.starts_with("http://") || source.starts_with("https://") {
            reqwest::get(source)
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| format!("cannot fetch {source}: {e}"))?
                .text()
                .await
                .map_err(|e| e.to_string())?
        } else {
            std::fs::read_to_string(source).map_err(|e| format!("cannot read {source}: {e}"))?
        };
        let set: JwkSet = serde_json::from_str(&text).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk))
            else {
                continue;
            };
            keys.insert(kid, (key, alg));
        }
        if keys.is_empty() {
            return Err("the JWKS holds no usable RSA or EC key with a kid".into());
        }
        Ok(External {
            keys: Arc::new(keys),
            issuer: issuer.to_string(),
            audience: audience.to_string(),
        })
    }

    pub fn verify(
        &self,
        token: &str,
        header_alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Principal, ApiError> {
        let invalid = ApiError::Unauthorized {
            reason: "invalid_token",
        };
        let (key, alg) = kid.and_then(|k| self.keys.get(k)).ok_or(invalid)?;
        if *alg != header_alg {
            return Err(ApiError::Unauthorized {
                reason: "invalid_token",
            });
        }
        let mut v = Validation::new(*alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        v.leeway = super::jwt::LEEWAY_SECS;
        v.validate_nbf = true;
        let claims = decode::<Claims>(token, key, &v)
            .map_err(super::jwt::invalid)?
            .claims;
        let scopes: Vec<Scope> = match &claims.scope {
            Some(s) => s
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .filter(|s| GRANTABLE.contains(s))
                .collect(),
            None => vec![Scope::Read, Scope::Write],
        };
        crate::sync::validate_user_id(&claims.sub).map_err(|_| ApiError::Unauthorized {
            reason: "invalid_token",
        })?;
        let key = ApiKey {
            id: format!("jwks:{}", self.issuer),
            name: "identity provider token".into(),
            key_hash: String::new(),
            user_id: claims.sub.clone(),
            is_active: true,
            expires_at: Some(claims.exp * 1000),
            can_read: true,
            can_write: true,
            scopes,
            restrictions: Default::default(),
            quotas: [None; 4],
        };
        Ok(Principal {
            user_id: claims.sub,
            key: Arc::new(key),
            credential: super::principal::Credential::External,
        })
    }
}
