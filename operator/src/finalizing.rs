//! The object that kube-rs's finalizer helper works from.
//!
//! The helper adds its finalizer with a JSON patch that first tests
//! `/metadata/finalizers` against the object it was given, and removes it
//! by index with another test. A controller hands it the watch cache's
//! copy, which can be behind the apiserver: right after the finalizer was
//! added, another trigger (the ApiKey's store changing, an owned child, a
//! restart's first reconciles racing the watch) reconciles the old copy,
//! which lacks the finalizer. The helper then tries to add it again, the
//! test fails, and the apiserver answers 422 (`the server rejected our
//! request due to an error in our request`): a failed reconcile, a
//! Warning, a failure counted, for nothing. So when the cached copy lacks
//! the finalizer or is being deleted (the two cases in which the helper
//! patches), the live object is read first and handed over instead.

use std::{fmt::Debug, sync::Arc};

use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::error::Result;

/// The object to give the finalizer helper: `cached` when it carries
/// `finalizer` and is not being deleted (the helper then patches nothing),
/// else the live object. None when the object no longer exists.
pub async fn fresh<K>(api: &Api<K>, cached: Arc<K>, finalizer: &str) -> Result<Option<Arc<K>>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let has = cached.finalizers().iter().any(|f| f == finalizer);
    if has && cached.meta().deletion_timestamp.is_none() {
        return Ok(Some(cached));
    }
    Ok(api.get_opt(&cached.name_any()).await?.map(Arc::new))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::{client::Body, Client};

    fn object(finalizers: &[&str]) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "k1", "namespace": "team-a", "finalizers": finalizers},
        }))
        .expect("object")
    }

    fn respond(send: tower_test::mock::SendResponse<Response<Body>>, obj: &ConfigMap) {
        let body = Body::from(serde_json::to_vec(obj).expect("json"));
        send.send_response(
            Response::builder()
                .status(200)
                .body(body)
                .expect("response"),
        );
    }

    /// A cached copy without the finalizer (the watch is behind the patch
    /// that added it): the live object, which has it, is what the helper
    /// gets, so it patches nothing and no 422 comes back.
    #[tokio::test]
    async fn a_stale_copy_is_replaced_by_the_live_object() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<ConfigMap> = Api::namespaced(Client::new(service, "default"), "team-a");
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a GET");
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.uri().path(), "/api/v1/namespaces/team-a/configmaps/k1");
            respond(send, &object(&["syncstore.dev/revoke"]));
        });
        let got = fresh(&api, Arc::new(object(&[])), "syncstore.dev/revoke")
            .await
            .expect("read")
            .expect("exists");
        assert_eq!(got.finalizers(), ["syncstore.dev/revoke"]);
        server.await.expect("server assertions");
    }

    /// A copy that has the finalizer and is not being deleted is used as
    /// it is: no request at all.
    #[tokio::test]
    async fn a_current_copy_costs_no_request() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<ConfigMap> = Api::namespaced(Client::new(service, "default"), "team-a");
        let cached = Arc::new(object(&["syncstore.dev/revoke"]));
        let got = fresh(&api, cached.clone(), "syncstore.dev/revoke")
            .await
            .expect("no request")
            .expect("exists");
        assert!(Arc::ptr_eq(&got, &cached));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), handle.next_request())
                .await
                .is_err()
        );
    }
}
