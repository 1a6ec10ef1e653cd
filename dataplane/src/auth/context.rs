//! One request's context, built once where the request enters.

use super::Principal;
use crate::{access::restrictions::Caller, audit::Source};

/// What is known of one request: built once by the REST middleware (from
/// the headers and the TCP peer) and completed by authentication, so that
/// handlers, services and the audit trail read the same facts and nothing
/// works out the client address again.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request's `X-Request-Id`.
    pub request_id: Option<String>,
    /// Where it comes from: the address resolved through trusted proxies
    /// (`Forwarded`, RFC 7239), country, Origin's host and user agent.
    pub client: Caller,
    /// Who it acts as, once authenticated.
    pub principal: Option<Principal>,
}

impl RequestContext {
    /// The audit source of a change made in this request.
    pub fn source(&self) -> Source {
        Source {
            key_id: self.principal.as_ref().map(|p| p.key.id.clone()),
            ip: self.client.ip.map(|ip| ip.to_string()),
            request_id: self.request_id.clone(),
            socket: None,
        }
    }
}
