//! Processes under test: where the binaries are, free ports, a child process
//! killed when dropped, and waiting for something to happen.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built by `cargo build --bins`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test does this)",
        path.display()
    );
    path
}

/// Ports handed out by [`free_port`]: below Linux's default ephemeral range
/// (32768..=60999), so that no outgoing connection of another test (a PostgreSQL
/// client, a pooled tunnel) can take a port between the moment it is picked and
/// the moment the process under test binds it.
const TEST_PORTS: std::ops::Range<u16> = 20000..32768;

/// A free TCP port on 127.0.0.1: a random one of [`TEST_PORTS`] that binds now.
///
/// Asking the kernel for port 0 would return an ephemeral port, which the kernel
/// also gives to outgoing connections: a test that releases it and starts a
/// server on it later loses the race now and then ("Address already in use").
/// Tests run in parallel processes, so the pick is random rather than counted.
pub fn free_port() -> u16 {
    loop {
        let port = fastrand::u16(TEST_PORTS);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `f` until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process killed when dropped, with its output in a log file.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
}

impl Proc {
    pub fn spawn(program: PathBuf, args: Vec<String>, log: PathBuf) -> Proc {
        let mut p = Proc {
            child: None,
            log,
            program,
            args,
        };
        p.start();
        p
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.program)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `within` for the exit.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg(c.id().to_string()).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.start();
    }

    /// A rolling restart: SIGTERM, wait up to `within` for the exit, start again.
    pub fn terminate_and_start(&mut self, within: Duration) {
        self.terminate(within);
        self.start();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// (current, peak) resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_port(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
