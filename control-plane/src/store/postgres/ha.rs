//! Replicas, sessions and the leader lease on PostgreSQL. Every time is the database's
//! clock (`NOW_MS`), so replicas on hosts whose clocks differ still agree on who is
//! alive and when a lease expires.

use deadpool_postgres::GenericClient;

use super::dataplanes;
use super::{all, exec, one};
use crate::store::rows::{self, REPLICA_COLS, SESSION_COLS};
use crate::store::rules::{self, REPLICA_FORGET_MS, SweepPolicy};
use crate::store::{
    Fence, LeaseRecord, Liveness, ReplicaRecord, SessionRecord, StoreError, SweepOutcome,
};

/// The database's clock in milliseconds since the epoch (not the transaction's start).
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

pub(super) async fn heartbeat(c: &impl GenericClient, r: &ReplicaRecord) -> Result<(), StoreError> {
    exec(
        c,
        &format!(
            "INSERT INTO replicas (id, address, started_at_ms, heartbeat_ms) VALUES ($1, $2, $3, {NOW_MS})
             ON CONFLICT (id) DO UPDATE SET address = excluded.address, heartbeat_ms = excluded.heartbeat_ms"
        ),
        &[&r.id, &r.address, &r.started_at_ms],
    )
    .await?;
    exec(
        c,
        &format!("DELETE FROM replicas WHERE heartbeat_ms < {NOW_MS} - $1"),
        &[&REPLICA_FORGET_MS],
    )
    .await?;
    Ok(())
}

pub(super) async fn remove_replica(c: &impl GenericClient, id: &str) -> Result<(), StoreError> {
    exec(c, "DELETE FROM replicas WHERE id = $1", &[&id]).await?;
    Ok(())
}

pub(super) async fn now_ms(c: &impl GenericClient) -> Result<i64, StoreError> {
    Ok(one(c, &format!("SELECT {NOW_MS}"), &[], |r| r.int(0))
        .await?
        .unwrap_or(0))
}

pub(super) async fn liveness(c: &impl GenericClient) -> Result<Liveness, StoreError> {
    Ok(Liveness {
        sessions: all(
            c,
            &format!(
                "SELECT {SESSION_COLS} FROM dataplane_sessions ORDER BY dataplane_id COLLATE \"C\""
            ),
            &[],
            rows::session,
        )
        .await?,
        replicas: all(
            c,
            &format!("SELECT {REPLICA_COLS} FROM replicas ORDER BY started_at_ms, id"),
            &[],
            rows::replica,
        )
        .await?,
        now_ms: now_ms(c).await?,
    })
}

pub(super) async fn open_session(
    c: &impl GenericClient,
    s: &SessionRecord,
) -> Result<(), StoreError> {
    exec(
        c,
        &format!(
            "INSERT INTO dataplane_sessions ({SESSION_COLS}) VALUES ($1, $2, $3, TRUE, {NOW_MS}, $4, $5, $6, $7, $8)
             ON CONFLICT (dataplane_id) DO UPDATE SET replica_id = excluded.replica_id,
                 generation = excluded.generation, connected = TRUE, since_ms = excluded.since_ms,
                 sent_version = excluded.sent_version, acked_version = excluded.acked_version,
                 nacked_version = excluded.nacked_version, nack_error = excluded.nack_error,
                 cert_expiry = excluded.cert_expiry"
        ),
        &[
            &s.dataplane_id,
            &s.replica_id,
            &(s.generation as i64),
            &(s.sent_version as i64),
            &(s.acked_version as i64),
            &(s.nacked_version as i64),
            &s.nack_error,
            &s.cert_expiry,
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn save_sessions(
    c: &impl GenericClient,
    sessions: &[SessionRecord],
) -> Result<(), StoreError> {
    for s in sessions {
        exec(
            c,
            "UPDATE dataplane_sessions SET sent_version = $1, acked_version = $2, nacked_version = $3, nack_error = $4
             WHERE dataplane_id = $5 AND replica_id = $6 AND generation = $7",
            &[
                &(s.sent_version as i64),
                &(s.acked_version as i64),
                &(s.nacked_version as i64),
                &s.nack_error,
                &s.dataplane_id,
                &s.replica_id,
                &(s.generation as i64),
            ],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn close_session(
    c: &impl GenericClient,
    s: &SessionRecord,
) -> Result<(), StoreError> {
    save_sessions(c, std::slice::from_ref(s)).await?;
    exec(
        c,
        &format!(
            "UPDATE dataplane_sessions SET connected = FALSE, since_ms = {NOW_MS}
             WHERE dataplane_id = $1 AND replica_id = $2 AND generation = $3"
        ),
        &[&s.dataplane_id, &s.replica_id, &(s.generation as i64)],
    )
    .await?;
    Ok(())
}

pub(super) async fn try_lead(
    c: &impl GenericClient,
    holder: &str,
    ttl_ms: i64,
) -> Result<Option<(u64, i64)>, StoreError> {
    one(
        c,
        &format!(
            "UPDATE leader_lease SET holder = $1, epoch = epoch + 1, expires_ms = {NOW_MS} + $2
             WHERE id = 1 AND expires_ms < {NOW_MS} RETURNING epoch, {NOW_MS}"
        ),
        &[&holder, &ttl_ms],
        |r| Ok((r.uint(0)?, r.int(1)?)),
    )
    .await
}

pub(super) async fn renew_lead(
    c: &impl GenericClient,
    fence: &Fence,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    let n = exec(
        c,
        &format!(
            "UPDATE leader_lease SET expires_ms = {NOW_MS} + $1
             WHERE id = 1 AND holder = $2 AND epoch = $3 AND expires_ms >= {NOW_MS}"
        ),
        &[&ttl_ms, &fence.holder, &(fence.epoch as i64)],
    )
    .await?;
    Ok(n == 1)
}

pub(super) async fn release_lead(c: &impl GenericClient, fence: &Fence) -> Result<(), StoreError> {
    exec(
        c,
        "UPDATE leader_lease SET expires_ms = 0 WHERE id = 1 AND holder = $1 AND epoch = $2",
        &[&fence.holder, &(fence.epoch as i64)],
    )
    .await?;
    Ok(())
}

pub(super) async fn lease(c: &impl GenericClient) -> Result<LeaseRecord, StoreError> {
    Ok(one(
        c,
        &format!("SELECT holder, epoch, expires_ms, {NOW_MS} FROM leader_lease WHERE id = 1"),
        &[],
        |r| {
            Ok(LeaseRecord {
                holder: r.text(0)?,
                epoch: r.uint(1)?,
                expires_ms: r.int(2)?,
                now_ms: r.int(3)?,
            })
        },
    )
    .await?
    .unwrap_or_default())
}

/// Refuses the transaction's leader write unless `fence` holds now. The lease row is
/// share-locked until commit: a takeover (which updates it) waits for this write, so
/// the write is ordered before the new leader's, never after.
pub(super) async fn check_fence(c: &impl GenericClient, fence: &Fence) -> Result<(), StoreError> {
    let held = one(
        c,
        &format!(
            "SELECT 1 FROM leader_lease WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_ms >= {NOW_MS} FOR SHARE"
        ),
        &[&fence.holder, &(fence.epoch as i64)],
        |_| Ok(()),
    )
    .await?;
    held.ok_or_else(|| rules::not_leader(fence))
}

pub(super) async fn sweep_dataplane(
    tx: &impl GenericClient,
    fence: &Fence,
    id: &str,
    policy: &SweepPolicy,
) -> Result<SweepOutcome, StoreError> {
    check_fence(tx, fence).await?;
    let Some(dp) = dataplanes::find(tx, id).await? else {
        return Ok(SweepOutcome::Kept);
    };
    let session = one(
        tx,
        &format!("SELECT {SESSION_COLS} FROM dataplane_sessions WHERE dataplane_id = $1"),
        &[&id],
        rows::session,
    )
    .await?;
    let replica = match &session {
        Some(s) => {
            one(
                tx,
                &format!("SELECT {REPLICA_COLS} FROM replicas WHERE id = $1"),
                &[&s.replica_id],
                rows::replica,
            )
            .await?
        }
        None => None,
    };
    let now = now_ms(tx).await?;
    let gone = rules::gone_since(&dp, session.as_ref(), replica.as_ref(), now);
    let outcome = rules::sweep(&dp, gone, policy, now);
    match outcome {
        SweepOutcome::Kept => {}
        SweepOutcome::MarkedUnhealthy => {
            dataplanes::set_health(tx, id, false, None).await?;
        }
        SweepOutcome::Removed => {
            dataplanes::delete(tx, id).await?;
            exec(
                tx,
                "DELETE FROM dataplane_sessions WHERE dataplane_id = $1",
                &[&id],
            )
            .await?;
        }
    }
    Ok(outcome)
}
