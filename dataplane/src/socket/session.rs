//! One connected device: its credential, subscriptions, and the loop that
//! sends it what it is owed.
//!
//! Delivery is pull-repaired rather than queued ([`super::delivery`] decides
//! the next step). When live changes cannot simply follow on, the device
//! catches up from the database instead: the rows changed since the last
//! delivered `seq`, which is the latest state per key. That is the per-key
//! conflation a slow consumer needs, and it bounds memory per socket at
//! [`super::delivery::MAX_WAITING`] changes.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::json;
use socketioxide::extract::SocketRef;
use tokio::sync::Notify;

use super::{
    delivery::{Delivery, Step, Waiting},
    handshake::Device,
    subscriptions::Subscriptions,
};
use crate::{
    auth::Principal,
    error::ApiError,
    fanout::Sink,
    state::AppState,
    sync::{devices::Cursors, Change},
    telemetry::{self, TraceContext, TARGET},
};

/// Pause before retrying when the socket's send buffer is full.
const FULL_BACKOFF: Duration = Duration::from_millis(25);
/// How often an open socket's credential is re-checked even when the
/// device sends nothing. The check reads the key cache, so a revocation
/// reaches the socket within this plus the cache's lifetime.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Where a socket is in its life. socketioxide spawns the connect handler,
/// and a transport that drops right after the engine opened is handled as
/// a disconnect that can run before the connect handler or during its
/// awaits; it once undid nothing and the connect then registered a device
/// that was gone (online for good, refreshed by the heartbeat, the gauge at
/// -1). The connect handler and the disconnect handler each hold
/// [`Session::stage`] for their whole run, so they are ordered, and the
/// disconnect undoes exactly what the connect did.
pub enum Stage {
    /// Admitted by the handshake; the connect handler has not run.
    Admitted,
    /// The connect handler ran: the socket is in the gauge (until this is
    /// dropped), the hub, the bus and the presence table.
    Live(crate::metrics::GaugeHeld),
    /// Disconnected, or never connected: nothing is left to undo, and a
    /// connect handler that runs late does nothing.
    Gone,
}

pub struct Session {
    pub sid: String,
    /// Orders this socket's connect and disconnect (see [`Stage`]).
    pub stage: tokio::sync::Mutex<Stage>,
    /// When the device connected: the start of its session.
    pub connected_at: std::time::Instant,
    pub device: Device,
    socket: SocketRef,
    app: AppState,
    pub subscriptions: Mutex<Subscriptions>,
    /// Held while a change of the subscriptions is stored, so that two
    /// changes of one socket are stored in the order they were made.
    pub subscriptions_store: tokio::sync::Mutex<()>,
    /// The user's seq when this socket was told `sync:resync`, until the
    /// device re-fetches everything with `sync:getAll`.
    resync_at: Mutex<Option<i64>>,
    delivery: Mutex<Delivery>,
    wake: Notify,
    closed: AtomicBool,
    /// The credential the device holds now: the handshake's, or a token
    /// it renewed with `sync:auth`.
    held: Mutex<Principal>,
    /// Set once the credential stopped being valid; the socket is then
    /// told why and disconnected, and gets nothing more.
    revoked: AtomicBool,
    checked: Mutex<Instant>,
}

/// Whether an error means the credential itself is no longer good (as
/// opposed to a passing failure such as the database being unavailable).
fn revokes(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Unauthorized { .. }
            | ApiError::KeyInactive
            | ApiError::KeyExpired
            | ApiError::Restricted { .. }
            | ApiError::Forbidden { .. }
            | ApiError::ScopeRequired { .. }
    )
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Session {
    pub fn new(socket: SocketRef, device: Device, app: AppState) -> Self {
        Self {
            sid: socket.id.to_string(),
            stage: tokio::sync::Mutex::new(Stage::Admitted),
            connected_at: std::time::Instant::now(),
            socket,
            app,
            subscriptions: Mutex::new(Subscriptions::default()),
            subscriptions_store: tokio::sync::Mutex::new(()),
            resync_at: Mutex::new(None),
            delivery: Mutex::new(Delivery::default()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            held: Mutex::new(device.principal.clone()),
            revoked: AtomicBool::new(false),
            checked: Mutex::new(Instant::now()),
            device,
        }
    }

    /// The socket this session sends to.
    pub fn socket(&self) -> &SocketRef {
        &self.socket
    }

    /// The device's credential as it stands now (see
    /// `Authenticator::recheck`). A credential that is no longer valid
    /// marks the session revoked: the caller replies with the error, then
    /// [`Self::end_if_revoked`] disconnects it.
    pub async fn authorize(&self) -> Result<Principal, ApiError> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // A socket reads by nature (its handshake required `read`): losing
        // it ends the socket, or updates would keep flowing to it.
        let result = self
            .app
            .auth
            .recheck(&held, &self.device.caller)
            .await
            .and_then(|p| p.require(crate::auth::Scope::Read).map(|()| p));
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if let Err(e) = &result {
            if revokes(e) {
                self.revoked.store(true, Ordering::Release);
                self.wake.notify_one();
            }
        }
        result
    }

    /// Replaces the held credential with a renewed token of the same user.
    pub fn renew(&self, principal: Principal) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = principal;
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Disconnects a revoked session (after its reply went out: packets
    /// leave in order).
    pub fn end_if_revoked(&self) {
        if self.is_revoked() {
            self.close();
            if let Err(e) = self.socket.clone().disconnect() {
                tracing::debug!(sid = %self.sid, error = %e, "revoked socket already gone");
            }
        }
    }

    /// The periodic re-check of an idle socket: tells it why, then ends it.
    async fn recheck(&self) {
        let due = self
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= RECHECK;
        if due {
            if let Err(e) = self.authorize().await {
                if self.is_revoked() {
                    self.app
                        .metrics
                        .socket_errors
                        .with_label_values(&["revoked", e.code()])
                        .inc();
                    let request_id = self.device.request_id.as_deref();
                    super::events::log_failure("revoked", &self.sid, request_id, &e);
                    if let Err(err) = self.socket.emit("error", &e.body()) {
                        tracing::debug!(sid = %self.sid, error = %err, "revocation not told");
                    }
                    self.end_if_revoked();
                }
            }
        }
    }

    fn delivery(&self) -> std::sync::MutexGuard<'_, Delivery> {
        self.delivery.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The highest seq this device has been sent (0 before the first).
    pub fn delivered(&self) -> i64 {
        self.delivery().delivered().unwrap_or(0)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Starts the session with the subscriptions stored for the device,
    /// unless it already changed them on this connection (its own change
    /// was stored, and is newer).
    pub fn restore_subscriptions(&self, patterns: &[String]) {
        if patterns.is_empty() {
            return;
        }
        let mut subs = self.subscriptions.lock().unwrap_or_else(|p| p.into_inner());
        if *subs != Subscriptions::default() {
            return;
        }
        if let Err(e) = subs.subscribe(patterns) {
            tracing::warn!(sid = %self.sid, error = %e, "stored subscriptions not restored");
        }
    }

    /// The subscription set, as the device wrote it.
    pub fn subscription_list(&self) -> Vec<String> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .list()
    }

    /// The seq a `sync:resync` told the device to re-fetch from, once: the
    /// caller is its `sync:getAll`, which makes it current as of then.
    pub fn take_resync(&self) -> Option<i64> {
        self.resync_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn wants(&self, key: &str) -> bool {
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wants(key)
    }

    /// Decides what to do next (see [`Delivery::next_step`]).
    fn next_step(&self) -> Step {
        let step = self.delivery().next_step(Instant::now());
        if let Step::CatchUp { gap: true, .. } = step {
            self.app.metrics.catchups.with_label_values(&["gap"]).inc();
        }
        step
    }

    /// Emits one change to the device. False when the socket cannot take it.
    fn emit(&self, change: &Change) -> bool {
        let (event, sent) = if change.deleted {
            (
                "sync:remove",
                self.socket.emit("sync:remove", &change.remove_payload()),
            )
        } else {
            (
                "sync:update",
                self.socket.emit("sync:update", &change.update_payload()),
            )
        };
        match sent {
            Ok(()) => {
                self.app
                    .metrics
                    .socket_events
                    .with_label_values(&[event, "out"])
                    .inc();
                true
            }
            Err(e) => {
                tracing::debug!(sid = %self.sid, error = %e, "emit failed");
                false
            }
        }
    }

    /// Emits a live change, inside a span of its write's trace when that
    /// trace is sampled: the delivery to this device.
    fn emit_live(&self, w: &Waiting) -> bool {
        let Some(trace) = w.trace.as_ref().filter(|t| t.is_sampled()) else {
            return self.emit(&w.change);
        };
        let event = if w.change.deleted {
            "sync:remove"
        } else {
            "sync:update"
        };
        let span = tracing::info_span!(
            target: TARGET,
            "socket.deliver",
            otel.name = %format!("{event} /sync"),
            otel.kind = "producer",
            messaging.system = "socket.io",
            messaging.operation.type = "send",
            messaging.operation.name = event,
            messaging.destination.name = "/sync",
            syncstore.seq = w.change.seq,
        );
        trace.adopt(&span);
        let sent = span.in_scope(|| self.emit(&w.change));
        if !sent {
            telemetry::context::fail(&span, "SEND_BUFFER_FULL");
        }
        sent
    }

    async fn emit_run(&self, run: Vec<Waiting>) {
        let mut last_ok = None;
        let mut stalled_at = None;
        for (i, w) in run.iter().enumerate() {
            if !w.own && self.wants(&w.change.key) {
                if !self.emit_live(w) {
                    stalled_at = Some(i);
                    break;
                }
                let latency = (now_us() - w.published_us).max(0) as f64 / 1e6;
                self.app.metrics.delivery_latency.observe(latency);
                self.app
                    .metrics
                    .deliveries
                    .with_label_values(&["live"])
                    .inc();
            }
            last_ok = Some(w.change.seq);
        }
        {
            let mut st = self.delivery();
            if let Some(seq) = last_ok {
                st.advance(seq);
            }
            // What was not sent is re-read, newest per key, once the socket
            // drains: the per-key conflation of a slow consumer.
            if stalled_at.is_some() {
                st.owe_catch_up();
            }
        }
        if let Some(i) = stalled_at {
            self.count_stalled();
            self.app.metrics.conflations.inc_by((run.len() - i) as u64);
            tokio::time::sleep(FULL_BACKOFF).await;
        }
    }

    async fn catch_up(&self, from: i64) {
        let rows = match self
            .app
            .sync
            .devices()
            .changes_since(&self.device.user_id, from)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(sid = %self.sid, error = %e, "catch-up failed; retrying");
                self.delivery().owe_catch_up();
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
        };
        let mut delivered = from;
        let mut stalled = false;
        let now = crate::storage::now_ms();
        for item in &rows {
            let change = Change::as_of(item, now);
            // What this socket wrote is no news to it (the live path's rule).
            let own = self.delivery().is_own(change.seq);
            if !own && self.wants(&change.key) {
                if !self.emit(&change) {
                    stalled = true;
                    break;
                }
                self.app
                    .metrics
                    .deliveries
                    .with_label_values(&["catchup"])
                    .inc();
            }
            delivered = change.seq;
        }
        if let Some(last) = rows.last() {
            let skipped = (last.seq - from) - rows.len() as i64;
            self.app.metrics.conflations.inc_by(skipped.max(0) as u64);
        }
        {
            let mut st = self.delivery();
            st.advance(delivered);
            if stalled {
                st.owe_catch_up();
            }
        }
        if stalled {
            self.count_stalled();
            tokio::time::sleep(FULL_BACKOFF).await;
        }
    }

    /// A catch-up owed because the socket could not take what was sent.
    fn count_stalled(&self) {
        self.app
            .metrics
            .catchups
            .with_label_values(&["stalled"])
            .inc();
    }

    /// Sends `pending-updates` (or `sync:resync`) from the device's cursor,
    /// then marks the session live. A device with subscriptions (restored
    /// from its last connection) is first told them in
    /// `sync:subscriptions`, and is sent only the keys they cover.
    async fn start(&self, cursors: &Cursors) -> Result<(), sqlx::Error> {
        let (cursor, returning) = (cursors.resume_from(), cursors.returning());
        let (last_seq, purged_seq) = self.app.sync.devices().heads(&self.device.user_id).await?;
        let subscribed = self.subscription_list();
        if !subscribed.is_empty() {
            let _ = self
                .socket
                .emit("sync:subscriptions", &json!({ "keys": subscribed }));
        }
        if returning && (cursor < purged_seq || cursors.resync_due) {
            let reason = if cursor < purged_seq {
                "cursor_before_retention"
            } else {
                "resync_due"
            };
            self.tell_resync(reason, cursor, last_seq).await?;
            return Ok(());
        }
        let rows = self
            .app
            .sync
            .devices()
            .changes_since(&self.device.user_id, cursor)
            .await?;
        let upto = rows.last().map_or(last_seq, |r| r.seq.max(last_seq));
        let now = crate::storage::now_ms();
        let changes: Vec<Change> = rows
            .iter()
            .map(|r| Change::as_of(r, now))
            // A new device needs the current state, not what was removed
            // (or expired).
            .filter(|c| (returning || !c.deleted) && self.wants(&c.key))
            .collect();
        let events: Vec<_> = changes.iter().map(Change::sync_event).collect();
        match self
            .socket
            .emit_with_ack::<_, serde_json::Value>("pending-updates", &(&events,))
        {
            Ok(ack) => {
                let (app, user, instance) = (
                    self.app.clone(),
                    self.device.user_id.clone(),
                    self.device.instance_id.clone(),
                );
                tokio::spawn(async move {
                    // Any answer is an acknowledgement, whatever it carries
                    // (a bare `ack()` sends no value to decode).
                    if matches!(ack.await, Ok(_) | Err(socketioxide::AckError::Decode(_))) {
                        if let Err(e) = app
                            .sync
                            .devices()
                            .advance_cursor(&user, &instance, upto)
                            .await
                        {
                            tracing::warn!(error = %e, "cannot store cursor");
                        }
                    }
                });
                self.app
                    .metrics
                    .socket_events
                    .with_label_values(&["pending-updates", "out"])
                    .inc();
                self.app
                    .metrics
                    .deliveries
                    .with_label_values(&["pending"])
                    .inc_by(events.len() as u64);
            }
            Err(e) => tracing::debug!(sid = %self.sid, error = %e, "pending-updates not sent"),
        }
        self.delivery().advance(upto);
        Ok(())
    }

    /// Tells the device to re-fetch everything (`sync:resync {reason,
    /// cursor}`), as of `last_seq`: live changes after it keep flowing, and
    /// until a `sync:getAll` without a prefix the device owes the re-fetch,
    /// so every later connection of it, on any pod, is told again.
    pub async fn tell_resync(
        &self,
        reason: &str,
        cursor: i64,
        last_seq: i64,
    ) -> Result<(), sqlx::Error> {
        let d = &self.device;
        self.app
            .sync
            .devices()
            .owe_resync(&d.user_id, &d.instance_id)
            .await?;
        *self.resync_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(last_seq);
        let _ = self.socket.emit(
            "sync:resync",
            &json!({ "reason": reason, "cursor": cursor }),
        );
        self.app
            .metrics
            .socket_events
            .with_label_values(&["sync:resync", "out"])
            .inc();
        self.delivery().advance(last_seq);
        Ok(())
    }

    /// The delivery loop, for the life of the socket.
    pub async fn run(self: Arc<Self>, cursors: Cursors) {
        let mut tries = 0;
        while let Err(e) = Box::pin(self.start(&cursors)).await {
            tries += 1;
            tracing::warn!(sid = %self.sid, error = %e, tries, "cannot send pending updates; retrying");
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500 * tries.min(10))).await;
        }
        while !self.closed.load(Ordering::Acquire) {
            // Boxed so that an idle session's task stays small: the lookup
            // future only exists while a re-check runs.
            Box::pin(self.recheck()).await;
            if self.is_revoked() {
                return;
            }
            match self.next_step() {
                Step::Emit(run) => self.emit_run(run).await,
                Step::CatchUp { from, .. } => Box::pin(self.catch_up(from)).await,
                Step::Wait(limit) => {
                    let limit = limit.map_or(RECHECK, |l| l.min(RECHECK));
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(limit) => {}
                    }
                }
            }
        }
    }
}

impl Sink for Session {
    fn id(&self) -> &str {
        &self.sid
    }

    fn instance_id(&self) -> &str {
        &self.device.instance_id
    }

    fn offer(&self, origin: Option<&str>, published_us: i64, changes: &[Change]) {
        let own = origin == Some(self.sid.as_str());
        // Offered inside the span that brought the changes (the write on
        // its own pod, the fan-out receipt on another), if traced; what
        // the socket wrote itself is never sent, so never traced.
        let trace = if own { None } else { TraceContext::current() };
        let dropped = self
            .delivery()
            .offer(own, published_us, changes, trace.as_ref());
        if dropped > 0 {
            self.app.metrics.conflations.inc_by(dropped as u64);
            self.app
                .metrics
                .catchups
                .with_label_values(&["overflow"])
                .inc();
        }
        self.wake.notify_one();
    }

    fn resync(&self) {
        self.delivery().owe_catch_up();
        self.app
            .metrics
            .catchups
            .with_label_values(&["resync"])
            .inc();
        self.wake.notify_one();
    }
}
