//! Open-loop load generator for the data-plane benchmark (`bench/mesh.sh`): sends GET
//! requests at a fixed rate over HTTP/1.1 or h2c (prior knowledge) and reports latency
//! percentiles measured from each request's *intended* send time, so a stall delays
//! the requests scheduled behind it and shows in the figures (no coordinated omission).
//!
//! ```sh
//! taskset -c 0 target/release/bench-mesh --addr 127.0.0.1:8080 --proto h1 --rate 2000 --duration 10
//! ```
//!
//! One thread. Timer wheels have a 1 ms tick, far coarser than the latencies measured,
//! so the scheduler sleeps until ~1.5 ms before a send and then spins (yielding to the
//! I/O tasks) until the send time: the generator's core is busy, by design, and the
//! send jitter stays in the low microseconds. HTTP/1.1 requests go to whichever of
//! `--conns` keep-alive connections is free (a request waits in the queue when none
//! is, and that wait counts); h2c requests are streams spread over `--conns`
//! connections.
//!
//! Prints one line: `key=value` pairs (rate, sent, ok, err, achieved, p50_us, p90_us,
//! p99_us, p999_us, max_us).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_tests::openloop::{Schedule, Shared, h2_get};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Fixed-rate (open-loop) HTTP load with latency measured from the intended send time.
#[derive(Parser, Debug, Clone)]
#[command(name = "bench-mesh")]
struct Args {
    /// Where to send (host:port).
    #[arg(long)]
    addr: SocketAddr,
    /// h1 (HTTP/1.1 keep-alive) or h2c (HTTP/2 prior knowledge).
    #[arg(long, default_value = "h1", value_parser = ["h1", "h2c"])]
    proto: String,
    /// Requests per second.
    #[arg(long, default_value_t = 2000)]
    rate: u32,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the same rate before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Connections (h1: requests in flight at most; h2c: connections the streams share).
    #[arg(long, default_value_t = 16)]
    conns: usize,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Host header / :authority.
    #[arg(long, default_value = "bench")]
    host: String,
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

async fn run(args: Args) -> anyhow::Result<()> {
    // Connect everything before the clock starts.
    let schedule = Schedule::new(
        args.rate,
        args.warmup,
        args.duration,
        Instant::now() + Duration::from_millis(200),
    );
    let shared = schedule.shared.clone();
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let workers = if args.proto == "h1" {
        start_h1(&args, rx, shared.clone()).await?
    } else {
        start_h2c(&args, rx, shared.clone()).await?
    };
    if Instant::now() > schedule.start {
        bail!("connecting took longer than 200 ms");
    }
    let end = schedule.pace(tx).await?;
    // Wait for what is in flight (a request still open after 5 s counts as failed).
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for w in workers {
            let _ = w.await;
        }
    })
    .await;
    schedule.report(end, "");
    Ok(())
}

type Queue = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Instant>>>;

async fn start_h1(
    args: &Args,
    rx: mpsc::UnboundedReceiver<Instant>,
    shared: Arc<Shared>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let queue: Queue = Arc::new(tokio::sync::Mutex::new(rx));
    let request = Bytes::from(format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: bench-mesh\r\nAccept: */*\r\n\r\n",
        args.path, args.host
    ));
    let mut workers = Vec::new();
    for _ in 0..args.conns {
        let tcp = TcpStream::connect(args.addr)
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        tcp.set_nodelay(true)?;
        let (queue, shared, request, addr) =
            (queue.clone(), shared.clone(), request.clone(), args.addr);
        workers.push(tokio::spawn(async move {
            let mut conn = H1Conn::new(tcp);
            loop {
                let intended = {
                    let mut q = queue.lock().await;
                    match q.recv().await {
                        Some(t) => t,
                        None => return,
                    }
                };
                let result = conn.get(&request).await;
                let failed = result.is_err();
                shared.done(intended, result);
                if failed {
                    // Reconnect for the next request.
                    match TcpStream::connect(addr).await {
                        Ok(tcp) => {
                            let _ = tcp.set_nodelay(true);
                            conn = H1Conn::new(tcp);
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        }));
    }
    Ok(workers)
}

/// One HTTP/1.1 keep-alive connection; responses must carry Content-Length.
struct H1Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Bytes already read that belong to the next response.
    carry: VecDeque<u8>,
}

impl H1Conn {
    fn new(tcp: TcpStream) -> Self {
        H1Conn {
            tcp,
            buf: Vec::with_capacity(8192),
            carry: VecDeque::new(),
        }
    }

    async fn get(&mut self, request: &[u8]) -> anyhow::Result<()> {
        self.tcp.write_all(request).await?;
        self.buf.clear();
        self.buf.extend(self.carry.drain(..));
        let mut chunk = [0u8; 16384];
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.tcp.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status code")?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("response without Content-Length")?;
        while self.buf.len() < head_end + len {
            let n = self.tcp.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed in the response body");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        self.carry.extend(&self.buf[head_end + len..]);
        if status != 200 {
            bail!("status {status}");
        }
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn start_h2c(
    args: &Args,
    mut rx: mpsc::UnboundedReceiver<Instant>,
    shared: Arc<Shared>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut senders = Vec::new();
    for _ in 0..args.conns {
        let tcp = TcpStream::connect(args.addr)
            .await
            .with_context(|| format!("cannot connect to {}", args.addr))?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(tcp)
            .await
            .context("h2 handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        senders.push(send);
    }
    let uri: http::Uri = format!("http://{}{}", args.host, args.path)
        .parse()
        .context("request URI")?;
    let dispatcher = tokio::spawn(async move {
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
    });
    Ok(vec![dispatcher])
}
