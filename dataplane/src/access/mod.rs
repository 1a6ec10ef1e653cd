//! Credentials and the pure rules about them: the API key record, its
//! restrictions (IP, country, domain, user agent), the client address as
//! trusted proxies report it, and the key-management policy. No I/O: the
//! `auth` service loads keys through `storage` and applies these rules.

pub mod client_addr;
pub mod policy;
pub mod restrictions;

use std::sync::Arc;

/// A permission an API key (or token) carries; defined in the shared
/// `syncstore-scopes` crate so the CRDs' enum is generated from it.
pub use syncstore_scopes::Scope;

/// The OpenAPI schema of a list of scopes, each one of [`Scope::ALL`] as
/// serde writes it (`#[schema(schema_with = …)]`: `Scope` is another
/// crate's, so it cannot derive the schema here).
pub fn scope_list() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(Scope::ALL.map(Scope::as_str))),
        )
        .build()
}

/// A stored API key (never the key itself).
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub key_hash: String,
    pub user_id: String,
    pub is_active: bool,
    pub expires_at: Option<i64>,
    pub can_read: bool,
    pub can_write: bool,
    pub scopes: Vec<Scope>,
    /// Compiled once, when the key is loaded (and then cached with it).
    pub restrictions: Arc<restrictions::Restrictions>,
    /// The seed's quotaPerMinute, quotaPerHour, quotaPerDay, quotaPerMonth.
    pub quotas: [Option<i64>; 4],
}

impl ApiKey {
    /// Whether the key grants `scope`. `admin` grants everything; `read` and
    /// `write` also need the seed's `canRead` / `canWrite` flags.
    pub fn allows(&self, scope: Scope) -> bool {
        let flag = match scope {
            Scope::Read => self.can_read,
            Scope::Write => self.can_write,
            _ => true,
        };
        flag && (self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin))
    }
}

/// What `keys create` (or the bootstrap) asks for.
#[derive(Debug, Clone, Default)]
pub struct NewKey {
    pub name: String,
    pub user_id: String,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<i64>,
    pub ip_restrictions: Vec<String>,
    pub country_restrictions: Vec<String>,
    pub domain_restrictions: Vec<String>,
    pub user_agent_patterns: Vec<String>,
    /// Per minute, hour, day and month.
    pub quotas: [Option<i64>; 4],
}
