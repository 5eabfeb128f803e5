//! The bodies the gateway relays, and the per-connection clock that tells an idle or
//! stalled client connection from a busy one.
//!
//! - A connection is **idle** when it has no request in progress; PINGs, SETTINGS and
//!   other control frames are not requests, so a client that only keeps the connection
//!   alive is still closed after `--idle-timeout`.
//! - A connection is **stalled** when a response chunk was handed to hyper and the
//!   client took nothing from any of its responses for the progress timeout (60 s, or
//!   the idle timeout when shorter: [`limits::body_progress_timeout`])
//!   (hyper asks a body for more only once the client made room): it is closed.
//!   Waiting for the app (a slow or silent stream) is not a stall.
//! - A request body from which nothing arrives for its timeout fails, which resets the
//!   request towards the mesh.
//! - A gRPC call with `grpc-timeout` ends at its deadline with `grpc-status: 4`.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::access::AccessRecord;
use super::upstream::Hold;
use crate::errors::{Body, BoxError, ERROR_CODE_HEADER, MeshError, grpc_message_encode};
use crate::http::limits;
use crate::serve::Close;

/// Requests in progress on one client connection, and when its responses last moved.
pub struct ConnClock {
    start: Instant,
    active: AtomicUsize,
    /// When `active` last dropped to zero (ms since `start`).
    idle_since: AtomicU64,
    /// Responses with a chunk handed to hyper that the client has not made room for.
    waiting: AtomicUsize,
    /// When hyper last came back for more of any response (ms since `start`).
    taken: AtomicU64,
}

impl Default for ConnClock {
    fn default() -> Self {
        ConnClock {
            start: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            taken: AtomicU64::new(0),
        }
    }
}

impl ConnClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn since(&self, at: &AtomicU64) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(at.load(Ordering::Relaxed)))
    }

    /// A request started; counted until the guard (kept by its response body) drops.
    pub fn request(self: &Arc<Self>) -> InProgress {
        self.active.fetch_add(1, Ordering::AcqRel);
        InProgress(self.clone())
    }

    /// Resolves when the connection has been idle for `idle` (close gracefully), or
    /// stalled for the progress timeout (close now), whichever comes first.
    pub async fn expired(&self, idle: Duration) -> Close {
        loop {
            let mut wait = idle;
            if self.active.load(Ordering::Acquire) == 0 {
                let idle_for = self.since(&self.idle_since);
                if idle_for >= idle {
                    return Close::Gracefully;
                }
                wait = idle - idle_for;
            }
            if self.waiting.load(Ordering::Acquire) > 0 {
                let stalled_for = self.since(&self.taken);
                let progress = limits::body_progress_timeout(idle);
                if stalled_for >= progress {
                    tracing::info!(
                        "client took no response data for the progress timeout; closing"
                    );
                    return Close::Now;
                }
                wait = wait.min(progress - stalled_for);
            }
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

/// One request in progress on a connection.
pub struct InProgress(Arc<ConnClock>);

impl Drop for InProgress {
    fn drop(&mut self) {
        let clock = &self.0;
        clock.idle_since.store(clock.now_ms(), Ordering::Relaxed);
        clock.active.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Inner {
    /// A response from the mesh.
    Mesh(Incoming),
    /// A response the gateway made (or one it built around an upgrade).
    Made(Body),
}

/// The response body the gateway hands to hyper: relays the mesh's body, counts its
/// bytes for the access log, tells the connection clock when the client takes data,
/// ends a gRPC call at its deadline, and holds the request's endpoint resources until
/// it is done.
pub struct ResponseBody {
    inner: Inner,
    clock: InProgress,
    handed: bool,
    deadline: Option<Pin<Box<Sleep>>>,
    ended: bool,
    bytes: u64,
    complete: bool,
    record: Option<AccessRecord>,
    _hold: Option<Hold>,
}

impl ResponseBody {
    pub fn made(body: Body, clock: InProgress, record: AccessRecord) -> Self {
        Self::new(Inner::Made(body), clock, record, None, None)
    }

    pub fn mesh(
        body: Incoming,
        clock: InProgress,
        record: AccessRecord,
        hold: Hold,
        deadline: Option<tokio::time::Instant>,
    ) -> Self {
        Self::new(Inner::Mesh(body), clock, record, Some(hold), deadline)
    }

    fn new(
        inner: Inner,
        clock: InProgress,
        record: AccessRecord,
        hold: Option<Hold>,
        deadline: Option<tokio::time::Instant>,
    ) -> Self {
        ResponseBody {
            inner,
            clock,
            handed: false,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            ended: false,
            bytes: 0,
            complete: false,
            record: Some(record),
            _hold: hold,
        }
    }

    fn took(&mut self) {
        if self.handed {
            self.handed = false;
            let clock = &self.clock.0;
            clock.taken.store(clock.now_ms(), Ordering::Relaxed);
            clock.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn hand(&mut self) {
        if !self.handed {
            self.handed = true;
            self.clock.0.waiting.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The trailers that end a gRPC call whose deadline passed.
    fn deadline_trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert(
            "grpc-status",
            HeaderValue::from(MeshError::UpstreamTimeout.grpc_status()),
        );
        if let Ok(v) = HeaderValue::from_str(&grpc_message_encode(
            "the call's deadline (grpc-timeout) passed at the gateway",
        )) {
            t.insert("grpc-message", v);
        }
        t.insert(
            ERROR_CODE_HEADER,
            HeaderValue::from_static(MeshError::UpstreamTimeout.code()),
        );
        t
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Asked again: the client made room for what it was handed.
        self.took();
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                self.ended = true;
                self.complete = true;
                self.inner = Inner::Made(crate::errors::full(Bytes::new()));
                return Poll::Ready(Some(Ok(Frame::trailers(Self::deadline_trailers()))));
            }
        }
        let polled = match &mut self.inner {
            Inner::Mesh(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Inner::Made(b) => Pin::new(b).poll_frame(cx),
        };
        let frame = ready!(polled);
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.bytes += data.len() as u64;
                    self.hand();
                }
            }
            None => self.complete = true,
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        // Kept exact: hyper's h2 server ends Trailers-Only responses on HEADERS by it.
        self.ended
            || match &self.inner {
                Inner::Mesh(b) => b.is_end_stream(),
                Inner::Made(b) => b.is_end_stream(),
            }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Mesh(b) => b.size_hint(),
            Inner::Made(b) => b.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.took();
        if let Some(r) = self.record.take() {
            let complete = self.complete || self.is_end_stream();
            r.log(self.bytes, complete);
        }
    }
}

/// A public client's request body on its way into the mesh: fails when no byte
/// arrives for `timeout`, so a client that stops sending cannot hold a mesh stream;
/// its trailers are cleaned ([`crate::http::headers::clean_trailers`]). Only time spent
/// waiting for the client counts: while the mesh is not asking for more (the app reads
/// slowly), the clock does not run.
pub struct RequestBody {
    inner: Incoming,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// The last poll handed a frame over: the clock restarts at the next one.
    handed: bool,
}

impl RequestBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        RequestBody {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            handed: false,
        }
    }
}

/// Why a request body was abandoned.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("{0}")]
    Client(#[from] hyper::Error),
    #[error("no byte of the request body arrived for {0:?}")]
    Stalled(Duration),
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        if self.handed {
            self.handed = false;
            let deadline = tokio::time::Instant::now() + self.timeout;
            self.timer.as_mut().reset(deadline);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.handed = true;
                let frame = frame.map(|f| {
                    f.map(|f| match f.into_trailers() {
                        Ok(mut t) => {
                            crate::http::headers::clean_trailers(&mut t);
                            Frame::trailers(t)
                        }
                        Err(f) => f,
                    })
                    .map_err(RequestBodyError::from)
                });
                Poll::Ready(frame)
            }
            Poll::Pending => {
                ready!(self.timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(RequestBodyError::Stalled(self.timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
