//! Rows to records, once for every backend.
//!
//! Both schemas name and order the columns alike; each backend reads its own row type
//! through [`Columns`] (SQLite keeps booleans as integers, PostgreSQL as `boolean`), and
//! the decoders below turn the columns of the `*_COLS` lists into records.

use weft_proto::v1::{Permission, Route, Service};

use super::StoreError;
use super::model::{
    CaRootRecord, CaRootTimes, CertificateRecord, DataplaneRecord, ReplicaRecord, SessionRecord,
    TokenKind, TokenRecord, Tombstone, TombstoneKind, app_protocol_from_i64, kind_from_i64,
    protocol_from_i64,
};

/// Typed access to the columns of one row, by position.
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn flag(&self, i: usize) -> Result<bool, StoreError>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError>;

    /// An integer that is never negative (revisions, versions).
    fn uint(&self, i: usize) -> Result<u64, StoreError> {
        Ok(self.int(i)? as u64)
    }
}

pub(crate) const SERVICE_COLS: &str = "name, protocol, port, revision, created_at";

pub(crate) fn service(r: &dyn Columns) -> Result<Service, StoreError> {
    Ok(Service {
        name: r.text(0)?,
        protocol: protocol_from_i64(r.int(1)?) as i32,
        // No port is stored as NULL, so that the UNIQUE constraint ignores it.
        port: r.opt_int(2)?.unwrap_or(0) as u32,
        revision: r.uint(3)?,
        created_at: r.int(4)?,
    })
}

pub(crate) const ROUTE_COLS: &str =
    "host, path_prefix, service, rewrite_host, revision, prefer_region";

pub(crate) fn route(r: &dyn Columns) -> Result<Route, StoreError> {
    Ok(Route {
        host: r.text(0)?,
        path_prefix: r.text(1)?,
        service: r.text(2)?,
        rewrite_host: r.text(3)?,
        revision: r.uint(4)?,
        prefer_region: r.text(5)?,
    })
}

pub(crate) const DATAPLANE_COLS: &str = "id, kind, name, region, address, healthy, app_protocol, revision, last_seen, acked_version, cert_expiry, cert_serial";

pub(crate) fn dataplane(r: &dyn Columns) -> Result<DataplaneRecord, StoreError> {
    Ok(DataplaneRecord {
        id: r.text(0)?,
        kind: kind_from_i64(r.int(1)?),
        name: r.text(2)?,
        region: r.text(3)?,
        address: r.text(4)?,
        healthy: r.flag(5)?,
        app_protocol: app_protocol_from_i64(r.int(6)?),
        revision: r.uint(7)?,
        last_seen: r.int(8)?,
        acked_version: r.uint(9)?,
        cert_expiry: r.int(10)?,
        cert_serial: r.text(11)?,
    })
}

pub(crate) const PERMISSION_COLS: &str =
    "id, source, destination, port, action, revision, created_at";

pub(crate) fn permission(r: &dyn Columns) -> Result<Permission, StoreError> {
    Ok(Permission {
        id: r.text(0)?,
        source: r.text(1)?,
        destination: r.text(2)?,
        port: u32::try_from(r.int(3)?).unwrap_or(0),
        action: i32::try_from(r.int(4)?).unwrap_or(0),
        revision: r.uint(5)?,
        created_at: r.int(6)?,
    })
}

pub(crate) const CERTIFICATE_COLS: &str =
    "serial, lineage, token_id, kind, name, not_after, revoked_at";

pub(crate) fn certificate(r: &dyn Columns) -> Result<CertificateRecord, StoreError> {
    Ok(CertificateRecord {
        serial: r.text(0)?,
        lineage: r.text(1)?,
        token_id: r.text(2)?,
        kind: kind_from_i64(r.int(3)?),
        name: r.text(4)?,
        not_after: r.int(5)?,
        revoked_at: r.int(6)?,
    })
}

pub(crate) const TOKEN_COLS: &str = "id, kind, name, created_at, expires_at, revoked_at";

pub(crate) fn token(r: &dyn Columns) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: r.text(0)?,
        kind: TokenKind::from_i64(r.int(1)?),
        name: r.text(2)?,
        created_at: r.int(3)?,
        expires_at: r.int(4)?,
        revoked_at: r.int(5)?,
    })
}

pub(crate) const CA_ROOT_COLS: &str = "sha256, cert_pem, key_pem, signing, added_at";

pub(crate) fn ca_root(r: &dyn Columns) -> Result<CaRootRecord, StoreError> {
    Ok(CaRootRecord {
        sha256: r.text(0)?,
        cert_pem: r.text(1)?,
        key_pem: r.text(2)?,
        signing: r.flag(3)?,
        added_at: r.int(4)?,
    })
}

pub(crate) const CA_TIMES_COLS: &str = "sha256, signing_ended_at";

pub(crate) fn ca_times(r: &dyn Columns) -> Result<CaRootTimes, StoreError> {
    Ok(CaRootTimes {
        sha256: r.text(0)?,
        signing_ended_at: r.int(1)?,
    })
}

pub(crate) const TOMBSTONE_COLS: &str = "kind, key, revision";

/// A tombstone, or `None` for a kind this version does not know (skipped).
pub(crate) fn tombstone(r: &dyn Columns) -> Result<Option<Tombstone>, StoreError> {
    let Some(kind) = TombstoneKind::parse(&r.text(0)?) else {
        return Ok(None);
    };
    Ok(Some(Tombstone {
        kind,
        key: r.text(1)?,
        revision: r.uint(2)?,
    }))
}

pub(crate) const REPLICA_COLS: &str = "id, address, started_at_ms, heartbeat_ms";

pub(crate) fn replica(r: &dyn Columns) -> Result<ReplicaRecord, StoreError> {
    Ok(ReplicaRecord {
        id: r.text(0)?,
        address: r.text(1)?,
        started_at_ms: r.int(2)?,
        heartbeat_ms: r.int(3)?,
    })
}

pub(crate) const SESSION_COLS: &str = "dataplane_id, replica_id, generation, connected, since_ms, sent_version, acked_version, nacked_version, nack_error, cert_expiry";

pub(crate) fn session(r: &dyn Columns) -> Result<SessionRecord, StoreError> {
    Ok(SessionRecord {
        dataplane_id: r.text(0)?,
        replica_id: r.text(1)?,
        generation: r.uint(2)?,
        connected: r.flag(3)?,
        since_ms: r.int(4)?,
        sent_version: r.uint(5)?,
        acked_version: r.uint(6)?,
        nacked_version: r.uint(7)?,
        nack_error: r.text(8)?,
        cert_expiry: r.int(9)?,
    })
}
