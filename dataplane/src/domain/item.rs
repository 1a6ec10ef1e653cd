//! The item as it is stored and as clients see it.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A stored item, in the seed's SyncStorageItem shape plus `seq`.
///
/// `value` and `metadata` stay as the JSON text that was stored, so a read
/// never parses and re-serialises them.
// The schema derive describes this serialisation for the OpenAPI document.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    pub id: String,
    pub user_id: String,
    /// The device that wrote this version.
    pub instance_id: String,
    pub key: String,
    /// Any JSON, as it was written.
    #[schema(value_type = Option<serde_json::Value>)]
    pub value: Option<Box<RawValue>>,
    /// An object, as it was written.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    /// Counts the item's changes, from 1.
    pub version: i64,
    /// The client's clock, in Unix milliseconds.
    pub timestamp: i64,
    /// The server's time of the write.
    #[serde(
        serialize_with = "ms_as_rfc3339",
        deserialize_with = "crate::instant::required"
    )]
    #[schema(value_type = String, format = DateTime)]
    pub last_modified: i64,
    pub is_deleted: bool,
    /// Bytes of `value` plus `metadata` as stored.
    pub size: i64,
    pub compression_type: Option<String>,
    pub encryption_type: Option<String>,
    #[schema(value_type = Option<Vec<String>>)]
    pub tags: Option<Box<RawValue>>,
    /// Expiry time, if any.
    #[serde(
        serialize_with = "opt_ms_as_rfc3339",
        deserialize_with = "crate::instant::option",
        default
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ttl: Option<i64>,
    pub priority: i64,
    /// The user's sequence number of the item's last change.
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
