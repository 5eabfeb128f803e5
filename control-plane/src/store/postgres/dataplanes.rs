//! Registered dataplanes: what other dataplanes see of them (address, region, health)
//! bumps the revision; when they were last seen and what they acknowledged does not.

use deadpool_postgres::GenericClient;
use weft_proto::v1::AppProtocol;

use super::state::{add_tombstone, bump, clear_tombstone};
use super::{all, exec, one};
use crate::store::model::TombstoneKind;
use crate::store::rows::{self, DATAPLANE_COLS};
use crate::store::rules::{self, Registration};
use crate::store::{DataplaneRecord, DataplaneRegistration, StoreError};

pub(super) async fn find(
    c: &impl GenericClient,
    id: &str,
) -> Result<Option<DataplaneRecord>, StoreError> {
    one(
        c,
        &format!("SELECT {DATAPLANE_COLS} FROM dataplanes WHERE id = $1"),
        &[&id],
        rows::dataplane,
    )
    .await
}

pub(super) async fn list(c: &impl GenericClient) -> Result<Vec<DataplaneRecord>, StoreError> {
    all(
        c,
        &format!("SELECT {DATAPLANE_COLS} FROM dataplanes ORDER BY id COLLATE \"C\""),
        &[],
        rows::dataplane,
    )
    .await
}

pub(super) async fn register(
    tx: &impl GenericClient,
    reg: DataplaneRegistration,
) -> Result<DataplaneRecord, StoreError> {
    let existing = find(tx, &reg.id).await?;
    rules::check_same_identity(existing.as_ref(), &reg)?;
    match rules::registration(existing, &reg) {
        Registration::Refresh(record) => {
            exec(
                tx,
                "UPDATE dataplanes SET last_seen = $1, cert_expiry = $2, cert_serial = $3 WHERE id = $4",
                &[&reg.now, &reg.cert_expiry, &reg.cert_serial, &reg.id],
            )
            .await?;
            Ok(record)
        }
        Registration::Replace {
            app_protocol,
            acked_version,
        } => {
            let rev = bump(tx).await?;
            exec(
                tx,
                &format!(
                    // Only the same identity gets here (checked above): the row of another
                    // identity is never replaced.
                    "INSERT INTO dataplanes ({DATAPLANE_COLS}) VALUES ($1, $2, $3, $4, $5, TRUE, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (id) DO UPDATE SET
                         region = excluded.region, address = excluded.address, healthy = TRUE,
                         app_protocol = excluded.app_protocol, revision = excluded.revision,
                         last_seen = excluded.last_seen, acked_version = excluded.acked_version,
                         cert_expiry = excluded.cert_expiry, cert_serial = excluded.cert_serial"
                ),
                &[
                    &reg.id,
                    &(reg.kind as i64),
                    &reg.name,
                    &reg.region,
                    &reg.address,
                    &(app_protocol as i64),
                    &(rev as i64),
                    &reg.now,
                    &(acked_version as i64),
                    &reg.cert_expiry,
                    &reg.cert_serial,
                ],
            )
            .await?;
            clear_tombstone(tx, TombstoneKind::Endpoint, &reg.id).await?;
            find(tx, &reg.id)
                .await?
                .ok_or_else(|| StoreError::Backend("dataplane vanished".into()))
        }
    }
}

pub(super) async fn set_health(
    tx: &impl GenericClient,
    id: &str,
    healthy: bool,
    app_protocol: Option<AppProtocol>,
) -> Result<Option<DataplaneRecord>, StoreError> {
    let Some(old) = find(tx, id).await? else {
        return Ok(None);
    };
    if let Some(app) = app_protocol {
        exec(
            tx,
            "UPDATE dataplanes SET app_protocol = $1 WHERE id = $2",
            &[&(app as i64), &id],
        )
        .await?;
    }
    if old.healthy != healthy {
        let rev = bump(tx).await?;
        exec(
            tx,
            "UPDATE dataplanes SET healthy = $1, revision = $2 WHERE id = $3",
            &[&healthy, &(rev as i64), &id],
        )
        .await?;
    }
    find(tx, id).await
}

pub(super) async fn record_seen(
    c: &impl GenericClient,
    id: &str,
    acked_version: u64,
    now: i64,
) -> Result<(), StoreError> {
    exec(
        c,
        "UPDATE dataplanes SET acked_version = $1, last_seen = $2 WHERE id = $3",
        &[&(acked_version as i64), &now, &id],
    )
    .await?;
    Ok(())
}

pub(super) async fn delete(tx: &impl GenericClient, id: &str) -> Result<u64, StoreError> {
    let n = exec(tx, "DELETE FROM dataplanes WHERE id = $1", &[&id]).await?;
    if n == 0 {
        return Err(rules::no_dataplane(id));
    }
    let rev = bump(tx).await?;
    add_tombstone(tx, TombstoneKind::Endpoint, id, rev).await?;
    Ok(rev)
}
