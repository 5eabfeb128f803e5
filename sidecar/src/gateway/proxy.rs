//! Handling one public request, in phases: validate what the client addressed, find
//! the route, build the mesh request, send it (endpoint retry loop, timeouts), relay
//! the response, finish a WebSocket upgrade. Every HTTP rule it applies lives in
//! [`crate::http`]; nothing from the public side is trusted: forwarding headers are
//! derived from the socket and TLS, after hop-by-hop fields and the mesh's error header
//! were removed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::response::Parts;
use http::uri::Authority;
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use weft_proto::v1::TrafficSource;

use super::access::AccessRecord;
use super::body::{ConnClock, RequestBody, ResponseBody};
use super::routes;
use super::upstream::{Hold, Upstreams};
use crate::control::config::{MeshConfig, RouteEntry, Selector};
use crate::errors::{
    Body, ERROR_CODE_NAME, MeshError, Rejection, Respond, boxed, full, grpc_to_http_message,
};
use crate::http::limits::{self, MAX_HEADER_BYTES};
use crate::http::{authority, convert, headers, ws};
use crate::metrics::Metrics;
use crate::traffic::grpc_failed;

/// What the gateway knows about the connection a request came on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// SNI the client sent, normalised.
    pub sni: Option<String>,
    /// How the client spoke: "h1", "h2", "h2c" or "h2c-upgrade".
    pub protocol: &'static str,
    /// Requests in progress and response progress, for the idle and stall timeouts.
    pub clock: Arc<ConnClock>,
}

/// Names the served certificate covers (for the 421 rule on coalesced connections).
#[derive(Clone, Debug, Default)]
pub struct CertNames(pub Vec<String>);

impl CertNames {
    pub fn covers(&self, host: &str) -> bool {
        self.0.iter().any(|n| {
            n == host
                || n.strip_prefix("*.").is_some_and(|suffix| {
                    host.strip_suffix(suffix)
                        .and_then(|h| h.strip_suffix('.'))
                        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
                })
        })
    }
}

/// The gateway's shared state.
pub struct Gateway {
    pub config: watch::Receiver<Arc<MeshConfig>>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<Metrics>,
    /// Time allowed for response headers (not for gRPC or WebSockets).
    pub upstream_timeout: Duration,
    /// Client connections without a request for this long are closed (GOAWAY first on
    /// h2), and spliced WebSockets without traffic.
    pub idle_timeout: Duration,
    pub cert_names: CertNames,
    /// This gateway as a traffic source (`gateway:NAME`).
    pub source: TrafficSource,
}

/// What the access log and the traffic figures learn of a request while it is routed.
#[derive(Default)]
struct Seen {
    /// Whether the access log is on (else `host` stays empty).
    logged: bool,
    /// The authority the client addressed.
    host: String,
    /// The service of the route it took, once one was found.
    service: Option<String>,
}

/// What a valid request addressed.
struct Addressed {
    /// As the client sent it (forwarded as `X-Forwarded-Host`, and upstream unless
    /// the route rewrites it).
    authority: Authority,
    /// Normalised for routing.
    host: String,
}

/// A WebSocket the client asked for, to finish once the mesh answered.
struct Upgrade {
    form: ws::Form,
    client: OnUpgrade,
}

/// The response on its way back, and where it came from.
struct Routed {
    parts: Parts,
    body: RoutedBody,
    endpoint: String,
}

enum RoutedBody {
    /// The mesh's body, the endpoint resources it holds, the gRPC deadline.
    Mesh(Incoming, Hold, Option<tokio::time::Instant>),
    /// A body the gateway made.
    Made(Body),
}

impl Gateway {
    /// Serves one request; never fails (refusals become mesh error responses).
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let in_progress = conn.clock.request();
        let respond = Respond::to(&req);
        let method = req.method().clone();
        // The access log's strings are copied only when it is on (no allocation per
        // request otherwise).
        let logged = tracing::enabled!(target: "weft::access", tracing::Level::INFO);
        let path = match req.uri().path_and_query() {
            Some(p) if logged => p.as_str().to_owned(),
            _ => String::new(),
        };
        let mut seen = Seen {
            logged,
            ..Seen::default()
        };
        let routed = match self.route(&conn, req, respond, &mut seen).await {
            Ok(r) => r,
            Err(rejection) => {
                let (parts, body) = respond.reject(&rejection).into_parts();
                Routed {
                    parts,
                    body: RoutedBody::Made(body),
                    endpoint: String::new(),
                }
            }
        };
        let status = routed.parts.status.as_u16();
        self.metrics
            .record_request(conn.protocol, "h2", status, started);
        if let (true, Some(service)) = (routed.endpoint.is_empty(), &seen.service) {
            // A request for a service that no inbound answered (no healthy endpoint,
            // none reachable in time): counted here, since no inbound will count it.
            let grpc_error = respond.is_grpc() && grpc_failed(&routed.parts.headers);
            self.metrics
                .traffic
                .pair(service, self.source.clone())
                .request(status, grpc_error, started.elapsed());
        }
        let record = AccessRecord {
            started,
            client: conn.peer,
            host: seen.host,
            method,
            path,
            status,
            inbound: conn.protocol,
            upstream_protocol: if routed.endpoint.is_empty() { "" } else { "h2" },
            upstream: routed.endpoint,
            grpc: respond.is_grpc(),
            error_code: routed
                .parts
                .headers
                .get(&ERROR_CODE_NAME)
                .and_then(|v| MeshError::from_code(v.as_bytes()))
                .map_or("", MeshError::code),
        };
        let body = match routed.body {
            RoutedBody::Mesh(body, hold, deadline) => {
                ResponseBody::mesh(body, in_progress, record, hold, deadline)
            }
            RoutedBody::Made(body) => ResponseBody::made(body, in_progress, record),
        };
        Response::from_parts(routed.parts, body)
    }

    async fn route(
        &self,
        conn: &ConnInfo,
        mut req: Request<Incoming>,
        respond: Respond,
        seen: &mut Seen,
    ) -> Result<Routed, Rejection> {
        let addressed = self.validate(conn, &req)?;
        if seen.logged {
            seen.host.push_str(addressed.authority.as_str());
        }
        let config = self.config.borrow().clone();
        let route = self.find_route(&config, &addressed, &req, respond)?;
        seen.service = Some(route.service.clone());
        let upgrade = ws::form(&req).map(|form| Upgrade {
            form,
            client: hyper::upgrade::on(&mut req),
        });
        let deadline = respond
            .is_grpc()
            .then(|| headers::grpc_timeout(req.headers()))
            .flatten()
            .map(|t| tokio::time::Instant::now() + t);
        let client_version = req.version();
        let out = self.to_mesh_request(conn, req, &addressed, route, respond, upgrade.is_some())?;
        let up = self
            .send(&config, route, out, respond, upgrade.is_some(), deadline)
            .await?;
        let endpoint = up.endpoint;
        let (mut parts, body) = up.response.into_parts();
        self.response_for_client(&mut parts, conn, route, &addressed, client_version);
        match upgrade {
            Some(u) if parts.status.is_success() => {
                let switched = self.finish_upgrade(u, Response::from_parts(parts, body), up.hold);
                let (parts, body) = switched.into_parts();
                Ok(Routed {
                    parts,
                    body: RoutedBody::Made(body),
                    endpoint,
                })
            }
            _ => Ok(Routed {
                parts,
                body: RoutedBody::Mesh(body, up.hold, deadline),
                endpoint,
            }),
        }
    }

    /// Phase 1: what the client addressed, and whether this connection may carry it.
    fn validate(&self, conn: &ConnInfo, req: &Request<Incoming>) -> Result<Addressed, Rejection> {
        if limits::header_bytes(req.headers()) > MAX_HEADER_BYTES {
            return Err(Rejection::new(
                MeshError::HeaderTooLarge,
                "request header section is over 1 MB",
            ));
        }
        if req.method() == Method::CONNECT && ws::form(req).is_none() {
            return Err(Rejection::new(
                MeshError::Connect,
                "CONNECT is not supported by this gateway",
            ));
        }
        let authority = authority::of_request(req, None)?;
        let host = authority::route_host(&authority);
        if conn.tls
            && conn.sni.as_deref().is_some_and(|sni| sni != host)
            && !self.cert_names.covers(&host)
        {
            return Err(Rejection::new(
                MeshError::Misdirected,
                format!(
                    "this connection was made for {:?} and cannot carry {host}",
                    conn.sni
                ),
            ));
        }
        Ok(Addressed { authority, host })
    }

    /// Phase 2: the route, and whether its service can take this request.
    fn find_route<'c>(
        &self,
        config: &'c MeshConfig,
        addressed: &Addressed,
        req: &Request<Incoming>,
        respond: Respond,
    ) -> Result<&'c RouteEntry, Rejection> {
        let path = req.uri().path();
        let Some(route) = routes::find(config, &addressed.host, path) else {
            return Err(Rejection::new(
                MeshError::NoRoute,
                format!("no route for {}{path}", addressed.host),
            ));
        };
        // Known from the config alone, whatever the state of the endpoints.
        match config.protocol_of(&route.service) {
            Selector::Tcp => Err(Rejection::new(
                MeshError::NotHttp,
                format!(
                    "the route for {} leads to service {}, which is declared `tcp` (raw connections, not HTTP); set its protocol with `weftctl service set-protocol {} http|http2|grpc`",
                    addressed.host, route.service, route.service
                ),
            )),
            Selector::Http if respond.is_grpc() => Err(Rejection::new(
                MeshError::GrpcToHttp1,
                grpc_to_http_message(&route.service),
            )),
            _ => Ok(route),
        }
    }

    /// Phase 3: the request as it travels in the mesh (always HTTP/2; a WebSocket as an
    /// extended CONNECT), with the gateway's forwarding headers.
    fn to_mesh_request(
        &self,
        conn: &ConnInfo,
        req: Request<Incoming>,
        addressed: &Addressed,
        route: &RouteEntry,
        respond: Respond,
        websocket: bool,
    ) -> Result<Request<Body>, Rejection> {
        let upstream = if route.rewrite_host.is_empty() {
            addressed.authority.clone()
        } else {
            authority::parse(route.rewrite_host.as_bytes())?
        };
        let received = req.version();
        // A body that stops arriving fails, so a client cannot hold a mesh stream open
        // forever; gRPC streams idle legitimately, up to the idle timeout.
        let body_timeout = if respond.is_grpc() {
            self.idle_timeout
        } else {
            limits::body_progress_timeout(self.idle_timeout)
        };
        let mut out = req.map(|b| {
            if websocket {
                full(bytes::Bytes::new())
            } else if b.is_end_stream() {
                boxed(b)
            } else {
                boxed(RequestBody::new(b, body_timeout))
            }
        });
        convert::request(&mut out, upstream, Version::HTTP_2, respond)?;
        headers::forwarding(
            out.headers_mut(),
            &headers::Forwarded {
                peer: conn.peer.ip(),
                tls: conn.tls,
                authority: addressed.authority.as_str(),
                version: received,
            },
        );
        if websocket {
            ws::to_extended(&mut out);
        }
        Ok(out)
    }

    /// Phase 4: send it to an endpoint of the route's service, within the time allowed
    /// for response headers (`--upstream-timeout`, or the gRPC call's own deadline;
    /// WebSockets and gRPC calls without a deadline wait as long as the app takes).
    async fn send(
        &self,
        config: &MeshConfig,
        route: &RouteEntry,
        out: Request<Body>,
        respond: Respond,
        websocket: bool,
        grpc_deadline: Option<tokio::time::Instant>,
    ) -> Result<super::upstream::Upstream, Rejection> {
        let prefer_region = Some(route.prefer_region.as_str()).filter(|r| !r.is_empty());
        let send = self
            .upstreams
            .send(config, &route.service, prefer_region, out);
        let (deadline, what) = match grpc_deadline {
            Some(d) => (Some(d), "the call's deadline (grpc-timeout) passed"),
            None if websocket || respond.is_grpc() => (None, ""),
            None => (
                Some(tokio::time::Instant::now() + self.upstream_timeout),
                "no answer within --upstream-timeout",
            ),
        };
        match deadline {
            None => send.await,
            Some(d) => tokio::time::timeout_at(d, send).await.unwrap_or_else(|_| {
                Err(Rejection::new(
                    MeshError::UpstreamTimeout,
                    format!("service {}: {what}", route.service),
                ))
            }),
        }
    }

    /// Phase 5: the mesh's response for the public client. The inbound already removed
    /// the app's `weft-error-code`: one that arrives here is the mesh's own.
    fn response_for_client(
        &self,
        parts: &mut Parts,
        conn: &ConnInfo,
        route: &RouteEntry,
        addressed: &Addressed,
        client: Version,
    ) {
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::append_via(&mut parts.headers, Version::HTTP_2);
        if !route.rewrite_host.is_empty() {
            rewrite_location(
                &mut parts.headers,
                &route.rewrite_host,
                addressed.authority.as_str(),
                conn.tls,
            );
        }
        if client != Version::HTTP_2 {
            headers::declare_grpc_trailers(&mut parts.headers);
        }
    }

    /// Phase 6: the mesh switched protocols; answer the client in its own form and
    /// splice the two until both ends close, or nothing moves for the idle timeout.
    fn finish_upgrade(&self, u: Upgrade, mesh: Response<Incoming>, hold: Hold) -> Response<Body> {
        let switch = ws::switch(&u.form, mesh.headers().clone());
        let idle = self.idle_timeout;
        tokio::spawn(async move {
            let _hold = hold;
            if let (Ok(client), Ok(mesh)) = (u.client.await, hyper::upgrade::on(mesh).await) {
                let _ =
                    crate::io::splice_idle(TokioIo::new(client), TokioIo::new(mesh), idle).await;
            }
        });
        switch
    }
}

/// `Location: http(s)://<rewrite_host>/...` back to the public host.
fn rewrite_location(headers: &mut HeaderMap, rewrite_host: &str, public: &str, tls: bool) {
    let Some(loc) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Ok(uri) = loc.parse::<Uri>() else { return };
    if uri
        .authority()
        .is_some_and(|a| a.as_str().eq_ignore_ascii_case(rewrite_host))
    {
        let scheme = if tls { "https" } else { "http" };
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{public}{path}")) {
            headers.insert(header::LOCATION, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_is_rewritten_back() {
        let mut h = HeaderMap::new();
        h.insert(
            header::LOCATION,
            HeaderValue::from_static("http://web.internal:8080/login?x=1"),
        );
        rewrite_location(&mut h, "web.internal:8080", "www.example.com", true);
        assert_eq!(h[header::LOCATION], "https://www.example.com/login?x=1");
    }

    #[test]
    fn certificate_names_cover_one_label_wildcards() {
        let n = CertNames(vec!["*.example.com".into(), "localhost".into()]);
        assert!(n.covers("a.example.com") && n.covers("localhost"));
        assert!(!n.covers("example.com") && !n.covers("a.b.example.com") && !n.covers("other.org"));
    }
}
