//! What every dataplane process does at start, written once for `run`, `gateway` and
//! `ingress`: check that the bootstrap token is for this kind of dataplane, obtain the
//! identity (from the state dir, or a CSR with the token, retrying while the control
//! plane is unreachable) and renew it, open the discovery stream (starting from the
//! last good config on disk), keep the trust bundle in step, serve the admin endpoint,
//! and report ready once a config is held.
//!
//! Start-up order: a caller binds its listeners first (a port conflict is reported
//! before anything else happens), then [`Dataplane::start`], then builds what needs
//! the config channel, then [`Dataplane::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use weft_certs::{IdentityKind, IdentityManager};
use weft_proto::v1::AppProtocol;

use crate::admin::{self, AdminState};
use crate::control::bootstrap::{mtls_channel, obtain_identity, run_renewal, token_claims};
use crate::control::bundle_sync::spawn_bundle_sync;
use crate::control::client::{DiscoveryClient, HelloInfo, Validator};
use crate::control::config::MeshConfig;
use crate::control::state_dir::StateDir;
use crate::metrics::Metrics;
use crate::tls::MeshTls;
use crate::tunnel::client::TunnelPool;

/// What every dataplane is configured with (`run`, `gateway` and `ingress` alike).
#[derive(Clone, Debug)]
pub struct Common {
    /// Control plane URL(s), comma-separated for replicas.
    pub cp: String,
    pub token: String,
    pub region: String,
    pub admin: SocketAddr,
    pub state_dir: Option<PathBuf>,
    /// Open connections allowed per listener.
    pub max_connections: usize,
    /// How long open connections may take to finish at shutdown.
    pub drain_timeout: Duration,
}

/// Checks that `token` is a bootstrap token for a dataplane of `kind` (named `name`,
/// when the command line names it) before anything else is done with it.
pub fn check_token(token: &str, kind: IdentityKind, name: Option<&str>) -> anyhow::Result<String> {
    let claims = token_claims(token)?;
    let flag = match kind {
        IdentityKind::Service => "service",
        IdentityKind::Gateway => "gateway",
        IdentityKind::Ingress => "ingress",
        IdentityKind::ControlPlane => "control-plane",
    };
    if claims.kind != kind || name.is_some_and(|n| n != claims.name) {
        let wanted = name.map_or_else(|| format!("a {flag}"), |n| format!("{flag} \"{n}\""));
        anyhow::bail!(
            "the token is for {} \"{}\", not {wanted}; create one with `weftctl token create --{flag} {}`",
            claims.kind.segment(),
            claims.name,
            name.unwrap_or("NAME"),
        );
    }
    Ok(claims.name)
}

/// Obtains the identity, retrying while the control plane is unreachable.
async fn identity(
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
            Err(crate::control::ControlError::Unreachable { url, detail }) => {
                tracing::warn!(%url, error = %detail, "cannot obtain a certificate yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A dataplane that holds its identity and whose discovery stream is ready to run.
pub struct Dataplane {
    pub manager: Arc<IdentityManager>,
    pub tls: Arc<MeshTls>,
    pub metrics: Arc<Metrics>,
    /// The config held (from the state dir until the stream delivers one).
    pub config: watch::Receiver<Arc<MeshConfig>>,
    /// Where the app probe reports what the app speaks (sidecars).
    pub app_status: watch::Sender<AppProtocol>,
    /// None once ready; otherwise what is still missing (shown at `/ready`).
    pub not_ready: watch::Sender<Option<String>>,
    client: DiscoveryClient,
    admin: TcpListener,
}

impl Dataplane {
    /// Opens the state dir, obtains the identity and starts its renewal, and prepares
    /// the discovery stream announcing `hello` (with `validator` checking candidate
    /// configs before they are acknowledged). `admin` is the bound admin listener.
    pub async fn start(
        common: &Common,
        admin: TcpListener,
        metrics: Arc<Metrics>,
        hello: HelloInfo,
        validator: Option<Validator>,
    ) -> anyhow::Result<Dataplane> {
        let state = common
            .state_dir
            .as_deref()
            .map(StateDir::open)
            .transpose()?;
        let manager = identity(&common.cp, &common.token, state.as_ref()).await?;
        let channel = mtls_channel(&common.cp, manager.subscribe())?;
        tokio::spawn(run_renewal(manager.clone(), channel.clone(), state.clone()));
        let tls = MeshTls::new(manager.subscribe());
        let (mut client, handles) = DiscoveryClient::new(channel, hello, state, validator);
        // Traffic figures for `weftctl service stats`: what a sidecar's inbound carried,
        // what a gateway answered without an inbound (an ingress has nothing to say).
        client.report_traffic(metrics.traffic.clone());
        let (not_ready, _) = watch::channel(Some("waiting for the first config".to_owned()));
        Ok(Dataplane {
            manager,
            tls,
            metrics,
            config: handles.config,
            app_status: handles.app_status,
            not_ready,
            client,
            admin,
        })
    }

    /// Runs the discovery stream, the bundle sync and the admin endpoint (`pool`, if
    /// any, is reported in its metrics), and follows the config: `on_config` runs for
    /// every version held, and the dataplane is ready from the first one on. Returns
    /// the readiness sender (to say "shutting down").
    pub fn run(
        self,
        pool: Option<Arc<TunnelPool>>,
        mut on_config: impl FnMut(&MeshConfig) + Send + 'static,
    ) -> watch::Sender<Option<String>> {
        let Dataplane {
            manager,
            tls,
            metrics,
            config,
            not_ready,
            client,
            admin,
            ..
        } = self;
        tokio::spawn(client.run());
        spawn_bundle_sync(config.clone(), manager);
        crate::authz::follow_revocations(config.clone(), tls.revoked().clone());
        tokio::spawn(admin::serve(
            admin,
            Arc::new(AdminState {
                metrics,
                config: config.clone(),
                tls,
                pool,
                not_ready: not_ready.subscribe(),
            }),
        ));
        let ready = not_ready.clone();
        let mut config = config;
        tokio::spawn(async move {
            loop {
                let c = config.borrow_and_update().clone();
                if c.version > 0 {
                    on_config(&c);
                    ready.send_replace(None);
                }
                if config.changed().await.is_err() {
                    return;
                }
            }
        });
        not_ready
    }
}

/// Binds a listener named by its flag, with an error that says which one failed.
pub async fn bind(flag: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on --{flag} {addr}"))
}
