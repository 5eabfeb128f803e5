//! `weft-sidecar ingress`: the entry of a region for tunnels from other regions when the
//! networks are not flat. It reads the SNI of each incoming TLS connection, which names
//! one dataplane of its region, and splices the connection to that dataplane's inbound
//! port. It never terminates TLS and holds no key that could decrypt the tunnel: its
//! own certificate only identifies it to the control plane. Both ends of the tunnel
//! still check each other's SPIFFE ids end to end.

pub mod sni;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use weft_certs::IdentityKind;
use weft_proto::v1::DataplaneKind;

use crate::admin::{self, AdminState};
use crate::control::bootstrap::{mtls_channel, run_renewal, token_claims};
use crate::control::bundle_sync::spawn_bundle_sync;
use crate::control::client::{DiscoveryClient, HelloInfo};
use crate::control::config::MeshConfig;
use crate::control::state_dir::StateDir;
use crate::inbound::splice;
use crate::metrics::{ActiveGuard, DirLabel, Metrics, ResultLabel};
use crate::tls::MeshTls;
use crate::tunnel::client::TunnelPool;
use sni::Sni;

/// How long a client may take to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `weft-sidecar ingress` is configured with.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    pub cp: String,
    pub token: String,
    pub listen: SocketAddr,
    pub region: String,
    /// Address other regions reach this ingress at (defaults to --listen).
    pub advertise: Option<String>,
    pub admin: SocketAddr,
    pub state_dir: Option<PathBuf>,
}

fn count(metrics: &Metrics, result: &'static str) {
    metrics
        .connections
        .get_or_create(&ResultLabel {
            direction: "ingress",
            result,
        })
        .inc();
}

/// Routes one connection by its SNI to a dataplane of `region`.
async fn handle(
    mut tcp: TcpStream,
    config: watch::Receiver<Arc<MeshConfig>>,
    region: String,
    metrics: Arc<Metrics>,
) {
    let _ = tcp.set_nodelay(true);
    let mut buf = Vec::with_capacity(2048);
    let read_hello = async {
        loop {
            match sni::parse(&buf) {
                Sni::NeedMore => {}
                other => return other,
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return Sni::Invalid("connection closed before the ClientHello"),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    let name = match tokio::time::timeout(HELLO_TIMEOUT, read_hello).await {
        Ok(Sni::Name(n)) => n,
        Ok(Sni::Invalid(why)) => {
            tracing::debug!(why, "not a routable TLS connection");
            count(&metrics, "refused");
            return;
        }
        Ok(Sni::NeedMore) | Err(_) => {
            count(&metrics, "timeout");
            return;
        }
    };
    // Only dataplanes of this ingress's own region are reachable through it.
    let target = config
        .borrow()
        .endpoints
        .values()
        .find(|e| e.sni == name && e.region == region)
        .map(|e| e.address.clone());
    let Some(target) = target else {
        tracing::info!(sni = %name, "no dataplane of this region has that name");
        count(&metrics, "unknown_sni");
        return;
    };
    let mut upstream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&target)).await {
            Ok(Ok(s)) => s,
            _ => {
                tracing::warn!(sni = %name, %target, "dataplane unreachable");
                count(&metrics, "unreachable");
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&buf).await.is_err() {
        return;
    }
    count(&metrics, "spliced");
    let _active = ActiveGuard::new(&metrics, "ingress");
    if let Ok((a, b)) = splice(&mut tcp, &mut upstream).await {
        metrics
            .bytes
            .get_or_create(&DirLabel {
                direction: "ingress",
            })
            .inc_by(a + b + buf.len() as u64);
    }
}

/// Runs the ingress until `shutdown` resolves.
pub async fn run(
    cfg: IngressConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let claims = token_claims(&cfg.token)?;
    if claims.kind != IdentityKind::Ingress {
        anyhow::bail!(
            "the token is for {} \"{}\", not an ingress; create one with `weftctl token create --ingress NAME`",
            claims.kind.segment(),
            claims.name
        );
    }
    let state = cfg.state_dir.as_deref().map(StateDir::open).transpose()?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on --listen {}", cfg.listen))?;
    let admin_listener = TcpListener::bind(cfg.admin)
        .await
        .with_context(|| format!("cannot listen on --admin {}", cfg.admin))?;
    let manager = crate::run::identity(&cfg.cp, &cfg.token, state.as_ref()).await?;
    let channel = mtls_channel(&cfg.cp, manager.subscribe())?;
    tokio::spawn(run_renewal(manager.clone(), channel.clone(), state.clone()));
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| cfg.listen.to_string());
    let (client, handles) = DiscoveryClient::new(
        channel,
        HelloInfo {
            kind: DataplaneKind::Ingress,
            name: claims.name.clone(),
            region: cfg.region.clone(),
            address: advertise.clone(),
            dataplane_id: String::new(),
        },
        state.clone(),
        None,
    );
    tokio::spawn(client.run());
    spawn_bundle_sync(handles.config.clone(), manager.clone());
    let metrics = Arc::new(Metrics::new());
    let tls = MeshTls::new(manager.subscribe());
    let (not_ready_tx, not_ready) = watch::channel(Some("waiting for the first config".to_owned()));
    {
        let mut config = handles.config.clone();
        tokio::spawn(async move {
            loop {
                if config.borrow_and_update().version > 0 {
                    not_ready_tx.send_replace(None);
                }
                if config.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(AdminState {
            metrics: metrics.clone(),
            config: handles.config.clone(),
            pool: TunnelPool::new(tls.clone()),
            tls,
            not_ready,
        }),
    ));
    tracing::info!(ingress = %claims.name, region = %cfg.region, listen = %cfg.listen, advertise = %advertise, "weft ingress running");
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((tcp, _)) => {
                    tokio::spawn(handle(
                        tcp,
                        handles.config.clone(),
                        cfg.region.clone(),
                        metrics.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
    Ok(())
}
