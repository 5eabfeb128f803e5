//! The plain HTTP side port (`--http`): `/metrics` in Prometheus text format,
//! `/healthz`, which checks that the store answers, and the read-only dashboard
//! ([`crate::dashboard`]) at `/` with its JSON under `/api/`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::dashboard::Dashboard;
use crate::metrics::Metrics;
use crate::store::Store;

/// What the port serves.
pub struct HttpPort {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    pub dashboard: Arc<Dashboard>,
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}

async fn handle(
    req: Request<Incoming>,
    port: Arc<HttpPort>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            port.metrics.encode(),
        ),
        (&Method::GET, "/healthz") => match port.store.config_state().await {
            Ok(s) => reply(
                StatusCode::OK,
                "text/plain",
                format!("ok revision={}\n", s.revision),
            ),
            Err(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("store unavailable: {e}\n"),
            ),
        },
        _ => port.dashboard.handle(req).await,
    })
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, port: Arc<HttpPort>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let port = port.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, port.clone()));
            // A client that never finishes its request head does not hold a task for long.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
