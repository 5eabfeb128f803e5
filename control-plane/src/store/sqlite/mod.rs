//! SQLite backend: one file under `--data-dir`, WAL journal with `synchronous=FULL`, so a
//! change the API acknowledged survives `kill -9` and power loss.
//!
//! The connection lives behind a mutex and every call runs on the blocking pool: SQLite
//! work (and its fsync) never stalls the async runtime that carries discovery streams.
//! The SQL of each concern is in its own file ([`services`], [`dataplanes`], [`tokens`],
//! [`ca`], [`permissions`] (and the default policy), [`certificates`] (issued and
//! revoked), [`state`] for revisions, tombstones and the pushed snapshot); the checks and
//! revision rules they apply are shared with every backend (`store::rules`).

mod ca;
mod certificates;
mod dataplanes;
mod ha;
mod permissions;
mod schema;
mod services;
mod state;
mod tokens;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, Params, Transaction};
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

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }
    /// SQLite has no boolean type: flags are stored as 0 or 1.
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.get::<_, i64>(i)? != 0)
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(i)?)
    }
}

/// The first row of a query, decoded by `f`.
fn one<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    f: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    rows.next()?.map(|r| f(r)).transpose()
}

/// Every row of a query, decoded by `f`.
fn all<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    f: impl Fn(&dyn Columns) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(f(r)?);
    }
    Ok(out)
}

/// The embedded SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path).map_err(|e| {
            StoreError::Backend(format!(
                "cannot open the database {}: {e}; check that --data-dir is writable",
                path.display()
            ))
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Runs `f` inside one IMMEDIATE transaction: all of it is written, or nothing.
    async fn tx<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.with(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

/// Each call is one transaction (or one statement) running a function of the concern's
/// file on the blocking pool.
#[async_trait]
impl Store for SqliteStore {
    async fn meta_or_init(&self, init: StoreMeta) -> Result<StoreMeta, StoreError> {
        self.tx(move |tx| state::meta_or_init(tx, init)).await
    }

    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.tx(move |tx| state::put_meta(tx, &key, &value)).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.with(|conn| state::revision(conn)).await
    }

    async fn create_service(
        &self,
        name: &str,
        protocol: Protocol,
        port: u32,
        now: i64,
    ) -> Result<Service, StoreError> {
        let name = name.to_owned();
        self.tx(move |tx| services::create(tx, &name, protocol, port, now))
            .await
    }

    async fn get_service(&self, name: &str) -> Result<Service, StoreError> {
        let name = name.to_owned();
        self.with(move |conn| services::get(conn, &name)).await
    }

    async fn list_services(&self) -> Result<Vec<Service>, StoreError> {
        self.with(|conn| services::list(conn)).await
    }

    async fn set_protocol(&self, name: &str, protocol: Protocol) -> Result<Service, StoreError> {
        let name = name.to_owned();
        self.tx(move |tx| services::set_protocol(tx, &name, protocol))
            .await
    }

    async fn delete_service(&self, name: &str) -> Result<u64, StoreError> {
        let name = name.to_owned();
        self.tx(move |tx| services::delete(tx, &name)).await
    }

    async fn create_route(&self, route: Route) -> Result<Route, StoreError> {
        self.tx(move |tx| services::create_route(tx, route)).await
    }

    async fn list_routes(&self) -> Result<Vec<Route>, StoreError> {
        self.with(|conn| services::list_routes(conn)).await
    }

    async fn delete_route(&self, host: &str, path_prefix: &str) -> Result<u64, StoreError> {
        let (host, path_prefix) = (host.to_owned(), path_prefix.to_owned());
        self.tx(move |tx| services::delete_route(tx, &host, &path_prefix))
            .await
    }

    async fn register_dataplane(
        &self,
        reg: DataplaneRegistration,
    ) -> Result<DataplaneRecord, StoreError> {
        self.tx(move |tx| dataplanes::register(tx, reg)).await
    }

    async fn set_dataplane_health(
        &self,
        id: &str,
        healthy: bool,
        app_protocol: Option<AppProtocol>,
    ) -> Result<Option<DataplaneRecord>, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| dataplanes::set_health(tx, &id, healthy, app_protocol))
            .await
    }

    async fn record_dataplane_seen(
        &self,
        id: &str,
        acked_version: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |conn| dataplanes::record_seen(conn, &id, acked_version, now))
            .await
    }

    async fn delete_dataplane(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| dataplanes::delete(tx, &id)).await
    }

    async fn list_dataplanes(&self) -> Result<Vec<DataplaneRecord>, StoreError> {
        self.with(|conn| dataplanes::list(conn)).await
    }

    async fn revoke_dataplane(&self, id: &str, now: i64) -> Result<RevokedDataplane, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| certificates::revoke_dataplane(tx, &id, now))
            .await
    }

    async fn record_certificate(
        &self,
        cert: CertificateRecord,
        now: i64,
    ) -> Result<(), StoreError> {
        self.tx(move |tx| certificates::record(tx, &cert, now))
            .await
    }

    async fn get_certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError> {
        let serial = serial.to_owned();
        self.with(move |conn| certificates::get(conn, &serial))
            .await
    }

    async fn create_permission(&self, permission: Permission) -> Result<Permission, StoreError> {
        self.tx(move |tx| permissions::create(tx, permission)).await
    }

    async fn list_permissions(&self) -> Result<Vec<Permission>, StoreError> {
        self.with(|conn| permissions::list(conn)).await
    }

    async fn delete_permission(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| permissions::delete(tx, &id)).await
    }

    async fn mesh_settings(&self) -> Result<MeshSettings, StoreError> {
        self.with(|conn| permissions::mesh(conn)).await
    }

    async fn set_default_policy(&self, policy: DefaultPolicy) -> Result<MeshSettings, StoreError> {
        self.tx(move |tx| permissions::set_default_policy(tx, policy))
            .await
    }

    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.tx(move |tx| tokens::create(tx, &token)).await
    }

    async fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| tokens::get(conn, &id)).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|conn| tokens::list(conn)).await
    }

    async fn revoke_token(&self, id: &str, now: i64) -> Result<TokenRecord, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| tokens::revoke(tx, &id, now)).await
    }

    async fn add_ca_root(&self, root: CaRootRecord) -> Result<u64, StoreError> {
        self.tx(move |tx| ca::add_root(tx, &root)).await
    }

    async fn set_signing_root(
        &self,
        sha256: &str,
        now: i64,
        fence: &Fence,
    ) -> Result<u64, StoreError> {
        let (sha, fence) = (sha256.to_owned(), fence.clone());
        self.tx(move |tx| ca::set_signing_root(tx, &sha, now, &fence))
            .await
    }

    async fn set_ca_root_key(&self, sha256: &str, key_pem: &str) -> Result<(), StoreError> {
        let (sha, key) = (sha256.to_owned(), key_pem.to_owned());
        self.tx(move |tx| ca::set_root_key(tx, &sha, &key)).await
    }

    async fn remove_ca_root(&self, sha256: &str) -> Result<u64, StoreError> {
        let sha = sha256.to_owned();
        self.tx(move |tx| ca::remove_root(tx, &sha)).await
    }

    async fn ca_root_times(&self) -> Result<Vec<CaRootTimes>, StoreError> {
        self.with(|conn| ca::root_times(conn)).await
    }

    async fn config_state(&self) -> Result<ConfigState, StoreError> {
        self.with(|conn| {
            // A read transaction gives one consistent snapshot under WAL.
            let tx = conn.transaction()?;
            let state = state::config_state(&tx)?;
            tx.commit()?;
            Ok(state)
        })
        .await
    }

    async fn heartbeat(&self, replica: &ReplicaRecord) -> Result<(), StoreError> {
        let replica = replica.clone();
        self.tx(move |tx| ha::heartbeat(tx, &replica)).await
    }

    async fn remove_replica(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |conn| ha::remove_replica(conn, &id)).await
    }

    async fn liveness(&self) -> Result<Liveness, StoreError> {
        self.with(|conn| {
            let tx = conn.transaction()?;
            let out = ha::liveness(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn open_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let session = session.clone();
        self.with(move |conn| ha::open_session(conn, &session))
            .await
    }

    async fn save_sessions(&self, sessions: Vec<SessionRecord>) -> Result<(), StoreError> {
        self.tx(move |tx| ha::save_sessions(tx, &sessions)).await
    }

    async fn close_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let session = session.clone();
        self.tx(move |tx| ha::close_session(tx, &session)).await
    }

    async fn try_lead(&self, holder: &str, ttl_ms: i64) -> Result<Option<(u64, i64)>, StoreError> {
        let holder = holder.to_owned();
        self.tx(move |tx| ha::try_lead(tx, &holder, ttl_ms)).await
    }

    async fn renew_lead(&self, fence: &Fence, ttl_ms: i64) -> Result<bool, StoreError> {
        let fence = fence.clone();
        self.tx(move |tx| ha::renew_lead(tx, &fence, ttl_ms)).await
    }

    async fn release_lead(&self, fence: &Fence) -> Result<(), StoreError> {
        let fence = fence.clone();
        self.with(move |conn| ha::release_lead(conn, &fence)).await
    }

    async fn lease(&self) -> Result<LeaseRecord, StoreError> {
        self.with(|conn| ha::lease(conn)).await
    }

    async fn sweep_dataplane(
        &self,
        fence: &Fence,
        id: &str,
        policy: SweepPolicy,
    ) -> Result<SweepOutcome, StoreError> {
        let (fence, id) = (fence.clone(), id.to_owned());
        self.tx(move |tx| ha::sweep_dataplane(tx, &fence, &id, &policy))
            .await
    }
}
