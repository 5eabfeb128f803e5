//! Every size, count and time limit of the HTTP paths, and the builders that apply them,
//! so the gateway, the inbound's servers and the clients towards apps agree.
//!
//! Flow-control windows are sized so that stalled streams cannot exhaust a connection
//! shared by several clients: a shared connection's window covers every stream it
//! allows at once ([`MESH_CONNECTION_WINDOW`] ≥ [`MESH_MAX_STREAMS`] ×
//! [`MESH_STREAM_WINDOW`]). A stream whose reader stops therefore holds at most its own
//! stream window (in memory, since window is released only as the reader takes data),
//! and every other stream of the connection keeps its full window.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderMap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Largest header section accepted from clients and apps (1 MB policy). Above it a
/// request gets 431 with `WEFT-5`; an app's response gets 502.
pub const MAX_HEADER_BYTES: usize = 1 << 20;
/// hyper's own limits sit a little above the policy, so the mesh's 431 (with its code)
/// answers first; far beyond it hyper and h2 refuse by themselves.
const HYPER_HEADER_SLACK: usize = 64 * 1024;
/// Header lines accepted from an HTTP/1.1 peer (hyper's default is 100).
const MAX_H1_HEADERS: usize = 2_000;

/// Concurrent streams a public client may open on one HTTP/2 connection.
pub const PUBLIC_MAX_STREAMS: u32 = 100;
/// Concurrent streams on one mesh HTTP/2 connection (gateway → inbound), and on the
/// inbound's translating server inside a tunnel stream.
pub const MESH_MAX_STREAMS: u32 = 256;
/// Receive window of one stream on a mesh HTTP/2 connection or towards an h2c app.
pub const MESH_STREAM_WINDOW: u32 = 1024 * 1024;
/// Receive window of a whole mesh connection: every allowed stream's window fits.
pub const MESH_CONNECTION_WINDOW: u32 = MESH_MAX_STREAMS * MESH_STREAM_WINDOW;
// Checked when building: the windows hold the promise above, within HTTP/2's limit.
const _: () = assert!(
    MESH_MAX_STREAMS as u64 * MESH_STREAM_WINDOW as u64 <= MESH_CONNECTION_WINDOW as u64
        && MESH_CONNECTION_WINDOW < 1 << 31
);

/// Receive window of the (shared) h2c connection towards an app: as large as HTTP/2
/// allows, so only stream windows bound what a stalled stream holds.
pub const APP_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

/// How long a client may take to send its first bytes (or, after `Upgrade: h2c`, its
/// connection preface), and an HTTP/1.1 request's header section. A shorter idle
/// timeout, when one is configured, applies instead (see [`first_bytes_timeout`]).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a body may make no progress: a request body from which no byte arrives, or
/// a connection with response data waiting from which the client takes nothing. A
/// shorter idle timeout, when one is configured, applies instead
/// ([`body_progress_timeout`]).
pub const BODY_PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The first-bytes deadline for a listener whose idle timeout is `idle`: a connection
/// that has sent nothing yet is never kept longer than an idle one.
pub fn first_bytes_timeout(idle: Duration) -> Duration {
    FIRST_BYTES_TIMEOUT.min(idle)
}

/// The no-progress deadline of bodies on a listener whose idle timeout is `idle`: a
/// body waiting on the client is never kept longer than an idle connection.
pub fn body_progress_timeout(idle: Duration) -> Duration {
    BODY_PROGRESS_TIMEOUT.min(idle)
}

/// Size of a header section as the limit counts it (RFC 9113 §6.5.2: name, value and
/// 32 bytes of overhead per field).
pub fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum()
}

/// The HTTP/2 server for public clients (gateway listeners).
pub fn public_h2_server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size((MAX_HEADER_BYTES + HYPER_HEADER_SLACK) as u32)
        .max_concurrent_streams(PUBLIC_MAX_STREAMS)
        .enable_connect_protocol()
        // Detects dead peers; PINGs are not activity for the idle timeout, which
        // counts requests, not bytes.
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// The HTTP/2 server of the inbound: mesh HTTP connections from gateways, and the
/// translating server inside a tunnel stream.
pub fn mesh_h2_server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size((MAX_HEADER_BYTES + HYPER_HEADER_SLACK) as u32)
        .max_concurrent_streams(MESH_MAX_STREAMS)
        .initial_stream_window_size(MESH_STREAM_WINDOW)
        .initial_connection_window_size(MESH_CONNECTION_WINDOW)
        .enable_connect_protocol();
    b
}

/// The HTTP/1.1 server (public clients, and HTTP/1.1 clients inside a tunnel stream);
/// `head_timeout` bounds the reading of each request's header section.
pub fn h1_server(head_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEADER_BYTES + HYPER_HEADER_SLACK)
        .max_headers(MAX_H1_HEADERS);
    b
}

/// The gateway's HTTP/2 client on a mesh connection.
pub fn mesh_h2_client() -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(MESH_STREAM_WINDOW)
        .initial_connection_window_size(MESH_CONNECTION_WINDOW)
        .max_header_list_size((MAX_HEADER_BYTES + HYPER_HEADER_SLACK) as u32)
        // A connection quiet for a second is pinged and dropped when the answer does
        // not come within another: a path cut silently fails its requests in about two
        // seconds (instead of their deadline) and the endpoint is probed until back.
        // The same values as the tunnels' (apps are never pinged).
        .keep_alive_interval(Some(crate::tunnel::PING_IDLE))
        .keep_alive_timeout(crate::tunnel::PING_TIMEOUT)
        .keep_alive_while_idle(true);
    b
}

/// An HTTP/1.1 connection of the inbound towards its app (pooled by
/// [`crate::inbound::pool`]).
pub fn app_h1_client() -> hyper::client::conn::http1::Builder {
    let mut b = hyper::client::conn::http1::Builder::new();
    b.max_buf_size(MAX_HEADER_BYTES + HYPER_HEADER_SLACK);
    b
}

/// The inbound's shared h2c client towards its app. No keepalive pings and no
/// adaptive window: gRPC servers count pings as strikes and answer
/// ENHANCE_YOUR_CALM. The connection window never binds, so a stream whose reader
/// stalls holds only its own window.
pub fn app_h2_client() -> hyper_util::client::legacy::Builder {
    let mut b = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
    b.http2_only(true)
        .pool_idle_timeout(Duration::from_secs(300))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_initial_stream_window_size(MESH_STREAM_WINDOW)
        .http2_initial_connection_window_size(APP_CONNECTION_WINDOW)
        .http2_max_header_list_size(MAX_HEADER_BYTES as u32);
    b
}

/// Why a request was not admitted: every slot is busy and the queue is full.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{busy} requests in progress and {queued} waiting")]
pub struct Overloaded {
    pub busy: usize,
    pub queued: usize,
}

/// Admission with a bounded queue: up to `slots` holders at once, up to `queue` more
/// waiting for a slot; beyond that a request is refused at once (503 `WEFT-11`) rather
/// than queued without bound.
pub struct Limiter {
    slots: Arc<Semaphore>,
    size: usize,
    queue: usize,
    waiting: AtomicUsize,
}

/// A held slot; released when dropped.
pub type Slot = OwnedSemaphorePermit;

impl Limiter {
    pub fn new(slots: usize, queue: usize) -> Self {
        Limiter {
            slots: Arc::new(Semaphore::new(slots)),
            size: slots,
            queue,
            waiting: AtomicUsize::new(0),
        }
    }

    /// A slot now if one is free, else after waiting in the queue if it has room.
    pub async fn admit(&self) -> Result<Slot, Overloaded> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(slot);
        }
        let queued = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _leave = Leave(&self.waiting);
        if queued >= self.queue {
            return Err(Overloaded {
                busy: self.size,
                queued,
            });
        }
        // The semaphore is never closed.
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overloaded {
                busy: self.size,
                queued,
            })
    }

    /// Slots in use now.
    pub fn busy(&self) -> usize {
        self.size - self.slots.available_permits()
    }
}

struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_deadlines_are_never_longer_than_the_idle_timeout() {
        assert_eq!(
            body_progress_timeout(Duration::from_secs(300)),
            Duration::from_secs(60)
        );
        assert_eq!(
            body_progress_timeout(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            first_bytes_timeout(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            first_bytes_timeout(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    #[tokio::test]
    async fn the_limiter_queues_up_to_its_bound_then_refuses() {
        let l = Arc::new(Limiter::new(1, 1));
        let held = l.admit().await.unwrap();
        // One waiter fits in the queue...
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.admit().await.map(drop) })
        };
        tokio::task::yield_now().await;
        while l.waiting.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        // ...the next is refused at once.
        let refused = l.admit().await.unwrap_err();
        assert_eq!((refused.busy, refused.queued), (1, 1));
        drop(held);
        waiter.await.unwrap().unwrap();
        assert_eq!(l.busy(), 0);
        assert!(l.admit().await.is_ok());
    }
}
