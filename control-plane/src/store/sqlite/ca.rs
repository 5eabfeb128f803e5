//! CA roots: the trust bundle, which root signs, and when each stopped signing. Every
//! change of the bundle bumps the revision as a bundle change (`bump_bundle`).

use rusqlite::{Connection, Transaction, params};

use super::ha::check_fence;
use super::state::bump_bundle;
use super::{all, one};
use crate::store::rows::{self, CA_ROOT_COLS, CA_TIMES_COLS};
use crate::store::rules;
use crate::store::{CaRootRecord, CaRootTimes, Fence, StoreError};

pub(super) fn add_root(tx: &Transaction<'_>, root: &CaRootRecord) -> Result<u64, StoreError> {
    if root.signing {
        tx.execute("UPDATE ca_roots SET signing = 0", [])?;
    }
    tx.execute(
        &format!("INSERT INTO ca_roots ({CA_ROOT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
        params![
            root.sha256,
            root.cert_pem,
            root.key_pem,
            root.signing as i64,
            root.added_at
        ],
    )?;
    bump_bundle(tx)
}

pub(super) fn set_signing_root(
    tx: &Transaction<'_>,
    sha: &str,
    now: i64,
    fence: &Fence,
) -> Result<u64, StoreError> {
    check_fence(tx, fence)?;
    let key: Option<String> = one(
        tx,
        "SELECT key_pem FROM ca_roots WHERE sha256 = ?1",
        [sha],
        |r| r.text(0),
    )?;
    rules::check_can_sign(sha, key.as_deref())?;
    tx.execute(
        "UPDATE ca_roots SET signing_ended_at = ?1 WHERE signing = 1 AND sha256 <> ?2",
        params![now, sha],
    )?;
    tx.execute(
        "UPDATE ca_roots SET signing = (sha256 = ?1),
             signing_ended_at = CASE WHEN sha256 = ?1 THEN 0 ELSE signing_ended_at END",
        [sha],
    )?;
    bump_bundle(tx)
}

pub(super) fn set_root_key(
    tx: &Transaction<'_>,
    sha: &str,
    key_pem: &str,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE ca_roots SET key_pem = ?1 WHERE sha256 = ?2",
        params![key_pem, sha],
    )?;
    Ok(())
}

pub(super) fn remove_root(tx: &Transaction<'_>, sha: &str) -> Result<u64, StoreError> {
    let signing: Option<bool> = one(
        tx,
        "SELECT signing FROM ca_roots WHERE sha256 = ?1",
        [sha],
        |r| r.flag(0),
    )?;
    rules::check_removable_root(sha, signing)?;
    tx.execute("DELETE FROM ca_roots WHERE sha256 = ?1", [sha])?;
    bump_bundle(tx)
}

pub(super) fn root_times(conn: &Connection) -> Result<Vec<CaRootTimes>, StoreError> {
    all(
        conn,
        &format!("SELECT {CA_TIMES_COLS} FROM ca_roots ORDER BY added_at, sha256"),
        [],
        rows::ca_times,
    )
}
