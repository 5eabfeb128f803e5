//! Certificates the CA issued, and revocation. A renewal continues the lineage of the
//! certificate it was requested with; revoking a dataplane revokes its whole lineage,
//! pushed to every dataplane as a list of serials (with the revision in `state`).

use rusqlite::{Connection, Transaction, params};
use weft_proto::v1::RevokedCertificate;

use super::state::{add_tombstone, bump};
use super::{all, dataplanes, one};
use crate::store::model::TombstoneKind;
use crate::store::rows::{self, CERTIFICATE_COLS};
use crate::store::rules::{self, CERTIFICATE_RETENTION_SECS};
use crate::store::{CertificateRecord, RevokedDataplane, StoreError};

pub(super) fn record(
    tx: &Transaction<'_>,
    cert: &CertificateRecord,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "INSERT INTO certificates ({CERTIFICATE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (serial) DO NOTHING"
        ),
        params![
            cert.serial,
            cert.lineage,
            cert.token_id,
            cert.kind as i32,
            cert.name,
            cert.not_after,
            cert.revoked_at
        ],
    )?;
    tx.execute(
        "DELETE FROM certificates WHERE not_after < ?1",
        [now.saturating_sub(CERTIFICATE_RETENTION_SECS)],
    )?;
    Ok(())
}

pub(super) fn get(
    conn: &Connection,
    serial: &str,
) -> Result<Option<CertificateRecord>, StoreError> {
    one(
        conn,
        &format!("SELECT {CERTIFICATE_COLS} FROM certificates WHERE serial = ?1"),
        [serial],
        rows::certificate,
    )
}

/// Every revoked certificate, expired or not.
pub(super) fn revoked(conn: &Connection) -> Result<Vec<RevokedCertificate>, StoreError> {
    all(
        conn,
        "SELECT serial, not_after FROM certificates WHERE revoked_at <> 0 ORDER BY serial",
        [],
        |r| {
            Ok(RevokedCertificate {
                serial: r.text(0)?,
                not_after: r.int(1)?,
            })
        },
    )
}

pub(super) fn revoke_dataplane(
    tx: &Transaction<'_>,
    id: &str,
    now: i64,
) -> Result<RevokedDataplane, StoreError> {
    let record = dataplanes::find(tx, id)?.ok_or_else(|| rules::no_dataplane(id))?;
    // A dataplane that never presented a recorded certificate (registered before
    // certificates were recorded) still has its current one revoked.
    let lineage = match get(tx, &record.cert_serial)? {
        Some(cert) => cert.lineage,
        None if !record.cert_serial.is_empty() => {
            let legacy = CertificateRecord {
                serial: record.cert_serial.clone(),
                lineage: record.cert_serial.clone(),
                token_id: String::new(),
                kind: record.kind,
                name: record.name.clone(),
                not_after: record.cert_expiry,
                revoked_at: 0,
            };
            self::record(tx, &legacy, now)?;
            legacy.lineage
        }
        None => String::new(),
    };
    tx.execute(
        "UPDATE certificates SET revoked_at = ?1 WHERE lineage = ?2 AND revoked_at = 0",
        params![now, lineage],
    )?;
    let serials = all(
        tx,
        "SELECT serial FROM certificates WHERE lineage = ?1 ORDER BY serial",
        [&lineage],
        |r| r.text(0),
    )?;
    tx.execute("DELETE FROM dataplanes WHERE id = ?1", [id])?;
    let revision = bump(tx)?;
    add_tombstone(tx, TombstoneKind::Endpoint, id, revision)?;
    tx.execute(
        "UPDATE state SET revoked_revision = ?1 WHERE id = 1",
        [revision as i64],
    )?;
    Ok(RevokedDataplane {
        record,
        serials,
        revision,
    })
}
