//! Discovery push benchmark: N subscribers on one `weft-cp`, one selector change at a
//! time, and how long until the first and the last subscriber acknowledged it.
//!
//! ```text
//! cargo build --release -p weft-control-plane --bins
//! cargo run --release -p weft-tests --bin bench-discovery
//! ```
//!
//! What it does (see docs/benchmarks.md for the figures):
//! 1. starts the real `weft-cp` (release build, next to this binary) with a fresh data dir;
//! 2. creates `--services` services (protocol http) and one bootstrap token and one
//!    certificate per service;
//! 3. connects `--subscribers` discovery streams spread evenly over the services, each
//!    on its own mTLS connection with its own address, acking every update at once;
//! 4. measures weft-cp's RSS before the first and after the last subscriber connected;
//! 5. makes `--changes` SetProtocol calls, one service at a time, and for each records
//!    when the first and the last subscriber acked the update carrying the change.
//!
//! With `--replicas N` (N > 1) it starts a throwaway PostgreSQL (as the tests do, see
//! `weft_tests::postgres`) and N weft-cp replicas on it; subscribers are spread over
//! the replicas, every change is made through the first, and memory is reported per
//! replica. The change then reaches the other replicas' subscribers through the
//! database's notification.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use prost::Message as _;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use weft_proto::v1::admin_client::AdminClient;
use weft_proto::v1::discovery_client::DiscoveryClient;
use weft_proto::v1::discovery_request::Message as Out;
use weft_proto::v1::discovery_response::Message as In;
use weft_proto::v1::{
    Ack, CreateServiceRequest, CreateTokenRequest, DataplaneKind, DiscoveryRequest, Hello,
    Protocol, SetProtocolRequest, TrafficReport,
};
use weft_tests::{BearerToken, DataplaneIdentity, free_port, sidecar_hello};

/// Goal: every subscriber acked a change within this.
const GOAL_LAST_ACK: Duration = Duration::from_millis(100);
/// Goals with replicas: a change through one replica acked by every subscriber of all.
const GOAL_REPLICAS_P50: Duration = Duration::from_millis(100);
const GOAL_REPLICAS_MAX: Duration = Duration::from_millis(200);
/// Goal: control plane memory per connected subscriber.
const GOAL_KB_PER_SUBSCRIBER: f64 = 50.0;
/// Goal: the dashboard's JSON for the whole mesh, in server time.
const GOAL_DASHBOARD_MS: f64 = 200.0;
/// Goal: the traffic window's memory per reporting dataplane (kB = 1000 bytes).
const GOAL_WINDOW_BYTES_PER_DATAPLANE: f64 = 1000.0;
/// Goal: share of a sidecar's CPU (one core) spent counting at 1,000 req/s.
const GOAL_COUNTING_CPU_PERCENT: f64 = 1.0;
/// A change not acked by everyone within this counts as failed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Subscribers are "settled" after this long without any update.
const SETTLE_QUIET: Duration = Duration::from_secs(2);
/// Streams being opened at the same time during the connect phase.
const CONNECT_CONCURRENCY: usize = 32;
/// Advertised addresses are 127.0.0.1:<FIRST_PORT + i> (nothing listens there).
const FIRST_PORT: usize = 20000;

#[derive(Parser, Debug)]
#[command(about = "Discovery push latency and memory of weft-cp with many subscribers")]
struct Args {
    /// Discovery streams to open, each on its own mTLS connection.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Services the subscribers are spread over (subscribers / services instances each).
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Selector changes to measure.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// The weft-cp binary (default: next to this executable, i.e. target/<profile>/).
    #[arg(long)]
    cp_bin: Option<PathBuf>,
    /// Rounds of traffic reports (every subscriber sends one per round, a round every
    /// 10 s) before the traffic window and the dashboard are measured; 31 fill the
    /// 5-minute window, fewer are projected to it; 0 skips the traffic section.
    #[arg(long, default_value_t = 31)]
    traffic_rounds: u64,
    /// weft-cp replicas on one PostgreSQL (started by the benchmark); 1 = SQLite.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
}

/// What a subscriber task tells the coordinator.
enum Event {
    /// Subscriber `idx` received and acked `version` at `at`; `full_bytes` is the
    /// encoded size of a full config (all its parts).
    Acked {
        idx: usize,
        version: u64,
        at: Instant,
        full_bytes: Option<usize>,
    },
    /// The stream of subscriber `idx` failed or ended.
    Failed { idx: usize, error: String },
}

/// The weft-cp child process; killed on drop.
struct CpProcess {
    child: Child,
    data_dir: PathBuf,
    log: PathBuf,
    grpc: SocketAddr,
    http: SocketAddr,
    // Removed last (fields drop in declaration order, after `Drop::drop`).
    _tmp: tempfile::TempDir,
}

impl CpProcess {
    /// Starts weft-cp with a fresh data dir, like `weft_tests::ControlPlane::start`.
    ///
    /// The harness cannot be used here: its `bin()` assumes the running executable is a
    /// test in `target/<profile>/deps/`, while this binary runs from `target/<profile>/`.
    async fn start(bin: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("weft-data");
        let log = tmp.path().join("cp.log");
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--http")
            .arg(http.to_string())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut cp = CpProcess {
            child,
            data_dir,
            log,
            grpc,
            http,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = cp.child.try_wait()? {
                bail!("weft-cp exited early ({status}); log:\n{}", cp.log_text());
            }
            if TcpStream::connect(cp.grpc).is_ok()
                && TcpStream::connect(cp.http).is_ok()
                && cp.data_dir.join("admin.token").exists()
            {
                return Ok(cp);
            }
            if Instant::now() > deadline {
                bail!("weft-cp did not start within 30 s; log:\n{}", cp.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A raw admin client: TLS verified against ca.pem, admin token attached.
    async fn admin(&self) -> anyhow::Result<AdminClient<InterceptedService<Channel, BearerToken>>> {
        let token = std::fs::read_to_string(self.data_dir.join("admin.token"))?;
        let ca = std::fs::read_to_string(self.data_dir.join("ca.pem"))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(self.url())?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(AdminClient::with_interceptor(
            channel,
            BearerToken(format!("Bearer {}", token.trim())),
        ))
    }

    /// VmRSS of the weft-cp process, in KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }

    /// Open file descriptors of the weft-cp process (sockets included).
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The value of an unlabelled metric from `/metrics` on the HTTP port.
    fn metric(&self, name: &str) -> Option<f64> {
        let mut s = TcpStream::connect(self.http).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.http
        )
        .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }
}

impl Drop for CpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One subscriber: opens its stream with `hello`, acks every update immediately and
/// reports each ack. Like `weft-sidecar`, it asks for updates in parts
/// (`Hello.accepts_update_parts`) and acks an update at its last part, and it sends
/// `report` on its stream at every traffic round.
async fn subscriber(
    idx: usize,
    channel: Channel,
    hello: Hello,
    events: mpsc::UnboundedSender<Event>,
    connect_permit: tokio::sync::OwnedSemaphorePermit,
    mut rounds: watch::Receiver<u64>,
    report: TrafficReport,
) {
    let fail = |error: String| {
        let _ = events.send(Event::Failed { idx, error });
    };
    let (tx, rx) = mpsc::channel(16);
    let hello = Hello {
        accepts_update_parts: true,
        ..hello
    };
    let _ = tx
        .send(DiscoveryRequest {
            message: Some(Out::Hello(hello)),
        })
        .await;
    let request = tonic::Request::new(ReceiverStream::new(rx));
    let mut stream = match DiscoveryClient::new(channel).stream(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return fail(format!("cannot open stream: {s}")),
    };
    let mut permit = Some(connect_permit);
    // Encoded size of the parts of the update being received.
    let mut update_bytes = 0;
    loop {
        let message = tokio::select! {
            m = stream.message() => m,
            changed = rounds.changed() => {
                if changed.is_ok() {
                    let r = DiscoveryRequest {
                        message: Some(Out::Traffic(report.clone())),
                    };
                    if tx.send(r).await.is_err() {
                        return fail("request stream closed".into());
                    }
                }
                continue;
            }
        };
        match message {
            Ok(Some(resp)) => {
                let Some(In::Update(update)) = resp.message else {
                    continue;
                };
                update_bytes += update.encoded_len();
                if update.more {
                    continue;
                }
                let version = update.version;
                let full_bytes = update.full.then_some(update_bytes);
                update_bytes = 0;
                let ack = DiscoveryRequest {
                    message: Some(Out::Ack(Ack { version })),
                };
                if tx.send(ack).await.is_err() {
                    return fail("request stream closed".into());
                }
                let at = Instant::now();
                // The first update is the full config: this stream is connected.
                permit.take();
                let event = Event::Acked {
                    idx,
                    version,
                    at,
                    full_bytes,
                };
                if events.send(event).is_err() {
                    return; // the coordinator is done
                }
            }
            Ok(None) => return fail("stream closed by the control plane".into()),
            Err(s) => return fail(format!("stream failed: {s}")),
        }
    }
}

/// What the coordinator learnt from the acks so far.
struct Seen {
    /// Highest version each subscriber acked.
    last_version: Vec<u64>,
    /// Largest full config received, encoded.
    max_full_bytes: usize,
}

impl Seen {
    fn record(&mut self, idx: usize, version: u64, full_bytes: Option<usize>) {
        self.last_version[idx] = self.last_version[idx].max(version);
        self.max_full_bytes = self.max_full_bytes.max(full_bytes.unwrap_or(0));
    }
}

/// Receives events until every subscriber acked a version >= `min_version` (ack
/// instants returned per subscriber) or `deadline` passes (missing ones are `None`).
async fn collect_acks(
    events: &mut mpsc::UnboundedReceiver<Event>,
    n: usize,
    min_version: u64,
    deadline: Instant,
    seen: &mut Seen,
) -> anyhow::Result<Vec<Option<Instant>>> {
    let mut acked: Vec<Option<Instant>> = vec![None; n];
    let mut missing = n;
    while missing > 0 {
        let ev = match tokio::time::timeout_at(deadline.into(), events.recv()).await {
            Err(_) => break,
            Ok(None) => bail!("every subscriber task ended"),
            Ok(Some(ev)) => ev,
        };
        match ev {
            Event::Acked {
                idx,
                version,
                at,
                full_bytes,
            } => {
                seen.record(idx, version, full_bytes);
                if version >= min_version && acked[idx].is_none() {
                    acked[idx] = Some(at);
                    missing -= 1;
                }
            }
            Event::Failed { idx, error } => bail!("subscriber {idx}: {error}"),
        }
    }
    Ok(acked)
}

/// Waits until no subscriber received anything for `quiet`; returns the update count.
async fn settle(
    events: &mut mpsc::UnboundedReceiver<Event>,
    quiet: Duration,
    seen: &mut Seen,
) -> anyhow::Result<usize> {
    let mut updates = 0;
    loop {
        match tokio::time::timeout(quiet, events.recv()).await {
            Err(_) => return Ok(updates),
            Ok(None) => bail!("every subscriber task ended"),
            Ok(Some(Event::Acked {
                idx,
                version,
                full_bytes,
                ..
            })) => {
                seen.record(idx, version, full_bytes);
                updates += 1;
            }
            Ok(Some(Event::Failed { idx, error })) => bail!("subscriber {idx}: {error}"),
        }
    }
}

/// Nearest-rank percentile of sorted `v`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

/// The 1-minute load average (other work on the machine skews the latencies).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// A few facts about the machine, for the record.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), {mem_gib:.1} GiB RAM, Linux {}",
        kernel.trim()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.subscribers;
    if n == 0 || args.services == 0 || n % args.services != 0 {
        bail!("--subscribers must be a positive multiple of --services");
    }
    if n > 65535 - FIRST_PORT {
        bail!("at most {} subscribers", 65535 - FIRST_PORT);
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run with `cargo run --release -p weft-tests --bin bench-discovery` for meaningful figures"
        );
    }
    let cp_bin = match args.cp_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no parent dir of the executable")?
            .join("weft-cp"),
    };
    if !cp_bin.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --release -p weft-control-plane --bins`",
            cp_bin.display()
        );
    }

    println!("# weft-cp discovery push benchmark");
    println!("machine:     {}", machine());
    println!(
        "setup:       {n} subscribers over {} services ({} instances each), {} changes",
        args.services,
        n / args.services,
        args.changes
    );
    println!(
        "note:        subscribers run in this process, on the same CPUs as weft-cp: latencies include client-side CPU contention"
    );
    println!("weft-cp:     {}", cp_bin.display());
    println!(
        "load:        {} (1-minute load average at start)",
        load_average()
    );

    if args.replicas == 0 || n % args.replicas != 0 {
        bail!("--subscribers must be a multiple of --replicas (at least 1)");
    }
    // Replicas share a PostgreSQL started for the run; one weft-cp keeps SQLite.
    let db = (args.replicas > 1).then(weft_tests::postgres::Shared::start);
    let extra = db.as_ref().map(|d| d.replica_args()).unwrap_or_default();
    let mut cps = Vec::with_capacity(args.replicas);
    for _ in 0..args.replicas {
        cps.push(CpProcess::start(&cp_bin, &extra).await?);
    }
    if let Some(db) = &db {
        println!(
            "store:       PostgreSQL at {} shared by {} replicas; changes made through the first",
            db.pg.url(),
            args.replicas
        );
    }
    let cp = &cps[0];
    let url = cp.url();
    let mut admin = cp.admin().await?;

    // Services, one token and one certificate per service.
    let names: Vec<String> = (0..args.services).map(|s| format!("svc-{s:04}")).collect();
    let mut identities = Vec::with_capacity(names.len());
    for name in &names {
        admin
            .create_service(CreateServiceRequest {
                name: name.clone(),
                protocol: Protocol::Http as i32,
                port: 0,
            })
            .await?;
        let token = admin
            .create_token(CreateTokenRequest {
                kind: DataplaneKind::Sidecar as i32,
                name: name.clone(),
                ttl_seconds: 0,
                ..Default::default()
            })
            .await?
            .into_inner()
            .token;
        identities.push(DataplaneIdentity::bootstrap(&url, &token).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before: Vec<u64> = cps.iter().map(|c| c.rss_kib()).collect::<Result<_, _>>()?;
    let fds_before = cp.open_fds();

    // Connect: each subscriber gets its own channel, hence its own TCP+TLS connection.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (rounds_tx, rounds_rx) = watch::channel(0u64);
    let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let connect_start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for idx in 0..n {
        let service = idx % args.services;
        let identity = &identities[service];
        let replica_url = cps[idx % cps.len()].url();
        let channel = weft_sidecar::control::bootstrap::mtls_channel(
            &replica_url,
            identity.manager.subscribe(),
        )?;
        let hello = sidecar_hello(
            &names[service],
            "bench",
            &format!("127.0.0.1:{}", FIRST_PORT + idx),
        );
        let permit = permits.clone().acquire_owned().await?;
        let caller = &names[(service + 1) % names.len()];
        tasks.push(tokio::spawn(subscriber(
            idx,
            channel,
            hello,
            events_tx.clone(),
            permit,
            rounds_rx.clone(),
            weft_tests::traffic_bench::sample_report(&names[service], caller),
        )));
    }
    drop(events_tx);
    let mut seen = Seen {
        last_version: vec![0; n],
        max_full_bytes: 0,
    };
    let initial = collect_acks(
        &mut events,
        n,
        1,
        Instant::now() + Duration::from_secs(300),
        &mut seen,
    )
    .await?;
    let missing = initial.iter().filter(|a| a.is_none()).count();
    if missing > 0 {
        bail!("{missing} subscribers got no config within 300 s");
    }
    let connected_in = connect_start.elapsed();
    let settle_start = Instant::now();
    let settle_updates = settle(&mut events, SETTLE_QUIET, &mut seen).await?;
    let settled_in = settle_start.elapsed().saturating_sub(SETTLE_QUIET);
    let rss_after: Vec<u64> = cps.iter().map(|c| c.rss_kib()).collect::<Result<_, _>>()?;
    let fds_after = cp.open_fds();
    let metric =
        |name: &str| -> f64 { cps.iter().map(|c| c.metric(name).unwrap_or(f64::NAN)).sum() };
    let streams = metric("weft_cp_discovery_streams");
    let latest = seen.last_version.iter().copied().max().unwrap_or(0);
    let behind = seen.last_version.iter().filter(|v| **v != latest).count();
    if behind > 0 {
        bail!("{behind} subscribers are not at version {latest} after settling");
    }

    println!();
    println!("## connect");
    println!(
        "all {n} subscribers had their full config after {:.2} s (largest full config: {:.1} kB encoded)",
        connected_in.as_secs_f64(),
        seen.max_full_bytes as f64 / 1000.0
    );
    if settle_updates > 0 {
        println!(
            "{settle_updates} further updates (endpoints of the last subscribers) until {:.2} s later",
            settled_in.as_secs_f64()
        );
    }
    println!(
        "weft-cp pushed {} updates while the subscribers connected (each new endpoint is pushed to every connected subscriber, coalesced per stream)",
        metric("weft_cp_pushes_total")
    );
    println!(
        "weft-cp: {streams} discovery streams open, {} more file descriptors than before connecting",
        fds_after.saturating_sub(fds_before)
    );

    // Changes.
    println!();
    println!("## changes (latency from just before SetProtocol to each subscriber's ack)");
    println!(
        "{:>3}  {:<10} {:<6} {:>8}  {:>8}  {:>9}  {:>9}  {:>7}",
        "#", "service", "proto", "revision", "rpc ms", "first ms", "last ms", "acked"
    );
    let mut protocols = vec![Protocol::Http; args.services];
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    let mut failed = 0;
    let pushes_before = metric("weft_cp_pushes_total");
    for change in 0..args.changes {
        let service = change % args.services;
        let next = if protocols[service] == Protocol::Http {
            Protocol::Http2
        } else {
            Protocol::Http
        };
        protocols[service] = next;
        let t0 = Instant::now();
        let svc = admin
            .set_protocol(SetProtocolRequest {
                name: names[service].clone(),
                protocol: next as i32,
            })
            .await?
            .into_inner();
        let rpc = t0.elapsed();
        let acks =
            collect_acks(&mut events, n, svc.revision, t0 + CHANGE_TIMEOUT, &mut seen).await?;
        let got: Vec<Duration> = acks.iter().flatten().map(|at| *at - t0).collect();
        let first = got.iter().min().copied().unwrap_or(CHANGE_TIMEOUT);
        let last = if got.len() == n {
            got.iter().max().copied().unwrap_or(CHANGE_TIMEOUT)
        } else {
            failed += 1;
            CHANGE_TIMEOUT
        };
        println!(
            "{:>3}  {:<10} {:<6} {:>8}  {:>8}  {:>9}  {:>9}  {:>7}{}",
            change + 1,
            names[service],
            next.selector_name(),
            svc.revision,
            ms(rpc),
            ms(first),
            if got.len() == n { ms(last) } else { "-".into() },
            format!("{}/{n}", got.len()),
            if got.len() == n {
                String::new()
            } else {
                format!("  FAILED: not acked by all within {CHANGE_TIMEOUT:?}")
            }
        );
        firsts.push(first);
        lasts.push(last);
        // Let the acks reach weft-cp before the next change.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pushes = metric("weft_cp_pushes_total") - pushes_before;
    let acks_total = metric("weft_cp_acks_total");
    let pushes_total = metric("weft_cp_pushes_total");
    firsts.sort();
    lasts.sort();

    // Per replica: each holds n / replicas subscribers. kB = 1000 bytes (the stricter
    // reading of the goal); the verdict takes the replica that costs the most.
    let per_replica = n / cps.len();
    let per_sub: Vec<f64> = rss_before
        .iter()
        .zip(&rss_after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 * 1024.0 / 1000.0 / per_replica as f64)
        .collect();
    let per_sub_kb = per_sub.iter().copied().fold(0.0, f64::max);
    let p99_last = percentile(&lasts, 99.0);
    let max_last = percentile(&lasts, 100.0);

    println!();
    println!("## summary over {} changes", args.changes);
    println!("{:<26} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms");
    for (label, v) in [
        ("first subscriber acked", &firsts),
        ("last subscriber acked", &lasts),
    ] {
        println!(
            "{:<26} {:>9} {:>9} {:>9}",
            label,
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0)),
            ms(percentile(v, 100.0))
        );
    }
    println!(
        "pushes during the changes: {pushes} ({:.2} per subscriber per change); weft-cp totals: {pushes_total} pushes, {acks_total} acks",
        pushes / (n * args.changes.max(1)) as f64
    );
    if failed > 0 {
        println!("FAILED changes: {failed} (counted as {CHANGE_TIMEOUT:?})");
    }
    println!(
        "load average after the changes: {} (this benchmark included)",
        load_average()
    );
    println!();
    println!("## memory (weft-cp VmRSS)");
    for (i, ((before, after), kb)) in rss_before.iter().zip(&rss_after).zip(&per_sub).enumerate() {
        let who = if cps.len() > 1 {
            format!("replica {} ({per_replica} subscribers): ", i + 1)
        } else {
            String::new()
        };
        println!(
            "{who}before connecting: {:.1} MiB; after {per_replica} subscribers settled: {:.1} MiB; delta {:.1} MiB = {kb:.1} kB per subscriber (kB = 1000 bytes)",
            *before as f64 / 1024.0,
            *after as f64 / 1024.0,
            after.saturating_sub(*before) as f64 / 1024.0
        );
    }
    let traffic = if args.traffic_rounds > 0 {
        Some(traffic_section(&cps, &rounds_tx, args.traffic_rounds, n, &names[0]).await?)
    } else {
        None
    };

    println!();
    println!("## goals");
    println!(
        "all {n} acked within {} ms: last ack p99 {} ms, max {} ms  {}",
        GOAL_LAST_ACK.as_millis(),
        ms(p99_last),
        ms(max_last),
        verdict(failed == 0 && max_last <= GOAL_LAST_ACK)
    );
    if cps.len() > 1 {
        // Across replicas the change also crosses the database's notification.
        let p50_last = percentile(&lasts, 50.0);
        println!(
            "replicas: all {n} acked in p50 <= {} ms and max <= {} ms: p50 {} ms, max {} ms  {}",
            GOAL_REPLICAS_P50.as_millis(),
            GOAL_REPLICAS_MAX.as_millis(),
            ms(p50_last),
            ms(max_last),
            verdict(failed == 0 && p50_last <= GOAL_REPLICAS_P50 && max_last <= GOAL_REPLICAS_MAX)
        );
    }
    println!(
        "under {GOAL_KB_PER_SUBSCRIBER:.0} kB per subscriber: {per_sub_kb:.1} kB  {}",
        verdict(per_sub_kb <= GOAL_KB_PER_SUBSCRIBER)
    );

    if let Some(t) = &traffic {
        println!(
            "dashboard JSON for {n} dataplanes and {} services under {GOAL_DASHBOARD_MS:.0} ms server time: slowest page p50 {:.1} ms, max {:.1} ms  {}",
            args.services,
            t.dashboard_p50_ms,
            t.dashboard_max_ms,
            verdict(t.dashboard_max_ms <= GOAL_DASHBOARD_MS)
        );
        if t.partial {
            println!(
                "traffic window under {GOAL_WINDOW_BYTES_PER_DATAPLANE:.0} bytes per dataplane: {:.0} bytes with a partial window; judged on a full one (--traffic-rounds 31)  n/a",
                t.window_bytes_per_dataplane,
            );
        } else {
            println!(
                "traffic window under {GOAL_WINDOW_BYTES_PER_DATAPLANE:.0} bytes per dataplane (full 5-minute window): {:.0} bytes  {}",
                t.window_bytes_per_dataplane,
                verdict(t.window_bytes_per_dataplane <= GOAL_WINDOW_BYTES_PER_DATAPLANE)
            );
        }
        println!(
            "counting under {GOAL_COUNTING_CPU_PERCENT:.0}% of a sidecar's CPU at 1,000 req/s: {:.3}%  {}",
            t.counting_cpu_percent,
            verdict(t.counting_cpu_percent <= GOAL_COUNTING_CPU_PERCENT)
        );
    }

    for t in tasks {
        t.abort();
    }
    let log: String = cps.iter().map(|c| c.log_text()).collect();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    println!();
    println!(
        "weft-cp log: {} lines, {} warnings/errors",
        log.lines().count(),
        problems.len()
    );
    for line in problems.iter().take(10) {
        println!("  {line}");
    }
    if failed > 0 {
        bail!(
            "{failed} of {} changes were not acked by every subscriber",
            args.changes
        );
    }
    Ok(())
}

/// What the traffic section measured, for the goals.
struct TrafficFigures {
    dashboard_p50_ms: f64,
    dashboard_max_ms: f64,
    window_bytes_per_dataplane: f64,
    /// Fewer rounds than the window holds: the window is not full yet.
    partial: bool,
    counting_cpu_percent: f64,
}

/// Every subscriber reports traffic for `rounds` rounds of 10 s (like a sidecar); then
/// the traffic window's memory, the dashboard's JSON and the sidecar's counting cost.
async fn traffic_section(
    cps: &[CpProcess],
    rounds_tx: &watch::Sender<u64>,
    rounds: u64,
    n: usize,
    a_service: &str,
) -> anyhow::Result<TrafficFigures> {
    use weft_tests::traffic_bench::{counting_cost, dashboard_get};
    println!();
    println!(
        "## traffic: every subscriber reports 2 callers every 10 s, {rounds} rounds ({} s)",
        rounds * 10
    );
    let rss_before: Vec<u64> = cps.iter().map(|c| c.rss_kib()).collect::<Result<_, _>>()?;
    for round in 1..=rounds {
        rounds_tx.send_replace(round);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    // The window's gauge is refreshed every 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let per_replica = n / cps.len();
    let mut worst = 0.0f64;
    for (i, (cp, before)) in cps.iter().zip(&rss_before).enumerate() {
        let bytes = cp
            .metric("weft_cp_traffic_window_bytes")
            .unwrap_or(f64::NAN);
        let reports = cp
            .metric("weft_cp_traffic_reports_total")
            .unwrap_or(f64::NAN);
        let rss = cp.rss_kib()?;
        let per_dp = bytes / per_replica as f64;
        worst = worst.max(per_dp);
        println!(
            "replica {}: {reports} reports; window {:.1} kB = {per_dp:.0} bytes per dataplane; VmRSS {:+.1} MiB over the rounds",
            i + 1,
            bytes / 1000.0,
            (rss as f64 - *before as f64) / 1024.0
        );
    }
    let partial = rounds < weft_control_plane::traffic::WINDOW_BUCKETS as u64;

    let http = cps[0].http;
    let mut slowest = (0.0f64, 0.0f64);
    for path in [
        "/api/overview".to_owned(),
        format!("/api/services/{a_service}"),
        "/api/dataplanes".to_owned(),
    ] {
        let mut server = Vec::new();
        let mut total = Vec::new();
        let mut bytes = 0;
        for _ in 0..20 {
            let t = dashboard_get(http, &path).await?;
            server.push(t.server_ms);
            total.push(t.total_ms);
            bytes = t.bytes;
        }
        server.sort_by(f64::total_cmp);
        total.sort_by(f64::total_cmp);
        let (p50, max) = (server[server.len() / 2], server[server.len() - 1]);
        println!(
            "dashboard {path}: server p50 {p50:.1} ms, max {max:.1} ms; answered in p50 {:.1} ms; {:.1} kB",
            total[total.len() / 2],
            bytes as f64 / 1000.0
        );
        if max > slowest.1 {
            slowest = (p50, max);
        }
    }

    let cost = counting_cost(200_000).await;
    let counting_cpu_percent = cost.cpu_percent(1000.0);
    println!(
        "sidecar counting (in this process): {:.0} ns per request (counters, connection, counted 2 kB body), {:.1} us per report of {} pairs; at 1,000 req/s {:.3}% of one core",
        cost.ns_per_request,
        cost.ns_per_report / 1000.0,
        cost.pairs,
        counting_cpu_percent
    );
    Ok(TrafficFigures {
        dashboard_p50_ms: slowest.0,
        dashboard_max_ms: slowest.1,
        window_bytes_per_dataplane: worst,
        partial,
        counting_cpu_percent,
    })
}
