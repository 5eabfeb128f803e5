//! The SQLite schema and its migrations, tracked in `PRAGMA user_version`.

use rusqlite::Connection;

use crate::store::StoreError;

/// Schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 5;

pub(super) const SCHEMA_V1: &str = "
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

/// Version 4: what replicas share about each other (with SQLite there is one, but the
/// same liveness and leadership code runs): replica heartbeats, one session row per
/// dataplane stream, and the leader lease.
const MIGRATION_V4: &str = "
CREATE TABLE replicas (
    id            TEXT PRIMARY KEY,
    address       TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    heartbeat_ms  INTEGER NOT NULL
);
CREATE TABLE dataplane_sessions (
    dataplane_id   TEXT PRIMARY KEY,
    replica_id     TEXT NOT NULL,
    generation     INTEGER NOT NULL,
    connected      INTEGER NOT NULL,
    since_ms       INTEGER NOT NULL,
    sent_version   INTEGER NOT NULL,
    acked_version  INTEGER NOT NULL,
    nacked_version INTEGER NOT NULL,
    nack_error     TEXT NOT NULL,
    cert_expiry    INTEGER NOT NULL
);
CREATE TABLE leader_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
INSERT INTO leader_lease (id, holder, epoch, expires_ms) VALUES (1, '', 0, 0);
";

/// Version 5: authorization. Traffic permissions (one per source, destination and
/// port), the mesh default policy (0 = never set = allow) with its revision, the
/// certificates the CA issued (so a renewal can be traced to its bootstrap token, and a
/// dataplane's certificates revoked), and the serial each dataplane's stream presented.
const MIGRATION_V5: &str = "
CREATE TABLE permissions (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    port        INTEGER NOT NULL,
    action      INTEGER NOT NULL,
    revision    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (source, destination, port)
);
ALTER TABLE state ADD COLUMN default_policy INTEGER NOT NULL DEFAULT 0;
ALTER TABLE state ADD COLUMN mesh_revision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE state ADD COLUMN revoked_revision INTEGER NOT NULL DEFAULT 0;
CREATE TABLE certificates (
    serial     TEXT PRIMARY KEY,
    lineage    TEXT NOT NULL,
    token_id   TEXT NOT NULL,
    kind       INTEGER NOT NULL,
    name       TEXT NOT NULL,
    not_after  INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
);
CREATE INDEX certificates_by_lineage ON certificates (lineage);
ALTER TABLE dataplanes ADD COLUMN cert_serial TEXT NOT NULL DEFAULT '';
";

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "the database has schema version {version}, newer than this weft-cp understands \
             ({SCHEMA_VERSION}); run a newer weft-cp or restore a backup"
        )));
    }
    // Each step commits with its version, so an interrupted upgrade resumes where it stopped.
    for (target, sql) in [
        (1, SCHEMA_V1),
        (2, MIGRATION_V2),
        (3, MIGRATION_V3),
        (4, MIGRATION_V4),
        (5, MIGRATION_V5),
    ] {
        if version < target {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", target)?;
            tx.commit()?;
        }
    }
    Ok(())
}
