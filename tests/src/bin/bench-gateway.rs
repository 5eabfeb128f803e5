//! Open-loop HTTP/2-over-TLS load generator for the edge-gateway benchmark
//! (`bench/gateway.sh`): sends GET requests at a fixed rate as h2 streams over TLS
//! connections (ALPN `h2`, SNI and `:authority` = `--host`), and reports latency
//! percentiles measured from each request's *intended* send time, so a stall delays the
//! requests scheduled behind it and shows in the figures (no coordinated omission).
//!
//! ```sh
//! taskset -c 0 target/release/bench-gateway --addr 127.0.0.1:19443 --host bench.example.com \
//!     --ca /tmp/ca.crt --rate 1000 --duration 10
//! ```
//!
//! Same method as `bench-mesh` (which speaks only cleartext h1/h2c): one thread; the
//! scheduler sleeps until ~1.5 ms before a send and then spins (yielding to the I/O
//! tasks) until the send time, so the send jitter stays in the low microseconds. Every
//! connection is set up (TCP, TLS 1.3 handshake, HTTP/2 preface) before the clock
//! starts; requests are streams spread round-robin over `--conns` connections. The client
//! offers only TLS 1.3 with AES-128-GCM (what `bench/gateway.sh` also makes h2load offer).
//!
//! Prints one line of `key=value` pairs (rate, sent, ok, err, achieved, p50_us, p90_us,
//! p99_us, p999_us, max_us, tls, cipher, alpn).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_tests::openloop::{Schedule, h2_get};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Fixed-rate (open-loop) h2-over-TLS load with latency measured from the intended send time.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench-gateway")]
struct Args {
    /// Where to connect (host:port).
    #[arg(long)]
    addr: SocketAddr,
    /// TLS server name (SNI) and `:authority` of every request.
    #[arg(long, default_value = "bench.example.com")]
    host: String,
    /// PEM file with the CA (or self-signed certificate) that the server's chain must verify against.
    #[arg(long)]
    ca: PathBuf,
    /// Requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the same rate before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// TLS connections the streams share.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.rate == 0 || args.conns == 0 {
        bail!("--rate and --conns must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run(args))
}

fn tls_config(ca: &PathBuf) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read --ca {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("--ca {} is not PEM certificates", ca.display()))?)
            .context("unusable CA certificate")?;
    }
    // TLS 1.3 with AES-128-GCM only, as h2load is told to offer (bench/gateway.sh), so
    // both servers run the same cipher whatever their own preference order.
    let mut provider = (*weft_certs::tls::provider()).clone();
    provider
        .cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Connect everything (TCP, TLS, HTTP/2 preface) before the clock starts.
    let tls = tokio_rustls::TlsConnector::from(tls_config(&args.ca)?);
    let server_name =
        ServerName::try_from(args.host.clone()).context("--host is not a valid TLS name")?;
    let mut senders = Vec::new();
    let mut negotiated = String::new();
    for _ in 0..args.conns {
        let tcp = TcpStream::connect(args.addr)
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        tcp.set_nodelay(true)?;
        let stream = tls
            .connect(server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS handshake with {} failed", args.addr))?;
        {
            let conn = stream.get_ref().1;
            if conn.alpn_protocol() != Some(b"h2") {
                bail!("the server did not select ALPN h2");
            }
            negotiated = format!(
                "tls={:?} cipher={:?} alpn=h2",
                conn.protocol_version().context("no TLS version")?,
                conn.negotiated_cipher_suite()
                    .context("no cipher suite")?
                    .suite()
            );
        }
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(stream)
            .await
            .context("h2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        senders.push(send);
    }
    let schedule = Schedule::new(
        args.rate,
        args.warmup,
        args.duration,
        Instant::now() + Duration::from_millis(100),
    );
    let shared = schedule.shared.clone();
    let uri: http::Uri = format!("https://{}{}", args.host, args.path)
        .parse()
        .context("request URI")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let dispatcher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            let mut inflight = Vec::new();
            while let Some(intended) = rx.recv().await {
                let send = senders[next % senders.len()].clone();
                next += 1;
                let (uri, shared) = (uri.clone(), shared.clone());
                inflight.push(tokio::spawn(async move {
                    let result = h2_get(send, uri).await;
                    shared.done(intended, result);
                }));
                if inflight.len() > 4096 {
                    inflight.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
                }
            }
            for h in inflight {
                let _ = h.await;
            }
        })
    };
    let end = schedule.pace(tx).await?;
    // Wait for what is in flight (a request still open after 5 s counts as failed).
    let _ = tokio::time::timeout(Duration::from_secs(5), dispatcher).await;
    schedule.report(end, &format!(" {negotiated}"));
    Ok(())
}
