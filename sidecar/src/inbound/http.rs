//! Request-by-request translation at the last hop, when the client inside the tunnel
//! and the app speak different HTTP versions. Bodies and trailers stream through
//! (nothing is buffered whole); errors stay on their request, so one bad request never
//! takes down the other streams of the connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Delivery;
use super::app::MAX_HEADER_BYTES;
use super::translate;
use super::ws;
use crate::errors::{Body, ERROR_CODE_HEADER, MeshError, grpc_to_http_message, is_grpc};

fn reject(e: (MeshError, String), grpc: bool) -> Response<Body> {
    e.0.response(&e.1, grpc)
}

/// Serves an HTTP/2 client and forwards each request to an HTTP/1.1 app.
pub async fn serve_h2_to_h1<T>(io: T, d: Arc<Delivery>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let d = d.clone();
        async move { Ok::<_, Infallible>(h2_request(req, d).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .initial_stream_window_size(crate::tunnel::STREAM_WINDOW)
        .initial_connection_window_size(crate::tunnel::CONNECTION_WINDOW)
        .enable_connect_protocol();
    if let Err(e) = builder.serve_connection(TokioIo::new(io), svc).await {
        tracing::debug!(error = %e, "translated h2 connection ended with an error");
    }
}

async fn h2_request(mut req: Request<Incoming>, d: Arc<Delivery>) -> Response<Body> {
    let started = Instant::now();
    let grpc = is_grpc(&req);
    if grpc {
        d.metrics.record_request("h2", "h1", 200, started);
        return MeshError::GrpcToHttp1.response(&grpc_to_http_message(&d.service), true);
    }
    if req.method() == Method::CONNECT {
        if ws::is_extended_websocket(&req) {
            let resp = ws::h2_to_h1(req, &d).await;
            d.metrics
                .record_request("h2", "h1", resp.status().as_u16(), started);
            return resp;
        }
        return MeshError::BadRequest.response("CONNECT is not supported here", false);
    }
    if let Err(e) = translate::h2_to_h1(&mut req) {
        return reject(e, false);
    }
    let req = req.map(|b| b.boxed());
    let resp = match d.apps.h1.request(req).await {
        Ok(resp) => resp,
        Err(e) => return app_failed(&d, &e, ("h2", "h1"), started, false),
    };
    d.metrics
        .record_request("h2", "h1", resp.status().as_u16(), started);
    finish_response(resp)
}

/// The answer when a request could not be carried to the app. The app refusing the
/// connection means nothing was delivered: 503 `WEFT-2` (this endpoint has no healthy
/// app), which tells a gateway it may send the request to another endpoint. Any other
/// failure may have reached the app: 502 `WEFT-3`.
fn app_failed(
    d: &Delivery,
    e: &hyper_util::client::legacy::Error,
    versions: (&'static str, &'static str),
    started: Instant,
    grpc: bool,
) -> Response<Body> {
    tracing::debug!(error = %e, "app request failed");
    let (err, msg) = if e.is_connect() {
        (
            MeshError::NoEndpoint,
            format!("the app at {} is not accepting connections", d.apps.addr),
        )
    } else {
        (
            MeshError::UpstreamFailed,
            format!("the app at {} failed: {e}", d.apps.addr),
        )
    };
    d.metrics
        .record_request(versions.0, versions.1, err.status().as_u16(), started);
    err.response(&msg, grpc)
}

/// Serves an HTTP/1.1 client and forwards each request to an h2c app.
pub async fn serve_h1_to_h2<T>(io: T, d: Arc<Delivery>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let d = d.clone();
        async move { Ok::<_, Infallible>(h1_request(req, d).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .max_buf_size(MAX_HEADER_BYTES + 64 * 1024)
        .max_headers(1000)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "translated h1 connection ended with an error");
    }
}

async fn h1_request(mut req: Request<Incoming>, d: Arc<Delivery>) -> Response<Body> {
    let started = Instant::now();
    let grpc = is_grpc(&req);
    if ws::is_h1_websocket(&req) {
        let resp = ws::h1_to_h2(req, &d).await;
        d.metrics
            .record_request("h1", "h2", resp.status().as_u16(), started);
        return resp;
    }
    if req.method() == Method::CONNECT {
        return MeshError::BadRequest.response("CONNECT is not supported here", false);
    }
    if let Err(e) = translate::h1_to_h2(&mut req, grpc) {
        return reject(e, false);
    }
    let req = req.map(|b| b.boxed());
    let resp = match d.apps.h2.request(req).await {
        Ok(resp) => resp,
        Err(e) => return app_failed(&d, &e, ("h1", "h2"), started, grpc),
    };
    d.metrics
        .record_request("h1", "h2", resp.status().as_u16(), started);
    finish_response(resp)
}

/// Strips what must not cross, and the mesh's reserved header from the app.
fn finish_response(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    translate::response(&mut parts.headers);
    parts.headers.remove(ERROR_CODE_HEADER);
    Response::from_parts(parts, body.boxed())
}
