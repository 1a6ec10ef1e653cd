//! The listening socket, guarded against clients that hold connections
//! without using them (slowloris): a cap on open connections, and deadlines
//! for sending a request's headers, its body, and for idling between
//! requests.
//!
//! `axum::serve` still drives hyper (HTTP/1 and 2, upgrades, graceful
//! shutdown); this module gives it a [`Listener`] and one outer middleware,
//! [`track`]. Hyper's own `header_read_timeout` is not used: its timer also
//! runs while a kept-alive connection waits for its next request, so it
//! cannot be both a short header deadline and a longer idle timeout, and
//! `axum::serve` does not expose it. tower-http's `RequestBodyTimeout`
//! restarts with every frame, so a client dripping one byte at a time
//! never trips it; [`DeadlineBody`] is a deadline for the whole body.
//!
//! How each connection is watched:
//! - The [`Listener`] accepts only while fewer than `HTTP_MAX_CONNECTIONS`
//!   are open; connections beyond that wait in the kernel's listen backlog
//!   (costing no descriptor) until one closes.
//! - Each connection's [`Phase`] says which deadline applies (see
//!   [`deadline`]): from accept, the request head must arrive within
//!   `HTTP_HEADER_TIMEOUT_MS`; after a response, the next request must
//!   start within `HTTP_IDLE_TIMEOUT_MS` and, once its first byte arrived,
//!   finish its head within `HTTP_HEADER_TIMEOUT_MS`. While a request is in
//!   flight (handler, long-polling) no connection deadline applies, and an
//!   upgraded connection (the Socket.IO WebSocket, kept alive by
//!   engine.io's own ping) never gets one again.
//! - A missed deadline closes the connection (the read fails with
//!   `TimedOut`, and hyper drops it).
//! - A request body must arrive within `HTTP_BODY_TIMEOUT_MS` of the
//!   request's start; a reader past it gets 408 `REQUEST_TIMEOUT`, and the
//!   connection is closed after that response.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use axum::{
    body::{Body, Bytes},
    extract::{connect_info::Connected, ConnectInfo, Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
    serve::IncomingStream,
    Router,
};
use http_body::{Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};

use crate::{config::HttpConfig, http::extract::BodyDeadline};

/// The deadlines of [`HttpConfig`], as the connections use them.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: std::time::Duration,
    pub idle: std::time::Duration,
    pub body: std::time::Duration,
}

impl From<&HttpConfig> for Timeouts {
    fn from(c: &HttpConfig) -> Self {
        Self {
            header: c.header_timeout,
            idle: c.idle_timeout,
            body: c.body_timeout,
        }
    }
}

/// Where a connection stands, which decides its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted at this instant; no request has started yet.
    Opened(Instant),
    /// The last response finished at this instant.
    Idle(Instant),
    /// After idling, the next request's first bytes arrived at this instant.
    Reading(Instant),
    /// This many requests are being served (several on HTTP/2).
    Busy(u32),
    /// Switched protocols (WebSocket): no longer HTTP's to watch.
    Upgraded,
}

/// When a connection in `phase` is closed unless something happens first.
pub fn deadline(phase: Phase, t: &Timeouts) -> Option<Instant> {
    match phase {
        Phase::Opened(at) | Phase::Reading(at) => Some(at + t.header),
        Phase::Idle(at) => Some(at + t.idle),
        Phase::Busy(_) | Phase::Upgraded => None,
    }
}

impl Phase {
    /// Bytes arrived: an idle connection starts reading a request. (A new
    /// connection keeps its deadline from accept, so trickling bytes does
    /// not buy time.)
    fn bytes_arrived(self, now: Instant) -> Self {
        match self {
            Phase::Idle(_) => Phase::Reading(now),
            other => other,
        }
    }

    /// A request's head was read and it is being served.
    fn request_started(self) -> Self {
        match self {
            Phase::Busy(n) => Phase::Busy(n.saturating_add(1)),
            Phase::Upgraded => Phase::Upgraded,
            _ => Phase::Busy(1),
        }
    }

    /// A response was sent (or the request abandoned).
    fn request_finished(self, now: Instant) -> Self {
        match self {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            Phase::Busy(_) => Phase::Idle(now),
            other => other,
        }
    }
}

/// One connection's phase, shared by its I/O and its requests.
#[derive(Debug)]
struct Tracker {
    timeouts: Timeouts,
    state: Mutex<(Phase, Option<Waker>)>,
}

impl Tracker {
    fn deadline(&self) -> Option<Instant> {
        deadline(self.lock().0, &self.timeouts)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Phase, Option<Waker>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to the next phase, from the reader itself (no wake-up needed).
    fn set(&self, next: impl FnOnce(Phase) -> Phase) {
        let mut state = self.lock();
        state.0 = next(state.0);
    }

    /// Moves to the next phase and wakes a reader parked without the new
    /// deadline (hyper may not read again on its own before it passes).
    fn update(&self, next: impl FnOnce(Phase) -> Phase) {
        let waker = {
            let mut state = self.lock();
            state.0 = next(state.0);
            state.1.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Accepts TCP connections while fewer than the cap are open.
pub struct Listener {
    tcp: TcpListener,
    permits: Arc<Semaphore>,
    timeouts: Timeouts,
}

impl Listener {
    pub fn new(tcp: TcpListener, config: &HttpConfig) -> Self {
        Self {
            tcp,
            permits: Arc::new(Semaphore::new(config.max_connections)),
            timeouts: config.into(),
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        // Waiting for a permit before accepting keeps the connections above
        // the cap in the listen backlog, where they cost no descriptor.
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            // The semaphore is never closed.
            return std::future::pending().await;
        };
        loop {
            match self.tcp.accept().await {
                Ok((stream, addr)) => {
                    // Socket.IO frames are small and latency-bound: without
                    // TCP_NODELAY a frame written behind an unacknowledged
                    // one waits for the peer's delayed ACK (Nagle). Go's
                    // net/http and Node's http server set it too.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "TCP_NODELAY not set");
                    }
                    return (Conn::new(stream, permit, self.timeouts), addr);
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// As axum's own listener: a connection that died in the backlog is
/// skipped; anything else (out of descriptors) is waited out, not spun on.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// A connection: the TCP stream, its phase, and its place under the cap
/// (released when the connection, upgraded or not, is dropped).
pub struct Conn {
    stream: TcpStream,
    tracker: Arc<Tracker>,
    timer: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, timeouts: Timeouts) -> Self {
        let now = Instant::now();
        Self {
            stream,
            tracker: Arc::new(Tracker {
                timeouts,
                state: Mutex::new((Phase::Opened(now), None)),
            }),
            timer: Box::pin(tokio::time::sleep_until(now + timeouts.header)),
            _permit: permit,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let now = Instant::now();
                    this.tracker.set(|p| p.bytes_arrived(now));
                }
                return Poll::Ready(Ok(()));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        this.tracker.lock().1 = Some(cx.waker().clone());
        loop {
            let Some(at) = this.tracker.deadline() else {
                return Poll::Pending;
            };
            if this.timer.deadline() != at {
                this.timer.as_mut().reset(at);
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // The timer fired; the phase may have moved on meanwhile.
            if this.tracker.deadline().is_some_and(|d| d <= Instant::now()) {
                tracing::debug!(phase = ?this.tracker.lock().0, "connection timed out; closing");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client was too slow to send a request",
                )));
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// What a request knows of its connection (axum's `ConnectInfo`). The
/// plain `ConnectInfo<SocketAddr>` is put beside it by [`track`].
#[derive(Clone)]
pub struct Peer {
    addr: SocketAddr,
    tracker: Arc<Tracker>,
}

impl Connected<IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Listener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            tracker: stream.io().tracker.clone(),
        }
    }
}

/// Wraps the whole app (REST and Socket.IO) so every request moves its
/// connection's phase, and its body gets a deadline.
pub fn track(app: Router, config: &HttpConfig) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        Timeouts::from(config),
        track_request,
    ))
}

async fn track_request(State(t): State<Timeouts>, mut req: Request, next: Next) -> Response {
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<Peer>>().cloned() else {
        // Served without our listener (a test driving the router): untracked.
        return next.run(req).await;
    };
    req.extensions_mut().insert(ConnectInfo(peer.addr));
    peer.tracker.update(Phase::request_started);
    let guard = Finished(peer.tracker.clone());
    let at = Instant::now() + t.body;
    req.extensions_mut().insert(BodyDeadline(at));
    let req = req.map(|body| Body::new(DeadlineBody::new(body, at)));
    let response = next.run(req).await;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        peer.tracker.update(|_| Phase::Upgraded);
    }
    // The request is over when its response body has been sent (dropped).
    response.map(|body| {
        Body::new(Guarded {
            body,
            _finished: guard,
        })
    })
}

/// Ends a request's part in its connection's phase when dropped.
struct Finished(Arc<Tracker>);

impl Drop for Finished {
    fn drop(&mut self) {
        let now = Instant::now();
        self.0.update(|p| p.request_finished(now));
    }
}

/// A response body that holds its request's [`Finished`].
struct Guarded {
    body: Body,
    _finished: Finished,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The body did not arrive by its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// A request body that fails once its deadline has passed, however the
/// bytes trickle in.
pub struct DeadlineBody {
    body: Body,
    timer: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    pub fn new(body: Body, at: Instant) -> Self {
        Self {
            body,
            timer: Box::pin(tokio::time::sleep_until(at)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {}
            ready => return ready,
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(75),
        body: Duration::from_secs(30),
    };

    #[test]
    fn each_phase_has_its_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(deadline(Phase::Opened(t0), &T), Some(t0 + s(10)));
        assert_eq!(deadline(Phase::Idle(t0), &T), Some(t0 + s(75)));
        assert_eq!(deadline(Phase::Reading(t0), &T), Some(t0 + s(10)));
        assert_eq!(deadline(Phase::Busy(1), &T), None);
        assert_eq!(deadline(Phase::Upgraded, &T), None);
    }

    #[test]
    fn a_connection_moves_through_its_phases() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3);
        // Trickling bytes into a new connection does not move its deadline.
        assert_eq!(Phase::Opened(t0).bytes_arrived(later), Phase::Opened(t0));
        let busy = Phase::Opened(t0).request_started();
        assert_eq!(busy, Phase::Busy(1));
        assert_eq!(busy.bytes_arrived(later), Phase::Busy(1));
        // HTTP/2: idle only once the last stream finished.
        let two = busy.request_started();
        assert_eq!(two.request_finished(later), Phase::Busy(1));
        let idle = busy.request_finished(later);
        assert_eq!(idle, Phase::Idle(later));
        assert_eq!(idle.bytes_arrived(later), Phase::Reading(later));
        // An upgraded connection stays so, whatever its requests do.
        assert_eq!(Phase::Upgraded.request_started(), Phase::Upgraded);
        assert_eq!(Phase::Upgraded.request_finished(later), Phase::Upgraded);
        assert_eq!(Phase::Upgraded.bytes_arrived(later), Phase::Upgraded);
    }

    #[tokio::test]
    async fn a_trickling_body_fails_at_its_deadline() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
        let stream = tokio_stream_from(rx);
        let at = Instant::now() + Duration::from_millis(300);
        let body = DeadlineBody::new(Body::from_stream(stream), at);
        let feeder = tokio::spawn(async move {
            for _ in 0..100 {
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let err = axum::body::to_bytes(Body::new(body), usize::MAX)
            .await
            .expect_err("the deadline fails the body");
        // Bytes kept arriving every 50 ms; the deadline held all the same.
        assert!(Instant::now() >= at && Instant::now() < at + Duration::from_millis(300));
        assert!(err.to_string().contains("did not arrive in time"), "{err}");
        feeder.abort();
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> {
        futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
                .map(|f| f.map(|r| r.map(|f| f.into_data().unwrap_or_default())))
        })
    }
}
