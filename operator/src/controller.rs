//! Wires both reconcilers to watches of their kinds and of what they own.

use std::{collections::BTreeSet, future::Future, sync::Arc};

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service},
};
use kube::{
    runtime::{
        controller::Controller,
        reflector::{self, reflector, ObjectRef, Store},
        watcher,
        watcher::Config,
        PredicateConfig, WatchStreamExt,
    },
    Api, Client, Resource, ResourceExt,
};
use serde::de::DeserializeOwned;
use syncstore_crds::{ApiKey, SyncStore, ROTATE_ANNOTATION};

use crate::{
    apikey,
    children::MANAGER,
    context::{Context, PAUSE_ANNOTATION},
    health::Health,
    metrics::Metrics,
    store, trace,
};

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// What makes a resource worth reconciling: a spec change (generation), the
/// rotate and pause annotations, a finalizer change (the finalizer helper adds ours and
/// waits for the resulting event), or the start of deletion. Status writes, ours
/// included, change none of these, so they cause no reconcile storm.
fn changed<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.meta().generation.hash(&mut h);
    obj.meta()
        .annotations
        .as_ref()
        .map(|a| (a.get(ROTATE_ANNOTATION), a.get(PAUSE_ANNOTATION)))
        .hash(&mut h);
    obj.meta().finalizers.hash(&mut h);
    obj.meta().deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// The watch of `kind`, reporting to `health` whether it works, and
/// removing the metric series of objects that are gone: on a delete, and
/// after a re-list for objects it no longer has. The reconcile of a
/// finalized object removes them too, but an object can go without one
/// (it never got a finalizer, say created paused; or a finalizer removed
/// by hand), and then no reconcile runs.
fn watched<K>(
    api: Api<K>,
    kind: &'static str,
    health: Health,
    metrics: Metrics,
) -> impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + std::fmt::Debug + Send + 'static,
{
    health.watch_ok(kind);
    let mut listed: BTreeSet<(String, String)> = BTreeSet::new();
    let id = |o: &K| (o.namespace().unwrap_or_default(), o.name_any());
    watcher(api, Config::default()).map(move |event| {
        match &event {
            Ok(e) => {
                health.watch_ok(kind);
                match e {
                    watcher::Event::Delete(o) => metrics.forget(kind, crate::metrics::Id::of(o)),
                    watcher::Event::Init => listed.clear(),
                    watcher::Event::InitApply(o) => {
                        listed.insert(id(o));
                    }
                    watcher::Event::InitDone => metrics.retain(kind, &listed),
                    watcher::Event::Apply(_) => {}
                }
            }
            Err(e) => health.watch_failed(kind, &e.to_string()),
        }
        event
    })
}

/// The SyncStores that read `secret` (admin URL, Redis URL or CA): fixing or
/// rotating such a Secret reconciles them at once instead of at the next
/// backoff step.
fn stores_reading(stores: &Store<SyncStore>, secret: &Secret) -> Vec<ObjectRef<SyncStore>> {
    let name = secret.name_any();
    let ns = secret.namespace();
    stores
        .state()
        .iter()
        .filter(|s| s.namespace() == ns)
        .filter(|s| {
            s.spec.database.admin_secret_ref.name == name
                || s.spec.redis.as_ref().is_some_and(|r| {
                    r.url_secret_ref.name == name
                        || r.tls.as_ref().is_some_and(|t| t.ca_secret_ref.name == name)
                })
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// The ApiKeys of `store`: a key waiting for its store is reconciled as
/// soon as the store's status changes, not at its next requeue.
fn keys_of(keys: &Store<ApiKey>, store: &SyncStore) -> Vec<ObjectRef<ApiKey>> {
    let name = store.name_any();
    let ns = store.namespace();
    keys.state()
        .iter()
        .filter(|k| k.namespace() == ns && k.spec.store_ref == name)
        .map(|k| ObjectRef::from_obj(k.as_ref()))
        .collect()
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let owned = Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));

    let (reader, writer) = reflector::store::<SyncStore>();
    let stores = reflector(
        writer,
        watched(
            api::<SyncStore>(&client, ns),
            store::KIND,
            health.clone(),
            ctx.metrics.clone(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(changed, PredicateConfig::default());
    let store_reader = reader.clone();
    let store_controller = Controller::for_stream(stores, reader)
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Secret>(&client, ns), owned.clone())
        .watches(api::<Secret>(&client, ns), Config::default(), move |s| {
            stores_reading(&store_reader, &s)
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(
            |store, ctx| trace::reconcile(store::KIND, store, ctx, store::reconcile),
            store::error_policy,
            ctx.clone(),
        )
        .for_each(|_| std::future::ready(()));

    let (reader, writer) = reflector::store::<ApiKey>();
    let keys = reflector(
        writer,
        watched(
            api::<ApiKey>(&client, ns),
            apikey::KIND,
            health.clone(),
            ctx.metrics.clone(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(changed, PredicateConfig::default());
    let key_reader = reader.clone();
    let key_controller = Controller::for_stream(keys, reader)
        .owns(api::<Secret>(&client, ns), owned)
        .watches(api::<SyncStore>(&client, ns), Config::default(), move |s| {
            keys_of(&key_reader, &s)
        })
        .graceful_shutdown_on(shutdown)
        .run(
            |key, ctx| trace::reconcile(apikey::KIND, key, ctx, apikey::reconcile),
            apikey::error_policy,
            ctx,
        )
        .for_each(|_| std::future::ready(()));

    let store_health = health.clone();
    tokio::join!(
        store_controller.map(move |()| store_health.stopped(store::KIND)),
        key_controller.map(move |()| health.stopped(apikey::KIND)),
    );
}
