//! One leader among the replicas, for the duties that must run once: marking dataplanes
//! whose streams are gone unhealthy (and forgetting them after the expiry), and CA
//! rotation's switch.
//!
//! The leader holds a lease row in the store with an *epoch*, incremented by every
//! takeover. Its duties' writes carry the epoch as a fencing token, checked in the same
//! transaction ([`Fence`]), so a leader that lost the lease without knowing it cannot
//! write over its successor. On top of that, a leader stops leading on its own before
//! anyone else can start: the lease is renewed every [`RENEW_EVERY`] with a lifetime of
//! [`LEASE_TTL`] on the store's clock, and the leader keeps leading only until
//! [`LEASE_TTL`] − [`MARGIN`] after the moment it *sent* the last renewal that
//! succeeded (a monotonic clock). The store expires the lease no earlier than
//! [`LEASE_TTL`] after it *received* that renewal, which is later; the margin covers
//! clock-rate differences. A leader cut off from the store therefore stops its duties
//! at least [`MARGIN`] before another replica may take over.
//!
//! Other replicas try to take the lease every [`ACQUIRE_EVERY`]; after a leader dies,
//! one takes over within [`LEASE_TTL`] + [`ACQUIRE_EVERY`] (2.25 s). A leader that
//! stops cleanly releases the lease, so the next takes over within [`ACQUIRE_EVERY`].
//!
//! Every replica also writes a heartbeat every [`HEARTBEAT_EVERY`]: the sessions of a
//! replica without a heartbeat for `REPLICA_TIMEOUT_MS` count as gone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::{Fence, ReplicaRecord, Store, StoreError};

/// Lifetime of the lease from each renewal, on the store's clock.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How often the leader renews.
pub const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How much earlier than the lease's end (as the leader sees it) the leader stops.
pub const MARGIN: Duration = Duration::from_millis(500);
/// How often a replica that does not lead tries to take the lease.
pub const ACQUIRE_EVERY: Duration = Duration::from_millis(250);
/// How often every replica records that it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// This replica's current leadership, if it leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub epoch: u64,
    /// When the lease was taken (store clock, ms).
    pub since_ms: i64,
}

/// Runs the lease for one replica and publishes whether it leads.
pub struct Leader {
    replica: ReplicaRecord,
    store: Arc<dyn Store>,
    state: watch::Sender<Option<Leadership>>,
}

/// Starts the duties of a new leadership; the task is aborted when leadership ends.
pub type Duties = Box<dyn Fn(Fence, i64) -> JoinHandle<()> + Send + Sync>;

fn ttl_ms() -> i64 {
    LEASE_TTL.as_millis() as i64
}

impl Leader {
    pub fn new(replica: ReplicaRecord, store: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Leader {
            replica,
            store,
            state: watch::channel(None).0,
        })
    }

    pub fn replica(&self) -> &ReplicaRecord {
        &self.replica
    }

    /// Whether (and how) this replica leads now.
    pub fn current(&self) -> Option<Leadership> {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Leadership>> {
        self.state.subscribe()
    }

    fn fence(&self, epoch: u64) -> Fence {
        Fence {
            holder: self.replica.id.clone(),
            epoch,
        }
    }

    /// Writes this replica's heartbeat for as long as the process runs.
    pub async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match self.store.heartbeat(&self.replica).await {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot record this replica's heartbeat; retrying");
                }
                Err(_) => {}
            }
        }
    }

    /// Takes, keeps and gives up the lease for as long as the process runs, starting
    /// `duties` while leading. A duties task that panics ends the process (exit 70):
    /// a replica that stays up without its duties would hold the lease and do nothing.
    pub async fn run(self: Arc<Self>, duties: Duties) {
        loop {
            // The first deadline counts from before the acquiring call was sent.
            let sent = Instant::now();
            let Some((epoch, since_ms)) = self.acquire().await else {
                tokio::time::sleep(ACQUIRE_EVERY).await;
                continue;
            };
            let deadline = sent + LEASE_TTL - MARGIN;
            tracing::info!(replica = %self.replica.id, epoch, "this replica leads now");
            self.state
                .send_replace(Some(Leadership { epoch, since_ms }));
            let fence = self.fence(epoch);
            let mut task = duties(fence.clone(), since_ms);
            let why = self.keep(&fence, deadline, &mut task).await;
            task.abort();
            self.state.send_replace(None);
            tracing::warn!(replica = %self.replica.id, epoch, reason = why, "this replica stopped leading");
        }
    }

    async fn acquire(&self) -> Option<(u64, i64)> {
        match self.store.try_lead(&self.replica.id, ttl_ms()).await {
            Ok(taken) => taken,
            Err(e) => {
                tracing::debug!(error = %e, "cannot try the leader lease");
                None
            }
        }
    }

    /// Renews until the lease is lost, the store cannot be reached in time, or the
    /// duties end; returns why leadership ended.
    async fn keep(
        &self,
        fence: &Fence,
        mut deadline: Instant,
        task: &mut JoinHandle<()>,
    ) -> &'static str {
        let mut next = Instant::now() + RENEW_EVERY;
        loop {
            tokio::select! {
                done = &mut *task => {
                    match done {
                        Err(e) if e.is_panic() => {
                            tracing::error!(error = %e, "a leader duty panicked; exiting so that another replica takes over");
                            std::process::exit(70);
                        }
                        _ => return "its duties ended",
                    }
                }
                () = tokio::time::sleep_until(next.min(deadline)) => {}
            }
            if Instant::now() >= deadline {
                return "the lease could not be renewed in time";
            }
            let sent = Instant::now();
            next = sent + RENEW_EVERY;
            let renewed = tokio::time::timeout_at(deadline, self.store.renew_lead(fence, ttl_ms()));
            match renewed.await {
                Ok(Ok(true)) => deadline = sent + LEASE_TTL - MARGIN,
                Ok(Ok(false)) => return "another replica holds the lease",
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease; retrying until it runs out")
                }
                Err(_) => return "the lease could not be renewed in time",
            }
        }
    }

    /// Clean shutdown: gives the lease up (if held) and leaves the replica list.
    pub async fn shutdown(&self) {
        if let Some(l) = self.current() {
            if let Err(e) = self.store.release_lead(&self.fence(l.epoch)).await {
                tracing::warn!(error = %e, "cannot release the leader lease; it expires on its own");
            }
        }
        let _ = self.store.remove_replica(&self.replica.id).await;
    }
}

/// Runs `step` every `every` while this leadership lasts; a refused fence (another
/// replica leads) ends the loop quietly, other errors are logged and retried.
pub async fn every<F, Fut>(every: Duration, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match step().await {
            Ok(()) => {}
            Err(StoreError::NotLeader(m)) => {
                tracing::info!(reason = %m, "leader duty stopped");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "leader duty failed; retrying"),
        }
    }
}
