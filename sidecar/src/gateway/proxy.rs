//! Handling one public request: route by host, rewrite headers for the trip into the
//! mesh, send it as HTTP/2 through the tunnel, and relay the response. Nothing from the
//! public side is trusted: forwarding headers are derived from the socket and TLS, hop-
//! by-hop fields (the `Connection` list first) and the mesh's error header are removed
//! before the gateway adds its own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::access::{AccessRecord, Logged};
use super::routes;
use super::upstream::Upstreams;
use crate::control::config::{MeshConfig, Selector};
use crate::errors::{Body, ERROR_CODE_HEADER, MeshError, full, grpc_to_http_message, is_grpc};
use crate::inbound::app::MAX_HEADER_BYTES;
use crate::inbound::{splice, translate, ws};
use crate::metrics::Metrics;

/// What the gateway knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// SNI the client sent, normalised.
    pub sni: Option<String>,
    /// How the client spoke: "h1", "h2", "h2c" or "h2c-upgrade".
    pub protocol: &'static str,
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
    /// Time allowed for response headers (not for gRPC or tunnels).
    pub upstream_timeout: Duration,
    /// Client connections without traffic for this long are closed (GOAWAY first on h2).
    pub idle_timeout: Duration,
    pub cert_names: CertNames,
}

fn header_bytes(h: &HeaderMap) -> usize {
    h.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum()
}

/// The authority the client addressed, per HTTP version rules.
fn authority(req: &Request<Incoming>) -> Result<String, String> {
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if req.version() == Version::HTTP_2 {
        let a = req.uri().authority().map(|a| a.as_str().to_owned());
        let h = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        return match (a, h) {
            (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
                Err(format!("host {h:?} differs from :authority {a:?}"))
            }
            (Some(a), _) => Ok(a),
            (None, Some(h)) => Ok(h.to_owned()),
            (None, None) => Err("no :authority".into()),
        };
    }
    if hosts > 1 {
        return Err("more than one Host header".into());
    }
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str().to_owned());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| "HTTP/1.1 request without Host".into())
}

/// Sets the forwarding headers from what the gateway itself observed.
fn forwarding(headers: &mut HeaderMap, info: &ConnInfo, authority: &str) {
    let peer = info.peer.ip().to_string();
    let prior: Vec<String> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_owned)
        .collect();
    let xff = if prior.is_empty() {
        peer
    } else {
        format!("{}, {peer}", prior.join(", "))
    };
    headers.remove("x-forwarded-for");
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if info.tls { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::from_str(authority) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), v);
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

impl Gateway {
    /// Serves one request; never fails (errors become mesh error responses).
    pub async fn handle(self: Arc<Self>, info: ConnInfo, req: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let grpc = is_grpc(&req);
        let host_for_log = authority(&req).unwrap_or_default();
        let (resp, upstream) = self.route(&info, req, grpc).await;
        let status = resp.status().as_u16();
        let code = resp
            .headers()
            .get(ERROR_CODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        self.metrics
            .record_request(info.protocol, "h2", status, started);
        let record = AccessRecord {
            started,
            client: info.peer,
            host: host_for_log,
            method: method.to_string(),
            path,
            status,
            inbound: info.protocol,
            upstream_protocol: if upstream.is_empty() { "" } else { "h2" },
            upstream,
            grpc,
            error_code: code,
        };
        let (parts, body) = resp.into_parts();
        Response::from_parts(parts, Logged::new(body, record).boxed())
    }

    async fn route(
        &self,
        info: &ConnInfo,
        mut req: Request<Incoming>,
        grpc: bool,
    ) -> (Response<Body>, String) {
        let fail = |e: MeshError, msg: String| (e.response(&msg, grpc), String::new());
        if header_bytes(req.headers()) > MAX_HEADER_BYTES {
            return fail(
                MeshError::HeaderTooLarge,
                "request header section is over 1 MB".into(),
            );
        }
        let authority = match authority(&req) {
            Ok(a) => a,
            Err(e) => return fail(MeshError::BadRequest, e),
        };
        let Some(host) = routes::normalize_host(&authority) else {
            return fail(MeshError::BadRequest, format!("invalid host {authority:?}"));
        };
        if info.tls
            && info.sni.as_deref().is_some_and(|sni| sni != host)
            && !self.cert_names.covers(&host)
        {
            return fail(
                MeshError::Misdirected,
                format!(
                    "this connection was made for {:?} and cannot carry {host}",
                    info.sni
                ),
            );
        }
        let config = self.config.borrow().clone();
        let path = req.uri().path().to_owned();
        let Some(route) = routes::find(&config, &host, &path).cloned() else {
            return fail(MeshError::NoRoute, format!("no route for {host}{path}"));
        };
        if req.method() == Method::CONNECT && !ws::is_extended_websocket(&req) {
            let mut r =
                MeshError::BadRequest.response("CONNECT is not supported by this gateway", grpc);
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return (r, String::new());
        }
        let upstream_authority = if route.rewrite_host.is_empty() {
            authority.clone()
        } else {
            route.rewrite_host.clone()
        };
        let websocket_h1 = ws::is_h1_websocket(&req);
        let client_key = req.headers().get("sec-websocket-key").cloned();
        let client_upgrade =
            (websocket_h1 || ws::is_extended_websocket(&req)).then(|| hyper::upgrade::on(&mut req));

        // Headers for the trip into the mesh.
        let (mut parts, body) = req.into_parts();
        let te_trailers = translate::strip_hop_by_hop(&mut parts.headers);
        translate::strip_reserved(&mut parts.headers);
        parts.headers.remove(header::HOST);
        forwarding(&mut parts.headers, info, &authority);
        if te_trailers || grpc {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        let Ok(uri) = format!("http://{upstream_authority}{pq}").parse::<Uri>() else {
            return fail(MeshError::BadRequest, "invalid request target".into());
        };
        let mut out = Request::builder().version(Version::HTTP_2).uri(uri);
        if websocket_h1 || client_upgrade.is_some() {
            out = out.method(Method::CONNECT);
        } else {
            out = out.method(parts.method.clone());
        }
        let Ok(mut out) = out.body(if client_upgrade.is_some() {
            full(bytes::Bytes::new())
        } else {
            body.boxed()
        }) else {
            return fail(MeshError::BadRequest, "invalid request".into());
        };
        *out.headers_mut() = parts.headers;
        if client_upgrade.is_some() {
            out.extensions_mut()
                .insert(Protocol::from_static("websocket"));
            out.headers_mut().remove("sec-websocket-key");
            out.headers_mut()
                .entry("sec-websocket-version")
                .or_insert(HeaderValue::from_static("13"));
        }

        // Known from the config alone, whatever the state of the endpoints.
        if grpc && config.protocol_of(&route.service) == Selector::Http {
            return fail(MeshError::GrpcToHttp1, grpc_to_http_message(&route.service));
        }
        let prefer_region = Some(route.prefer_region.as_str()).filter(|r| !r.is_empty());
        let send = self
            .upstreams
            .send(&config, &route.service, prefer_region, out);
        let result = if grpc || client_upgrade.is_some() {
            send.await
        } else {
            match tokio::time::timeout(self.upstream_timeout, send).await {
                Ok(r) => r,
                Err(_) => Err((
                    MeshError::UpstreamTimeout,
                    format!(
                        "{} did not answer within {:?}",
                        route.service, self.upstream_timeout
                    ),
                )),
            }
        };
        let up = match result {
            Ok(up) => up,
            Err((e, msg)) => return fail(e, msg),
        };
        let endpoint = up.endpoint.clone();
        let (mut rparts, rbody) = up.response.into_parts();
        translate::response(&mut rparts.headers);
        // Only the mesh may set its error header. Behind `http` the inbound sidecar
        // translates every response and strips the app's copy, so what arrives here was
        // set by the mesh; behind the other selectors the gateway's HTTP/2 reaches the app
        // untouched, so the app's copy must go here.
        if config.protocol_of(&route.service) != Selector::Http {
            rparts.headers.remove(ERROR_CODE_HEADER);
        }
        if !route.rewrite_host.is_empty() {
            rewrite_location(
                &mut rparts.headers,
                &route.rewrite_host,
                &authority,
                info.tls,
            );
        }

        if let Some(client_upgrade) = client_upgrade {
            if !rparts.status.is_success() {
                return (Response::from_parts(rparts, rbody.boxed()), endpoint);
            }
            let mut resp = Response::new(full(bytes::Bytes::new()));
            if websocket_h1 {
                *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let h = resp.headers_mut();
                h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                if let Some(v) = client_key
                    .and_then(|k| HeaderValue::from_str(&ws::accept_key(k.as_bytes())).ok())
                {
                    h.insert("sec-websocket-accept", v);
                }
            }
            for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
                if let Some(v) = rparts.headers.get(name) {
                    resp.headers_mut()
                        .insert(HeaderName::from_static(name), v.clone());
                }
            }
            let upstream_resp = Response::from_parts(rparts, rbody);
            tokio::spawn(async move {
                let _hold = up._inflight;
                if let (Ok(c), Ok(u)) = (
                    client_upgrade.await,
                    hyper::upgrade::on(upstream_resp).await,
                ) {
                    let _ = splice(&mut TokioIo::new(c), &mut TokioIo::new(u)).await;
                }
            });
            return (resp, endpoint);
        }
        let inflight = up._inflight;
        let body = rbody
            .map_frame(move |f| {
                let _ = &inflight;
                f
            })
            .boxed();
        (Response::from_parts(rparts, body), endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_headers_append_and_overwrite() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        let info = ConnInfo {
            peer: "10.9.8.7:5555".parse().unwrap(),
            tls: false,
            sni: None,
            protocol: "h1",
        };
        forwarding(&mut h, &info, "api.example.com");
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.9.8.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
    }

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
