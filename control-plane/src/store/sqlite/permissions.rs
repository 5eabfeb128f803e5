//! Traffic permissions and the mesh default policy. Permissions are pushed like
//! routes: a row per rule stamped with the revision that created it, a tombstone when
//! deleted. The default policy lives in the `state` row with its own revision.

use rusqlite::{Connection, Transaction, params};
use weft_proto::v1::{DefaultPolicy, MeshSettings, Permission};

use super::state::{add_tombstone, bump, clear_tombstone};
use super::{all, one, services};
use crate::store::StoreError;
use crate::store::model::TombstoneKind;
use crate::store::rows::{self, PERMISSION_COLS};
use crate::store::rules;

pub(super) fn create(tx: &Transaction<'_>, p: Permission) -> Result<Permission, StoreError> {
    let mut missing = None;
    for name in rules::permission_services(&p) {
        if !services::exists(tx, name)? {
            missing = Some(name);
            break;
        }
    }
    let taken_by = one(
        tx,
        "SELECT id, action FROM permissions WHERE source = ?1 AND destination = ?2 AND port = ?3",
        params![p.source, p.destination, p.port as i64],
        |r| Ok((r.text(0)?, i32::try_from(r.int(1)?).unwrap_or(0))),
    )?;
    rules::check_new_permission(&p, missing, taken_by)?;
    let rev = bump(tx)?;
    tx.execute(
        &format!("INSERT INTO permissions ({PERMISSION_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
        params![
            p.id,
            p.source,
            p.destination,
            p.port as i64,
            p.action,
            rev as i64,
            p.created_at
        ],
    )?;
    clear_tombstone(tx, TombstoneKind::Permission, &p.id)?;
    Ok(Permission { revision: rev, ..p })
}

pub(super) fn list(conn: &Connection) -> Result<Vec<Permission>, StoreError> {
    all(
        conn,
        &format!("SELECT {PERMISSION_COLS} FROM permissions ORDER BY revision"),
        [],
        rows::permission,
    )
}

pub(super) fn delete(tx: &Transaction<'_>, id: &str) -> Result<u64, StoreError> {
    if tx.execute("DELETE FROM permissions WHERE id = ?1", [id])? == 0 {
        return Err(rules::no_permission(id));
    }
    let rev = bump(tx)?;
    add_tombstone(tx, TombstoneKind::Permission, id, rev)?;
    Ok(rev)
}

pub(super) fn mesh(conn: &Connection) -> Result<MeshSettings, StoreError> {
    one(
        conn,
        "SELECT default_policy, mesh_revision FROM state WHERE id = 1",
        [],
        |r| {
            Ok(MeshSettings {
                default_policy: i32::try_from(r.int(0)?).unwrap_or(0),
                revision: r.uint(1)?,
            })
        },
    )?
    .ok_or_else(|| StoreError::Backend("the state row is missing".into()))
}

pub(super) fn set_default_policy(
    tx: &Transaction<'_>,
    policy: DefaultPolicy,
) -> Result<MeshSettings, StoreError> {
    let current = mesh(tx)?;
    if current.default_policy == policy as i32 {
        return Ok(current);
    }
    let rev = bump(tx)?;
    tx.execute(
        "UPDATE state SET default_policy = ?1, mesh_revision = ?2 WHERE id = 1",
        params![policy as i32, rev as i64],
    )?;
    mesh(tx)
}
