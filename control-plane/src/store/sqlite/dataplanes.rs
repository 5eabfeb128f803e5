//! Registered dataplanes: what other dataplanes see of them (address, region, health)
//! bumps the revision; when they were last seen and what they acknowledged does not.

use rusqlite::{Connection, Transaction, params};
use weft_proto::v1::AppProtocol;

use super::state::{add_tombstone, bump, clear_tombstone};
use super::{all, one};
use crate::store::model::TombstoneKind;
use crate::store::rows::{self, DATAPLANE_COLS};
use crate::store::rules::{self, Registration};
use crate::store::{DataplaneRecord, DataplaneRegistration, StoreError};

pub(super) fn find(conn: &Connection, id: &str) -> Result<Option<DataplaneRecord>, StoreError> {
    one(
        conn,
        &format!("SELECT {DATAPLANE_COLS} FROM dataplanes WHERE id = ?1"),
        [id],
        rows::dataplane,
    )
}

pub(super) fn list(conn: &Connection) -> Result<Vec<DataplaneRecord>, StoreError> {
    all(
        conn,
        &format!("SELECT {DATAPLANE_COLS} FROM dataplanes ORDER BY id"),
        [],
        rows::dataplane,
    )
}

pub(super) fn register(
    tx: &Transaction<'_>,
    reg: DataplaneRegistration,
) -> Result<DataplaneRecord, StoreError> {
    let existing = find(tx, &reg.id)?;
    rules::check_same_identity(existing.as_ref(), &reg)?;
    match rules::registration(existing, &reg) {
        Registration::Refresh(record) => {
            tx.execute(
                "UPDATE dataplanes SET last_seen = ?1, cert_expiry = ?2, cert_serial = ?3 WHERE id = ?4",
                params![reg.now, reg.cert_expiry, reg.cert_serial, reg.id],
            )?;
            Ok(record)
        }
        Registration::Replace {
            app_protocol,
            acked_version,
        } => {
            let rev = bump(tx)?;
            tx.execute(
                &format!(
                    // Only the same identity gets here (checked above): the row of another
                    // identity is never replaced.
                    "INSERT INTO dataplanes ({DATAPLANE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?8, ?9, ?10, ?11)
                     ON CONFLICT (id) DO UPDATE SET region = excluded.region, address = excluded.address,
                         healthy = 1, app_protocol = excluded.app_protocol, revision = excluded.revision,
                         last_seen = excluded.last_seen, acked_version = excluded.acked_version,
                         cert_expiry = excluded.cert_expiry, cert_serial = excluded.cert_serial"
                ),
                params![
                    reg.id,
                    reg.kind as i32,
                    reg.name,
                    reg.region,
                    reg.address,
                    app_protocol as i32,
                    rev as i64,
                    reg.now,
                    acked_version as i64,
                    reg.cert_expiry,
                    reg.cert_serial
                ],
            )?;
            clear_tombstone(tx, TombstoneKind::Endpoint, &reg.id)?;
            find(tx, &reg.id)?.ok_or_else(|| StoreError::Backend("dataplane vanished".into()))
        }
    }
}

pub(super) fn set_health(
    tx: &Transaction<'_>,
    id: &str,
    healthy: bool,
    app_protocol: Option<AppProtocol>,
) -> Result<Option<DataplaneRecord>, StoreError> {
    let Some(old) = find(tx, id)? else {
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
    find(tx, id)
}

pub(super) fn record_seen(
    conn: &Connection,
    id: &str,
    acked_version: u64,
    now: i64,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE dataplanes SET acked_version = ?1, last_seen = ?2 WHERE id = ?3",
        params![acked_version as i64, now, id],
    )?;
    Ok(())
}

pub(super) fn delete(tx: &Transaction<'_>, id: &str) -> Result<u64, StoreError> {
    let n = tx.execute("DELETE FROM dataplanes WHERE id = ?1", [id])?;
    if n == 0 {
        return Err(rules::no_dataplane(id));
    }
    let rev = bump(tx)?;
    add_tombstone(tx, TombstoneKind::Endpoint, id, rev)?;
    Ok(rev)
}
