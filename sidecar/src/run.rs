//! `weft-sidecar run`: the process beside one app instance.
//!
//! Start-up order matters: identity first (from the state dir, or a CSR with the
//! bootstrap token), then the discovery stream, listeners and admin; the sidecar reports
//! ready once it holds a certificate and a config. With a state dir it can restart and
//! serve while the control plane is away.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_certs::{IdentityKind, IdentityManager};
use weft_proto::v1::DataplaneKind;

use crate::admin::{self, AdminState};
use crate::control::bootstrap::{mtls_channel, obtain_identity, run_renewal, token_claims};
use crate::control::client::{DiscoveryClient, HelloInfo, Validator};
use crate::control::state_dir::StateDir;
use crate::inbound::Delivery;
use crate::inbound::app::AppClients;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::outbound::balance::Balancer;
use crate::serve::{self, Drainer, Listener};
use crate::tls::MeshTls;
use crate::tunnel::client::TunnelPool;
use crate::tunnel::server::{self, Inbound};

/// Everything `weft-sidecar run` is configured with.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub cp: String,
    pub token: String,
    pub service: String,
    pub app: SocketAddr,
    pub region: String,
    pub inbound: SocketAddr,
    pub advertise: Option<String>,
    pub admin: SocketAddr,
    pub state_dir: Option<PathBuf>,
    pub outbound_ip: IpAddr,
    pub drain_timeout: Duration,
    /// Open connections allowed on the inbound port.
    pub max_connections: usize,
}

/// Obtains the identity, retrying while the control plane is unreachable.
pub(crate) async fn identity(
    cp: &str,
    token: &str,
    state: Option<&StateDir>,
) -> anyhow::Result<Arc<IdentityManager>> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match obtain_identity(cp, token, state).await {
            Ok((id, identity, bundle)) => {
                return Ok(Arc::new(IdentityManager::new(id, identity, bundle)));
            }
            Err(crate::control::ControlError::Unreachable { url, detail })
                if !detail.contains("PermissionDenied")
                    && !detail.contains("Unauthenticated")
                    && !detail.contains("InvalidArgument")
                    && !detail.contains("FailedPrecondition") =>
            {
                tracing::warn!(%url, error = %detail, "cannot obtain a certificate yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs until `shutdown` resolves, then drains.
pub async fn run(
    cfg: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let claims = token_claims(&cfg.token)?;
    if claims.kind != IdentityKind::Service || claims.name != cfg.service {
        anyhow::bail!(
            "the token is for {} \"{}\", not service \"{}\"; create one with `weftctl token create --service {}`",
            claims.kind.segment(),
            claims.name,
            cfg.service,
            cfg.service
        );
    }
    let state = cfg.state_dir.as_deref().map(StateDir::open).transpose()?;
    let (not_ready_tx, not_ready) = watch::channel(Some("obtaining identity".to_owned()));

    // Listeners first: a port conflict is reported before anything else happens.
    let inbound_listener = TcpListener::bind(cfg.inbound)
        .await
        .with_context(|| format!("cannot listen on --inbound {}", cfg.inbound))?;
    let admin_listener = TcpListener::bind(cfg.admin)
        .await
        .with_context(|| format!("cannot listen on --admin {}", cfg.admin))?;

    let manager = identity(&cfg.cp, &cfg.token, state.as_ref()).await?;
    let channel = mtls_channel(&cfg.cp, manager.subscribe())?;
    tokio::spawn(run_renewal(manager.clone(), channel.clone(), state.clone()));

    let metrics = Arc::new(Metrics::for_service(&cfg.service));
    let tls = MeshTls::new(manager.subscribe());
    let pool = TunnelPool::new(tls.clone());
    let balancer = Balancer::new(&cfg.region);

    let advertise = cfg.advertise.clone().unwrap_or_else(|| {
        let port = inbound_listener.local_addr().map(|a| a.port()).unwrap_or(15008);
        let ip = if cfg.inbound.ip().is_unspecified() {
            tracing::warn!("--advertise not set and --inbound is a wildcard address: advertising 127.0.0.1 (set --advertise HOST:PORT for other hosts)");
            IpAddr::from([127, 0, 0, 1])
        } else {
            cfg.inbound.ip()
        };
        SocketAddr::new(ip, port).to_string()
    });

    // The outbound validates candidate configs (can it bind every port?) before they
    // are acknowledged; it needs the config channel the client creates, hence the cell.
    let outbound_cell: Arc<OnceLock<Arc<Outbound>>> = Arc::new(OnceLock::new());
    let validator: Validator = {
        let cell = outbound_cell.clone();
        Arc::new(move |c| cell.get().map_or(Ok(()), |o| o.validate(c)))
    };
    let (mut client, handles) = DiscoveryClient::new(
        channel,
        HelloInfo {
            kind: DataplaneKind::Sidecar,
            name: cfg.service.clone(),
            region: cfg.region.clone(),
            address: advertise.clone(),
            dataplane_id: String::new(),
        },
        state.clone(),
        Some(validator),
    );
    let (drainer, drain) = Drainer::new();
    let outbound = Outbound::new(
        cfg.outbound_ip,
        pool.clone(),
        balancer,
        handles.config.clone(),
        metrics.clone(),
        drain.clone(),
    );
    let _ = outbound_cell.set(outbound.clone());
    client.report_traffic(metrics.traffic.clone());
    tokio::spawn(client.run());
    crate::control::bundle_sync::spawn_bundle_sync(handles.config.clone(), manager.clone());

    let app_refused = Arc::new(tokio::sync::Notify::new());
    let delivery = Arc::new(Delivery {
        service: cfg.service.clone(),
        authority: http::uri::Authority::try_from(cfg.service.as_str())
            .with_context(|| format!("service name {:?} is not a valid host", cfg.service))?,
        config: handles.config.clone(),
        apps: AppClients::new(cfg.app, app_refused.clone()),
        metrics: metrics.clone(),
    });
    let inbound = Arc::new(Inbound {
        app: cfg.app,
        tls: tls.clone(),
        delivery,
        app_refused: app_refused.clone(),
    });
    tokio::spawn(serve::accept(
        Listener {
            listener: inbound_listener,
            direction: "inbound",
            max_connections: cfg.max_connections,
        },
        metrics.clone(),
        drain,
        move |tcp, peer, drain| server::connection(inbound.clone(), tcp, peer, drain),
    ));

    // Follow the config: outbound listeners, readiness, probe on selector change.
    let (kick_tx, kick_rx) = watch::channel(None);
    {
        let mut config = handles.config.clone();
        let outbound = outbound.clone();
        let service = cfg.service.clone();
        let not_ready_tx = not_ready_tx.clone();
        tokio::spawn(async move {
            loop {
                let c = config.borrow_and_update().clone();
                if c.version > 0 {
                    outbound.reconcile(&c);
                    not_ready_tx.send_replace(None);
                    kick_tx.send_if_modified(|sel| {
                        let now = Some(c.protocol_of(&service));
                        (*sel != now).then(|| *sel = now).is_some()
                    });
                } else {
                    not_ready_tx.send_replace(Some(
                        "waiting for the first config from the control plane".into(),
                    ));
                }
                if config.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::spawn(crate::probe::run(
        cfg.app,
        handles.app_status,
        kick_rx,
        app_refused,
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(AdminState {
            metrics: metrics.clone(),
            config: handles.config.clone(),
            tls,
            pool,
            not_ready,
        }),
    ));
    tracing::info!(service = %cfg.service, inbound = %cfg.inbound, advertise = %advertise, app = %cfg.app, admin = %cfg.admin, "weft-sidecar running");

    shutdown.await;
    tracing::info!(drain = ?cfg.drain_timeout, "draining: no new connections, GOAWAY sent");
    not_ready_tx.send_replace(Some("shutting down".into()));
    outbound.close_all();
    let left = drainer.drain(cfg.drain_timeout).await;
    if left > 0 {
        tracing::warn!(
            left,
            "drain timeout reached; closing the connections still open"
        );
    }
    Ok(())
}
