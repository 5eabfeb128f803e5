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
use tokio::sync::watch;
use weft_certs::IdentityKind;
use weft_proto::v1::DataplaneKind;

use crate::admin::{self, AdminState};
use crate::control::bootstrap::{mtls_channel, run_renewal, token_claims};
use crate::control::bundle_sync::spawn_bundle_sync;
use crate::control::client::{DiscoveryClient, HelloInfo};
use crate::control::state_dir::StateDir;
use crate::metrics::Metrics;
use crate::outbound::balance::Balancer;
use crate::serve::{self, Drainer, Listener};
use crate::tls::MeshTls;
use crate::tunnel::client::TunnelPool;
use proxy::{CertNames, Gateway};
use upstream::Upstreams;

/// Everything `weft-sidecar gateway` is configured with.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub cp: String,
    pub token: String,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Names for the generated development certificate.
    pub dev_cert_hosts: Vec<String>,
    /// Where the generated development certificate is written (for clients to trust).
    pub dev_cert_out: PathBuf,
    pub region: String,
    pub admin: SocketAddr,
    pub state_dir: Option<PathBuf>,
    pub upstream_timeout: Duration,
    pub idle_timeout: Duration,
    /// Open client connections allowed per listener.
    pub max_connections: usize,
    /// How long open connections may take to finish at shutdown.
    pub drain_timeout: Duration,
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

/// Runs the gateway until `shutdown` resolves.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let claims = token_claims(&cfg.token)?;
    if claims.kind != IdentityKind::Gateway {
        anyhow::bail!(
            "the token is for {} \"{}\", not a gateway; create one with `weftctl token create --gateway NAME`",
            claims.kind.segment(),
            claims.name
        );
    }
    if cfg.http.is_none() && cfg.https.is_none() {
        anyhow::bail!("nothing to serve: pass --http ADDR and/or --https ADDR");
    }
    let state = cfg.state_dir.as_deref().map(StateDir::open).transpose()?;
    let http = match cfg.http {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on --http {a}"))?,
        ),
        None => None,
    };
    let https = match cfg.https {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on --https {a}"))?,
        ),
        None => None,
    };
    let admin_listener = TcpListener::bind(cfg.admin)
        .await
        .with_context(|| format!("cannot listen on --admin {}", cfg.admin))?;
    let (tls, cert_names) = if https.is_some() {
        let (t, n) = public_tls(&cfg)?;
        (Some(t), n)
    } else {
        (None, CertNames::default())
    };

    let manager = crate::run::identity(&cfg.cp, &cfg.token, state.as_ref()).await?;
    let channel = mtls_channel(&cfg.cp, manager.subscribe())?;
    tokio::spawn(run_renewal(manager.clone(), channel.clone(), state.clone()));
    let metrics = Arc::new(Metrics::new());
    let mesh_tls = MeshTls::new(manager.subscribe());
    let balancer = Balancer::new(&cfg.region);
    let address = cfg
        .http
        .or(cfg.https)
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (client, handles) = DiscoveryClient::new(
        channel,
        HelloInfo {
            kind: DataplaneKind::Gateway,
            name: claims.name.clone(),
            region: cfg.region.clone(),
            address: if address.starts_with("0.0.0.0") {
                address.replacen("0.0.0.0", "127.0.0.1", 1)
            } else {
                address
            },
            dataplane_id: String::new(),
        },
        state.clone(),
        None,
    );
    tokio::spawn(client.run());
    spawn_bundle_sync(handles.config.clone(), manager.clone());

    let upstreams = Upstreams::new(mesh_tls.clone(), balancer);
    let gw = Arc::new(Gateway {
        config: handles.config.clone(),
        upstreams: upstreams.clone(),
        metrics: metrics.clone(),
        upstream_timeout: cfg.upstream_timeout,
        idle_timeout: cfg.idle_timeout,
        cert_names,
    });
    let (not_ready_tx, not_ready) = watch::channel(Some("waiting for the first config".to_owned()));
    {
        let mut config = handles.config.clone();
        tokio::spawn(async move {
            loop {
                let c = config.borrow_and_update().clone();
                if c.version > 0 {
                    upstreams.retain(&c);
                    not_ready_tx.send_replace(None);
                }
                if config.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let (drainer, drain) = Drainer::new();
    let listener = |listener| Listener {
        listener,
        direction: "gateway",
        max_connections: cfg.max_connections,
    };
    if let Some(l) = http {
        let gw = gw.clone();
        tokio::spawn(serve::accept(
            listener(l),
            metrics.clone(),
            drain.clone(),
            move |tcp, peer, drain| listen::plain(tcp, peer, gw.clone(), drain),
        ));
    }
    if let (Some(l), Some(tls)) = (https, tls) {
        let gw = gw.clone();
        tokio::spawn(serve::accept(
            listener(l),
            metrics.clone(),
            drain.clone(),
            move |tcp, peer, drain| listen::secure(tcp, peer, gw.clone(), tls.clone(), drain),
        ));
    }
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(AdminState {
            metrics,
            config: handles.config.clone(),
            pool: TunnelPool::new(mesh_tls.clone()),
            tls: mesh_tls,
            not_ready,
        }),
    ));
    tracing::info!(gateway = %claims.name, http = ?cfg.http, https = ?cfg.https, admin = %cfg.admin, "weft gateway running");
    shutdown.await;
    tracing::info!(drain = ?cfg.drain_timeout, "draining: no new connections, GOAWAY sent");
    let left = drainer.drain(cfg.drain_timeout).await;
    if left > 0 {
        tracing::warn!(
            left,
            "drain timeout reached; closing the connections still open"
        );
    }
    Ok(())
}
