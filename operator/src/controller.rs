//! Wires both reconcilers to watches of their kinds and of what they own.

use std::{future::Future, sync::Arc};

use futures_util::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service},
};
use kube::{
    runtime::{
        controller::Controller, reflector, watcher, watcher::Config, PredicateConfig,
        WatchStreamExt,
    },
    Api, Client, Resource,
};
use serde::de::DeserializeOwned;
use syncstore_crds::{ApiKey, SyncStore, ROTATE_ANNOTATION};

use crate::{apikey, children::MANAGER, context::Context, store};

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
/// rotate annotation, a finalizer change (the finalizer helper adds ours and
/// waits for the resulting event), or the start of deletion. Status writes, ours
/// included, change none of these, so they cause no reconcile storm.
fn changed<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.meta().generation.hash(&mut h);
    obj.meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ANNOTATION))
        .hash(&mut h);
    obj.meta().finalizers.hash(&mut h);
    obj.meta().deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + Clone + 'static,
) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let owned = Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));

    let (reader, writer) = reflector::store::<SyncStore>();
    let stores = reflector(
        writer,
        watcher(api::<SyncStore>(&client, ns), Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(changed, PredicateConfig::default());
    let store_controller = Controller::for_stream(stores, reader)
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Secret>(&client, ns), owned.clone())
        .graceful_shutdown_on(shutdown.clone())
        .run(store::reconcile, store::error_policy, ctx.clone())
        .for_each(|_| std::future::ready(()));

    let (reader, writer) = reflector::store::<ApiKey>();
    let keys = reflector(
        writer,
        watcher(api::<ApiKey>(&client, ns), Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(changed, PredicateConfig::default());
    let key_controller = Controller::for_stream(keys, reader)
        .owns(api::<Secret>(&client, ns), owned)
        .graceful_shutdown_on(shutdown)
        .run(apikey::reconcile, apikey::error_policy, ctx)
        .for_each(|_| std::future::ready(()));

    tokio::join!(store_controller, key_controller);
}
