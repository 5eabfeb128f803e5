//! The global revision, tombstones, the store's identity, and the consistent read of
//! everything pushed to dataplanes.

use rusqlite::{Connection, Transaction, params};

use super::{all, one};
use crate::store::model::{META_KEYS, TombstoneKind};
use crate::store::rows::{
    self, CA_ROOT_COLS, DATAPLANE_COLS, ROUTE_COLS, SERVICE_COLS, TOMBSTONE_COLS,
};
use crate::store::rules::tombstones_to_prune;
use crate::store::{ConfigState, StoreError, StoreMeta};

/// Increments the global revision and returns the new value.
pub(super) fn bump(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let rev: i64 = tx.query_row(
        "UPDATE state SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        [],
        |r| r.get(0),
    )?;
    Ok(rev as u64)
}

/// [`bump`] for a change of the trust bundle, which also records its revision.
pub(super) fn bump_bundle(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let rev = bump(tx)?;
    tx.execute(
        "UPDATE state SET bundle_revision = ?1 WHERE id = 1",
        [rev as i64],
    )?;
    Ok(rev)
}

pub(super) fn clear_tombstone(
    tx: &Transaction<'_>,
    kind: TombstoneKind,
    key: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM tombstones WHERE kind = ?1 AND key = ?2",
        params![kind.as_str(), key],
    )?;
    Ok(())
}

/// Records a deletion at `revision`, pruning the oldest tombstones past the limit (which
/// raises the horizon below which deltas cannot be computed).
pub(super) fn add_tombstone(
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
    if let Some(excess) = tombstones_to_prune(count) {
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

fn get_meta(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    one(conn, "SELECT value FROM meta WHERE key = ?1", [key], |r| {
        r.bytes(0)
    })
}

/// The stored identity, or `init` written as the identity of a new store.
pub(super) fn meta_or_init(tx: &Transaction<'_>, init: StoreMeta) -> Result<StoreMeta, StoreError> {
    let mut values: [Option<Vec<u8>>; 6] = Default::default();
    for (value, key) in values.iter_mut().zip(META_KEYS) {
        *value = get_meta(tx, key)?;
    }
    if let Some(existing) = StoreMeta::from_values(values) {
        return Ok(existing);
    }
    for (k, v) in init.to_pairs() {
        put_meta(tx, k, &v)?;
    }
    Ok(init)
}

pub(super) fn put_meta(conn: &Connection, key: &str, value: &[u8]) -> Result<(), StoreError> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![key, value],
    )?;
    Ok(())
}

pub(super) fn revision(conn: &Connection) -> Result<u64, StoreError> {
    Ok(
        one(conn, "SELECT revision FROM state WHERE id = 1", [], |r| {
            r.uint(0)
        })?
        .unwrap_or(0),
    )
}

/// Everything pushed to dataplanes; the caller runs it in one read transaction.
pub(super) fn config_state(tx: &Transaction<'_>) -> Result<ConfigState, StoreError> {
    let (revision, horizon, bundle_revision, revoked_revision): (i64, i64, i64, i64) = tx
        .query_row(
            "SELECT revision, tombstone_horizon, bundle_revision, revoked_revision FROM state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
    let services = all(
        tx,
        &format!("SELECT {SERVICE_COLS} FROM services ORDER BY name"),
        [],
        rows::service,
    )?;
    let routes = all(
        tx,
        &format!("SELECT {ROUTE_COLS} FROM routes ORDER BY host, path_prefix"),
        [],
        rows::route,
    )?;
    let dataplanes = all(
        tx,
        &format!("SELECT {DATAPLANE_COLS} FROM dataplanes ORDER BY id"),
        [],
        rows::dataplane,
    )?;
    let tombstones = all(
        tx,
        &format!("SELECT {TOMBSTONE_COLS} FROM tombstones ORDER BY revision"),
        [],
        rows::tombstone,
    )?
    .into_iter()
    .flatten()
    .collect();
    let ca_roots = all(
        tx,
        &format!("SELECT {CA_ROOT_COLS} FROM ca_roots ORDER BY added_at, sha256"),
        [],
        rows::ca_root,
    )?;
    Ok(ConfigState {
        revision: revision as u64,
        services,
        routes,
        dataplanes,
        tombstones,
        tombstone_horizon: horizon as u64,
        ca_roots,
        bundle_revision: bundle_revision as u64,
        permissions: super::permissions::list(tx)?,
        mesh: super::permissions::mesh(tx)?,
        revoked: super::certificates::revoked(tx)?,
        revoked_revision: revoked_revision as u64,
    })
}
