//! The `syncstore.dev/v1alpha1` custom resources: `SyncStore` (a data plane
//! and its database schema) and `ApiKey` (a key in one store).
//!
//! Every field carries a doc comment because schemars turns them into the
//! CRD's descriptions, which is what `kubectl explain` prints. Validation
//! that can be checked at apply time (enums, ranges, CEL rules) lives here
//! too, so a spec that can never work is refused before the operator sees it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
pub use syncstore_scopes::Scope;

/// API group of both kinds.
pub const GROUP: &str = "syncstore.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// Annotation whose change rotates an ApiKey.
pub const ROTATE_ANNOTATION: &str = "syncstore.dev/rotate";

/// Variables `spec.env` cannot set because the operator manages them (the
/// credentials and the store's identity). The CRD's CEL rule lists the
/// same names (a test keeps them equal); the operator checks them too, for
/// a CRD installed without the rule.
pub const MANAGED_ENV: [&str; 9] = [
    "DATABASE_URL",
    "JWT_SECRET",
    "JWT_REFRESH_SECRET",
    "DB_PASSWORD",
    "REDIS_URL",
    "POD_NAME",
    "PORT",
    "SYNCSTORE_STORE",
    "API_KEY_TOKEN_PREFIX",
];

/// Variables `spec.env` cannot set because they make an API key outside
/// the ApiKey kind: `BOOTSTRAP_API_KEY` would put an every-scope key into
/// the spec (which `view` may read), unknown to the operator's ledger and
/// still active after it is removed from the spec.
pub const BOOTSTRAP_ENV: [&str; 2] = ["BOOTSTRAP_API_KEY", "BOOTSTRAP_USER_ID"];

/// Whether `name` is a DNS-1035 label of at most 63 characters (lower-case
/// letters, digits and '-', starting with a letter and ending with a letter
/// or digit): what a SyncStore's name must be, since it names the store's
/// Service and is the value of its pods' `app.kubernetes.io/instance` label.
pub fn is_store_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A SyncStore: a real-time key/value sync service (the `syncstore serve`
/// data plane: REST and Socket.IO) backed by a database schema of its own.
/// The operator provisions the schema and a login role on the database
/// server named by `spec.database`, migrates it, and runs the data plane as
/// a Deployment behind a Service; ApiKeys grant access to it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "syncstore.dev",
    version = "v1alpha1",
    kind = "SyncStore",
    doc = "A SyncStore is a real-time key/value sync service (the syncstore data plane: REST and Socket.IO) with a database schema of its own. The operator provisions the schema and a login role on the database server named by spec.database, migrates it, and runs the data plane as a Deployment behind a Service. ApiKeys grant access to it.",
    namespaced,
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("a SyncStore's name must be at most 63 lower-case letters, digits and '-', start with a letter and end with a letter or digit (a DNS-1035 label): it names the store's Service and labels its pods"),
    status = "SyncStoreStatus",
    shortname = "ss",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SyncStoreSpec {
    /// Container image of the data plane (`syncstore`), for example
    /// `ghcr.io/syncstore/syncstore:0.1.0`. Unset: the image of the
    /// operator's own release (`ghcr.io/syncstore/syncstore:<operator
    /// version>`), so upgrading the operator upgrades such stores with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self != ''").message("image must not be empty"))]
    pub image: Option<String>,
    /// Number of `syncstore serve` pods. Ignored while autoscaling is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Horizontal pod autoscaling of the data plane. When set, an HPA owns
    /// the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// CPU and memory requests and limits of the data-plane containers.
    /// Every value must be a Kubernetes quantity (`500m`, `256Mi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("!has(self.limits) || ['cpu', 'memory', 'ephemeral-storage'].all(k, !(k in self.limits) || isQuantity(string(self.limits[k])))").message("resources.limits must be quantities such as 500m or 256Mi"),
        validation = Rule::new("!has(self.requests) || ['cpu', 'memory', 'ephemeral-storage'].all(k, !(k in self.requests) || isQuantity(string(self.requests[k])))").message("resources.requests must be quantities such as 500m or 256Mi")
    )]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// The database server that holds this store's schema.
    pub database: DatabaseSpec,
    /// Redis for fan-out between pods and shared rate limits. Without it,
    /// pods do not see each other's writes live; set it when replicas > 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// Kafka for analytics events. Without it, each pod aggregates its own
    /// events in-process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSpec>,
    /// Analytics events and the aggregating consumer.
    #[serde(default)]
    pub analytics: AnalyticsSpec,
    /// Size, storage and TTL limits (the seed's MAX_* and TTL settings).
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Request rate limits per API key and per user.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
    /// Browser origins allowed to call the data plane (CORS_ORIGIN), each
    /// `http(s)://host[:port]` as a browser's Origin header carries it
    /// (RFC 6454; case and a default port are normalised, wildcards, paths
    /// and queries are refused), or `*`. Empty allows any origin (the data
    /// plane's default, rendered as `CORS_ORIGIN=*`); list origins to
    /// restrict browsers to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "origins_schema")]
    #[x_kube(validation = Rule::new("self.all(o, o == '*' || o.matches('^https?://[^*,/\\\\s]+$'))").message("corsOrigins must be * or origins such as https://app.example.com (scheme, host and optional port; no path, no wildcard)"))]
    pub cors_origins: Vec<String>,
    /// Proxies (IPs or CIDR ranges) whose `X-Forwarded-For` is believed
    /// (TRUSTED_PROXIES), such as the ingress controller's pods. Without
    /// them, a key's ipRestrictions see the proxy's address, not the client's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Country lookup for ApiKeys with countryRestrictions (GEOIP_*).
    /// Without it such keys are refused on every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip: Option<GeoIpSpec>,
    /// Lifetimes of the tokens the data plane issues (JWT_*_EXPIRES_IN).
    #[serde(default)]
    pub jwt: JwtSpec,
    /// Extra environment variables of the data-plane containers, applied
    /// after (and so over) the ones the spec renders, e.g. `LOG_LEVEL`. The
    /// operator-managed credentials and identity (DATABASE_URL,
    /// JWT_SECRET, JWT_REFRESH_SECRET, DB_PASSWORD, REDIS_URL, POD_NAME,
    /// PORT, SYNCSTORE_STORE, and API_KEY_TOKEN_PREFIX, which is the
    /// operator's own key prefix) cannot be set here, nor a bootstrap key
    /// (BOOTSTRAP_API_KEY, BOOTSTRAP_USER_ID: keys are ApiKeys). Names are
    /// unique. Literal values are checked by the data plane's parser before
    /// rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(
        validation = Rule::new("self.all(e, !(e.name in ['DATABASE_URL', 'JWT_SECRET', 'JWT_REFRESH_SECRET', 'DB_PASSWORD', 'REDIS_URL', 'POD_NAME', 'PORT', 'SYNCSTORE_STORE', 'API_KEY_TOKEN_PREFIX']))").message("env cannot set DATABASE_URL, JWT_SECRET, JWT_REFRESH_SECRET, DB_PASSWORD, REDIS_URL, POD_NAME, PORT, SYNCSTORE_STORE or API_KEY_TOKEN_PREFIX: the operator manages them"),
        validation = Rule::new("self.all(e, !(e.name in ['BOOTSTRAP_API_KEY', 'BOOTSTRAP_USER_ID']))").message("env cannot set BOOTSTRAP_API_KEY or BOOTSTRAP_USER_ID: a store's keys are ApiKeys, which the operator revokes when they are deleted; a bootstrap key would sit in the spec for every viewer to read and outlive its removal"),
        merge_strategy = ListMerge::Map(vec!["name".into()])
    )]
    pub env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    /// Scheduling, identity and metadata of the data-plane pods (and of the
    /// analytics consumer's).
    #[serde(default)]
    pub pod_template: PodTemplate,
    /// Conflict handling defaults.
    #[serde(default)]
    pub conflicts: ConflictSpec,
    /// The Service in front of the data plane.
    #[serde(default)]
    pub service: ServiceSpec,
    /// An optional Ingress for the data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// Prometheus scraping of the store's pods through a Prometheus
    /// Operator PodMonitor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
}

/// A Prometheus Operator `PodMonitor` (monitoring.coreos.com/v1) named
/// like the store, in its namespace, that scrapes `/metrics` of the
/// data-plane and analytics-consumer pods. Where the PodMonitor CRD is not
/// installed the store still runs, and its `MonitoringReady` condition says
/// why there is no PodMonitor.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Whether the operator keeps a PodMonitor for the store; false deletes
    /// the one it made.
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval (`30s`, `1m`). Unset: Prometheus' own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(ms|s|m|h)$')").message("interval must be a duration such as 30s or 1m"))]
    pub interval: Option<String>,
    /// Extra labels on the PodMonitor, for a Prometheus whose
    /// `podMonitorSelector` selects by label (`release: prometheus`). The
    /// operator's own `app.kubernetes.io/*` labels win a clash.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_replicas() -> i32 {
    2
}

/// `corsOrigins`: bounded, so that the apiserver can afford its CEL rule
/// (it estimates a rule's cost from the largest list and string allowed).
fn origins_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 64,
        "items": { "type": "string", "maxLength": 253 },
    })
}

/// Country lookup for key country restrictions.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GeoIpSpec {
    /// Path of a MaxMind-format country database inside the pod
    /// (GEOIP_DB_PATH), on a volume of `podTemplate.volumes` mounted by
    /// `podTemplate.volumeMounts` (a ConfigMap cannot hold a 5 MB file: use a
    /// PVC, an image volume or a CSI volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_path: Option<String>,
    /// A request header carrying the client's ISO country, set by a trusted
    /// proxy (GEOIP_COUNTRY_HEADER), such as `CF-IPCountry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country_header: Option<String>,
}

/// Token lifetimes: `15m`, `12h`, `7d`, or seconds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// Access-token lifetime (JWT_EXPIRES_IN); the data plane's default is 15m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token_lifetime: Option<String>,
    /// Refresh-token lifetime (JWT_REFRESH_EXPIRES_IN); the data plane's
    /// default is 30d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_lifetime: Option<String>,
}

/// What the data-plane pods look like beyond their container: the usual
/// pod-spec fields, passed through unchanged (CloudNativePG and Strimzi
/// expose the same set).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels and annotations added to the pods. The operator's own
    /// (`app.kubernetes.io/*`, `syncstore.dev/config-hash`) win a clash.
    #[serde(default)]
    pub metadata: PodMetadata,
    /// Pod affinity and anti-affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<k8s_openapi::api::core::v1::Affinity>,
    /// Tolerations of node taints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
    /// Node labels a node must carry to run the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// How the pods spread over zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["topologyKey".into(), "whenUnsatisfiable".into()]))]
    pub topology_spread_constraints: Vec<k8s_openapi::api::core::v1::TopologySpreadConstraint>,
    /// Secrets to pull the image with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub image_pull_secrets: Vec<k8s_openapi::api::core::v1::LocalObjectReference>,
    /// Service account of the pods. Unset: the namespace's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Extra volumes of the pods (a GeoIP database, a CA bundle for DB_SSL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub volumes: Vec<k8s_openapi::api::core::v1::Volume>,
    /// Where the data-plane container mounts `volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["mountPath".into()]))]
    pub volume_mounts: Vec<k8s_openapi::api::core::v1::VolumeMount>,
}

/// Labels and annotations of the pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PodMetadata {
    /// Extra pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// HPA bounds and target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct Autoscaling {
    /// Lowest number of data-plane pods.
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Highest number of data-plane pods.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Average CPU utilisation (percent of requests) the HPA aims for.
    #[serde(default = "default_cpu_target", rename = "targetCPUUtilization")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
}

fn default_cpu_target() -> i32 {
    70
}

/// Database engine of a store.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL: the store gets a schema and a role.
    #[default]
    Postgres,
    /// MariaDB or MySQL: the store gets a database and a user.
    Mysql,
}

/// What happens to the store's schema when the SyncStore is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// Keep the schema, its data and the role.
    #[default]
    Retain,
    /// Drop the schema (or database) and the role.
    Delete,
}

/// A key of a Secret in the resource's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_url_key")]
    pub key: String,
}

fn default_url_key() -> String {
    "url".into()
}

/// The database server and how the store's schema is kept.
///
/// `schemaName`'s own rule (`self == oldSelf`) only runs when the field is
/// present in both versions, so setting or unsetting it is refused here, on
/// the parent, where both presences can be compared.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.schemaName) == has(oldSelf.schemaName)").message("schemaName is immutable: it cannot be set or unset after creation"),
    validation = Rule::new("self.engine != 'postgres' || !has(self.schemaName) || !self.schemaName.startsWith('pg_')").message("schemaName cannot start with pg_ on PostgreSQL: the prefix is reserved for system schemas")
)]
pub struct DatabaseSpec {
    /// Server engine: `postgres` or `mysql` (MariaDB and MySQL). Immutable:
    /// a store's data cannot move between engines.
    #[x_kube(validation = Rule::new("self == oldSelf").message("engine is immutable: a store cannot move between PostgreSQL and MariaDB"))]
    pub engine: Engine,
    /// Secret key holding an admin URL (`postgres://…` or `mysql://…`) with
    /// the right to create schemas (databases) and roles. The operator never
    /// gives this URL to the data plane.
    pub admin_secret_ref: SecretKeyRef,
    /// Schema (PostgreSQL) or database (MariaDB) of this store. Defaults to
    /// a name derived from the namespace and name (`ss_<namespace>_<name>_<hash>`,
    /// shortened to fit). On PostgreSQL it cannot start with `pg_` (reserved
    /// for system schemas). Immutable, including setting or unsetting it:
    /// changing it would orphan the data. A schema that belongs to another
    /// store is never used (the store goes `Ready=False`, `SchemaOwnedByAnother`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-z_][a-z0-9_]{0,62}$')").message("schemaName must be lower-case letters, digits and _ (at most 63)"),
        validation = Rule::new("self == oldSelf").message("schemaName is immutable")
    )]
    pub schema_name: Option<String>,
    /// `Retain` (default) keeps the schema when the store is deleted;
    /// `Delete` drops it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Require TLS to the database server (DB_SSL), for the pods and for
    /// the operator's own connections. Unset: the data plane's default, no
    /// TLS required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl: Option<bool>,
    /// Connections per data-plane pod (DB_CONNECTION_LIMIT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub connection_limit: Option<u32>,
}

/// Redis settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Secret key holding the Redis URL, in any of the data plane's
    /// REDIS_URL forms: `redis://` or `rediss://` (TLS) for one server,
    /// `redis+cluster://` or `rediss+cluster://` with a Redis Cluster's seed
    /// nodes, `redis+sentinel://` with the Sentinels and the master's name
    /// (README, "Running on Redis Cluster or Sentinel").
    pub url_secret_ref: SecretKeyRef,
    /// TLS settings for a `rediss://`, `rediss+cluster://` or
    /// `rediss+sentinel://` URL. Without them the pods trust the system's
    /// root certificates (or a REDIS_TLS_CA_FILE of `env`, which cannot be
    /// set beside them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RedisTlsSpec>,
}

/// How the pods verify the Redis servers' certificates.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisTlsSpec {
    /// Secret key holding the PEM certificate(s) of the CA that signed the
    /// Redis servers' certificates, trusted instead of the system's roots.
    /// Mounted read-only into the pods as REDIS_TLS_CA_FILE; checked before
    /// rollout (PEM with at least one certificate), and a change to it
    /// rolls them.
    pub ca_secret_ref: CaSecretRef,
}

/// A Secret key holding a PEM CA bundle.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret.
    pub name: String,
    /// Key within the Secret (cert-manager's and kubernetes.io/tls's name
    /// for a CA certificate by default).
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// Kafka settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Bootstrap brokers, `host:port`.
    #[schemars(length(min = 1))]
    pub brokers: Vec<String>,
    /// Topic of analytics events.
    #[serde(default = "default_topic")]
    pub topic: String,
}

fn default_topic() -> String {
    "syncstore.analytics".into()
}

/// Analytics settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalyticsSpec {
    /// Whether requests and socket events produce analytics events.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Pods of the `syncstore analytics` consumer. Used only with Kafka.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub consumer_replicas: i32,
}

impl Default for AnalyticsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            consumer_replicas: 1,
        }
    }
}

fn yes() -> bool {
    true
}

fn one() -> i32 {
    1
}

/// The seed's size, storage and TTL limits. Unset fields keep the data
/// plane's defaults.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest value of one item, KiB (MAX_ITEM_SIZE_KB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16384))]
    pub max_item_size_kb: Option<u32>,
    /// Most storage one user may use, MiB (MAX_STORAGE_PER_USER_MB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_storage_per_user_mb: Option<u32>,
    /// How often expired items are swept, hours (TTL_CLEANUP_INTERVAL_HOURS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ttl_cleanup_interval_hours: Option<u32>,
    /// How long deletions are remembered for offline devices, days
    /// (SYNC_TOMBSTONE_RETENTION_DAYS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tombstone_retention_days: Option<u32>,
}

/// Rate limits (RATE_LIMIT_*).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Length of one window, milliseconds (RATE_LIMIT_WINDOW_MS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000))]
    pub window_ms: Option<u64>,
    /// Requests per window per key and per user (RATE_LIMIT_MAX_REQUESTS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<u64>,
}

/// Conflict strategies, named as the data plane's CONFLICT_DEFAULT_STRATEGY.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConflictStrategy {
    /// Last writer wins; a tie goes to the larger instance id.
    #[default]
    LastWriteWins,
    /// First writer wins.
    FirstWriteWins,
    /// Three-way JSON merge.
    Merge,
    /// Conflicts wait for review.
    Manual,
    /// A resolver webhook decides.
    Assisted,
}

/// Conflict handling.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConflictSpec {
    /// Strategy used when a write does not name one
    /// (CONFLICT_DEFAULT_STRATEGY).
    #[serde(default)]
    pub default_strategy: ConflictStrategy,
    /// Webhook URL that decides ASSISTED conflicts (CONFLICT_RESOLVER_URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver_url: Option<String>,
}

/// Service exposure.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default = "default_service_type")]
    #[schemars(extend("enum" = ["ClusterIP", "NodePort", "LoadBalancer"]))]
    pub r#type: String,
    /// Service port (the pods listen on 3000).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Extra annotations on the Service (for load balancers).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            r#type: default_service_type(),
            port: default_port(),
            annotations: Default::default(),
        }
    }
}

fn default_service_type() -> String {
    "ClusterIP".into()
}

fn default_port() -> i32 {
    80
}

/// Ingress exposure. Socket.IO needs WebSocket support from the controller.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Host name served.
    pub host: String,
    /// IngressClass to use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret with the TLS certificate for `host`; no TLS when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Extra annotations on the Ingress.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// What the operator last saw of a SyncStore.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncStoreStatus {
    /// Generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending (seen, not provisioned yet), Progressing (a rollout of the
    /// data-plane Deployment is under way), Running (at least the minimum
    /// of replicas available), Degraded (fewer available than replicas, or
    /// autoscaling.minReplicas) or Failed (the last reconcile failed; the
    /// Ready condition's reason says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Ready (at least one replica serves), DatabaseReady, SchemaMigrated,
    /// Available, Progressing, Degraded, and ReconciliationPaused while
    /// the annotation syncstore.dev/reconcile is paused.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Data-plane pods that exist now, as the Deployment counts them (the
    /// HPA's choice when autoscaling is set): what the REPLICAS column shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Data-plane pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// In-cluster URL of the data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Highest migration applied to the store's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<i64>,
    /// Reconcile failures in a row; drives the retry backoff.
    #[serde(default)]
    pub failures: u32,
    /// The engine and names the store was provisioned with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseStatus>,
}

/// The names a store's data lives under, fixed when it was first
/// provisioned. Later reconciles use these rather than deriving them again,
/// so an operator upgrade that derives names differently never moves a
/// store to a new, empty schema.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// Engine the store was provisioned on.
    pub engine: Engine,
    /// Schema (PostgreSQL) or database (MariaDB) in use.
    pub schema: String,
    /// The store's own login role (user).
    pub role: String,
    /// SYNCSTORE_STORE: the prefix of the store's Redis keys and its Kafka
    /// consumer group.
    pub store_id: String,
    /// Where the schema lives: `host:port/database` of the admin URL at the
    /// last provisioning, never its credentials. An admin Secret that later
    /// names a database without the store's schema is refused
    /// (`ImmutableFieldChanged`), since the store's data would not follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// An API key of one SyncStore, acting for one user. The operator
/// generates the key into the Secret named by `secretName` (the only copy),
/// stores its hash with the scopes, restrictions and quotas below in the
/// store's database, and revokes it when the ApiKey is deleted.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "syncstore.dev",
    version = "v1alpha1",
    kind = "ApiKey",
    doc = "An ApiKey is an API key of one SyncStore, acting for one user. The operator generates the key into the Secret named by spec.secretName (its only copy), stores its hash with the scopes, restrictions and quotas of the spec in the store's database, and revokes it when the ApiKey is deleted.",
    namespaced,
    status = "ApiKeyStatus",
    shortname = "ssk",
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".spec.storeRef"}"#,
    printcolumn = r#"{"name":"User","type":"string","jsonPath":".spec.userId"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".status.keyPrefix","priority":1}"#,
    printcolumn = r#"{"name":"Today","type":"integer","jsonPath":".status.usageToday"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Name of the SyncStore (same namespace) this key belongs to.
    /// Immutable: a key row lives in one store's database; make a new
    /// ApiKey for another store.
    #[x_kube(
        validation = Rule::new("self.size() <= 63 && self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("storeRef must name a SyncStore: at most 63 lower-case letters, digits and '-', starting with a letter"),
        validation = Rule::new("self == oldSelf").message("storeRef is immutable: create a new ApiKey for another store")
    )]
    pub store_ref: String,
    /// User the key acts for. Immutable: what the key wrote belongs to this
    /// user; make a new ApiKey for another user.
    #[x_kube(
        validation = Rule::new("self != ''").message("userId must not be empty"),
        validation = Rule::new("self == oldSelf").message("userId is immutable: create a new ApiKey for another user")
    )]
    pub user_id: String,
    /// Human-readable name of the key (the seed's `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Whether the key may read items.
    #[serde(default = "yes")]
    pub can_read: bool,
    /// Whether the key may write items.
    #[serde(default = "yes")]
    pub can_write: bool,
    /// Extra scopes: `admin`, `keys:manage`, `analytics:read`,
    /// `tokens:issue` (the data plane's list). `read` and `write` follow
    /// canRead and canWrite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "scopes_schema")]
    pub scopes: Vec<Scope>,
    /// Client IPs or CIDR ranges allowed; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_restrictions: Vec<String>,
    /// ISO 3166 country codes allowed; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub country_restrictions: Vec<String>,
    /// Origin domains allowed (`example.com`, `*.example.com`); empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domain_restrictions: Vec<String>,
    /// User-agent regular expressions, one of which must match; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_agent_patterns: Vec<String>,
    /// Request quotas; unset means unlimited.
    #[serde(default)]
    pub quotas: Quotas,
    /// When the key stops working (RFC 3339). Unset: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// Secret the key is written to (key `apiKey`). Defaults to
    /// `<name>-apikey`. Changing it generates a new key there, revokes the
    /// old key and deletes the old Secret. A Secret name: lower-case
    /// letters, digits, '-' and '.', at most 253.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() <= 253 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("secretName must be a Secret name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253"))]
    pub secret_name: Option<String>,
}

/// The scopes an ApiKey lists in `spec.scopes`: every scope of the data
/// plane except `read` and `write`, which follow `canRead`/`canWrite`.
/// Taken from [`Scope::ALL`], so the CRD can never accept a scope the data
/// plane does not know, nor refuse one it does.
pub fn extra_scopes() -> impl Iterator<Item = Scope> {
    Scope::ALL
        .into_iter()
        .filter(|s| !matches!(s, Scope::Read | Scope::Write))
}

/// The schema of `spec.scopes`: an array of strings whose enum is
/// [`extra_scopes`]. Written by hand because the scope type lives in a crate
/// without schemars, and because `read`/`write` must stay out of it.
fn scopes_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = extra_scopes().map(Scope::as_str).collect();
    schemars::json_schema!({
        "type": "array",
        "items": {
            "type": "string",
            "enum": names,
        },
    })
}

/// Request quotas of a key.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Quotas {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_minute: Option<i64>,
    /// Requests per hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_hour: Option<i64>,
    /// Requests per day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_day: Option<i64>,
    /// Requests per month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub per_month: Option<i64>,
}

/// What the operator last saw of an ApiKey. Never the key itself.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// Generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending (waiting for its store), Active, Expired or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Ready, and ReconciliationPaused while the key or its store carries
    /// the annotation syncstore.dev/reconcile: paused.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Id of the key's row in the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Secret holding the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// First 8 characters of the key, to recognise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// The rotate annotation value last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<String>,
    /// Last request made with the key (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// Requests today (UTC).
    #[serde(default)]
    pub usage_today: i64,
    /// Requests this month (UTC).
    #[serde(default)]
    pub usage_this_month: i64,
    /// Reconcile failures in a row; drives the retry backoff.
    #[serde(default)]
    pub failures: u32,
}

/// Both CRDs as one multi-document YAML, as `syncstore-operator crds`
/// prints it and `crds/syncstore.dev.yaml` holds it.
pub fn crds_yaml() -> String {
    let mut out = String::from("# Generated by `syncstore-operator crds`; do not edit.\n");
    for crd in [SyncStore::crd(), ApiKey::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd).unwrap_or_default());
    }
    out
}
