//! SyncStore reconcile: generated secrets, the database schema and role,
//! the migrations, the children, and the status that `kubectl get` shows.

use std::sync::Arc;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        core::v1::{ConfigMap, Secret},
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
use syncstore::keys::Revoked;
use syncstore_crds::{ApiKey, DatabaseStatus, DeletionPolicy, SyncStore, SyncStoreStatus};

use crate::{
    apply::{
        apply, delete_orphans, dry_run, ensure_secret, random_token, read_secret_key, secret_value,
    },
    children::{self, names, DbNames},
    conditions::{is_true, merge, Verdict},
    context::{paused, retry_after, Context, Error, Result, PAUSE_ANNOTATION},
    database::{self, Owner, Target},
    events::publish,
    keyrows,
    serving::{self, Serving},
    trace,
};

pub const KIND: &str = "SyncStore";
/// Finalizer that drops the schema under `deletionPolicy: Delete`.
pub const FINALIZER: &str = "syncstore.dev/cleanup";

pub async fn reconcile(store: Arc<SyncStore>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(KIND);
    let ns = store.namespace().unwrap_or_default();
    let api: Api<SyncStore> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = store.uid().unwrap_or_default();
    let deleting = store.meta().deletion_timestamp.is_some();
    // Deletion is an explicit request and goes on while paused.
    if paused(store.as_ref()) && !deleting {
        ctx.succeeded(&uid);
        update_status(&ctx, &api, &store, |current| SyncStoreStatus {
            conditions: merge(
                &current.conditions,
                &[pause_verdict(None)],
                store.metadata.generation,
                Timestamp::now(),
            ),
            ..current.clone()
        })
        .await?;
        return Ok(Action::await_change());
    }
    // The watch's copy may be behind the finalizer patch (see
    // `finalizing`): the helper then works from the live object.
    let store = match crate::finalizing::fresh(&api, store, FINALIZER).await {
        Ok(Some(live)) => live,
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    };
    let deleting = store.meta().deletion_timestamp.is_some();
    let result = finalizer(&api, FINALIZER, store.clone(), |event| async {
        match event {
            Event::Apply(s) => apply_store(&s, &ctx).await,
            Event::Cleanup(s) => trace::step("cleanup", cleanup(&s, &ctx)).await,
        }
    })
    .await
    .map_err(crate::events::unwrap_finalizer);
    match result {
        Ok(action) => {
            ctx.succeeded(&uid);
            if deleting {
                ctx.metrics
                    .forget(KIND, crate::metrics::Id::of(store.as_ref()));
            }
            Ok(action)
        }
        Err(err) => {
            let failures = crate::events::failed(&ctx, KIND, store.as_ref(), &err).await;
            if !deleting {
                if let Err(e) = write_failure(&ctx, &api, &store, &err, failures).await {
                    tracing::warn!(error = %e, "status not written");
                }
            }
            Err(err)
        }
    }
}

/// The condition a paused object shows.
/// The paused condition: of the object's own annotation, or (for an
/// ApiKey) of its store's, named so that `kubectl describe` says where to
/// resume.
pub fn pause_verdict(by_store: Option<&str>) -> Verdict {
    let message = match by_store {
        None => format!("Reconciliation is paused by the annotation {PAUSE_ANNOTATION}: paused; nothing is changed until it is removed."),
        Some(store) => format!("Reconciliation is paused because SyncStore {store} is paused by the annotation {PAUSE_ANNOTATION}; nothing is changed until it is removed there."),
    };
    Verdict::ok(PAUSED, "Paused", message)
}

/// The paused condition's type; it is removed when reconciliation resumes.
pub const PAUSED: &str = "ReconciliationPaused";

pub fn error_policy(store: Arc<SyncStore>, err: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(retry_after(
        err,
        ctx.failures(&store.uid().unwrap_or_default()),
    ))
}

fn target(store: &SyncStore, names: &DbNames, predecessor: Option<String>, tls: bool) -> Target {
    Target {
        tls,
        engine: names.engine,
        schema: names.schema.clone(),
        role: names.role.clone(),
        owner: Owner {
            namespace: store.namespace().unwrap_or_default(),
            name: store.name_any(),
            uid: store.uid().unwrap_or_default(),
        },
        adopt_unmarked: names.legacy,
        predecessor,
        provisioned_on: store.status.as_ref().and_then(|s| {
            s.database
                .as_ref()
                .map(|d| d.server.clone().unwrap_or_else(|| "its database".into()))
                .or_else(|| s.schema_version.map(|_| "its database".into()))
        }),
    }
}

/// The ConfigMap in which the operator records, per store name, the UID of
/// a store deleted with `Retain`, so that the store created again under the
/// same name (and only it) adopts the retained schema.
pub const RETAINED: &str = "syncstore-retained";

/// The UID recorded for a retained store of this name, if any.
async fn predecessor(store: &SyncStore, ctx: &Context) -> Result<Option<String>> {
    let api: Api<ConfigMap> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    Ok(api
        .get_opt(RETAINED)
        .await?
        .and_then(|cm| cm.data)
        .and_then(|mut d| d.remove(&store.name_any())))
}

/// Records that `store`'s schema and role are retained under its UID.
async fn record_retained(store: &SyncStore, ctx: &Context) -> Result<()> {
    let api: Api<ConfigMap> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    let data = serde_json::json!({ "data": { store.name_any(): store.uid().unwrap_or_default() } });
    match api
        .patch(RETAINED, &PatchParams::default(), &Patch::Merge(&data))
        .await
    {
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": { "name": RETAINED },
                "data": { store.name_any(): store.uid().unwrap_or_default() },
            }))
            .map_err(|e| Error::InvalidSpec(e.to_string()))?;
            api.create(&Default::default(), &cm).await?;
            Ok(())
        }
        other => other.map(|_| ()).map_err(Error::from),
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

/// The store's database as provisioning left it.
struct Provisioned {
    url: String,
    schema_version: i64,
    /// `host:port/database` of the admin URL.
    server: String,
    /// What was not granted as asked (see [`database::Warning`]).
    warnings: Vec<database::Warning>,
}

/// Errors after which the children that need no database still follow
/// the spec, from the last database URL the operator derived: the database
/// (or its admin Secret) is unreachable or broken for now, and a replica
/// count or image change must not wait for it. A store refused for
/// ownership, an immutable-field change or an invalid spec gets nothing.
fn children_follow_anyway(e: &Error) -> bool {
    matches!(
        e,
        Error::Kube(_)
            | Error::SecretMissing { .. }
            | Error::InvalidDatabaseUrl(_)
            | Error::DatabaseUnreachable(_)
            | Error::Provisioning(_)
            | Error::Migration(_)
            | Error::KeyStore(_)
    )
}

async fn apply_store(store: &SyncStore, ctx: &Context) -> Result<Action> {
    let api: Api<SyncStore> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    if store.status.is_none() {
        // Provisioning can take seconds: say so instead of showing nothing.
        update_status(ctx, &api, store, |current| pending(store, current)).await?;
    }
    let n = names(store);
    // A spec the data plane would refuse, or one that changes what cannot
    // change, is refused before anything is made for it, the Secret of
    // generated credentials included: checked against the Secret the store
    // has, or the one it would get.
    let candidate = children::generated_secret(store, &mut random_token);
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    let existing = secrets.get_opt(&n.generated).await?;
    let checked = check_spec(store, ctx, existing.as_ref().unwrap_or(&candidate)).await?;
    let db_names = children::db_names(store)?;

    let (generated, created) = ensure_secret(&ctx.client, &candidate).await?;
    if created {
        announce_generated(ctx, store, &n.generated).await;
    }
    let password = secret_value(&generated, "DB_PASSWORD").ok_or_else(|| Error::SecretMissing {
        name: n.generated.clone(),
        key: "DB_PASSWORD".into(),
    })?;
    let provisioned = provision_database(ctx, store, &db_names, &password, checked.tls);
    let (url, database) = match trace::step("provision database", provisioned).await {
        Ok(p) => (p.url.clone(), Ok(p)),
        Err(e) if children_follow_anyway(&e) => match last_database_url(ctx, store).await? {
            Some(url) => (url, Err(e)),
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let from_secrets = [checked.redis_url.as_deref(), checked.redis_ca.as_deref()];
    let children = apply_children(ctx, store, &url, from_secrets);
    let deployment = trace::step("apply children", children).await?;
    // Never fails the store: no PodMonitor CRD is a condition, not an error.
    let monitoring = crate::monitoring::reconcile(ctx, store).await;
    // The children follow the spec; a database failure still fails the
    // reconcile (status, event, backoff).
    let database = database?;
    let serving = serving::serving(store, &deployment);
    write_success(ctx, store, &database, serving, &db_names, monitoring).await?;
    Ok(Action::requeue(ctx.settings.resync_interval))
}

/// Whether the store was provisioned once: its status names its database
/// or a schema version.
fn provisioned(store: &SyncStore) -> bool {
    store
        .status
        .as_ref()
        .is_some_and(|s| s.database.is_some() || s.schema_version.is_some())
}

/// A Normal event for the first generation of the store's Secret, a
/// Warning when it was deleted and generated again: new JWT secrets make
/// every token issued before invalid.
async fn announce_generated(ctx: &Context, store: &SyncStore, secret: &str) {
    if provisioned(store) {
        publish(
            ctx,
            store,
            EventType::Warning,
            "SecretsRegenerated",
            &format!(
                "Secret {secret} was missing and has been generated again: the new JWT secrets invalidate every token issued before, so every user is signed out, and the database password is reset, so the pods roll."
            ),
            "Provision",
        )
        .await;
    } else {
        publish(
            ctx,
            store,
            EventType::Normal,
            "SecretsGenerated",
            &format!("Generated JWT secrets and the database password in Secret {secret}"),
            "Provision",
        )
        .await;
    }
}

/// The field manager that holds the Deployment's `replicas` between the
/// operator and the HPA (see [`hand_replicas_over`]).
const REPLICAS_HANDOFF: &str = "syncstore-operator-replicas-handoff";

/// When autoscaling is turned on, the operator stops setting `replicas` so
/// that the HPA owns it. Under server-side apply a field that its only
/// owner stops applying is removed, and the Deployment falls back to one
/// replica before the HPA acts (4 → 1 on a running store). So while the
/// operator's apply still owns the field, the current count (kept within
/// the autoscaling bounds) is first written by a second field manager,
/// which keeps it when the operator's apply lets go (Kubernetes' documented
/// ownership transfer).
async fn hand_replicas_over(
    ctx: &Context,
    store: &SyncStore,
    autoscaling: &syncstore_crds::Autoscaling,
) -> Result<()> {
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    let Some(live) = api.get_opt(&names(store).deployment).await? else {
        return Ok(());
    };
    let ours = live.managed_fields().iter().any(|m| {
        m.manager.as_deref() == Some(children::MANAGER)
            && m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:spec"].get("f:replicas").is_some())
    });
    if !ours {
        return Ok(());
    }
    let current = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let keep = current.clamp(
        autoscaling.min_replicas,
        autoscaling.max_replicas.max(autoscaling.min_replicas),
    );
    // Applied, not updated: an update that leaves the value as it is
    // records no owner, while two appliers of one value share the field.
    let params = PatchParams::apply(REPLICAS_HANDOFF).force();
    let patch = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": live.name_any() },
        "spec": { "replicas": keep },
    });
    api.patch(&live.name_any(), &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Schema and role, migrations and the revocation of orphan key rows.
async fn provision_database(
    ctx: &Context,
    store: &SyncStore,
    db_names: &DbNames,
    password: &str,
    tls: bool,
) -> Result<Provisioned> {
    let admin = admin_url(store, ctx).await?;
    let target = target(store, db_names, predecessor(store, ctx).await?, tls);
    let warnings = database::provision(&admin, &target, password)
        .await
        .map_err(|e| located(e, store, &admin))?;
    for w in &warnings {
        publish(
            ctx,
            store,
            EventType::Warning,
            w.reason,
            &format!("{}.", w.message),
            "Provision",
        )
        .await;
    }
    let url = database::store_url(&admin, &target, password)?;
    let (applied, schema_version) = database::migrate(&url)
        .await
        .map_err(|e| located(e, store, &admin))?;
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
    Ok(Provisioned {
        url,
        schema_version,
        server: database::server_of(&admin)?,
        warnings,
    })
}

/// An unreachable database, named: the server (`host:port/database`, no
/// credentials), the Secret whose admin URL names it, and what to do
/// (unless the driver's message already says, as for TLS).
fn located(e: Error, store: &SyncStore, admin: &str) -> Error {
    let Error::DatabaseUnreachable(message) = e else {
        return e;
    };
    let r = &store.spec.database.admin_secret_ref;
    let server = database::server_of(admin).unwrap_or_else(|_| "the database server".into());
    let advice = if message.contains("the TLS connection") && store.spec.database.ssl == Some(true)
    {
        "; spec.database.ssl is true, so the operator and the pods require TLS to this server: enable TLS on it or set spec.database.ssl to false"
    } else if message.contains("; check ") {
        ""
    } else {
        "; check that the server runs and that the operator can reach it, or fix the URL in that Secret"
    };
    Error::DatabaseUnreachable(format!(
        "{server}, named by the admin URL in Secret {} (key {}): {message}{advice}",
        r.name, r.key
    ))
}

/// The database URL of the last successful provisioning, if any.
async fn last_database_url(ctx: &Context, store: &SyncStore) -> Result<Option<String>> {
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    Ok(api
        .get_opt(&names(store).database)
        .await?
        .and_then(|s| secret_value(&s, "DATABASE_URL")))
}

/// Applies every child and deletes the ones no longer wanted; returns the
/// data-plane Deployment as the apiserver has it (status included).
async fn apply_children(
    ctx: &Context,
    store: &SyncStore,
    url: &str,
    from_secrets: [Option<&str>; 2],
) -> Result<Deployment> {
    let client = &ctx.client;
    let n = names(store);
    // The children whose fields the apiserver checks beyond the CRD's
    // rules are refused before anything is applied: the Ingress (host
    // names, paths) and the Deployment (the pod template: quantities,
    // names, keys that repeat in a list, a name another store's consumer
    // has), so that a refused spec leaves no half-applied ConfigMap behind.
    let ingress = children::ingress(store);
    if let Some(ingress) = &ingress {
        dry_run(client, ingress).await?;
    }
    let config = children::config_map(store, &ctx.settings.key_prefix);
    let hash = children::config_hash(&config, url, &from_secrets);
    let wanted = children::deployment(store, &hash);
    dry_run(client, &wanted).await.map_err(nothing_applied)?;
    apply(client, &children::database_secret(store, url)).await?;
    apply(client, &config).await?;
    if let Some(autoscaling) = &store.spec.autoscaling {
        hand_replicas_over(ctx, store, autoscaling).await?;
    }
    let deployment = apply(client, &wanted).await?;
    apply(client, &children::service(store)).await?;
    apply(client, &children::pdb(store)).await?;

    let mut deployments = vec![n.deployment.clone()];
    if let Some(consumer) = children::analytics_deployment(store, &hash) {
        apply(client, &consumer).await.map_err(analytics_taken)?;
        deployments.push(n.analytics.clone());
    }
    let mut scalers = Vec::new();
    if let Some(hpa) = children::hpa(store) {
        apply(client, &hpa).await?;
        scalers.push(store.name_any());
    }
    let mut ingresses = Vec::new();
    if let Some(ingress) = ingress {
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
    Ok(deployment)
}

/// The store's own Deployment taken by another store (the analytics
/// consumer of store `news` is `news-analytics`), found by the dry run
/// before any child is applied: nothing of this store is.
fn nothing_applied(e: Error) -> Error {
    match e {
        Error::ChildTaken { kind, name, owner } => Error::InvalidSpec(format!(
            "{kind} {name}, which this store needs, already belongs to {owner}, so nothing is applied for this store until one of the two stores is renamed"
        )),
        other => other,
    }
}

/// The analytics consumer's Deployment (`<store>-analytics`) taken by a
/// store of that name: the message says which fields make this store need
/// it, so either can be changed.
fn analytics_taken(e: Error) -> Error {
    match e {
        Error::ChildTaken { kind, name, owner } => Error::InvalidSpec(format!(
            "{kind} {name}, which the analytics consumer of this store needs (spec.kafka is set and spec.analytics.enabled is true), already belongs to {owner}, so it is left alone until spec.analytics.enabled is false or one of the two stores is renamed; the store's own Deployment, Service and PodDisruptionBudget follow the spec, its HorizontalPodAutoscaler and Ingress are not updated meanwhile"
        )),
        other => other,
    }
}

/// What [`check_spec`] learnt on the way.
struct Checked {
    /// Whether the pods require TLS to the database (`DB_SSL` as they parse
    /// it): the operator's own connections then require it too.
    tls: bool,
    /// The Redis URL from the user's Secret, if it is there.
    redis_url: Option<String>,
    /// The Redis CA certificate(s) of `spec.redis.tls`, if there.
    redis_ca: Option<String>,
}

/// Refuses, before any database work or rollout, a spec whose pods would
/// exit on their configuration (see [`crate::validate`]).
async fn check_spec(store: &SyncStore, ctx: &Context, generated: &Secret) -> Result<Checked> {
    let ns = store.namespace().unwrap_or_default();
    let redis = store.spec.redis.as_ref();
    let redis_url = match redis {
        Some(r) => {
            let url = &r.url_secret_ref;
            read_if_there(&ctx.client, &ns, &url.name, &url.key).await?
        }
        None => None,
    };
    let ca_ref = redis.and_then(|r| r.tls.as_ref()).map(|t| &t.ca_secret_ref);
    let redis_ca = match ca_ref {
        Some(r) => read_ca(&ctx.client, &ns, r).await?,
        None => None,
    };
    let vars = crate::validate::data_plane_env(
        store,
        &children::config_map(store, &ctx.settings.key_prefix),
        generated,
        redis_url.as_deref(),
    );
    let config = crate::validate::check(store, vars)?;
    Ok(Checked {
        tls: config.database.ssl,
        redis_url,
        redis_ca,
    })
}

/// The CA of `spec.redis.tls.caSecretRef`, checked as the pods will read
/// it (`redis_conn::check_ca`): a Secret that is not there is the pods' to
/// report (their volume cannot mount), but a key that is missing, empty,
/// not text or not PEM certificates is refused before rollout.
async fn read_ca(
    client: &kube::Client,
    namespace: &str,
    r: &syncstore_crds::CaSecretRef,
) -> Result<Option<String>> {
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let Some(secret) = api.get_opt(&r.name).await? else {
        return Ok(None);
    };
    let bytes = crate::apply::secret_bytes(&secret, &r.key).unwrap_or_default();
    let problem = match syncstore::redis_conn::check_ca(&bytes) {
        Ok(_) => return Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(_) if bytes.is_empty() => "has no value".to_string(),
        Err(e) => e,
    };
    Err(Error::InvalidSpec(format!(
        "spec.redis.tls.caSecretRef: key {} of Secret {} {problem}, so the pods would refuse to start; nothing is rolled out until it holds the PEM certificate(s) of the Redis servers' CA",
        r.key, r.name
    )))
}

/// The value of a key of one of the user's Secrets, if it is there: a
/// missing Secret is not [`check_spec`]'s to report (the pods show it,
/// CreateContainerConfigError, and the rest of the store still rolls).
async fn read_if_there(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<String>> {
    match read_secret_key(client, namespace, name, key).await {
        Ok(value) => Ok(Some(value)),
        Err(Error::SecretMissing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
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
    let keys = crate::apikey::key_service(ctx, db);
    for e in ledger.iter().filter(|e| !live_uids.contains(&e.apikey_uid)) {
        let now = keys
            .revoke(&e.key_id)
            .await
            .map_err(crate::apikey::key_err)?;
        if now == Revoked::Now && !revoked.contains(&e.apikey) {
            revoked.push(e.apikey.clone());
        }
    }
    Ok(revoked)
}

/// The status of a store the operator has seen but not provisioned yet.
fn pending(store: &SyncStore, current: &SyncStoreStatus) -> SyncStoreStatus {
    if current.phase.is_some() {
        // The watch's copy was behind: the store has a status already.
        return current.clone();
    }
    SyncStoreStatus {
        observed_generation: store.metadata.generation,
        phase: Some("Pending".into()),
        conditions: merge(
            &current.conditions,
            &[Verdict::fail(
                "Ready",
                "Provisioning",
                "The database and the children are being provisioned.",
            )],
            store.metadata.generation,
            Timestamp::now(),
        ),
        ..current.clone()
    }
}

async fn write_success(
    ctx: &Context,
    store: &SyncStore,
    database: &Provisioned,
    serving: Serving,
    names: &DbNames,
    monitoring: Option<Verdict>,
) -> Result<()> {
    let schema_version = database.schema_version;
    let mut verdicts = vec![
        database_ready(database, names),
        Verdict::ok(
            "SchemaMigrated",
            "Migrated",
            format!("The schema is at version {schema_version}."),
        ),
        serving.available,
        serving.progressing,
        serving.degraded,
        crate::validate::version_skew(store, schema_version),
        Verdict::ok(
            SPEC_ACCEPTED,
            "Accepted",
            "The spec is valid and every child is applied.",
        ),
        serving.ready,
    ];
    let monitored = monitoring.is_some();
    verdicts.extend(monitoring);
    let api: Api<SyncStore> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    update_status(ctx, &api, store, |current| SyncStoreStatus {
        observed_generation: store.metadata.generation,
        phase: Some(serving.phase.into()),
        conditions: unmonitored(
            resumed(merge(
                &current.conditions,
                &verdicts,
                store.metadata.generation,
                Timestamp::now(),
            )),
            monitored,
        ),
        replicas: serving.replicas,
        ready_replicas: serving.ready_replicas,
        endpoint: Some(children::endpoint(store)),
        schema_version: Some(schema_version),
        failures: 0,
        database: Some(DatabaseStatus {
            engine: names.engine,
            schema: names.schema.clone(),
            role: names.role.clone(),
            store_id: names.store_id.clone(),
            server: Some(database.server.clone()),
        }),
    })
    .await
}

/// `DatabaseReady` after a successful provisioning: True, with the reason
/// and message of a warning if provisioning had one.
fn database_ready(database: &Provisioned, names: &DbNames) -> Verdict {
    let done = format!(
        "Schema {} and role {} are in place and marked as this store's",
        names.schema, names.role
    );
    match database.warnings.first() {
        None => Verdict::ok("DatabaseReady", "Provisioned", format!("{done}.")),
        Some(w) => Verdict::ok(
            "DatabaseReady",
            w.reason,
            format!("{done}, but {}.", w.message),
        ),
    }
}

/// `conditions` without `MonitoringReady` unless monitoring is on: a store
/// that turned it off has no PodMonitor to report on.
fn unmonitored(
    mut conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    monitored: bool,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    if !monitored {
        conditions.retain(|c| c.type_ != crate::monitoring::MONITORING_READY);
    }
    conditions
}

/// `conditions` without the paused condition: reconciling again means the
/// pause is over.
pub fn resumed(
    mut conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.retain(|c| c.type_ != PAUSED);
    conditions
}

async fn write_failure(
    ctx: &Context,
    api: &Api<SyncStore>,
    store: &SyncStore,
    err: &Error,
    failures: u32,
) -> Result<()> {
    let serving = serving_anyway(ctx, store).await;
    let verdicts = failure_verdicts(store, err, serving.as_ref());
    update_status(ctx, api, store, |current| SyncStoreStatus {
        observed_generation: store.metadata.generation,
        phase: Some("Failed".into()),
        conditions: resumed(merge(
            &current.conditions,
            &verdicts,
            store.metadata.generation,
            Timestamp::now(),
        )),
        replicas: serving.as_ref().map_or(current.replicas, |s| s.replicas),
        ready_replicas: serving
            .as_ref()
            .map_or(current.ready_replicas, |s| s.ready_replicas),
        failures,
        ..current.clone()
    })
    .await
}

/// What the store's Deployment says about serving, after any failure: the
/// pods may well serve (the database is unreachable, or the store was
/// refused after its Deployment was applied by an earlier reconcile), and
/// `Ready` must say so. None when there is no Deployment of this store's
/// (it was never provisioned, or the name is another store's) or it cannot
/// be read.
async fn serving_anyway(ctx: &Context, store: &SyncStore) -> Option<Serving> {
    let api: Api<Deployment> =
        Api::namespaced(ctx.client.clone(), &store.namespace().unwrap_or_default());
    let deployment = api.get_opt(&names(store).deployment).await.ok()??;
    // A Deployment of that name that another store controls (the analytics
    // consumer of store `news` is `news-analytics`) is not this store's.
    let ours = deployment
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == store.meta().uid.as_ref());
    if !ours {
        return None;
    }
    // The replica count the Deployment was last given is the minimum it
    // is measured against: a refused spec's count was never applied.
    let mut applied = store.clone();
    if let Some(replicas) = deployment.spec.as_ref().and_then(|s| s.replicas) {
        if applied.spec.autoscaling.is_none() {
            applied.spec.replicas = replicas;
        }
    }
    Some(serving::serving(&applied, &deployment))
}

/// The condition that says whether the spec was accepted: False with
/// reason `InvalidSpec` while the store is refused for its spec (a value
/// the pods would exit on, a child the apiserver refuses, a child name
/// taken by another store).
pub const SPEC_ACCEPTED: &str = "SpecAccepted";

/// The conditions a failure sets: `Ready` (from `serving` when the
/// Deployment exists, else the failure), `DatabaseReady`, `SchemaMigrated`
/// or `SpecAccepted` for a failure of theirs, and `VersionSkew` Unknown while the schema's version
/// is not known.
fn failure_verdicts(store: &SyncStore, err: &Error, serving: Option<&Serving>) -> Vec<Verdict> {
    let failed = |type_| Verdict::fail(type_, err.reason(), err.to_string());
    let mut verdicts = Vec::new();
    match err {
        Error::SecretMissing { .. }
        | Error::InvalidDatabaseUrl(_)
        | Error::DatabaseUnreachable(_)
        | Error::SchemaOwnedByAnother(_)
        | Error::ImmutableFieldChanged(_)
        | Error::Provisioning(_) => verdicts.push(failed("DatabaseReady")),
        Error::Migration(_) => verdicts.push(failed("SchemaMigrated")),
        _ => {}
    }
    if !verdicts.is_empty() || matches!(err, Error::KeyStore(_)) {
        verdicts.push(crate::validate::version_skew_unknown(store, err));
    }
    if matches!(err, Error::InvalidSpec(_) | Error::ChildTaken { .. }) {
        verdicts.push(failed(SPEC_ACCEPTED));
    }
    match serving {
        Some(s) => verdicts.extend([
            s.available.clone(),
            s.progressing.clone(),
            s.degraded.clone(),
            s.ready.clone(),
        ]),
        None => verdicts.push(failed("Ready")),
    }
    verdicts
}

/// Writes the status that `f` derives from the live one. The reconcile
/// started from the watch's cached copy, which can be behind (a failure
/// written a moment ago, a pause just lifted): comparing with that copy
/// skipped writes that were needed, and left a store `Failed` after it had
/// recovered. Only a changed status is written, so a steady state writes
/// nothing (and triggers nothing). Also sets the store's metrics. A step
/// of the reconcile's trace (the attribute spells out
/// `syncstore::telemetry::TARGET`, which it cannot name).
#[tracing::instrument(target = "syncstore_trace", name = "operator.step", fields(otel.name = "write status"), skip_all)]
async fn update_status(
    ctx: &Context,
    api: &Api<SyncStore>,
    store: &SyncStore,
    f: impl FnOnce(&SyncStoreStatus) -> SyncStoreStatus,
) -> Result<()> {
    let live = api.get_status(&store.name_any()).await?;
    let current = live.status.clone().unwrap_or_default();
    let new = f(&current);
    ctx.metrics.observe(
        KIND,
        crate::metrics::Id::of(store),
        is_true(&new.conditions, "Ready"),
        new.phase.as_deref().unwrap_or("Pending"),
    );
    ctx.metrics.replicas(
        crate::metrics::Id::of(store),
        new.replicas,
        new.ready_replicas,
    );
    if live.status.as_ref() == Some(&new) {
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
        // Only a store that provisioned its schema has one to retain: a
        // refused store recorded here would let the next store of its
        // name adopt a schema someone else marked with its UID.
        if provisioned(store) {
            record_retained(store, ctx).await?;
        }
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
    let tls = store.spec.database.ssl == Some(true);
    let target = target(
        store,
        &names,
        predecessor(store, ctx).await.unwrap_or(None),
        tls,
    );
    let result = match admin_url(store, ctx).await {
        Ok(admin) => database::drop_store(&admin, &target).await,
        Err(e) => Err(e),
    };
    match result {
        // Never retried: another store's schema stays, whatever happens.
        // The error's own advice (choose another schemaName) is for a store
        // being provisioned, not one being deleted: the event says only
        // what was left and whose it is.
        Err(Error::SchemaOwnedByAnother(whose)) => {
            publish(
                ctx,
                store,
                EventType::Warning,
                "DropRefused",
                &format!("Dropped only what this store owns: {whose}, so it was left in place"),
                "Cleanup",
            )
            .await;
            Ok(Action::await_change())
        }
        Ok(dropped) => {
            let (reason, note) = dropped_note(&target, &dropped);
            publish(ctx, store, EventType::Normal, reason, &note, "Cleanup").await;
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

/// The event (reason, note) that says what a `Delete` cleanup dropped.
fn dropped_note(target: &Target, dropped: &database::Dropped) -> (&'static str, String) {
    let (schema, role) = (&target.schema, &target.role);
    match (dropped.schema, dropped.role) {
        (true, true) => ("SchemaDropped", format!("Dropped {schema} and its role {role}.")),
        (true, false) => ("SchemaDropped", format!("Dropped {schema}; its role {role} did not exist.")),
        (false, true) => ("SchemaDropped", format!("Dropped role {role}; {schema} did not exist.")),
        (false, false) => ("NothingToDrop", format!("Dropped nothing: neither {schema} nor role {role} exists, so the store had no data on the database server.")),
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
