//! Delivering a tunnel stream to the local app, per the service's protocol selector
//! (DESIGN §2): `tcp` splices; `http`, `http2` and `grpc` splice too when the client
//! speaks the app's HTTP version, and translate request by request when it does not.

pub mod app;
pub mod detect;
pub mod http;
pub mod translate;
pub mod ws;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::control::config::Selector;
use crate::metrics::Metrics;
use app::AppClients;

/// Copy buffer per direction for spliced streams.
const SPLICE_BUF: usize = 64 * 1024;

/// What an inbound needs to deliver streams.
pub struct Delivery {
    /// The local service's name (for messages that name the fix).
    pub service: String,
    pub apps: AppClients,
    pub metrics: Arc<Metrics>,
}

/// Copies bytes both ways until both sides are done; half-closes propagate.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, SPLICE_BUF, SPLICE_BUF).await
}

/// Delivers one tunnel stream, already connected to the app, per `selector`.
pub async fn deliver<T>(selector: Selector, mut tunnel: T, mut app: TcpStream, d: Arc<Delivery>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app_h2 = match selector {
        Selector::Http => false,
        Selector::Http2 | Selector::Grpc => true,
        Selector::Tcp => {
            let r = splice(&mut tunnel, &mut app).await;
            d.metrics.record_splice("tcp", &r);
            return;
        }
    };
    let (client_h2, peeked) = match detect::sniff(&mut tunnel).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "tunnel stream ended before the first request");
            return;
        }
    };
    if client_h2 == app_h2 {
        // Same version on both sides: the bytes go through untouched.
        if app.write_all(&peeked).await.is_err() {
            return;
        }
        let r = splice(&mut tunnel, &mut app).await;
        d.metrics
            .record_splice(if app_h2 { "h2" } else { "h1" }, &r);
        return;
    }
    drop(app);
    let io = detect::Rewind::new(peeked, tunnel);
    if client_h2 {
        http::serve_h2_to_h1(io, d).await;
    } else {
        http::serve_h1_to_h2(io, d).await;
    }
}
