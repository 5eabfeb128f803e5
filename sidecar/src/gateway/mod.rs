//! `weft-sidecar gateway`: the public edge of the mesh.
//!
//! It takes HTTPS (ALPN h2/http1.1), h2c and HTTP/1.1 from the public side, routes by
//! host (exact, then the most specific wildcard; longest path prefix), and sends each
//! request into the mesh as one HTTP/2 stream on a pooled mTLS connection straight to
//! the destination sidecar's inbound port (ALPN `weft-http/2`), so streaming, trailers,
//! gRPC and WebSockets reach the app; the inbound translates at the last hop per the
//! service's selector. The gateway is a mesh member with its own identity
//! (`spiffe://<td>/gateway/<name>`), and checks the endpoint's.

pub mod access;
pub mod body;
pub mod h2c_upgrade;
pub mod listen;
pub mod proxy;
pub mod replay;
pub mod routes;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use weft_certs::IdentityKind;
use weft_proto::v1::{DataplaneKind, TrafficSource};

use crate::control::client::HelloInfo;
use crate::dataplane::{Common, Dataplane, bind, check_token};
use crate::metrics::Metrics;
use crate::outbound::balance::Balancer;
use crate::serve::{self, Drain, Drainer, Listener};
use proxy::{CertNames, Gateway};
use upstream::Upstreams;

/// Everything `weft-sidecar gateway` is configured with.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub common: Common,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Names for the generated development certificate.
    pub dev_cert_hosts: Vec<String>,
    /// Where the generated development certificate is written (for clients to trust).
    pub dev_cert_out: PathBuf,
    pub upstream_timeout: Duration,
    pub idle_timeout: Duration,
}

fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
                16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The public TLS config: the given certificate, or a development certificate made now
/// (and written to `dev_cert_out` so clients can trust it).
pub fn public_tls(cfg: &GatewayConfig) -> anyhow::Result<(Arc<rustls::ServerConfig>, CertNames)> {
    let (chain, key) = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("cannot read --tls-cert {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| {
                    format!("--tls-cert {} is not PEM certificates", cert.display())
                })?;
            let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
                format!("cannot read a private key from --tls-key {}", key.display())
            })?;
            (chain, key)
        }
        _ => {
            let mut names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            names.extend(cfg.dev_cert_hosts.iter().cloned());
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::new(names)?;
            params.distinguished_name.push(
                rcgen::DnType::CommonName,
                "Weft gateway (development certificate)",
            );
            let cert = params.self_signed(&key)?;
            write_pem(&cfg.dev_cert_out, &cert.pem())?;
            tracing::warn!(
                path = %cfg.dev_cert_out.display(),
                "no --tls-cert given: serving a self-signed development certificate; clients can trust it with e.g. curl --cacert {}",
                cfg.dev_cert_out.display()
            );
            let key = PrivateKeyDer::try_from(key.serialize_der())
                .map_err(|e| anyhow::anyhow!("generated key unusable: {e}"))?;
            (vec![cert.der().clone()], key)
        }
    };
    let names = chain.first().map(dns_names).unwrap_or_default();
    let mut config = rustls::ServerConfig::builder_with_provider(weft_certs::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), CertNames(names)))
}

fn write_pem(path: &Path, pem: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, pem).with_context(|| format!("cannot write {}", path.display()))
}

/// Serves the public listeners: plain (HTTP/1.1, h2c) and TLS.
fn serve_listeners(
    gw: &Arc<Gateway>,
    http: Option<TcpListener>,
    https: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    max_connections: usize,
    drain: &Drain,
) {
    let listener = |listener| Listener {
        listener,
        direction: "gateway",
        max_connections,
    };
    if let Some(l) = http {
        let gw = gw.clone();
        tokio::spawn(serve::accept(
            listener(l),
            gw.metrics.clone(),
            drain.clone(),
            move |tcp, peer, drain| listen::plain(tcp, peer, gw.clone(), drain),
        ));
    }
    if let Some((l, tls)) = https {
        let gw = gw.clone();
        tokio::spawn(serve::accept(
            listener(l),
            gw.metrics.clone(),
            drain.clone(),
            move |tcp, peer, drain| listen::secure(tcp, peer, gw.clone(), tls.clone(), drain),
        ));
    }
}

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let name = check_token(&cfg.common.token, IdentityKind::Gateway, None)?;
    if cfg.http.is_none() && cfg.https.is_none() {
        anyhow::bail!("nothing to serve: pass --http ADDR and/or --https ADDR");
    }
    let http = match cfg.http {
        Some(a) => Some(bind("http", a).await?),
        None => None,
    };
    let https = match cfg.https {
        Some(a) => Some(bind("https", a).await?),
        None => None,
    };
    let admin = bind("admin", cfg.common.admin).await?;
    let (tls, cert_names) = if https.is_some() {
        let (t, n) = public_tls(&cfg)?;
        (Some(t), n)
    } else {
        (None, CertNames::default())
    };
    let address = cfg
        .http
        .or(cfg.https)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let hello = HelloInfo {
        kind: DataplaneKind::Gateway,
        name: name.clone(),
        region: cfg.common.region.clone(),
        address: if address.starts_with("0.0.0.0") {
            address.replacen("0.0.0.0", "127.0.0.1", 1)
        } else {
            address
        },
        dataplane_id: String::new(),
    };
    let metrics = Arc::new(Metrics::new());
    let dp = Dataplane::start(&cfg.common, admin, metrics.clone(), hello, None).await?;

    let upstreams = Upstreams::new(dp.tls.clone(), Balancer::new(&cfg.common.region));
    let gw = Arc::new(Gateway {
        config: dp.config.clone(),
        upstreams: upstreams.clone(),
        metrics: metrics.clone(),
        upstream_timeout: cfg.upstream_timeout,
        idle_timeout: cfg.idle_timeout,
        cert_names,
        source: TrafficSource {
            kind: DataplaneKind::Gateway as i32,
            name: name.clone(),
        },
    });
    let (drainer, drain) = Drainer::new();
    serve_listeners(
        &gw,
        http,
        https.zip(tls),
        cfg.common.max_connections,
        &drain,
    );
    let not_ready = dp.run(None, move |c| upstreams.retain(c));
    tracing::info!(gateway = %name, http = ?cfg.http, https = ?cfg.https, admin = %cfg.common.admin, "weft gateway running");
    shutdown.await;
    not_ready.send_replace(Some("shutting down".into()));
    drainer.drain(cfg.common.drain_timeout).await;
    Ok(())
}
