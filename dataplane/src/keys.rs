//! Key management: the one service behind `/api/v1/api-keys`, `syncstore
//! keys` and the operator's ApiKey objects. Every action is one
//! transaction. What a caller asks for through the API or the CLI is judged
//! by [`policy::check`] before it is stored, so no caller can leave a key
//! holding more than it holds itself (see `auth::policy`). What the
//! operator declares ([`Keys::put`], [`Keys::retire`], [`Keys::revoke`]) is
//! stored as declared: it acts with the owner's authority, granted by
//! Kubernetes RBAC on the ApiKey object, not with a key's.

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

/// What [`Keys::put`] did to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    Updated,
    Unchanged,
}

/// What [`Keys::revoke`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The key was active and no longer is.
    Now,
    /// The key was inactive already.
    Already,
    NoSuchKey,
}

/// A key as its owner declares it (an ApiKey object's spec): every setting
/// the declaration controls, and the seed's `canRead`/`canWrite` flags.
pub struct Declared<'a> {
    pub key: &'a NewKey,
    pub can_read: bool,
    pub can_write: bool,
}

impl Declared<'_> {
    /// `view` with every declared setting applied, active.
    fn apply(&self, mut view: KeyView) -> KeyView {
        let new = self.key;
        view.name = new.name.clone();
        view.is_active = true;
        view.expires_at = new.expires_at;
        view.can_read = self.can_read;
        view.can_write = self.can_write;
        view.scopes = new.scopes.clone();
        view.ip_restrictions = new.ip_restrictions.clone();
        view.country_restrictions = new.country_restrictions.clone();
        view.domain_restrictions = new.domain_restrictions.clone();
        view.user_agent_patterns = new.user_agent_patterns.clone();
        [
            view.quota_per_minute,
            view.quota_per_hour,
            view.quota_per_day,
            view.quota_per_month,
        ] = new.quotas;
        view
    }
}

/// Every setting a declaration controls, for comparing two rows.
#[allow(clippy::type_complexity)]
fn settings(
    v: &KeyView,
) -> (
    &str,
    bool,
    Option<i64>,
    [bool; 2],
    &[crate::auth::Scope],
    [&[String]; 4],
    [Option<i64>; 4],
) {
    (
        &v.name,
        v.is_active,
        v.expires_at,
        [v.can_read, v.can_write],
        &v.scopes,
        [
            &v.ip_restrictions,
            &v.country_restrictions,
            &v.domain_restrictions,
            &v.user_agent_patterns,
        ],
        [
            v.quota_per_minute,
            v.quota_per_hour,
            v.quota_per_day,
            v.quota_per_month,
        ],
    )
}

/// `expiry` brought forward to `bound` if it is later or unset.
fn capped(expiry: Option<i64>, bound: i64) -> i64 {
    expiry.map_or(bound, |e| e.min(bound))
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
        let mut conn = self.db.acquire().await?;
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
        let mut tx = self.db.begin().await?;
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
        let mut tx = self.db.begin().await?;
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
        old.expires_at = Some(capped(old.expires_at, self.grace_end(now)));
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

/// The operator's side: keys declared by their owner, stored as declared.
impl Keys {
    /// Stores key `material` with the settings `declared` holds: a new row
    /// when none has its hash, otherwise that row brought in line (active
    /// again, if it was deactivated). Returns the row's id and what changed.
    pub async fn put(
        &self,
        material: &str,
        declared: &Declared<'_>,
    ) -> Result<(String, Put), ApiError> {
        let hash = hash_key(material);
        let _turn = self.db.write_turn().await;
        let mut tx = self.db.begin().await?;
        let Some(found) = keys::find_by_hash_in(&mut tx, &self.db, &hash).await? else {
            let row = KeyView::new_row(declared.key, &hash, &hint(material), now_ms());
            let row = declared.apply(row);
            keys::insert_in(&mut tx, &self.db, &row).await?;
            tx.commit().await?;
            return Ok((row.id, Put::Created));
        };
        let put = self
            .bring_in_line(&mut tx, &found.id, |v| declared.apply(v))
            .await?;
        tx.commit().await?;
        Ok((found.id, put))
    }

    /// The key rotated out, `material`: keeps the declared settings but
    /// stops working at the end of the rotation grace period from now (or
    /// at its own expiry, if sooner), and stays as active as it is. Returns
    /// its row's id, if it has one.
    pub async fn retire(
        &self,
        material: &str,
        declared: &Declared<'_>,
    ) -> Result<Option<String>, ApiError> {
        let _turn = self.db.write_turn().await;
        let mut tx = self.db.begin().await?;
        let Some(old) = keys::find_by_hash_in(&mut tx, &self.db, &hash_key(material)).await? else {
            return Ok(None);
        };
        let ends = capped(old.expires_at, self.grace_end(now_ms()));
        self.bring_in_line(&mut tx, &old.id, |view| {
            let active = view.is_active;
            let mut wanted = declared.apply(view);
            wanted.is_active = active;
            wanted.expires_at = Some(capped(declared.key.expires_at, ends));
            wanted
        })
        .await?;
        tx.commit().await?;
        Ok(Some(old.id))
    }

    /// When a key rotated out at `now` stops working.
    fn grace_end(&self, now: i64) -> i64 {
        let grace = i64::try_from(self.rotation_grace.as_millis()).unwrap_or(i64::MAX);
        now.saturating_add(grace)
    }

    /// Row `id` as `wanted` makes it, written only when a setting differs.
    async fn bring_in_line(
        &self,
        tx: &mut sqlx::AnyConnection,
        id: &str,
        wanted: impl FnOnce(KeyView) -> KeyView,
    ) -> Result<Put, ApiError> {
        keys::lock_in(tx, &self.db, id).await?;
        let view = keys::get_in(tx, &self.db, id, None)
            .await?
            .ok_or(ApiError::NotFound { key: id.into() })?;
        let wanted = wanted(view.clone());
        if settings(&view) == settings(&wanted) {
            return Ok(Put::Unchanged);
        }
        keys::update_in(tx, &self.db, &wanted).await?;
        self.store.forget(&view.key_hash, &view.id);
        Ok(Put::Updated)
    }

    /// Deactivates row `id`.
    pub async fn revoke(&self, id: &str) -> Result<Revoked, ApiError> {
        let Some(row) = keys::find_by_id(&self.db, id).await? else {
            return Ok(Revoked::NoSuchKey);
        };
        if !row.is_active {
            return Ok(Revoked::Already);
        }
        keys::set_active(&self.db, id, false).await?;
        self.store.forget(&row.key_hash, id);
        Ok(Revoked::Now)
    }

    /// The id of the row of key `material`, if there is one.
    pub async fn find(&self, material: &str) -> Result<Option<String>, ApiError> {
        Ok(keys::find_by_hash(&self.db, &hash_key(material))
            .await?
            .map(|row| row.id))
    }

    /// Key `id`'s uses today and this month (UTC) and its last use, ms.
    pub async fn usage(&self, id: &str) -> Result<(i64, i64, Option<i64>), ApiError> {
        let (day, month) = crate::auth::usage::day_and_month(chrono::Utc::now());
        Ok(keys::current_usage(&self.db, id, day, month)
            .await?
            .unwrap_or((0, 0, None)))
    }
}
