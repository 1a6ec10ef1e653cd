//! API keys: generation, hashing, the stored record, and lookup.
//!
//! A key is `PREFIX` + 43 characters of base64url (32 random bytes). Only
//! its SHA-256 is stored. A high-entropy secret needs no slow hash: nobody
//! can brute-force 256 bits, and a fast hash keeps lookups cheap.

use std::{sync::Arc, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Scope;
use crate::{
    access::{ApiKey, NewKey},
    error::ApiError,
    storage::Db,
};

/// Key fields are checked in one place (`key_fields`); restrictions by
/// compiling them.
impl NewKey {
    /// Checks the text fields by the one text rule (see `text`).
    pub fn check_text(&self) -> Result<(), crate::text::Invalid> {
        super::key_fields::check_text(
            Some(&self.name),
            Some(&self.user_id),
            [
                ("ipRestrictions", Some(self.ip_restrictions.as_slice())),
                (
                    "countryRestrictions",
                    Some(self.country_restrictions.as_slice()),
                ),
                (
                    "domainRestrictions",
                    Some(self.domain_restrictions.as_slice()),
                ),
                (
                    "userAgentPatterns",
                    Some(self.user_agent_patterns.as_slice()),
                ),
            ],
        )
    }

    /// The restrictions compiled, which also validates them.
    pub fn restrictions(&self) -> Result<super::restrictions::Restrictions, String> {
        super::restrictions::Restrictions::from_lists(
            &self.ip_restrictions,
            &self.country_restrictions,
            &self.domain_restrictions,
            &self.user_agent_patterns,
        )
    }
}

/// A fresh random key with the configured prefix.
pub fn generate_key(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The hex SHA-256 stored in `key_hash`.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Key lookup with a short-lived cache, so that authenticating a request
/// is not a database round trip. A deactivated key stops working within
/// `CACHE_TTL`.
#[derive(Clone)]
pub struct KeyStore {
    db: Db,
    /// By key hash.
    cache: moka::sync::Cache<String, Option<Arc<ApiKey>>>,
    /// By key id (issuing keys of user tokens).
    by_id: moka::sync::Cache<String, Option<Arc<ApiKey>>>,
    /// `syncstore_key_cache_lookups_total`, when counted (see [`Self::counted`]).
    lookups: Option<prometheus::IntCounterVec>,
}

/// How long a looked-up key (or a miss) is trusted without asking the database.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

impl KeyStore {
    pub fn new(db: Db) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(CACHE_TTL)
            .build();
        let by_id = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(CACHE_TTL)
            .build();
        Self {
            db,
            cache,
            by_id,
            lookups: None,
        }
    }

    /// Counts every lookup's cache hit or miss in `metrics`.
    pub fn counted(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.lookups = Some(metrics.key_cache.clone());
        self
    }

    fn count(&self, cache: &str, hit: bool) {
        if let Some(lookups) = &self.lookups {
            let result = if hit { "hit" } else { "miss" };
            lookups.with_label_values(&[cache, result]).inc();
        }
    }

    /// The active record for a presented key, if any. The stored hash is
    /// compared with the presented key's hash in constant time.
    pub async fn find(&self, presented: &str) -> Result<Option<Arc<ApiKey>>, ApiError> {
        self.find_hash(&hash_key(presented)).await
    }

    /// The active record for a key's hash (a socket re-checking the key it
    /// presented keeps only the hash, never the key).
    pub async fn find_hash(&self, hash: &str) -> Result<Option<Arc<ApiKey>>, ApiError> {
        let hash = hash.to_string();
        let cached = self.cache.get(&hash);
        self.count("hash", cached.is_some());
        let record = match cached {
            Some(hit) => hit,
            None => {
                let found = crate::storage::keys::find_by_hash(&self.db, &hash)
                    .await?
                    .map(Arc::new);
                self.cache.insert(hash.clone(), found.clone());
                found
            }
        };
        Ok(record.filter(|k| bool::from(k.key_hash.as_bytes().ct_eq(hash.as_bytes()))))
    }

    /// The record of key `id`, cached like [`Self::find`]: how a user token
    /// finds its issuing key on every use.
    pub async fn by_id(&self, id: &str) -> Result<Option<Arc<ApiKey>>, ApiError> {
        let cached = self.by_id.get(id);
        self.count("id", cached.is_some());
        if let Some(hit) = cached {
            return Ok(hit);
        }
        let found = crate::storage::keys::find_by_id(&self.db, id)
            .await?
            .map(Arc::new);
        self.by_id.insert(id.to_string(), found.clone());
        Ok(found)
    }

    /// Forgets a cached lookup (after a key changed), on this pod at once;
    /// other pods notice within [`CACHE_TTL`].
    pub fn forget(&self, key_hash: &str, id: &str) {
        self.cache.invalidate(key_hash);
        self.by_id.invalidate(id);
    }

    /// Makes sure the bootstrap key exists with every scope for `user_id`.
    /// Returns true when it was created by this call.
    pub async fn ensure(&self, key: &str, user_id: &str) -> Result<bool, ApiError> {
        let hash = hash_key(key);
        if crate::storage::keys::find_by_hash(&self.db, &hash)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let new = NewKey {
            name: "bootstrap".into(),
            user_id: user_id.into(),
            scopes: Scope::ALL.to_vec(),
            ..NewKey::default()
        };
        crate::storage::keys::insert(&self.db, &new, &hash, &hint(key)).await?;
        Ok(true)
    }
}

/// The first characters of a key, enough for a person to tell keys apart.
/// What the management API shows of a key: its first 12 characters.
pub fn hint(key: &str) -> String {
    let shown: String = key.chars().take(12).collect();
    format!("{shown}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_carry_the_prefix_and_32_random_bytes() {
        let a = generate_key("sk_live_");
        let b = generate_key("sk_live_");
        assert!(a.starts_with("sk_live_") && a.len() == 8 + 43);
        assert_ne!(a, b);
        assert!(a[8..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn scopes_and_flags_both_gate_read_and_write() {
        let mut key = ApiKey {
            id: "k".into(),
            name: "n".into(),
            key_hash: String::new(),
            user_id: "u".into(),
            is_active: true,
            expires_at: None,
            can_read: true,
            can_write: false,
            scopes: vec![Scope::Read, Scope::Write],
            restrictions: Default::default(),
            quotas: [None; 4],
        };
        assert!(key.allows(Scope::Read) && !key.allows(Scope::Write));
        key.scopes = vec![Scope::Admin];
        key.can_write = true;
        assert!(key.allows(Scope::Write) && key.allows(Scope::KeysManage));
        key.scopes = vec![Scope::Read];
        assert!(!key.allows(Scope::Write) && !key.allows(Scope::AnalyticsRead));
    }
}
