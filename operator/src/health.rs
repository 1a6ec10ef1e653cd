//! What `/health` answers: whether the controllers are alive. A controller
//! is alive while its stream runs and its watch on the apiserver works; a
//! watch that has failed for longer than the grace (apiserver unreachable,
//! credentials revoked) or a controller whose stream ended makes `/health`
//! answer 503, so the liveness probe restarts the pod instead of leaving a
//! leader that reconciles nothing.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(Default)]
struct Controller {
    /// When the watch began failing, and the last error; None while it works.
    failing: Option<(Instant, String)>,
    stopped: bool,
}

#[derive(Clone)]
pub struct Health {
    controllers: Arc<Mutex<BTreeMap<&'static str, Controller>>>,
    grace: Duration,
}

impl Health {
    pub fn new(grace: Duration) -> Self {
        Self {
            controllers: Arc::default(),
            grace,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, Controller>) -> T) -> T {
        f(&mut self.controllers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The controller's watch delivered an event (or started).
    pub fn watch_ok(&self, controller: &'static str) {
        self.with(|c| c.entry(controller).or_default().failing = None);
    }

    /// The controller's watch failed; the first failure of a run counts.
    pub fn watch_failed(&self, controller: &'static str, error: &str) {
        self.with(|c| {
            let entry = c.entry(controller).or_default();
            match &mut entry.failing {
                Some((_, last)) => *last = error.to_string(),
                None => entry.failing = Some((Instant::now(), error.to_string())),
            }
        });
    }

    /// The controller's stream ended.
    pub fn stopped(&self, controller: &'static str) {
        self.with(|c| c.entry(controller).or_default().stopped = true);
    }

    /// Ok, or why the process is not healthy. A standby replica has no
    /// controllers yet and is healthy.
    pub fn check(&self) -> Result<(), String> {
        self.with(|c| {
            for (name, state) in c.iter() {
                if state.stopped {
                    return Err(format!("the {name} controller has stopped"));
                }
                if let Some((since, error)) = &state.failing {
                    let failing = since.elapsed();
                    if failing > self.grace {
                        return Err(format!(
                            "the {name} watch has failed for {} s: {error}",
                            failing.as_secs()
                        ));
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_failing_past_the_grace_is_unhealthy_until_it_recovers() {
        let h = Health::new(Duration::from_millis(20));
        assert!(h.check().is_ok(), "no controller yet: a standby is healthy");
        h.watch_ok("SyncStore");
        h.watch_failed("SyncStore", "connection refused");
        assert!(h.check().is_ok(), "within the grace");
        std::thread::sleep(Duration::from_millis(30));
        let err = h.check().expect_err("past the grace");
        assert!(
            err.starts_with("the SyncStore watch has failed for")
                && err.ends_with("connection refused"),
            "{err}"
        );
        h.watch_ok("SyncStore");
        assert!(h.check().is_ok());
        h.stopped("ApiKey");
        assert_eq!(
            h.check().expect_err("stopped"),
            "the ApiKey controller has stopped"
        );
    }
}
