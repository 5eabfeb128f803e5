//! `weft-cp`: the Weft control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use weft_control_plane::server::{CpConfig, run};
use weft_control_plane::store::StoreKind;

/// The Weft control plane: mesh CA, service registry, and config push to every sidecar.
#[derive(Parser, Debug)]
#[command(name = "weft-cp", version, about)]
struct Args {
    /// Directory of the embedded store, the admin token and ca.pem.
    #[arg(long, default_value = "./weft-data", env = "WEFT_DATA_DIR")]
    data_dir: PathBuf,
    /// gRPC (TLS) listen address for weftctl and dataplanes.
    #[arg(long, default_value = "0.0.0.0:7400")]
    listen: SocketAddr,
    /// Plain HTTP address for /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:7401")]
    http: SocketAddr,
    /// SPIFFE trust domain of the mesh (fixed when the store is created).
    #[arg(long, default_value = "weft.local")]
    trust_domain: String,
    /// Lifetime of workload certificates (e.g. 24h, 1h, 20s).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// Extra DNS name or IP for the control plane's certificate (repeatable).
    #[arg(long = "san", value_name = "HOST")]
    sans: Vec<String>,
    /// Import this CA certificate at first start instead of generating one (needs --ca-key).
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// Private key of --ca-cert (PEM).
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// How long a dataplane's stream may be gone before its endpoint is unhealthy.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace_period: Duration,
    /// How long a dataplane may be gone before it is forgotten.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    dataplane_expiry: Duration,
    /// Where state lives: `sqlite` (<data-dir>/weft.db, one weft-cp) or
    /// postgres://USER@HOST:PORT/DB (shared by every replica).
    #[arg(long, default_value = "sqlite", value_name = "sqlite|postgres://USER@HOST:PORT/DB", value_parser = StoreKind::parse)]
    store: StoreKind,
    /// File with a secret (32 bytes or more) that encrypts the CA key in the store.
    /// Required with a postgres store; every replica uses the same file.
    #[arg(long, value_name = "FILE")]
    ca_key_secret: Option<PathBuf>,
    /// A network (CIDR, or one address) dataplanes may announce addresses in, besides
    /// the address their stream comes from (repeatable), e.g. for dataplanes behind NAT.
    /// Loopback is accepted only when --listen is a loopback address; link-local never.
    #[arg(long = "allow-advertise", value_name = "CIDR", value_parser = parse_cidr)]
    allow_advertise: Vec<ipnet::IpNet>,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    weft_control_plane::advertise::parse_cidr(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}: use a duration like 24h, 90m or 20s"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

fn main() -> ExitCode {
    let args = Args::parse();
    if matches!(args.store, StoreKind::Postgres(_)) && args.ca_key_secret.is_none() {
        eprintln!(
            "error: --store postgres://... needs --ca-key-secret FILE: replicas keep the CA key in a shared database, \
             encrypted with that secret (make one with `head -c 32 /dev/urandom > FILE` and give every replica the same file)"
        );
        return ExitCode::from(2);
    }
    init_logs(&args.log_format);
    let cfg = CpConfig {
        data_dir: args.data_dir,
        listen: args.listen,
        http: args.http,
        trust_domain: args.trust_domain,
        cert_ttl: args.cert_ttl,
        sans: args.sans,
        ca_files: args.ca_cert.zip(args.ca_key),
        grace: args.grace_period,
        dataplane_expiry: args.dataplane_expiry,
        store: args.store,
        ca_key_secret: args.ca_key_secret,
        allow_advertise: args.allow_advertise,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
