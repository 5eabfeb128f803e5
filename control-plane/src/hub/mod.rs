//! The config hub: an immutable [`Snapshot`] of everything pushed to dataplanes,
//! rebuilt from the store after each change and published on a `watch` channel.
//!
//! Push is event-driven: a committed change calls [`ConfigHub::notify`], one reloader
//! task reads the store and publishes a new snapshot, and every discovery stream that
//! waits on the channel wakes. Bursts of changes coalesce into one reload (at most one
//! per `RELOAD_INTERVAL`), and a stream that is behind computes one delta from the
//! version its dataplane acknowledged, sent whole or in small parts
//! ([`Snapshot::parts_for`]).

mod build;
mod parts;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use weft_proto::v1::{
    DataplaneKind, Endpoint, MeshSettings, Permission, RevokedCertificate, Route, Service,
};

use crate::store::{Store, Tombstone, TombstoneKind};

pub use parts::UpdateParts;

/// Shortest time between two reloads started by [`ConfigHub::run`].
const RELOAD_INTERVAL: Duration = Duration::from_millis(100);

/// How long [`ConfigHub::published`] waits for the reloader before reloading itself.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// What a dataplane of a given kind receives besides services, endpoints, the trust
/// bundle and the revoked certificates: gateways route, sidecars enforce permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interest {
    routes: bool,
    permissions: bool,
}

fn interest(kind: DataplaneKind) -> Interest {
    Interest {
        routes: kind == DataplaneKind::Gateway,
        permissions: kind == DataplaneKind::Sidecar,
    }
}

impl Interest {
    fn tombstone(self, kind: TombstoneKind) -> bool {
        match kind {
            TombstoneKind::Service | TombstoneKind::Endpoint => true,
            TombstoneKind::Route => self.routes,
            TombstoneKind::Permission => self.permissions,
        }
    }
}

/// One consistent view of the pushed config.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store revision this snapshot reflects; it is the config version.
    pub version: u64,
    pub control_plane_id: String,
    pub trust_domain: String,
    services: BTreeMap<String, Service>,
    routes: BTreeMap<(String, String), Route>,
    /// Endpoint with the revision at which it last changed.
    endpoints: BTreeMap<String, (Endpoint, u64)>,
    tombstones: Vec<Tombstone>,
    horizon: u64,
    bundle_pem: String,
    bundle_revision: u64,
    permissions: BTreeMap<String, Permission>,
    mesh: MeshSettings,
    /// Revoked certificates not yet expired, and the revision of the last revocation.
    revoked: Vec<RevokedCertificate>,
    revoked_serials: HashSet<String>,
    revoked_revision: u64,
    /// Latest version of what every dataplane receives, of routes, of permissions
    /// (with the mesh settings).
    latest_common: u64,
    latest_routes: u64,
    latest_permissions: u64,
}

impl Snapshot {
    /// Whether the certificate with this serial was revoked (and has not expired).
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked_serials.contains(serial)
    }

    /// The newest version that changed something a dataplane of `kind` receives. A
    /// dataplane is in sync when its acknowledged version is at least this.
    pub fn relevant_version(&self, kind: DataplaneKind) -> u64 {
        let interest = interest(kind);
        let mut latest = self.latest_common;
        if interest.routes {
            latest = latest.max(self.latest_routes);
        }
        if interest.permissions {
            latest = latest.max(self.latest_permissions);
        }
        latest
    }

    /// Whether `base` (a version acknowledged by a dataplane holding `cp_id`'s config)
    /// can serve as the base of a delta.
    pub fn can_delta_from(&self, cp_id: &str, base: u64) -> bool {
        base > 0 && cp_id == self.control_plane_id && base >= self.horizon && base <= self.version
    }

    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The revision at which the trust bundle last changed.
    pub fn bundle_revision(&self) -> u64 {
        self.bundle_revision
    }
}

/// The TLS server name that names one endpoint for region ingresses:
/// `<16 hex of sha256(id)>.<service>.weft`, a valid DNS name unique per endpoint.
pub fn endpoint_sni(id: &str, service: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}.{service}.weft")
}

/// Owns the current snapshot and the reloader.
pub struct ConfigHub {
    store: Arc<dyn Store>,
    control_plane_id: String,
    trust_domain: String,
    tx: watch::Sender<Arc<Snapshot>>,
    dirty: Notify,
}

impl ConfigHub {
    /// Loads the first snapshot. Call [`ConfigHub::run`] on a task afterwards.
    pub async fn new(
        store: Arc<dyn Store>,
        control_plane_id: String,
        trust_domain: String,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        let state = store.config_state().await?;
        let snap = Snapshot::from_state(state, &control_plane_id, &trust_domain);
        let (tx, _) = watch::channel(Arc::new(snap));
        Ok(Arc::new(ConfigHub {
            store,
            control_plane_id,
            trust_domain,
            tx,
            dirty: Notify::new(),
        }))
    }

    /// Something changed in the store: reload soon. Cheap and never blocks.
    pub fn notify(&self) {
        self.dirty.notify_one();
    }

    /// Reloads right now and publishes if the revision moved forward. Admin calls use
    /// this so that, when they return, the change is already on its way to every stream.
    pub async fn reload(&self) -> Result<(), crate::store::StoreError> {
        let state = self.store.config_state().await?;
        if state.revision > self.tx.borrow().version {
            let snap = Arc::new(Snapshot::from_state(
                state,
                &self.control_plane_id,
                &self.trust_domain,
            ));
            // Two reloads may run at once (the reloader and an admin call): never let
            // the one that read the store first replace a newer snapshot.
            self.tx.send_if_modified(|current| {
                let newer = snap.version > current.version;
                if newer {
                    *current = snap;
                }
                newer
            });
        }
        Ok(())
    }

    /// Waits until the published snapshot reflects store `revision`, asking the
    /// reloader for it. A new discovery stream uses this to include its own
    /// registration: during a connect storm the registrations of many streams then
    /// share one reload (see [`ConfigHub::run`]) instead of each rebuilding the
    /// snapshot and pushing a delta to every connected stream.
    pub async fn published(&self, revision: u64) -> Result<(), crate::store::StoreError> {
        let mut rx = self.tx.subscribe();
        if rx.borrow().version >= revision {
            return Ok(());
        }
        self.notify();
        let published = tokio::time::timeout(PUBLISH_WAIT, rx.wait_for(|s| s.version >= revision))
            .await
            .is_ok_and(|r| r.is_ok());
        if published {
            Ok(())
        } else {
            // The reloader failed to read the store: try here, and report the error.
            self.reload().await
        }
    }

    /// Reloader loop: waits for [`ConfigHub::notify`]; a burst of notifications while a
    /// reload runs results in exactly one more reload. Reloads start at most every
    /// `RELOAD_INTERVAL` (100 ms): the first change after a quiet spell is published at once,
    /// and during a burst (a fleet reconnecting, each registration a new revision) the
    /// changes of one interval share one snapshot and one push per stream, which keeps
    /// the work of a burst linear rather than quadratic in the number of dataplanes.
    /// Admin changes do not wait for this: they call [`ConfigHub::reload`] directly.
    pub async fn run(self: Arc<Self>) {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            self.dirty.notified().await;
            if let Some(last) = last {
                tokio::time::sleep_until(last + RELOAD_INTERVAL).await;
            }
            last = Some(tokio::time::Instant::now());
            if let Err(e) = self.reload().await {
                tracing::error!(error = %e, "cannot reload config from the store; will retry on the next change");
            }
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }
}
