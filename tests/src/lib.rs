//! Test harness: starts the real `weft-cp` binary on 127.0.0.1 with a fresh data dir,
//! drives it with the real `weftctl`, a raw tonic gRPC client, and dataplane
//! subscribers built from `weft-sidecar`'s control module.
//!
//! Binaries are taken from the Cargo target dir (`scripts/test` builds them first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod load;
pub mod openloop;
pub mod paths;
pub mod postgres;
pub mod proxy;
pub mod traffic_bench;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use weft_proto::v1::admin_client::AdminClient;
use weft_proto::v1::discovery_client::DiscoveryClient;
use weft_proto::v1::discovery_request::Message as Out;
use weft_proto::v1::discovery_response::Message as In;
use weft_proto::v1::{
    Ack, ConfigUpdate, CreateTokenRequest, DataplaneKind, DiscoveryRequest, Hello, Nack,
};

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

/// A running `weft-cp`.
pub struct ControlPlane {
    child: Option<Child>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub grpc: SocketAddr,
    /// Where to reach `--http` (on 127.0.0.1 even when it listens on every address).
    pub http: SocketAddr,
    /// What `--http` binds, when not `http` itself.
    http_bind: Option<SocketAddr>,
    /// What `--listen` binds (the gRPC address unless started with another).
    listen: SocketAddr,
    extra: Vec<String>,
    log: PathBuf,
}

impl ControlPlane {
    /// Starts weft-cp with a fresh data dir and waits until it serves.
    pub async fn start(extra: &[&str]) -> Self {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), None, extra).await
    }

    /// Like [`ControlPlane::start`], with `--http` bound to `ip` (e.g. 0.0.0.0, which is
    /// not a loopback address: the dashboard then asks for a login).
    pub async fn start_http_on(ip: Option<std::net::IpAddr>, extra: &[&str]) -> Self {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), ip, extra).await
    }

    /// Starts weft-cp with its gRPC listener on `ip` (e.g. `0.0.0.0`, a control plane
    /// not on loopback); clients still reach it at 127.0.0.1.
    pub async fn start_listening(ip: std::net::IpAddr, extra: &[&str]) -> Self {
        Self::start_on(ip, None, extra).await
    }

    /// Starts weft-cp with `--listen` on `listen` and `--http` on `http` (default
    /// 127.0.0.1), both on free ports; clients reach both at 127.0.0.1.
    async fn start_on(
        listen: std::net::IpAddr,
        http: Option<std::net::IpAddr>,
        extra: &[&str],
    ) -> Self {
        let ip = http;
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("weft-data");
        let port = free_port();
        let mut cp = ControlPlane {
            child: None,
            data_dir,
            log: tmp.path().join("cp.log"),
            _tmp: Some(tmp),
            grpc: SocketAddr::from(([127, 0, 0, 1], port)),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            http_bind: None,
            listen: SocketAddr::new(listen, port),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        cp.http_bind = ip.map(|ip| SocketAddr::new(ip, cp.http.port()));
        cp.spawn().await;
        cp
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin("weft-cp"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--http")
            .arg(self.http_bind.unwrap_or(self.http).to_string())
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("weft-cp exited early ({status}); log:\n{}", self.log_text());
            }
            if std::net::TcpStream::connect(self.grpc).is_ok()
                && self.data_dir.join("admin.token").exists()
                && std::net::TcpStream::connect(self.http).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weft-cp did not start; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("ca.pem")).unwrap()
    }

    /// Runs weftctl against this control plane with explicit flags.
    pub fn weftctl(&self, args: &[&str]) -> Output {
        self.weftctl_with_token(&self.admin_token(), args)
    }

    /// Runs weftctl with `token` (e.g. a viewer token) instead of the admin token.
    pub fn weftctl_with_token(&self, token: &str, args: &[&str]) -> Output {
        Command::new(bin("weftctl"))
            .arg("--cp")
            .arg(self.url())
            .arg("--token")
            .arg(token)
            .arg("--ca")
            .arg(self.data_dir.join("ca.pem"))
            .args(args)
            .env_remove("WEFT_CP")
            .env_remove("WEFT_TOKEN")
            .env_remove("WEFT_CA")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs weftctl and asserts success; returns stdout.
    pub fn weftctl_ok(&self, args: &[&str]) -> String {
        let out = self.weftctl(args);
        assert!(
            out.status.success(),
            "weftctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts it again on the same ports and data dir.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Starts it again on the same ports and data dir with other extra flags.
    pub async fn restart_with(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
        self.restart().await;
    }

    /// A raw tonic admin client: TLS verified against ca.pem, bearer token attached.
    pub async fn admin(&self) -> AdminClient<InterceptedService<Channel, BearerToken>> {
        self.admin_with_token(&self.admin_token()).await
    }

    pub async fn admin_with_token(
        &self,
        token: &str,
    ) -> AdminClient<InterceptedService<Channel, BearerToken>> {
        let channel = self.tls_channel().await;
        AdminClient::with_interceptor(channel, BearerToken(format!("Bearer {token}")))
    }

    /// A TLS channel (no client certificate) to the control plane.
    pub async fn tls_channel(&self) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca_pem()))
            .domain_name("localhost");
        Endpoint::from_shared(self.url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A bootstrap token for `service` (created through the admin API).
    pub async fn token_for(&self, kind: DataplaneKind, name: &str) -> String {
        self.admin()
            .await
            .create_token(CreateTokenRequest {
                kind: kind as i32,
                name: name.into(),
                ttl_seconds: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .token
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Adds `authorization` metadata.
#[derive(Clone)]
pub struct BearerToken(pub String);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut()
            .insert("authorization", self.0.parse().unwrap());
        Ok(req)
    }
}

/// A dataplane identity obtained from a real control plane with a bootstrap token.
pub struct DataplaneIdentity {
    pub channel: Channel,
    pub manager: Arc<weft_certs::IdentityManager>,
}

impl DataplaneIdentity {
    pub async fn bootstrap(cp_url: &str, token: &str) -> Self {
        let (id, identity, bundle) =
            weft_sidecar::control::bootstrap::obtain_identity(cp_url, token, None)
                .await
                .unwrap();
        let manager = Arc::new(weft_certs::IdentityManager::new(id, identity, bundle));
        let channel =
            weft_sidecar::control::bootstrap::mtls_channel(cp_url, manager.subscribe()).unwrap();
        DataplaneIdentity { channel, manager }
    }
}

/// A raw discovery stream that acks or nacks only when told to.
pub struct Subscriber {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<weft_proto::v1::DiscoveryResponse>,
}

impl Subscriber {
    /// Opens a stream and sends the hello.
    pub async fn connect(channel: Channel, hello: Hello) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(DiscoveryRequest {
            message: Some(Out::Hello(hello)),
        })
        .await
        .unwrap();
        let rx = DiscoveryClient::new(channel)
            .stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Subscriber { tx, rx })
    }

    /// The next update, within `within`.
    pub async fn next_update(&mut self, within: Duration) -> ConfigUpdate {
        self.try_next_update(within)
            .await
            .expect("expected a config update")
    }

    /// The next update if one comes within `within`; errors on a broken stream.
    pub async fn try_next_update(&mut self, within: Duration) -> Option<ConfigUpdate> {
        match tokio::time::timeout(within, self.rx.message()).await {
            Err(_) => None,
            Ok(Ok(Some(r))) => r.message.map(|In::Update(u)| u),
            Ok(Ok(None)) => panic!("stream closed by the control plane"),
            Ok(Err(s)) => panic!("stream failed: {s}"),
        }
    }

    /// The status the stream ended with (for refused hellos).
    pub async fn error(&mut self) -> tonic::Status {
        match tokio::time::timeout(Duration::from_secs(10), self.rx.message()).await {
            Ok(Err(s)) => s,
            other => panic!("expected the stream to fail, got {other:?}"),
        }
    }

    pub async fn ack(&self, version: u64) {
        self.tx
            .send(DiscoveryRequest {
                message: Some(Out::Ack(Ack { version })),
            })
            .await
            .unwrap();
    }

    pub async fn nack(&self, version: u64, error: &str) {
        self.tx
            .send(DiscoveryRequest {
                message: Some(Out::Nack(Nack {
                    version,
                    error: error.into(),
                })),
            })
            .await
            .unwrap();
    }

    pub async fn send(&self, m: Out) {
        self.tx
            .send(DiscoveryRequest { message: Some(m) })
            .await
            .unwrap();
    }
}

/// A sidecar hello for `service` at `address`.
pub fn sidecar_hello(service: &str, region: &str, address: &str) -> Hello {
    Hello {
        kind: DataplaneKind::Sidecar as i32,
        name: service.into(),
        region: region.into(),
        address: address.into(),
        known_version: 0,
        control_plane_id: String::new(),
        dataplane_id: String::new(),
        accepts_update_parts: false,
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

/// A demo app (`weft-demo-app`) on a free port.
pub struct App {
    pub addr: SocketAddr,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl App {
    /// `mode`: h1, h2c, auto or grpc.
    pub async fn start(mode: &str, name: &str) -> App {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let proc = Proc::spawn(
            bin("weft-demo-app"),
            vec![
                "--listen".into(),
                addr.to_string(),
                "--mode".into(),
                mode.into(),
                "--name".into(),
                name.into(),
            ],
            dir.path().join("app.log"),
        );
        wait_port(addr, Duration::from_secs(10)).await;
        App {
            addr,
            proc,
            _dir: dir,
        }
    }
}

/// A random loopback address, so parallel tests can bind the same service ports.
pub fn loopback_ip() -> std::net::IpAddr {
    std::net::IpAddr::from([
        127,
        fastrand::u8(1..=254),
        fastrand::u8(1..=254),
        fastrand::u8(2..=254),
    ])
}

/// A running `weft-sidecar run`.
pub struct Sidecar {
    pub proc: Proc,
    pub service: String,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub outbound_ip: std::net::IpAddr,
    pub state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts a sidecar for `service` in front of `app`, and waits until it is ready.
    pub async fn start(cp: &ControlPlane, service: &str, app: SocketAddr, region: &str) -> Sidecar {
        let token = cp.token_for(DataplaneKind::Sidecar, service).await;
        Self::start_with(cp.url(), &token, service, app, region, &[]).await
    }

    pub async fn start_with(
        cp_url: String,
        token: &str,
        service: &str,
        app: SocketAddr,
        region: &str,
        extra: &[&str],
    ) -> Sidecar {
        let inbound = SocketAddr::from(([127, 0, 0, 1], free_port()));
        Self::start_on(cp_url, token, service, app, region, inbound, extra).await
    }

    /// [`Sidecar::start_with`] on a chosen `--inbound` address (e.g. one a test proxy
    /// forwards to, advertised with `--advertise`).
    pub async fn start_on(
        cp_url: String,
        token: &str,
        service: &str,
        app: SocketAddr,
        region: &str,
        inbound: SocketAddr,
        extra: &[&str],
    ) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let outbound_ip = loopback_ip();
        let state_dir = dir.path().join("state");
        let mut args: Vec<String> = [
            "run",
            "--cp",
            &cp_url,
            "--token",
            token,
            "--service",
            service,
            "--app",
            &app.to_string(),
            "--region",
            region,
            "--inbound",
            &inbound.to_string(),
            "--admin",
            &admin.to_string(),
            "--outbound-ip",
            &outbound_ip.to_string(),
            "--state-dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(state_dir.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(bin("weft-sidecar"), args, dir.path().join("sidecar.log"));
        let sc = Sidecar {
            proc,
            service: service.into(),
            inbound,
            admin,
            outbound_ip,
            state_dir,
            _dir: dir,
        };
        sc.wait_ready(Duration::from_secs(30)).await;
        sc
    }

    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(body) = http_get(self.admin, "/ready").await {
                if body.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "sidecar {} not ready; log:\n{}",
                self.service,
                self.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The config the sidecar holds (its /config endpoint).
    pub async fn config(&self) -> serde_json::Value {
        let body = http_get(self.admin, "/config").await.unwrap_or_default();
        let json = body.split("\r\n\r\n").nth(1).unwrap_or("{}");
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until the sidecar holds a config where `service` has `protocol`.
    pub async fn wait_protocol(&self, service: &str, protocol: &str) {
        eventually(Duration::from_secs(15), || async {
            let c = self.config().await;
            (c["services"][service]["protocol"] == protocol).then_some(())
        })
        .await;
    }

    /// Waits until the sidecar has a healthy endpoint count for `service`.
    pub async fn wait_endpoints(&self, service: &str, healthy: usize) {
        eventually(Duration::from_secs(15), || async {
            let c = self.config().await;
            let n = c["endpoints"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter(|e| e["service"] == service && e["healthy"] == true)
                        .count()
                })
                .unwrap_or(0);
            (n == healthy).then_some(())
        })
        .await;
    }

    /// The outbound address of `port` on this sidecar.
    pub fn outbound(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.outbound_ip, port)
    }
}

/// A plain HTTP/1.1 GET with `Connection: close`; returns the raw response.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Runs curl; returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl must be installed (apt-get install curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl that must succeed; returns the JSON body.
pub fn curl_json(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = curl(args);
    assert_eq!(code, 0, "curl {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("curl {args:?}: not JSON ({e}): {out}"))
}

/// SHA-256 of `data`, lower-case hex (what the demo app reports).
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The events of a demo app's journal (its `/_requests` JSON) for requests to `path`.
pub fn journal_events(journal: &serde_json::Value, path: &str) -> Vec<serde_json::Value> {
    journal["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["path"] == path)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// How to install the Python clients' packages.
pub const PIP_INSTALL: &str = "python3 -m pip install -r tests/py/requirements.txt";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn py_dir() -> PathBuf {
    workspace_root().join("tests").join("py")
}

/// Fails (never skips) when the Python clients' packages are missing.
pub fn require_python_packages() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_tools, websockets, h2, hyperframe, wsproto",
        ])
        .output()
        .unwrap_or_else(|err| panic!("python3 is needed ({err}); then run: {PIP_INSTALL}"));
    assert!(
        out.status.success(),
        "the Python clients' packages are missing; install them with `{PIP_INSTALL}` \
         (from the workspace root):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a Python client of tests/py; returns its JSON output and whether it exited 0.
pub fn py(script: &str, args: &[&str]) -> (serde_json::Value, bool) {
    require_python_packages();
    let out = Command::new("python3")
        .arg(py_dir().join(script))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "{script} {args:?} printed no JSON ({err}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (json, out.status.success())
}

/// Runs a Python client that must succeed.
pub fn py_ok(script: &str, args: &[&str]) -> serde_json::Value {
    let (json, success) = py(script, args);
    assert!(
        success && json["ok"] == true,
        "{script} {args:?} failed: {json:#}"
    );
    json
}

/// A running `weft-sidecar gateway` with an HTTP and an HTTPS listener.
pub struct Gateway {
    pub proc: Proc,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// The development certificate it serves (covers localhost and *.example.com).
    pub cert: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(cp: &ControlPlane, name: &str, extra: &[&str]) -> Gateway {
        let token = cp.token_for(DataplaneKind::Gateway, name).await;
        let dir = tempfile::tempdir().unwrap();
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cert = dir.path().join("dev-cert.pem");
        let mut args: Vec<String> = [
            "gateway",
            "--cp",
            &cp.url(),
            "--token",
            &token,
            "--http",
            &http.to_string(),
            "--https",
            &https.to_string(),
            "--admin",
            &admin.to_string(),
            "--dev-cert-host",
            "*.example.com",
            "--region",
            "eu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--dev-cert-out".into());
        args.push(cert.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(bin("weft-sidecar"), args, dir.path().join("gateway.log"));
        let gw = Gateway {
            proc,
            http,
            https,
            admin,
            cert,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(body) = http_get(gw.admin, "/ready").await {
                if body.starts_with("HTTP/1.1 200") {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready:\n{}",
                gw.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gw
    }

    /// curl arguments that reach `host` on the plain listener (Host = host).
    pub fn plain(&self, host: &str, path: &str) -> Vec<String> {
        vec![
            "--connect-to".into(),
            format!("{host}:{}:127.0.0.1:{}", self.http.port(), self.http.port()),
            format!("http://{host}:{}{path}", self.http.port()),
        ]
    }

    /// curl arguments that reach `host` over TLS (SNI and Host = host).
    pub fn tls(&self, host: &str, path: &str) -> Vec<String> {
        vec![
            "--cacert".into(),
            self.cert.display().to_string(),
            "--connect-to".into(),
            format!(
                "{host}:{}:127.0.0.1:{}",
                self.https.port(),
                self.https.port()
            ),
            format!("https://{host}:{}{path}", self.https.port()),
        ]
    }

    /// Waits until the gateway holds a route for `host`.
    pub async fn wait_route(&self, host: &str) {
        eventually(Duration::from_secs(15), || async {
            let body = http_get(self.admin, "/config").await.ok()?;
            body.contains(&format!("\"host\": \"{host}\""))
                .then_some(())
        })
        .await;
    }
}

/// The sum of a Prometheus metric's samples on a dataplane's admin endpoint, over the
/// lines whose labels include every `labels` pair (0 when none matches).
pub async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> u64 {
    let body = http_get(admin, "/metrics").await.unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A running `weft-sidecar ingress`.
pub struct Ingress {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Its `--state-dir` (certificate, key, bundle, config).
    pub state_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ingress {
    /// Starts the ingress of `region` (not waiting: it serves once it has a config).
    pub async fn start(cp: &ControlPlane, region: &str) -> Ingress {
        Self::start_listening(cp, region, std::net::Ipv4Addr::LOCALHOST.into()).await
    }

    /// Starts the ingress of `region` listening on `ip` (e.g. `0.0.0.0`: not a mesh on
    /// one host), announcing 127.0.0.1 and its port.
    pub async fn start_listening(cp: &ControlPlane, region: &str, ip: std::net::IpAddr) -> Ingress {
        let token = cp
            .token_for(DataplaneKind::Ingress, &format!("{region}-ingress"))
            .await;
        let port = free_port();
        let listen = SocketAddr::new(ip, port);
        let advertise = SocketAddr::from(([127, 0, 0, 1], port));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        let proc = Proc::spawn(
            bin("weft-sidecar"),
            [
                "ingress",
                "--cp",
                &cp.url(),
                "--token",
                &token,
                "--region",
                region,
                "--listen",
                &listen.to_string(),
                "--advertise",
                &advertise.to_string(),
                "--admin",
                &admin.to_string(),
                "--state-dir",
                &state_dir.display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            dir.path().join("ingress.log"),
        );
        Ingress {
            proc,
            listen: advertise,
            admin,
            state_dir,
            _dir: dir,
        }
    }

    /// Connections it counted with `result` (spliced, relayed, unknown_sni, ...).
    pub async fn connections(&self, result: &str) -> u64 {
        metric(
            self.admin,
            "weft_connections_total",
            &[("direction", "ingress"), ("result", result)],
        )
        .await
    }
}

/// A sidecar for a `client` service (tcp, no port) in front of an idle app: it only
/// carries outbound connections, like the sidecar of a caller.
pub async fn client_sidecar(cp: &ControlPlane) -> (App, Sidecar) {
    deploy(cp, "client", "tcp", 0, "h1", "eu").await
}

/// Creates `service` with `protocol` (and outbound `port`, unless 0), starts a demo app
/// named after the service in `mode`, and its sidecar in `region`.
pub async fn deploy(
    cp: &ControlPlane,
    service: &str,
    protocol: &str,
    port: u16,
    mode: &str,
    region: &str,
) -> (App, Sidecar) {
    let port = port.to_string();
    let mut args = vec!["service", "create", service, "--protocol", protocol];
    if port != "0" {
        args.extend(["--port", &port]);
    }
    cp.weftctl_ok(&args);
    let app = App::start(mode, service).await;
    let sc = Sidecar::start(cp, service, app.addr, region).await;
    (app, sc)
}

/// mTLS helpers for identity tests: an echo listener that, like a sidecar's inbound,
/// builds its config from the current credentials at each accept, and clients.
pub mod mtls {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_rustls::client::TlsStream;
    use weft_certs::{
        Identity, IdentityManager, SpiffeId, TrustBundle, mesh_client_config, mesh_server_config,
    };

    const ALPN: &[u8] = b"weft-test";

    /// Listens on 127.0.0.1 as `manager`'s identity and echoes; reports each handshake:
    /// the client's leaf (DER) or the error.
    pub async fn echo_server(
        manager: Arc<IdentityManager>,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<Result<Vec<u8>, String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let creds = manager.current();
                let config = mesh_server_config(&creds.identity, &creds.bundle, &[ALPN]).unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut tls = match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(format!("{e:?}")));
                            return;
                        }
                    };
                    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                    let _ = tx.send(Ok(leaf));
                    let mut buf = vec![0u8; 4096];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tls.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// An identity for `id` signed by a CA of its own, which the mesh does not trust.
    pub fn foreign_identity(td: &weft_certs::TrustDomain, id: &SpiffeId) -> Identity {
        let foreign_ca = weft_certs::CertificateAuthority::generate(td).unwrap();
        let (key, csr) = weft_certs::generate_csr(id).unwrap();
        let issued = foreign_ca
            .issue_from_csr(&csr, id, Duration::from_secs(3600))
            .unwrap();
        Identity::from_pem(&issued.chain_pem, &key).unwrap()
    }

    /// Opens an mTLS connection as `client`, accepting only `server`'s id.
    pub async fn connect_as(
        client: &Identity,
        bundle: &TrustBundle,
        server: &SpiffeId,
        addr: SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let config = mesh_client_config(client, bundle, server, &[ALPN]).unwrap();
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("peer.mesh.invalid").unwrap(), tcp)
            .await
    }

    /// Opens an mTLS connection with `client`'s current credentials.
    pub async fn connect(
        client: &IdentityManager,
        server: &SpiffeId,
        addr: SocketAddr,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let creds = client.current();
        connect_as(&creds.identity, &creds.bundle, server, addr).await
    }

    /// Sends `msg` and expects it echoed within 10 s.
    pub async fn roundtrip(conn: &mut TlsStream<TcpStream>, msg: &str) {
        conn.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut buf))
            .await
            .expect("echo within 10 s")
            .unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), msg);
    }
}
