//! Live state of dataplanes: which discovery streams are open, what each was sent and
//! acknowledged, and the health timers that mark an endpoint unhealthy when its stream
//! has been gone past the grace period (and forget it after the expiry).
//!
//! What other dataplanes must see (address, region, health) goes through the store and
//! bumps the config revision; acks are kept here and written back lazily, so a thousand
//! acks after a push cost no thousand fsyncs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;
use weft_proto::v1::{AppProtocol, DataplaneKind};

use crate::hub::ConfigHub;
use crate::store::{DataplaneRecord, Store};

/// In-memory state of one dataplane.
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
    live: DashMap<String, LiveState>,
    generations: AtomicU64,
    store: Arc<dyn Store>,
    hub: Arc<ConfigHub>,
    grace: Duration,
    expiry: Duration,
    /// Bumped whenever a stream connects, acknowledges a newer version or disconnects,
    /// so that CA rotation can wait for acknowledgements without polling.
    changes: watch::Sender<u64>,
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Registry {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<ConfigHub>,
        grace: Duration,
        expiry: Duration,
    ) -> Arc<Self> {
        Arc::new(Registry {
            live: DashMap::new(),
            generations: AtomicU64::new(0),
            store,
            hub,
            grace,
            expiry,
            changes: watch::channel(0).0,
        })
    }

    fn bump_changes(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes on every connect, newer acknowledgement and disconnect.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Of the dataplanes connected now, how many acknowledged `version` or later, and how
    /// many are connected: `(acked, connected)`.
    pub fn acked_count(&self, version: u64) -> (usize, usize) {
        self.live
            .iter()
            .filter(|e| e.connected)
            .fold((0, 0), |(acked, connected), e| {
                (
                    acked + usize::from(e.acked_version >= version),
                    connected + 1,
                )
            })
    }

    /// At start-up no stream is open: every stored dataplane gets the grace period to
    /// reconnect before its endpoint is marked unhealthy.
    pub async fn start(self: &Arc<Self>) -> Result<(), crate::store::StoreError> {
        for dp in self.store.list_dataplanes().await? {
            self.live.insert(
                dp.id.clone(),
                LiveState {
                    acked_version: dp.acked_version,
                    cert_expiry: dp.cert_expiry,
                    app_protocol: dp.app_protocol,
                    ..Default::default()
                },
            );
            self.schedule_health_timers(dp.id.clone(), 0);
        }
        Ok(())
    }

    /// A stream opened; returns its generation.
    pub fn connected(&self, id: &str, cert_expiry: i64) -> u64 {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut e = self.live.entry(id.to_owned()).or_default();
            e.generation = generation;
            e.connected = true;
            e.cert_expiry = cert_expiry;
        }
        self.bump_changes();
        generation
    }

    pub fn sent(&self, id: &str, version: u64) {
        if let Some(mut e) = self.live.get_mut(id) {
            e.sent_version = version;
        }
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
            self.bump_changes();
        }
    }

    pub fn nacked(&self, id: &str, version: u64, error: String) {
        if let Some(mut e) = self.live.get_mut(id) {
            e.nacked_version = version;
            e.nack_error = error;
        }
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

    /// The stream of `generation` ended. Persists the ack and starts the health timers.
    pub async fn disconnected(self: &Arc<Self>, id: &str, generation: u64) {
        let acked = {
            let Some(mut e) = self.live.get_mut(id) else {
                return;
            };
            if e.generation != generation {
                return; // a newer stream took over
            }
            e.connected = false;
            e.acked_version
        };
        self.bump_changes();
        if let Err(e) = self
            .store
            .record_dataplane_seen(id, acked, now_unix())
            .await
        {
            tracing::warn!(dataplane = id, error = %e, "cannot record last ack");
        }
        self.schedule_health_timers(id.to_owned(), generation);
    }

    fn schedule_health_timers(self: &Arc<Self>, id: String, generation: u64) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(this.grace).await;
            if !this.still_gone(&id, generation) {
                return;
            }
            tracing::info!(dataplane = %id, grace = ?this.grace, "stream gone past the grace period: endpoint marked unhealthy");
            match this.store.set_dataplane_health(&id, false, None).await {
                Ok(_) => this.hub.notify(),
                Err(e) => tracing::error!(dataplane = %id, error = %e, "cannot mark unhealthy"),
            }
            tokio::time::sleep(this.expiry.saturating_sub(this.grace)).await;
            if !this.still_gone(&id, generation) {
                return;
            }
            tracing::info!(dataplane = %id, "dataplane gone past the expiry: removed");
            if this.store.delete_dataplane(&id).await.is_ok() {
                this.live.remove(&id);
                this.hub.notify();
            }
        });
    }

    fn still_gone(&self, id: &str, generation: u64) -> bool {
        self.live
            .get(id)
            .is_some_and(|e| !e.connected && e.generation == generation)
    }

    pub fn live(&self, id: &str) -> LiveState {
        self.live.get(id).map(|e| e.clone()).unwrap_or_default()
    }

    /// The proto view of a stored dataplane merged with its live state. The latest
    /// version relevant to it is the caller's to fill in (see the admin API).
    pub fn view(&self, rec: &DataplaneRecord) -> weft_proto::v1::Dataplane {
        let live = self.live(&rec.id);
        weft_proto::v1::Dataplane {
            id: rec.id.clone(),
            kind: rec.kind as i32,
            name: rec.name.clone(),
            region: rec.region.clone(),
            address: rec.address.clone(),
            connected: live.connected,
            healthy: rec.healthy,
            acked_version: live.acked_version.max(rec.acked_version),
            sent_version: live.sent_version,
            latest_version: 0,
            nacked_version: live.nacked_version,
            nack_error: live.nack_error,
            cert_expiry: if live.cert_expiry != 0 {
                live.cert_expiry
            } else {
                rec.cert_expiry
            },
            app_protocol: rec.app_protocol as i32,
            last_seen: rec.last_seen,
        }
    }
}

/// Dataplane ids default to `<segment>/<name>/<address>`.
pub fn default_id(kind: DataplaneKind, name: &str, address: &str) -> String {
    format!("{}/{name}/{address}", kind.segment())
}
