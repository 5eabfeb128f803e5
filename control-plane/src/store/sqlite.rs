//! SQLite backend: one file under `--data-dir`, WAL journal with `synchronous=FULL`, so a
//! change the API acknowledged survives `kill -9` and power loss.
//!
//! The connection lives behind a mutex and every call runs on the blocking pool: SQLite
//! work (and its fsync) never stalls the async runtime that carries discovery streams.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use weft_proto::v1::{AppProtocol, Protocol, Route, Service};

use super::{
    CaRootRecord, CaRootTimes, ConfigState, DataplaneRecord, DataplaneRegistration, Store,
    StoreError, StoreMeta, TokenRecord, Tombstone, TombstoneKind, app_protocol_from_i32,
    kind_from_i32, protocol_from_i32, route_key,
};

/// Schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 3;

/// How many tombstones are kept; older ones are pruned and raise the delta horizon.
const MAX_TOMBSTONES: i64 = 10_000;

const SCHEMA_V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE state (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    revision          INTEGER NOT NULL,
    tombstone_horizon INTEGER NOT NULL,
    bundle_revision   INTEGER NOT NULL
);
INSERT INTO state (id, revision, tombstone_horizon, bundle_revision) VALUES (1, 0, 0, 0);
CREATE TABLE services (
    name       TEXT PRIMARY KEY,
    protocol   INTEGER NOT NULL,
    port       INTEGER UNIQUE,
    revision   INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE routes (
    host         TEXT NOT NULL,
    path_prefix  TEXT NOT NULL,
    service      TEXT NOT NULL REFERENCES services(name),
    rewrite_host TEXT NOT NULL,
    revision     INTEGER NOT NULL,
    PRIMARY KEY (host, path_prefix)
);
CREATE TABLE dataplanes (
    id            TEXT PRIMARY KEY,
    kind          INTEGER NOT NULL,
    name          TEXT NOT NULL,
    region        TEXT NOT NULL,
    address       TEXT NOT NULL,
    healthy       INTEGER NOT NULL,
    app_protocol  INTEGER NOT NULL,
    revision      INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    acked_version INTEGER NOT NULL,
    cert_expiry   INTEGER NOT NULL
);
CREATE TABLE tombstones (
    kind     TEXT NOT NULL,
    key      TEXT NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX tombstones_by_revision ON tombstones (revision);
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    kind       INTEGER NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
);
CREATE TABLE ca_roots (
    sha256   TEXT PRIMARY KEY,
    cert_pem TEXT NOT NULL,
    key_pem  TEXT NOT NULL,
    signing  INTEGER NOT NULL,
    added_at INTEGER NOT NULL
);
";

/// Version 2: CA rotation. A root records when it stopped signing, which tells a
/// rotation target (never signed: 0) from a retired-but-trusted root (> 0), and says
/// when the latter's certificates have all expired. Existing roots default to 0, which
/// is right: a version-1 store never rotated, so its one root is the signing one.
const MIGRATION_V2: &str = "
ALTER TABLE ca_roots ADD COLUMN signing_ended_at INTEGER NOT NULL DEFAULT 0;
";

/// Version 3: a route may prefer the endpoints of one region. Existing routes default
/// to '' (no preference), which is how they behaved before.
const MIGRATION_V3: &str = "
ALTER TABLE routes ADD COLUMN prefer_region TEXT NOT NULL DEFAULT '';
";

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
        migrate(&mut conn)?;
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

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the database has schema version {version}, newer than this weft-cp understands \
             ({SCHEMA_VERSION}); run a newer weft-cp or restore a backup"
        )));
    }
    // Each step commits with its version, so an interrupted upgrade resumes where it stopped.
    for (target, sql) in [(1, SCHEMA_V1), (2, MIGRATION_V2), (3, MIGRATION_V3)] {
        if version < target {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", target)?;
            tx.commit()?;
        }
    }
    Ok(())
}

/// Increments the global revision and returns the new value.
fn bump(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let rev: i64 = tx.query_row(
        "UPDATE state SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        [],
        |r| r.get(0),
    )?;
    Ok(rev as u64)
}

fn clear_tombstone(tx: &Transaction<'_>, kind: TombstoneKind, key: &str) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM tombstones WHERE kind = ?1 AND key = ?2",
        params![kind.as_str(), key],
    )?;
    Ok(())
}

fn add_tombstone(
    tx: &Transaction<'_>,
    kind: TombstoneKind,
    key: &str,
    revision: u64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO tombstones (kind, key, revision) VALUES (?1, ?2, ?3)
         ON CONFLICT (kind, key) DO UPDATE SET revision = excluded.revision",
        params![kind.as_str(), key, revision as i64],
    )?;
    let count: i64 = tx.query_row("SELECT COUNT(*) FROM tombstones", [], |r| r.get(0))?;
    if count > MAX_TOMBSTONES {
        let excess = count - MAX_TOMBSTONES;
        let horizon: i64 = tx.query_row(
            "SELECT MAX(revision) FROM (SELECT revision FROM tombstones ORDER BY revision LIMIT ?1)",
            [excess],
            |r| r.get(0),
        )?;
        tx.execute("DELETE FROM tombstones WHERE revision <= ?1", [horizon])?;
        tx.execute(
            "UPDATE state SET tombstone_horizon = MAX(tombstone_horizon, ?1) WHERE id = 1",
            [horizon],
        )?;
    }
    Ok(())
}

fn row_to_service(r: &rusqlite::Row<'_>) -> rusqlite::Result<Service> {
    Ok(Service {
        name: r.get(0)?,
        protocol: protocol_from_i32(r.get(1)?) as i32,
        port: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u32,
        revision: r.get::<_, i64>(3)? as u64,
        created_at: r.get(4)?,
    })
}

const SERVICE_COLS: &str = "name, protocol, port, revision, created_at";

fn get_service_tx(tx: &Connection, name: &str) -> Result<Option<Service>, StoreError> {
    Ok(tx
        .query_row(
            &format!("SELECT {SERVICE_COLS} FROM services WHERE name = ?1"),
            [name],
            row_to_service,
        )
        .optional()?)
}

fn service_not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!(
        "service \"{name}\" does not exist; list services with `weftctl service list` or create it with `weftctl service create {name} --protocol <tcp|http|http2|grpc>`"
    ))
}

fn row_to_route(r: &rusqlite::Row<'_>) -> rusqlite::Result<Route> {
    Ok(Route {
        host: r.get(0)?,
        path_prefix: r.get(1)?,
        service: r.get(2)?,
        rewrite_host: r.get(3)?,
        revision: r.get::<_, i64>(4)? as u64,
        prefer_region: r.get(5)?,
    })
}

const DATAPLANE_COLS: &str = "id, kind, name, region, address, healthy, app_protocol, revision, last_seen, acked_version, cert_expiry";

fn row_to_dataplane(r: &rusqlite::Row<'_>) -> rusqlite::Result<DataplaneRecord> {
    Ok(DataplaneRecord {
        id: r.get(0)?,
        kind: kind_from_i32(r.get(1)?),
        name: r.get(2)?,
        region: r.get(3)?,
        address: r.get(4)?,
        healthy: r.get::<_, i64>(5)? != 0,
        app_protocol: app_protocol_from_i32(r.get(6)?),
        revision: r.get::<_, i64>(7)? as u64,
        last_seen: r.get(8)?,
        acked_version: r.get::<_, i64>(9)? as u64,
        cert_expiry: r.get(10)?,
    })
}

fn get_dataplane_tx(tx: &Connection, id: &str) -> Result<Option<DataplaneRecord>, StoreError> {
    Ok(tx
        .query_row(
            &format!("SELECT {DATAPLANE_COLS} FROM dataplanes WHERE id = ?1"),
            [id],
            row_to_dataplane,
        )
        .optional()?)
}

fn row_to_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        kind: kind_from_i32(r.get(1)?),
        name: r.get(2)?,
        created_at: r.get(3)?,
        expires_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

fn row_to_root(r: &rusqlite::Row<'_>) -> rusqlite::Result<CaRootRecord> {
    Ok(CaRootRecord {
        sha256: r.get(0)?,
        cert_pem: r.get(1)?,
        key_pem: r.get(2)?,
        signing: r.get::<_, i64>(3)? != 0,
        added_at: r.get(4)?,
    })
}

fn bump_bundle(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let rev = bump(tx)?;
    tx.execute(
        "UPDATE state SET bundle_revision = ?1 WHERE id = 1",
        [rev as i64],
    )?;
    Ok(rev)
}

/// Every row of a query without parameters, mapped by `f`.
fn all<T>(
    conn: &Connection,
    sql: &str,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], f)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

const ALL_SERVICES: &str =
    "SELECT name, protocol, port, revision, created_at FROM services ORDER BY name";
const ALL_ROUTES: &str = "SELECT host, path_prefix, service, rewrite_host, revision, prefer_region FROM routes ORDER BY host, path_prefix";

fn get_meta(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

#[async_trait]
impl Store for SqliteStore {
    async fn meta_or_init(&self, init: StoreMeta) -> Result<StoreMeta, StoreError> {
        self.tx(move |tx| {
            let existing = (
                get_meta(tx, "control_plane_id")?,
                get_meta(tx, "trust_domain")?,
                get_meta(tx, "token_key")?,
                get_meta(tx, "admin_token_sha256")?,
            );
            if let (Some(id), Some(td), Some(key), Some(admin)) = existing {
                return Ok(StoreMeta {
                    control_plane_id: String::from_utf8_lossy(&id).into_owned(),
                    trust_domain: String::from_utf8_lossy(&td).into_owned(),
                    token_key: key,
                    admin_token_sha256: admin,
                });
            }
            for (k, v) in [
                (
                    "control_plane_id",
                    init.control_plane_id.as_bytes().to_vec(),
                ),
                ("trust_domain", init.trust_domain.as_bytes().to_vec()),
                ("token_key", init.token_key.clone()),
                ("admin_token_sha256", init.admin_token_sha256.clone()),
            ] {
                tx.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
                    params![k, v],
                )?;
            }
            Ok(init)
        })
        .await
    }

    async fn create_service(
        &self,
        name: &str,
        protocol: Protocol,
        port: u32,
        now: i64,
    ) -> Result<Service, StoreError> {
        let name = name.to_owned();
        self.tx(move |tx| {
            if get_service_tx(tx, &name)?.is_some() {
                return Err(StoreError::AlreadyExists(format!(
                    "service \"{name}\" already exists; change its protocol with `weftctl service set-protocol {name} <protocol>` or delete it first"
                )));
            }
            if port != 0 {
                let owner: Option<String> = tx
                    .query_row(
                        "SELECT name FROM services WHERE port = ?1",
                        [port as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(owner) = owner {
                    return Err(StoreError::AlreadyExists(format!(
                        "port {port} is already used by service \"{owner}\"; every sidecar listens on each service port, so choose another --port"
                    )));
                }
            }
            let rev = bump(tx)?;
            tx.execute(
                "INSERT INTO services (name, protocol, port, revision, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    name,
                    protocol as i32,
                    if port == 0 { None } else { Some(port as i64) },
                    rev as i64,
                    now
                ],
            )?;
            clear_tombstone(tx, TombstoneKind::Service, &name)?;
            get_service_tx(tx, &name)?.ok_or_else(|| service_not_found(&name))
        })
        .await
    }

    async fn get_service(&self, name: &str) -> Result<Service, StoreError> {
        let name = name.to_owned();
        self.with(move |conn| get_service_tx(conn, &name)?.ok_or_else(|| service_not_found(&name)))
            .await
    }

    async fn list_services(&self) -> Result<Vec<Service>, StoreError> {
        self.with(|conn| all(conn, ALL_SERVICES, row_to_service))
            .await
    }

    async fn set_protocol(&self, name: &str, protocol: Protocol) -> Result<Service, StoreError> {
        let name = name.to_owned();
        self.tx(move |tx| {
            let current = get_service_tx(tx, &name)?.ok_or_else(|| service_not_found(&name))?;
            if current.protocol == protocol as i32 {
                return Ok(current);
            }
            let rev = bump(tx)?;
            tx.execute(
                "UPDATE services SET protocol = ?1, revision = ?2 WHERE name = ?3",
                params![protocol as i32, rev as i64, name],
            )?;
            get_service_tx(tx, &name)?.ok_or_else(|| service_not_found(&name))
        })
        .await
    }

    async fn delete_service(&self, name: &str) -> Result<u64, StoreError> {
        let name = name.to_owned();
        self.tx(move |tx| {
            if get_service_tx(tx, &name)?.is_none() {
                return Err(service_not_found(&name));
            }
            let hosts: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT host || path_prefix FROM routes WHERE service = ?1 ORDER BY host",
                )?;
                stmt.query_map([&name], |r| r.get(0))?
                    .collect::<Result<Vec<_>, _>>()?
            };
            if !hosts.is_empty() {
                return Err(StoreError::FailedPrecondition(format!(
                    "service \"{name}\" is the target of gateway routes ({}); delete them first with `weftctl route delete HOST`",
                    hosts.join(", ")
                )));
            }
            let rev = bump(tx)?;
            tx.execute("DELETE FROM services WHERE name = ?1", [&name])?;
            add_tombstone(tx, TombstoneKind::Service, &name, rev)?;
            Ok(rev)
        })
        .await
    }

    async fn create_route(&self, route: Route) -> Result<Route, StoreError> {
        self.tx(move |tx| {
            if get_service_tx(tx, &route.service)?.is_none() {
                return Err(StoreError::NotFound(format!(
                    "route target service \"{}\" does not exist; create it first with `weftctl service create {} --protocol <tcp|http|http2|grpc>`",
                    route.service, route.service
                )));
            }
            let exists: Option<String> = tx
                .query_row(
                    "SELECT service FROM routes WHERE host = ?1 AND path_prefix = ?2",
                    params![route.host, route.path_prefix],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(service) = exists {
                return Err(StoreError::AlreadyExists(format!(
                    "a route for {}{} already exists (to service \"{service}\"); delete it first with `weftctl route delete {} --path-prefix {}`",
                    route.host, route.path_prefix, route.host, route.path_prefix
                )));
            }
            let rev = bump(tx)?;
            tx.execute(
                "INSERT INTO routes (host, path_prefix, service, rewrite_host, revision, prefer_region) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![route.host, route.path_prefix, route.service, route.rewrite_host, rev as i64, route.prefer_region],
            )?;
            clear_tombstone(tx, TombstoneKind::Route, &route_key(&route.host, &route.path_prefix))?;
            Ok(Route {
                revision: rev,
                ..route
            })
        })
        .await
    }

    async fn list_routes(&self) -> Result<Vec<Route>, StoreError> {
        self.with(|conn| all(conn, ALL_ROUTES, row_to_route)).await
    }

    async fn delete_route(&self, host: &str, path_prefix: &str) -> Result<u64, StoreError> {
        let (host, path_prefix) = (host.to_owned(), path_prefix.to_owned());
        self.tx(move |tx| {
            let n = tx.execute(
                "DELETE FROM routes WHERE host = ?1 AND path_prefix = ?2",
                params![host, path_prefix],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "no route for {host}{path_prefix}; list routes with `weftctl route list`"
                )));
            }
            let rev = bump(tx)?;
            add_tombstone(
                tx,
                TombstoneKind::Route,
                &route_key(&host, &path_prefix),
                rev,
            )?;
            Ok(rev)
        })
        .await
    }

    async fn register_dataplane(
        &self,
        reg: DataplaneRegistration,
    ) -> Result<DataplaneRecord, StoreError> {
        self.tx(move |tx| {
            let existing = get_dataplane_tx(tx, &reg.id)?;
            let visible_change = match &existing {
                None => true,
                Some(old) => {
                    old.address != reg.address
                        || old.region != reg.region
                        || old.kind != reg.kind
                        || old.name != reg.name
                        || !old.healthy
                }
            };
            match existing {
                Some(old) if !visible_change => {
                    tx.execute(
                        "UPDATE dataplanes SET last_seen = ?1, cert_expiry = ?2 WHERE id = ?3",
                        params![reg.now, reg.cert_expiry, reg.id],
                    )?;
                    Ok(DataplaneRecord {
                        last_seen: reg.now,
                        cert_expiry: reg.cert_expiry,
                        ..old
                    })
                }
                old => {
                    let rev = bump(tx)?;
                    let app = old
                        .as_ref()
                        .filter(|o| o.address == reg.address)
                        .map(|o| o.app_protocol)
                        .unwrap_or(AppProtocol::Unknown);
                    let acked = old.as_ref().map(|o| o.acked_version).unwrap_or(0);
                    tx.execute(
                        &format!(
                            "INSERT OR REPLACE INTO dataplanes ({DATAPLANE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?10)"
                        ),
                        params![
                            reg.id,
                            reg.kind as i32,
                            reg.name,
                            reg.region,
                            reg.address,
                            app as i32,
                            rev as i64,
                            reg.now,
                            acked as i64,
                            reg.cert_expiry
                        ],
                    )?;
                    clear_tombstone(tx, TombstoneKind::Endpoint, &reg.id)?;
                    get_dataplane_tx(tx, &reg.id)?
                        .ok_or_else(|| StoreError::Backend("dataplane vanished".into()))
                }
            }
        })
        .await
    }

    async fn set_dataplane_health(
        &self,
        id: &str,
        healthy: bool,
        app_protocol: Option<AppProtocol>,
    ) -> Result<Option<DataplaneRecord>, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| {
            let Some(old) = get_dataplane_tx(tx, &id)? else {
                return Ok(None);
            };
            if let Some(app) = app_protocol {
                tx.execute(
                    "UPDATE dataplanes SET app_protocol = ?1 WHERE id = ?2",
                    params![app as i32, id],
                )?;
            }
            if old.healthy != healthy {
                let rev = bump(tx)?;
                tx.execute(
                    "UPDATE dataplanes SET healthy = ?1, revision = ?2 WHERE id = ?3",
                    params![healthy as i64, rev as i64, id],
                )?;
            }
            get_dataplane_tx(tx, &id)
        })
        .await
    }

    async fn record_dataplane_seen(
        &self,
        id: &str,
        acked_version: u64,
        now: i64,
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.execute(
                "UPDATE dataplanes SET acked_version = ?1, last_seen = ?2 WHERE id = ?3",
                params![acked_version as i64, now, id],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_dataplane(&self, id: &str) -> Result<u64, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| {
            let n = tx.execute("DELETE FROM dataplanes WHERE id = ?1", [&id])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "no dataplane \"{id}\"; list them with `weftctl dataplane list`"
                )));
            }
            let rev = bump(tx)?;
            add_tombstone(tx, TombstoneKind::Endpoint, &id, rev)?;
            Ok(rev)
        })
        .await
    }

    async fn list_dataplanes(&self) -> Result<Vec<DataplaneRecord>, StoreError> {
        self.with(|conn| {
            all(
                conn,
                &format!("SELECT {DATAPLANE_COLS} FROM dataplanes ORDER BY id"),
                row_to_dataplane,
            )
        })
        .await
    }

    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError> {
        self.tx(move |tx| {
            tx.execute(
                "INSERT INTO tokens (id, kind, name, created_at, expires_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    token.id,
                    token.kind as i32,
                    token.name,
                    token.created_at,
                    token.expires_at,
                    token.revoked_at
                ],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.query_row(
                "SELECT id, kind, name, created_at, expires_at, revoked_at FROM tokens WHERE id = ?1",
                [&id],
                row_to_token,
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no token with id \"{id}\"; list tokens with `weftctl token list`"
                ))
            })
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, kind, name, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], row_to_token)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn revoke_token(&self, id: &str, now: i64) -> Result<TokenRecord, StoreError> {
        let id = id.to_owned();
        self.tx(move |tx| {
            tx.execute(
                "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at = 0",
                params![now, id],
            )?;
            tx.query_row(
                "SELECT id, kind, name, created_at, expires_at, revoked_at FROM tokens WHERE id = ?1",
                [&id],
                row_to_token,
            )
            .optional()?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no token with id \"{id}\"; list tokens with `weftctl token list`"
                ))
            })
        })
        .await
    }

    async fn add_ca_root(&self, root: CaRootRecord) -> Result<u64, StoreError> {
        self.tx(move |tx| {
            if root.signing {
                tx.execute("UPDATE ca_roots SET signing = 0", [])?;
            }
            tx.execute(
                "INSERT INTO ca_roots (sha256, cert_pem, key_pem, signing, added_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![root.sha256, root.cert_pem, root.key_pem, root.signing as i64, root.added_at],
            )?;
            bump_bundle(tx)
        })
        .await
    }

    async fn set_signing_root(&self, sha256: &str, now: i64) -> Result<u64, StoreError> {
        let sha = sha256.to_owned();
        self.tx(move |tx| {
            let has_key: Option<String> = tx
                .query_row(
                    "SELECT key_pem FROM ca_roots WHERE sha256 = ?1",
                    [&sha],
                    |r| r.get(0),
                )
                .optional()?;
            match has_key {
                None => Err(StoreError::NotFound(format!(
                    "no CA root with sha256 {sha}; see `weftctl ca show`"
                ))),
                Some(k) if k.is_empty() => Err(StoreError::FailedPrecondition(format!(
                    "CA root {sha} has no private key here, so it cannot sign"
                ))),
                Some(_) => {
                    tx.execute(
                        "UPDATE ca_roots SET signing_ended_at = ?1 WHERE signing = 1 AND sha256 <> ?2",
                        params![now, sha],
                    )?;
                    tx.execute(
                        "UPDATE ca_roots SET signing = (sha256 = ?1),
                             signing_ended_at = CASE WHEN sha256 = ?1 THEN 0 ELSE signing_ended_at END",
                        [&sha],
                    )?;
                    bump_bundle(tx)
                }
            }
        })
        .await
    }

    async fn remove_ca_root(&self, sha256: &str) -> Result<u64, StoreError> {
        let sha = sha256.to_owned();
        self.tx(move |tx| {
            let signing: Option<i64> = tx
                .query_row(
                    "SELECT signing FROM ca_roots WHERE sha256 = ?1",
                    [&sha],
                    |r| r.get(0),
                )
                .optional()?;
            match signing {
                None => Err(StoreError::NotFound(format!(
                    "no CA root with sha256 {sha}; see `weftctl ca show`"
                ))),
                Some(1) => Err(StoreError::FailedPrecondition(format!(
                    "CA root {sha} is the signing root; rotate to another root before removing it"
                ))),
                Some(_) => {
                    tx.execute("DELETE FROM ca_roots WHERE sha256 = ?1", [&sha])?;
                    bump_bundle(tx)
                }
            }
        })
        .await
    }

    async fn ca_root_times(&self) -> Result<Vec<CaRootTimes>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(
                "SELECT sha256, signing_ended_at FROM ca_roots ORDER BY added_at, sha256",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(CaRootTimes {
                    sha256: r.get(0)?,
                    signing_ended_at: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn config_state(&self) -> Result<ConfigState, StoreError> {
        self.with(|conn| {
            // A read transaction gives one consistent snapshot under WAL.
            let tx = conn.transaction()?;
            let (revision, horizon, bundle_revision): (i64, i64, i64) = tx.query_row(
                "SELECT revision, tombstone_horizon, bundle_revision FROM state WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let services = all(&tx, ALL_SERVICES, row_to_service)?;
            let routes = all(&tx, ALL_ROUTES, row_to_route)?;
            let dataplanes = all(
                &tx,
                &format!("SELECT {DATAPLANE_COLS} FROM dataplanes ORDER BY id"),
                row_to_dataplane,
            )?;
            let tombstones = all(
                &tx,
                "SELECT kind, key, revision FROM tombstones ORDER BY revision",
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)),
            )?
            .into_iter()
                .filter_map(|(k, key, rev)| {
                    TombstoneKind::parse(&k).map(|kind| Tombstone {
                        kind,
                        key,
                        revision: rev as u64,
                    })
                })
                .collect();
            let ca_roots = all(
                &tx,
                "SELECT sha256, cert_pem, key_pem, signing, added_at FROM ca_roots ORDER BY added_at, sha256",
                row_to_root,
            )?;
            tx.commit()?;
            Ok(ConfigState {
                revision: revision as u64,
                services,
                routes,
                dataplanes,
                tombstones,
                tombstone_horizon: horizon as u64,
                ca_roots,
                bundle_revision: bundle_revision as u64,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::DataplaneKind;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("weft.db")).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn revisions_grow_and_deletes_leave_tombstones() {
        let (_d, s) = store();
        let a = s
            .create_service("a", Protocol::Http, 8080, 1)
            .await
            .unwrap();
        let b = s.create_service("b", Protocol::Grpc, 0, 1).await.unwrap();
        assert!(b.revision > a.revision);
        let a2 = s.set_protocol("a", Protocol::Http2).await.unwrap();
        assert!(a2.revision > b.revision);
        let del = s.delete_service("b").await.unwrap();
        let st = s.config_state().await.unwrap();
        assert_eq!(st.revision, del);
        assert_eq!(st.services.len(), 1);
        assert_eq!(
            st.tombstones,
            vec![Tombstone {
                kind: TombstoneKind::Service,
                key: "b".into(),
                revision: del
            }]
        );
        // Recreating clears the tombstone.
        s.create_service("b", Protocol::Tcp, 0, 2).await.unwrap();
        assert!(s.config_state().await.unwrap().tombstones.is_empty());
    }

    #[tokio::test]
    async fn failed_changes_write_nothing() {
        let (_d, s) = store();
        s.create_service("a", Protocol::Http, 8080, 1)
            .await
            .unwrap();
        let before = s.config_state().await.unwrap().revision;
        assert!(matches!(
            s.create_service("b", Protocol::Http, 8080, 1).await,
            Err(StoreError::AlreadyExists(m)) if m.contains("port 8080") && m.contains("\"a\"")
        ));
        assert!(matches!(
            s.create_service("a", Protocol::Http, 0, 1).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.create_route(Route {
                host: "x.example.com".into(),
                path_prefix: "/".into(),
                service: "missing".into(),
                ..Default::default()
            })
            .await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(s.config_state().await.unwrap().revision, before);
        assert_eq!(s.list_services().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn routes_block_service_deletion() {
        let (_d, s) = store();
        s.create_service("web", Protocol::Http, 0, 1).await.unwrap();
        s.create_route(Route {
            host: "*.example.com".into(),
            path_prefix: "/".into(),
            service: "web".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        assert!(matches!(
            s.delete_service("web").await,
            Err(StoreError::FailedPrecondition(m)) if m.contains("*.example.com")
        ));
        s.delete_route("*.example.com", "/").await.unwrap();
        s.delete_service("web").await.unwrap();
    }

    #[tokio::test]
    async fn a_route_keeps_its_region_preference() {
        let (_d, s) = store();
        s.create_service("web", Protocol::Http, 0, 1).await.unwrap();
        let route = |prefer_region: &str| Route {
            host: "api.example.com".into(),
            path_prefix: "/".into(),
            service: "web".into(),
            prefer_region: prefer_region.into(),
            ..Default::default()
        };
        let first = s.create_route(route("us")).await.unwrap();
        assert_eq!(first.prefer_region, "us");
        assert_eq!(s.list_routes().await.unwrap(), std::slice::from_ref(&first));
        // Re-created with another preference: a new revision, so gateways get it.
        s.delete_route("api.example.com", "/").await.unwrap();
        let second = s.create_route(route("eu")).await.unwrap();
        assert!(second.revision > first.revision);
        let st = s.config_state().await.unwrap();
        assert_eq!(st.routes, [second]);
        assert!(st.tombstones.is_empty(), "re-creating clears the tombstone");
    }

    #[tokio::test]
    async fn dataplane_reconnect_without_change_does_not_bump() {
        let (_d, s) = store();
        let reg = DataplaneRegistration {
            id: "service/web/127.0.0.1:15008".into(),
            kind: DataplaneKind::Sidecar,
            name: "web".into(),
            region: "eu".into(),
            address: "127.0.0.1:15008".into(),
            cert_expiry: 0,
            now: 1,
        };
        let first = s.register_dataplane(reg.clone()).await.unwrap();
        let again = s.register_dataplane(reg.clone()).await.unwrap();
        assert_eq!(first.revision, again.revision);
        s.set_dataplane_health(&reg.id, false, None).await.unwrap();
        let back = s.register_dataplane(reg.clone()).await.unwrap();
        assert!(back.healthy);
        assert!(back.revision > first.revision);
    }

    fn root(sha: &str, signing: bool, added_at: i64) -> CaRootRecord {
        CaRootRecord {
            sha256: sha.into(),
            cert_pem: format!("PEM {sha}"),
            key_pem: format!("KEY {sha}"),
            signing,
            added_at,
        }
    }

    #[tokio::test]
    async fn switching_the_signing_root_records_when_the_old_one_stopped() {
        let (_d, s) = store();
        s.add_ca_root(root("old", true, 1)).await.unwrap();
        let added = s.add_ca_root(root("new", false, 2)).await.unwrap();
        assert_eq!(s.config_state().await.unwrap().bundle_revision, added);
        let times = |v: &[CaRootTimes]| {
            v.iter()
                .map(|t| (t.sha256.clone(), t.signing_ended_at))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            times(&s.ca_root_times().await.unwrap()),
            [("old".into(), 0), ("new".into(), 0)]
        );
        let switched = s.set_signing_root("new", 500).await.unwrap();
        let st = s.config_state().await.unwrap();
        assert!(switched > added && st.bundle_revision == switched);
        assert_eq!(
            st.ca_roots
                .iter()
                .map(|r| (r.sha256.as_str(), r.signing))
                .collect::<Vec<_>>(),
            [("old", false), ("new", true)]
        );
        assert_eq!(
            times(&s.ca_root_times().await.unwrap()),
            [("old".into(), 500), ("new".into(), 0)]
        );
        assert!(matches!(
            s.remove_ca_root("new").await,
            Err(StoreError::FailedPrecondition(_))
        ));
        s.remove_ca_root("old").await.unwrap();
        assert_eq!(s.config_state().await.unwrap().ca_roots.len(), 1);
    }

    #[tokio::test]
    async fn a_version_1_store_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.execute(
                "INSERT INTO ca_roots (sha256, cert_pem, key_pem, signing, added_at) VALUES ('r', 'P', 'K', 1, 1)",
                [],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO services (name, protocol, port, revision, created_at) VALUES ('web', 2, NULL, 1, 1);
                 INSERT INTO routes (host, path_prefix, service, rewrite_host, revision) VALUES ('a.example.com', '/', 'web', '', 2);",
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let version: i64 = s
            .with(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let times = s.ca_root_times().await.unwrap();
        assert_eq!(
            times,
            [CaRootTimes {
                sha256: "r".into(),
                signing_ended_at: 0
            }]
        );
        let st = s.config_state().await.unwrap();
        assert!(st.ca_roots[0].signing);
        // A route from before version 3 has no region preference.
        assert_eq!(st.routes.len(), 1);
        assert_eq!(
            (
                st.routes[0].host.as_str(),
                st.routes[0].prefer_region.as_str()
            ),
            ("a.example.com", "")
        );
        // Opening again is a no-op.
        drop(s);
        SqliteStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.create_service("a", Protocol::Grpc, 9000, 1)
                .await
                .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let a = s.get_service("a").await.unwrap();
        assert_eq!(a.protocol, Protocol::Grpc as i32);
        assert_eq!(a.port, 9000);
    }
}
