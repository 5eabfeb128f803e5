//! `weft-sidecar`: the Weft data plane.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_sidecar::run::{RunConfig, run};

/// The Weft data plane.
#[derive(Parser, Debug)]
#[command(name = "weft-sidecar", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run beside one app instance: outbound listeners, inbound tunnel, final-hop translation.
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Control plane URL.
    #[arg(long, env = "WEFT_CP")]
    cp: String,
    /// Bootstrap token for this service (`weftctl token create --service NAME`).
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    token: String,
    /// The service this instance belongs to.
    #[arg(long)]
    service: String,
    /// Where the app listens.
    #[arg(long)]
    app: SocketAddr,
    /// Region label of this instance.
    #[arg(long, default_value = "")]
    region: String,
    /// Inbound tunnel listener (mTLS).
    #[arg(long, default_value = "0.0.0.0:15008")]
    inbound: SocketAddr,
    /// Address other dataplanes reach the inbound listener at.
    #[arg(long)]
    advertise: Option<String>,
    /// Admin endpoint (/metrics, /ready, /config, /certs).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Keeps the certificate and the last good config, to serve and restart while the
    /// control plane is away.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Address the outbound listeners bind (one per service port).
    #[arg(long, default_value = "127.0.0.1")]
    outbound_ip: IpAddr,
    /// How long in-flight connections may take to finish at shutdown.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}: use a duration like 10s or 1m"))
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(&cli.log_format);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Run(a) => rt.block_on(run(
            RunConfig {
                cp: a.cp,
                token: a.token,
                service: a.service,
                app: a.app,
                region: a.region,
                inbound: a.inbound,
                advertise: a.advertise,
                admin: a.admin,
                state_dir: a.state_dir,
                outbound_ip: a.outbound_ip,
                drain_timeout: a.drain_timeout,
            },
            shutdown_signal(),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
