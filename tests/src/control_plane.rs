//! A real `weft-cp` on 127.0.0.1 with a fresh data dir, driven by the real
//! `weftctl`, a raw tonic client and dataplane subscribers.

use std::net::SocketAddr;
use std::path::PathBuf;
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

use crate::{bin, free_port};

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

    /// Creates the `tcp` service `name` on a free outbound port, and returns the port.
    pub fn create_tcp_service(&self, name: &str) -> u16 {
        let port = free_port();
        let port_arg = port.to_string();
        self.weftctl_ok(&[
            "service",
            "create",
            name,
            "--protocol",
            "tcp",
            "--port",
            &port_arg,
        ]);
        port
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
