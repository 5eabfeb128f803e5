//! Certificates the CA issued, and revocation (see the SQLite backend's
//! `certificates.rs`: same rows, same rules).

use deadpool_postgres::GenericClient;
use weft_proto::v1::RevokedCertificate;

use super::state::{add_tombstone, bump};
use super::{all, dataplanes, exec, one};
use crate::store::model::TombstoneKind;
use crate::store::rows::{self, CERTIFICATE_COLS};
use crate::store::rules::{self, CERTIFICATE_RETENTION_SECS};
use crate::store::{CertificateRecord, RevokedDataplane, StoreError};

pub(super) async fn record(
    tx: &impl GenericClient,
    cert: &CertificateRecord,
    now: i64,
) -> Result<(), StoreError> {
    exec(
        tx,
        &format!(
            "INSERT INTO certificates ({CERTIFICATE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (serial) DO NOTHING"
        ),
        &[
            &cert.serial,
            &cert.lineage,
            &cert.token_id,
            &(cert.kind as i64),
            &cert.name,
            &cert.not_after,
            &cert.revoked_at,
        ],
    )
    .await?;
    exec(
        tx,
        "DELETE FROM certificates WHERE not_after < $1",
        &[&now.saturating_sub(CERTIFICATE_RETENTION_SECS)],
    )
    .await?;
    Ok(())
}

pub(super) async fn get(
    c: &impl GenericClient,
    serial: &str,
) -> Result<Option<CertificateRecord>, StoreError> {
    one(
        c,
        &format!("SELECT {CERTIFICATE_COLS} FROM certificates WHERE serial = $1"),
        &[&serial],
        rows::certificate,
    )
    .await
}

/// Every revoked certificate, expired or not.
pub(super) async fn revoked(c: &impl GenericClient) -> Result<Vec<RevokedCertificate>, StoreError> {
    all(
        c,
        "SELECT serial, not_after FROM certificates WHERE revoked_at <> 0 ORDER BY serial COLLATE \"C\"",
        &[],
        |r| {
            Ok(RevokedCertificate {
                serial: r.text(0)?,
                not_after: r.int(1)?,
            })
        },
    )
    .await
}

pub(super) async fn revoke_dataplane(
    tx: &impl GenericClient,
    id: &str,
    now: i64,
) -> Result<RevokedDataplane, StoreError> {
    let record = dataplanes::find(tx, id)
        .await?
        .ok_or_else(|| rules::no_dataplane(id))?;
    let lineage = match get(tx, &record.cert_serial).await? {
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
            self::record(tx, &legacy, now).await?;
            legacy.lineage
        }
        None => String::new(),
    };
    exec(
        tx,
        "UPDATE certificates SET revoked_at = $1 WHERE lineage = $2 AND revoked_at = 0",
        &[&now, &lineage],
    )
    .await?;
    let serials = all(
        tx,
        "SELECT serial FROM certificates WHERE lineage = $1 ORDER BY serial COLLATE \"C\"",
        &[&lineage],
        |r| r.text(0),
    )
    .await?;
    exec(tx, "DELETE FROM dataplanes WHERE id = $1", &[&id]).await?;
    let revision = bump(tx).await?;
    add_tombstone(tx, TombstoneKind::Endpoint, id, revision).await?;
    exec(
        tx,
        "UPDATE state SET revoked_revision = $1 WHERE id = 1",
        &[&(revision as i64)],
    )
    .await?;
    Ok(RevokedDataplane {
        record,
        serials,
        revision,
    })
}
