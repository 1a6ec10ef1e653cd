//! The single-process bus: publishing is delivering.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{Bus, Envelope, Hub};

pub struct LocalBus {
    hub: Arc<Hub>,
    pod: String,
}

impl LocalBus {
    pub fn new(hub: Arc<Hub>, pod: &str) -> Self {
        Self {
            hub,
            pod: pod.to_string(),
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, envelope: Envelope) {
        self.hub.deliver(&envelope);
    }
    fn host(&self, _user_id: &str) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
    fn unhost(&self, _user_id: &str) {}
    fn pod(&self) -> &str {
        &self.pod
    }
}
