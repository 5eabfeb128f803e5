//! Starts the control plane: store, CA, config hub, gRPC over TLS and the HTTP port.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use weft_certs::TrustDomain;
use weft_proto::v1::admin_server::AdminServer;
use weft_proto::v1::discovery_server::DiscoveryServer;
use weft_proto::v1::identity_server::IdentityServer;

use crate::advertise::AdvertisePolicy;
use crate::api::{
    Shared, admin::AdminService, auth, discovery::DiscoveryService, gate::AdminGate,
    identity::IdentityService,
};
use crate::ca::{CaManager, write_atomic};
use crate::dashboard::Dashboard;
use crate::hub::ConfigHub;
use crate::leader::{Duties, Leader};
use crate::metrics::Metrics;
use crate::registry::{Registry, now_unix};
use crate::secret::{self, SecretKey};
use crate::store::model::META_SECRET_CHECK;
use crate::store::postgres::PgStore;
use crate::store::{
    Fence, ReplicaRecord, Store, StoreKind, StoreMeta, SweepPolicy, sqlite::SqliteStore,
};
use crate::tls::{ServerTls, incoming};
use crate::traffic::{BUCKET_SECONDS, TrafficWindow};

/// Lifetime of the control plane's own serving certificate; renewed at 70%.
const SERVING_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Everything `weft-cp` is configured with.
#[derive(Clone, Debug)]
pub struct CpConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub trust_domain: String,
    pub cert_ttl: Duration,
    pub sans: Vec<String>,
    pub ca_files: Option<(PathBuf, PathBuf)>,
    pub grace: Duration,
    pub dataplane_expiry: Duration,
    pub store: StoreKind,
    /// `--ca-key-secret`: seals the CA keys (and the admin token) in the store.
    pub ca_key_secret: Option<PathBuf>,
    /// `--allow-advertise`: networks dataplanes may announce addresses in besides the
    /// one they connect from.
    pub allow_advertise: Vec<ipnet::IpNet>,
}

fn random_hex(n: usize) -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; n];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow::anyhow!("the system has no randomness available"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Opens the backend `--store` names.
async fn open_backend(cfg: &CpConfig) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &cfg.store {
        StoreKind::Sqlite => Arc::new(SqliteStore::open(&cfg.data_dir.join("weft.db"))?),
        StoreKind::Postgres(target) => Arc::new(
            PgStore::connect((**target).clone())
                .await
                .with_context(|| format!("cannot open the store {}", target.shown()))?,
        ),
    })
}

/// The opened store and what start-up learnt about it.
struct Opened {
    store: Arc<dyn Store>,
    meta: StoreMeta,
    secret: Option<Arc<SecretKey>>,
    /// This start created the store (a new mesh).
    created: bool,
}

/// Opens the store and its identity. On first start, creates the admin token and writes
/// it to `<data-dir>/admin.token` (0600). The token file is staged before the store
/// commits and renamed after, so a crash at any point never leaves a store whose admin
/// token is lost. With `--ca-key-secret` the token is also kept sealed in the store, so
/// that every replica (and a replica with a new data dir) writes the same admin.token.
async fn open_store(cfg: &CpConfig) -> anyhow::Result<Opened> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create --data-dir {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let secret = match &cfg.ca_key_secret {
        Some(path) => Some(Arc::new(SecretKey::from_file(path)?)),
        None => None,
    };
    let store = open_backend(cfg).await?;
    let token_path = dir.join("admin.token");
    let staged = dir.join("admin.token.new");

    let admin_token = format!("weft-admin-{}", random_hex(24)?);
    let sealed = |value: &[u8], aad: &str| -> anyhow::Result<Vec<u8>> {
        Ok(match &secret {
            Some(key) => key.seal(value, aad)?.into_bytes(),
            None => Vec::new(),
        })
    };
    let init = StoreMeta {
        control_plane_id: random_hex(16)?,
        trust_domain: cfg.trust_domain.clone(),
        token_key: random_hex(32)?.into_bytes(),
        admin_token_sha256: auth::token_sha256(&admin_token),
        admin_token_sealed: sealed(admin_token.as_bytes(), secret::ADMIN_TOKEN_AAD)?,
        secret_check: sealed(b"weft", secret::CHECK_AAD)?,
    };
    write_atomic(&staged, format!("{admin_token}\n").as_bytes(), 0o600)?;
    let meta = store.meta_or_init(init.clone()).await?;
    let created = meta.control_plane_id == init.control_plane_id;
    if let Some(key) = &secret {
        check_secret(store.as_ref(), &meta, key, &init).await?;
    }
    if created {
        std::fs::rename(&staged, &token_path)
            .with_context(|| format!("cannot write {}", token_path.display()))?;
    } else if let (Some(key), false) = (&secret, meta.admin_token_sealed.is_empty()) {
        // A replica: the token comes from the store.
        let _ = std::fs::remove_file(&staged);
        let sealed = String::from_utf8_lossy(&meta.admin_token_sealed).into_owned();
        let token = key.open(&sealed, secret::ADMIN_TOKEN_AAD)?;
        let mut contents = token;
        contents.push(b'\n');
        write_atomic(&token_path, &contents, 0o600)?;
    } else {
        // Recover a token staged by a first start that crashed before the rename.
        let staged_matches = std::fs::read_to_string(&staged)
            .ok()
            .is_some_and(|t| auth::token_sha256(&t) == meta.admin_token_sha256);
        if staged_matches && !token_path.exists() {
            std::fs::rename(&staged, &token_path)?;
        } else {
            let _ = std::fs::remove_file(&staged);
        }
    }
    Ok(Opened {
        store,
        meta,
        secret,
        created,
    })
}

/// Checks `--ca-key-secret` against the store: a wrong secret stops start-up here, with
/// a message that says so, instead of failing later on the first signature. A store
/// used with a secret for the first time records the check value.
async fn check_secret(
    store: &dyn Store,
    meta: &StoreMeta,
    key: &SecretKey,
    init: &StoreMeta,
) -> anyhow::Result<()> {
    if meta.secret_check.is_empty() {
        store
            .put_meta(META_SECRET_CHECK, init.secret_check.clone())
            .await?;
        return Ok(());
    }
    key.open(
        &String::from_utf8_lossy(&meta.secret_check),
        secret::CHECK_AAD,
    )?;
    Ok(())
}

/// SANs of the serving certificate: loopback, the host name, the listen address and
/// every `--san`.
fn serving_names(cfg: &CpConfig) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_owned()];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
    ];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim().to_ascii_lowercase();
        if !h.is_empty() && h != "localhost" {
            dns.push(h);
        }
    }
    if !cfg.listen.ip().is_unspecified() {
        ips.push(cfg.listen.ip());
    }
    for san in &cfg.sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(san.to_ascii_lowercase()),
        }
    }
    dns.dedup();
    ips.dedup();
    (dns, ips)
}

/// Runs the control plane until `shutdown` resolves.
pub async fn run(
    cfg: CpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Core {
        store,
        meta,
        hub,
        ca,
        created,
    } = start_core(&cfg).await?;
    let metrics = Arc::new(Metrics::new());
    spawn_config_version_gauge(&metrics, &hub);
    let replica = ReplicaRecord {
        id: random_hex(8)?,
        address: replica_address(&cfg),
        started_at_ms: now_ms(),
        heartbeat_ms: 0,
    };
    // Visible to the other replicas before this one serves anything.
    store.heartbeat(&replica).await?;
    let leader = Leader::new(replica.clone(), store.clone());
    tokio::spawn(leader.clone().heartbeat());
    let registry = Registry::new(replica.id.clone(), store.clone(), hub.clone());

    let shared = Arc::new(Shared {
        store: store.clone(),
        hub,
        registry,
        ca: ca.clone(),
        metrics,
        control_plane_id: meta.control_plane_id.clone(),
        token_key: meta.token_key.clone(),
        cert_ttl: cfg.cert_ttl,
        traffic: TrafficWindow::new(),
        leader: leader.clone(),
        store_shown: cfg.store.describe(&cfg.data_dir),
        auth: auth::Authenticator::new(
            meta.admin_token_sha256.clone(),
            meta.token_key.clone(),
            store,
        ),
        advertise: AdvertisePolicy {
            single_host: cfg.listen.ip().is_loopback(),
            allowed: cfg.allow_advertise.clone(),
        },
    });
    spawn_traffic_pruning(&shared);
    let (dns, ips) = serving_names(&cfg);
    let serving = ServerTls::new(serving_config(&ca, &dns, &ips)?);
    spawn_serving_renewal(ca.clone(), serving.clone(), dns, ips);
    tokio::spawn(leader.clone().run(leader_duties(&cfg, &shared)));

    serve(&cfg, &shared, serving, created, shutdown).await?;
    // Let another replica take over at once rather than when the lease runs out.
    leader.shutdown().await;
    tracing::info!("weft-cp stopped");
    Ok(())
}

/// The store, the CA and the config hub, ready to serve.
struct Core {
    store: Arc<dyn Store>,
    meta: StoreMeta,
    hub: Arc<ConfigHub>,
    ca: Arc<CaManager>,
    /// This start created the store (a new mesh).
    created: bool,
}

/// Opens the store, checks it is this trust domain's, loads the CA and the first
/// config snapshot, and (on PostgreSQL) starts following the other replicas' changes.
async fn start_core(cfg: &CpConfig) -> anyhow::Result<Core> {
    let Opened {
        store,
        meta,
        secret,
        created,
    } = open_store(cfg).await?;
    if meta.trust_domain != cfg.trust_domain {
        anyhow::bail!(
            "the store {} was created for trust domain \"{}\", not \"{}\"; pass --trust-domain {} (a trust domain cannot change in place)",
            cfg.store.describe(&cfg.data_dir),
            meta.trust_domain,
            cfg.trust_domain,
            meta.trust_domain
        );
    }
    let trust_domain = TrustDomain::new(&meta.trust_domain)
        .map_err(|e| anyhow::anyhow!("invalid --trust-domain: {e}"))?;
    let hub = ConfigHub::new(
        store.clone(),
        meta.control_plane_id.clone(),
        meta.trust_domain.clone(),
    )
    .await?;
    let ca = CaManager::init(
        store.clone(),
        trust_domain,
        &cfg.data_dir,
        cfg.ca_files.clone(),
        secret,
    )
    .await?;
    hub.reload().await?;
    tokio::spawn(hub.clone().run());
    if let StoreKind::Postgres(target) = &cfg.store {
        tokio::spawn(crate::replica::listen(hub.clone(), (**target).clone()));
        tokio::spawn(crate::replica::poll_revision(hub.clone(), store.clone()));
        tokio::spawn(crate::replica::follow_ca(hub.clone(), ca.clone()));
    }
    Ok(Core {
        store,
        meta,
        hub,
        ca,
        created,
    })
}

/// Keeps `weft_cp_config_version` at the published snapshot's version.
fn spawn_config_version_gauge(metrics: &Arc<Metrics>, hub: &ConfigHub) {
    let (metrics, mut rx) = (metrics.clone(), hub.subscribe());
    tokio::spawn(async move {
        loop {
            metrics
                .config_version
                .set(rx.borrow_and_update().version as i64);
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Forgets what left the traffic window even while nobody reads it.
fn spawn_traffic_pruning(shared: &Shared) {
    let (traffic, metrics) = (shared.traffic.clone(), shared.metrics.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(BUCKET_SECONDS as u64));
        loop {
            tick.tick().await;
            traffic.prune(now_unix());
            metrics
                .traffic_window_bytes
                .set(i64::try_from(traffic.memory_bytes()).unwrap_or(i64::MAX));
        }
    });
}

/// Renews the serving certificate at 70% of its life, and re-issues it whenever the
/// CA changes: a new bundle must be accepted from clients at once (renewed leaves
/// from a new root), and after a rotation switches, the control plane must present
/// a certificate from the root that now signs. Open connections keep theirs.
fn spawn_serving_renewal(
    ca: Arc<CaManager>,
    serving: ServerTls,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
) {
    let mut changes = ca.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SERVING_CERT_TTL.mul_f64(0.7)) => {}
                changed = changes.changed() => if changed.is_err() { return },
            }
            match serving_config(&ca, &dns, &ips) {
                Ok(c) => serving.set(c),
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the control plane certificate")
                }
            }
        }
    });
}

/// Binds `--listen` and `--http`, serves the dashboard and metrics on the second and
/// the gRPC services (with health and reflection) over TLS on the first, until
/// `shutdown`.
async fn serve(
    cfg: &CpConfig,
    shared: &Arc<Shared>,
    serving: ServerTls,
    created: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| {
        format!(
            "cannot listen on --listen {}: is another weft-cp running?",
            cfg.listen
        )
    })?;
    let http_listener = TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("cannot listen on --http {}", cfg.http))?;
    let http_addr = http_listener.local_addr()?;
    tokio::spawn(crate::http::serve(
        http_listener,
        Arc::new(crate::http::HttpPort {
            metrics: shared.metrics.clone(),
            store: shared.store.clone(),
            dashboard: Dashboard::new(shared.clone(), http_addr),
        }),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", "weft.v1.Admin", "weft.v1.Discovery", "weft.v1.Identity"] {
        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weft_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(weft_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    print_banner(cfg, &shared.ca, created);
    tracing::info!(listen = %cfg.listen, http = %cfg.http, data_dir = %cfg.data_dir.display(), "weft-cp serving");

    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(AdminGate::new(
            AdminServer::new(AdminService::new(shared.clone())),
            shared.auth.clone(),
        ))
        .add_service(DiscoveryServer::new(DiscoveryService::new(shared.clone())))
        .add_service(IdentityServer::new(IdentityService::new(shared.clone())))
        .serve_with_incoming_shutdown(incoming(listener, serving), shutdown)
        .await
        .context("gRPC server failed")
}

/// What the leader does while it leads (see `leader.rs`): health marking and expiry of
/// dataplanes whose streams are gone, and CA rotation's switch.
fn leader_duties(cfg: &CpConfig, shared: &Arc<Shared>) -> Duties {
    let shared = shared.clone();
    let (grace, expiry) = (cfg.grace, cfg.dataplane_expiry);
    Box::new(move |fence: Fence, since_ms: i64| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let policy = SweepPolicy {
                grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
                expiry_ms: i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX),
                lead_since_ms: since_ms,
            };
            let sweep = crate::leader::every(crate::registry::SWEEP_EVERY, || {
                crate::registry::sweep(shared.store.as_ref(), &shared.hub, &fence, policy)
            });
            let rotation = crate::ca::run_rotation(
                shared.ca.clone(),
                shared.registry.clone(),
                shared.hub.clone(),
                grace,
                fence.clone(),
            );
            // Either ending means the lease was refused: leadership ends with it.
            tokio::select! {
                () = sweep => {}
                () = rotation => {}
            }
        })
    })
}

/// How `cp status` names this replica: its listen address, or with a wildcard listen
/// address, the host name (what other replicas and dataplanes would dial).
fn replica_address(cfg: &CpConfig) -> String {
    if !cfg.listen.ip().is_unspecified() {
        return cfg.listen.to_string();
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| cfg.listen.ip().to_string());
    format!("{host}:{}", cfg.listen.port())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn serving_config(
    ca: &CaManager,
    dns: &[String],
    ips: &[IpAddr],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let identity = ca.issue_control_plane_identity(dns, ips, SERVING_CERT_TTL)?;
    let bundle = ca.current().bundle.clone();
    Ok(weft_certs::control_plane_server_config(
        &identity,
        &bundle,
        &[b"h2"],
    )?)
}

fn print_banner(cfg: &CpConfig, ca: &CaManager, created: bool) {
    let dir = cfg.data_dir.display();
    let port = cfg.listen.port();
    let default_dir =
        Path::new("weft-data") == cfg.data_dir || Path::new("./weft-data") == cfg.data_dir;
    if created {
        println!(
            "weft-cp: new mesh (trust domain {}), CA sha256 {}",
            ca.trust_domain().as_str(),
            ca.current().signing.sha256_hex()
        );
        println!("weft-cp: admin token written to {dir}/admin.token (mode 0600)");
    }
    println!(
        "weft-cp: gRPC (TLS) on {}, metrics on http://{}/metrics",
        cfg.listen, cfg.http
    );
    if default_dir && port == 7400 {
        println!("weft-cp: run weftctl from this directory (it reads ./weft-data), or elsewhere:");
    } else {
        println!("weft-cp: point weftctl at this control plane with:");
    }
    println!(
        "  export WEFT_CP=https://127.0.0.1:{port} WEFT_CA={dir}/ca.pem WEFT_TOKEN=$(cat {dir}/admin.token)"
    );
}
