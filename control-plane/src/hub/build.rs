//! Building a [`Snapshot`] from one consistent read of the store.

use std::collections::BTreeMap;

use weft_proto::v1::{DataplaneKind, Endpoint, RevokedCertificate};

use super::{Snapshot, endpoint_sni};
use crate::store::{ConfigState, TombstoneKind};

impl Snapshot {
    /// Builds the snapshot from one consistent store read.
    pub fn from_state(state: ConfigState, control_plane_id: &str, trust_domain: &str) -> Self {
        let endpoints = endpoints(&state, trust_domain);
        let Latest {
            common: latest_common,
            routes: latest_routes,
            permissions: latest_permissions,
        } = Latest::of(&state, &endpoints);
        let bundle_pem = state
            .ca_roots
            .iter()
            .map(|r| r.cert_pem.trim_end().to_owned() + "\n")
            .collect::<String>();
        let now = crate::registry::now_unix();
        let revoked: Vec<RevokedCertificate> = state
            .revoked
            .into_iter()
            .filter(|r| r.not_after > now)
            .collect();
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
            permissions: state
                .permissions
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect(),
            mesh: state.mesh,
            revoked_serials: revoked.iter().map(|r| r.serial.clone()).collect(),
            revoked,
            revoked_revision: state.revoked_revision,
            latest_common,
            latest_routes,
            latest_permissions,
        }
    }
}

/// Every sidecar's endpoint, keyed by dataplane id, with the revision at which it last
/// changed. The healthy ingress of each region (lowest id wins) is part of its
/// endpoints' records, so an endpoint changes when its region's ingress does.
fn endpoints(state: &ConfigState, trust_domain: &str) -> BTreeMap<String, (Endpoint, u64)> {
    let mut ingresses: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    for d in state
        .dataplanes
        .iter()
        .filter(|d| d.kind == DataplaneKind::Ingress && d.healthy)
    {
        ingresses
            .entry(d.region.as_str())
            .or_insert((d.address.as_str(), d.revision));
    }
    state
        .dataplanes
        .iter()
        .filter(|d| d.kind == DataplaneKind::Sidecar)
        .map(|d| {
            let (ingress_address, ingress_rev) = ingresses
                .get(d.region.as_str())
                .map(|(a, r)| ((*a).to_owned(), *r))
                .unwrap_or_default();
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
                        ingress_address,
                        sni: endpoint_sni(&d.id, &d.name),
                    },
                    d.revision.max(ingress_rev),
                ),
            )
        })
        .collect()
}

/// The newest revision of what every dataplane receives, of routes (gateways) and of
/// permissions with the mesh settings (sidecars): a dataplane is in sync once it acked
/// the newest that concerns it.
struct Latest {
    common: u64,
    routes: u64,
    permissions: u64,
}

impl Latest {
    fn of(state: &ConfigState, endpoints: &BTreeMap<String, (Endpoint, u64)>) -> Latest {
        let mut latest_common = state
            .bundle_revision
            .max(state.revoked_revision)
            .max(state.services.iter().map(|s| s.revision).max().unwrap_or(0))
            .max(endpoints.values().map(|(_, r)| *r).max().unwrap_or(0));
        let mut latest_routes = state.routes.iter().map(|r| r.revision).max().unwrap_or(0);
        let mut latest_permissions = state.mesh.revision.max(
            state
                .permissions
                .iter()
                .map(|p| p.revision)
                .max()
                .unwrap_or(0),
        );
        for t in &state.tombstones {
            let latest = match t.kind {
                TombstoneKind::Service | TombstoneKind::Endpoint => &mut latest_common,
                TombstoneKind::Route => &mut latest_routes,
                TombstoneKind::Permission => &mut latest_permissions,
            };
            *latest = (*latest).max(t.revision);
        }
        Latest {
            common: latest_common,
            routes: latest_routes,
            permissions: latest_permissions,
        }
    }
}
