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
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use weft_certs::IdentityKind;
use weft_proto::v1::DataplaneKind;

use crate::control::client::HelloInfo;
use crate::control::config::MeshConfig;
use crate::dataplane::{Common, Dataplane, bind, check_token};
use crate::io::splice;
use crate::metrics::{ActiveGuard, DirLabel, Metrics, ResultLabel};
use crate::serve::{self, Drainer, Listener};
use crate::tunnel::DIAL_TIMEOUT;
use sni::Sni;

/// How long a client may take to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `weft-sidecar ingress` is configured with.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    pub common: Common,
    pub listen: SocketAddr,
    /// Address other regions reach this ingress at (defaults to --listen).
    pub advertise: Option<String>,
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

/// The addresses of `target` (`host:port`, resolved here) if the ingress may splice
/// there: the control plane already refuses such announced addresses, but a name may
/// resolve differently here, so the ingress checks again. With `single_host` (the
/// ingress itself listens on loopback: a mesh on one host) loopback is allowed.
async fn splice_targets(target: &str, single_host: bool) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("does not resolve: {e}"))?
        .collect();
    match addrs
        .iter()
        .find(|a| !weft_policy::address::may_connect(a.ip(), single_host))
    {
        Some(bad) => Err(format!(
            "resolves to {}, where an ingress never splices",
            bad.ip()
        )),
        None if addrs.is_empty() => Err("does not resolve".into()),
        None => Ok(addrs),
    }
}

/// Routes one connection by its SNI: to a dataplane of `region`, or to the ingress of
/// the dataplane's region.
async fn handle(
    mut tcp: TcpStream,
    config: watch::Receiver<Arc<MeshConfig>>,
    region: Arc<str>,
    own_address: Arc<str>,
    single_host: bool,
    metrics: Arc<Metrics>,
) {
    // Both sides are dataplanes: a side cut silently is let go by the kernel.
    crate::net::mesh_socket(&tcp);
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
    let addrs = match splice_targets(&target, single_host).await {
        Ok(addrs) => addrs,
        Err(why) => {
            tracing::warn!(sni = %name, %target, why, "refused: the announced address is not one the mesh connects to");
            count(&metrics, "refused_target");
            return;
        }
    };
    // Within the caller's own handshake timeout, which covers this hop.
    let mut upstream =
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&addrs[..])).await {
            Ok(Ok(s)) => s,
            _ => {
                tracing::warn!(sni = %name, %target, "next hop unreachable");
                count(&metrics, "unreachable");
                return;
            }
        };
    crate::net::mesh_socket(&upstream);
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
    let name = check_token(&cfg.common.token, IdentityKind::Ingress, None)?;
    let listener = bind("listen", cfg.listen).await?;
    let admin = bind("admin", cfg.common.admin).await?;
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| cfg.listen.to_string());
    let hello = HelloInfo {
        kind: DataplaneKind::Ingress,
        name: name.clone(),
        region: cfg.common.region.clone(),
        address: advertise.clone(),
        dataplane_id: String::new(),
    };
    let metrics = Arc::new(Metrics::new());
    let dp = Dataplane::start(&cfg.common, admin, metrics.clone(), hello, None).await?;
    let config = dp.config.clone();
    let _ready = dp.run(None, |_| {});
    tracing::info!(ingress = %name, region = %cfg.common.region, listen = %cfg.listen, advertise = %advertise, "weft ingress running");
    let region: Arc<str> = cfg.common.region.as_str().into();
    let own_address: Arc<str> = advertise.as_str().into();
    let (drainer, drain) = Drainer::new();
    let m = metrics.clone();
    let single_host = cfg.listen.ip().is_loopback();
    tokio::spawn(serve::accept(
        Listener {
            listener,
            direction: "ingress",
            max_connections: cfg.common.max_connections,
        },
        metrics,
        drain,
        move |tcp, _peer, _drain| {
            handle(
                tcp,
                config.clone(),
                region.clone(),
                own_address.clone(),
                single_host,
                m.clone(),
            )
        },
    ));
    shutdown.await;
    // Spliced connections carry TLS the ingress cannot read: they finish on their own.
    drainer.drain(cfg.common.drain_timeout).await;
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

    #[tokio::test]
    async fn an_ingress_never_splices_to_its_own_host_or_link_local() {
        assert!(splice_targets("127.0.0.1:6379", false).await.is_err());
        assert!(splice_targets("localhost:6379", false).await.is_err());
        assert!(splice_targets("127.0.0.1:6379", true).await.is_ok());
        let err = splice_targets("169.254.169.254:80", true)
            .await
            .unwrap_err();
        assert!(err.contains("169.254.169.254"), "{err}");
        assert_eq!(
            splice_targets("10.1.2.3:15008", false).await.unwrap(),
            ["10.1.2.3:15008".parse::<SocketAddr>().unwrap()]
        );
    }
}
