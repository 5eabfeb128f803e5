//! The gateway's public listeners. HTTP: HTTP/1.1, h2c with prior knowledge (told apart
//! by one read of the preface) and the `Upgrade: h2c` handshake. HTTPS: TLS with ALPN
//! `h2` and `http/1.1` (a client offering neither is refused during the handshake).
//!
//! Time limits per connection: the first bytes (TLS ClientHello, HTTP/2 preface or the
//! first request line) and, after `Upgrade: h2c`, the client's preface within 30 s
//! ([`limits::first_bytes_timeout`]: the idle timeout when it is shorter); then the
//! connection lives while it has requests in progress, closes gracefully once idle for
//! `--idle-timeout`, and is closed when a client leaves response data waiting without
//! taking any for the progress timeout (see [`super::body`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::body::{ConnClock, ResponseBody};
use super::h2c_upgrade;
use super::proxy::{ConnInfo, Gateway};
use crate::errors::full;
use crate::http::limits;
use crate::http::{authority, headers};
use crate::inbound::detect::{Rewind, sniff};
use crate::serve::{self, Drain};

/// Serves HTTP/2 on `io` until it ends, idles, stalls, or the drain closes it.
pub async fn serve_h2<T>(io: T, gw: Arc<Gateway>, info: ConnInfo, drain: Drain)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let clock = info.clock.clone();
    let idle = gw.idle_timeout;
    let svc = hyper::service::service_fn(move |req| {
        let (gw, info) = (gw.clone(), info.clone());
        // Boxed: hyper moves each stream's future into its own task, several times;
        // the request's whole state machine (several KB) would be copied each time.
        let handled = Box::pin(gw.handle(info, req));
        async move { Ok::<_, Infallible>(handled.await) }
    });
    let builder = limits::public_h2_server();
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    serve::http_connection(conn, drain, clock.expired(idle), "client HTTP/2").await;
}

/// Serves HTTP/1.1 on `io` (with WebSocket upgrades, and h2c upgrades when `allow_h2c`).
pub async fn serve_h1<T>(io: T, gw: Arc<Gateway>, info: ConnInfo, allow_h2c: bool, drain: Drain)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = Arc::new(info);
    let clock = info.clock.clone();
    let idle = gw.idle_timeout;
    let upgrade_drain = drain.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let (gw, info, drain) = (gw.clone(), info.clone(), upgrade_drain.clone());
        async move {
            // The same Host rules as every other request: one that fails them is not
            // upgraded, and gets its 400 from the ordinary path.
            if allow_h2c
                && h2c_upgrade::wants_h2c(&req)
                && authority::of_request(&req, None).is_ok()
            {
                return Ok::<_, Infallible>(upgrade_h2c(req, gw, &info, drain));
            }
            // Boxed for the reason given in `serve_h2`.
            Ok(Box::pin(gw.handle(info, req)).await)
        }
    });
    let conn = limits::h1_server(limits::first_bytes_timeout(idle))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    serve::http_connection(conn, drain, clock.expired(idle), "client HTTP/1.1").await;
}

/// Answers 101 and serves the connection as HTTP/2 with the request as stream 1.
fn upgrade_h2c(
    mut req: http::Request<Incoming>,
    gw: Arc<Gateway>,
    info: &ConnInfo,
    drain: Drain,
) -> Response<ResponseBody> {
    let record = super::access::AccessRecord {
        started: std::time::Instant::now(),
        client: info.peer,
        host: String::new(),
        method: req.method().clone(),
        path: String::new(),
        status: 0,
        inbound: "h1",
        upstream_protocol: "",
        upstream: String::new(),
        grpc: false,
        error_code: "",
    };
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut forwarded = http::Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .body(())
        .unwrap_or_default();
    *forwarded.headers_mut() = req.headers().clone();
    headers::strip_hop_by_hop(forwarded.headers_mut());
    let frame = h2c_upgrade::headers_frame(&forwarded, &authority);
    let (status, body) = match frame {
        Some(frame) => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            let upgraded = conn_info(info.peer, false, None, "h2c-upgrade");
            tokio::spawn(serve_upgraded(on_upgrade, frame, gw, upgraded, drain));
            (StatusCode::SWITCHING_PROTOCOLS, "")
        }
        // Too big to inject: the client may retry without the (optional) upgrade.
        None => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request headers too large for the h2c upgrade; retry without it\n",
        ),
    };
    let record = super::access::AccessRecord {
        status: status.as_u16(),
        ..record
    };
    let mut r = Response::new(ResponseBody::made(full(body), info.clock.request(), record));
    *r.status_mut() = status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let h = r.headers_mut();
        h.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("Upgrade"),
        );
        h.insert(http::header::UPGRADE, http::HeaderValue::from_static("h2c"));
    }
    r
}

/// Serves a connection upgraded to h2c once the client's preface arrived (in time),
/// with the upgraded request injected as stream 1.
async fn serve_upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    frame: bytes::Bytes,
    gw: Arc<Gateway>,
    info: ConnInfo,
    drain: Drain,
) {
    let Ok(io) = on_upgrade.await else {
        return;
    };
    let mut io = TokioIo::new(io);
    let preamble = tokio::time::timeout(
        limits::first_bytes_timeout(gw.idle_timeout),
        h2c_upgrade::preamble(&mut io, frame),
    )
    .await;
    match preamble {
        Ok(Ok(prefix)) => serve_h2(Rewind::new(prefix, io), gw, info, drain).await,
        Ok(Err(e)) => tracing::debug!(error = %e, "h2c upgrade failed"),
        Err(_) => tracing::debug!("h2c-upgraded client sent no preface in time"),
    }
}

fn conn_info(peer: SocketAddr, tls: bool, sni: Option<String>, protocol: &'static str) -> ConnInfo {
    ConnInfo {
        peer,
        tls,
        sni,
        protocol,
        clock: Arc::new(ConnClock::default()),
    }
}

/// Serves one plain connection: HTTP/2 prior knowledge or HTTP/1.1, by its first bytes.
pub async fn plain(mut tcp: TcpStream, peer: SocketAddr, gw: Arc<Gateway>, drain: Drain) {
    let first_bytes = limits::first_bytes_timeout(gw.idle_timeout);
    let Ok(Ok((h2, prefix))) = tokio::time::timeout(first_bytes, sniff(&mut tcp)).await else {
        return;
    };
    let io = Rewind::new(prefix, tcp);
    if h2 {
        serve_h2(io, gw, conn_info(peer, false, None, "h2c"), drain).await;
    } else {
        serve_h1(io, gw, conn_info(peer, false, None, "h1"), true, drain).await;
    }
}

/// Serves one TLS connection: HTTP/2 or HTTP/1.1, by ALPN.
pub async fn secure(
    tcp: TcpStream,
    peer: SocketAddr,
    gw: Arc<Gateway>,
    tls: Arc<rustls::ServerConfig>,
    drain: Drain,
) {
    let accepted = tokio::time::timeout(
        limits::first_bytes_timeout(gw.idle_timeout),
        tokio_rustls::TlsAcceptor::from(tls).accept(tcp),
    )
    .await;
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let (h2, sni) = {
        let conn = stream.get_ref().1;
        (
            conn.alpn_protocol() == Some(b"h2"),
            conn.server_name()
                .and_then(|n| authority::parse(n.as_bytes()).ok())
                .map(|a| authority::route_host(&a)),
        )
    };
    if h2 {
        serve_h2(stream, gw, conn_info(peer, true, sni, "h2"), drain).await;
    } else {
        // h2c upgrades are never honoured over TLS (RFC 7540 §3.2).
        serve_h1(stream, gw, conn_info(peer, true, sni, "h1"), false, drain).await;
    }
}
