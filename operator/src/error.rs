//! The operator's one error type: every reconcile returns it, and its
//! `reason` is what conditions, events and metrics carry.

/// Why a reconcile failed. Each variant has a stable `reason`, which is
/// what the `Ready` condition and the failure metric carry. Messages never
/// contain a URL or a password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", kube_message(.0))]
    Kube(#[from] kube::Error),
    #[error("Secret {name} has no key {key}")]
    SecretMissing { name: String, key: String },
    #[error("{0}")]
    InvalidDatabaseUrl(String),
    #[error("database unreachable: {0}")]
    DatabaseUnreachable(String),
    #[error("provisioning the database failed: {0}")]
    Provisioning(String),
    #[error("migrating the schema failed: {0}")]
    Migration(String),
    #[error("SyncStore {0} does not exist in this namespace")]
    StoreNotFound(String),
    #[error("SyncStore {0} is not ready yet")]
    StoreNotReady(String),
    #[error("Secret {0} exists and is not owned by this ApiKey; set spec.secretName to a name no other Secret has, or delete that Secret if nothing uses it")]
    SecretConflict(String),
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// A child's name is taken by another controller's object (store
    /// `chat`'s analytics Deployment `chat-analytics` and the Deployment of
    /// a store named `chat-analytics`): the operator leaves it alone.
    #[error("invalid spec: {kind} {name}, which this store needs, already belongs to {owner}, so it is left alone until one of the two stores is renamed; the children applied before it follow the spec, the ones after it are not updated meanwhile")]
    ChildTaken {
        kind: String,
        name: String,
        /// `SyncStore chat`, with how it uses the object if known.
        owner: String,
    },
    /// The schema (database) or role this store would use exists and is
    /// another store's, or no store's: the operator does not touch it.
    #[error("{0}; the operator leaves it untouched, so choose another spec.database.schemaName for this store")]
    SchemaOwnedByAnother(String),
    /// A field that cannot change after provisioning changed anyway (the
    /// CRD's CEL rules refuse it at apply time; this catches a CRD
    /// installed without them).
    #[error("{0}")]
    ImmutableFieldChanged(String),
    #[error("key store: {0}")]
    KeyStore(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// One readable line for a Kubernetes API error: the apiserver's own
/// `message` (say `Deployment.apps "chat" is invalid: …: quantities must
/// match …`), not kube's `ApiError: … (Status { … })` debug dump.
fn kube_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => {
            format!("the Kubernetes API refused a request: {}", status.message)
        }
        other => format!("the Kubernetes API failed: {other}"),
    }
}

impl Error {
    /// The CamelCase reason shown in conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesError",
            Error::SecretMissing { .. } => "SecretMissing",
            Error::InvalidDatabaseUrl(_) => "InvalidDatabaseUrl",
            Error::DatabaseUnreachable(_) => "DatabaseUnreachable",
            Error::Provisioning(_) => "ProvisioningFailed",
            Error::Migration(_) => "MigrationFailed",
            Error::StoreNotFound(_) => "StoreNotFound",
            Error::StoreNotReady(_) => "StoreNotReady",
            Error::SecretConflict(_) => "SecretConflict",
            Error::InvalidSpec(_) | Error::ChildTaken { .. } => "InvalidSpec",
            Error::SchemaOwnedByAnother(_) => "SchemaOwnedByAnother",
            Error::ImmutableFieldChanged(_) => "ImmutableFieldChanged",
            Error::KeyStore(_) => "KeyStoreError",
            Error::Finalizer(_) => "FinalizerFailed",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
