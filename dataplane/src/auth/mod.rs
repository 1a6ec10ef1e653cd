//! Who is calling, and what they may do.

mod api_key;
pub mod client_addr;
pub mod geoip;
pub mod jwks;
mod jwt;
pub mod key_fields;
pub mod limiter;
pub mod policy;
mod principal;
pub mod restrictions;
pub mod usage;

pub use api_key::{generate_key, hash_key, hint, ApiKey, KeyStore, NewKey};
pub use jwt::{Issued, Tokens};
pub use principal::{Authenticator, Credential, Principal};

/// A permission an API key (or token) carries; defined in the shared
/// `syncstore-scopes` crate so the CRDs' enum is generated from it.
pub use syncstore_scopes::Scope;
