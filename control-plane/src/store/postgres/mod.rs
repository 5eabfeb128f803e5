//! PostgreSQL backend, for several weft-cp replicas sharing one database.
//!
//! Connections come from a pool (deadpool-postgres over tokio-postgres). Every change
//! is one transaction that first locks the single row of `state`: changes are then
//! serialised exactly as SQLite's IMMEDIATE transactions serialise them, the checks a
//! change makes see every change committed before it, and the revision a change takes
//! is also its commit order. That last point is what replicas rely on: a reader that
//! sees revision N in its snapshot has seen every change up to N, so re-reading
//! "everything past the last revision seen" never skips a change that committed late
//! (a sequence would hand out numbers in start order, not commit order). A change that
//! bumps the revision also sends `NOTIFY weft_config`, delivered at commit.
//!
//! The SQL of each concern is in its own file, mirroring the SQLite backend; the checks
//! and revision rules are shared (`store::rules`).

mod ca;
mod certificates;
mod dataplanes;
mod ha;
mod permissions;
mod schema;
mod services;
mod state;
mod tokens;

use std::str::FromStr as _;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;
use weft_proto::v1::{
    AppProtocol, DefaultPolicy, MeshSettings, Permission, Protocol, Route, Service,
};

pub use schema::SCHEMA_VERSION;

use super::rows::Columns;
use super::{
    CaRootRecord, CaRootTimes, CertificateRecord, ConfigState, DataplaneRecord,
    DataplaneRegistration, Fence, LeaseRecord, Liveness, ReplicaRecord, RevokedDataplane,
    SessionRecord, Store, StoreError, StoreMeta, SweepOutcome, SweepPolicy, TokenRecord,
};

/// Channel of the notifications sent by every change that bumps the revision.
pub const CONFIG_CHANNEL: &str = "weft_config";

/// Connections kept by one replica.
const POOL_SIZE: usize = 16;
/// How long a call waits for a connection (or for one to be made) before failing.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The Display of a server error is only "db error": the detail is in its source.
        match e.as_db_error() {
            Some(db) => StoreError::Backend(format!("PostgreSQL: {}", db.message())),
            None => StoreError::Backend(format!("PostgreSQL: {e}")),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Backend(format!("no PostgreSQL connection: {e}"))
    }
}

impl Columns for tokio_postgres::Row {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(i)?)
    }
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs a statement (prepared once per connection); returns the rows it changed.
async fn exec(c: &impl GenericClient, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, params).await?)
}

/// The first row of a query, decoded by `f`.
async fn one<T>(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    f: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    c.query_opt(&stmt, params).await?.map(|r| f(&r)).transpose()
}

/// Every row of a query, decoded by `f`.
async fn all<T>(
    c: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
    f: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let stmt = c.prepare_cached(sql).await?;
    c.query(&stmt, params).await?.iter().map(|r| f(r)).collect()
}

/// Where a `--store postgres://...` points, parsed and checked; shown without password.
#[derive(Clone)]
pub struct PgTarget {
    config: tokio_postgres::Config,
    shown: String,
}

impl PgTarget {
    /// Parses a connection URL (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?...]`).
    pub fn parse(url: &str) -> Result<Self, String> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| format!("not a PostgreSQL URL ({e}); use postgres://USER@HOST:PORT/DB"))?;
        if config.get_hosts().is_empty() {
            return Err("no host in the URL; use postgres://USER@HOST:PORT/DB".into());
        }
        if config.get_user().is_none() {
            return Err("no user in the URL; use postgres://USER@HOST:PORT/DB".into());
        }
        // A peer that vanishes (host gone, network cut) must fail calls within seconds
        // rather than leave them waiting for TCP's own timeouts.
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(2)
            .tcp_user_timeout(Duration::from_secs(10));
        if config.get_application_name().is_none() {
            config.application_name("weft-cp");
        }
        let shown = Self::describe(&config);
        Ok(PgTarget { config, shown })
    }

    fn describe(config: &tokio_postgres::Config) -> String {
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => String::new(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{}@{host}:{port}/{}",
            config.get_user().unwrap_or(""),
            config.get_dbname().unwrap_or("")
        )
    }

    /// The URL without its password, for logs and `weftctl cp status`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The connection settings (for connections outside the pool: the listener).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    target: PgTarget,
}

impl PgStore {
    /// Connects (checking that the database answers) and migrates the schema.
    pub async fn connect(target: PgTarget) -> Result<Self, StoreError> {
        let manager = Manager::from_config(
            target.config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot set up the PostgreSQL pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Backend(format!(
                "cannot connect to {}: {e}; check that PostgreSQL runs there and accepts this user",
                target.shown
            ))
        })?;
        schema::migrate(&mut client).await?;
        Ok(PgStore { pool, target })
    }

    pub fn target(&self) -> &PgTarget {
        &self.target
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await?)
    }
}

/// Opens a change: a transaction holding the lock on `state` (see the module doc).
async fn begin_change(
    client: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    let tx = client.transaction().await?;
    exec(&tx, "SELECT 1 FROM state WHERE id = 1 FOR UPDATE", &[]).await?;
    Ok(tx)
}

/// Runs `$body` (an expression using `tx`) as one change, committed if it succeeds.
macro_rules! change {
    ($self:ident, |$tx:ident| $body:expr) => {{
        let mut client = $self.client().await?;
        let $tx = begin_change(&mut client).await?;
        let out = $body?;
        $tx.commit().await?;
        Ok(out)
    }};
}

#[async_trait]
impl Store for PgStore {
    async fn meta_or_init(&self, init: StoreMeta) -> Result<StoreMeta, StoreError> {
        change!(self, |tx| state::meta_or_init(&tx, init).await)
    }

    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        state::put_meta(&self.client().await?, key, &value).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        state::revision(&self.client().await?).await
    }

    async fn create_service(
        &self,
        name: &str,
        protocol: Protocol,
        port: u32,
        now: i64,
    ) -> Result<Service, StoreError> {
        change!(self, |tx| services::create(&tx, name, protocol, port, now)
            .await)
    }

    async fn get_service(&self, name: &str) -> Result<Service, StoreError> {
        services::get(&self.client().await?, name).await
    }

    async fn list_services(&self) -> Result<Vec<Service>, StoreError> {
        services::list(&self.client().await?).await
    }

    async fn set_protocol(&self, name: &str, protocol: Protocol) -> Result<Service, StoreError> {
        change!(self, |tx| services::set_protocol(&tx, name, protocol).await)
    }

    async fn delete_service(&self, name: &str) -> Result<u64, StoreError> {
        change!(self, |tx| services::delete(&tx, name).await)
    }

    async fn create_route(&self, route: Route) -> Result<Route, StoreError> {
        change!(self, |tx| services::create_route(&tx, route).await)
    }

    async fn list_routes(&self) -> Result<Vec<Route>, StoreError> {
        services::list_routes(&self.client().await?).await
    }

    async fn delete_route(&self, host: &str, path_prefix: &str) -> Result<u64, StoreError> {
        change!(self, |tx| services::delete_route(&tx, host, path_prefix)
            .await)
    }

    async fn register_dataplane(
        &self,
        reg: DataplaneRegistration,
    ) -> Result<DataplaneRecord, StoreError> {
        change!(self, |tx| dataplanes::register(&tx, reg).await)
    }

    async fn set_dataplane_health(
        &self,
        id: &str,
        healthy: bool,
        app_protocol: Option<AppProtocol>,
    ) -> Result<Option<DataplaneRecord>, StoreError> {
        change!(self, |tx| dataplanes::set_health(
            &tx,
            id,
            healthy,
            app_protocol
        )
        .await)
    }

    async fn record_dataplane_seen(
        &self,
        id: &str,
        acked_version: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        dataplanes::record_seen(&self.client().await?, id, acked_version, now).await
    }

    async fn delete_dataplane(&self, id: &str) -> Result<u64, StoreError> {
        change!(self, |tx| dataplanes::delete(&tx, id).await)
    }

    async fn list_dataplanes(&self) -> Result<Vec<DataplaneRecord>, StoreError> {
        dataplanes::list(&self.client().await?).await
    }

    async fn revoke_dataplane(&self, id: &str, now: i64) -> Result<RevokedDataplane, StoreError> {
        change!(self, |tx| certificates::revoke_dataplane(&tx, id, now)
            .await)
    }

    async fn record_certificate(
        &self,
        cert: CertificateRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        certificates::record(&self.client().await?, &cert, now).await
    }

    async fn get_certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        certificates::get(&self.client().await?, serial).await
    }

    async fn create_permission(&self, permission: Permission) -> Result<Permission, StoreError> {
        change!(self, |tx| permissions::create(&tx, permission).await)
    }

    async fn list_permissions(&self) -> Result<Vec<Permission>, StoreError> {
        permissions::list(&self.client().await?).await
    }

    async fn delete_permission(&self, id: &str) -> Result<u64, StoreError> {
        change!(self, |tx| permissions::delete(&tx, id).await)
    }

    async fn mesh_settings(&self) -> Result<MeshSettings, StoreError> {
        permissions::mesh(&self.client().await?).await
    }

    async fn set_default_policy(&self, policy: DefaultPolicy) -> Result<MeshSettings, StoreError> {
        change!(self, |tx| permissions::set_default_policy(&tx, policy)
            .await)
    }

    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        tokens::create(&self.client().await?, &token).await
    }

    async fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        tokens::get(&self.client().await?, id).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        tokens::list(&self.client().await?).await
    }

    async fn revoke_token(&self, id: &str, now: i64) -> Result<TokenRecord, StoreError> {
        tokens::revoke(&self.client().await?, id, now).await
    }

    async fn add_ca_root(&self, root: CaRootRecord) -> Result<u64, StoreError> {
        change!(self, |tx| ca::add_root(&tx, &root).await)
    }

    async fn set_signing_root(
        &self,
        sha256: &str,
        now: i64,
        fence: &Fence,
    ) -> Result<u64, StoreError> {
        change!(self, |tx| ca::set_signing_root(&tx, sha256, now, fence)
            .await)
    }

    async fn set_ca_root_key(&self, sha256: &str, key_pem: &str) -> Result<(), StoreError> {
        ca::set_root_key(&self.client().await?, sha256, key_pem).await
    }

    async fn remove_ca_root(&self, sha256: &str) -> Result<u64, StoreError> {
        change!(self, |tx| ca::remove_root(&tx, sha256).await)
    }

    async fn ca_root_times(&self) -> Result<Vec<CaRootTimes>, StoreError> {
        ca::root_times(&self.client().await?).await
    }

    async fn config_state(&self) -> Result<ConfigState, StoreError> {
        let mut client = self.client().await?;
        // One snapshot for every table: what a revision says is exactly what is read.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let state = state::config_state(&tx).await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn heartbeat(&self, replica: &ReplicaRecord) -> Result<(), StoreError> {
        ha::heartbeat(&self.client().await?, replica).await
    }

    async fn remove_replica(&self, id: &str) -> Result<(), StoreError> {
        ha::remove_replica(&self.client().await?, id).await
    }

    async fn liveness(&self) -> Result<Liveness, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let out = ha::liveness(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn open_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        ha::open_session(&self.client().await?, session).await
    }

    async fn save_sessions(&self, sessions: Vec<SessionRecord>) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        ha::save_sessions(&tx, &sessions).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn close_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        ha::close_session(&tx, session).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn try_lead(&self, holder: &str, ttl_ms: i64) -> Result<Option<(u64, i64)>, StoreError> {
        ha::try_lead(&self.client().await?, holder, ttl_ms).await
    }

    async fn renew_lead(&self, fence: &Fence, ttl_ms: i64) -> Result<bool, StoreError> {
        ha::renew_lead(&self.client().await?, fence, ttl_ms).await
    }

    async fn release_lead(&self, fence: &Fence) -> Result<(), StoreError> {
        ha::release_lead(&self.client().await?, fence).await
    }

    async fn lease(&self) -> Result<LeaseRecord, StoreError> {
        ha::lease(&self.client().await?).await
    }

    async fn sweep_dataplane(
        &self,
        fence: &Fence,
        id: &str,
        policy: SweepPolicy,
    ) -> Result<SweepOutcome, StoreError> {
        change!(self, |tx| ha::sweep_dataplane(&tx, fence, id, &policy)
            .await)
    }
}
