//! Traffic permissions and the mesh default policy (see the SQLite backend's
//! `permissions.rs`: same rows, same rules).

use deadpool_postgres::GenericClient;
use weft_proto::v1::{DefaultPolicy, MeshSettings, Permission};

use super::state::{add_tombstone, bump, clear_tombstone};
use super::{all, exec, one, services};
use crate::store::StoreError;
use crate::store::model::TombstoneKind;
use crate::store::rows::{self, PERMISSION_COLS};
use crate::store::rules;

pub(super) async fn create(
    tx: &impl GenericClient,
    p: Permission,
) -> Result<Permission, StoreError> {
    let mut missing = None;
    for name in rules::permission_services(&p) {
        if !services::exists(tx, name).await? {
            missing = Some(name);
            break;
        }
    }
    let taken_by = one(
        tx,
        "SELECT id, action FROM permissions WHERE source = $1 AND destination = $2 AND port = $3",
        &[&p.source, &p.destination, &i64::from(p.port)],
        |r| Ok((r.text(0)?, i32::try_from(r.int(1)?).unwrap_or(0))),
    )
    .await?;
    rules::check_new_permission(&p, missing, taken_by)?;
    let rev = bump(tx).await?;
    exec(
        tx,
        &format!("INSERT INTO permissions ({PERMISSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
        &[
            &p.id,
            &p.source,
            &p.destination,
            &i64::from(p.port),
            &i64::from(p.action),
            &(rev as i64),
            &p.created_at,
        ],
    )
    .await?;
    clear_tombstone(tx, TombstoneKind::Permission, &p.id).await?;
    Ok(Permission { revision: rev, ..p })
}

pub(super) async fn list(c: &impl GenericClient) -> Result<Vec<Permission>, StoreError> {
    all(
        c,
        &format!("SELECT {PERMISSION_COLS} FROM permissions ORDER BY revision"),
        &[],
        rows::permission,
    )
    .await
}

pub(super) async fn delete(tx: &impl GenericClient, id: &str) -> Result<u64, StoreError> {
    if exec(tx, "DELETE FROM permissions WHERE id = $1", &[&id]).await? == 0 {
        return Err(rules::no_permission(id));
    }
    let rev = bump(tx).await?;
    add_tombstone(tx, TombstoneKind::Permission, id, rev).await?;
    Ok(rev)
}

pub(super) async fn mesh(c: &impl GenericClient) -> Result<MeshSettings, StoreError> {
    one(
        c,
        "SELECT default_policy, mesh_revision FROM state WHERE id = 1",
        &[],
        |r| {
            Ok(MeshSettings {
                default_policy: i32::try_from(r.int(0)?).unwrap_or(0),
                revision: r.uint(1)?,
            })
        },
    )
    .await?
    .ok_or_else(|| StoreError::Backend("the state row is missing".into()))
}

pub(super) async fn set_default_policy(
    tx: &impl GenericClient,
    policy: DefaultPolicy,
) -> Result<MeshSettings, StoreError> {
    let current = mesh(tx).await?;
    if current.default_policy == policy as i32 {
        return Ok(current);
    }
    let rev = bump(tx).await?;
    exec(
        tx,
        "UPDATE state SET default_policy = $1, mesh_revision = $2 WHERE id = 1",
        &[&(policy as i64), &(rev as i64)],
    )
    .await?;
    mesh(tx).await
}
