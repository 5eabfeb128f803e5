//! The gateway's public listeners. HTTP: HTTP/1.1, h2c with prior knowledge (told apart
//! by one read of the preface) and the `Upgrade: h2c` handshake. HTTPS: TLS with ALPN
//! `h2` and `http/1.1` (a client offering neither is refused during the handshake).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::h2c_upgrade;
use super::idle::{Activity, Tracked};
use super::proxy::{ConnInfo, Gateway};
use crate::errors::{Body, full};
use crate::inbound::app::MAX_HEADER_BYTES;
use crate::inbound::detect::{Rewind, sniff};
use crate::inbound::translate;

/// How long a TLS client may take to finish the handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

fn h2_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        // A little above the 1 MB policy, so the gateway's own 431 (with its code)
        // answers first; far beyond it, the h2 layer refuses by itself.
        .max_header_list_size((MAX_HEADER_BYTES + 64 * 1024) as u32)
        .max_concurrent_streams(250)
        .enable_connect_protocol()
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Serves HTTP/2 on `io`; after `idle` without traffic, GOAWAY and close.
pub async fn serve_h2<T>(io: T, gw: Arc<Gateway>, info: ConnInfo)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::default();
    let idle = gw.idle_timeout;
    let svc = hyper::service::service_fn(move |req| {
        let (gw, info) = (gw.clone(), info.clone());
        async move { Ok::<_, Infallible>(gw.handle(info, req).await) }
    });
    let builder = h2_builder();
    let mut conn = std::pin::pin!(
        builder.serve_connection(TokioIo::new(Tracked::new(io, activity.clone())), svc)
    );
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "client HTTP/2 connection ended with an error");
                }
                return;
            }
            _ = activity.idle(idle), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Serves HTTP/1.1 on `io` (with WebSocket upgrades, and h2c upgrades when `allow_h2c`).
pub async fn serve_h1<T>(io: T, gw: Arc<Gateway>, info: ConnInfo, allow_h2c: bool)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = gw.idle_timeout;
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let (gw, info) = (gw.clone(), info.clone());
        async move {
            if allow_h2c && h2c_upgrade::wants_h2c(&req) {
                return Ok::<_, Infallible>(upgrade_h2c(req, gw, info));
            }
            Ok(gw.handle(info, req).await)
        }
    });
    let activity = Activity::default();
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(MAX_HEADER_BYTES + 64 * 1024)
        .max_headers(2_000)
        .serve_connection(TokioIo::new(Tracked::new(io, activity.clone())), svc)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "client HTTP/1.1 connection ended with an error");
                }
                return;
            }
            _ = activity.idle(idle), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Answers 101 and serves the connection as HTTP/2 with the request as stream 1.
fn upgrade_h2c(
    mut req: http::Request<Incoming>,
    gw: Arc<Gateway>,
    info: ConnInfo,
) -> Response<Body> {
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut forwarded = http::Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .body(())
        .unwrap_or_default();
    *forwarded.headers_mut() = req.headers().clone();
    translate::strip_hop_by_hop(forwarded.headers_mut());
    let Some(frame) = h2c_upgrade::headers_frame(&forwarded, &authority) else {
        // Too big to inject: serve it as plain HTTP/1.1 instead (the upgrade is optional).
        let mut r = Response::new(full(
            "request headers too large for the h2c upgrade; retry without it\n",
        ));
        *r.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return r;
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        match h2c_upgrade::preamble(&mut io, frame).await {
            Ok(prefix) => {
                let info = ConnInfo {
                    protocol: "h2c-upgrade",
                    ..info
                };
                serve_h2(Rewind::new(prefix, io), gw, info).await;
            }
            Err(e) => tracing::debug!(error = %e, "h2c upgrade failed"),
        }
    });
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    r.headers_mut()
        .insert(http::header::UPGRADE, http::HeaderValue::from_static("h2c"));
    r
}

async fn plain(tcp: TcpStream, gw: Arc<Gateway>) {
    let Ok(peer) = tcp.peer_addr() else { return };
    let _ = tcp.set_nodelay(true);
    let mut tcp = tcp;
    let sniffed = tokio::time::timeout(gw.idle_timeout, sniff(&mut tcp)).await;
    let Ok(Ok((h2, prefix))) = sniffed else {
        return;
    };
    let io = Rewind::new(prefix, tcp);
    let info = ConnInfo {
        peer,
        tls: false,
        sni: None,
        protocol: if h2 { "h2c" } else { "h1" },
    };
    if h2 {
        serve_h2(io, gw, info).await;
    } else {
        serve_h1(io, gw, info, true).await;
    }
}

async fn secure(tcp: TcpStream, gw: Arc<Gateway>, tls: Arc<rustls::ServerConfig>) {
    let Ok(peer) = tcp.peer_addr() else { return };
    let _ = tcp.set_nodelay(true);
    let accepted = tokio::time::timeout(
        TLS_HANDSHAKE_TIMEOUT,
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
            conn.server_name().and_then(super::routes::normalize_host),
        )
    };
    let info = ConnInfo {
        peer,
        tls: true,
        sni,
        protocol: if h2 { "h2" } else { "h1" },
    };
    if h2 {
        serve_h2(stream, gw, info).await;
    } else {
        // h2c upgrades are never honoured over TLS (RFC 7540 §3.2).
        serve_h1(stream, gw, info, false).await;
    }
}

/// Accepts connections until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let gw = gw.clone();
                    match tls.clone() {
                        Some(tls) => tokio::spawn(secure(tcp, gw, tls)),
                        None => tokio::spawn(plain(tcp, gw)),
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}
