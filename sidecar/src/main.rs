//! `weft-sidecar`: the Weft data plane.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use weft_sidecar::dataplane::Common;
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
    /// Run the public edge: HTTPS (ALPN h2/http1.1), h2c and HTTP/1.1 into the mesh.
    Gateway(GatewayArgs),
    /// Run a region ingress: routes tunnels from other regions by TLS SNI, never decrypts.
    Ingress(IngressArgs),
}

/// What every dataplane takes (`run`, `gateway`, `ingress`).
#[derive(clap::Args, Debug)]
struct CommonArgs {
    /// Control plane URL, or the URLs of its replicas separated by commas (tried in
    /// turn; the dataplane fails over between them).
    #[arg(long, env = "WEFT_CP", value_name = "URL[,URL...]")]
    cp: String,
    /// Bootstrap token (`weftctl token create --service|--gateway|--ingress NAME`).
    #[arg(long, env = "WEFT_TOKEN", hide_env_values = true)]
    token: String,
    /// Region label; endpoints in the same region are preferred.
    #[arg(long, default_value = "")]
    region: String,
    /// Admin endpoint (/metrics, /ready, /config, /certs).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// Keeps the certificate and the last good config, to serve and restart while the
    /// control plane is away.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Open connections allowed per listener; more are closed at once.
    #[arg(long, default_value_t = weft_sidecar::serve::DEFAULT_MAX_CONNECTIONS, value_parser = parse_count)]
    max_connections: usize,
    /// How long open connections may take to finish at shutdown (SIGTERM).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
}

impl From<CommonArgs> for Common {
    fn from(a: CommonArgs) -> Self {
        Common {
            cp: a.cp,
            token: a.token,
            region: a.region,
            admin: a.admin,
            state_dir: a.state_dir,
            max_connections: a.max_connections,
            drain_timeout: a.drain_timeout,
        }
    }
}

#[derive(clap::Args, Debug)]
struct IngressArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Where tunnels from other regions arrive.
    #[arg(long, default_value = "0.0.0.0:15009")]
    listen: SocketAddr,
    /// Address other regions reach this ingress at (defaults to --listen).
    #[arg(long)]
    advertise: Option<String>,
}

#[derive(clap::Args, Debug)]
struct GatewayArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Plain listener: HTTP/1.1, h2c prior knowledge and `Upgrade: h2c`.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// TLS listener with ALPN h2 and http/1.1.
    #[arg(long)]
    https: Option<SocketAddr>,
    /// Certificate chain (PEM) for --https; without it a development certificate is made.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra names (e.g. *.example.com) for the development certificate (repeatable).
    #[arg(long = "dev-cert-host")]
    dev_cert_hosts: Vec<String>,
    /// Where the development certificate is written, for clients to trust.
    #[arg(long, default_value = "./weft-gateway-dev-cert.pem")]
    dev_cert_out: PathBuf,
    /// Time allowed for an upstream's response headers (gRPC and WebSockets excepted).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    upstream_timeout: Duration,
    /// Client connections without a request in progress for this long are closed
    /// (GOAWAY first on HTTP/2), and WebSockets without traffic either way.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    idle_timeout: Duration,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The service this instance belongs to.
    #[arg(long)]
    service: String,
    /// Where the app listens.
    #[arg(long)]
    app: SocketAddr,
    /// Inbound port (mTLS): tunnels from sidecars, requests from gateways.
    #[arg(long, default_value = "0.0.0.0:15008")]
    inbound: SocketAddr,
    /// Address other dataplanes reach the inbound listener at.
    #[arg(long)]
    advertise: Option<String>,
    /// Address the outbound listeners bind (one per service port).
    #[arg(long, default_value = "127.0.0.1")]
    outbound_ip: IpAddr,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}: use a duration like 10s or 1m"))
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive number: use e.g. 10000")),
    }
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
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

/// Makes glibc's malloc keep the memory of freed tunnel buffers instead of handing it back
/// to the kernel at each free.
///
/// A tunnel moves its bytes through buffers of 16-256 KiB that are freed as soon as they
/// are written. With glibc's initial settings, blocks of 128 KiB and more are mapped and
/// unmapped one by one, and a thread's arena is trimmed whenever 128 KiB at its top are
/// free: every page was faulted in and zeroed again for the next buffer, about one page
/// fault per 4 KiB carried (about 230 per MB), a third of the sidecars' CPU on a bulk
/// stream (docs/benchmarks.md). glibc raises both thresholds by itself once a mapped block is
/// freed (mallopt(3), "dynamic mmap threshold": the mmap threshold to the block's size,
/// the trim threshold to twice that), so one block of [`KEEP`] reserved and freed here
/// sets them. Its pages are never touched, so this costs no memory; other allocators
/// ignore it.
fn keep_freed_buffers() {
    const KEEP: usize = 1024 * 1024;
    drop(std::hint::black_box(Vec::<u8>::with_capacity(KEEP)));
}

fn main() -> ExitCode {
    keep_freed_buffers();
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
        Command::Ingress(a) => rt.block_on(weft_sidecar::ingress::run(
            weft_sidecar::ingress::IngressConfig {
                common: a.common.into(),
                listen: a.listen,
                advertise: a.advertise,
            },
            shutdown_signal(),
        )),
        Command::Gateway(a) => rt.block_on(weft_sidecar::gateway::run(
            weft_sidecar::gateway::GatewayConfig {
                common: a.common.into(),
                http: a.http,
                https: a.https,
                tls_cert: a.tls_cert,
                tls_key: a.tls_key,
                dev_cert_hosts: a.dev_cert_hosts,
                dev_cert_out: a.dev_cert_out,
                upstream_timeout: a.upstream_timeout,
                idle_timeout: a.idle_timeout,
            },
            shutdown_signal(),
        )),
        Command::Run(a) => rt.block_on(run(
            RunConfig {
                common: a.common.into(),
                service: a.service,
                app: a.app,
                inbound: a.inbound,
                advertise: a.advertise,
                outbound_ip: a.outbound_ip,
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
