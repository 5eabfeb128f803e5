//! `weft-sidecar ingress`: the border of a region for tunnels between regions when the
//! networks are not flat. It reads the SNI of each incoming TLS connection, which names
//! one dataplane. A dataplane of its own region: it splices the connection to that
//! dataplane's inbound port (the way in). A dataplane of another region: it splices the
//! connection to that region's ingress (the way out, for sidecars whose network reaches
//! only their own region). It never terminates TLS and holds no key that could decrypt
//! the tunnel: its own certificate only identifies it to the control plane. Both ends of
//! the tunnel still check each other's SPIFFE ids end to end.

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
use crate::io::splice;
use crate::metrics::{ActiveGuard, DirLabel, Metrics, ResultLabel};
use crate::serve::{self, Drainer, Listener};
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
    pub max_connections: usize,
    pub drain_timeout: Duration,
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

/// Where a connection for the dataplane named `sni` goes from the ingress of `region`
/// (reached at `own_address`): the dataplane itself when it is in this region, the
/// ingress of its region otherwise. None when no dataplane has that name, or when the
/// next hop would be this ingress again.
fn next_hop(
    config: &MeshConfig,
    sni: &str,
    region: &str,
    own_address: &str,
) -> Option<(String, &'static str)> {
    let ep = config.endpoints.values().find(|e| e.sni == sni)?;
    if ep.region == region {
        Some((ep.address.clone(), "spliced"))
    } else if !ep.ingress_address.is_empty() && ep.ingress_address != own_address {
        Some((ep.ingress_address.clone(), "relayed"))
    } else {
        None
    }
}

/// Routes one connection by its SNI: to a dataplane of `region`, or to the ingress of
/// the dataplane's region.
async fn handle(
    mut tcp: TcpStream,
    config: watch::Receiver<Arc<MeshConfig>>,
    region: Arc<str>,
    own_address: Arc<str>,
    metrics: Arc<Metrics>,
) {
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
    let hop = next_hop(&config.borrow(), &name, &region, &own_address);
    let Some((target, result)) = hop else {
        tracing::info!(sni = %name, "no dataplane has that name, or its region has no other ingress");
        count(&metrics, "unknown_sni");
        return;
    };
    let mut upstream =
        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&target)).await {
            Ok(Ok(s)) => s,
            _ => {
                tracing::warn!(sni = %name, %target, "next hop unreachable");
                count(&metrics, "unreachable");
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    if upstream.write_all(&buf).await.is_err() {
        return;
    }
    count(&metrics, result);
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
    let region: Arc<str> = cfg.region.as_str().into();
    let own_address: Arc<str> = advertise.as_str().into();
    let (drainer, drain) = Drainer::new();
    let config = handles.config.clone();
    let m = metrics.clone();
    tokio::spawn(serve::accept(
        Listener {
            listener,
            direction: "ingress",
            max_connections: cfg.max_connections,
        },
        metrics,
        drain,
        move |tcp, _peer, _drain| {
            handle(
                tcp,
                config.clone(),
                region.clone(),
                own_address.clone(),
                m.clone(),
            )
        },
    ));
    shutdown.await;
    // Spliced connections carry TLS the ingress cannot read: they finish on their own.
    let left = drainer.drain(cfg.drain_timeout).await;
    if left > 0 {
        tracing::warn!(
            left,
            "drain timeout reached; closing the connections still open"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::EndpointEntry;

    fn config() -> MeshConfig {
        let mut c = MeshConfig::default();
        for (id, region, address, ingress) in [
            ("eu-1", "eu", "10.0.1.5:15008", "eu-ingress:15009"),
            ("us-1", "us", "10.0.2.5:15008", "us-ingress:15009"),
            ("ap-1", "ap", "10.0.3.5:15008", ""),
        ] {
            c.endpoints.insert(
                id.into(),
                EndpointEntry {
                    id: id.into(),
                    service: "web".into(),
                    address: address.into(),
                    region: region.into(),
                    healthy: true,
                    identity: String::new(),
                    ingress_address: ingress.into(),
                    sni: format!("{id}.web.weft"),
                },
            );
        }
        c
    }

    #[test]
    fn own_region_is_spliced_to_the_dataplane() {
        let hop = next_hop(&config(), "eu-1.web.weft", "eu", "eu-ingress:15009");
        assert_eq!(hop, Some(("10.0.1.5:15008".into(), "spliced")));
    }

    #[test]
    fn other_regions_are_relayed_to_their_ingress() {
        let hop = next_hop(&config(), "us-1.web.weft", "eu", "eu-ingress:15009");
        assert_eq!(hop, Some(("us-ingress:15009".into(), "relayed")));
    }

    #[test]
    fn no_route_to_unknown_names_regions_without_ingress_or_itself() {
        let c = config();
        assert_eq!(next_hop(&c, "xx.web.weft", "eu", "eu-ingress:15009"), None);
        assert_eq!(
            next_hop(&c, "ap-1.web.weft", "eu", "eu-ingress:15009"),
            None
        );
        // A config naming this ingress as another region's must not loop.
        assert_eq!(
            next_hop(&c, "us-1.web.weft", "eu", "us-ingress:15009"),
            None
        );
    }
}
