//! The state every edge shares: the configuration and the services, built
//! once by `app` and handed to the REST router and the Socket.IO namespace.
//! It sits below the edges so that they need nothing of the wiring.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use crate::{
    analytics::{report::Reports, Analytics},
    audit::Auditor,
    auth::{limiter::Limiter, Authenticator},
    config::Config,
    fanout::Hub,
    metrics::Metrics,
    presence::Presence,
    sync::{review::Review, SyncService},
};

/// What every handler can reach: one shared [`Shared`] behind an `Arc`.
/// axum clones the state for every extractor and middleware that takes it,
/// several times per request; a struct of a dozen `Arc`-holding services
/// cost a dozen atomic increments and decrements each time (AppState's
/// clone and drop were 6% of a GET's CPU in the profile in bench/README.md).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The configuration and services of [`AppState`].
pub struct Shared {
    pub config: Arc<Config>,
    pub sync: SyncService,
    /// Conflict review (`/conflicts/*`).
    pub review: Review,
    pub auth: Authenticator,
    /// Key management (REST and CLI alike).
    pub keys: crate::keys::Keys,
    pub metrics: Arc<Metrics>,
    pub limiter: Limiter,
    pub audit: Auditor,
    /// This pod's connected devices.
    pub hub: Arc<Hub>,
    /// Which devices are online, across every process of the store.
    pub presence: Arc<Presence>,
    pub analytics: Analytics,
    /// The analytics reports (`/api/v1/analytics/*`).
    pub reports: Reports,
    /// Set by `app::serve` on SIGTERM.
    pub(crate) shutting_down: Arc<AtomicBool>,
}

impl Shared {
    /// True once SIGTERM arrived: `/ready` fails so load balancers stop
    /// sending new work while in-flight requests drain.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}
