//! Each device's delivery state: where its cursor stands, what it is
//! subscribed to, whether it owes a full resync. The socket edge and the
//! sessions endpoint reach it through [`SyncService::devices`]; the rules
//! of what a device is sent stay in the socket session, which owns the
//! connection.

use super::SyncService;
pub use crate::storage::instances::{Arrival, Cursors, Instance};
use crate::{
    domain::Item,
    storage::{instances, items, Db},
};

/// The devices of the store (see the module doc). Borrowed from the
/// service, so it is as cheap as a reference.
pub struct Devices<'a> {
    db: &'a Db,
}

impl SyncService {
    pub fn devices(&self) -> Devices<'_> {
        Devices { db: &self.db }
    }
}

impl Devices<'_> {
    /// Records a connection's session facts; returns the device's cursors
    /// (all zero for a new device) and subscriptions.
    pub async fn arrive(&self, arrival: &Arrival<'_>) -> Result<Cursors, sqlx::Error> {
        instances::arrive(self.db, arrival).await
    }

    /// Records that the device left having been delivered up to `delivered`.
    pub async fn leave(
        &self,
        user_id: &str,
        instance_id: &str,
        delivered: i64,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        instances::leave(self.db, user_id, instance_id, delivered, now).await
    }

    /// The user's devices, most recently seen first.
    pub async fn list(&self, user_id: &str) -> Result<Vec<Instance>, sqlx::Error> {
        instances::list(self.db, user_id).await
    }

    pub async fn subscriptions(
        &self,
        user_id: &str,
        instance_id: &str,
    ) -> Result<Vec<String>, sqlx::Error> {
        instances::subscriptions(self.db, user_id, instance_id).await
    }

    pub async fn save_subscriptions(
        &self,
        user_id: &str,
        instance_id: &str,
        patterns: &[String],
    ) -> Result<(), sqlx::Error> {
        instances::save_subscriptions(self.db, user_id, instance_id, patterns).await
    }

    /// The device must be sent a full resync when it next starts.
    pub async fn owe_resync(&self, user_id: &str, instance_id: &str) -> Result<(), sqlx::Error> {
        instances::owe_resync(self.db, user_id, instance_id).await
    }

    /// The device was sent a full resync up to `seq`.
    pub async fn resynced(
        &self,
        user_id: &str,
        instance_id: &str,
        seq: i64,
    ) -> Result<(), sqlx::Error> {
        instances::resynced(self.db, user_id, instance_id, seq).await
    }

    /// The device acknowledged everything up to `seq` (never moves back).
    pub async fn advance_cursor(
        &self,
        user_id: &str,
        instance_id: &str,
        seq: i64,
    ) -> Result<(), sqlx::Error> {
        instances::advance_cursor(self.db, user_id, instance_id, seq).await
    }

    /// The user's sequence head and the highest sequence purged from it.
    pub async fn heads(&self, user_id: &str) -> Result<(i64, i64), sqlx::Error> {
        items::heads(self.db, user_id).await
    }

    /// The user's rows changed after `after`, in sequence order.
    pub async fn changes_since(&self, user_id: &str, after: i64) -> Result<Vec<Item>, sqlx::Error> {
        items::changes_since(self.db, user_id, after).await
    }
}
