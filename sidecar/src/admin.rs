//! The dataplane's admin endpoint (`--admin`, loopback by default): `/metrics`,
//! `/ready`, `/config` and `/certs`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::config::MeshConfig;
use crate::metrics::Metrics;
use crate::tls::MeshTls;
use crate::tunnel::client::TunnelPool;

/// What the admin endpoint reports on.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub config: watch::Receiver<Arc<MeshConfig>>,
    pub tls: Arc<MeshTls>,
    /// The tunnel pool of a sidecar (gateways and ingresses have none).
    pub pool: Option<Arc<TunnelPool>>,
    /// None when ready; otherwise what is still missing.
    pub not_ready: watch::Receiver<Option<String>>,
}

fn reply(status: StatusCode, ct: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ct) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn handle(req: &Request<Incoming>, s: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let creds = s.tls.credentials();
            s.metrics.cert_expiry.set(creds.identity.not_after());
            if let Some(pool) = &s.pool {
                s.metrics.tunnel_pool.set(pool.size() as i64);
            }
            s.metrics
                .config_version
                .set(s.config.borrow().version as i64);
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                s.metrics.encode(),
            )
        }
        "/ready" => match s.not_ready.borrow().clone().or_else(|| expired(&s.tls)) {
            None => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Some(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        "/config" => {
            let cfg = s.config.borrow().clone();
            match serde_json::to_string_pretty(&*cfg) {
                Ok(j) => reply(StatusCode::OK, "application/json", j + "\n"),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    e.to_string(),
                ),
            }
        }
        "/certs" => {
            let c = s.tls.credentials();
            let body = serde_json::json!({
                "spiffe_id": c.identity.spiffe_id().uri(),
                "not_before": c.identity.not_before(),
                "not_after": c.identity.not_after(),
                "chain_pem": c.identity.chain_pem(),
                "trust_bundle_sha256": c.bundle.sha256_hexes(),
            });
            reply(StatusCode::OK, "application/json", body.to_string() + "\n")
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /ready, /config or /certs\n".into(),
        ),
    }
}

/// Why a dataplane whose certificate expired is not ready: peers refuse it.
fn expired(tls: &crate::tls::MeshTls) -> Option<String> {
    let not_after = tls.credentials().identity.not_after();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    (not_after <= now).then(|| {
        format!(
            "the mesh certificate expired at {not_after} (unix) and was not renewed; the log says why"
        )
    })
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let r = handle(&req, &state);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
