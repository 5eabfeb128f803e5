//! Pieces of `bench-discovery`'s traffic section: the reports its subscribers send, the
//! cost of counting on a sidecar's hot path, and the dashboard's server time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use weft_proto::v1::{DataplaneKind, LATENCY_BUCKETS, TrafficCounts, TrafficReport, TrafficSource};
use weft_sidecar::traffic::{CountedBody, Direction, Traffic};

/// What a busy sidecar of `service` reports every 10 s: two callers (the gateway and
/// another service), about 1,000 requests per second between them.
pub fn sample_report(service: &str, caller: &str) -> TrafficReport {
    let counts = |source: TrafficSource, requests: u64| {
        let mut latency = vec![0; LATENCY_BUCKETS];
        latency[1] = requests / 2;
        latency[3] = requests / 3;
        latency[6] = requests - requests / 2 - requests / 3;
        TrafficCounts {
            service: service.to_owned(),
            source: Some(source),
            requests,
            responses_2xx: requests - requests / 100,
            responses_5xx: requests / 100,
            bytes_in: requests * 300,
            bytes_out: requests * 2_000,
            latency_buckets: latency,
            connections: 20,
            active_connections: 8,
            ..Default::default()
        }
    };
    TrafficReport {
        interval_ms: 10_000,
        counts: vec![
            counts(
                TrafficSource {
                    kind: DataplaneKind::Gateway as i32,
                    name: "edge".into(),
                },
                6_000,
            ),
            counts(
                TrafficSource {
                    kind: DataplaneKind::Sidecar as i32,
                    name: caller.to_owned(),
                },
                4_000,
            ),
        ],
    }
}

/// What counting adds on a sidecar, measured in this process.
pub struct CountingCost {
    /// Per request: the caller's counters looked up and a connection opened (as for a
    /// tunnel stream per request, the worst case), the request counted, and a 2 kB
    /// response body wrapped, streamed and dropped; minus the same body unwrapped.
    pub ns_per_request: f64,
    /// One report of a sidecar with this many (service, source) pairs.
    pub ns_per_report: f64,
    pub pairs: usize,
}

impl CountingCost {
    /// Share of one CPU core spent counting at `rps` requests per second and one
    /// report every 10 s, in percent.
    pub fn cpu_percent(&self, rps: f64) -> f64 {
        (self.ns_per_request * rps + self.ns_per_report / 10.0) / 1e9 * 100.0
    }
}

async fn stream_body(body: weft_sidecar::errors::Body) -> usize {
    body.collect()
        .await
        .map(|c| c.to_bytes().len())
        .unwrap_or(0)
}

/// Measures [`CountingCost`] over `iterations` requests.
pub async fn counting_cost(iterations: usize) -> CountingCost {
    let payload = Bytes::from(vec![7u8; 2_000]);
    let traffic = Traffic::new();
    let source = TrafficSource {
        kind: DataplaneKind::Gateway as i32,
        name: "edge".into(),
    };
    let mut sink = 0;
    // The same body, without and with counting; the difference is what counting adds.
    let t0 = Instant::now();
    for _ in 0..iterations {
        sink += stream_body(weft_sidecar::errors::boxed(Full::new(payload.clone()))).await;
    }
    let plain = t0.elapsed();
    let t1 = Instant::now();
    for _ in 0..iterations {
        let conn = traffic.pair("web", source.clone()).open();
        conn.counters()
            .request(200, false, Duration::from_micros(700));
        let body = CountedBody::new(
            weft_sidecar::errors::boxed(Full::new(payload.clone())),
            conn.pair().clone(),
            Direction::Out,
            false,
        );
        sink += stream_body(weft_sidecar::errors::boxed(body)).await;
    }
    let counted = t1.elapsed();
    assert!(sink > 0);
    let ns_per_request =
        (counted.as_nanos() as f64 - plain.as_nanos() as f64).max(0.0) / iterations as f64;

    // A report of a sidecar called by 50 sources (a busy one).
    let pairs = 50;
    let holders: Vec<_> = (0..pairs)
        .map(|i| {
            let c = traffic.pair(
                "web",
                TrafficSource {
                    kind: DataplaneKind::Sidecar as i32,
                    name: format!("caller-{i}"),
                },
            );
            c.request(200, false, Duration::from_millis(3));
            c
        })
        .collect();
    let rounds = 2_000;
    let t2 = Instant::now();
    for _ in 0..rounds {
        for c in &holders {
            c.request(200, false, Duration::from_millis(3));
        }
        sink += traffic
            .report(Duration::from_secs(10))
            .map_or(0, |r| r.counts.len());
    }
    let ns_per_report = t2.elapsed().as_nanos() as f64 / f64::from(rounds);
    assert!(sink > 0);
    CountingCost {
        ns_per_request,
        ns_per_report,
        pairs,
    }
}

/// One dashboard JSON document: the server's own time (its `Server-Timing`), the
/// time until the whole answer was read, and the answer's size.
pub struct Timed {
    pub server_ms: f64,
    pub total_ms: f64,
    pub bytes: usize,
}

/// GETs `path` from weft-cp's `--http` port (loopback: no login).
pub async fn dashboard_get(http: SocketAddr, path: &str) -> anyhow::Result<Timed> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let total_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    let server_ms = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("server-timing: app;dur=")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("GET {path}: no Server-Timing"))?;
    Ok(Timed {
        server_ms,
        total_ms,
        bytes: body.len(),
    })
}
