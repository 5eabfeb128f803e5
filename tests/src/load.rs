//! Closed-loop request loops for fault tests: each loop sends one HTTP/1.1 GET at a time
//! on a new connection (as a curl loop would) and records every outcome with the
//! client's own timestamps, so a test can tell when failures started and ended relative
//! to an event it timed itself (a restart, a cut).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// One request: when it started and ended, and the app that answered or why it failed.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub started: Instant,
    pub ended: Instant,
    pub result: Result<String, String>,
}

/// Request loops running until [`Load::stop`].
pub struct Load {
    stop: watch::Sender<bool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `loops` sequential clients GETting `path` from `addr`, each request on a new
    /// connection with a `timeout`, `pause` between requests.
    pub fn start(
        addr: SocketAddr,
        path: &str,
        loops: usize,
        timeout: Duration,
        pause: Duration,
    ) -> Load {
        let (stop, rx) = watch::channel(false);
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..loops)
            .map(|_| {
                let (rx, outcomes, path) = (rx.clone(), outcomes.clone(), path.to_owned());
                tokio::spawn(async move {
                    while !*rx.borrow() {
                        let started = Instant::now();
                        let result = match tokio::time::timeout(timeout, get(addr, &path)).await {
                            Ok(r) => r,
                            Err(_) => Err(format!("no answer within {timeout:?}")),
                        };
                        let ended = Instant::now();
                        outcomes.lock().unwrap().push(Outcome {
                            started,
                            ended,
                            result,
                        });
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            tasks,
        }
    }

    /// Outcomes so far, in the order they ended.
    pub fn outcomes(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Stops the loops (each finishes its request in progress) and returns every outcome.
    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut all = self.outcomes.lock().unwrap().clone();
        all.sort_by_key(|o| o.ended);
        all
    }
}

/// The longest run of consecutive failures (by end time): (count, from the first's
/// start to the last's end).
pub fn longest_failure_run(outcomes: &[Outcome]) -> (usize, Duration) {
    let mut best = (0, Duration::ZERO);
    let mut run: Option<(usize, Instant)> = None;
    for o in outcomes {
        match (&o.result, run) {
            (Err(_), None) => run = Some((1, o.started)),
            (Err(_), Some((n, from))) => run = Some((n + 1, from)),
            (Ok(_), _) => run = None,
        }
        if let Some((n, from)) = run {
            if n > best.0 {
                best = (n, o.ended.saturating_duration_since(from));
            }
        }
    }
    best
}

/// A GET on a new connection; the app's name (the demo app's `app` field) on a 200.
async fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    if !text.starts_with("HTTP/1.1 200") {
        let first = text.lines().next().unwrap_or("");
        return Err(if first.is_empty() {
            "connection closed without an answer".to_owned()
        } else {
            first.to_owned()
        });
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))?;
    Ok(json["app"].as_str().unwrap_or("?").to_owned())
}
