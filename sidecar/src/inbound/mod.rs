//! Delivering traffic to the local app, per the service's protocol selector. Two ways
//! in, told apart by ALPN on the inbound port (see [`crate::tunnel::server`]):
//!
//! - a tunnel stream (sidecar outbound traffic, raw bytes): `tcp` splices; `http`,
//!   `http2` and `grpc` splice too when the client speaks the app's HTTP version, and
//!   translate request by request when it does not ([`http::serve_translated`]);
//! - a mesh HTTP connection (from a gateway): every request is forwarded per the
//!   selector in force when it arrives ([`http::serve_mesh`]).
//!
//! Both pass through [`Delivery::admit`] with the caller's verified identity: once per
//! tunnel stream, once per request on a mesh HTTP connection.

pub mod app;
pub mod detect;
pub mod http;
pub mod pool;

use std::sync::Arc;

use ::http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use weft_certs::SpiffeId;

use crate::control::config::{MeshConfig, Selector};
use crate::errors::Rejection;
use crate::metrics::Metrics;
use crate::traffic::{OpenConnection, PairCounters, source_of};
use crate::tunnel::io::H2Io;
use crate::tunnel::splice::splice;
use app::AppClients;

/// Who is calling the inbound: the SPIFFE id verified on the mTLS handshake of the
/// connection (a sidecar's for tunnel streams, a gateway's for mesh HTTP requests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub id: SpiffeId,
    /// Serial (lowercase hex) of the certificate the connection was opened with: a
    /// connection opened before that certificate was revoked gets no new stream.
    pub serial: String,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.id.fmt(f)
    }
}

/// What an inbound needs to deliver streams and requests.
pub struct Delivery {
    /// The local service's name (for messages that name the fix).
    pub service: String,
    /// The service name as an authority: the `Host` of HTTP/1.0 requests without one.
    pub authority: Authority,
    /// The config in force: its selector applies to each new stream or request.
    pub config: watch::Receiver<Arc<MeshConfig>>,
    pub apps: AppClients,
    pub metrics: Arc<Metrics>,
    /// The traffic permissions of this service.
    pub authz: Arc<crate::authz::Authz>,
}

impl Delivery {
    /// The selector of the local service now.
    pub fn selector(&self) -> Selector {
        self.config.borrow().protocol_of(&self.service)
    }

    /// Whether `caller` may reach this service. The one place an inbound decides it:
    /// every tunnel stream and every request of a mesh HTTP connection pass here, and
    /// a refusal is a `PermissionDenied` rejection (403 `WEFT-10`, gRPC 7; a tunnel
    /// stream is refused before any byte reaches the app). See [`crate::authz`].
    pub fn admit(&self, caller: &Caller) -> Result<(), Rejection> {
        self.authz.admit(&caller.id, &caller.serial)
    }

    /// The traffic counters of `caller`'s calls to this service: looked up once per
    /// tunnel stream or mesh HTTP connection, then shared by its requests.
    pub fn counters(&self, caller: &Caller) -> Arc<PairCounters> {
        self.metrics
            .traffic
            .pair(&self.service, source_of(&caller.id))
    }
}

/// Answers a tunnel stream whose caller was refused, for an HTTP `selector`: each
/// request gets the refusal as an HTTP (or gRPC) error. Nothing reaches the app.
pub async fn refuse<T>(mut tunnel: T, denied: Rejection)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client_h2, peeked) = match detect::sniff(&mut tunnel).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "refused tunnel stream ended before the first request");
            return;
        }
    };
    let io = detect::Rewind::new(peeked, tunnel);
    http::serve_refusal(io, client_h2, denied).await;
}

/// Delivers one tunnel stream, already connected to the app, per `selector`; `conn`
/// counts it for its caller while it lasts.
pub async fn deliver(
    selector: Selector,
    mut tunnel: H2Io,
    mut app: TcpStream,
    d: Arc<Delivery>,
    conn: OpenConnection,
) {
    // A spliced stream's requests are not seen: its bytes are. `a` went from the tunnel
    // (the caller) to the app, `b` back.
    let spliced = |r: &std::io::Result<(u64, u64)>| {
        if let Ok((from_app, to_app)) = r {
            conn.counters().bytes(*to_app, *from_app);
        }
    };
    if selector == Selector::Tcp {
        let r = splice(&mut app, &mut tunnel).await;
        d.metrics.record_splice("tcp", &r);
        spliced(&r);
        return;
    }
    let app_h2 = selector.app_speaks_h2();
    let (client_h2, peeked) = match detect::sniff(&mut tunnel).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel stream ended before the first request");
            return;
        }
    };
    if client_h2 == app_h2 {
        // Same version on both sides: the bytes go through untouched.
        if app.write_all(&peeked).await.is_err() {
            return;
        }
        let r = splice(&mut app, &mut tunnel).await;
        d.metrics
            .record_splice(if app_h2 { "h2" } else { "h1" }, &r);
        spliced(&r);
        return;
    }
    drop(app);
    let io = detect::Rewind::new(peeked, tunnel);
    http::serve_translated(io, client_h2, selector, d, conn).await;
}
