//! Key management: the one service behind `/api/v1/api-keys` and
//! `syncstore keys`. Every action is one transaction, and every result is
//! judged by [`policy::check`] before it is stored, so no caller can leave a
//! key holding more than it holds itself (see `auth::policy`).

use std::time::Duration;

use crate::{
    auth::{
        generate_key, hash_key, hint,
        key_fields::KeyFields,
        policy::{self, Authority},
        ApiKey, KeyStore, NewKey,
    },
    error::ApiError,
    storage::{keys, keys::KeyView, now_ms, Db},
};

/// A key as stored, and the key itself: shown once, never stored.
pub struct Created {
    pub view: KeyView,
    pub key: String,
}

/// Key management with the rules of `auth::policy`.
#[derive(Clone)]
pub struct Keys {
    db: Db,
    store: KeyStore,
    prefix: String,
    rotation_grace: Duration,
}

/// The key record as the policy sees it; a restriction that does not
/// compile is a bad body.
pub fn as_key(v: &KeyView) -> Result<ApiKey, ApiError> {
    v.as_key().map_err(ApiError::InvalidBody)
}

impl Keys {
    pub fn new(db: Db, store: KeyStore, prefix: String, rotation_grace: Duration) -> Self {
        Self {
            db,
            store,
            prefix,
            rotation_grace,
        }
    }

    /// A new key as `new` and then `settings` describe it. `canRead` and
    /// `canWrite` follow the scopes unless `settings` says otherwise.
    pub async fn create(
        &self,
        by: Authority<'_>,
        new: &NewKey,
        settings: KeyFields,
    ) -> Result<Created, ApiError> {
        let key = generate_key(&self.prefix);
        let mut view = KeyView::new_row(new, &hash_key(&key), &hint(&key), now_ms());
        settings.apply(&mut view)?;
        policy::check(by, None, &as_key(&view)?)?;
        let mut conn = self.db.pool().acquire().await?;
        keys::insert_in(&mut conn, &self.db, &view).await?;
        Ok(Created { view, key })
    }

    /// One key, if `owner` (when given) owns it.
    pub async fn get(&self, id: &str, owner: Option<&str>) -> Result<KeyView, ApiError> {
        keys::get(&self.db, id, owner)
            .await?
            .ok_or(ApiError::NotFound {
                key: id.to_string(),
            })
    }

    /// Keys of `owner`, or of everyone.
    pub async fn list(&self, owner: Option<&str>) -> Result<Vec<KeyView>, ApiError> {
        Ok(keys::list(&self.db, owner).await?)
    }

    /// Applies `change` to key `id` (of `owner`, when given) in one
    /// transaction, refusing a result that exceeds `by`.
    pub async fn update(
        &self,
        by: Authority<'_>,
        id: &str,
        owner: Option<&str>,
        change: KeyFields,
    ) -> Result<KeyView, ApiError> {
        if change.user_id.is_some() {
            return Err(ApiError::InvalidBody("userId cannot change".into()));
        }
        let _turn = self.db.write_turn().await;
        let mut tx = self.db.pool().begin().await?;
        keys::lock_in(&mut tx, &self.db, id).await?;
        let mut view = keys::get_in(&mut tx, &self.db, id, owner)
            .await?
            .ok_or(ApiError::NotFound { key: id.into() })?;
        let before = as_key(&view)?;
        change.apply(&mut view)?;
        policy::check(by, Some(&before), &as_key(&view)?)?;
        keys::update_in(&mut tx, &self.db, &view).await?;
        tx.commit().await?;
        self.store.forget(&view.key_hash, &view.id);
        Ok(view)
    }

    /// A new key with every setting of key `id` but its own identity, while
    /// the old one keeps working for the rotation grace period; one
    /// transaction. Returns the new key and when the old one now expires.
    pub async fn rotate(
        &self,
        by: Authority<'_>,
        id: &str,
        owner: Option<&str>,
    ) -> Result<(Created, Option<i64>), ApiError> {
        let _turn = self.db.write_turn().await;
        let mut tx = self.db.pool().begin().await?;
        keys::lock_in(&mut tx, &self.db, id).await?;
        let mut old = keys::get_in(&mut tx, &self.db, id, owner)
            .await?
            .ok_or(ApiError::NotFound { key: id.into() })?;
        let key = generate_key(&self.prefix);
        let now = now_ms();
        let mut view = KeyView {
            id: uuid::Uuid::now_v7().to_string(),
            key_hash: hash_key(&key),
            key_hint: hint(&key),
            created_at: now,
            updated_at: now,
            usage_today: 0,
            usage_this_month: 0,
            last_used_at: None,
            ..old.clone()
        };
        // The new key holds what the old one holds, and is judged like a
        // new key: a caller may only rotate a key it could have made. Its
        // expiry is capped at the caller's, so that rotation never mints a
        // credential that outlives the one that asked for it.
        if let Authority::Key(actor) = by {
            if let Some(bound) = actor.expires_at {
                view.expires_at = Some(view.expires_at.map_or(bound, |e| e.min(bound)));
            }
        }
        policy::check(by, None, &as_key(&view)?)?;
        keys::insert_in(&mut tx, &self.db, &view).await?;
        let grace = i64::try_from(self.rotation_grace.as_millis()).unwrap_or(i64::MAX);
        let grace_end = now.saturating_add(grace);
        old.expires_at = Some(old.expires_at.map_or(grace_end, |e| e.min(grace_end)));
        keys::update_in(&mut tx, &self.db, &old).await?;
        tx.commit().await?;
        self.store.forget(&old.key_hash, &old.id);
        Ok((Created { view, key }, old.expires_at))
    }

    /// Deletes key `id` (of `owner`, when given). Deleting never grants.
    pub async fn delete(&self, id: &str, owner: Option<&str>) -> Result<KeyView, ApiError> {
        let view = self.get(id, owner).await?;
        if !keys::delete(&self.db, id).await? {
            return Err(ApiError::NotFound { key: id.into() });
        }
        self.store.forget(&view.key_hash, &view.id);
        Ok(view)
    }
}
