//! The inbound's HTTP/1.1 connections to its app: a small pool of its own on hyper's
//! connection API, in place of hyper-util's general pooled client.
//!
//! There is one app address, so there is no pool key to build, hash or compare per
//! request; a request takes the most recently returned connection that is ready (LIFO,
//! so the fewest connections stay warm), or opens one. A connection goes back when its
//! response body is done with (the [`Lease`] is held with the body), not through a
//! task spawned per request to wait for it; one still finishing its response is
//! skipped until it is ready. Connections idle for [`IDLE_TIMEOUT`] are closed.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;

use super::app::AppConnector;
use crate::errors::Body;
use crate::http::limits;

/// An idle connection to the app is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept at most (one per request the inbound lets in at once).
const MAX_IDLE: usize = super::app::APP_SLOTS;

/// Why a request did not reach the app.
pub enum SendError {
    /// No connection: the app refused or could not be reached (nothing was sent).
    Connect(std::io::Error),
    /// The exchange failed on an open connection.
    Http(hyper::Error),
}

/// Idle HTTP/1.1 connections to one app.
pub struct H1Pool {
    connector: AppConnector,
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// One connection, lent for one request: it goes back to the pool when dropped, unless
/// it closed (or was taken over by an upgrade: [`Lease::detach`]).
pub struct Lease {
    sender: Option<SendRequest<Body>>,
    pool: Arc<H1Pool>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put(sender);
        }
    }
}

impl Lease {
    /// The connection will not serve another request (it was upgraded).
    pub fn detach(mut self) {
        self.sender = None;
    }
}

impl H1Pool {
    /// A pool for the app `connector` dials; a task closes connections idle too long
    /// and ends with the pool.
    pub fn new(connector: AppConnector) -> Arc<Self> {
        let pool = Arc::new(H1Pool {
            connector,
            idle: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&pool);
        tokio::spawn(reap(weak));
        pool
    }

    /// Sends `req` (origin-form URI, `Host` set) on a pooled connection, or a new one;
    /// a pooled connection that closed before taking it gets it again on a new one.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let mut req = req;
        if let Some(mut lease) = self.checkout() {
            let sender = lease.sender.as_mut().ok_or_else(closed)?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, lease)),
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        tracing::debug!(error = %e.error(), "pooled app connection closed; sending on a new one");
                        lease.detach();
                        req = back;
                    }
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut lease = self.open().await?;
        let sender = lease.sender.as_mut().ok_or_else(closed)?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, lease)),
            Err(e) => Err(SendError::Http(e)),
        }
    }

    /// The most recently returned connection that is ready; closed and expired ones
    /// are dropped on the way.
    fn checkout(self: &Arc<Self>) -> Option<Lease> {
        let mut idle = self.idle.lock();
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if c.sender.is_closed() || c.since.elapsed() >= IDLE_TIMEOUT {
                // The last one, moved here, was looked at already.
                idle.swap_remove(i);
            } else if c.sender.is_ready() {
                let c = idle.swap_remove(i);
                return Some(Lease {
                    sender: Some(c.sender),
                    pool: self.clone(),
                });
            }
        }
        None
    }

    fn put(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// A new connection to the app, driven by its own task (upgrades included).
    async fn open(self: &Arc<Self>) -> Result<Lease, SendError> {
        let tcp = self.connector.connect().await.map_err(SendError::Connect)?;
        let (sender, conn) = limits::app_h1_client()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "app connection ended with an error");
            }
        });
        Ok(Lease {
            sender: Some(sender),
            pool: self.clone(),
        })
    }

    /// Drops the idle connections that closed or idled too long.
    fn prune(&self) {
        self.idle
            .lock()
            .retain(|c| !c.sender.is_closed() && c.since.elapsed() < IDLE_TIMEOUT);
    }
}

fn closed() -> SendError {
    SendError::Connect(std::io::Error::other("connection lease is empty"))
}

/// Closes idle connections every so often, until the pool is gone.
async fn reap(pool: Weak<H1Pool>) {
    let mut every = tokio::time::interval(IDLE_TIMEOUT / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match pool.upgrade() {
            Some(p) => p.prune(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt as _;
    use tokio::net::TcpListener;

    use super::*;
    use crate::errors::full;

    /// An HTTP/1.1 app answering "ok" (closing after each response when `close`); the
    /// counter says how many connections it accepted.
    async fn app(close: bool) -> (AppConnector, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(move |_req| async move {
                    let mut r = Response::new(full("ok"));
                    if close {
                        r.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(r)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        let connector = AppConnector {
            addr,
            refused: Arc::new(tokio::sync::Notify::new()),
        };
        (connector, accepted)
    }

    async fn get(pool: &Arc<H1Pool>) -> String {
        let req = Request::builder()
            .uri("/")
            .header(http::header::HOST, "app")
            .body(full(""))
            .unwrap();
        let Ok((resp, lease)) = pool.send(req).await else {
            panic!("request failed");
        };
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        drop(lease);
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_connection_serves_the_next_request_once_its_response_is_read() {
        let (connector, accepted) = app(false).await;
        let pool = H1Pool::new(connector);
        for _ in 0..3 {
            assert_eq!(get(&pool).await, "ok");
            // hyper marks the connection ready when its task has seen the response end.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced() {
        let (connector, accepted) = app(true).await;
        let pool = H1Pool::new(connector);
        for _ in 0..3 {
            assert_eq!(get(&pool).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let refused = Arc::new(tokio::sync::Notify::new());
        let pool = H1Pool::new(AppConnector {
            addr,
            refused: refused.clone(),
        });
        let req = Request::builder().uri("/").body(full("")).unwrap();
        assert!(matches!(pool.send(req).await, Err(SendError::Connect(_))));
        // The app probe is woken.
        tokio::time::timeout(Duration::from_secs(1), refused.notified())
            .await
            .unwrap();
    }
}
