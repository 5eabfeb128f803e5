//! Replicas, sessions and the leader lease. With SQLite there is one weft-cp, which
//! always gets the lease; the same tables and rules as with PostgreSQL keep one code
//! path for liveness, health marking and CA rotation.

use rusqlite::{Connection, Transaction, params};

use super::dataplanes;
use super::{all, one};
use crate::store::rows::{self, REPLICA_COLS, SESSION_COLS};
use crate::store::rules::{self, REPLICA_FORGET_MS, SweepPolicy};
use crate::store::{
    Fence, LeaseRecord, Liveness, ReplicaRecord, SessionRecord, StoreError, SweepOutcome,
};

/// The store's clock: this process's, as the store is a file of this host.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn heartbeat(tx: &Transaction<'_>, r: &ReplicaRecord) -> Result<(), StoreError> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO replicas (id, address, started_at_ms, heartbeat_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET address = excluded.address, heartbeat_ms = excluded.heartbeat_ms",
        params![r.id, r.address, r.started_at_ms, now],
    )?;
    tx.execute(
        "DELETE FROM replicas WHERE heartbeat_ms < ?1",
        [now - REPLICA_FORGET_MS],
    )?;
    Ok(())
}

pub(super) fn remove_replica(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.execute("DELETE FROM replicas WHERE id = ?1", [id])?;
    Ok(())
}

pub(super) fn liveness(tx: &Transaction<'_>) -> Result<Liveness, StoreError> {
    Ok(Liveness {
        sessions: all(
            tx,
            &format!("SELECT {SESSION_COLS} FROM dataplane_sessions ORDER BY dataplane_id"),
            [],
            rows::session,
        )?,
        replicas: all(
            tx,
            &format!("SELECT {REPLICA_COLS} FROM replicas ORDER BY started_at_ms, id"),
            [],
            rows::replica,
        )?,
        now_ms: now_ms(),
    })
}

pub(super) fn open_session(conn: &Connection, s: &SessionRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO dataplane_sessions ({SESSION_COLS}) VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            s.dataplane_id,
            s.replica_id,
            s.generation as i64,
            now_ms(),
            s.sent_version as i64,
            s.acked_version as i64,
            s.nacked_version as i64,
            s.nack_error,
            s.cert_expiry
        ],
    )?;
    Ok(())
}

pub(super) fn save_sessions(
    tx: &Transaction<'_>,
    sessions: &[SessionRecord],
) -> Result<(), StoreError> {
    for s in sessions {
        tx.execute(
            "UPDATE dataplane_sessions SET sent_version = ?1, acked_version = ?2, nacked_version = ?3, nack_error = ?4
             WHERE dataplane_id = ?5 AND replica_id = ?6 AND generation = ?7",
            params![
                s.sent_version as i64,
                s.acked_version as i64,
                s.nacked_version as i64,
                s.nack_error,
                s.dataplane_id,
                s.replica_id,
                s.generation as i64
            ],
        )?;
    }
    Ok(())
}

pub(super) fn close_session(tx: &Transaction<'_>, s: &SessionRecord) -> Result<(), StoreError> {
    save_sessions(tx, std::slice::from_ref(s))?;
    tx.execute(
        "UPDATE dataplane_sessions SET connected = 0, since_ms = ?1
         WHERE dataplane_id = ?2 AND replica_id = ?3 AND generation = ?4",
        params![now_ms(), s.dataplane_id, s.replica_id, s.generation as i64],
    )?;
    Ok(())
}

pub(super) fn try_lead(
    tx: &Transaction<'_>,
    holder: &str,
    ttl_ms: i64,
) -> Result<Option<(u64, i64)>, StoreError> {
    let now = now_ms();
    let epoch = one(
        tx,
        "UPDATE leader_lease SET holder = ?1, epoch = epoch + 1, expires_ms = ?2
         WHERE id = 1 AND expires_ms < ?3 RETURNING epoch",
        params![holder, now + ttl_ms, now],
        |r| r.uint(0),
    )?;
    Ok(epoch.map(|e| (e, now)))
}

pub(super) fn renew_lead(
    tx: &Transaction<'_>,
    fence: &Fence,
    ttl_ms: i64,
) -> Result<bool, StoreError> {
    let now = now_ms();
    let n = tx.execute(
        "UPDATE leader_lease SET expires_ms = ?1
         WHERE id = 1 AND holder = ?2 AND epoch = ?3 AND expires_ms >= ?4",
        params![now + ttl_ms, fence.holder, fence.epoch as i64, now],
    )?;
    Ok(n == 1)
}

pub(super) fn release_lead(conn: &Connection, fence: &Fence) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE leader_lease SET expires_ms = 0 WHERE id = 1 AND holder = ?1 AND epoch = ?2",
        params![fence.holder, fence.epoch as i64],
    )?;
    Ok(())
}

pub(super) fn lease(conn: &Connection) -> Result<LeaseRecord, StoreError> {
    let now = now_ms();
    Ok(one(
        conn,
        "SELECT holder, epoch, expires_ms FROM leader_lease WHERE id = 1",
        [],
        |r| {
            Ok(LeaseRecord {
                holder: r.text(0)?,
                epoch: r.uint(1)?,
                expires_ms: r.int(2)?,
                now_ms: now,
            })
        },
    )?
    .unwrap_or_default())
}

/// Refuses the transaction's leader write unless `fence` holds now.
pub(super) fn check_fence(tx: &Transaction<'_>, fence: &Fence) -> Result<(), StoreError> {
    let held = one(
        tx,
        "SELECT 1 FROM leader_lease WHERE id = 1 AND holder = ?1 AND epoch = ?2 AND expires_ms >= ?3",
        params![fence.holder, fence.epoch as i64, now_ms()],
        |_| Ok(()),
    )?;
    held.ok_or_else(|| rules::not_leader(fence))
}

pub(super) fn sweep_dataplane(
    tx: &Transaction<'_>,
    fence: &Fence,
    id: &str,
    policy: &SweepPolicy,
) -> Result<SweepOutcome, StoreError> {
    check_fence(tx, fence)?;
    let Some(dp) = dataplanes::find(tx, id)? else {
        return Ok(SweepOutcome::Kept);
    };
    let session = one(
        tx,
        &format!("SELECT {SESSION_COLS} FROM dataplane_sessions WHERE dataplane_id = ?1"),
        [id],
        rows::session,
    )?;
    let replica = match &session {
        Some(s) => one(
            tx,
            &format!("SELECT {REPLICA_COLS} FROM replicas WHERE id = ?1"),
            [&s.replica_id],
            rows::replica,
        )?,
        None => None,
    };
    let now = now_ms();
    let gone = rules::gone_since(&dp, session.as_ref(), replica.as_ref(), now);
    let outcome = rules::sweep(&dp, gone, policy, now);
    match outcome {
        SweepOutcome::Kept => {}
        SweepOutcome::MarkedUnhealthy => {
            dataplanes::set_health(tx, id, false, None)?;
        }
        SweepOutcome::Removed => {
            dataplanes::delete(tx, id)?;
            tx.execute(
                "DELETE FROM dataplane_sessions WHERE dataplane_id = ?1",
                [id],
            )?;
        }
    }
    Ok(outcome)
}
