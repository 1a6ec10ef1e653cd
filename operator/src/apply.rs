//! Writing children: server-side apply under one field manager (so drift
//! is reverted and other managers' fields are left alone), create-once for
//! generated secrets, and deletion of children no longer wanted.

use std::fmt::Debug;

use k8s_openapi::{api::core::v1::Secret, NamespaceResourceScope};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    Api, Client, Resource, ResourceExt,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{children::MANAGER, context::Result};

/// Applies `obj` with force, taking back any field another manager changed.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let params = PatchParams::apply(MANAGER).force();
    Ok(api
        .patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await?)
}

/// Returns the Secret named like `wanted`, creating it from `wanted` only if
/// it does not exist. Returns whether it was created.
pub async fn ensure_secret(client: &Client, wanted: &Secret) -> Result<(Secret, bool)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &wanted.namespace().unwrap_or_default());
    if let Some(found) = api.get_opt(&wanted.name_any()).await? {
        return Ok((found, false));
    }
    match api
        .create(
            &PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            },
            wanted,
        )
        .await
    {
        Ok(created) => Ok((created, true)),
        // Another reconcile (or a previous operator) got there first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            Ok((api.get(&wanted.name_any()).await?, false))
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes the objects of kind `K` labelled as children of `instance` whose
/// names are not in `keep`, e.g. the HPA after autoscaling was switched off.
pub async fn delete_orphans<K>(
    client: &Client,
    namespace: &str,
    instance: &str,
    keep: &[String],
) -> Result<Vec<String>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let selector =
        format!("app.kubernetes.io/instance={instance},app.kubernetes.io/managed-by={MANAGER}");
    let mut deleted = Vec::new();
    for obj in api
        .list_metadata(&ListParams::default().labels(&selector))
        .await?
    {
        let name = obj.name_any();
        if !keep.contains(&name) {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(name),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(deleted)
}

/// The value of `key` in a Secret's data, as text.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key).cloned())
        })
}

/// Reads `key` of Secret `name`, or says which is missing.
pub async fn read_secret_key(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let missing = || crate::context::Error::SecretMissing {
        name: name.into(),
        key: key.into(),
    };
    let secret = api.get_opt(name).await?.ok_or_else(missing)?;
    secret_value(&secret, key)
        .filter(|v| !v.is_empty())
        .ok_or_else(missing)
}

/// A random alphanumeric string of 40 characters (238 bits).
pub fn random_token() -> String {
    use rand::{distributions::Alphanumeric, Rng};
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}
