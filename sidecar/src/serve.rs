//! Accepting and draining connections, written once for every listener of a dataplane
//! (gateway listeners, the inbound port, the ingress, outbound listeners).
//!
//! - [`accept`] serves each connection on its own task and caps how many a listener
//!   has open: a connection over the cap is closed at once and counted
//!   (`weft_connections_total{result="over_cap"}`), so a flood of idle connections
//!   costs file descriptors up to the cap and no more.
//! - [`Drain`] tells every connection that shutdown began (HTTP/2 connections send
//!   GOAWAY and finish their streams, HTTP/1.1 connections close after the request in
//!   progress) and [`Drainer::drain`] waits until they are all gone, or the drain
//!   timeout passed.
//! - [`http_connection`] runs one HTTP connection to its end: asked to finish
//!   gracefully when the drain begins or its owner says so, dropped when its owner says
//!   it must end at once.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};

use crate::metrics::{Metrics, ResultLabel};

/// Default cap of open connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

#[derive(Default)]
struct Open {
    count: AtomicUsize,
    closed: Notify,
}

/// A connection's view of shutdown: resolves [`Drain::signaled`] once it began.
#[derive(Clone)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    open: Arc<Open>,
}

/// Starts the drain and waits for it (held by the process's `run`).
pub struct Drainer {
    signal: watch::Sender<bool>,
    open: Arc<Open>,
}

/// Counts one open connection until dropped.
pub struct Tracked(Arc<Open>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl Drainer {
    pub fn new() -> (Drainer, Drain) {
        let (signal, rx) = watch::channel(false);
        let open = Arc::new(Open::default());
        (
            Drainer {
                signal,
                open: open.clone(),
            },
            Drain { signal: rx, open },
        )
    }

    /// Signals every connection to finish, then waits until none is open or `timeout`
    /// passed. Returns how many were still open.
    pub async fn drain(self, timeout: Duration) -> usize {
        tracing::info!(drain = ?timeout, "draining: no new connections, GOAWAY sent");
        self.signal.send_replace(true);
        let open = self.open.clone();
        let all_closed = async move {
            loop {
                let closed = open.closed.notified();
                if open.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                closed.await;
            }
        };
        let _ = tokio::time::timeout(timeout, all_closed).await;
        let left = self.open.count.load(Ordering::Acquire);
        if left > 0 {
            tracing::warn!(
                left,
                "drain timeout reached; closing the connections still open"
            );
        }
        left
    }
}

impl Drain {
    /// Resolves once shutdown began (at once if it already has).
    pub async fn signaled(&mut self) {
        let _ = self.signal.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Counts a connection as open until the returned guard drops.
    pub fn track(&self) -> Tracked {
        self.open.count.fetch_add(1, Ordering::AcqRel);
        Tracked(self.open.clone())
    }
}

/// A hyper server connection that can be asked to finish gracefully.
pub trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn finish(self: Pin<&mut Self>);
}

type BoxError = Box<dyn StdError + Send + Sync>;

impl<I, B, S, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, B, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn finish(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// What a connection's owner wants done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Finish gracefully (GOAWAY; the requests in progress complete).
    Gracefully,
    /// End now (e.g. a client that stopped reading).
    Now,
}

/// How long a connection asked to finish gracefully because it was idle may take to
/// close (HTTP/2 waits for the client to answer a PING between its two GOAWAYs; a
/// client that never answers is not kept for that).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Runs `conn` until it ends. It is asked to finish gracefully when the drain begins
/// (its requests in progress may take until the drain timeout) or when `close`
/// resolves with [`Close::Gracefully`] (then it has [`IDLE_CLOSE_GRACE`]), and dropped
/// (closed at once) when `close` resolves with [`Close::Now`]. `what` names it in logs.
pub async fn http_connection<C, F>(conn: C, mut drain: Drain, close: F, what: &str)
where
    C: Graceful,
    F: Future<Output = Close>,
{
    let mut conn = std::pin::pin!(conn);
    let mut close = std::pin::pin!(close);
    let mut closing = false;
    let grace = tokio::time::sleep(Duration::MAX);
    let mut grace = std::pin::pin!(grace);
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "{what} connection ended with an error");
                }
                return;
            }
            why = close.as_mut(), if !closing => {
                if why == Close::Now {
                    return;
                }
                closing = true;
                conn.as_mut().finish();
                grace.as_mut().reset(tokio::time::Instant::now() + IDLE_CLOSE_GRACE);
            }
            _ = grace.as_mut() => {
                tracing::debug!("{what} connection did not finish closing in time; dropped");
                return;
            }
            _ = drain.signaled(), if !closing => {
                closing = true;
                conn.as_mut().finish();
            }
        }
    }
}

/// A listener and what to call its connections in metrics.
pub struct Listener {
    pub listener: TcpListener,
    /// The `direction` label of its connection metrics (`gateway`, `inbound`, ...).
    pub direction: &'static str,
    /// Open connections allowed at once.
    pub max_connections: usize,
}

/// Accepts connections until the drain begins, serving each with `serve` on its own
/// task; the connection counts as open (for the drain and the cap) until it returns.
pub async fn accept<F, Fut>(l: Listener, metrics: Arc<Metrics>, mut drain: Drain, serve: F)
where
    F: Fn(TcpStream, SocketAddr, Drain) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cap = Arc::new(Semaphore::new(l.max_connections));
    let count = |result| {
        metrics
            .connections
            .get_or_create(&ResultLabel {
                direction: l.direction,
                result,
            })
            .inc();
    };
    loop {
        let accepted = tokio::select! {
            a = l.listener.accept() => a,
            _ = drain.signaled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Ok(permit) = cap.clone().try_acquire_owned() else {
                    count("over_cap");
                    tracing::debug!(%peer, direction = l.direction, "connection over the cap closed");
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let open = drain.track();
                let conn = serve(tcp, peer, drain.clone());
                tokio::spawn(async move {
                    conn.await;
                    drop((open, permit));
                });
            }
            Err(e) => {
                // Out of file descriptors, mostly: wait a little instead of spinning.
                tracing::warn!(error = %e, direction = l.direction, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_counted() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (drainer, drain) = Drainer::new();
        let hold = Arc::new(Notify::new());
        let served = {
            let hold = hold.clone();
            tokio::spawn(accept(
                Listener {
                    listener,
                    direction: "test",
                    max_connections: 1,
                },
                metrics.clone(),
                drain,
                move |_tcp, _peer, _drain| {
                    let hold = hold.clone();
                    async move { hold.notified().await }
                },
            ))
        };
        let _first = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
            .await
            .expect("closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0, "the connection over the cap is closed");
        let over = metrics
            .connections
            .get_or_create(&ResultLabel {
                direction: "test",
                result: "over_cap",
            })
            .get();
        assert_eq!(over, 1);
        // The drain waits for the open connection, which ends when released.
        let release = {
            let hold = hold.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                hold.notify_waiters();
            })
        };
        assert_eq!(drainer.drain(Duration::from_secs(5)).await, 0);
        release.await.unwrap();
        served.await.unwrap();
    }

    #[tokio::test]
    async fn the_drain_gives_up_at_its_timeout() {
        let (drainer, drain) = Drainer::new();
        let _stuck = drain.track();
        let started = std::time::Instant::now();
        assert_eq!(drainer.drain(Duration::from_millis(100)).await, 1);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
