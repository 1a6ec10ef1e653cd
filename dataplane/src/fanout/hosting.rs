//! Which per-user channels this pod needs, by how many local devices, and
//! whether each subscription is live yet.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::sync::watch;

/// A channel this pod subscribes to. Every device of the user waits on the
/// same readiness, not only the first: a second device that connects while
/// the first one's subscribe is still in flight must not read its pending
/// updates before the subscription is live either, or a change published in
/// between reaches neither its query nor its socket.
struct Hosted {
    user: String,
    devices: usize,
    live: watch::Sender<bool>,
}

#[derive(Default)]
pub(super) struct Hosting {
    channels: Mutex<HashMap<String, Hosted>>,
}

impl Hosting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Hosted>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more device of `user` on `channel`: whether it is the first (the
    /// caller subscribes), and the channel's readiness.
    pub fn add(&self, channel: &str, user: &str) -> (bool, watch::Receiver<bool>) {
        let mut channels = self.lock();
        if let Some(h) = channels.get_mut(channel) {
            h.devices += 1;
            return (false, h.live.subscribe());
        }
        let (live, rx) = watch::channel(false);
        channels.insert(
            channel.to_string(),
            Hosted {
                user: user.to_string(),
                devices: 1,
                live,
            },
        );
        (true, rx)
    }

    /// One device left; whether it was the last (the caller unsubscribes).
    pub fn remove(&self, channel: &str) -> bool {
        let mut channels = self.lock();
        match channels.get_mut(channel) {
            Some(h) if h.devices > 1 => {
                h.devices -= 1;
                false
            }
            Some(_) => {
                channels.remove(channel);
                true
            }
            None => false,
        }
    }

    /// The subscription of `channel` is live.
    pub fn mark_live(&self, channel: &str) {
        if let Some(h) = self.lock().get(channel) {
            h.live.send_replace(true);
        }
    }

    /// The user of a hosted channel; `None` when no device needs it now.
    pub fn user_of(&self, channel: &str) -> Option<String> {
        self.lock().get(channel).map(|h| h.user.clone())
    }

    pub fn channels(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

/// Waits (bounded) until a subscription is live, so nothing published after
/// this returns can be missed. On a timeout the device goes on anyway: the
/// resync after the subscription is repaired covers it.
pub(super) async fn wait_live(mut live: watch::Receiver<bool>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), live.wait_for(|live| *live)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_device_subscribes_and_the_last_unsubscribes() {
        let h = Hosting::default();
        let (first, rx) = h.add("c", "alice");
        let (second, rx2) = h.add("c", "alice");
        assert_eq!((first, second), (true, false));
        assert!(!*rx.borrow());
        h.mark_live("c");
        assert!(
            *rx.borrow() && *rx2.borrow(),
            "every device sees the readiness"
        );
        assert_eq!(h.user_of("c").as_deref(), Some("alice"));
        assert!(!h.remove("c"));
        assert!(h.remove("c"));
        assert!(!h.remove("c"), "an unknown channel is not a last device");
        assert_eq!(h.user_of("c"), None);
        assert!(h.channels().is_empty());
    }
}
