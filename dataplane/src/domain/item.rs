//! The item as it is stored and as clients see it.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A stored item, in the seed's SyncStorageItem shape plus `seq`.
///
/// `value` and `metadata` stay as the JSON text that was stored, so a read
/// never parses and re-serialises them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub id: String,
    pub user_id: String,
    pub instance_id: String,
    pub key: String,
    pub value: Option<Box<RawValue>>,
    pub metadata: Option<Box<RawValue>>,
    pub version: i64,
    /// The client's clock, in Unix milliseconds.
    pub timestamp: i64,
    #[serde(
        serialize_with = "ms_as_rfc3339",
        deserialize_with = "crate::instant::required"
    )]
    pub last_modified: i64,
    pub is_deleted: bool,
    /// Bytes of `value` plus `metadata` as stored.
    pub size: i64,
    pub compression_type: Option<String>,
    pub encryption_type: Option<String>,
    pub tags: Option<Box<RawValue>>,
    /// Expiry time, if any.
    #[serde(
        serialize_with = "opt_ms_as_rfc3339",
        deserialize_with = "crate::instant::option",
        default
    )]
    pub ttl: Option<i64>,
    pub priority: i64,
    pub seq: i64,
}

impl Item {
    /// Whether the item is gone for readers: removed, or past its TTL.
    pub fn is_visible(&self, now_ms: i64) -> bool {
        !self.is_deleted && self.ttl.is_none_or(|t| t > now_ms)
    }
}

fn ms_as_rfc3339<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    match chrono::DateTime::from_timestamp_millis(*ms) {
        Some(t) => s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => s.serialize_i64(*ms),
    }
}

fn opt_ms_as_rfc3339<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => ms_as_rfc3339(ms, s),
        None => s.serialize_none(),
    }
}

/// Stored JSON text as a value to compute with (merges, the resolver,
/// analysis); `None` for no text or text that is not JSON.
pub fn json_value(raw: Option<&RawValue>) -> Option<serde_json::Value> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
}
