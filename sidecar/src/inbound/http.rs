//! The inbound's HTTP servers. Both forward every request with [`app::forward`]:
//! bodies and trailers stream through (nothing is buffered whole), and an error stays
//! on its request, so one bad request never takes down the other streams of the
//! connection.

use std::convert::Infallible;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Caller, Delivery, app};
use crate::control::config::Selector;
use crate::errors::{Rejection, Respond};
use crate::http::limits;
use crate::serve::{self, Drain};
use crate::traffic::OpenConnection;

/// Serves a client inside a tunnel stream that speaks another HTTP version than the
/// app (`client_h2`): each request is forwarded per `selector`, fixed when the stream
/// was accepted, and counted for the stream's caller (`conn`).
pub async fn serve_translated<T>(
    io: T,
    client_h2: bool,
    selector: Selector,
    d: Arc<Delivery>,
    conn: OpenConnection,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let pair = conn.pair().clone();
    let svc = hyper::service::service_fn(move |req| {
        let (d, pair) = (d.clone(), pair.clone());
        // Boxed: hyper moves each stream's future into a task of its own, and the
        // state machine of `forward` is kilobytes; boxed, only a pointer moves.
        Box::pin(async move { Ok::<_, Infallible>(app::forward(req, selector, &d, &pair).await) })
    });
    let io = TokioIo::new(io);
    let r = if client_h2 {
        limits::mesh_h2_server().serve_connection(io, svc).await
    } else {
        limits::h1_server(limits::FIRST_BYTES_TIMEOUT)
            .serve_connection(io, svc)
            .with_upgrades()
            .await
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "translated connection ended with an error");
    }
    drop(conn);
}

/// Answers every request of a tunnel stream whose caller was refused with that
/// refusal (403 `WEFT-10`, or gRPC status 7 Trailers-Only, naming the rule), so an HTTP
/// client learns why instead of seeing its connection drop. The app is never dialled.
pub async fn serve_refusal<T>(io: T, client_h2: bool, denied: Rejection)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let denied = Arc::new(denied);
    let svc = hyper::service::service_fn(move |req| {
        let denied = denied.clone();
        async move { Ok::<_, Infallible>(Respond::to(&req).reject(&denied)) }
    });
    let io = TokioIo::new(io);
    let r = if client_h2 {
        limits::mesh_h2_server().serve_connection(io, svc).await
    } else {
        limits::h1_server(limits::FIRST_BYTES_TIMEOUT)
            .serve_connection(io, svc)
            .await
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "refused connection ended with an error");
    }
}

/// Serves a mesh HTTP connection from `caller` (a gateway): every request is admitted
/// for the caller, then forwarded per the selector in force when it arrives. When the
/// drain begins: GOAWAY, and the streams in progress finish.
pub async fn serve_mesh<T>(io: T, caller: Caller, d: Arc<Delivery>, drain: Drain)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The connection counts as one for its caller while it is open; its requests are
    // counted one by one.
    let open = d.counters(&caller).open();
    let pair = open.pair().clone();
    let caller = Arc::new(caller);
    let svc = hyper::service::service_fn(move |req| {
        let (d, caller, pair) = (d.clone(), caller.clone(), pair.clone());
        // Boxed for the reason given in `serve_translated`.
        Box::pin(async move {
            if let Err(denied) = d.admit(&caller) {
                return Ok::<_, Infallible>(Respond::to(&req).reject(&denied));
            }
            Ok(app::forward(req, d.selector(), &d, &pair).await)
        })
    });
    let builder = limits::mesh_h2_server();
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    serve::http_connection(conn, drain, std::future::pending(), "mesh HTTP").await;
    drop(open);
}
