//! The wire shapes of a change: what devices receive (the change itself
//! is `domain::Change`).

use serde::Serialize;
use serde_json::value::RawValue;

use crate::domain::Change;

/// `sync:update` payload.
#[derive(Serialize)]
pub struct UpdatePayload<'a> {
    pub key: &'a str,
    pub value: Option<&'a RawValue>,
    pub metadata: Option<&'a RawValue>,
    pub version: i64,
    pub timestamp: i64,
    pub seq: i64,
}

/// `sync:remove` payload.
#[derive(Serialize)]
pub struct RemovePayload<'a> {
    pub key: &'a str,
    pub timestamp: i64,
    pub seq: i64,
}

/// One entry of `pending-updates`.
#[derive(Serialize)]
pub struct SyncEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub key: &'a str,
    pub value: Option<&'a RawValue>,
    pub metadata: Option<&'a RawValue>,
    pub version: i64,
    pub timestamp: i64,
    pub seq: i64,
}

impl Change {
    pub fn update_payload(&self) -> UpdatePayload<'_> {
        UpdatePayload {
            key: &self.key,
            value: self.value.as_deref(),
            metadata: self.metadata.as_deref(),
            version: self.version,
            timestamp: self.timestamp,
            seq: self.seq,
        }
    }

    pub fn remove_payload(&self) -> RemovePayload<'_> {
        RemovePayload {
            key: &self.key,
            timestamp: self.timestamp,
            seq: self.seq,
        }
    }

    pub fn sync_event(&self) -> SyncEvent<'_> {
        SyncEvent {
            kind: if self.deleted { "remove" } else { "update" },
            key: &self.key,
            value: self.value.as_deref(),
            metadata: self.metadata.as_deref(),
            version: self.version,
            timestamp: self.timestamp,
            seq: self.seq,
        }
    }
}
