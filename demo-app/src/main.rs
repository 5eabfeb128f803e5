//! `weft-demo-app`: the app Weft's tests and demo put behind the mesh.
//!
//! It answers HTTP/1.1, h2c (prior knowledge) or gRPC on one port and reports what it
//! received (HTTP version, headers, trailers, body size), so a test can assert what
//! reached the app. See [`http`] for the endpoints, [`ws`] for the WebSocket echo,
//! [`grpc`] for the `weft.demo.v1.Echo` service and [`raw`] for the plain TCP mode.

mod body;
mod grpc;
mod http;
mod journal;
mod raw;
mod report;
mod server;
mod ws;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Which protocols the app accepts on its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// HTTP/1.1 only; an HTTP/2 preface is answered with an error and the connection closed.
    H1,
    /// HTTP/2 prior knowledge (h2c) only, with RFC 8441 extended CONNECT enabled.
    H2c,
    /// HTTP/1.1 and h2c on the same port (chosen per connection by the h2 preface).
    Auto,
    /// gRPC (`weft.demo.v1.Echo` and `grpc.health.v1.Health`) over h2c; other requests on
    /// the port get the HTTP echo.
    Grpc,
    /// Plain TCP, no HTTP: the app speaks first, then reports what it received once the
    /// client ends its side (see the `raw` module).
    Raw,
}

/// Command line of `weft-demo-app`.
#[derive(Debug, Parser)]
#[command(
    name = "weft-demo-app",
    version,
    about = "Weft demo app: HTTP/1.1, h2c and gRPC echo that reports what it received"
)]
pub struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:8000.
    #[arg(long, env = "DEMO_LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Protocols to accept.
    #[arg(long, env = "DEMO_MODE", value_enum, default_value = "auto")]
    pub mode: Mode,
    /// Name reported in every answer (`app`), to tell instances apart.
    #[arg(long, env = "DEMO_NAME", default_value = "demo")]
    pub name: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
