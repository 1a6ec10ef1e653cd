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

use crate::{
    children::MANAGER,
    error::{Error, Result},
};

/// Applies `obj` with force, taking back any field another manager changed.
pub async fn apply<K>(client: &Client, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    apply_with(client, obj, PatchParams::apply(MANAGER).force()).await
}

/// Whether the apiserver would take `obj` (a server-side dry run of
/// [`apply`]): refuses before anything else is applied a child that the
/// apiserver's own validation would refuse.
pub async fn dry_run<K>(client: &Client, obj: &K) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let params = PatchParams::apply(MANAGER).force().dry_run();
    apply_with(client, obj, params).await.map(|_| ())
}

async fn apply_with<K>(client: &Client, obj: &K, params: PatchParams) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    match api
        .patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await
    {
        Ok(applied) => Ok(applied),
        // 422: the child as the spec renders it is invalid (a resource
        // quantity the CRD could not check, say): the spec's fault, in the
        // apiserver's own words. Or the name is another store's child,
        // whose immutable selector or controller reference the apply would
        // change: say whose.
        Err(kube::Error::Api(status)) if status.code == 422 => {
            if let Some(owner) = taken_by(&api, obj).await {
                return Err(Error::ChildTaken {
                    kind: K::kind(&()).into(),
                    name: obj.name_any(),
                    owner,
                });
            }
            Err(Error::InvalidSpec(format!(
                "the Kubernetes API refused {} {}: {}",
                K::kind(&()),
                obj.name_any(),
                status.message
            )))
        }
        // 500 from server-side apply's typing of the object: a list whose
        // keys repeat (two `env` entries or volumes of one name), which no
        // apply of this spec can ever get past. The spec's fault too, not
        // a failure of the apiserver to retry.
        Err(kube::Error::Api(status))
            if status.code == 500 && status.message.contains(UNTYPABLE) =>
        {
            let problem = status
                .message
                .split_once("): ")
                .map_or(status.message.as_str(), |(_, p)| p);
            Err(Error::InvalidSpec(format!(
                "the Kubernetes API refused {} {}: {problem}",
                K::kind(&()),
                obj.name_any(),
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// How the apiserver words a server-side apply it cannot type against the
/// kind's schema, such as `… (ns/chat; apps/v1, Kind=Deployment):
/// .spec.template.spec.volumes: duplicate entries for key [name="geo"]`.
const UNTYPABLE: &str = "failed to create typed patch object";

/// Who controls the existing object named like `obj`, when it is not
/// whoever `obj` says should (`SyncStore chat`, plus `as its analytics
/// consumer` when its component label says so); None when it is ours,
/// absent or unreadable.
async fn taken_by<K>(api: &Api<K>, obj: &K) -> Option<String>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    let ours = obj.meta().owner_references.as_ref()?.first()?;
    let live = api.get_opt(&obj.name_any()).await.ok()??;
    let owner = live
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))?;
    if owner.uid == ours.uid {
        return None;
    }
    let role = live
        .labels()
        .get("app.kubernetes.io/component")
        .filter(|c| c.as_str() == "analytics")
        .map_or("", |_| " as its analytics consumer");
    Some(format!("{} {}{role}", owner.kind, owner.name))
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

/// The bytes of `key` in a Secret: `data`, else `stringData` (the
/// apiserver folds `stringData` into `data` on write, but a Secret built
/// in memory holds only what it was given).
pub fn secret_bytes(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.clone())
        .or_else(|| Some(secret.string_data.as_ref()?.get(key)?.clone().into_bytes()))
}

/// The value of `key` in a Secret, as text.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret_bytes(secret, key).and_then(|b| String::from_utf8(b).ok())
}

/// Reads `key` of Secret `name`, or says which is missing.
pub async fn read_secret_key(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let missing = || crate::error::Error::SecretMissing {
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

/// The exact requests, against a tower-test mock API server, as kube-rs's
/// controller-rs tests them.
#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use std::collections::BTreeMap;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn client() -> (Client, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
    }

    fn secret() -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("chat-secrets".into()),
                namespace: Some("team-a".into()),
                ..Default::default()
            },
            string_data: Some(BTreeMap::from([("JWT_SECRET".into(), "fresh".into())])),
            ..Default::default()
        }
    }

    async fn body_json(req: Request<Body>) -> serde_json::Value {
        let bytes = req.into_body().collect_bytes().await.expect("body");
        serde_json::from_slice(&bytes).expect("json body")
    }

    fn respond(
        send: tower_test::mock::SendResponse<Response<Body>>,
        code: u16,
        json: serde_json::Value,
    ) {
        let body = Body::from(serde_json::to_vec(&json).expect("json"));
        send.send_response(
            Response::builder()
                .status(code)
                .body(body)
                .expect("response"),
        );
    }

    #[tokio::test]
    async fn apply_is_a_forced_server_side_apply_under_our_manager() {
        let (client, mut handle) = client();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("one request");
            assert_eq!(req.method(), Method::PATCH);
            assert_eq!(
                req.uri().path(),
                "/api/v1/namespaces/team-a/secrets/chat-secrets"
            );
            let query = req.uri().query().unwrap_or_default().to_string();
            assert!(
                query.contains("fieldManager=syncstore-operator") && query.contains("force=true"),
                "{query}"
            );
            assert_eq!(
                req.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            let sent = body_json(req).await;
            assert_eq!(sent["metadata"]["name"], "chat-secrets");
            respond(send, 200, sent);
        });
        apply(&client, &secret()).await.expect("applied");
        server.await.expect("server assertions");
    }

    #[tokio::test]
    async fn ensure_secret_never_overwrites_an_existing_one() {
        let (client, mut handle) = client();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a GET");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(
                req.uri().path(),
                "/api/v1/namespaces/team-a/secrets/chat-secrets"
            );
            respond(
                send,
                200,
                serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": "chat-secrets", "namespace": "team-a"},
                    "data": {"JWT_SECRET": "b2xk"}}),
            );
            // No second request: the existing secret is kept as it is.
            assert!(tokio::time::timeout(
                std::time::Duration::from_millis(200),
                handle.next_request()
            )
            .await
            .is_err());
        });
        let (found, created) = ensure_secret(&client, &secret()).await.expect("ensured");
        assert!(!created);
        assert_eq!(secret_value(&found, "JWT_SECRET").as_deref(), Some("old"));
        server.await.expect("server assertions");
    }

    #[tokio::test]
    async fn ensure_secret_creates_a_missing_one() {
        let (client, mut handle) = client();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a GET");
            assert_eq!(req.method(), Method::GET);
            respond(
                send,
                404,
                serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
            );
            let (req, send) = handle.next_request().await.expect("a POST");
            assert_eq!(req.method(), Method::POST);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/team-a/secrets");
            assert!(req
                .uri()
                .query()
                .unwrap_or_default()
                .contains("fieldManager=syncstore-operator"));
            let sent = body_json(req).await;
            assert_eq!(sent["stringData"]["JWT_SECRET"], "fresh");
            respond(send, 201, sent);
        });
        let (_, created) = ensure_secret(&client, &secret()).await.expect("ensured");
        assert!(created);
        server.await.expect("server assertions");
    }
}
