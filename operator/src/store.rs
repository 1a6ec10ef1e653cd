//! SyncStore reconcile: generated secrets, the database schema and role,
//! the migrations, the children, and the status that `kubectl get` shows.

use std::sync::Arc;

use k8s_openapi::{
    api::{
        apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, core::v1::Secret,
        networking::v1::Ingress,
    },
    jiff::Timestamp,
};
use kube::{
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::EventType,
        finalizer::{finalizer, Event},
    },
    Api, Resource, ResourceExt,
};
use syncstore_crds::{ApiKey, DatabaseStatus, DeletionPolicy, SyncStore, SyncStoreStatus};

use crate::{
    apply::{apply, delete_orphans, ensure_secret, random_token, read_secret_key, secret_value},
    children::{self, names, DbNames},
    conditions::{merge, Verdict},
    context::{backoff, Context, Error, Result},
    database::{self, Owner, Target},
    events::publish,
    keyrows,
};

pub const KIND: &str = "SyncStore";
/// Finalizer that drops the schema under `deletionPolicy: Delete`.
pub const FINALIZER: &str = "syncstore.dev/cleanup";

/// What one successful pass found, for the status.
struct Observed {
    schema_version: i64,
    /// Pods the Deployment has now (the HPA's count under autoscaling).
    replicas: Option<i32>,
    ready_replicas: i32,
    available: Verdict,
}

pub async fn reconcile(store: Arc<SyncStore>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let ns = store.namespace().unwrap_or_default();
    let api: Api<SyncStore> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = store.uid().unwrap_or_default();
    let result = finalizer(&api, FINALIZER, store.clone(), |event| async {
        match event {
            Event::Apply(s) => apply_store(&s, &ctx).await,
            Event::Cleanup(s) => cleanup(&s, &ctx).await,
        }
    })
    .await
    .map_err(crate::events::unwrap_finalizer);
    match result {
        Ok(action) => {
            ctx.succeeded(&uid);
            Ok(action)
        }
        Err(err) => {
            let failures = crate::events::failed(&ctx, KIND, store.as_ref(), &err).await;
            if store.meta().deletion_timestamp.is_none() {
                if let Err(e) = write_failure(&api, &store, &err, failures).await {
                    tracing::warn!(error = %e, "status not written");
                }
            }
            Err(err)
        }
    }
}

pub fn error_policy(store: Arc<SyncStore>, _err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(backoff(ctx.failures(&store.uid().unwrap_or_default())))
}

fn target(store: &SyncStore, names: &DbNames) -> Target {
    Target {
        engine: names.engine,
        schema: names.schema.clone(),
        role: names.role.clone(),
        owner: Owner {
            namespace: store.namespace().unwrap_or_default(),
            name: store.name_any(),
            uid: store.uid().unwrap_or_default(),
        },
        adopt_unmarked: names.legacy,
    }
}

async fn admin_url(store: &SyncStore, ctx: &Context) -> Result<String> {
    let r = &store.spec.database.admin_secret_ref;
    let url = read_secret_key(
        &ctx.client,
        &store.namespace().unwrap_or_default(),
        &r.name,
        &r.key,
    )
    .await?;
    let engine = database::engine_of(&url)?;
    if engine != store.spec.database.engine {
        return Err(Error::InvalidSpec(format!(
            "spec.database.engine is {:?} but the admin URL in Secret {} is for {:?}",
            store.spec.database.engine, r.name, engine
        )));
    }
    Ok(url)
}

async fn apply_store(store: &SyncStore, ctx: &Context) -> Result<Action> {
    let client = &ctx.client;
    let n = names(store);

    let (generated, created) = ensure_secret(
        client,
        &children::generated_secret(store, &mut random_token),
    )
    .await?;
    if created {
        publish(
            ctx,
            store,
            EventType::Normal,
            "SecretsGenerated",
            &format!(
                "Generated JWT secrets and the database password in Secret {}",
                n.generated
            ),
            "Provision",
        )
        .await;
    }
    let password = secret_value(&generated, "DB_PASSWORD").ok_or_else(|| Error::SecretMissing {
        name: n.generated.clone(),
        key: "DB_PASSWORD".into(),
    })?;

    check_spec(store, ctx, &generated).await?;

    let db_names = children::db_names(store)?;
    let admin = admin_url(store, ctx).await?;
    let target = target(store, &db_names);
    database::provision(&admin, &target, &password).await?;
    let url = database::store_url(&admin, &target, &password)?;
    let (applied, schema_version) = database::migrate(&url).await?;
    if applied > 0 {
        publish(
            ctx,
            store,
            EventType::Normal,
            "SchemaMigrated",
            &format!(
                "Applied {applied} migrations to {} (now at {schema_version})",
                target.schema
            ),
            "Migrate",
        )
        .await;
    }

    // Before any pod is (re)started on this schema: rows of ApiKeys that
    // Kubernetes no longer has stop authenticating.
    let db = ctx.store_db(&store_key(store), &url).await?;
    let revoked = revoke_orphan_keys(ctx, store, &db).await?;
    if !revoked.is_empty() {
        publish(
            ctx,
            store,
            EventType::Normal,
            "OrphanKeysRevoked",
            &format!(
                "Revoked the rows of ApiKeys that no longer exist: {}",
                revoked.join(", ")
            ),
            "Provision",
        )
        .await;
    }

    apply(client, &children::database_secret(store, &url)).await?;
    let config = children::config_map(store);
    apply(client, &config).await?;
    let hash = children::config_hash(&config, &url);
    let deployment = apply(client, &children::deployment(store, &hash)).await?;
    apply(client, &children::service(store)).await?;
    apply(client, &children::pdb(store)).await?;

    let mut deployments = vec![n.deployment.clone()];
    if let Some(consumer) = children::analytics_deployment(store, &hash) {
        apply(client, &consumer).await?;
        deployments.push(n.analytics.clone());
    }
    let mut scalers = Vec::new();
    if let Some(hpa) = children::hpa(store) {
        apply(client, &hpa).await?;
        scalers.push(store.name_any());
    }
    let mut ingresses = Vec::new();
    if let Some(ingress) = children::ingress(store) {
        apply(client, &ingress).await?;
        ingresses.push(store.name_any());
    }
    let ns = store.namespace().unwrap_or_default();
    let instance = store.name_any();
    let mut removed = delete_orphans::<Deployment>(client, &ns, &instance, &deployments).await?;
    removed
        .extend(delete_orphans::<HorizontalPodAutoscaler>(client, &ns, &instance, &scalers).await?);
    removed.extend(delete_orphans::<Ingress>(client, &ns, &instance, &ingresses).await?);
    if !removed.is_empty() {
        publish(
            ctx,
            store,
            EventType::Normal,
            "OrphansDeleted",
            &format!("Deleted children no longer wanted: {}", removed.join(", ")),
            "Reconcile",
        )
        .await;
    }

    let status = deployment.status.unwrap_or_default();
    let replicas = status.replicas;
    let ready_replicas = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let wanted = deployment.spec.and_then(|s| s.replicas).unwrap_or(0);
    let available = if available > 0 {
        Verdict::ok(
            "Available",
            "ReplicasAvailable",
            format!("{available} of {wanted} replicas available"),
        )
    } else {
        Verdict::fail(
            "Available",
            "NoReplicasAvailable",
            format!("0 of {wanted} replicas available"),
        )
    };
    let observed = Observed {
        schema_version,
        replicas,
        ready_replicas,
        available,
    };
    write_success(ctx, store, observed, &db_names).await?;
    Ok(Action::requeue(ctx.settings.resync_interval))
}

/// Refuses, before any database work or rollout, a spec whose pods would
/// exit on their configuration (see [`crate::validate`]).
async fn check_spec(store: &SyncStore, ctx: &Context, generated: &Secret) -> Result<()> {
    // A missing Redis Secret is not this check's to report: the pods show
    // it (CreateContainerConfigError) and the rest of the store still rolls.
    let redis_url = match &store.spec.redis {
        Some(r) => match read_secret_key(
            &ctx.client,
            &store.namespace().unwrap_or_default(),
            &r.url_secret_ref.name,
            &r.url_secret_ref.key,
        )
        .await
        {
            Ok(url) => Some(url),
            Err(Error::SecretMissing { .. }) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let vars = crate::validate::data_plane_env(
        store,
        &children::config_map(store),
        generated,
        redis_url.as_deref(),
    );
    crate::validate::check(store, vars)
}

/// Deactivates the rows the operator wrote for ApiKeys of this store that
/// no longer exist (or are being deleted), and records the rows of live
/// ones that the ledger does not know yet (written by an older operator).
/// The ledger is read before the ApiKeys are listed: a key created in
/// between is then absent from the ledger snapshot, not mistaken for gone.
/// Returns the ApiKey names whose rows were revoked.
async fn revoke_orphan_keys(
    ctx: &Context,
    store: &SyncStore,
    db: &syncstore::storage::Db,
) -> Result<Vec<String>> {
    let ledger = keyrows::entries(db).await?;
    let keys: Api<ApiKey> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    let live: Vec<ApiKey> = keys
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|k| k.spec.store_ref == store.name_any() && k.meta().deletion_timestamp.is_none())
        .collect();
    let live_uids: std::collections::HashSet<String> =
        live.iter().filter_map(|k| k.uid()).collect();
    for k in &live {
        let id = k.status.as_ref().and_then(|s| s.key_id.as_deref());
        if let (Some(id), Some(uid)) = (id, k.uid()) {
            if !ledger.iter().any(|e| e.key_id == id) {
                keyrows::record(db, id, &uid, &k.name_any()).await?;
            }
        }
    }
    let mut revoked = Vec::new();
    for e in ledger.iter().filter(|e| !live_uids.contains(&e.apikey_uid)) {
        if keyrows::deactivate(db, &e.key_id).await? && !revoked.contains(&e.apikey) {
            revoked.push(e.apikey.clone());
        }
    }
    Ok(revoked)
}

async fn write_success(
    ctx: &Context,
    store: &SyncStore,
    o: Observed,
    names: &DbNames,
) -> Result<()> {
    let current = store.status.clone().unwrap_or_default();
    let running = o.available.ok;
    let verdicts = [
        Verdict::ok(
            "DatabaseReady",
            "Provisioned",
            format!(
                "schema {} and role {} are in place and marked as this store's",
                names.schema, names.role
            ),
        ),
        Verdict::ok(
            "SchemaMigrated",
            "Migrated",
            format!("schema version {}", o.schema_version),
        ),
        o.available,
        crate::validate::version_skew(store, o.schema_version),
        Verdict::ok("Ready", "Reconciled", "every child object is applied"),
    ];
    let status = SyncStoreStatus {
        observed_generation: store.metadata.generation,
        phase: Some(if running { "Running" } else { "Provisioning" }.into()),
        conditions: merge(
            &current.conditions,
            &verdicts,
            store.metadata.generation,
            Timestamp::now(),
        ),
        replicas: o.replicas,
        ready_replicas: o.ready_replicas,
        endpoint: Some(children::endpoint(store)),
        schema_version: Some(o.schema_version),
        failures: 0,
        database: Some(DatabaseStatus {
            engine: names.engine,
            schema: names.schema.clone(),
            role: names.role.clone(),
            store_id: names.store_id.clone(),
        }),
    };
    let api: Api<SyncStore> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    write_status(&api, store, &current, &status).await
}

async fn write_failure(
    api: &Api<SyncStore>,
    store: &SyncStore,
    err: &Error,
    failures: u32,
) -> Result<()> {
    let current = store.status.clone().unwrap_or_default();
    let message = err.to_string();
    let mut verdicts = vec![Verdict::fail("Ready", err.reason(), message.clone())];
    match err {
        Error::SecretMissing { .. }
        | Error::InvalidDatabaseUrl(_)
        | Error::DatabaseUnreachable(_)
        | Error::SchemaOwnedByAnother(_)
        | Error::ImmutableFieldChanged(_)
        | Error::Provisioning(_) => {
            verdicts.push(Verdict::fail("DatabaseReady", err.reason(), message))
        }
        Error::Migration(_) => {
            verdicts.push(Verdict::fail("SchemaMigrated", err.reason(), message))
        }
        _ => {}
    }
    let status = SyncStoreStatus {
        observed_generation: store.metadata.generation,
        phase: Some("Failed".into()),
        conditions: merge(
            &current.conditions,
            &verdicts,
            store.metadata.generation,
            Timestamp::now(),
        ),
        failures,
        ..current.clone()
    };
    write_status(api, store, &current, &status).await
}

/// Patches the status only when it changed, so a steady state writes
/// nothing (and triggers nothing).
async fn write_status(
    api: &Api<SyncStore>,
    store: &SyncStore,
    current: &SyncStoreStatus,
    new: &SyncStoreStatus,
) -> Result<()> {
    if current == new && store.status.is_some() {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": new });
    api.patch_status(
        &store.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Runs before the store disappears. Under `Retain` nothing is touched.
/// Under `Delete` the schema and role are dropped, but only those marked as
/// this store's (a `schemaName` naming another store's schema drops
/// nothing); if the database or its admin Secret is already gone, the drop
/// is given up after a few tries so that the store can still be deleted.
async fn cleanup(store: &SyncStore, ctx: &Context) -> Result<Action> {
    ctx.forget_store(&store_key(store)).await;
    if store.spec.database.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    let names = match children::db_names(store) {
        Ok(names) => names,
        Err(e) => {
            publish(
                ctx,
                store,
                EventType::Warning,
                "DropSkipped",
                &format!("Dropped nothing: {e}"),
                "Cleanup",
            )
            .await;
            return Ok(Action::await_change());
        }
    };
    let target = target(store, &names);
    let result = match admin_url(store, ctx).await {
        Ok(admin) => database::drop_store(&admin, &target).await,
        Err(e) => Err(e),
    };
    match result {
        // Never retried: another store's schema stays, whatever happens.
        Err(e @ Error::SchemaOwnedByAnother(_)) => {
            publish(
                ctx,
                store,
                EventType::Warning,
                "DropRefused",
                &format!("Dropped only what this store owns: {e}"),
                "Cleanup",
            )
            .await;
            Ok(Action::await_change())
        }
        Ok(()) => {
            publish(
                ctx,
                store,
                EventType::Normal,
                "SchemaDropped",
                &format!("Dropped {} and its role", target.schema),
                "Cleanup",
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) if ctx.failures(&store.uid().unwrap_or_default()) >= GIVE_UP_AFTER => {
            publish(
                ctx,
                store,
                EventType::Warning,
                "DropSkipped",
                &format!("Gave up dropping {}: {e}", target.schema),
                "Cleanup",
            )
            .await;
            Ok(Action::await_change())
        }
        Err(e) => Err(e),
    }
}

/// Failed cleanups in a row after which a finalizer lets go anyway.
pub const GIVE_UP_AFTER: u32 = 5;

/// The key under which the context caches a store's pool.
pub fn store_key(store: &SyncStore) -> String {
    format!(
        "{}/{}",
        store.namespace().unwrap_or_default(),
        store.name_any()
    )
}

/// The store's database URL, from the Secret the reconcile derived, once
/// the schema is migrated.
pub async fn database_url(ctx: &Context, store: &SyncStore) -> Result<String> {
    let n = names(store);
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    api.get_opt(&n.database)
        .await?
        .and_then(|s| secret_value(&s, "DATABASE_URL"))
        .ok_or_else(|| Error::StoreNotReady(store.name_any()))
}
