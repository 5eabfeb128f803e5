//! Clients towards the local app: a pooled HTTP/1.1 client and a shared h2c (prior
//! knowledge) client. Both dial the app's address whatever the request URI says, so the
//! URI can carry the request's own authority (which becomes `Host` or `:authority`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::errors::Body;

/// Largest response header section accepted from the app (1 MB policy).
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Connects to the app, ignoring the URI. A refused connection wakes the app probe, so
/// the control plane learns that the app is down (and stops sending traffic here) at
/// once rather than at the next periodic probe.
#[derive(Clone, Debug)]
pub struct AppConnector {
    pub addr: SocketAddr,
    pub refused: Arc<Notify>,
}

impl tower::Service<http::Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let addr = self.addr;
        let refused = self.refused.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(addr)
                .await
                .inspect_err(|_| refused.notify_one())?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tcp))
        })
    }
}

/// The HTTP clients of one inbound, towards its app.
#[derive(Clone)]
pub struct AppClients {
    pub addr: SocketAddr,
    pub h1: Client<AppConnector, Body>,
    pub h2: Client<AppConnector, Body>,
}

impl AppClients {
    /// Clients of the app at `addr`; `refused` is notified when it refuses a connection.
    pub fn new(addr: SocketAddr, refused: Arc<Notify>) -> Self {
        let connector = AppConnector { addr, refused };
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .http1_max_buf_size(MAX_HEADER_BYTES + 64 * 1024)
            .set_host(true)
            .build(connector.clone());
        // No keepalive pings and no adaptive window: gRPC servers count pings as strikes
        // and answer ENHANCE_YOUR_CALM (HTTP-CONFORMANCE item 60).
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(Duration::from_secs(300))
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_initial_stream_window_size(crate::tunnel::STREAM_WINDOW)
            .http2_initial_connection_window_size(crate::tunnel::CONNECTION_WINDOW)
            .http2_max_header_list_size(MAX_HEADER_BYTES as u32)
            .build(connector);
        AppClients { addr, h1, h2 }
    }
}
