//! A change in a user's sequence: what fan-out carries and devices receive.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::Item;

/// One committed change (a set or a remove) at one `seq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub key: String,
    /// `None` for a removal.
    pub value: Option<Box<RawValue>>,
    pub metadata: Option<Box<RawValue>>,
    pub version: i64,
    pub timestamp: i64,
    pub seq: i64,
    pub deleted: bool,
    /// The instance whose write this was.
    pub instance_id: String,
}

impl From<&Item> for Change {
    fn from(item: &Item) -> Self {
        Change {
            key: item.key.clone(),
            value: item.value.clone(),
            metadata: item.metadata.clone(),
            version: item.version,
            timestamp: item.timestamp,
            seq: item.seq,
            deleted: item.is_deleted,
            instance_id: item.instance_id.clone(),
        }
    }
}

impl Change {
    /// The row as a device should learn it at `now_ms`: an item past its
    /// TTL is a removal, even before the expiry sweep has written one into
    /// the sequence (issue 14 §3: no read path returns an expired item).
    pub fn as_of(item: &Item, now_ms: i64) -> Self {
        let mut change = Change::from(item);
        if !item.is_deleted && !item.is_visible(now_ms) {
            change.deleted = true;
            change.value = None;
            change.metadata = None;
        }
        change
    }
}
