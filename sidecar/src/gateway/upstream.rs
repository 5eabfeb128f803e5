//! Requests from the gateway into the mesh: each goes as HTTP/2 over a tunnel stream to
//! an endpoint of the route's service. One such inner HTTP/2 connection per endpoint
//! carries many requests; the inbound sidecar then delivers per the service's selector
//! (translating to HTTP/1.1 for `http`, splicing for `http2`/`grpc`).

use std::sync::Arc;

use dashmap::DashMap;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::control::config::{MeshConfig, Selector};
use crate::errors::{Body, ERROR_CODE_HEADER, MeshError, full};
use crate::inbound::app::MAX_HEADER_BYTES;
use crate::outbound::balance::{Balancer, InFlight};
use crate::tunnel::client::{Target, TunnelPool};
use crate::tunnel::{CONNECTION_WINDOW, STREAM_WINDOW};

/// Endpoints tried for one request before giving up (only before anything was sent).
const MAX_ATTEMPTS: usize = 3;

/// Inner HTTP/2 connections to endpoints, keyed by endpoint id. Each remembers the
/// service's selector it was opened under: the inbound sidecar fixes how it delivers a
/// connection when it opens, so after `weftctl service set-protocol` the next request
/// opens a new connection (the old one finishes its streams and closes).
pub struct Upstreams {
    tunnel: Arc<TunnelPool>,
    balancer: Arc<Balancer>,
    conns: DashMap<String, (Selector, SendRequest<Body>)>,
    connecting: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// A response and the load it holds on its endpoint.
pub struct Upstream {
    pub response: Response<Incoming>,
    pub endpoint: String,
    pub _inflight: InFlight,
}

impl Upstreams {
    pub fn new(tunnel: Arc<TunnelPool>, balancer: Arc<Balancer>) -> Arc<Self> {
        Arc::new(Upstreams {
            tunnel,
            balancer,
            conns: DashMap::new(),
            connecting: DashMap::new(),
        })
    }

    /// The open connection to endpoint `id` under selector `protocol`, if any.
    fn pooled(&self, id: &str, protocol: Selector) -> Option<SendRequest<Body>> {
        self.conns
            .get(id)
            .filter(|c| c.0 == protocol && !c.1.is_closed())
            .map(|c| c.1.clone())
    }

    async fn connection(
        &self,
        target: &Target,
        id: &str,
        protocol: Selector,
    ) -> Result<SendRequest<Body>, String> {
        if let Some(s) = self.pooled(id, protocol) {
            return Ok(s);
        }
        let lock = self.connecting.entry(id.to_owned()).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(s) = self.pooled(id, protocol) {
            return Ok(s);
        }
        let io = self.tunnel.open(target).await.map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_BYTES as u32 + 64 * 1024)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 with {} failed: {e}", target.address))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "inner HTTP/2 connection ended");
            }
        });
        self.conns.insert(id.to_owned(), (protocol, sender.clone()));
        Ok(sender)
    }

    /// Sends `req` to an endpoint of `service`, in `prefer_region` first when the route
    /// names one. A request that was not sent (no tunnel, closed connection) is retried
    /// on another endpoint, and so is a request without a body that an endpoint answered
    /// with "my app is not accepting connections" (nothing reached the app).
    pub async fn send(
        &self,
        config: &MeshConfig,
        service: &str,
        prefer_region: Option<&str>,
        mut req: Request<Body>,
    ) -> Result<Upstream, (MeshError, String)> {
        let mut tried = Vec::new();
        let mut last = String::new();
        // Only behind `http` can an endpoint say "nothing reached my app" (see below);
        // elsewhere, keeping a copy would be a wasted allocation per request.
        let replay = if config.protocol_of(service) == Selector::Http {
            Replay::of(&req)
        } else {
            None
        };
        // The last "app unavailable" answer, returned if no other endpoint takes it.
        let mut unavailable = None;
        for _ in 0..MAX_ATTEMPTS {
            let Some(ep) = self.balancer.pick(config, service, &tried, prefer_region) else {
                break;
            };
            // The gateway sits on the border (it reaches other regions' ingresses).
            let target = Target::for_endpoint(&ep, service, self.balancer.region(), None);
            let inflight = self.balancer.start(&ep.id);
            let protocol = config.protocol_of(service);
            let mut sender = match self.connection(&target, &ep.id, protocol).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(service, endpoint = %ep.address, error = %e, "endpoint failed; trying another");
                    self.balancer.eject(&ep.address);
                    last = e;
                    tried.push(ep.id);
                    continue;
                }
            };
            if sender.ready().await.is_err() {
                self.conns.remove(&ep.id);
                tried.push(ep.id);
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => {
                    if let Some(again) = replay.as_ref().filter(|_| {
                        // Behind `http` the inbound strips the app's copy of the
                        // header: this one is the sidecar's own.
                        protocol == Selector::Http && app_unavailable(&response)
                    }) {
                        tracing::info!(service, endpoint = %ep.address, "the endpoint's app is not accepting connections; trying another");
                        self.balancer.eject(&ep.address);
                        tried.push(ep.id);
                        req = again.request();
                        unavailable = Some(Upstream {
                            response,
                            endpoint: ep.address,
                            _inflight: inflight,
                        });
                        continue;
                    }
                    self.balancer.succeeded(&ep.address);
                    return Ok(Upstream {
                        response,
                        endpoint: ep.address,
                        _inflight: inflight,
                    });
                }
                Err(mut e) => {
                    let msg = e.error().to_string();
                    match e.take_message() {
                        // Never sent: safe to try elsewhere.
                        Some(back) => {
                            self.conns.remove(&ep.id);
                            req = back;
                            last = msg;
                            tried.push(ep.id);
                        }
                        None => {
                            return Err((
                                MeshError::UpstreamFailed,
                                format!("{service} at {} failed: {msg}", ep.address),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(up) = unavailable {
            return Ok(up);
        }
        if tried.is_empty() {
            Err((
                MeshError::NoEndpoint,
                format!("no healthy endpoint for service {service}"),
            ))
        } else {
            Err((
                MeshError::UpstreamFailed,
                format!("no endpoint of {service} could take the request: {last}"),
            ))
        }
    }

    /// Drops connections to endpoints no longer in the config.
    pub fn retain(&self, config: &MeshConfig) {
        self.conns.retain(|id, _| config.endpoints.contains_key(id));
    }
}

/// Whether an inbound sidecar answered that its app refused the connection.
fn app_unavailable(response: &Response<Incoming>) -> bool {
    response
        .headers()
        .get(ERROR_CODE_HEADER)
        .map(|v| v.as_bytes())
        == Some(MeshError::NoEndpoint.code().as_bytes())
}

/// What it takes to send a request without a body again.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    /// Only requests whose body has already ended can be sent twice (the body of
    /// the others streams through and is gone once sent).
    fn of(req: &Request<Body>) -> Option<Self> {
        req.body().is_end_stream().then(|| Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
        })
    }

    fn request(&self) -> Request<Body> {
        let mut req = Request::new(full(bytes::Bytes::new()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}
