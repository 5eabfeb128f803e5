//! The inbound tunnel listener (`--inbound`, default :15008): accepts only peers whose
//! certificate chains to the mesh trust bundle, then serves their CONNECT streams. A
//! stream is answered 200 only after the app connection is open; a refused app is a 503
//! that the caller retries on another endpoint before any byte was sent.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::io::H2Io;
use super::{CONNECT_TIMEOUT, CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use crate::control::config::MeshConfig;
use crate::inbound::{Delivery, deliver};
use crate::metrics::{ActiveGuard, ResultLabel};
use crate::tls::MeshTls;

/// What the inbound serves.
pub struct Inbound {
    pub service: String,
    pub app: SocketAddr,
    pub config: watch::Receiver<Arc<MeshConfig>>,
    pub tls: Arc<MeshTls>,
    pub delivery: Arc<Delivery>,
    /// Told when the app refuses a connection, so the prober checks at once.
    pub app_refused: Arc<tokio::sync::Notify>,
}

/// Serves until `shutdown` flips to true; then stops accepting and sends GOAWAY on
/// every connection, whose streams finish on their own.
pub async fn serve(
    listener: TcpListener,
    inbound: Arc<Inbound>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let (inbound, shutdown) = (inbound.clone(), shutdown.clone());
                    tokio::spawn(async move { connection(inbound, tcp, peer, shutdown).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn connection(
    inbound: Arc<Inbound>,
    tcp: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
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
    let _ = tcp.set_nodelay(true);
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
    let peer_id = weft_certs::peer_spiffe_id(tls.get_ref().1.peer_certificates())
        .map(|id| id.uri())
        .unwrap_or_default();
    count("accepted");
    let _active = ActiveGuard::new(&metrics, "inbound");
    let mut conn = match h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(4096)
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
    tracing::debug!(%peer, peer_id = %peer_id, "inbound tunnel connection");
    let mut draining = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    let inbound = inbound.clone();
                    tokio::spawn(async move { stream(inbound, req, respond).await });
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "inbound tunnel connection error");
                    return;
                }
                None => return,
            },
            _ = shutdown.changed(), if !draining => {
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
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    if req.method() != Method::CONNECT {
        answer(&mut respond, StatusCode::METHOD_NOT_ALLOWED);
        return;
    }
    let service = req.uri().host().unwrap_or_default();
    if service != inbound.service {
        // The caller's endpoint list is stale: this instance is not that service.
        tracing::info!(asked = service, serving = %inbound.service, "CONNECT for another service refused");
        answer(&mut respond, StatusCode::MISDIRECTED_REQUEST);
        return;
    }
    // New connections use the selector in force now; open ones keep theirs.
    let selector = inbound.config.borrow().protocol_of(&inbound.service);
    let app = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(inbound.app)).await {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => {
            tracing::warn!(app = %inbound.app, error = %e, "app refused the connection");
            inbound.app_refused.notify_one();
            answer(&mut respond, StatusCode::SERVICE_UNAVAILABLE);
            return;
        }
        Err(_) => {
            answer(&mut respond, StatusCode::GATEWAY_TIMEOUT);
            return;
        }
    };
    let _ = app.set_nodelay(true);
    let send = match respond.send_response(Response::new(()), false) {
        Ok(s) => s,
        Err(_) => return,
    };
    let io = H2Io::new(send, req.into_body());
    deliver(selector, io, app, inbound.delivery.clone()).await;
}
