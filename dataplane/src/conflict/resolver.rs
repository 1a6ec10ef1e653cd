//! The ASSISTED strategy's webhook: POST `{base, current, incoming, key,
//! userId}` to `CONFLICT_RESOLVER_URL` and accept `{value}` (or
//! `{resolvedValue}`) back. Any failure (timeout, non-2xx, a body that is not
//! such an object) is `None`, and the conflict goes to review.

use std::time::Duration;

use serde_json::{json, Value};

#[derive(Clone)]
pub struct Resolver {
    client: reqwest::Client,
    url: String,
}

impl Resolver {
    pub fn new(url: String, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        Ok(Self { client, url })
    }

    pub async fn resolve(
        &self,
        key: &str,
        user_id: &str,
        base: Option<&Value>,
        current: &Value,
        incoming: &Value,
    ) -> Option<Value> {
        let body = json!({ "base": base, "current": current, "incoming": incoming, "key": key, "userId": user_id });
        let response = match self.client.post(&self.url).json(&body).send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracing::warn!(status = %r.status(), "conflict resolver refused");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "conflict resolver unreachable or too slow");
                return None;
            }
        };
        match response.json::<Value>().await {
            Ok(Value::Object(mut answer)) => answer
                .remove("value")
                .or_else(|| answer.remove("resolvedValue")),
            Ok(_) | Err(_) => {
                tracing::warn!("conflict resolver answered something other than {{value}}");
                None
            }
        }
    }
}
