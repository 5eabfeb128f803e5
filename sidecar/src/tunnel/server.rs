//! The inbound port (`--inbound`, default :15008): accepts only peers whose certificate
//! chains to the mesh trust bundle, then serves what the handshake's ALPN says:
//!
//! - `h2` ([`MeshAlpn::Tunnel`]): `CONNECT` streams carrying raw bytes. A stream is
//!   answered 200 only after the app connection is open; a refused app is a 503 that the
//!   caller retries on another endpoint before any byte was sent.
//! - `weft-http/2` ([`MeshAlpn::Http`]): plain HTTP/2 from a gateway, served by the
//!   inbound's translating server ([`crate::inbound::http::serve_mesh`]).
//!
//! The peer's verified SPIFFE id is the [`Caller`] of every stream and request.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::net::TcpStream;

use super::io::H2Io;
use super::{CONNECT_TIMEOUT, CONNECTION_WINDOW, MAX_FRAME, MAX_STREAMS, STREAM_WINDOW};
use crate::inbound::{Caller, Delivery, deliver, http::serve_mesh, refuse};
use crate::metrics::{ActiveGuard, ResultLabel};
use crate::serve::Drain;
use crate::tls::{MeshAlpn, MeshTls};

/// What the inbound port serves.
pub struct Inbound {
    pub tls: Arc<MeshTls>,
    pub delivery: Arc<Delivery>,
}

/// Serves one accepted connection until it ends; when the drain begins, GOAWAY and
/// the streams in progress finish.
pub async fn connection(inbound: Arc<Inbound>, tcp: TcpStream, peer: SocketAddr, drain: Drain) {
    crate::net::mesh_socket(&tcp);
    let metrics = inbound.delivery.metrics.clone();
    let count = |result| {
        metrics
            .connections
            .get_or_create(&ResultLabel {
                direction: "inbound",
                result,
            })
            .inc();
    };
    let config = match inbound.tls.server() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no usable server certificate");
            return;
        }
    };
    let tls = match tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        tokio_rustls::TlsAcceptor::from(config).accept(tcp),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            count("tls_refused");
            tracing::info!(%peer, error = %e, "inbound TLS refused");
            return;
        }
        Err(_) => {
            count("tls_timeout");
            return;
        }
    };
    let (session, serial, alpn) = {
        let s = tls.get_ref().1;
        let leaf = s.peer_certificates().and_then(|c| c.first());
        (
            weft_certs::peer_spiffe_id(s.peer_certificates()),
            leaf.and_then(|l| weft_certs::serial_hex(l).ok()),
            MeshAlpn::of(s.alpn_protocol()),
        )
    };
    // The verifier accepted exactly one SPIFFE id; a peer without one never gets here.
    let (Some(id), Some(serial), Some(alpn)) = (session, serial, alpn) else {
        count("tls_refused");
        tracing::info!(%peer, "inbound connection without a SPIFFE id or a known ALPN refused");
        return;
    };
    let caller = Caller { id, serial };
    count("accepted");
    let _active = ActiveGuard::new(&metrics, "inbound");
    tracing::debug!(%peer, %caller, ?alpn, "inbound connection");
    match alpn {
        MeshAlpn::Http => serve_mesh(tls, caller, inbound.delivery.clone(), drain).await,
        MeshAlpn::Tunnel => tunnel(inbound, tls, caller, peer, drain).await,
    }
}

/// Serves `CONNECT` tunnel streams.
async fn tunnel(
    inbound: Arc<Inbound>,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    caller: Caller,
    peer: SocketAddr,
    mut drain: Drain,
) {
    let mut conn = match h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buffer_size(1024 * 1024)
        .handshake::<_, Bytes>(tls)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "inbound h2 handshake failed");
            return;
        }
    };
    let caller = Arc::new(caller);
    let mut draining = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let (inbound, caller) = (inbound.clone(), caller.clone());
                    tokio::spawn(async move { stream(inbound, &caller, req, respond).await });
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "inbound tunnel connection error");
                    return;
                }
                None => return,
            },
            _ = drain.signaled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
        }
    }
}

fn answer(respond: &mut SendResponse<Bytes>, status: StatusCode) {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    let _ = respond.send_response(resp, true);
}

async fn stream(
    inbound: Arc<Inbound>,
    caller: &Caller,
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    if req.method() != Method::CONNECT {
        answer(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
        return;
    }
    let d = &inbound.delivery;
    let service = req.uri().host().unwrap_or_default();
    if service != d.service {
        // The caller's endpoint list is stale: this instance is not that service.
        tracing::info!(asked = service, serving = %d.service, "CONNECT for another service refused");
        answer(&mut respond, StatusCode::MISDIRECTED_REQUEST);
        return;
    }
    // New streams use the selector (and permissions) in force now; open ones keep theirs.
    let selector = d.selector();
    if let Err(denied) = d.admit(caller) {
        // Refused before the app is even dialled: no byte reaches it. A raw stream is
        // refused outright (the caller closes its client's connection); an HTTP client
        // is told why, request by request.
        tracing::info!(%caller, service = %d.service, reason = %denied, "tunnel stream refused");
        if !selector.is_http() {
            answer(&mut respond, denied.error.status());
            return;
        }
        let Ok(send) = respond.send_response(Response::new(()), false) else {
            return;
        };
        refuse(H2Io::new(send, req.into_body()), denied).await;
        return;
    }
    let app = match tokio::time::timeout(CONNECT_TIMEOUT, d.apps.connect()).await {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => {
            tracing::warn!(app = %d.apps.addr(), error = %e, "app refused the connection");
            answer(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
        Err(_) => {
            answer(&mut respond, StatusCode::GATEWAY_TIMEOUT);
            return;
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(s) => s,
        Err(_) => return,
    };
    let io = H2Io::new(send, req.into_body());
    let conn = d.counters(caller).open();
    deliver(selector, io, app, inbound.delivery.clone(), conn).await;
}
