//! ApiKey reconcile. The key's Secret is the source of truth: a key is
//! generated only when the Secret is missing or a rotation is asked for,
//! and the store's row is found by the key's hash. So a reconcile that dies
//! halfway and runs again finds what the first one did instead of
//! generating a second key.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta, jiff::Timestamp,
    ByteString,
};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{finalizer, Event},
    },
    Api, Resource, ResourceExt,
};
use syncstore::{
    auth::{generate_key, KeyStore, NewKey, Scope},
    error::ApiError,
    keys::{Declared, Keys, Put},
    storage::{now_ms, Db},
};
use syncstore_crds::{ApiKey, ApiKeyStatus, DeletionPolicy, SyncStore, ROTATE_ANNOTATION};

use crate::{
    apply::secret_value,
    children::{self, MANAGER},
    conditions::{is_true, merge, Verdict},
    context::{paused, retry_after, Context, Error, Result, StoreDb},
    events::publish,
    keyrows, store, trace,
};

pub const KIND: &str = "ApiKey";
/// Finalizer that revokes the key's row before the ApiKey goes.
pub const FINALIZER: &str = "syncstore.dev/revoke";
/// On the key Secret: the rotate-annotation value its key was made for.
const ROTATION_MARK: &str = "syncstore.dev/rotation";
const KEY: &str = "apiKey";
const PREVIOUS: &str = "previousApiKey";

pub async fn reconcile(key: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let ns = key.namespace().unwrap_or_default();
    let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = key.uid().unwrap_or_default();
    let deleting = key.meta().deletion_timestamp.is_some();
    // Deletion is an explicit request and goes on while paused.
    let own = paused(key.as_ref());
    if !deleting && (own || store_paused(&key, &ctx).await?) {
        ctx.succeeded(&uid);
        let store = (!own).then_some(key.spec.store_ref.as_str());
        update_status(&ctx, &api, &key, |current| ApiKeyStatus {
            conditions: merge(
                &current.conditions,
                &[store::pause_verdict(store)],
                key.metadata.generation,
                Timestamp::now(),
            ),
            ..current.clone()
        })
        .await?;
        return Ok(Action::await_change());
    }
    // The watch's copy may be behind the finalizer patch (see
    // `finalizing`): the helper then works from the live object.
    let key = match crate::finalizing::fresh(&api, key, FINALIZER).await {
        Ok(Some(live)) => live,
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    };
    let deleting = key.meta().deletion_timestamp.is_some();
    let result = finalizer(&api, FINALIZER, key.clone(), |event| async {
        match event {
            Event::Apply(k) => trace::step("apply key", apply_key(&k, &ctx)).await,
            Event::Cleanup(k) => trace::step("revoke key", revoke(&k, &ctx)).await,
        }
    })
    .await
    .map_err(crate::events::unwrap_finalizer);
    match result {
        Ok(action) => {
            ctx.succeeded(&uid);
            if deleting {
                ctx.metrics
                    .forget(KIND, crate::metrics::Id::of(key.as_ref()));
            }
            Ok(action)
        }
        // A key applied with (or before) its store waits for it: a normal
        // step, not a failure. The SyncStore watch wakes it up as soon as
        // the store's status changes; the requeue is only a safety net.
        Err(err @ (Error::StoreNotFound(_) | Error::StoreNotReady(_))) if !deleting => {
            ctx.succeeded(&uid);
            let waiting = Verdict::fail("Ready", err.reason(), format!("Waiting: {err}."));
            not_ready(&ctx, &api, &key, "Pending", waiting, 0).await?;
            Ok(Action::requeue(STORE_WAIT))
        }
        Err(err) => {
            let failures = crate::events::failed(&ctx, KIND, key.as_ref(), &err).await;
            if !deleting {
                let written = match still_working(&ctx, &key, &err).await {
                    Some(verdict) => not_ready(&ctx, &api, &key, "Active", verdict, failures).await,
                    None => {
                        let verdict = Verdict::fail("Ready", err.reason(), err.to_string());
                        not_ready(&ctx, &api, &key, "Failed", verdict, failures).await
                    }
                };
                if let Err(e) = written {
                    tracing::warn!(error = %e, "status not written");
                }
            }
            Err(err)
        }
    }
}

/// The `Ready` of a key that keeps working although this reconcile
/// failed: the database could not be reached (or the key store failed),
/// the key's row is known to be in place (it was `Active` with a key id)
/// and its store serves. None otherwise: the key then fails as usual.
async fn still_working(ctx: &Context, key: &ApiKey, err: &Error) -> Option<Verdict> {
    if !matches!(err, Error::DatabaseUnreachable(_) | Error::KeyStore(_)) {
        return None;
    }
    let status = key.status.as_ref()?;
    let id = status.key_id.as_deref()?;
    if status.phase.as_deref() != Some("Active") {
        return None;
    }
    let stores: Api<SyncStore> =
        Api::namespaced(ctx.client.clone(), &key.namespace().unwrap_or_default());
    let store = stores.get_opt(&key.spec.store_ref).await.ok()??;
    let serves = store
        .status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, "Ready"));
    serves.then(|| {
        Verdict::ok(
            "Ready",
            "Active",
            format!(
                "Key {id} keeps working in store {}, which serves, but the operator could not check it ({err}); it retries within {} s.",
                key.spec.store_ref,
                crate::context::UNREACHABLE_RETRY.as_secs()
            ),
        )
    })
}

/// Ready=False with `phase` and `verdict` (a pause condition, if any, is
/// gone: the key is being reconciled again).
async fn not_ready(
    ctx: &Context,
    api: &Api<ApiKey>,
    key: &ApiKey,
    phase: &str,
    verdict: Verdict,
    failures: u32,
) -> Result<()> {
    update_status(ctx, api, key, |current| ApiKeyStatus {
        observed_generation: key.metadata.generation,
        phase: Some(phase.into()),
        conditions: store::resumed(merge(
            &current.conditions,
            &[verdict],
            key.metadata.generation,
            Timestamp::now(),
        )),
        failures,
        ..current.clone()
    })
    .await
}

/// How often a key waiting for its store looks again if no store event
/// wakes it first.
const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the key's store is paused: a paused store's keys are too.
async fn store_paused(key: &ApiKey, ctx: &Context) -> Result<bool> {
    let stores: Api<SyncStore> =
        Api::namespaced(ctx.client.clone(), &key.namespace().unwrap_or_default());
    Ok(stores
        .get_opt(&key.spec.store_ref)
        .await?
        .is_some_and(|s| paused(&s)))
}

pub fn error_policy(key: Arc<ApiKey>, err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(retry_after(
        err,
        ctx.failures(&key.uid().unwrap_or_default()),
    ))
}

fn secret_name(key: &ApiKey) -> String {
    key.spec
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-apikey", key.name_any()))
}

/// The row this spec asks for (`read`/`write` follow canRead/canWrite).
pub fn desired(key: &ApiKey) -> Result<NewKey> {
    let s = &key.spec;
    let mut scopes = Vec::new();
    if s.can_read {
        scopes.push(Scope::Read);
    }
    if s.can_write {
        scopes.push(Scope::Write);
    }
    // The CRD's scope type is the data plane's, so there is nothing to
    // parse and no scope the data plane would not know.
    for extra in &s.scopes {
        if !scopes.contains(extra) {
            scopes.push(*extra);
        }
    }
    let new = NewKey {
        name: s.display_name.clone().unwrap_or_else(|| key.name_any()),
        user_id: s.user_id.clone(),
        scopes,
        expires_at: s.expires_at.as_ref().map(|t| t.0.as_millisecond()),
        ip_restrictions: s.ip_restrictions.clone(),
        country_restrictions: s.country_restrictions.clone(),
        domain_restrictions: s.domain_restrictions.clone(),
        user_agent_patterns: s.user_agent_patterns.clone(),
        quotas: [
            s.quotas.per_minute,
            s.quotas.per_hour,
            s.quotas.per_day,
            s.quotas.per_month,
        ],
    };
    new.check_text()
        .map_err(|e| Error::InvalidSpec(e.to_string()))?;
    new.restrictions().map_err(Error::InvalidSpec)?;
    Ok(new)
}

/// The key service of a store's database, with the owner's authority
/// (see `syncstore::keys`).
pub fn key_service(ctx: &Context, db: &Db) -> Keys {
    Keys::new(
        db.clone(),
        KeyStore::new(db.clone()),
        ctx.settings.key_prefix.clone(),
        ctx.settings.rotation_grace,
    )
}

/// A key-service failure as the operator reports it: the database error
/// behind an `internal error` (the data plane hides it from clients, not
/// from the operator's status), and an unavailable database as
/// `DatabaseUnreachable`.
pub fn key_err(e: ApiError) -> Error {
    match e {
        ApiError::ServiceUnavailable => {
            Error::DatabaseUnreachable("the store's database does not answer".into())
        }
        ApiError::Internal(detail) => Error::KeyStore(detail),
        other => Error::KeyStore(other.to_string()),
    }
}

/// The store and its database, once the store is migrated.
async fn store_db(key: &ApiKey, ctx: &Context) -> Result<(SyncStore, StoreDb)> {
    let stores: Api<SyncStore> =
        Api::namespaced(ctx.client.clone(), &key.namespace().unwrap_or_default());
    let store = stores
        .get_opt(&key.spec.store_ref)
        .await?
        .ok_or_else(|| Error::StoreNotFound(key.spec.store_ref.clone()))?;
    let migrated = store
        .status
        .as_ref()
        .is_some_and(|s| is_true(&s.conditions, "SchemaMigrated"));
    if !migrated || store.meta().deletion_timestamp.is_some() {
        return Err(Error::StoreNotReady(store.name_any()));
    }
    let url = store::database_url(ctx, &store).await?;
    let db = ctx.store_db(&store::store_key(&store), &url).await?;
    Ok((store, db))
}

/// The database to revoke a key's rows in: the store's, or, when the store
/// object is gone or being deleted while its pods may still serve (deleted
/// with `--cascade=orphan`, or before the garbage collector reaches its
/// children), the one its database Secret still names. Only a store with
/// neither (or whose Secret's role can no longer log in) is left to
/// `OrphanKeysRevoked` at its next provisioning.
async fn revoke_db(key: &ApiKey, ctx: &Context) -> Result<StoreDb> {
    let err = match store_db(key, ctx).await {
        Ok((_, db)) => return Ok(db),
        Err(e @ (Error::StoreNotFound(_) | Error::StoreNotReady(_))) => e,
        Err(e) => return Err(e),
    };
    let ns = key.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let name = children::database_secret_name(&key.spec.store_ref);
    match secrets
        .get_opt(&name)
        .await?
        .and_then(|s| secret_value(&s, "DATABASE_URL"))
    {
        // A role that is gone (its store dropped it under `Delete` before
        // the garbage collector took the Secret) cannot log in: nothing
        // serves with it either, so this is the deferred case too.
        Some(url) => ctx
            .store_db(&format!("{ns}/{}", key.spec.store_ref), &url)
            .await
            .map_err(|_| err),
        None => Err(err),
    }
}

async fn apply_key(key: &ApiKey, ctx: &Context) -> Result<Action> {
    let new = desired(key)?;
    let (_store, db) = store_db(key, ctx).await?;
    let keys = key_service(ctx, &db);
    let (current, previous) = key_material(key, ctx, &keys).await?;
    let declared = Declared {
        key: &new,
        can_read: key.spec.can_read,
        can_write: key.spec.can_write,
    };
    let (id, put) = keys.put(&current, &declared).await.map_err(key_err)?;
    let stored = match put {
        Put::Created => Some((
            "KeyStored",
            format!("Stored key {id} for user {}", new.user_id),
            "Store",
        )),
        Put::Updated => Some((
            "KeyUpdated",
            format!("Updated key {id} from the spec"),
            "Update",
        )),
        Put::Unchanged => None,
    };
    if let Some((reason, message, action)) = stored {
        publish(ctx, key, EventType::Normal, reason, &message, action).await;
    }
    let uid = key.uid().unwrap_or_default();
    keyrows::record(&db, &id, &uid, &key.name_any()).await?;
    if let Some(previous) = previous {
        // The rotated-out key gets the grace period once (a later
        // reconcile never extends it) and the spec's current rights: an
        // edit made after a rotation reaches it too, never only the new key.
        if let Some(old) = keys.retire(&previous, &declared).await.map_err(key_err)? {
            keyrows::record(&db, &old, &uid, &key.name_any()).await?;
        }
    }
    let (today, this_month, last_used) = keys.usage(&id).await.map_err(key_err)?;
    let expired = new.expires_at.is_some_and(|e| e <= now_ms());
    let ready = if expired {
        Verdict::fail(
            "Ready",
            "Expired",
            "The key's spec.expiresAt has passed, so the key no longer authenticates; set a later expiresAt to use it again.",
        )
    } else {
        Verdict::ok(
            "Ready",
            "Active",
            format!("Key {id} is active in store {}.", key.spec.store_ref),
        )
    };
    let status = |live: &ApiKeyStatus| ApiKeyStatus {
        observed_generation: key.metadata.generation,
        phase: Some(if expired { "Expired" } else { "Active" }.into()),
        conditions: store::resumed(merge(
            &live.conditions,
            &[ready],
            key.metadata.generation,
            Timestamp::now(),
        )),
        key_id: Some(id),
        secret_name: Some(secret_name(key)),
        key_prefix: Some(recognisable(&current, &ctx.settings.key_prefix)),
        rotation: key.annotations().get(ROTATE_ANNOTATION).cloned(),
        last_used_at: last_used
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .map(|t| t.to_string()),
        usage_today: today,
        usage_this_month: this_month,
        failures: 0,
    };
    let api: Api<ApiKey> =
        Api::namespaced(ctx.client.clone(), &key.namespace().unwrap_or_default());
    update_status(ctx, &api, key, status).await?;
    Ok(Action::requeue(ctx.settings.usage_interval))
}

/// The 8 characters after the common token prefix: enough to tell keys
/// apart at a glance, far too few to guess the rest.
pub fn recognisable(key: &str, prefix: &str) -> String {
    key.strip_prefix(prefix)
        .unwrap_or(key)
        .chars()
        .take(8)
        .collect()
}

/// The current key (and the rotated-out one) from the key Secret, creating
/// or rotating it first when needed.
async fn key_material(
    key: &ApiKey,
    ctx: &Context,
    keys: &Keys,
) -> Result<(String, Option<String>)> {
    let ns = key.namespace().unwrap_or_default();
    let secret = KeySecret {
        key,
        ctx,
        secrets: Api::namespaced(ctx.client.clone(), &ns),
        name: secret_name(key),
        wanted: key
            .annotations()
            .get(ROTATE_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
    };
    let Some(existing) = secret.secrets.get_opt(&secret.name).await? else {
        return secret.create(keys).await;
    };
    let owned = existing
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == key.uid().as_ref());
    if !owned {
        return Err(Error::SecretConflict(secret.name));
    }
    let current = secret_value(&existing, KEY).ok_or_else(|| Error::SecretMissing {
        name: secret.name.clone(),
        key: KEY.into(),
    })?;
    let made_for = existing
        .annotations()
        .get(ROTATION_MARK)
        .map(String::as_str)
        .unwrap_or_default();
    if made_for == secret.wanted {
        return Ok((current, secret_value(&existing, PREVIOUS)));
    }
    secret.rotate(&existing, current).await
}

/// The ApiKey's key Secret: where it is and which rotation request
/// (`ROTATE_ANNOTATION`'s value) its key should have been made for.
struct KeySecret<'a> {
    key: &'a ApiKey,
    ctx: &'a Context,
    secrets: Api<Secret>,
    name: String,
    wanted: String,
}

impl KeySecret<'_> {
    fn params() -> PostParams {
        PostParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        }
    }

    /// A first key, into a new Secret.
    async fn create(&self, keys: &Keys) -> Result<(String, Option<String>)> {
        let (key, ctx, name) = (self.key, self.ctx, &self.name);
        let fresh = generate_key(&ctx.settings.key_prefix);
        let secret = key_secret(key, name, &self.wanted, &fresh, None);
        self.secrets.create(&Self::params(), &secret).await?;
        publish(
            ctx,
            key,
            EventType::Normal,
            "KeyGenerated",
            &format!("Generated a key into Secret {name}"),
            "Generate",
        )
        .await;
        // A Secret deleted by hand took the only copy of the old key: its
        // row can never be used again, so it is revoked.
        if let Some(old) = key.status.as_ref().and_then(|s| s.key_id.clone()) {
            keys.revoke(&old).await.map_err(key_err)?;
        }
        delete_renamed_secret(key, &self.secrets, name).await?;
        Ok((fresh, None))
    }

    /// A new key beside `current`, which becomes the previous one.
    async fn rotate(&self, existing: &Secret, current: String) -> Result<(String, Option<String>)> {
        let (key, ctx, name) = (self.key, self.ctx, &self.name);
        let fresh = generate_key(&ctx.settings.key_prefix);
        let mut secret = key_secret(key, name, &self.wanted, &fresh, Some(&current));
        secret.metadata.resource_version = existing.resource_version();
        // The resourceVersion makes this a compare-and-swap: a racing
        // reconcile fails here instead of rotating twice.
        self.secrets.replace(name, &Self::params(), &secret).await?;
        publish(
            ctx,
            key,
            EventType::Normal,
            "KeyRotated",
            &format!(
                "Rotated the key in Secret {name}; the previous key stays valid for {}s",
                ctx.settings.rotation_grace.as_secs()
            ),
            "Rotate",
        )
        .await;
        Ok((fresh, Some(current)))
    }
}

/// After `spec.secretName` changed: the Secret under the old name held a
/// key that was just revoked, so it goes too (if it is this ApiKey's).
async fn delete_renamed_secret(key: &ApiKey, secrets: &Api<Secret>, name: &str) -> Result<()> {
    let Some(old) = key.status.as_ref().and_then(|s| s.secret_name.clone()) else {
        return Ok(());
    };
    if old == name {
        return Ok(());
    }
    let uid = key.uid().unwrap_or_default();
    let Some(found) = secrets.get_opt(&old).await? else {
        return Ok(());
    };
    if found.owner_references().iter().any(|o| o.uid == uid) {
        match secrets.delete(&old, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn key_secret(
    key: &ApiKey,
    name: &str,
    rotation: &str,
    current: &str,
    previous: Option<&str>,
) -> Secret {
    let mut data = BTreeMap::from([(KEY.to_string(), ByteString(current.as_bytes().to_vec()))]);
    if let Some(p) = previous {
        data.insert(PREVIOUS.into(), ByteString(p.as_bytes().to_vec()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: key.namespace(),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".into(), "syncstore".into()),
                (
                    "app.kubernetes.io/instance".into(),
                    key.spec.store_ref.clone(),
                ),
                ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
                ("app.kubernetes.io/component".into(), "apikey".into()),
            ])),
            annotations: Some(BTreeMap::from([(ROTATION_MARK.into(), rotation.into())])),
            owner_references: key.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Writes the status `f` derives from the live one (not the watch's copy,
/// which can be behind), only when it changed; sets the key's metrics. A
/// step of the reconcile's trace (the target is
/// `syncstore::telemetry::TARGET`, spelled out for the attribute).
#[tracing::instrument(target = "syncstore_trace", name = "operator.step", fields(otel.name = "write status"), skip_all)]
async fn update_status(
    ctx: &Context,
    api: &Api<ApiKey>,
    key: &ApiKey,
    f: impl FnOnce(&ApiKeyStatus) -> ApiKeyStatus,
) -> Result<()> {
    let live = api.get_status(&key.name_any()).await?;
    let current = live.status.clone().unwrap_or_default();
    let new = f(&current);
    ctx.metrics.observe(
        KIND,
        crate::metrics::Id::of(key),
        is_true(&new.conditions, "Ready"),
        new.phase.as_deref().unwrap_or("Pending"),
    );
    if live.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": new });
    api.patch_status(
        &key.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Failed revokes in a row after which a Warning says why the ApiKey waits.
const WARN_AFTER: u32 = 5;

/// Revokes the key's rows, then deletes its Secret. When the store or its
/// database is gone there is nothing left to revoke, and deletion goes on.
async fn revoke(key: &ApiKey, ctx: &Context) -> Result<Action> {
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &key.namespace().unwrap_or_default());
    let name = secret_name(key);
    let secret = secrets.get_opt(&name).await?;
    if let Some(store) = dropped_with_store(key, ctx).await? {
        publish(
            ctx,
            key,
            EventType::Normal,
            "KeyRevoked",
            &format!("SyncStore {store} is deleted with deletionPolicy Delete, so its schema is dropped with the key's rows"),
            "Revoke",
        )
        .await;
        return release_secret(key, &secrets, &name, secret).await;
    }
    match revoke_db(key, ctx).await {
        Ok(db) => {
            revoke_rows(key, ctx, &db, secret.as_ref()).await?;
            publish(
                ctx,
                key,
                EventType::Normal,
                "KeyRevoked",
                "Revoked the key in its store",
                "Revoke",
            )
            .await;
        }
        // Nothing serves a store that is gone (or not provisioned): its
        // pods go with it. The key's rows are recorded in the store's
        // ledger, and the next provisioning of that schema revokes them
        // before any pod starts (`OrphanKeysRevoked` on the store), so the
        // key cannot come back with a re-created store.
        Err(e @ (Error::StoreNotFound(_) | Error::StoreNotReady(_))) => {
            publish(
                ctx,
                key,
                EventType::Normal,
                "RevokeDeferred",
                &format!("{e}; the key's rows are revoked when the store is provisioned again"),
                "Revoke",
            )
            .await;
        }
        // The store is there and its pods may serve: letting the ApiKey go
        // with its rows active would leave a key that Kubernetes no longer
        // has still authenticating. So the finalizer stays and the revoke
        // is retried (within 10 s, see `retry_after`) until the database
        // answers; after a few failures a Warning says why and what lets
        // the key go.
        Err(e) => {
            if ctx.failures(&key.uid().unwrap_or_default()) + 1 == WARN_AFTER {
                publish(
                    ctx,
                    key,
                    EventType::Warning,
                    "RevokePending",
                    &format!("The key stays until its rows are revoked, since the store's pods would still accept it: {e}. It goes as soon as the store's database answers, or with the store"),
                    "Revoke",
                )
                .await;
            }
            return Err(e);
        }
    }
    release_secret(key, &secrets, &name, secret).await
}

/// Revokes the row the status names and the rows of the keys its Secret
/// holds (the current one and the one kept through a rotation's grace).
async fn revoke_rows(
    key: &ApiKey,
    ctx: &Context,
    db: &StoreDb,
    secret: Option<&Secret>,
) -> Result<()> {
    let mut ids: Vec<String> = key
        .status
        .as_ref()
        .and_then(|s| s.key_id.clone())
        .into_iter()
        .collect();
    let keys = key_service(ctx, db);
    for k in [KEY, PREVIOUS] {
        if let Some(value) = secret.and_then(|s| secret_value(s, k)) {
            ids.extend(keys.find(&value).await.map_err(key_err)?);
        }
    }
    for id in &ids {
        keys.revoke(id).await.map_err(key_err)?;
    }
    Ok(())
}

/// The name of the key's store when that store is being deleted with
/// `deletionPolicy: Delete`: its schema, and the key's rows with it, are
/// (or are about to be) dropped, so there is nothing left to revoke.
async fn dropped_with_store(key: &ApiKey, ctx: &Context) -> Result<Option<String>> {
    let stores: Api<SyncStore> =
        Api::namespaced(ctx.client.clone(), &key.namespace().unwrap_or_default());
    Ok(stores.get_opt(&key.spec.store_ref).await?.and_then(|s| {
        (s.meta().deletion_timestamp.is_some()
            && s.spec.database.deletion_policy == DeletionPolicy::Delete)
            .then(|| s.name_any())
    }))
}

/// Deletes the key's Secret if the key owns it.
async fn release_secret(
    key: &ApiKey,
    secrets: &Api<Secret>,
    name: &str,
    secret: Option<Secret>,
) -> Result<Action> {
    if secret.is_some_and(|s| {
        s.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == key.meta().uid.as_ref())
    }) {
        match secrets.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncstore_crds::ApiKeySpec;

    fn key(yaml: &str) -> ApiKey {
        let spec: ApiKeySpec = serde_yaml::from_str(yaml).expect("spec parses");
        let mut k = ApiKey::new("mobile", spec);
        k.metadata.namespace = Some("team-a".into());
        k.metadata.uid = Some("uid-k".into());
        k
    }

    #[test]
    fn the_spec_becomes_the_row() {
        let k = key("storeRef: chat\nuserId: alice\ncanWrite: false\nscopes: [analytics:read]\nipRestrictions: [10.0.0.0/8]\nquotas: {perDay: 1000}\nexpiresAt: '2030-01-01T00:00:00Z'\n");
        let new = desired(&k).expect("valid");
        assert_eq!(new.scopes, vec![Scope::Read, Scope::AnalyticsRead]);
        assert_eq!(new.name, "mobile");
        assert_eq!(new.quotas, [None, None, Some(1000), None]);
        assert_eq!(new.expires_at, Some(1_893_456_000_000));
        assert_eq!(new.ip_restrictions, ["10.0.0.0/8"]);
    }

    #[test]
    fn bad_restrictions_are_an_invalid_spec() {
        let k = key("storeRef: chat\nuserId: alice\nipRestrictions: [not-an-ip]\n");
        assert!(matches!(desired(&k), Err(Error::InvalidSpec(_))));
    }

    #[test]
    fn the_key_secret_is_owned_and_marked() {
        let k = key("storeRef: chat\nuserId: alice\n");
        let s = key_secret(
            &k,
            "mobile-apikey",
            "r1",
            "sk_live_new",
            Some("sk_live_old"),
        );
        assert_eq!(
            s.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].uid.as_str()),
            Some("uid-k")
        );
        assert_eq!(
            s.metadata
                .annotations
                .as_ref()
                .map(|a| a[ROTATION_MARK].as_str()),
            Some("r1")
        );
        assert_eq!(secret_value(&s, KEY).as_deref(), Some("sk_live_new"));
        assert_eq!(secret_value(&s, PREVIOUS).as_deref(), Some("sk_live_old"));
        assert_eq!(recognisable("sk_live_AbCdEfGhIjK", "sk_live_"), "AbCdEfGh");
    }
}
