//! The global revision, tombstones, the store's identity, and the consistent read of
//! everything pushed to dataplanes.

use deadpool_postgres::GenericClient;

use super::{CONFIG_CHANNEL, all, exec, one};
use crate::store::model::{META_KEYS, TombstoneKind};
use crate::store::rows::{
    self, CA_ROOT_COLS, DATAPLANE_COLS, ROUTE_COLS, SERVICE_COLS, TOMBSTONE_COLS,
};
use crate::store::rules::tombstones_to_prune;
use crate::store::{ConfigState, StoreError, StoreMeta};

/// Increments the global revision and returns the new value. The row is locked already
/// (`begin_change`); the notification goes out when the transaction commits.
pub(super) async fn bump(tx: &impl GenericClient) -> Result<u64, StoreError> {
    let rev = one(
        tx,
        "UPDATE state SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        &[],
        |r| r.uint(0),
    )
    .await?
    .ok_or_else(|| StoreError::Backend("the state row is missing".into()))?;
    let payload = rev.to_string();
    exec(tx, "SELECT pg_notify($1, $2)", &[&CONFIG_CHANNEL, &payload]).await?;
    Ok(rev)
}

/// [`bump`] for a change of the trust bundle, which also records its revision.
pub(super) async fn bump_bundle(tx: &impl GenericClient) -> Result<u64, StoreError> {
    let rev = bump(tx).await?;
    exec(
        tx,
        "UPDATE state SET bundle_revision = $1 WHERE id = 1",
        &[&(rev as i64)],
    )
    .await?;
    Ok(rev)
}

pub(super) async fn clear_tombstone(
    tx: &impl GenericClient,
    kind: TombstoneKind,
    key: &str,
) -> Result<(), StoreError> {
    exec(
        tx,
        "DELETE FROM tombstones WHERE kind = $1 AND key = $2",
        &[&kind.as_str(), &key],
    )
    .await?;
    Ok(())
}

/// Records a deletion at `revision`, pruning the oldest tombstones past the limit (which
/// raises the horizon below which deltas cannot be computed).
pub(super) async fn add_tombstone(
    tx: &impl GenericClient,
    kind: TombstoneKind,
    key: &str,
    revision: u64,
) -> Result<(), StoreError> {
    exec(
        tx,
        "INSERT INTO tombstones (kind, key, revision) VALUES ($1, $2, $3)
         ON CONFLICT (kind, key) DO UPDATE SET revision = excluded.revision",
        &[&kind.as_str(), &key, &(revision as i64)],
    )
    .await?;
    let count = one(tx, "SELECT COUNT(*) FROM tombstones", &[], |r| r.int(0))
        .await?
        .unwrap_or(0);
    if let Some(excess) = tombstones_to_prune(count) {
        let horizon = one(
            tx,
            "SELECT MAX(revision) FROM (SELECT revision FROM tombstones ORDER BY revision LIMIT $1) AS oldest",
            &[&excess],
            |r| r.int(0),
        )
        .await?
        .unwrap_or(0);
        exec(
            tx,
            "DELETE FROM tombstones WHERE revision <= $1",
            &[&horizon],
        )
        .await?;
        exec(
            tx,
            "UPDATE state SET tombstone_horizon = GREATEST(tombstone_horizon, $1) WHERE id = 1",
            &[&horizon],
        )
        .await?;
    }
    Ok(())
}

/// The stored identity, or `init` written as the identity of a new store.
pub(super) async fn meta_or_init(
    tx: &impl GenericClient,
    init: StoreMeta,
) -> Result<StoreMeta, StoreError> {
    let mut values: [Option<Vec<u8>>; 6] = Default::default();
    for (value, key) in values.iter_mut().zip(META_KEYS) {
        *value = one(tx, "SELECT value FROM meta WHERE key = $1", &[&key], |r| {
            r.bytes(0)
        })
        .await?;
    }
    if let Some(existing) = StoreMeta::from_values(values) {
        return Ok(existing);
    }
    for (k, v) in init.to_pairs() {
        put_meta(tx, k, &v).await?;
    }
    Ok(init)
}

pub(super) async fn put_meta(
    c: &impl GenericClient,
    key: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    exec(
        c,
        "INSERT INTO meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        &[&key, &value],
    )
    .await?;
    Ok(())
}

pub(super) async fn revision(c: &impl GenericClient) -> Result<u64, StoreError> {
    Ok(one(c, "SELECT revision FROM state WHERE id = 1", &[], |r| {
        r.uint(0)
    })
    .await?
    .unwrap_or(0))
}

/// Everything pushed to dataplanes; the caller runs it in one snapshot.
pub(super) async fn config_state(tx: &impl GenericClient) -> Result<ConfigState, StoreError> {
    let (revision, horizon, bundle_revision, revoked_revision) = one(
        tx,
        "SELECT revision, tombstone_horizon, bundle_revision, revoked_revision FROM state WHERE id = 1",
        &[],
        |r| Ok((r.uint(0)?, r.uint(1)?, r.uint(2)?, r.uint(3)?)),
    )
    .await?
    .ok_or_else(|| StoreError::Backend("the state row is missing".into()))?;
    let services = all(
        tx,
        &format!("SELECT {SERVICE_COLS} FROM services ORDER BY name"),
        &[],
        rows::service,
    )
    .await?;
    let routes = all(
        tx,
        &format!("SELECT {ROUTE_COLS} FROM routes ORDER BY host, path_prefix"),
        &[],
        rows::route,
    )
    .await?;
    let dataplanes = all(
        tx,
        &format!("SELECT {DATAPLANE_COLS} FROM dataplanes ORDER BY id"),
        &[],
        rows::dataplane,
    )
    .await?;
    let tombstones = all(
        tx,
        &format!("SELECT {TOMBSTONE_COLS} FROM tombstones ORDER BY revision"),
        &[],
        rows::tombstone,
    )
    .await?
    .into_iter()
    .flatten()
    .collect();
    let ca_roots = all(
        tx,
        &format!("SELECT {CA_ROOT_COLS} FROM ca_roots ORDER BY added_at, sha256"),
        &[],
        rows::ca_root,
    )
    .await?;
    Ok(ConfigState {
        revision,
        services,
        routes,
        dataplanes,
        tombstones,
        tombstone_horizon: horizon,
        ca_roots,
        bundle_revision,
        permissions: super::permissions::list(tx).await?,
        mesh: super::permissions::mesh(tx).await?,
        revoked: super::certificates::revoked(tx).await?,
        revoked_revision,
    })
}
