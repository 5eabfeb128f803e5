//! Open-loop load generation for the benchmarks (`bench-mesh`, `bench-gateway`): requests
//! are scheduled at a fixed rate and latency is measured from each request's *intended*
//! send time, so a stall delays the requests scheduled behind it and shows in the
//! figures (no coordinated omission).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Latencies (µs) of requests scheduled in the measured window, and failures.
#[derive(Default)]
pub struct Record {
    lat_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

/// Shared by the request tasks of one run.
pub struct Shared {
    measure_from: Instant,
    record: Mutex<Record>,
}

impl Shared {
    /// Records the outcome of a request scheduled for `intended`.
    pub fn done(&self, intended: Instant, result: anyhow::Result<()>) {
        if intended < self.measure_from {
            return;
        }
        let mut r = match self.record.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok(()) => {
                let us = intended.elapsed().as_micros().min(u32::MAX as u128) as u32;
                r.lat_us.push(us);
            }
            Err(e) => {
                r.errors += 1;
                if r.first_error.is_none() {
                    r.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
}

/// The fixed-rate schedule of one run.
pub struct Schedule {
    pub rate: u32,
    pub start: Instant,
    interval: Duration,
    total: u64,
    measured_n: u64,
    pub shared: Arc<Shared>,
}

impl Schedule {
    /// `rate` requests/s, `warmup` then `measured` seconds, starting at `start`.
    pub fn new(rate: u32, warmup: f64, measured: f64, start: Instant) -> Self {
        let warmup = Duration::from_secs_f64(warmup);
        let measured = Duration::from_secs_f64(measured);
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(rate.max(1)));
        let total = ((warmup + measured).as_nanos() / interval.as_nanos()) as u64;
        // Sends scheduled before the end of the warm-up (i * interval < warmup).
        let warmup_n = warmup.as_nanos().div_ceil(interval.as_nanos()) as u64;
        Schedule {
            rate,
            start,
            interval,
            total,
            measured_n: total.saturating_sub(warmup_n),
            shared: Arc::new(Shared {
                measure_from: start + warmup,
                record: Mutex::new(Record::default()),
            }),
        }
    }

    /// Sends each intended send time on `tx` at that time: sleeps until ~1.5 ms before,
    /// then yields (letting the I/O tasks run) until it, so send jitter stays in µs.
    pub async fn pace(&self, tx: mpsc::UnboundedSender<Instant>) -> anyhow::Result<Instant> {
        tokio::time::sleep_until(self.start.into()).await;
        for i in 0..self.total {
            let at = self.start + self.interval * i as u32;
            loop {
                let now = Instant::now();
                if now >= at {
                    break;
                }
                let left = at - now;
                if left > Duration::from_micros(2500) {
                    tokio::time::sleep(left - Duration::from_micros(1500)).await;
                } else {
                    tokio::task::yield_now().await;
                }
            }
            if tx.send(at).is_err() {
                bail!("every connection failed");
            }
        }
        Ok(self.start + self.interval * self.total as u32)
    }

    /// Prints the run's one line of `key=value` pairs; `extra` is appended as is.
    pub fn report(&self, end: Instant, extra: &str) {
        let mut r = match self.shared.record.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        let wall = end.duration_since(self.shared.measure_from).as_secs_f64();
        let ok = r.lat_us.len() as u64;
        let unanswered = self.measured_n.saturating_sub(ok + r.errors);
        r.lat_us.sort_unstable();
        let pct = |p: f64| -> u32 {
            if r.lat_us.is_empty() {
                return 0;
            }
            let idx = ((p / 100.0) * (r.lat_us.len() as f64 - 1.0)).round() as usize;
            r.lat_us[idx.min(r.lat_us.len() - 1)]
        };
        println!(
            "rate={} sent={} ok={} err={} achieved={:.0} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}{}{}",
            self.rate,
            self.measured_n,
            ok,
            r.errors + unanswered,
            ok as f64 / wall.max(1e-9),
            pct(50.0),
            pct(90.0),
            pct(99.0),
            pct(99.9),
            r.lat_us.last().copied().unwrap_or(0),
            extra,
            r.first_error
                .map(|e| format!(" first_error={e:?}"))
                .unwrap_or_default()
        );
    }
}

/// One GET as an HTTP/2 stream; the body is read (and its window released) to the end.
pub async fn h2_get(send: h2::client::SendRequest<Bytes>, uri: http::Uri) -> anyhow::Result<()> {
    let mut send = send.ready().await?;
    let req = http::Request::get(uri).body(())?;
    let (resp, _) = send.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if status != http::StatusCode::OK {
        bail!("status {status}");
    }
    Ok(())
}
