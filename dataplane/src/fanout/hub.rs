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

    /// Asks every device of one user on this pod to catch up (its channel
    /// was resubscribed after a failover or a slot migration).
    pub fn resync_user(&self, user_id: &str) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        for sink in users.get(user_id).into_iter().flatten() {
            sink.resync();
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A device that records what it was offered.
    struct Recorder {
        id: String,
        instance: String,
        offers: Mutex<Vec<(Option<String>, Vec<i64>)>>,
        resyncs: Mutex<usize>,
    }

    impl Recorder {
        fn new(id: &str, instance: &str) -> Arc<Self> {
            Arc::new(Self {
                id: id.into(),
                instance: instance.into(),
                offers: Mutex::default(),
                resyncs: Mutex::default(),
            })
        }

        fn offered(&self) -> Vec<(Option<String>, Vec<i64>)> {
            self.offers.lock().unwrap().clone()
        }
    }

    impl Sink for Recorder {
        fn id(&self) -> &str {
            &self.id
        }
        fn instance_id(&self) -> &str {
            &self.instance
        }
        fn offer(&self, origin: Option<&str>, _published_us: i64, changes: &[Change]) {
            let seqs = changes.iter().map(|c| c.seq).collect();
            self.offers
                .lock()
                .unwrap()
                .push((origin.map(str::to_owned), seqs));
        }
        fn resync(&self) {
            *self.resyncs.lock().unwrap() += 1;
        }
    }

    fn envelope(user: &str, origin: Option<&str>, seqs: &[i64]) -> Envelope {
        Envelope {
            user_id: user.into(),
            origin: origin.map(str::to_owned),
            pod: "pod-a".into(),
            published_us: 0,
            changes: seqs
                .iter()
                .map(|&seq| Change {
                    key: "k".into(),
                    value: None,
                    metadata: None,
                    version: 1,
                    timestamp: 0,
                    seq,
                    deleted: false,
                    instance_id: "phone".into(),
                })
                .collect(),
            trace: None,
        }
    }

    #[test]
    fn a_change_reaches_every_device_of_its_user_and_no_other() {
        let hub = Hub::new();
        let (phone, laptop, other) = (
            Recorder::new("s1", "phone"),
            Recorder::new("s2", "laptop"),
            Recorder::new("s3", "phone"),
        );
        hub.add("alice", phone.clone());
        hub.add("alice", laptop.clone());
        hub.add("bob", other.clone());
        hub.deliver(&envelope("alice", Some("s1"), &[7, 8]));
        // The origin is passed on: each device decides what is its own.
        let want = vec![(Some("s1".to_string()), vec![7, 8])];
        assert_eq!(phone.offered(), want);
        assert_eq!(laptop.offered(), want);
        assert!(other.offered().is_empty());
        hub.deliver(&envelope("carol", None, &[1]));
        assert_eq!(hub.device_count(), 3);
    }

    #[test]
    fn removed_devices_get_nothing_and_empty_users_are_forgotten() {
        let hub = Hub::new();
        let phone = Recorder::new("s1", "phone");
        hub.add("alice", phone.clone());
        hub.remove("alice", "s1");
        hub.deliver(&envelope("alice", None, &[1]));
        assert!(phone.offered().is_empty());
        assert_eq!(hub.device_count(), 0);
        assert!(
            hub.users.read().unwrap().is_empty(),
            "no entry per past user"
        );
        // Removing what is not there is harmless.
        hub.remove("alice", "s1");
        hub.remove("nobody", "s9");
    }

    #[test]
    fn one_socket_leaving_keeps_the_users_other_sockets() {
        let hub = Hub::new();
        let (a, b) = (Recorder::new("s1", "phone"), Recorder::new("s2", "phone"));
        hub.add("alice", a.clone());
        hub.add("alice", b.clone());
        hub.remove("alice", "s1");
        hub.deliver(&envelope("alice", None, &[3]));
        assert!(a.offered().is_empty());
        assert_eq!(b.offered(), vec![(None, vec![3])]);
        assert_eq!(
            hub.sockets(),
            vec![("alice".into(), "s2".into(), "phone".into())]
        );
    }

    #[test]
    fn resync_all_reaches_every_device_once() {
        let hub = Hub::new();
        let devices: Vec<_> = (0..3)
            .map(|i| Recorder::new(&format!("s{i}"), "phone"))
            .collect();
        for (i, d) in devices.iter().enumerate() {
            hub.add(if i == 0 { "alice" } else { "bob" }, d.clone());
        }
        hub.resync_all();
        for d in &devices {
            assert_eq!(*d.resyncs.lock().unwrap(), 1);
        }
    }

    #[test]
    fn resync_user_reaches_that_users_devices_only() {
        let hub = Hub::new();
        let (a1, a2, b) = (
            Recorder::new("s1", "phone"),
            Recorder::new("s2", "laptop"),
            Recorder::new("s3", "phone"),
        );
        hub.add("alice", a1.clone());
        hub.add("alice", a2.clone());
        hub.add("bob", b.clone());
        hub.resync_user("alice");
        hub.resync_user("carol");
        let counts = [&a1, &a2, &b].map(|d| *d.resyncs.lock().unwrap());
        assert_eq!(counts, [1, 1, 0]);
    }
}
