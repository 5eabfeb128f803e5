//! Every path a request can take to an app, so a suite can hold each path to one
//! specification (`tests/tests/transparency*.rs`), the way linkerd2-proxy's
//! transparency tests run one set of cases per proxy layout.
//!
//! - [`Route::Direct`]: client → the client sidecar's outbound listener → CONNECT tunnel
//!   → the app's sidecar (inbound) → app. Clients: HTTP/1.1 and h2c.
//! - [`Route::Gateway`]: client → edge gateway → the app's sidecar → app. Clients:
//!   HTTP/1.1, h2c (prior knowledge), and TLS with ALPN `http/1.1` or `h2`.
//!
//! A [`Paths`] runs one demo app per selector (`http` → HTTP/1.1 app, `http2` → h2c app,
//! `grpc` → gRPC app, which answers plain HTTP with its echo, `tcp` → the server-first
//! raw app) and drives a cell (route × client × selector) with real clients: curl for
//! ordinary exchanges, raw sockets where curl cannot say what is needed (HTTP/1.1
//! trailers, a body cut off), and the `h2` crate where frames matter (trailers,
//! RST_STREAM). Everything listens on 127.0.0.x.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{App, ControlPlane, Gateway, Sidecar, client_sidecar, deploy, eventually, sha256_hex};

mod answers;
mod spec;

pub use answers::{Answer, H1Response, H2Answer, h2_exchange, read_to_close};
pub use spec::{Failures, Refusal, seen};

/// Which way requests reach the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Through a client sidecar's outbound listener and the CONNECT tunnel.
    Direct,
    /// Through the edge gateway.
    Gateway,
}

/// How the client speaks to the first hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    H1,
    /// HTTP/2 prior knowledge, cleartext.
    H2c,
    /// TLS, ALPN `http/1.1`.
    TlsH1,
    /// TLS, ALPN `h2`.
    TlsH2,
}

impl Client {
    pub fn is_h2(self) -> bool {
        matches!(self, Client::H2c | Client::TlsH2)
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Client::TlsH1 | Client::TlsH2)
    }

    /// curl's flag for this version.
    fn curl_flag(self) -> &'static str {
        match self {
            Client::H1 | Client::TlsH1 => "--http1.1",
            Client::H2c => "--http2-prior-knowledge",
            Client::TlsH2 => "--http2",
        }
    }

    /// The HTTP version curl reports for this client (`%{http_version}`).
    pub fn curl_version(self) -> &'static str {
        if self.is_h2() { "2" } else { "1.1" }
    }
}

/// The service's protocol selector, each with the app that matches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selector {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Selector {
    pub const ALL: [Selector; 4] = [
        Selector::Http,
        Selector::Http2,
        Selector::Grpc,
        Selector::Tcp,
    ];
    /// The selectors whose apps speak HTTP.
    pub const HTTP: [Selector; 3] = [Selector::Http, Selector::Http2, Selector::Grpc];

    pub fn name(self) -> &'static str {
        match self {
            Selector::Http => "http",
            Selector::Http2 => "http2",
            Selector::Grpc => "grpc",
            Selector::Tcp => "tcp",
        }
    }

    /// `weft-demo-app --mode` of the app behind it.
    pub fn app_mode(self) -> &'static str {
        match self {
            Selector::Http => "h1",
            Selector::Http2 => "h2c",
            Selector::Grpc => "grpc",
            Selector::Tcp => "raw",
        }
    }

    /// The HTTP version the app reports for every request it gets.
    pub fn app_version(self) -> &'static str {
        match self {
            Selector::Http => "HTTP/1.1",
            _ => "HTTP/2.0",
        }
    }

    /// Whether the app speaks HTTP/1.1 (else h2c, or no HTTP for `tcp`).
    pub fn app_is_h1(self) -> bool {
        self == Selector::Http
    }

    /// The name of the service with this selector.
    pub fn service_name(self) -> &'static str {
        self.service().0
    }

    /// The service's name, and its outbound port on a client sidecar.
    fn service(self) -> (&'static str, u16) {
        match self {
            Selector::Http => ("t-http", 18600),
            Selector::Http2 => ("t-http2", 18601),
            Selector::Grpc => ("t-grpc", 18602),
            Selector::Tcp => ("t-tcp", 18603),
        }
    }

    /// The public host the gateway routes to this service (one label under the
    /// development certificate's `*.example.com`).
    pub fn gateway_host(self) -> String {
        format!("{}.example.com", self.service().0)
    }
}

/// One cell of the matrix: how the client reaches which app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cell {
    pub route: Route,
    pub client: Client,
    pub selector: Selector,
}

impl Cell {
    /// A name for the cell usable in a URL query, so each cell's requests can be told
    /// apart in the app's journal.
    pub fn tag(&self) -> String {
        self.to_string()
            .trim_matches(|c| c == '[' || c == ']')
            .replace([' ', '(', ')'], "")
            .replace("->", "-to-")
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = match self.route {
            Route::Direct => "direct",
            Route::Gateway => "gateway",
        };
        let client = match self.client {
            Client::H1 => "h1",
            Client::H2c => "h2c",
            Client::TlsH1 => "tls-h1",
            Client::TlsH2 => "tls-h2",
        };
        write!(
            f,
            "[{route} {client} -> {} ({} app)]",
            self.selector.name(),
            self.selector.app_mode()
        )
    }
}

/// Where a cell's client connects, and as whom.
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` the client puts in Host / `:authority`.
    pub authority: String,
    /// The TLS server name, for TLS clients.
    pub server_name: Option<String>,
}

struct Service {
    selector: Selector,
    app: App,
    _sidecar: Sidecar,
}

/// A control plane, one app + sidecar per selector, and the first hop of `route`.
pub struct Paths {
    pub route: Route,
    pub cp: ControlPlane,
    services: Vec<Service>,
    client: Option<(App, Sidecar)>,
    pub gateway: Option<Gateway>,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub tmp: tempfile::TempDir,
}

impl Paths {
    /// Starts everything for `route` and waits until every service answers through it.
    pub async fn start(route: Route) -> Paths {
        let cp = ControlPlane::start(&[]).await;
        let mut services = Vec::new();
        for selector in Selector::ALL {
            let (name, port) = selector.service();
            let (app, sidecar) =
                deploy(&cp, name, selector.name(), port, selector.app_mode(), "eu").await;
            services.push(Service {
                selector,
                app,
                _sidecar: sidecar,
            });
        }
        let (client, gateway) = match route {
            Route::Direct => (Some(client_sidecar(&cp).await), None),
            Route::Gateway => {
                for selector in Selector::ALL {
                    cp.weftctl_ok(&[
                        "route",
                        "create",
                        &selector.gateway_host(),
                        "--service",
                        selector.service().0,
                    ]);
                }
                let gw = Gateway::start(&cp, "edge", &[]).await;
                for selector in Selector::ALL {
                    gw.wait_route(&selector.gateway_host()).await;
                }
                (None, Some(gw))
            }
        };
        let tls = gateway.as_ref().map(|gw| tls_config(&gw.cert));
        let paths = Paths {
            route,
            cp,
            services,
            client,
            gateway,
            tls,
            tmp: tempfile::tempdir().unwrap(),
        };
        paths.wait_served().await;
        paths
    }

    /// Waits until each HTTP service answers through the first hop (discovery and
    /// endpoint health settle after start-up), and the raw app's banner arrives.
    async fn wait_served(&self) {
        for cell in self.cells(&Selector::HTTP) {
            if cell.client != Client::H1 {
                continue;
            }
            eventually(Duration::from_secs(20), || async {
                (self.curl(cell, &[], "/ready").status == 200).then_some(())
            })
            .await;
        }
        if self.route == Route::Direct {
            let cell = self.cell(Client::H1, Selector::Tcp);
            eventually(Duration::from_secs(20), || async {
                let mut io = self.connect(cell).await.ok()?;
                let mut line = [0u8; 17];
                tokio::time::timeout(Duration::from_secs(2), io.read_exact(&mut line))
                    .await
                    .ok()?
                    .ok()?;
                (&line == b"weft-demo-app raw").then_some(())
            })
            .await;
        }
    }

    /// The clients this route takes.
    pub fn clients(&self) -> &'static [Client] {
        match self.route {
            Route::Direct => &[Client::H1, Client::H2c],
            Route::Gateway => &[Client::H1, Client::H2c, Client::TlsH1, Client::TlsH2],
        }
    }

    pub fn cell(&self, client: Client, selector: Selector) -> Cell {
        Cell {
            route: self.route,
            client,
            selector,
        }
    }

    /// Every client of this route against each of `selectors`.
    pub fn cells(&self, selectors: &[Selector]) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &selector in selectors {
            for &client in self.clients() {
                cells.push(self.cell(client, selector));
            }
        }
        cells
    }

    pub fn app(&self, selector: Selector) -> &App {
        &self
            .services
            .iter()
            .find(|s| s.selector == selector)
            .expect("every selector has an app")
            .app
    }

    /// Where the client of `cell` connects.
    pub fn target(&self, cell: Cell) -> Target {
        match (&self.gateway, &self.client) {
            (Some(gw), _) => {
                let addr = if cell.client.is_tls() {
                    gw.https
                } else {
                    gw.http
                };
                let host = cell.selector.gateway_host();
                Target {
                    addr,
                    authority: format!("{host}:{}", addr.port()),
                    server_name: cell.client.is_tls().then_some(host),
                }
            }
            (None, Some((_, client))) => {
                let addr = client.outbound(cell.selector.service().1);
                Target {
                    addr,
                    authority: addr.to_string(),
                    server_name: None,
                }
            }
            (None, None) => unreachable!("a Paths has a gateway or a client sidecar"),
        }
    }

    /// The URL of `path` for `cell`'s client.
    pub fn url(&self, cell: Cell, path: &str) -> String {
        let t = self.target(cell);
        let scheme = if cell.client.is_tls() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}{path}", t.authority)
    }

    /// curl's arguments that reach `path` for `cell`: the version flag, then `extra`
    /// (so a later `--http1.0` in it wins), TLS trust and address.
    pub fn curl_args(&self, cell: Cell, extra: &[&str], path: &str) -> Vec<String> {
        let t = self.target(cell);
        let mut args = vec![cell.client.curl_flag().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(gw) = &self.gateway {
            let host = cell.selector.gateway_host();
            let port = t.addr.port();
            args.extend([
                "--connect-to".into(),
                format!("{host}:{port}:127.0.0.1:{port}"),
            ]);
            if cell.client.is_tls() {
                args.extend(["--cacert".into(), gw.cert.display().to_string()]);
            }
        }
        args.push(self.url(cell, path));
        args
    }

    /// Runs curl for `cell` with `extra` arguments; see [`Answer`].
    pub fn curl(&self, cell: Cell, extra: &[&str], path: &str) -> Answer {
        self.curl_stdin(cell, extra, path, None)
    }

    /// [`Self::curl`] with `stdin` fed from a file (for `-T -`: a body of unknown length).
    pub fn curl_stdin(
        &self,
        cell: Cell,
        extra: &[&str],
        path: &str,
        stdin: Option<&Path>,
    ) -> Answer {
        let n = fastrand::u64(..);
        let head = self.tmp.path().join(format!("head-{n}"));
        let body = self.tmp.path().join(format!("body-{n}"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "60", "-D"])
            .arg(&head)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code} %{size_upload} %{size_download}"])
            .args(self.curl_args(cell, extra, path));
        cmd.stdin(match stdin {
            Some(file) => Stdio::from(std::fs::File::open(file).unwrap()),
            None => Stdio::null(),
        });
        let out = cmd
            .output()
            .expect("curl must be installed (apt-get install curl)");
        let written = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut fields = written.split_whitespace();
        let mut next = || fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let (_, uploaded, downloaded) = (next(), next(), next());
        let dump = std::fs::read(&head).unwrap_or_default();
        let _ = std::fs::remove_file(&head);
        let body_bytes = std::fs::read(&body).unwrap_or_default();
        let _ = std::fs::remove_file(&body);
        let mut answer = Answer::from_dump(&String::from_utf8_lossy(&dump));
        answer.exit = out.status.code().unwrap_or(-1);
        answer.stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        answer.body = body_bytes;
        answer.uploaded = uploaded;
        answer.downloaded = downloaded;
        answer
    }

    /// Opens the client's connection for `cell`: TCP, or TLS with the client's ALPN.
    pub async fn connect(&self, cell: Cell) -> std::io::Result<Box<dyn Io>> {
        let t = self.target(cell);
        let tcp = TcpStream::connect(t.addr).await?;
        tcp.set_nodelay(true)?;
        let Some(server_name) = t.server_name else {
            return Ok(Box::new(tcp));
        };
        let mut config = (**self.tls.as_ref().expect("TLS targets have a trust root")).clone();
        config.alpn_protocols = vec![if cell.client.is_h2() {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let name = ServerName::try_from(server_name).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        Ok(Box::new(tls))
    }

    /// Sends `request` on a new connection for `cell` (HTTP/1.x clients) and reads until
    /// the server closes or 20 s passed.
    pub async fn raw_exchange(&self, cell: Cell, request: &[u8]) -> Vec<u8> {
        let mut io = self.connect(cell).await.unwrap();
        io.write_all(request).await.unwrap();
        io.flush().await.unwrap();
        read_to_close(&mut io, Duration::from_secs(20)).await
    }

    /// An HTTP/2 connection for `cell` (h2 clients), driven on its own task.
    pub async fn h2(&self, cell: Cell) -> h2::client::SendRequest<Bytes> {
        let io = self.connect(cell).await.unwrap();
        let (send, conn) = h2::client::Builder::new()
            .handshake::<_, Bytes>(io)
            .await
            .unwrap_or_else(|e| panic!("{cell}: h2 handshake: {e}"));
        tokio::spawn(async move {
            let _ = conn.await;
        });
        send.ready().await.unwrap()
    }

    /// An HTTP/2 request head for `cell`: `:authority` and `:scheme` as the client's.
    pub fn h2_request(&self, cell: Cell, method: &str, path: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(self.url(cell, path))
            .body(())
            .unwrap()
    }

    /// What the app of `selector` journaled for requests to `path` (its `/_requests`,
    /// asked directly, not through the mesh).
    pub fn app_events(&self, selector: Selector, path: &str) -> Vec<serde_json::Value> {
        let flag = if selector.app_is_h1() {
            "--http1.1"
        } else {
            "--http2-prior-knowledge"
        };
        let (code, out, err) = crate::curl(&[
            flag,
            &format!("http://{}/_requests", self.app(selector).addr),
        ]);
        assert_eq!(code, 0, "the app's journal: {err}");
        crate::journal_events(&serde_json::from_str(&out).unwrap(), path)
    }

    /// Writes `len` random bytes to a file; returns it and its SHA-256.
    pub fn random_file(&self, len: usize) -> (PathBuf, String) {
        let path = self
            .tmp
            .path()
            .join(format!("random-{}", fastrand::u64(..)));
        let mut data = vec![0u8; len];
        fastrand::fill(&mut data);
        std::fs::write(&path, &data).unwrap();
        (path, sha256_hex(&data))
    }
}

/// A client's connection: TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(weft_certs::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
