//! The config hub: an immutable [`Snapshot`] of everything pushed to dataplanes,
//! rebuilt from the store after each change and published on a `watch` channel.
//!
//! Push is event-driven: a committed change calls [`ConfigHub::notify`], one reloader
//! task reads the store and publishes a new snapshot, and every discovery stream that
//! waits on the channel wakes. Bursts of changes coalesce into one reload, and a stream
//! that is behind computes one delta from the version its dataplane acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{Notify, watch};
use weft_proto::v1::{ConfigUpdate, DataplaneKind, Endpoint, Route, RouteKey, Service};

use crate::store::{ConfigState, Store, Tombstone, TombstoneKind};

/// What a dataplane of a given kind receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interest {
    routes: bool,
}

fn interest(kind: DataplaneKind) -> Interest {
    Interest {
        routes: kind == DataplaneKind::Gateway,
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
    /// Latest version relevant to sidecars/ingresses (no routes) and to gateways.
    latest_without_routes: u64,
    latest_with_routes: u64,
}

impl Snapshot {
    /// Builds the snapshot from one consistent store read.
    pub fn from_state(state: ConfigState, control_plane_id: &str, trust_domain: &str) -> Self {
        let endpoints: BTreeMap<String, (Endpoint, u64)> = state
            .dataplanes
            .iter()
            .filter(|d| d.kind == DataplaneKind::Sidecar)
            .map(|d| {
                (
                    d.id.clone(),
                    (
                        Endpoint {
                            id: d.id.clone(),
                            service: d.name.clone(),
                            address: d.address.clone(),
                            region: d.region.clone(),
                            healthy: d.healthy,
                            identity: format!("spiffe://{trust_domain}/service/{}", d.name),
                        },
                        d.revision,
                    ),
                )
            })
            .collect();
        let bundle_pem = state
            .ca_roots
            .iter()
            .map(|r| r.cert_pem.trim_end().to_owned() + "\n")
            .collect::<String>();
        let mut latest_without_routes = state.bundle_revision;
        latest_without_routes = latest_without_routes
            .max(state.services.iter().map(|s| s.revision).max().unwrap_or(0))
            .max(endpoints.values().map(|(_, r)| *r).max().unwrap_or(0));
        let mut latest_with_routes =
            latest_without_routes.max(state.routes.iter().map(|r| r.revision).max().unwrap_or(0));
        for t in &state.tombstones {
            if t.kind != TombstoneKind::Route {
                latest_without_routes = latest_without_routes.max(t.revision);
            }
            latest_with_routes = latest_with_routes.max(t.revision);
        }
        Snapshot {
            version: state.revision,
            control_plane_id: control_plane_id.to_owned(),
            trust_domain: trust_domain.to_owned(),
            services: state
                .services
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            routes: state
                .routes
                .into_iter()
                .map(|r| ((r.host.clone(), r.path_prefix.clone()), r))
                .collect(),
            endpoints,
            tombstones: state.tombstones,
            horizon: state.tombstone_horizon,
            bundle_pem,
            bundle_revision: state.bundle_revision,
            latest_without_routes,
            latest_with_routes,
        }
    }

    /// The newest version that changed something a dataplane of `kind` receives. A
    /// dataplane is in sync when its acknowledged version is at least this.
    pub fn relevant_version(&self, kind: DataplaneKind) -> u64 {
        if interest(kind).routes {
            self.latest_with_routes
        } else {
            self.latest_without_routes
        }
    }

    /// Whether `base` (a version acknowledged by a dataplane holding `cp_id`'s config)
    /// can serve as the base of a delta.
    pub fn can_delta_from(&self, cp_id: &str, base: u64) -> bool {
        base > 0 && cp_id == self.control_plane_id && base >= self.horizon && base <= self.version
    }

    /// The update that brings a dataplane of `kind` from `base` to this snapshot, or
    /// `None` when nothing it receives changed. `base = None` asks for a full config.
    pub fn update_for(&self, kind: DataplaneKind, base: Option<u64>) -> Option<ConfigUpdate> {
        let want = interest(kind);
        let mut update = ConfigUpdate {
            version: self.version,
            control_plane_id: self.control_plane_id.clone(),
            trust_domain: self.trust_domain.clone(),
            ..Default::default()
        };
        let base = match base {
            Some(b) if b >= self.horizon && b <= self.version => b,
            _ => {
                update.full = true;
                update.services = self.services.values().cloned().collect();
                update.endpoints = self.endpoints.values().map(|(e, _)| e.clone()).collect();
                if want.routes {
                    update.routes = self.routes.values().cloned().collect();
                }
                update.trust_bundle_pem = self.bundle_pem.clone();
                return Some(update);
            }
        };
        if self.relevant_version(kind) <= base {
            return None;
        }
        update.base_version = base;
        update.services = self
            .services
            .values()
            .filter(|s| s.revision > base)
            .cloned()
            .collect();
        update.endpoints = self
            .endpoints
            .values()
            .filter(|(_, rev)| *rev > base)
            .map(|(e, _)| e.clone())
            .collect();
        if want.routes {
            update.routes = self
                .routes
                .values()
                .filter(|r| r.revision > base)
                .cloned()
                .collect();
        }
        let first = self.tombstones.partition_point(|t| t.revision <= base);
        for t in &self.tombstones[first..] {
            match t.kind {
                TombstoneKind::Service => update.removed_services.push(t.key.clone()),
                TombstoneKind::Endpoint => update.removed_endpoints.push(t.key.clone()),
                TombstoneKind::Route if want.routes => {
                    let (host, prefix) = t.key.split_once('\n').unwrap_or((&t.key, "/"));
                    update.removed_routes.push(RouteKey {
                        host: host.to_owned(),
                        path_prefix: prefix.to_owned(),
                    });
                }
                TombstoneKind::Route => {}
            }
        }
        if self.bundle_revision > base {
            update.trust_bundle_pem = self.bundle_pem.clone();
        }
        Some(update)
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }
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

    /// Reloads right now and publishes if the revision moved. Admin calls use this so
    /// that, when they return, the change is already on its way to every stream.
    pub async fn reload(&self) -> Result<(), crate::store::StoreError> {
        let state = self.store.config_state().await?;
        if state.revision != self.tx.borrow().version {
            let snap = Snapshot::from_state(state, &self.control_plane_id, &self.trust_domain);
            self.tx.send_replace(Arc::new(snap));
        }
        Ok(())
    }

    /// Reloader loop: waits for [`ConfigHub::notify`]; a burst of notifications while a
    /// reload runs results in exactly one more reload.
    pub async fn run(self: Arc<Self>) {
        loop {
            self.dirty.notified().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CaRootRecord, DataplaneRecord};
    use weft_proto::v1::{AppProtocol, Protocol};

    fn state() -> ConfigState {
        ConfigState {
            revision: 10,
            services: vec![
                Service {
                    name: "a".into(),
                    protocol: Protocol::Http as i32,
                    revision: 2,
                    ..Default::default()
                },
                Service {
                    name: "b".into(),
                    protocol: Protocol::Grpc as i32,
                    revision: 8,
                    ..Default::default()
                },
            ],
            routes: vec![Route {
                host: "x.example.com".into(),
                path_prefix: "/".into(),
                service: "a".into(),
                rewrite_host: String::new(),
                revision: 10,
            }],
            dataplanes: vec![DataplaneRecord {
                id: "service/a/1.2.3.4:15008".into(),
                kind: DataplaneKind::Sidecar,
                name: "a".into(),
                region: "eu".into(),
                address: "1.2.3.4:15008".into(),
                healthy: true,
                app_protocol: AppProtocol::Unknown,
                revision: 5,
                last_seen: 0,
                acked_version: 0,
                cert_expiry: 0,
            }],
            tombstones: vec![Tombstone {
                kind: TombstoneKind::Service,
                key: "gone".into(),
                revision: 9,
            }],
            tombstone_horizon: 3,
            ca_roots: vec![CaRootRecord {
                sha256: "x".into(),
                cert_pem: "PEM".into(),
                key_pem: String::new(),
                signing: true,
                added_at: 0,
            }],
            bundle_revision: 1,
        }
    }

    #[test]
    fn full_and_delta() {
        let snap = Snapshot::from_state(state(), "cp", "weft.local");
        let full = snap.update_for(DataplaneKind::Sidecar, None).unwrap();
        assert!(full.full && full.services.len() == 2 && full.endpoints.len() == 1);
        assert!(full.routes.is_empty(), "sidecars get no routes");
        assert_eq!(full.trust_bundle_pem, "PEM\n");
        assert_eq!(full.endpoints[0].identity, "spiffe://weft.local/service/a");

        let delta = snap.update_for(DataplaneKind::Sidecar, Some(6)).unwrap();
        assert!(!delta.full);
        assert_eq!(delta.base_version, 6);
        assert_eq!(
            delta
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert!(delta.endpoints.is_empty());
        assert_eq!(delta.removed_services, ["gone"]);
        assert!(delta.trust_bundle_pem.is_empty());

        // The route change at 10 does not concern sidecars: they are in sync at 9.
        assert_eq!(snap.relevant_version(DataplaneKind::Sidecar), 9);
        assert!(snap.update_for(DataplaneKind::Sidecar, Some(9)).is_none());
        let gw = snap.update_for(DataplaneKind::Gateway, Some(9)).unwrap();
        assert_eq!(gw.routes.len(), 1);

        // Below the tombstone horizon, or from the future, only a full update is safe.
        assert!(
            snap.update_for(DataplaneKind::Sidecar, Some(2))
                .unwrap()
                .full
        );
        assert!(
            snap.update_for(DataplaneKind::Sidecar, Some(11))
                .unwrap()
                .full
        );
        assert!(!snap.can_delta_from("other-cp", 6));
        assert!(snap.can_delta_from("cp", 6));
    }
}
