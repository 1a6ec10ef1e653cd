//! The objects a SyncStore owns, built by pure functions of the store (and
//! of what was generated for it), so they are unit-tested without a cluster
//! and re-applied unchanged on every reconcile.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
            MetricSpec, MetricTarget, ResourceMetricSource,
        },
        core::v1::{
            Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource,
            EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler,
            ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            SeccompProfile, Secret, SecretEnvSource, SecretKeySelector, SecretVolumeSource,
            SecurityContext, Service, ServicePort, ServiceSpec, SleepAction, Volume, VolumeMount,
        },
        networking::v1::{
            HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
            IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::LabelSelector, apis::meta::v1::ObjectMeta, util::intstr::IntOrString,
    },
    ByteString,
};
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use syncstore_crds::SyncStore;

/// The field manager of every apply, and the `managed-by` label value.
pub const MANAGER: &str = "syncstore-operator";
/// Pod-template annotation whose change rolls the pods.
pub const CONFIG_HASH: &str = "syncstore.dev/config-hash";
/// Where the pods read `spec.redis.tls.caSecretRef` (REDIS_TLS_CA_FILE).
pub const REDIS_CA_FILE: &str = "/etc/syncstore/redis-tls/ca.crt";
/// The pod volume that holds it; `spec.podTemplate.volumes` cannot use the
/// name, nor its mount path, while `spec.redis.tls` is set.
pub const REDIS_CA_VOLUME: &str = "syncstore-redis-tls";
/// The container port of the data plane.
pub const HTTP_PORT: i32 = 3000;

/// The data-plane image a store runs: `spec.image`, or the image of this
/// operator's own release. Filled here rather than as a CRD default so that
/// a store that names no image follows the operator on upgrade (a CRD
/// default would be written into the object once and pin it forever).
pub fn image(store: &SyncStore) -> String {
    store
        .spec
        .image
        .clone()
        .unwrap_or_else(|| format!("{DEFAULT_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION")))
}

/// Where the default data-plane image comes from; its tag is the
/// operator's version.
pub const DEFAULT_IMAGE_REPOSITORY: &str = "ghcr.io/syncstore/syncstore";

/// Names of the children of store `name`.
pub struct Names {
    pub deployment: String,
    pub analytics: String,
    pub config: String,
    /// Generated once: JWT secrets and the database password.
    pub generated: String,
    /// Derived each reconcile: the store's database URL.
    pub database: String,
}

pub fn names(store: &SyncStore) -> Names {
    let n = store.name_any();
    Names {
        deployment: n.clone(),
        analytics: format!("{n}-analytics"),
        config: format!("{n}-config"),
        generated: format!("{n}-secrets"),
        database: database_secret_name(&n),
    }
}

/// The Secret with a store's `DATABASE_URL` (its role's credentials).
pub fn database_secret_name(store: &str) -> String {
    format!("{store}-db")
}

/// `app.kubernetes.io/{name,instance,managed-by}`, plus the component.
pub fn labels(store: &SyncStore, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "syncstore".into()),
        ("app.kubernetes.io/instance".into(), store.name_any()),
        ("app.kubernetes.io/managed-by".into(), MANAGER.into()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

/// Selects the pods of one component; a subset of [`labels`] that never
/// changes, because a Deployment's selector is immutable.
fn selector(store: &SyncStore, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/instance".into(), store.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

fn meta(store: &SyncStore, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: store.namespace(),
        labels: Some(labels(store, component)),
        owner_references: store.controller_owner_ref(&()).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// The engine and names a store's data lives under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbNames {
    pub engine: syncstore_crds::Engine,
    pub schema: String,
    pub role: String,
    /// SYNCSTORE_STORE.
    pub store_id: String,
    /// Provisioned by an operator version that neither marked ownership nor
    /// recorded names: its schema and role may exist unmarked.
    pub legacy: bool,
}

/// The names a store uses, in this order:
/// 1. those recorded in `status.database` at its first provisioning (so an
///    upgrade never moves a store), refusing a spec that now says otherwise;
/// 2. for a store provisioned by an operator version before the records
///    (it has a `schemaVersion` but no `database` in status), the names that
///    version derived, `ss_<namespace>_<name>`;
/// 3. for a new store, [`derive_name`](crate::database::derive_name):
///    unique per (namespace, name) within each engine's identifier limits.
///
/// The role is always derived from the store, never from `schemaName`, so a
/// `schemaName` that names another store's schema cannot name its role too.
pub fn db_names(store: &SyncStore) -> Result<DbNames, crate::error::Error> {
    use crate::database::{derive_name, legacy_name, MYSQL_USER_MAX, PG_MAX};
    use syncstore_crds::Engine;
    let ns = store.namespace().unwrap_or_default();
    let name = store.name_any();
    let spec = &store.spec.database;
    let status = store.status.as_ref();
    if let Some(rec) = status.and_then(|s| s.database.as_ref()) {
        return recorded_names(store, rec);
    }
    if status.is_some_and(|s| s.schema_version.is_some()) {
        let schema = spec
            .schema_name
            .clone()
            .unwrap_or_else(|| legacy_name(&ns, &name, PG_MAX));
        let role = match spec.engine {
            Engine::Mysql if schema.len() > MYSQL_USER_MAX => {
                legacy_name(&ns, &name, MYSQL_USER_MAX)
            }
            _ => schema.clone(),
        };
        return Ok(DbNames {
            engine: spec.engine,
            schema,
            role,
            store_id: legacy_name(&ns, &name, PG_MAX),
            legacy: true,
        });
    }
    let role_max = match spec.engine {
        Engine::Postgres => PG_MAX,
        Engine::Mysql => MYSQL_USER_MAX,
    };
    Ok(DbNames {
        engine: spec.engine,
        schema: spec
            .schema_name
            .clone()
            .unwrap_or_else(|| derive_name(&ns, &name, PG_MAX)),
        role: derive_name(&ns, &name, role_max),
        store_id: derive_name(&ns, &name, PG_MAX),
        legacy: false,
    })
}

/// The names recorded at a store's first provisioning, if its spec still
/// agrees with them: the engine and `schemaName` cannot change afterwards.
fn recorded_names(
    store: &SyncStore,
    rec: &syncstore_crds::DatabaseStatus,
) -> Result<DbNames, crate::error::Error> {
    use crate::database::{derive_name, legacy_name, PG_MAX};
    use crate::error::Error;
    let ns = store.namespace().unwrap_or_default();
    let name = store.name_any();
    let spec = &store.spec.database;
    if rec.engine != spec.engine {
        return Err(Error::ImmutableFieldChanged(format!(
            "spec.database.engine changed from {} to {} after provisioning; a store cannot move between engines, so change it back",
            serde_plain(&rec.engine),
            serde_plain(&spec.engine)
        )));
    }
    let derived = [
        derive_name(&ns, &name, PG_MAX),
        legacy_name(&ns, &name, PG_MAX),
    ];
    let same = match &spec.schema_name {
        Some(s) => *s == rec.schema,
        None => derived.contains(&rec.schema),
    };
    if !same {
        return Err(Error::ImmutableFieldChanged(format!(
            "spec.database.schemaName changed after provisioning (the store uses {}); set it back",
            rec.schema
        )));
    }
    Ok(DbNames {
        engine: rec.engine,
        schema: rec.schema.clone(),
        role: rec.role.clone(),
        store_id: rec.store_id.clone(),
        legacy: false,
    })
}

/// The in-cluster URL of the data plane.
pub fn endpoint(store: &SyncStore) -> String {
    format!(
        "http://{}.{}.svc:{}",
        store.name_any(),
        store.namespace().unwrap_or_default(),
        store.spec.service.port
    )
}

/// Non-secret settings, as the data plane's environment variables.
/// `key_prefix` is the operator's own (`--key-prefix`): the pods must
/// know it for their log redaction to recognise the keys the operator
/// generates, and for the keys they mint to look the same.
///
/// Long because it is one table, a row per variable: split, the list of
/// what a store's pods are told would be in pieces.
pub fn config_map(store: &SyncStore, key_prefix: &str) -> ConfigMap {
    let s = &store.spec;
    let mut data = BTreeMap::from([
        ("PORT".to_string(), HTTP_PORT.to_string()),
        ("API_KEY_TOKEN_PREFIX".into(), key_prefix.to_string()),
        ("LOG_FORMAT".into(), "json".into()),
        (
            // Names the store's Redis channels and Kafka consumer group:
            // unique in the cluster, in the data plane's charset.
            "SYNCSTORE_STORE".into(),
            db_names(store).map(|n| n.store_id).unwrap_or_else(|_| {
                crate::database::derive_name(
                    &store.namespace().unwrap_or_default(),
                    &store.name_any(),
                    crate::database::PG_MAX,
                )
            }),
        ),
        (
            "CONFLICT_DEFAULT_STRATEGY".into(),
            serde_plain(&s.conflicts.default_strategy),
        ),
        ("ENABLE_ANALYTICS".into(), s.analytics.enabled.to_string()),
    ]);
    let limits = &s.limits;
    let geo = s.geoip.as_ref();
    let kafka = s.kafka.as_ref();
    let optional = [
        ("DB_CONNECTION_LIMIT", text(s.database.connection_limit)),
        ("DB_SSL", text(s.database.ssl)),
        ("MAX_ITEM_SIZE_KB", text(limits.max_item_size_kb)),
        (
            "MAX_STORAGE_PER_USER_MB",
            text(limits.max_storage_per_user_mb),
        ),
        (
            "TTL_CLEANUP_INTERVAL_HOURS",
            text(limits.ttl_cleanup_interval_hours),
        ),
        (
            "SYNC_TOMBSTONE_RETENTION_DAYS",
            text(limits.tombstone_retention_days),
        ),
        ("RATE_LIMIT_WINDOW_MS", text(s.rate_limit.window_ms)),
        ("RATE_LIMIT_MAX_REQUESTS", text(s.rate_limit.max_requests)),
        ("CONFLICT_RESOLVER_URL", s.conflicts.resolver_url.clone()),
        // Empty means any origin, as the CRD says; written out so that the
        // ConfigMap shows what the pods do.
        (
            "CORS_ORIGIN",
            Some(list(&s.cors_origins).unwrap_or("*".into())),
        ),
        ("TRUSTED_PROXIES", list(&s.trusted_proxies)),
        ("JWT_EXPIRES_IN", s.jwt.access_token_lifetime.clone()),
        (
            "JWT_REFRESH_EXPIRES_IN",
            s.jwt.refresh_token_lifetime.clone(),
        ),
        ("GEOIP_DB_PATH", geo.and_then(|g| g.database_path.clone())),
        (
            "GEOIP_COUNTRY_HEADER",
            geo.and_then(|g| g.country_header.clone()),
        ),
        ("KAFKA_BROKERS", kafka.map(|k| k.brokers.join(","))),
        ("KAFKA_TOPIC", kafka.map(|k| k.topic.clone())),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            data.insert(name.to_string(), value);
        }
    }
    ConfigMap {
        metadata: meta(store, names(store).config, "config"),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// A setting that may be unset, as an environment variable's text.
fn text<T: ToString>(v: Option<T>) -> Option<String> {
    v.map(|v| v.to_string())
}

/// A comma-separated list, or None for an empty one.
fn list(items: &[String]) -> Option<String> {
    (!items.is_empty()).then(|| items.join(","))
}

/// An enum's serde name (`LAST_WRITE_WINS`, …).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The generated secrets, created once and never regenerated: rotating the
/// JWT secret would sign every user out, and a new database password would
/// lock out running pods.
pub fn generated_secret(store: &SyncStore, random: &mut impl FnMut() -> String) -> Secret {
    Secret {
        metadata: meta(store, names(store).generated, "secrets"),
        string_data: Some(BTreeMap::from([
            ("JWT_SECRET".into(), random()),
            ("JWT_REFRESH_SECRET".into(), random()),
            ("DB_PASSWORD".into(), random()),
        ])),
        ..Secret::default()
    }
}

/// The store's database URL, derived from the admin URL's host and the
/// store's own credentials.
pub fn database_secret(store: &SyncStore, url: &str) -> Secret {
    Secret {
        metadata: meta(store, names(store).database, "database"),
        data: Some(BTreeMap::from([(
            "DATABASE_URL".into(),
            ByteString(url.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// A hash of everything the pods read at start, so that a change to any of
/// it rolls them: the ConfigMap, the database URL, and what they read from
/// the user's Secrets, the Redis URL and CA (a Secret read through
/// `secretKeyRef` reaches a pod only when it starts; a mounted one is
/// updated in place, but the CA is read once, at start).
pub fn config_hash(
    config: &ConfigMap,
    database_url: &str,
    from_secrets: &[Option<&str>],
) -> String {
    let mut h = Sha256::new();
    for (k, v) in config.data.iter().flatten() {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.update(database_url.as_bytes());
    // Absent values add nothing, so a store without them keeps the hash
    // it had before they existed (no roll on an operator upgrade).
    for value in from_secrets.iter().flatten() {
        h.update([0]);
        h.update(value.as_bytes());
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The environment every data-plane container shares.
fn env(store: &SyncStore) -> (Vec<EnvVar>, Vec<EnvFromSource>) {
    let n = names(store);
    let mut env = vec![EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..EnvVar::default()
    }];
    if store.spec.redis.as_ref().is_some_and(|r| r.tls.is_some()) {
        env.push(EnvVar {
            name: "REDIS_TLS_CA_FILE".into(),
            value: Some(REDIS_CA_FILE.into()),
            ..EnvVar::default()
        });
    }
    if let Some(redis) = &store.spec.redis {
        env.push(EnvVar {
            name: "REDIS_URL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: redis.url_secret_ref.name.clone(),
                    key: redis.url_secret_ref.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..EnvVar::default()
        });
    }
    // Last, so that a name also rendered above is the user's value (the
    // CRD refuses the operator-managed names).
    env.extend(store.spec.env.iter().cloned());
    let from = vec![
        EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: n.config,
                optional: Some(false),
            }),
            ..Default::default()
        },
        EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: n.generated,
                optional: Some(false),
            }),
            ..Default::default()
        },
        EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: n.database,
                optional: Some(false),
            }),
            ..Default::default()
        },
    ];
    (env, from)
}

fn container(store: &SyncStore, command: &str) -> Container {
    let (env, env_from) = env(store);
    Container {
        name: "syncstore".into(),
        image: Some(image(store)),
        args: Some(vec![command.into()]),
        env: Some(env),
        env_from: Some(env_from),
        resources: store.spec.resources.clone(),
        volume_mounts: non_empty_with(
            &store.spec.pod_template.volume_mounts,
            redis_ca(store).map(|(_, mount)| mount),
        ),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

/// The volume (named [`REDIS_CA_VOLUME`]) and read-only mount that put
/// `spec.redis.tls.caSecretRef` at [`REDIS_CA_FILE`], if it is set.
pub fn redis_ca(store: &SyncStore) -> Option<(Volume, VolumeMount)> {
    let ca = &store.spec.redis.as_ref()?.tls.as_ref()?.ca_secret_ref;
    let (dir, file) = REDIS_CA_FILE.rsplit_once('/')?;
    let volume = Volume {
        name: REDIS_CA_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(ca.name.clone()),
            items: Some(vec![KeyToPath {
                key: ca.key.clone(),
                path: file.into(),
                mode: None,
            }]),
            default_mode: Some(0o444),
            optional: Some(false),
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: REDIS_CA_VOLUME.into(),
        mount_path: dir.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    Some((volume, mount))
}

/// The user's entries then the operator's own, or none at all.
fn non_empty_with<T: Clone>(user: &[T], ours: Option<T>) -> Option<Vec<T>> {
    let all: Vec<T> = user.iter().cloned().chain(ours).collect();
    (!all.is_empty()).then_some(all)
}

fn non_empty<T: Clone>(v: &[T]) -> Option<Vec<T>> {
    (!v.is_empty()).then(|| v.to_vec())
}

/// The pod spec of either Deployment: the operator's hardening plus the
/// scheduling and identity fields of `spec.podTemplate`, passed through.
fn pod_spec(store: &SyncStore, containers: Vec<Container>) -> PodSpec {
    let t = &store.spec.pod_template;
    PodSpec {
        containers,
        affinity: t.affinity.clone(),
        tolerations: non_empty(&t.tolerations),
        node_selector: (!t.node_selector.is_empty()).then(|| t.node_selector.clone()),
        topology_spread_constraints: non_empty(&t.topology_spread_constraints),
        image_pull_secrets: non_empty(&t.image_pull_secrets),
        service_account_name: t.service_account_name.clone(),
        priority_class_name: t.priority_class_name.clone(),
        volumes: non_empty_with(&t.volumes, redis_ca(store).map(|(volume, _)| volume)),
        termination_grace_period_seconds: Some(30),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    }
}

/// The pod template: `podTemplate.metadata` first, then the operator's
/// labels and hash over it, so the selector and the roll-on-change hash
/// always hold.
fn template(store: &SyncStore, component: &str, hash: &str, spec: PodSpec) -> PodTemplateSpec {
    let extra = &store.spec.pod_template.metadata;
    let mut pod_labels = extra.labels.clone();
    pod_labels.extend(labels(store, component));
    let mut annotations = extra.annotations.clone();
    annotations.insert(CONFIG_HASH.into(), hash.into());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(spec),
    }
}

/// The `syncstore serve` Deployment. With autoscaling set, `replicas` is
/// left out of the applied object so that the HPA, not the operator, owns it.
pub fn deployment(store: &SyncStore, hash: &str) -> Deployment {
    let mut main = container(store, "serve");
    main.ports = Some(vec![ContainerPort {
        name: Some("http".into()),
        container_port: HTTP_PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }]);
    main.readiness_probe = Some(probe("/ready", 5, 3));
    main.liveness_probe = Some(probe("/health", 10, 3));
    main.startup_probe = Some(probe("/health", 2, 30));
    // The Service stops sending new connections while the pod sleeps, then
    // SIGTERM makes the server drain what is still open.
    main.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction { seconds: 5 }),
            ..Default::default()
        }),
        ..Lifecycle::default()
    });
    Deployment {
        metadata: meta(store, names(store).deployment, "server"),
        spec: Some(DeploymentSpec {
            replicas: store
                .spec
                .autoscaling
                .is_none()
                .then_some(store.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector(store, "server")),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".into())),
                }),
            }),
            template: template(store, "server", hash, pod_spec(store, vec![main])),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// The `syncstore analytics` consumer, when analytics flow through Kafka.
pub fn analytics_deployment(store: &SyncStore, hash: &str) -> Option<Deployment> {
    let a = &store.spec.analytics;
    if !a.enabled || store.spec.kafka.is_none() || a.consumer_replicas == 0 {
        return None;
    }
    Some(Deployment {
        metadata: meta(store, names(store).analytics, "analytics"),
        spec: Some(DeploymentSpec {
            replicas: Some(a.consumer_replicas),
            selector: LabelSelector {
                match_labels: Some(selector(store, "analytics")),
                ..Default::default()
            },
            template: template(
                store,
                "analytics",
                hash,
                pod_spec(store, vec![analytics_container(store)]),
            ),
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

/// The consumer's container: `/health` and `/metrics` on the `http` port
/// (which the PodMonitor of `spec.monitoring` scrapes), no traffic.
fn analytics_container(store: &SyncStore) -> Container {
    let mut c = container(store, "analytics");
    c.ports = Some(vec![ContainerPort {
        name: Some("http".into()),
        container_port: HTTP_PORT,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }]);
    c
}

pub fn service(store: &SyncStore) -> Service {
    let s = &store.spec.service;
    let mut metadata = meta(store, store.name_any(), "server");
    if !s.annotations.is_empty() {
        metadata.annotations = Some(s.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(s.r#type.clone()),
            selector: Some(selector(store, "server")),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: s.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

pub fn hpa(store: &SyncStore) -> Option<HorizontalPodAutoscaler> {
    let a = store.spec.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: meta(store, store.name_any(), "server"),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: names(store).deployment,
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(a.target_cpu_utilization),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    })
}

/// At most one pod down at a time for voluntary disruptions, so a drain
/// never takes the whole store offline.
pub fn pdb(store: &SyncStore) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(store, store.name_any(), "server"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(store, "server")),
                ..Default::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

pub fn ingress(store: &SyncStore) -> Option<Ingress> {
    let i = store.spec.ingress.as_ref()?;
    let mut metadata = meta(store, store.name_any(), "server");
    if !i.annotations.is_empty() {
        metadata.annotations = Some(i.annotations.clone());
    }
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: i.class_name.clone(),
            tls: i.tls_secret_name.as_ref().map(|s| {
                vec![IngressTLS {
                    hosts: Some(vec![i.host.clone()]),
                    secret_name: Some(s.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(i.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: store.name_any(),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".into()),
                                    ..Default::default()
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use syncstore_crds::{Autoscaling, SyncStoreSpec};

    fn store(yaml: &str) -> SyncStore {
        let spec: SyncStoreSpec = serde_yaml::from_str(yaml).expect("spec parses");
        let mut s = SyncStore::new("chat", spec);
        s.metadata.namespace = Some("team-a".into());
        s.metadata.uid = Some("uid-1".into());
        s
    }

    const BASE: &str =
        "image: syncstore:1\ndatabase: {engine: postgres, adminSecretRef: {name: pg-admin}}\n";

    #[test]
    fn every_child_is_owned_and_labelled() {
        let s = store(BASE);
        let owner = s.controller_owner_ref(&()).expect("owner ref");
        let metas = [
            config_map(&s, "sk_live_").metadata,
            deployment(&s, "h").metadata,
            service(&s).metadata,
            pdb(&s).metadata,
            database_secret(&s, "u").metadata,
            generated_secret(&s, &mut || "x".into()).metadata,
        ];
        for m in metas {
            assert_eq!(
                m.owner_references.as_deref(),
                Some(std::slice::from_ref(&owner))
            );
            assert_eq!(m.namespace.as_deref(), Some("team-a"));
            let l = m.labels.expect("labels");
            assert_eq!(l["app.kubernetes.io/managed-by"], MANAGER);
            assert_eq!(l["app.kubernetes.io/instance"], "chat");
        }
        assert!(owner.controller == Some(true));
    }

    #[test]
    fn a_redis_ca_is_mounted_read_only_where_redis_tls_ca_file_points() {
        let s = store(&format!(
            "{BASE}redis: {{urlSecretRef: {{name: redis}}, tls: {{caSecretRef: {{name: redis-ca}}}}}}\npodTemplate:\n  volumes: [{{name: geo, emptyDir: {{}}}}]\n  volumeMounts: [{{name: geo, mountPath: /geo}}]\n"
        ));
        let pod = deployment(&s, "abc")
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod");
        let volumes = pod.volumes.expect("volumes");
        assert_eq!(volumes.len(), 2, "the user's, then the CA's");
        let secret = volumes[1].secret.as_ref().expect("a Secret volume");
        assert_eq!(volumes[1].name, REDIS_CA_VOLUME);
        assert_eq!(secret.secret_name.as_deref(), Some("redis-ca"));
        let item = &secret.items.as_ref().expect("items")[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("ca.crt", "ca.crt")
        );
        let c = &pod.containers[0];
        let mounts = c.volume_mounts.as_ref().expect("mounts");
        assert_eq!(mounts[0].mount_path, "/geo");
        assert_eq!(
            (mounts[1].mount_path.as_str(), mounts[1].read_only),
            ("/etc/syncstore/redis-tls", Some(true))
        );
        let ca = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "REDIS_TLS_CA_FILE");
        assert_eq!(
            ca.and_then(|e| e.value.as_deref()),
            Some("/etc/syncstore/redis-tls/ca.crt")
        );
        // Without `tls`, nothing of it.
        let plain = store(&format!("{BASE}redis: {{urlSecretRef: {{name: redis}}}}\n"));
        let pod = deployment(&plain, "abc")
            .spec
            .expect("spec")
            .template
            .spec
            .expect("pod");
        assert_eq!(pod.volumes, None);
        assert!(!pod.containers[0]
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "REDIS_TLS_CA_FILE"));
    }

    #[test]
    fn the_deployment_serves_with_probes_env_and_drain() {
        let s = store(&format!(
            "{BASE}replicas: 3\nredis: {{urlSecretRef: {{name: redis}}}}\n"
        ));
        let d = deployment(&s, "abc");
        let spec = d.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        let pod = spec.template.spec.expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.args.as_deref(), Some(&["serve".to_string()][..]));
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/ready"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/health"));
        assert!(c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|p| p.sleep.as_ref())
            .is_some());
        let env = c.env.as_ref().expect("env");
        let redis = env
            .iter()
            .find(|e| e.name == "REDIS_URL")
            .expect("REDIS_URL");
        assert_eq!(
            redis
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|r| r.name.as_str()),
            Some("redis")
        );
        let from: Vec<String> = c
            .env_from
            .iter()
            .flatten()
            .filter_map(|e| {
                e.config_map_ref
                    .as_ref()
                    .map(|r| r.name.clone())
                    .or(e.secret_ref.as_ref().map(|r| r.name.clone()))
            })
            .collect();
        assert_eq!(from, ["chat-config", "chat-secrets", "chat-db"]);
        let annotations = spec
            .template
            .metadata
            .and_then(|m| m.annotations)
            .expect("annotations");
        assert_eq!(annotations[CONFIG_HASH], "abc");
        assert_eq!(
            spec.strategy
                .and_then(|s| s.rolling_update)
                .and_then(|r| r.max_unavailable),
            Some(IntOrString::Int(0))
        );
    }

    #[test]
    fn autoscaling_hands_replicas_to_the_hpa() {
        let mut s = store(BASE);
        assert!(hpa(&s).is_none());
        s.spec.autoscaling = Some(Autoscaling {
            min_replicas: 2,
            max_replicas: 5,
            target_cpu_utilization: 60,
        });
        assert_eq!(deployment(&s, "h").spec.and_then(|d| d.replicas), None);
        let h = hpa(&s).and_then(|h| h.spec).expect("hpa");
        assert_eq!((h.min_replicas, h.max_replicas), (Some(2), 5));
        assert_eq!(h.scale_target_ref.name, "chat");
    }

    #[test]
    fn config_carries_limits_and_changes_the_hash() {
        let s = store(&format!(
            "{BASE}limits: {{maxItemSizeKb: 64}}\nrateLimit: {{maxRequests: 500}}\ncorsOrigins: [https://a.example, https://b.example]\nconflicts: {{defaultStrategy: MERGE}}\n"
        ));
        let cm = config_map(&s, "sk_live_");
        let data = cm.data.clone().expect("data");
        assert_eq!(data["MAX_ITEM_SIZE_KB"], "64");
        assert_eq!(data["RATE_LIMIT_MAX_REQUESTS"], "500");
        assert_eq!(data["CORS_ORIGIN"], "https://a.example,https://b.example");
        assert_eq!(data["CONFLICT_DEFAULT_STRATEGY"], "MERGE");
        assert!(!data.contains_key("KAFKA_BROKERS"));
        let before = config_hash(&cm, "u", &[]);
        let mut other = s.clone();
        other.spec.limits.max_item_size_kb = Some(65);
        assert_ne!(
            before,
            config_hash(&config_map(&other, "sk_live_"), "u", &[])
        );
        assert_ne!(before, config_hash(&cm, "u2", &[]));
        assert_eq!(before, config_hash(&config_map(&s, "sk_live_"), "u", &[]));
        // A new Redis URL or CA in the user's Secrets rolls the pods too;
        // no CA leaves the hash as it was before CAs existed.
        let redis = config_hash(&cm, "u", &[Some("redis://a:6379"), None]);
        assert_ne!(before, redis);
        assert_eq!(redis, config_hash(&cm, "u", &[Some("redis://a:6379")]));
        assert_ne!(
            redis,
            config_hash(&cm, "u", &[Some("redis://b:6379"), None])
        );
        let ca = config_hash(&cm, "u", &[Some("redis://a:6379"), Some("CA1")]);
        assert_ne!(redis, ca);
        assert_ne!(
            ca,
            config_hash(&cm, "u", &[Some("redis://a:6379"), Some("CA2")])
        );
    }

    #[test]
    fn pod_template_env_and_settings_reach_both_deployments() {
        let s = store(&format!(
            "{BASE}kafka: {{brokers: [k:9092]}}\ntrustedProxies: [10.0.0.0/8]\ngeoip: {{databasePath: /geo/c.mmdb, countryHeader: CF-IPCountry}}\njwt: {{accessTokenLifetime: 1h, refreshTokenLifetime: 7d}}\nenv: [{{name: LOG_LEVEL, value: debug}}]\npodTemplate:\n  metadata: {{labels: {{team: a, app.kubernetes.io/component: x}}, annotations: {{a: b}}}}\n  nodeSelector: {{disk: ssd}}\n  tolerations: [{{key: k, operator: Exists}}]\n  affinity: {{podAntiAffinity: {{}}}}\n  topologySpreadConstraints: [{{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}}]\n  imagePullSecrets: [{{name: reg}}]\n  serviceAccountName: sa\n  priorityClassName: high\n  volumes: [{{name: geo, emptyDir: {{}}}}]\n  volumeMounts: [{{name: geo, mountPath: /geo}}]\n"
        ));
        let server = deployment(&s, "h");
        let consumer = analytics_deployment(&s, "h").expect("consumer");
        for (d, component) in [(server, "server"), (consumer, "analytics")] {
            let t = d.spec.expect("spec").template;
            let meta = t.metadata.expect("meta");
            let labels = meta.labels.expect("labels");
            assert_eq!(labels["team"], "a");
            assert_eq!(labels["app.kubernetes.io/component"], component);
            let annotations = meta.annotations.expect("annotations");
            assert_eq!(
                (annotations["a"].as_str(), annotations[CONFIG_HASH].as_str()),
                ("b", "h")
            );
            let pod = t.spec.expect("pod");
            assert_eq!(pod.node_selector.expect("ns")["disk"], "ssd");
            assert_eq!(pod.tolerations.expect("t")[0].key.as_deref(), Some("k"));
            assert!(pod.affinity.and_then(|a| a.pod_anti_affinity).is_some());
            assert_eq!(
                pod.topology_spread_constraints.expect("tsc")[0].topology_key,
                "zone"
            );
            assert_eq!(pod.image_pull_secrets.expect("ips")[0].name, "reg");
            assert_eq!(pod.service_account_name.as_deref(), Some("sa"));
            assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
            assert_eq!(pod.volumes.expect("volumes")[0].name, "geo");
            let c = &pod.containers[0];
            assert_eq!(
                c.volume_mounts.as_ref().expect("mounts")[0].mount_path,
                "/geo"
            );
            assert_eq!(c.image.as_deref(), Some("syncstore:1"));
            let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
            assert_eq!(env, ["POD_NAME", "LOG_LEVEL"], "extra env comes last");
        }
        let data = config_map(&s, "sk_live_").data.expect("data");
        assert_eq!(data["API_KEY_TOKEN_PREFIX"], "sk_live_");
        assert_eq!(data["TRUSTED_PROXIES"], "10.0.0.0/8");
        assert_eq!(data["GEOIP_DB_PATH"], "/geo/c.mmdb");
        assert_eq!(data["GEOIP_COUNTRY_HEADER"], "CF-IPCountry");
        assert_eq!(data["JWT_EXPIRES_IN"], "1h");
        assert_eq!(data["JWT_REFRESH_EXPIRES_IN"], "7d");
        assert_eq!(data["CORS_ORIGIN"], "*");
        assert!(!data.contains_key("DB_SSL"));
        // No image: the operator's own release.
        let mut bare = s.clone();
        bare.spec.image = None;
        assert_eq!(
            image(&bare),
            format!("ghcr.io/syncstore/syncstore:{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn analytics_consumer_only_with_kafka() {
        let s = store(BASE);
        assert!(analytics_deployment(&s, "h").is_none());
        let s = store(&format!(
            "{BASE}kafka: {{brokers: [k:9092]}}\nanalytics: {{consumerReplicas: 2}}\n"
        ));
        let d = analytics_deployment(&s, "h").expect("consumer");
        assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));
        let args = d
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].args.clone());
        assert_eq!(args, Some(Some(vec!["analytics".to_string()])));
        assert_eq!(
            config_map(&s, "sk_live_").data.expect("data")["KAFKA_TOPIC"],
            "syncstore.analytics"
        );
    }

    #[test]
    fn schema_and_role_names() {
        use crate::database::derive_name;
        use syncstore_crds::{DatabaseStatus, Engine, SyncStoreStatus};
        let s = store(BASE);
        let n = db_names(&s).expect("names");
        let derived = derive_name("team-a", "chat", 63);
        assert!(derived.starts_with("ss_team_a_chat_"), "{derived}");
        assert_eq!(
            (&n.schema, &n.role, &n.store_id),
            (&derived, &derived, &derived)
        );
        assert!(!n.legacy);
        assert_eq!(endpoint(&s), "http://chat.team-a.svc:80");

        // MariaDB users keep to 32 characters; an explicit schemaName names
        // the schema only, never the role.
        let m = store(
            "image: x\ndatabase: {engine: mysql, adminSecretRef: {name: a}, schemaName: other}\n",
        );
        let n = db_names(&m).expect("names");
        assert_eq!(n.schema, "other");
        assert_eq!(n.role, derive_name("team-a", "chat", 32));
        assert!(n.role.len() <= 32);

        // Provisioned by an older operator: its names, unmarked ones adoptable.
        let mut old = store(BASE);
        old.status = Some(SyncStoreStatus {
            schema_version: Some(3),
            ..Default::default()
        });
        let n = db_names(&old).expect("names");
        assert_eq!(
            (n.schema.as_str(), n.role.as_str()),
            ("ss_team_a_chat", "ss_team_a_chat")
        );
        assert_eq!(n.store_id, "ss_team_a_chat");
        assert!(n.legacy);

        // Recorded names win, and a spec that contradicts them is refused.
        let mut rec = store(BASE);
        rec.status = Some(SyncStoreStatus {
            schema_version: Some(3),
            database: Some(DatabaseStatus {
                engine: Engine::Postgres,
                schema: "ss_team_a_chat".into(),
                role: "ss_team_a_chat".into(),
                store_id: "ss_team_a_chat".into(),
                server: None,
            }),
            ..Default::default()
        });
        let n = db_names(&rec).expect("names");
        assert_eq!(n.schema, "ss_team_a_chat");
        assert!(!n.legacy);
        let mut moved = rec.clone();
        moved.spec.database.engine = Engine::Mysql;
        assert!(matches!(
            db_names(&moved),
            Err(crate::error::Error::ImmutableFieldChanged(_))
        ));
        let mut renamed = rec.clone();
        renamed.spec.database.schema_name = Some("elsewhere".into());
        assert!(matches!(
            db_names(&renamed),
            Err(crate::error::Error::ImmutableFieldChanged(_))
        ));
        let mut set_same = rec;
        set_same.spec.database.schema_name = Some("ss_team_a_chat".into());
        assert!(db_names(&set_same).is_ok());
    }
}
