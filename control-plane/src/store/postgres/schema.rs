//! The PostgreSQL schema as numbered migrations, applied at start in one transaction
//! under an advisory lock, so replicas that start together apply each migration once
//! and none serves before the schema it needs is there.

use deadpool_postgres::GenericClient;

use crate::store::StoreError;

/// Schema version this code writes.
pub const SCHEMA_VERSION: i64 = 3;

/// Key of the advisory lock held while migrating ("weft" in ASCII).
const MIGRATION_LOCK: i64 = 0x7765_6674;

/// Version 1: the same tables as the SQLite store at its version 3 (integers are
/// `bigint`, flags `boolean`).
const SCHEMA_V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE state (
    id                INTEGER PRIMARY KEY CHECK (id = 1),
    revision          BIGINT NOT NULL,
    tombstone_horizon BIGINT NOT NULL,
    bundle_revision   BIGINT NOT NULL
);
INSERT INTO state (id, revision, tombstone_horizon, bundle_revision) VALUES (1, 0, 0, 0);
CREATE TABLE services (
    name       TEXT PRIMARY KEY,
    protocol   BIGINT NOT NULL,
    port       BIGINT UNIQUE,
    revision   BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE routes (
    host          TEXT NOT NULL,
    path_prefix   TEXT NOT NULL,
    service       TEXT NOT NULL REFERENCES services(name),
    rewrite_host  TEXT NOT NULL,
    revision      BIGINT NOT NULL,
    prefer_region TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (host, path_prefix)
);
CREATE TABLE dataplanes (
    id            TEXT PRIMARY KEY,
    kind          BIGINT NOT NULL,
    name          TEXT NOT NULL,
    region        TEXT NOT NULL,
    address       TEXT NOT NULL,
    healthy       BOOLEAN NOT NULL,
    app_protocol  BIGINT NOT NULL,
    revision      BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL,
    acked_version BIGINT NOT NULL,
    cert_expiry   BIGINT NOT NULL
);
CREATE TABLE tombstones (
    kind     TEXT NOT NULL,
    key      TEXT NOT NULL,
    revision BIGINT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX tombstones_by_revision ON tombstones (revision);
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    kind       BIGINT NOT NULL,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE TABLE ca_roots (
    sha256           TEXT PRIMARY KEY,
    cert_pem         TEXT NOT NULL,
    key_pem          TEXT NOT NULL,
    signing          BOOLEAN NOT NULL,
    added_at         BIGINT NOT NULL,
    signing_ended_at BIGINT NOT NULL DEFAULT 0
);
";

/// Version 2: what replicas share about each other: heartbeats, one session row per
/// dataplane stream (whichever replica holds it), and the leader lease.
const MIGRATION_V2: &str = "
CREATE TABLE replicas (
    id            TEXT PRIMARY KEY,
    address       TEXT NOT NULL,
    started_at_ms BIGINT NOT NULL,
    heartbeat_ms  BIGINT NOT NULL
);
CREATE TABLE dataplane_sessions (
    dataplane_id   TEXT PRIMARY KEY,
    replica_id     TEXT NOT NULL,
    generation     BIGINT NOT NULL,
    connected      BOOLEAN NOT NULL,
    since_ms       BIGINT NOT NULL,
    sent_version   BIGINT NOT NULL,
    acked_version  BIGINT NOT NULL,
    nacked_version BIGINT NOT NULL,
    nack_error     TEXT NOT NULL,
    cert_expiry    BIGINT NOT NULL
);
CREATE TABLE leader_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
INSERT INTO leader_lease (id, holder, epoch, expires_ms) VALUES (1, '', 0, 0);
";

/// Version 3: authorization, as the SQLite store's version 5: traffic permissions, the
/// mesh default policy (0 = never set = allow) with its revision, the certificates the
/// CA issued with their lineage, and the serial each dataplane's stream presented.
const MIGRATION_V3: &str = "
CREATE TABLE permissions (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    port        BIGINT NOT NULL,
    action      BIGINT NOT NULL,
    revision    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (source, destination, port)
);
ALTER TABLE state ADD COLUMN default_policy BIGINT NOT NULL DEFAULT 0;
ALTER TABLE state ADD COLUMN mesh_revision BIGINT NOT NULL DEFAULT 0;
ALTER TABLE state ADD COLUMN revoked_revision BIGINT NOT NULL DEFAULT 0;
CREATE TABLE certificates (
    serial     TEXT PRIMARY KEY,
    lineage    TEXT NOT NULL,
    token_id   TEXT NOT NULL,
    kind       BIGINT NOT NULL,
    name       TEXT NOT NULL,
    not_after  BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL
);
CREATE INDEX certificates_by_lineage ON certificates (lineage);
ALTER TABLE dataplanes ADD COLUMN cert_serial TEXT NOT NULL DEFAULT '';
";

/// Every migration, in order: `(version, sql)`.
const MIGRATIONS: &[(i64, &str)] = &[(1, SCHEMA_V1), (2, MIGRATION_V2), (3, MIGRATION_V3)];

/// Brings the schema to [`SCHEMA_VERSION`]. Refuses a database written by a newer
/// weft-cp, which may hold data this one would misread.
pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS weft_schema_migrations (
             version    BIGINT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let version: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM weft_schema_migrations",
            &[],
        )
        .await?
        .try_get(0)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the database has schema version {version}, newer than this weft-cp understands \
             ({SCHEMA_VERSION}); run a newer weft-cp or restore a backup"
        )));
    }
    for (target, sql) in MIGRATIONS {
        if version < *target {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO weft_schema_migrations (version) VALUES ($1)",
                &[target],
            )
            .await?;
            tracing::info!(version = target, "store schema migrated");
        }
    }
    tx.commit().await?;
    Ok(())
}
