//! `weft-sidecar run`: the process beside one app instance.
//!
//! Start-up ([`crate::dataplane`]): listeners first, then the identity (from the state
//! dir, or a CSR with the bootstrap token), the discovery stream, the inbound port, the
//! outbound listeners and admin; the sidecar reports ready once it holds a certificate
//! and a config. With a state dir it can restart and serve while the control plane is
//! away.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use tokio::sync::watch;
use weft_certs::IdentityKind;
use weft_proto::v1::DataplaneKind;

use crate::control::client::{HelloInfo, Validator};
use crate::dataplane::{Common, Dataplane, bind, check_token};
use crate::inbound::Delivery;
use crate::inbound::app::AppClients;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::outbound::balance::Balancer;
use crate::serve::{self, Drainer, Listener};
use crate::tunnel::client::TunnelPool;
use crate::tunnel::server::{self, Inbound};

/// Everything `weft-sidecar run` is configured with.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub common: Common,
    pub service: String,
    pub app: SocketAddr,
    pub inbound: SocketAddr,
    pub advertise: Option<String>,
    pub outbound_ip: IpAddr,
}

/// The address other dataplanes reach the inbound port at: `--advertise`, else the
/// bound address (loopback for a wildcard one, with a warning).
fn advertised(cfg: &RunConfig, inbound: &tokio::net::TcpListener) -> String {
    cfg.advertise.clone().unwrap_or_else(|| {
        let port = inbound.local_addr().map(|a| a.port()).unwrap_or(15008);
        let ip = if cfg.inbound.ip().is_unspecified() {
            tracing::warn!("--advertise not set and --inbound is a wildcard address: advertising 127.0.0.1 (set --advertise HOST:PORT for other hosts)");
            IpAddr::from([127, 0, 0, 1])
        } else {
            cfg.inbound.ip()
        };
        SocketAddr::new(ip, port).to_string()
    })
}

/// Serves the inbound port: tunnel streams and mesh HTTP requests to the app.
fn serve_inbound(
    cfg: &RunConfig,
    listener: tokio::net::TcpListener,
    dp: &Dataplane,
    delivery: Delivery,
    drain: crate::serve::Drain,
) {
    let inbound = Arc::new(Inbound {
        tls: dp.tls.clone(),
        delivery: Arc::new(delivery),
    });
    tokio::spawn(serve::accept(
        Listener {
            listener,
            direction: "inbound",
            max_connections: cfg.common.max_connections,
        },
        dp.metrics.clone(),
        drain,
        move |tcp, peer, drain| server::connection(inbound.clone(), tcp, peer, drain),
    ));
}

/// Runs until `shutdown` resolves, then drains.
pub async fn run(
    cfg: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    check_token(&cfg.common.token, IdentityKind::Service, Some(&cfg.service))?;
    let authority = http::uri::Authority::try_from(cfg.service.as_str())
        .with_context(|| format!("service name {:?} is not a valid host", cfg.service))?;
    let inbound_listener = bind("inbound", cfg.inbound).await?;
    let admin = bind("admin", cfg.common.admin).await?;
    let advertise = advertised(&cfg, &inbound_listener);
    let hello = HelloInfo {
        kind: DataplaneKind::Sidecar,
        name: cfg.service.clone(),
        region: cfg.common.region.clone(),
        address: advertise.clone(),
        dataplane_id: String::new(),
    };
    // The outbound validates candidate configs (can it bind every port?) before they
    // are acknowledged; it needs the config channel the client creates, hence the cell.
    let outbound_cell: Arc<OnceLock<Arc<Outbound>>> = Arc::new(OnceLock::new());
    let validator: Validator = {
        let cell = outbound_cell.clone();
        Arc::new(move |c| cell.get().map_or(Ok(()), |o| o.validate(c)))
    };
    let metrics = Arc::new(Metrics::new());
    let dp = Dataplane::start(&cfg.common, admin, metrics.clone(), hello, Some(validator)).await?;

    let balancer = Balancer::new(&cfg.common.region);
    let pool = TunnelPool::new(dp.tls.clone(), balancer.clone());
    let (drainer, drain) = Drainer::new();
    let outbound = Outbound::new(
        cfg.outbound_ip,
        pool.clone(),
        balancer,
        dp.config.clone(),
        metrics.clone(),
        drain.clone(),
        cfg.common.max_connections,
    );
    let _ = outbound_cell.set(outbound.clone());

    let authz = crate::authz::Authz::new(
        &cfg.service,
        cfg.app.port(),
        dp.manager.spiffe_id(),
        dp.config.clone(),
        dp.tls.revoked().clone(),
        metrics.clone(),
    );
    let app_refused = Arc::new(tokio::sync::Notify::new());
    let delivery = Delivery {
        service: cfg.service.clone(),
        authority,
        config: dp.config.clone(),
        apps: AppClients::new(cfg.app, app_refused.clone()),
        metrics: metrics.clone(),
        authz,
    };
    serve_inbound(&cfg, inbound_listener, &dp, delivery, drain);

    // The app probe runs at start, periodically, and when the selector changes.
    let (kick_tx, kick_rx) = watch::channel(None);
    tokio::spawn(crate::probe::run(
        cfg.app,
        dp.app_status.clone(),
        kick_rx,
        app_refused,
    ));
    let service = cfg.service.clone();
    let follower = outbound.clone();
    let not_ready = dp.run(Some(pool), move |c| {
        follower.reconcile(c);
        kick_tx.send_if_modified(|sel| {
            let now = Some(c.protocol_of(&service));
            (*sel != now).then(|| *sel = now).is_some()
        });
    });
    tracing::info!(service = %cfg.service, inbound = %cfg.inbound, advertise = %advertise, app = %cfg.app, admin = %cfg.common.admin, "weft-sidecar running");

    shutdown.await;
    not_ready.send_replace(Some("shutting down".into()));
    outbound.close_all();
    drainer.drain(cfg.common.drain_timeout).await;
    Ok(())
}
