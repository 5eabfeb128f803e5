//! The listener: accepts connections, serves each with hyper in the protocol the mode
//! allows, and shuts down gracefully on SIGTERM or Ctrl-C.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::service::Routes;

use crate::body::{BoxError, RespBody};
use crate::journal::Journal;
use crate::{Cli, Mode, grpc};

/// How long open connections get to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(10);

/// HTTP/2 flow-control windows: large enough that a bulk transfer is not window-bound.
const H2_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const H2_CONN_WINDOW: u32 = 16 * 1024 * 1024;

/// What every connection's service shares.
struct Shared {
    name: String,
    /// The gRPC router, in `grpc` mode only.
    grpc: Option<Routes>,
    journal: Arc<Journal>,
}

/// The hyper service of one connection.
#[derive(Clone)]
struct AppService {
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for AppService {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let resp = match &this.shared.grpc {
                Some(routes) if grpc::is_grpc(&req) => {
                    grpc::serve(routes.clone(), this.peer, req).await
                }
                _ => {
                    let ctx = crate::http::Ctx {
                        app: &this.shared.name,
                        journal: &this.shared.journal,
                        peer: this.peer,
                    };
                    crate::http::handle(ctx, req).await
                }
            };
            Ok(resp)
        })
    }
}

/// The connection builder of a mode. `h1` and `h2c` use hyper's single-protocol
/// servers, so a client speaking the other version is refused (an h2 preface sent to
/// `h1` is answered with an error and the connection closed; an h1 request sent to
/// `h2c` gets a GOAWAY); `auto` picks per connection by the h2 preface. `raw` is no HTTP.
enum Protocols {
    H1(http1::Builder),
    H2(http2::Builder<TokioExecutor>),
    Auto(auto::Builder<TokioExecutor>),
    Raw,
}

impl Protocols {
    fn for_mode(mode: Mode) -> Self {
        match mode {
            Mode::H1 => Protocols::H1(h1_builder()),
            Mode::H2c | Mode::Grpc => {
                let mut builder = http2::Builder::new(TokioExecutor::new());
                builder
                    .timer(TokioTimer::new())
                    .enable_connect_protocol()
                    .max_header_list_size(MAX_HEADER_BYTES as u32)
                    .initial_stream_window_size(H2_STREAM_WINDOW)
                    .initial_connection_window_size(H2_CONN_WINDOW);
                Protocols::H2(builder)
            }
            Mode::Auto => {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .max_buf_size(MAX_HEADER_BYTES)
                    .max_headers(2_000);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_header_list_size(MAX_HEADER_BYTES as u32)
                    .enable_connect_protocol()
                    .initial_stream_window_size(H2_STREAM_WINDOW)
                    .initial_connection_window_size(H2_CONN_WINDOW);
                Protocols::Auto(builder)
            }
            Mode::Raw => Protocols::Raw,
        }
    }
}

/// Header sections up to the mesh's 1 MB policy (plus room for the request line), so
/// the app never is the hop that refuses what the mesh carried.
const MAX_HEADER_BYTES: usize = (1 << 20) + 64 * 1024;

fn h1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(2_000);
    builder
}

/// Runs the app until SIGTERM or Ctrl-C, then lets open connections finish.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cli.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: pick a free address with --listen",
            cli.listen
        )
    })?;
    let local = listener
        .local_addr()
        .context("reading the listen address")?;
    let grpc = match cli.mode {
        Mode::Grpc => Some(grpc::routes(cli.name.clone()).await),
        _ => None,
    };
    let shared = Arc::new(Shared {
        name: cli.name.clone(),
        grpc,
        journal: Arc::default(),
    });
    let protocols = Arc::new(Protocols::for_mode(cli.mode));
    tracing::info!(addr = %local, mode = ?cli.mode, name = %cli.name, "weft-demo-app listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut signal = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, "set_nodelay: {err}");
                    }
                    let service = AppService { shared: shared.clone(), peer };
                    connections.spawn(serve_connection(
                        protocols.clone(),
                        TokioIo::new(stream),
                        service,
                        stop_rx.clone(),
                    ));
                }
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut signal => break,
        }
    }
    drop(listener);
    tracing::info!(open = connections.len(), "shutting down");
    // Receivers only fail to get this if they are gone already.
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "grace period over: closing the remaining connections"
        );
        connections.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves one connection; on shutdown, asks it to finish gracefully (h1: close after the
/// current response; h2: GOAWAY) and waits for it.
async fn serve_connection(
    protocols: Arc<Protocols>,
    io: TokioIo<TcpStream>,
    service: AppService,
    stop: watch::Receiver<bool>,
) {
    let peer = service.peer;
    let result = match protocols.as_ref() {
        Protocols::H1(builder) => {
            let conn = builder.serve_connection(io, service).with_upgrades();
            drive(conn, stop, |conn| conn.graceful_shutdown()).await
        }
        Protocols::H2(builder) => {
            let conn = builder.serve_connection(io, service);
            drive(conn, stop, |conn| conn.graceful_shutdown()).await
        }
        Protocols::Auto(builder) => {
            let conn = builder.serve_connection_with_upgrades(io, service);
            drive(conn, stop, |conn| conn.graceful_shutdown()).await
        }
        Protocols::Raw => {
            // No graceful form: on shutdown the connection is closed with the others.
            crate::raw::serve(io.into_inner(), &service.shared.name)
                .await
                .map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(err) => tracing::info!(%peer, "connection ended with an error: {err}"),
    }
}

/// Drives a connection to its end; when `stop` is set first, calls `graceful` on it
/// and keeps driving it until it is done.
async fn drive<C, T, E>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    graceful: impl FnOnce(Pin<&mut C>),
) -> Result<T, String>
where
    C: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut stop) => {
            graceful(conn.as_mut());
            conn.await
        }
    };
    result.map_err(|err| error_chain(err.into().as_ref()))
}

/// An error and its sources, joined with ": " (hyper's own message is often just
/// "http2 error").
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
                }
                return;
            }
            Err(err) => tracing::warn!("cannot watch SIGTERM ({err}); stopping on Ctrl-C only"),
        }
    }
    match tokio::signal::ctrl_c().await {
        Ok(()) => tracing::info!("Ctrl-C received"),
        Err(err) => {
            tracing::warn!("cannot watch Ctrl-C ({err}); running until killed");
            std::future::pending::<()>().await;
        }
    }
}
