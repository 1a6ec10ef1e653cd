//! This pod's connected devices, by user.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use super::Envelope;
use crate::domain::Change;

/// A connected device that changes are offered to.
pub trait Sink: Send + Sync {
    /// A stable id, to tell sinks apart (the socket id).
    fn id(&self) -> &str;
    /// The device's instance id.
    fn instance_id(&self) -> &str;
    /// New changes of the device's user; `origin` is the writing socket,
    /// `published_us` when the change was published (for latency).
    fn offer(&self, origin: Option<&str>, published_us: i64, changes: &[Change]);
    /// Something may have been missed (e.g. the bus reconnected): catch up
    /// from the database.
    fn resync(&self);
}

#[derive(Default)]
pub struct Hub {
    users: RwLock<HashMap<String, Vec<Arc<dyn Sink>>>>,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a device.
    pub fn add(&self, user_id: &str, sink: Arc<dyn Sink>) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        users.entry(user_id.to_string()).or_default().push(sink);
    }

    /// Unregisters a device.
    pub fn remove(&self, user_id: &str, sink_id: &str) {
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = users.get_mut(user_id) {
            list.retain(|s| s.id() != sink_id);
            if list.is_empty() {
                users.remove(user_id);
            }
        }
    }

    pub fn deliver(&self, envelope: &Envelope) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = users.get(&envelope.user_id) {
            for sink in list {
                sink.offer(
                    envelope.origin.as_deref(),
                    envelope.published_us,
                    &envelope.changes,
                );
            }
        }
    }

    /// Asks every device on this pod to catch up.
    pub fn resync_all(&self) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        for sink in users.values().flatten() {
            sink.resync();
        }
    }

    /// Every (user, instance) connected here.
    pub fn devices(&self) -> Vec<(String, String)> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        users
            .iter()
            .flat_map(|(user, sinks)| {
                sinks
                    .iter()
                    .map(move |s| (user.clone(), s.instance_id().to_string()))
            })
            .collect()
    }

    /// Every socket connected here: (user, socket id, instance).
    pub fn sockets(&self) -> Vec<(String, String, String)> {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        users
            .iter()
            .flat_map(|(user, sinks)| {
                sinks.iter().map(move |s| {
                    (
                        user.clone(),
                        s.id().to_string(),
                        s.instance_id().to_string(),
                    )
                })
            })
            .collect()
    }

    pub fn device_count(&self) -> usize {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}
