//! Requests from the gateway into the mesh. Each request is one stream on a pooled
//! mTLS HTTP/2 connection straight to an endpoint's inbound port, with ALPN
//! `weft-http/2`; the inbound serves it with its translating server per the service's
//! selector. No tunnel and no HTTP/2 inside HTTP/2: one HTTP/2 layer from the gateway
//! to the last hop.
//!
//! Per endpoint: up to [`CONNS_PER_ENDPOINT`] connections, each carrying up to
//! [`MESH_MAX_STREAMS`] streams (a second connection opens when the first is full);
//! beyond that, requests wait in a queue of [`ENDPOINT_QUEUE`] and then get 503
//! `WEFT-11` (or go to another endpoint). The connections' windows cover all their
//! streams ([`crate::http::limits`]), so a public client that stops reading holds its
//! own streams' windows and never slows another client's streams. Connections are
//! pinged when quiet (see [`limits::mesh_h2_client`]); one that fails with a request
//! on it gets its endpoint ejected until a probe reaches it again.
//!
//! Re-sends: a request no endpoint processed goes to the next one, body included while
//! it fits the copy kept for that ([`super::replay`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;

use super::replay::Replayable;
use crate::control::config::EndpointEntry;
use crate::control::config::MeshConfig;
use crate::errors::{Body, ERROR_CODE_NAME, MeshError, Rejection};
use crate::http::limits::{self, Limiter, MESH_MAX_STREAMS, Overloaded, Slot};
use crate::outbound::attempts::Attempts;
use crate::outbound::balance::{Balancer, InFlight};
use crate::tls::{MeshAlpn, MeshTls};
use crate::tunnel::client::{self, Target, TunnelError, connect_tls};

/// Mesh HTTP/2 connections one gateway keeps to one endpoint at most.
pub const CONNS_PER_ENDPOINT: usize = 4;
/// Requests waiting for a stream to one endpoint before the gateway answers 503.
pub const ENDPOINT_QUEUE: usize = 1024;

/// The gateway's mesh HTTP connections, per endpoint.
pub struct Upstreams {
    tls: Arc<MeshTls>,
    balancer: Arc<Balancer>,
    endpoints: DashMap<EndpointId, Arc<Endpoint>>,
}

/// What a response holds on its endpoint until its body is done with (or, for a
/// WebSocket, until the socket closes): load for the balancer, a stream slot.
pub struct Hold {
    _inflight: InFlight,
    _slot: Slot,
    _stream: StreamGuard,
}

/// Why an endpoint could not take a request before anything was sent.
enum Unsent {
    /// Every slot busy and the queue full: another endpoint may take it.
    Busy(Overloaded),
    /// No connection could be opened: the endpoint is ejected.
    Unreachable(TunnelError),
}

/// A response from an endpoint.
pub struct Upstream {
    pub response: Response<Incoming>,
    /// The endpoint's address, for the access log.
    pub endpoint: String,
    pub hold: Hold,
}

/// The pool key: an endpoint's id (the control plane's name for one dataplane).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointId(Box<str>);

impl std::borrow::Borrow<str> for EndpointId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One endpoint's connections, and where they go (built once, not per request).
struct Endpoint {
    /// What the connections were opened for: a change of address, ingress, SNI or
    /// identity means a new pool.
    place: EndpointEntry,
    target: Target,
    slots: Limiter,
    conns: RwLock<Vec<Conn>>,
    /// Serialises opening connections, so a burst opens one, not one per request.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
struct Conn {
    sender: SendRequest<Body>,
    streams: Arc<AtomicUsize>,
}

/// Counts one open stream on a connection until dropped.
struct StreamGuard(Arc<AtomicUsize>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Conn {
    /// A stream on this connection if it is alive and has one free.
    fn take(&self) -> Option<(SendRequest<Body>, StreamGuard)> {
        if self.sender.is_closed() {
            return None;
        }
        // Inbounds advertise MESH_MAX_STREAMS (this build's limits apply both ends).
        let max = MESH_MAX_STREAMS as usize;
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some((self.sender.clone(), StreamGuard(self.streams.clone())))
    }
}

/// Whether two views of an endpoint lead to the same peer.
fn same_place(a: &EndpointEntry, b: &EndpointEntry) -> bool {
    a.address == b.address
        && a.ingress_address == b.ingress_address
        && a.sni == b.sni
        && a.identity == b.identity
}

impl Endpoint {
    fn new(place: EndpointEntry, target: Target) -> Self {
        Endpoint {
            place,
            target,
            slots: Limiter::new(
                CONNS_PER_ENDPOINT * MESH_MAX_STREAMS as usize,
                ENDPOINT_QUEUE,
            ),
            conns: RwLock::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// A stream on the first live connection that has one free: connections fill up
    /// in turn, so a second one opens only when the first is full.
    fn pick(&self) -> Option<(SendRequest<Body>, StreamGuard)> {
        self.conns.read().iter().find_map(Conn::take)
    }

    /// A stream to the endpoint, opening a connection when none has one free.
    async fn stream(&self, tls: &MeshTls) -> Result<(SendRequest<Body>, StreamGuard), TunnelError> {
        let target = &self.target;
        if let Some(s) = self.pick() {
            return Ok(s);
        }
        let _opening = self.connecting.lock().await;
        if let Some(s) = self.pick() {
            return Ok(s);
        }
        let conn = open(tls, target).await?;
        let stream = conn.take();
        self.add(conn);
        stream.ok_or_else(|| TunnelError::Timeout {
            addr: target.address.clone(),
        })
    }

    fn add(&self, conn: Conn) {
        let mut conns = self.conns.write();
        conns.retain(|c| !c.sender.is_closed());
        if conns.len() >= CONNS_PER_ENDPOINT {
            // Every connection is busy: the new one replaces the busiest. (The slots
            // bound the streams, so this only happens while one is closing.)
            conns.sort_by_key(|c| c.streams.load(Ordering::Relaxed));
            conns.pop();
        }
        conns.push(conn);
    }

    /// A probe: whether a connection to the endpoint is open, or opens now (and is
    /// kept for the requests to come).
    async fn reachable(&self, tls: &MeshTls) -> bool {
        if self.conns.read().iter().any(|c| !c.sender.is_closed()) {
            return true;
        }
        let _opening = self.connecting.lock().await;
        match open(tls, &self.target).await {
            Ok(conn) => {
                self.add(conn);
                true
            }
            Err(_) => false,
        }
    }

    /// Forgets a connection that refused a stream (it is closing).
    fn forget(&self, sender: &SendRequest<Body>) {
        let _ = sender;
        self.conns.write().retain(|c| !c.sender.is_closed());
    }
}

/// Opens a mesh HTTP connection to `target`.
async fn open(tls: &MeshTls, target: &Target) -> Result<Conn, TunnelError> {
    let io = connect_tls(tls, target, MeshAlpn::Http).await?;
    let (sender, conn) = limits::mesh_h2_client()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|err| TunnelError::Http {
            addr: target.address.clone(),
            err,
        })?;
    let peer = target.address.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "mesh HTTP connection ended");
        }
    });
    Ok(Conn {
        sender,
        streams: Arc::new(AtomicUsize::new(0)),
    })
}

impl Upstreams {
    pub fn new(tls: Arc<MeshTls>, balancer: Arc<Balancer>) -> Arc<Self> {
        Arc::new(Upstreams {
            tls,
            balancer,
            endpoints: DashMap::new(),
        })
    }

    /// The pool of `ep`, made on first use (or anew when the endpoint moved).
    fn endpoint(&self, ep: &EndpointEntry, service: &str) -> Arc<Endpoint> {
        if let Some(e) = self.endpoints.get(ep.id.as_str()) {
            if same_place(&e.place, ep) {
                return e.clone();
            }
        }
        // The gateway sits on the border (it reaches other regions' ingresses).
        let target = Target::for_endpoint(ep, service, self.balancer.region(), None);
        let fresh = Arc::new(Endpoint::new(ep.clone(), target));
        self.endpoints
            .insert(EndpointId(ep.id.as_str().into()), fresh.clone());
        fresh
    }

    /// Sends `req` to an endpoint of `service`, in `prefer_region` first when the route
    /// names one (the endpoint retry loop: [`Attempts`]). A request no endpoint
    /// processed goes to another endpoint (or, within the retry budget, to the same one
    /// again): one that was not sent (no connection, a connection closing), one whose
    /// stream was refused unprocessed (`REFUSED_STREAM`, above a GOAWAY's last id), and
    /// one answered "my app is not accepting connections"; a request with a body only
    /// while its body fits the copy kept for that ([`Replayable`]).
    pub async fn send(
        &self,
        config: &MeshConfig,
        service: &str,
        prefer_region: Option<&str>,
        req: Request<Body>,
    ) -> Result<Upstream, Rejection> {
        let (head, body) = req.into_parts();
        let again = Resend::of(&head);
        let body = Replayable::new(body);
        let mut pending = Some(Request::from_parts(head, body.first()));
        let resend = || again.as_ref().and_then(|a| Some(a.request(body.again()?)));
        // The last "app unavailable" answer, returned if no other endpoint takes it.
        let mut unavailable = None;
        let mut last = None;
        let mut attempts = Attempts::new(&self.balancer, config, service, prefer_region);
        while let Some(req) = pending.take() {
            let Some(ep) = attempts.next().await else {
                break;
            };
            let (endpoint, mut sender, hold) = match self.stream_to(ep, service).await {
                Ok(s) => s,
                Err(Unsent::Busy(busy)) => {
                    tracing::info!(service, endpoint = %ep.address, %busy, "endpoint overloaded; trying another");
                    last = Some(Rejection::new(
                        MeshError::Overloaded,
                        format!("service {service} is overloaded; retry later"),
                    ));
                    attempts.skipped(ep);
                    pending = Some(req);
                    continue;
                }
                Err(Unsent::Unreachable(e)) => {
                    tracing::warn!(service, endpoint = %ep.address, error = %e, "endpoint unreachable; trying another");
                    if attempts.unreachable(ep) {
                        self.probe(ep, service);
                    }
                    pending = Some(req);
                    continue;
                }
            };
            match sender.try_send_request(req).await {
                Ok(response) if app_unavailable(&response) => {
                    tracing::info!(service, endpoint = %ep.address, "the endpoint's app is not accepting connections; trying another");
                    attempts.refused(ep);
                    unavailable = Some(Upstream {
                        response,
                        endpoint: ep.address.clone(),
                        hold,
                    });
                    pending = resend();
                }
                Ok(response) => {
                    body.settle();
                    attempts.succeeded(ep);
                    return Ok(Upstream {
                        response,
                        endpoint: ep.address.clone(),
                        hold,
                    });
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: safe to try elsewhere.
                    Some(back) => {
                        tracing::debug!(service, endpoint = %ep.address, error = %e.error(), "request not sent; trying another endpoint");
                        endpoint.forget(&sender);
                        attempts.skipped(ep);
                        pending = Some(back);
                    }
                    None if unprocessed(e.error()) => {
                        tracing::info!(service, endpoint = %ep.address, error = %e.error(), "request refused unprocessed; sending it again");
                        attempts.skipped(ep);
                        pending = resend();
                        last = Some(Rejection::new(
                            MeshError::UpstreamFailed,
                            format!("service {service} refused the request: {}", e.error()),
                        ));
                    }
                    None => {
                        tracing::info!(service, endpoint = %ep.address, error = %e.error(), "upstream failed");
                        // Its connection died under it: keep new requests away until
                        // a probe reaches it again.
                        if sender.is_closed() && attempts.unreachable(ep) {
                            self.probe(ep, service);
                        }
                        return Err(Rejection::new(
                            MeshError::UpstreamFailed,
                            format!("service {service} failed: {}", e.error()),
                        ));
                    }
                },
            }
        }
        match (unavailable, last) {
            (Some(up), _) => Ok(up),
            (None, Some(last)) => Err(last),
            (None, None) if attempts.made() == 0 => Err(Rejection::new(
                MeshError::NoEndpoint,
                format!("no healthy endpoint for service {service}"),
            )),
            (None, None) => Err(Rejection::new(
                MeshError::UpstreamFailed,
                format!("no endpoint of service {service} could take the request"),
            )),
        }
    }

    /// A stream to `ep` and what it holds there, once one of its slots is free.
    async fn stream_to(
        &self,
        ep: &EndpointEntry,
        service: &str,
    ) -> Result<(Arc<Endpoint>, SendRequest<Body>, Hold), Unsent> {
        let endpoint = self.endpoint(ep, service);
        let slot = endpoint.slots.admit().await.map_err(Unsent::Busy)?;
        let inflight = self.balancer.start(&ep.id);
        let (sender, stream) = endpoint
            .stream(&self.tls)
            .await
            .map_err(Unsent::Unreachable)?;
        let hold = Hold {
            _inflight: inflight,
            _slot: slot,
            _stream: stream,
        };
        Ok((endpoint, sender, hold))
    }

    /// Probes an unreachable endpoint until a connection to it opens.
    fn probe(&self, ep: &EndpointEntry, service: &str) {
        let (endpoint, tls) = (self.endpoint(ep, service), self.tls.clone());
        tokio::spawn(self.balancer.clone().probe(ep.address.clone(), move || {
            let (endpoint, tls) = (endpoint.clone(), tls.clone());
            async move { endpoint.reachable(&tls).await }
        }));
    }

    /// Drops the connections of endpoints no longer in the config (their open streams
    /// finish first), and lets the balancer follow the config.
    pub fn retain(&self, config: &MeshConfig) {
        self.balancer.follow(config);
        self.endpoints
            .retain(|id, _| config.endpoints.contains_key(&*id.0));
    }
}

/// Whether an inbound answered that its app refused the connection. The inbound
/// strips the app's own copy of the header, so this one is the inbound's.
fn app_unavailable(response: &Response<Incoming>) -> bool {
    response
        .headers()
        .get(&ERROR_CODE_NAME)
        .map(|v| v.as_bytes())
        == Some(MeshError::NoEndpoint.code().as_bytes())
}

/// Whether hyper's error says the endpoint did not process the stream.
fn unprocessed(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return client::unprocessed(h2);
        }
        source = err.source();
    }
    false
}

/// What it takes to send a request again, with its body from [`Replayable::again`].
struct Resend {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Resend {
    fn of(head: &http::request::Parts) -> Option<Self> {
        // A WebSocket's CONNECT carries its protocol in an extension: never sent twice.
        (head.method != Method::CONNECT).then(|| Resend {
            method: head.method.clone(),
            uri: head.uri.clone(),
            version: head.version,
            headers: head.headers.clone(),
        })
    }

    fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}
