//! Real dataplanes and apps: `weft-sidecar run`, `gateway` and `ingress`, and the
//! demo app, each on free loopback ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use weft_proto::v1::DataplaneKind;

use crate::{ControlPlane, Proc, bin, eventually, free_port, http_get, wait_port};

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
