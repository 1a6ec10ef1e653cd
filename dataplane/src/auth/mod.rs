//! Who is calling, and what they may do.

mod api_key;
mod context;
pub mod geoip;
pub mod jwks;
mod jwt;
pub mod key_fields;
pub mod limiter;
mod principal;
pub mod usage;

pub use api_key::{generate_key, hash_key, hint, KeyStore};
pub use context::RequestContext;
pub use jwt::{check_token_scopes, token_scope_list, Issued, JwtConfig, Tokens};
pub use principal::{Authenticator, Authorization, Credential, Presented, Principal};

/// The credential types and pure rules live one layer down, in `access`;
/// they are re-exported here, where callers look for them.
pub use crate::access::{client_addr, policy, restrictions, scope_list, ApiKey, NewKey, Scope};
