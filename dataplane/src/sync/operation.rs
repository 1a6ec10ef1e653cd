//! Retried writes are the same write (issue 14 §2).
//!
//! A client that lost a write's reply (a dropped connection, socket.io-client's
//! `retries` with `ackTimeout`, an HTTP client's retry) sends the write again.
//! Applied twice, it would bump the version twice or, worse, lose to itself as
//! a conflict. So a write may carry an operation id: REST's `Idempotency-Key`
//! header (draft-ietf-httpapi-idempotency-key-header) or a socket write's
//! `opId`. The write path records the id, a fingerprint of the request and
//! the reply in the write's own transaction; a retry within the window finds
//! the record under the user's row lock and gets the same reply, on any pod.
//! The same id on a different request is refused (`IDEMPOTENCY_KEY_REUSED`,
//! 422, as the draft says).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{no_row, plan::Command, Cleared, Outcome, Removed, RemovedStatus, SetReply};
use crate::{error::ApiError, storage::idempotency::Recorded, text};

/// A client's id for one write: 1 to 255 bytes of storable text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationId(String);

impl OperationId {
    /// A socket write's `opId`.
    pub fn new(field: &str, id: &str) -> Result<Self, text::Invalid> {
        text::check(field, id, text::ID)?;
        Ok(Self(id.to_owned()))
    }

    /// The `opId` field of a socket write or a REST body, if sent:
    /// INVALID_BODY when malformed.
    pub fn from_op_id(op_id: Option<&str>) -> Result<Option<Self>, ApiError> {
        op_id
            .map(|id| Self::new("opId", id).map_err(text::Invalid::body))
            .transpose()
    }

    /// An `Idempotency-Key` header. The draft makes it a Structured Field
    /// string (`"8e03978e-…"`, RFC 8941), parsed here by the `sfv` crate;
    /// most clients in the field (Stripe's convention and the SDKs that
    /// copied it) send the bare token, so a value that does not start with a
    /// quote is taken as it is, if it is visible ASCII.
    pub fn from_header(value: &[u8]) -> Result<Self, text::Invalid> {
        const FIELD: &str = "Idempotency-Key";
        if value.first() == Some(&b'"') {
            let item: sfv::Item = sfv::Parser::new(value).parse().map_err(|_| {
                text::Invalid::new(FIELD, "is not a Structured Field string (RFC 8941)")
            })?;
            let id = item.bare_item.as_string().ok_or_else(|| {
                text::Invalid::new(FIELD, "is not a Structured Field string (RFC 8941)")
            })?;
            return Self::new(FIELD, id.as_str());
        }
        if !value.iter().all(|b| b.is_ascii_graphic()) {
            return Err(text::Invalid::new(
                FIELD,
                "must be visible ASCII, or a quoted Structured Field string",
            ));
        }
        // Visible ASCII is UTF-8.
        Self::new(FIELD, std::str::from_utf8(value).unwrap_or_default())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a write answered: kept with its operation id, so that a retry gets
/// the same answer (a lost set is a 409 again, with the same body).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    Set(Box<SetReply>),
    Remove(Removed),
    Clear(Cleared),
}

impl Reply {
    /// The reply to `command` given what its transaction did (`last_seq`:
    /// the user's sequence head after it); none for the TTL sweeper's.
    pub(super) fn of(
        command: &Command,
        outcome: &Outcome,
        last_seq: i64,
    ) -> Result<Option<Reply>, ApiError> {
        let last = outcome.changed.last();
        Ok(Some(match command {
            Command::Set { .. } => Reply::Set(Box::new(SetReply {
                status: outcome.set_status.ok_or_else(no_row)?,
                // The item as it now is: the current one when the write lost.
                item: last
                    .or(outcome.current.as_ref())
                    .cloned()
                    .ok_or_else(no_row)?,
                conflict_id: outcome.conflict_id.clone(),
            })),
            Command::Remove { .. } => {
                let item = last.ok_or_else(no_row)?;
                Reply::Remove(Removed {
                    status: RemovedStatus::Removed,
                    key: item.key.clone(),
                    seq: item.seq,
                    version: item.version,
                })
            }
            Command::Clear => Reply::Clear(Cleared {
                cleared: outcome.changed.len(),
                last_seq,
            }),
            Command::Expire { .. } => return Ok(None),
        }))
    }
}

/// An operation id with the fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub(super) struct Op {
    pub id: OperationId,
    pub fingerprint: String,
}

impl Op {
    /// The first reply, if `done` was this same request.
    pub fn replay(&self, done: &Recorded) -> Result<Reply, ApiError> {
        if done.fingerprint != self.fingerprint {
            return Err(ApiError::IdempotencyKeyReused);
        }
        serde_json::from_str(&done.reply)
            .map_err(|e| ApiError::Internal(format!("unreadable idempotency record: {e}")))
    }

    /// The record of this request and its reply.
    pub fn record(&self, reply: &Reply) -> Result<Recorded, ApiError> {
        Ok(Recorded {
            fingerprint: self.fingerprint.clone(),
            reply: serde_json::to_string(reply)
                .map_err(|e| ApiError::Internal(format!("unrecordable reply: {e}")))?,
        })
    }
}

/// The set's body as JSON that does not depend on how it was written:
/// object keys sorted, numbers and strings as serde_json reads them
/// (`1` = `1.0` = `1.00`, `"é"` = `"\u00e9"`), dates as Unix milliseconds, and
/// without the body's own `key` (the path's or the event's counts, so a
/// socket write and its REST retry agree) or its `opId` (the id, not the
/// request).
fn canonical_request(request: &super::SetRequest) -> String {
    fn sorted(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            // `1`, `1.0` and `1e0` are one number, as JSON Canonicalization
            // (RFC 8785) writes them; integral floats within i64 become
            // integers. (A canonicalizer crate would do all of RFC 8785;
            // only equality of two fingerprints depends on this, and it is
            // never emitted.)
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    serde_json::Value::from(f as i64)
                }
                _ => serde_json::Value::Number(n),
            },
            other => other,
        }
    }
    // A value with no tree form (`1e400`, a lone surrogate; not I-JSON, so
    // outside RFC 8785) is compared as the text it is stored as.
    let Ok(mut value) = serde_json::to_value(request) else {
        return serde_json::to_string(request).unwrap_or_default();
    };
    if let Some(map) = value.as_object_mut() {
        map.remove("key");
        map.remove("opId");
        // An absolute ttl as the instant it names, however it is written.
        if let Some(at @ super::Ttl::At(_)) = &request.ttl {
            if let Ok(ms) = at.expires_at(0) {
                map.insert("ttl".into(), serde_json::Value::from(ms));
            }
        }
    }
    sorted(value).to_string()
}

/// Which request an operation id was first used for: the command, its key,
/// its body and the writing device (the TTL sweeper's commands carry no id).
pub fn fingerprint(instance_id: &str, command: &Command) -> String {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        // Length-prefixed, so no two field lists hash alike.
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    field(instance_id.as_bytes());
    match command {
        Command::Set { key, request, .. } => {
            field(b"set");
            field(key.as_bytes());
            field(canonical_request(request).as_bytes());
        }
        Command::Remove { key } => {
            field(b"remove");
            field(key.as_bytes());
        }
        Command::Clear => field(b"clear"),
        Command::Expire { key } => {
            field(b"expire");
            field(key.as_bytes());
        }
    }
    URL_SAFE_NO_PAD.encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{plan::Assist, SetRequest};

    fn set(body: &str) -> Command {
        Command::Set {
            key: "k".into(),
            request: Box::new(serde_json::from_str::<SetRequest>(body).expect("body")),
            assist: Assist::NotAsked,
            settles: None,
        }
    }

    #[test]
    fn a_retry_has_the_fingerprint_of_the_first_request() {
        let first = fingerprint(
            "phone",
            &set(r#"{"value": 2, "version": 1, "timestamp": 5}"#),
        );
        let retry = fingerprint(
            "phone",
            &set(r#"{"value": 2, "version": 1, "timestamp": 5}"#),
        );
        assert_eq!(first, retry);
        assert_eq!(first.len(), 43); // SHA-256, unpadded base64url
                                     // The id inside a socket payload is not part of the request.
        let with_id = fingerprint(
            "phone",
            &set(r#"{"value": 2, "version": 1, "timestamp": 5, "opId": "a"}"#),
        );
        assert_eq!(first, with_id);
    }

    #[test]
    fn the_same_body_written_differently_is_the_same_request() {
        let first = fingerprint(
            "phone",
            &set(r#"{"value": {"a": 1.0, "b": "é"}, "timestamp": 1796083200000, "key": "k"}"#),
        );
        for same in [
            r#"{"value": {"b": "\u00e9", "a": 1.00}, "timestamp": "2026-12-01T00:00:00Z"}"#,
            r#"{"value": {"b": "é", "a": 1}, "timestamp": 1796083200000}"#,
            r#"{"timestamp": 1796083200000, "value": {"a": 1.0, "b": "é"}}"#,
        ] {
            assert_eq!(fingerprint("phone", &set(same)), first, "{same}");
        }
    }

    #[test]
    fn values_outside_i_json_are_compared_as_stored() {
        let f = |body: &str| fingerprint("phone", &set(body));
        assert_ne!(f(r#"{"value": 1e400}"#), f(r#"{"value": 2e400}"#));
        assert_eq!(f(r#"{"value": 1e400}"#), f(r#"{"value":  1e400 }"#));
        // Within I-JSON, RFC 8785 compares numbers as IEEE 754 doubles.
        assert_eq!(
            f(r#"{"value": 123456789012345678901234567890}"#),
            f(r#"{"value": 123456789012345678901234567891}"#)
        );
    }

    #[test]
    fn an_absolute_ttl_is_the_instant_it_names() {
        let first = fingerprint(
            "phone",
            &set(r#"{"value": 1, "ttl": "2030-01-01T00:00:00Z"}"#),
        );
        for same in [
            r#"{"value": 1, "ttl": "2030-01-01T00:00:00.000Z"}"#,
            r#"{"value": 1, "ttl": "2030-01-01T01:00:00+01:00"}"#,
        ] {
            assert_eq!(fingerprint("phone", &set(same)), first, "{same}");
        }
        let later = fingerprint(
            "phone",
            &set(r#"{"value": 1, "ttl": "2030-01-01T00:00:01Z"}"#),
        );
        assert_ne!(later, first);
    }

    #[test]
    fn another_request_has_another_fingerprint() {
        let first = fingerprint("phone", &set(r#"{"value": 2, "version": 1}"#));
        for other in [
            fingerprint("phone", &set(r#"{"value": 3, "version": 1}"#)),
            fingerprint("phone", &set(r#"{"value": 2, "version": 2}"#)),
            fingerprint("tablet", &set(r#"{"value": 2, "version": 1}"#)),
            fingerprint("phone", &Command::Remove { key: "k".into() }),
            fingerprint("phone", &Command::Clear),
        ] {
            assert_ne!(first, other);
        }
    }

    #[test]
    fn idempotency_key_headers_in_both_forms() {
        let id = |v: &str| OperationId::from_header(v.as_bytes()).map(|o| o.0);
        assert_eq!(id("\"8e03978e-40d5\"").as_deref(), Ok("8e03978e-40d5"));
        assert_eq!(id("8e03978e-40d5").as_deref(), Ok("8e03978e-40d5"));
        assert_eq!(id("\"a b\"").as_deref(), Ok("a b"));
        for bad in ["", "\"unterminated", "\"\"", "a b", "\"a\";x=1;;"] {
            assert!(id(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(id(&"x".repeat(256)).is_err());
        assert_eq!(id(&"x".repeat(255)).map(|s| s.len()), Ok(255));
    }
}
