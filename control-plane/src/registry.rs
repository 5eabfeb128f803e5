//! Live state of dataplanes: which discovery streams are open, what each was sent and
//! acknowledged.
//!
//! Every replica keeps the streams it holds in memory and writes them to the store as
//! *sessions*: one row per dataplane, opened when its stream opens, closed when it
//! ends, with the versions sent and acknowledged written back lazily (at most every
//! [`FLUSH_DELAY`], many at once, so a thousand acks after a push cost no thousand
//! writes). That lets any replica answer `dataplane list` for the whole fleet, and lets
//! the leader (see `leader.rs`) mark dataplanes whose streams are gone unhealthy and
//! count acknowledgements for CA rotation, wherever the streams are.
//!
//! What other dataplanes must see (address, region, health) goes through the store and
//! bumps the config revision.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use tokio::sync::{Notify, watch};
use weft_proto::v1::{AppProtocol, DataplaneKind};

use crate::hub::ConfigHub;
use crate::store::rules::session_live;
use crate::store::{DataplaneRecord, Liveness, SessionRecord, Store, StoreError};

/// How long acknowledgements wait to be written together.
pub const FLUSH_DELAY: Duration = Duration::from_millis(100);

/// In-memory state of one stream held by this replica.
#[derive(Clone, Debug, Default)]
pub struct LiveState {
    /// Incremented by each new stream; an older stream's end must not mark a newer one gone.
    pub generation: u64,
    pub connected: bool,
    pub sent_version: u64,
    pub acked_version: u64,
    pub nacked_version: u64,
    pub nack_error: String,
    pub cert_expiry: i64,
    pub app_protocol: AppProtocol,
}

pub struct Registry {
    replica_id: String,
    live: DashMap<String, LiveState>,
    generations: AtomicU64,
    store: Arc<dyn Store>,
    hub: Arc<ConfigHub>,
    /// Streams whose versions changed since the last flush.
    dirty: DashSet<String>,
    flush: Notify,
    /// Bumped whenever a local stream connects, acknowledges a newer version or
    /// disconnects, so that CA rotation wakes without waiting for its next poll.
    changes: watch::Sender<u64>,
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Registry {
    pub fn new(replica_id: String, store: Arc<dyn Store>, hub: Arc<ConfigHub>) -> Arc<Self> {
        let registry = Arc::new(Registry {
            replica_id,
            live: DashMap::new(),
            generations: AtomicU64::new(0),
            store,
            hub,
            dirty: DashSet::new(),
            flush: Notify::new(),
            changes: watch::channel(0).0,
        });
        tokio::spawn(registry.clone().flush_loop());
        registry
    }

    fn bump_changes(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes on every connect, newer acknowledgement and disconnect of a local stream.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn session(&self, id: &str, e: &LiveState) -> SessionRecord {
        SessionRecord {
            dataplane_id: id.to_owned(),
            replica_id: self.replica_id.clone(),
            generation: e.generation,
            connected: e.connected,
            since_ms: 0,
            sent_version: e.sent_version,
            acked_version: e.acked_version,
            nacked_version: e.nacked_version,
            nack_error: e.nack_error.clone(),
            cert_expiry: e.cert_expiry,
        }
    }

    /// Writes the versions of the streams that changed, [`FLUSH_DELAY`] after the first.
    async fn flush_loop(self: Arc<Self>) {
        loop {
            self.flush.notified().await;
            tokio::time::sleep(FLUSH_DELAY).await;
            let ids: Vec<String> = self.dirty.iter().map(|id| id.clone()).collect();
            let sessions: Vec<SessionRecord> = ids
                .iter()
                .filter_map(|id| {
                    self.dirty.remove(id);
                    self.live.get(id).map(|e| self.session(id, &e))
                })
                .collect();
            if sessions.is_empty() {
                continue;
            }
            if let Err(e) = self.store.save_sessions(sessions).await {
                tracing::warn!(error = %e, "cannot record acknowledgements; retrying");
                for id in ids {
                    self.dirty.insert(id);
                }
                self.flush.notify_one();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn mark_dirty(&self, id: &str) {
        self.dirty.insert(id.to_owned());
        self.flush.notify_one();
    }

    /// Across every replica: of the dataplanes connected now, how many acknowledged
    /// `version` or later, and how many are connected: `(acked, connected)`.
    pub async fn acked_count(&self, version: u64) -> Result<(usize, usize), StoreError> {
        let liveness = self.store.liveness().await?;
        Ok(
            live_sessions(&liveness).fold((0, 0), |(acked, connected), s| {
                (
                    acked + usize::from(s.acked_version >= version),
                    connected + 1,
                )
            }),
        )
    }

    /// Dataplanes whose stream this replica holds now.
    pub fn connected_here(&self) -> usize {
        self.live.iter().filter(|e| e.connected).count()
    }

    /// A stream opened; records its session and returns its generation.
    pub async fn connected(
        &self,
        id: &str,
        cert_expiry: i64,
        acked_version: u64,
    ) -> Result<u64, StoreError> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let session = {
            let mut e = self.live.entry(id.to_owned()).or_default();
            *e = LiveState {
                generation,
                connected: true,
                cert_expiry,
                acked_version,
                app_protocol: e.app_protocol,
                ..Default::default()
            };
            self.session(id, &e)
        };
        self.store.open_session(&session).await?;
        self.bump_changes();
        Ok(generation)
    }

    pub fn sent(&self, id: &str, version: u64) {
        if let Some(mut e) = self.live.get_mut(id) {
            e.sent_version = version;
        }
        self.mark_dirty(id);
    }

    pub fn acked(&self, id: &str, version: u64) {
        let newer = match self.live.get_mut(id) {
            Some(mut e) if version > e.acked_version => {
                e.acked_version = version;
                true
            }
            _ => false,
        };
        if newer {
            self.mark_dirty(id);
            self.bump_changes();
        }
    }

    pub fn nacked(&self, id: &str, version: u64, error: String) {
        if let Some(mut e) = self.live.get_mut(id) {
            e.nacked_version = version;
            e.nack_error = error;
        }
        self.mark_dirty(id);
    }

    /// Records what the sidecar's probe found; an app that is down makes the endpoint
    /// unhealthy, one that answers again makes it healthy.
    pub async fn app_status(&self, id: &str, app: AppProtocol) {
        if let Some(mut e) = self.live.get_mut(id) {
            e.app_protocol = app;
        }
        let healthy = app != AppProtocol::Down;
        match self
            .store
            .set_dataplane_health(id, healthy, Some(app))
            .await
        {
            Ok(_) => self.hub.notify(),
            Err(e) => tracing::error!(dataplane = id, error = %e, "cannot record app status"),
        }
    }

    /// The stream of `generation` ended: its session is closed (the leader starts
    /// counting the grace period from now) and the last ack kept with the dataplane.
    pub async fn disconnected(&self, id: &str, generation: u64) {
        let session = {
            let Some(mut e) = self.live.get_mut(id) else {
                return;
            };
            if e.generation != generation {
                return; // a newer stream took over
            }
            e.connected = false;
            self.session(id, &e)
        };
        self.live.remove_if(id, |_, e| e.generation == generation);
        self.bump_changes();
        if let Err(e) = self.store.close_session(&session).await {
            tracing::warn!(dataplane = id, error = %e, "cannot record the end of the stream");
        }
        if let Err(e) = self
            .store
            .record_dataplane_seen(id, session.acked_version, now_unix())
            .await
        {
            tracing::warn!(dataplane = id, error = %e, "cannot record last ack");
        }
    }

    /// The proto view of a stored dataplane merged with its session (from whichever
    /// replica holds it; this replica's own streams from memory, which is fresher). The
    /// latest version relevant to it is the caller's to fill in (see the admin API).
    pub fn view(&self, rec: &DataplaneRecord, liveness: &Liveness) -> weft_proto::v1::Dataplane {
        let stored = liveness
            .sessions
            .iter()
            .find(|s| s.dataplane_id == rec.id)
            .map(|s| {
                let replica = liveness.replicas.iter().find(|r| r.id == s.replica_id);
                (s.clone(), session_live(s, replica, liveness.now_ms))
            });
        let local = self
            .live
            .get(&rec.id)
            .filter(|e| e.connected)
            .map(|e| (self.session(&rec.id, &e), true));
        let (session, connected) = local.or(stored).unwrap_or_default();
        weft_proto::v1::Dataplane {
            id: rec.id.clone(),
            kind: rec.kind as i32,
            name: rec.name.clone(),
            region: rec.region.clone(),
            address: rec.address.clone(),
            connected,
            healthy: rec.healthy,
            acked_version: session.acked_version.max(rec.acked_version),
            sent_version: session.sent_version,
            latest_version: 0,
            nacked_version: session.nacked_version,
            nack_error: session.nack_error,
            cert_expiry: if session.cert_expiry != 0 {
                session.cert_expiry
            } else {
                rec.cert_expiry
            },
            app_protocol: rec.app_protocol as i32,
            last_seen: rec.last_seen,
        }
    }
}

/// The sessions that are live streams now.
pub fn live_sessions(liveness: &Liveness) -> impl Iterator<Item = &SessionRecord> {
    liveness.sessions.iter().filter(|s| {
        let replica = liveness.replicas.iter().find(|r| r.id == s.replica_id);
        session_live(s, replica, liveness.now_ms)
    })
}

/// Dataplane ids default to `<segment>/<name>/<address>`.
pub fn default_id(kind: DataplaneKind, name: &str, address: &str) -> String {
    format!("{}/{name}/{address}", kind.segment())
}

/// How often the leader looks for dataplanes whose streams are gone.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A leader duty, once: marks unhealthy the dataplanes gone past the grace period and
/// removes those gone past the expiry. Candidates are found from one read of every
/// session; each is then decided again inside its own fenced transaction, so a
/// dataplane that reconnected meanwhile is left alone.
pub async fn sweep(
    store: &dyn Store,
    hub: &ConfigHub,
    fence: &crate::store::Fence,
    policy: crate::store::SweepPolicy,
) -> Result<(), StoreError> {
    use crate::store::SweepOutcome;
    use crate::store::rules;
    let liveness = store.liveness().await?;
    let dataplanes = store.list_dataplanes().await?;
    let mut changed = false;
    for dp in &dataplanes {
        let session = liveness.sessions.iter().find(|s| s.dataplane_id == dp.id);
        let replica = session.and_then(|s| liveness.replicas.iter().find(|r| r.id == s.replica_id));
        let gone = rules::gone_since(dp, session, replica, liveness.now_ms);
        if rules::sweep(dp, gone, &policy, liveness.now_ms) == SweepOutcome::Kept {
            continue;
        }
        match store.sweep_dataplane(fence, &dp.id, policy).await? {
            SweepOutcome::Kept => {}
            SweepOutcome::MarkedUnhealthy => {
                tracing::info!(dataplane = %dp.id, grace_ms = policy.grace_ms, "stream gone past the grace period: endpoint marked unhealthy");
                changed = true;
            }
            SweepOutcome::Removed => {
                tracing::info!(dataplane = %dp.id, "dataplane gone past the expiry: removed");
                changed = true;
            }
        }
    }
    if changed {
        hub.notify();
    }
    Ok(())
}
