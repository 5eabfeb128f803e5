//! The snapshot's updates: full and delta, by kind of dataplane, and in parts.

use super::*;
use crate::store::{CaRootRecord, ConfigState, DataplaneRecord};
use prost::Message as _;
use weft_proto::v1::ConfigUpdate;
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
            prefer_region: "us".into(),
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
            cert_serial: String::new(),
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
        permissions: vec![Permission {
            id: "perm-1".into(),
            source: "b".into(),
            destination: "a".into(),
            action: weft_proto::v1::PermissionAction::Allow as i32,
            revision: 7,
            ..Default::default()
        }],
        mesh: MeshSettings {
            default_policy: weft_proto::v1::DefaultPolicy::Deny as i32,
            revision: 4,
        },
        revoked: vec![
            RevokedCertificate {
                serial: "aa".into(),
                not_after: i64::MAX,
            },
            RevokedCertificate {
                serial: "expired".into(),
                not_after: 1,
            },
        ],
        revoked_revision: 3,
    }
}

#[test]
fn sidecars_get_permissions_and_everyone_the_revoked_certificates() {
    let snap = Snapshot::from_state(state(), "cp", "weft.local");
    let full = snap.update_for(DataplaneKind::Sidecar, None).unwrap();
    assert_eq!(full.permissions.len(), 1);
    assert_eq!(full.mesh.unwrap().revision, 4);
    let revoked = |u: &ConfigUpdate| {
        u.revoked.as_ref().map(|r| {
            r.certificates
                .iter()
                .map(|c| c.serial.clone())
                .collect::<Vec<_>>()
        })
    };
    // Expired certificates are left out: the chain check refuses them anyway.
    assert_eq!(revoked(&full), Some(vec!["aa".to_owned()]));
    assert!(snap.is_revoked("aa") && !snap.is_revoked("expired"));
    for kind in [DataplaneKind::Gateway, DataplaneKind::Ingress] {
        let full = snap.update_for(kind, None).unwrap();
        assert!(
            full.permissions.is_empty() && full.mesh.is_none(),
            "{kind:?}"
        );
        assert_eq!(revoked(&full), Some(vec!["aa".to_owned()]));
    }
    // Deltas carry the settings and the list only when they changed.
    let delta = snap.update_for(DataplaneKind::Sidecar, Some(5)).unwrap();
    assert_eq!(delta.permissions.len(), 1);
    assert!(delta.mesh.is_none() && delta.revoked.is_none());
    // A permission change is no change for gateways and ingresses.
    let mut st = state();
    st.revision = 11;
    st.permissions[0].revision = 11;
    let snap = Snapshot::from_state(st, "cp", "weft.local");
    assert_eq!(snap.relevant_version(DataplaneKind::Sidecar), 11);
    assert_eq!(snap.relevant_version(DataplaneKind::Ingress), 9);
    assert!(snap.update_for(DataplaneKind::Ingress, Some(9)).is_none());
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
    assert_eq!(
        gw.routes[0].prefer_region, "us",
        "the preference reaches gateways"
    );

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

/// A bigger state: many services and endpoints, routes, and tombstones of each kind.
fn big_state() -> ConfigState {
    let mut st = state();
    st.revision = 500;
    st.services = (0..60)
        .map(|i| Service {
            name: format!("svc-{i:03}"),
            protocol: Protocol::Http as i32,
            revision: 10 + i,
            ..Default::default()
        })
        .collect();
    st.routes = (0..40)
        .map(|i| Route {
            host: format!("h{i}.example.com"),
            path_prefix: "/".into(),
            service: "svc-001".into(),
            rewrite_host: String::new(),
            revision: 100 + i,
            prefer_region: String::new(),
        })
        .collect();
    st.dataplanes = (0..300)
        .map(|i| DataplaneRecord {
            id: format!(
                "service/svc-{:03}/10.0.{}.{}:15008",
                i % 60,
                i / 250,
                i % 250
            ),
            kind: DataplaneKind::Sidecar,
            name: format!("svc-{:03}", i % 60),
            region: "eu".into(),
            address: format!("10.0.{}.{}:15008", i / 250, i % 250),
            healthy: i % 7 != 0,
            app_protocol: AppProtocol::Unknown,
            revision: 150 + i,
            last_seen: 0,
            acked_version: 0,
            cert_expiry: 0,
            cert_serial: String::new(),
        })
        .collect();
    st.tombstones = (0..90)
        .map(|i| Tombstone {
            kind: [
                TombstoneKind::Service,
                TombstoneKind::Endpoint,
                TombstoneKind::Route,
            ][i % 3],
            key: if i % 3 == 2 {
                format!("gone{i}.example.com\n/api")
            } else {
                format!("gone-{i}")
            },
            revision: 400 + i as u64,
        })
        .collect();
    st.permissions = (0..30)
        .map(|i| Permission {
            id: format!("perm-{i:02}"),
            source: format!("svc-{i:03}"),
            destination: "svc-001".into(),
            action: weft_proto::v1::PermissionAction::Allow as i32,
            revision: 200 + i,
            ..Default::default()
        })
        .collect();
    st.tombstones.extend((0..5).map(|i| Tombstone {
        kind: TombstoneKind::Permission,
        key: format!("perm-gone-{i}"),
        revision: 491 + i,
    }));
    st.tombstone_horizon = 5;
    st.ca_roots[0].cert_pem = "-----BEGIN CERTIFICATE-----\n".repeat(40);
    st.bundle_revision = 450;
    st
}

/// Joins parts the way a dataplane does.
fn join(parts: &[ConfigUpdate]) -> ConfigUpdate {
    let mut whole = parts[0].clone();
    for p in &parts[1..] {
        assert_eq!(
            (p.version, p.base_version, p.full, &p.control_plane_id),
            (
                whole.version,
                whole.base_version,
                whole.full,
                &whole.control_plane_id
            ),
            "every part carries the same header"
        );
        assert!(p.trust_domain.is_empty() && p.trust_bundle_pem.is_empty());
        whole.services.extend(p.services.iter().cloned());
        whole
            .removed_services
            .extend(p.removed_services.iter().cloned());
        whole.endpoints.extend(p.endpoints.iter().cloned());
        whole
            .removed_endpoints
            .extend(p.removed_endpoints.iter().cloned());
        whole.routes.extend(p.routes.iter().cloned());
        whole
            .removed_routes
            .extend(p.removed_routes.iter().cloned());
        assert!(p.mesh.is_none() && p.revoked.is_none(), "first part only");
        whole.permissions.extend(p.permissions.iter().cloned());
        whole
            .removed_permissions
            .extend(p.removed_permissions.iter().cloned());
    }
    whole.more = false;
    whole
}

fn items(p: &ConfigUpdate) -> usize {
    p.services.len()
        + p.removed_services.len()
        + p.endpoints.len()
        + p.removed_endpoints.len()
        + p.routes.len()
        + p.removed_routes.len()
        + p.permissions.len()
        + p.removed_permissions.len()
}

#[test]
fn parts_add_up_to_the_update() {
    let snap = Arc::new(Snapshot::from_state(big_state(), "cp", "weft.local"));
    for kind in [DataplaneKind::Sidecar, DataplaneKind::Gateway] {
        for base in [None, Some(2), Some(120), Some(300), Some(420), Some(480)] {
            let whole = snap.update_for(kind, base).unwrap();
            assert!(!whole.more);
            for limit in [1, 300, 1000, 4000, usize::MAX] {
                let mut it = snap.parts_for(kind, base, limit).unwrap();
                assert!(!it.started());
                assert_eq!(it.version(), 500);
                let parts: Vec<ConfigUpdate> = it.by_ref().collect();
                assert!(it.started() && it.next().is_none());
                let (last, rest) = parts.split_last().unwrap();
                assert!(
                    rest.iter().all(|p| p.more) && !last.more,
                    "{kind:?} {base:?} {limit}"
                );
                for p in &parts {
                    assert!(
                        p.encoded_len() <= limit || items(p) <= 1,
                        "part of {} bytes over {limit}",
                        p.encoded_len()
                    );
                }
                assert_eq!(join(&parts), whole, "{kind:?} {base:?} {limit}");
                if limit == usize::MAX {
                    assert_eq!(parts.len(), 1);
                }
                if limit == 4000 && base.is_none() {
                    assert!(parts.len() > 5, "a full config is split");
                }
            }
        }
    }
    // Nothing to send is still nothing.
    assert!(
        snap.parts_for(DataplaneKind::Sidecar, Some(500), 4000)
            .is_none()
    );
    let full = snap.update_for(DataplaneKind::Gateway, None).unwrap();
    assert_eq!(
        (full.services.len(), full.endpoints.len(), full.routes.len()),
        (60, 300, 40)
    );
    let delta = snap.update_for(DataplaneKind::Gateway, Some(420)).unwrap();
    assert_eq!(
        (
            delta.removed_services.len(),
            delta.removed_endpoints.len(),
            delta.removed_routes.len()
        ),
        (23, 23, 23)
    );
    assert_eq!(delta.removed_routes[0].path_prefix, "/api");
    assert!(!delta.trust_bundle_pem.is_empty());
    assert!(delta.permissions.is_empty() && delta.removed_permissions.is_empty());
    let sidecar = snap.update_for(DataplaneKind::Sidecar, None).unwrap();
    assert_eq!((sidecar.permissions.len(), sidecar.routes.len()), (30, 0));
    let delta = snap.update_for(DataplaneKind::Sidecar, Some(420)).unwrap();
    assert_eq!(
        (delta.removed_permissions.len(), delta.removed_routes.len()),
        (5, 0)
    );
}
