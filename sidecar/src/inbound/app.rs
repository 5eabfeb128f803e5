//! Requests to the local app, per the service's selector: the one place where the
//! inbound forwards an HTTP request, whoever sent it (a gateway on a mesh HTTP
//! connection, or a client inside a tunnel stream that speaks another HTTP version).
//!
//! Clients: a pool of HTTP/1.1 connections of our own ([`super::pool`]) and a shared
//! h2c (prior knowledge) client. Both dial the app's address whatever the request
//! says: an HTTP/1.1 request carries its authority in `Host` (origin-form target), an
//! h2c one in its URI (which becomes `:authority`). Requests in
//! progress towards the app are bounded ([`APP_SLOTS`], then a queue of [`APP_QUEUE`]);
//! beyond that the answer is 503 `WEFT-11`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::Delivery;
use super::pool::{H1Pool, SendError};
use crate::control::config::Selector;
use crate::errors::{Body, MeshError, Rejection, Respond, boxed, full, grpc_to_http_message};
use crate::http::limits::{self, Limiter, Slot};
use crate::http::{authority, convert, ws};
use crate::traffic::{CountedBody, Direction, PairCounters, grpc_failed};
use crate::tunnel::io::H2Io;

/// Requests in progress towards the app at once.
pub const APP_SLOTS: usize = 1024;
/// Requests waiting for one of the [`APP_SLOTS`] before the inbound answers 503.
pub const APP_QUEUE: usize = 1024;

/// Connects to the app, ignoring the URI. A refused connection wakes the app probe, so
/// the control plane learns that the app is down (and stops sending traffic here) at
/// once rather than at the next periodic probe.
#[derive(Clone, Debug)]
pub struct AppConnector {
    pub addr: SocketAddr,
    pub refused: Arc<Notify>,
}

impl AppConnector {
    pub(super) async fn connect(&self) -> std::io::Result<TcpStream> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .inspect_err(|_| self.refused.notify_one())?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

impl tower::Service<http::Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

/// The HTTP clients of one inbound, towards its app.
pub struct AppClients {
    connector: AppConnector,
    h1: Arc<H1Pool>,
    h2: Client<AppConnector, Body>,
    slots: Limiter,
}

impl AppClients {
    /// Clients of the app at `addr`; `refused` is notified when it refuses a connection.
    pub fn new(addr: SocketAddr, refused: Arc<Notify>) -> Self {
        let connector = AppConnector { addr, refused };
        let h1 = H1Pool::new(connector.clone());
        let h2 = limits::app_h2_client().build(connector.clone());
        AppClients {
            connector,
            h1,
            h2,
            slots: Limiter::new(APP_SLOTS, APP_QUEUE),
        }
    }

    /// The app's address (for logs, never for messages to clients).
    pub fn addr(&self) -> SocketAddr {
        self.connector.addr
    }

    /// A TCP connection to the app (for tunnel streams); a refusal wakes the probe.
    pub async fn connect(&self) -> std::io::Result<TcpStream> {
        self.connector.connect().await
    }

    /// Opens an RFC 8441 WebSocket stream to an h2c app, which must have enabled
    /// extended CONNECT; one HTTP/2 connection per WebSocket.
    async fn h2_websocket(
        &self,
        req: Request<()>,
        service: &str,
    ) -> Result<(Response<h2::RecvStream>, h2::SendStream<Bytes>), Rejection> {
        let failed = |e: &dyn std::fmt::Display| {
            tracing::debug!(app = %self.connector.addr, error = %e, "WebSocket to the h2c app failed");
            Rejection::new(
                MeshError::UpstreamFailed,
                format!("the app of service {service} failed the WebSocket handshake"),
            )
        };
        let tcp = self
            .connector
            .connect()
            .await
            .map_err(|e| app_refused(service, &e))?;
        let (sender, conn) = h2::client::handshake(tcp).await.map_err(|e| failed(&e))?;
        tokio::spawn(conn);
        let mut sender = sender.ready().await.map_err(|e| failed(&e))?;
        // The app's SETTINGS arrive with its first frames; give them a moment.
        for _ in 0..50 {
            if sender.is_extended_connect_protocol_enabled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !sender.is_extended_connect_protocol_enabled() {
            return Err(Rejection::new(
                MeshError::UpgradeUnsupported,
                format!(
                    "service {service} speaks h2c and did not enable extended CONNECT; WebSockets need an app that supports RFC 8441, or selector `http`"
                ),
            ));
        }
        let (resp, send) = sender.send_request(req, false).map_err(|e| failed(&e))?;
        let resp = resp.await.map_err(|e| failed(&e))?;
        Ok((resp, send))
    }
}

/// The app refused the connection: nothing was delivered, so a gateway may send the
/// request to another endpoint (503 `WEFT-2`).
fn app_refused(service: &str, e: &dyn std::fmt::Display) -> Rejection {
    tracing::warn!(service, error = %e, "the app refused the connection");
    Rejection::new(
        MeshError::NoEndpoint,
        format!("the app of service {service} is not accepting connections"),
    )
}

fn app_failed(service: &str, e: &hyper_util::client::legacy::Error) -> Rejection {
    if e.is_connect() {
        return app_refused(service, e);
    }
    exchange_failed(service, e)
}

fn app_h1_failed(service: &str, e: SendError) -> Rejection {
    match e {
        SendError::Connect(e) => app_refused(service, &e),
        SendError::Http(e) => exchange_failed(service, &e),
    }
}

fn exchange_failed(service: &str, e: &dyn std::fmt::Display) -> Rejection {
    tracing::debug!(service, error = %e, "app request failed");
    Rejection::new(
        MeshError::UpstreamFailed,
        format!("the app of service {service} failed: {e}"),
    )
}

fn version_label(v: Version) -> &'static str {
    if v == Version::HTTP_2 { "h2" } else { "h1" }
}

/// Forwards one request to the app per `selector`; the response is for a client
/// speaking the request's own version. Refusals become the mesh's own responses.
/// Every request is counted in its caller's `pair`: status and time to the response
/// headers here, bytes and a failed gRPC status as the bodies end.
pub async fn forward(
    req: Request<Incoming>,
    selector: Selector,
    d: &Delivery,
    pair: &Arc<PairCounters>,
) -> Response<Body> {
    let started = Instant::now();
    let respond = Respond::to(&req);
    let client = req.version();
    let to = if selector.app_speaks_h2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let resp = match forward_to(req, selector, respond, d, pair).await {
        Ok(resp) => resp,
        Err(rejection) => respond.reject(&rejection),
    };
    let status = resp.status().as_u16();
    d.metrics
        .record_request(version_label(client), version_label(to), status, started);
    let grpc = respond.is_grpc();
    pair.request(
        status,
        grpc && grpc_failed(resp.headers()),
        started.elapsed(),
    );
    resp.map(|body| boxed(CountedBody::new(body, pair.clone(), Direction::Out, grpc)))
}

async fn forward_to(
    mut req: Request<Incoming>,
    selector: Selector,
    respond: Respond,
    d: &Delivery,
    pair: &Arc<PairCounters>,
) -> Result<Response<Body>, Rejection> {
    let service = d.service.as_str();
    match selector {
        Selector::Tcp => {
            return Err(Rejection::new(
                MeshError::NotHttp,
                format!(
                    "service {service} is declared `tcp`: it takes connections, not HTTP requests"
                ),
            ));
        }
        Selector::Http if respond.is_grpc() => {
            return Err(Rejection::new(
                MeshError::GrpcToHttp1,
                grpc_to_http_message(service),
            ));
        }
        _ => {}
    }
    let websocket = ws::form(&req);
    if websocket.is_none() && req.method() == Method::CONNECT {
        return Err(Rejection::new(
            MeshError::Connect,
            "CONNECT is not supported here",
        ));
    }
    let authority = authority::of_request(&req, Some(&d.authority))?;
    let client = req.version();
    let to = if selector.app_speaks_h2() {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let slot = d.apps.slots.admit().await.map_err(|o| {
        Rejection::new(
            MeshError::Overloaded,
            format!("service {service} is overloaded here ({o}); retry later"),
        )
    })?;
    if let Some(form) = websocket {
        return websocket_to(req, form, authority, to, respond, slot, d).await;
    }
    convert::request(&mut req, authority, to, respond)?;
    // The client's trailers cross cleaned, like the app's on the way back; its bytes
    // are counted for the caller.
    let req = req.map(|body| {
        let counted = CountedBody::new(body, pair.clone(), Direction::In, false);
        convert::clean_trailers(counted, ())
    });
    if to == Version::HTTP_2 {
        let resp = (d.apps.h2.request(req).await).map_err(|e| app_failed(service, &e))?;
        // The slot is held until the response body is done with.
        return Ok(convert::response_from_app(resp, client, slot));
    }
    let (resp, lease) = (d.apps.h1.send(req).await).map_err(|e| app_h1_failed(service, e))?;
    // The slot, and the connection, are held until the response body is done with.
    Ok(convert::response_from_app(resp, client, (slot, lease)))
}

/// A WebSocket towards the app: an Upgrade to an HTTP/1.1 app, extended CONNECT to an
/// h2c app; spliced with the client once the app switched.
async fn websocket_to(
    mut req: Request<Incoming>,
    form: ws::Form,
    authority: Authority,
    to: Version,
    respond: Respond,
    slot: Slot,
    d: &Delivery,
) -> Result<Response<Body>, Rejection> {
    let service = d.service.as_str();
    let client_upgrade = hyper::upgrade::on(&mut req);
    let client = req.version();
    convert::request(&mut req, authority, to, respond)?;
    if to == Version::HTTP_11 {
        let expected = ws::to_upgrade(&mut req);
        let (resp, lease) = (d.apps.h1.send(req.map(|_| full(Bytes::new()))).await)
            .map_err(|e| app_h1_failed(service, e))?;
        if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(convert::response_from_app(resp, client, lease));
        }
        // The connection is the WebSocket's now.
        lease.detach();
        if !ws::upgraded(&resp, &expected) {
            return Err(Rejection::new(
                MeshError::UpstreamFailed,
                format!(
                    "the app of service {service} answered the WebSocket handshake incorrectly"
                ),
            ));
        }
        let switch = ws::switch(&form, resp.headers().clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let (Ok(c), Ok(a)) = (client_upgrade.await, hyper::upgrade::on(resp).await) {
                let _ = crate::io::splice(&mut TokioIo::new(c), &mut TokioIo::new(a)).await;
            }
        });
        return Ok(switch);
    }
    ws::to_extended(&mut req);
    // The raw h2 client reads its own `:protocol` extension, not hyper's.
    let mut req = req.map(|_| ());
    req.extensions_mut().clear();
    req.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let (resp, send) = d.apps.h2_websocket(req, service).await?;
    if !resp.status().is_success() {
        let (parts, _) = resp.into_parts();
        let relayed = Response::from_parts(parts, full(Bytes::new()));
        return Ok(convert::response_from_app(relayed, client, ()));
    }
    let (parts, recv) = resp.into_parts();
    let switch = ws::switch(&form, parts.headers);
    let mut app = H2Io::new(send, recv);
    tokio::spawn(async move {
        let _slot = slot;
        if let Ok(c) = client_upgrade.await {
            let _ = crate::io::splice(&mut TokioIo::new(c), &mut app).await;
        }
    });
    Ok(switch)
}
