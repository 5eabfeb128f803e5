//! CA roots: the trust bundle, which root signs, and when each stopped signing. Every
//! change of the bundle bumps the revision as a bundle change (`bump_bundle`).

use deadpool_postgres::GenericClient;

use super::ha::check_fence;
use super::state::bump_bundle;
use super::{all, exec, one};
use crate::store::rows::{self, CA_ROOT_COLS, CA_TIMES_COLS};
use crate::store::rules;
use crate::store::{CaRootRecord, CaRootTimes, Fence, StoreError};

pub(super) async fn add_root(
    tx: &impl GenericClient,
    root: &CaRootRecord,
) -> Result<u64, StoreError> {
    if root.signing {
        exec(tx, "UPDATE ca_roots SET signing = FALSE", &[]).await?;
    }
    exec(
        tx,
        &format!("INSERT INTO ca_roots ({CA_ROOT_COLS}) VALUES ($1, $2, $3, $4, $5)"),
        &[
            &root.sha256,
            &root.cert_pem,
            &root.key_pem,
            &root.signing,
            &root.added_at,
        ],
    )
    .await?;
    bump_bundle(tx).await
}

pub(super) async fn set_signing_root(
    tx: &impl GenericClient,
    sha: &str,
    now: i64,
    fence: &Fence,
) -> Result<u64, StoreError> {
    check_fence(tx, fence).await?;
    let key = one(
        tx,
        "SELECT key_pem FROM ca_roots WHERE sha256 = $1",
        &[&sha],
        |r| r.text(0),
    )
    .await?;
    rules::check_can_sign(sha, key.as_deref())?;
    exec(
        tx,
        "UPDATE ca_roots SET signing_ended_at = $1 WHERE signing AND sha256 <> $2",
        &[&now, &sha],
    )
    .await?;
    exec(
        tx,
        "UPDATE ca_roots SET signing = (sha256 = $1),
             signing_ended_at = CASE WHEN sha256 = $1 THEN 0 ELSE signing_ended_at END",
        &[&sha],
    )
    .await?;
    bump_bundle(tx).await
}

pub(super) async fn set_root_key(
    c: &impl GenericClient,
    sha: &str,
    key_pem: &str,
) -> Result<(), StoreError> {
    exec(
        c,
        "UPDATE ca_roots SET key_pem = $1 WHERE sha256 = $2",
        &[&key_pem, &sha],
    )
    .await?;
    Ok(())
}

pub(super) async fn remove_root(tx: &impl GenericClient, sha: &str) -> Result<u64, StoreError> {
    let signing = one(
        tx,
        "SELECT signing FROM ca_roots WHERE sha256 = $1",
        &[&sha],
        |r| r.flag(0),
    )
    .await?;
    rules::check_removable_root(sha, signing)?;
    exec(tx, "DELETE FROM ca_roots WHERE sha256 = $1", &[&sha]).await?;
    bump_bundle(tx).await
}

pub(super) async fn root_times(c: &impl GenericClient) -> Result<Vec<CaRootTimes>, StoreError> {
    all(
        c,
        &format!("SELECT {CA_TIMES_COLS} FROM ca_roots ORDER BY added_at, sha256"),
        &[],
        rows::ca_times,
    )
    .await
}
