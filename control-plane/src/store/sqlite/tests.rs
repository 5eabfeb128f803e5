//! The SQLite backend's own behaviour: migrations of older stores, durability across
//! reopening, CA roots, permissions and revocation on one file. The contract both
//! backends share (revisions, tombstones, refusals that write nothing, the lease) is
//! tested once for both, in the tests crate (`store_backends.rs`).

use rusqlite::Connection;
use weft_proto::v1::{DataplaneKind, Protocol, Route};

use super::schema::SCHEMA_V1;
use super::*;
use crate::store::{Fence, Tombstone, TombstoneKind};

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("weft.db")).unwrap();
    (dir, s)
}

#[tokio::test]
async fn a_route_keeps_its_region_preference() {
    let (_d, s) = store();
    s.create_service("web", Protocol::Http, 0, 1).await.unwrap();
    let route = |prefer_region: &str| Route {
        host: "api.example.com".into(),
        path_prefix: "/".into(),
        service: "web".into(),
        prefer_region: prefer_region.into(),
        ..Default::default()
    };
    let first = s.create_route(route("us")).await.unwrap();
    assert_eq!(first.prefer_region, "us");
    assert_eq!(s.list_routes().await.unwrap(), std::slice::from_ref(&first));
    // Re-created with another preference: a new revision, so gateways get it.
    s.delete_route("api.example.com", "/").await.unwrap();
    let second = s.create_route(route("eu")).await.unwrap();
    assert!(second.revision > first.revision);
    let st = s.config_state().await.unwrap();
    assert_eq!(st.routes, [second]);
    assert!(st.tombstones.is_empty(), "re-creating clears the tombstone");
}

fn root(sha: &str, signing: bool, added_at: i64) -> CaRootRecord {
    CaRootRecord {
        sha256: sha.into(),
        cert_pem: format!("PEM {sha}"),
        key_pem: format!("KEY {sha}"),
        signing,
        added_at,
    }
}

#[tokio::test]
async fn switching_the_signing_root_records_when_the_old_one_stopped() {
    let (_d, s) = store();
    s.add_ca_root(root("old", true, 1)).await.unwrap();
    let added = s.add_ca_root(root("new", false, 2)).await.unwrap();
    assert_eq!(s.config_state().await.unwrap().bundle_revision, added);
    let times = |v: &[CaRootTimes]| {
        v.iter()
            .map(|t| (t.sha256.clone(), t.signing_ended_at))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        times(&s.ca_root_times().await.unwrap()),
        [("old".into(), 0), ("new".into(), 0)]
    );
    let (epoch, _) = s.try_lead("me", 60_000).await.unwrap().unwrap();
    let fence = Fence {
        holder: "me".into(),
        epoch,
    };
    let switched = s.set_signing_root("new", 500, &fence).await.unwrap();
    let st = s.config_state().await.unwrap();
    assert!(switched > added && st.bundle_revision == switched);
    assert_eq!(
        st.ca_roots
            .iter()
            .map(|r| (r.sha256.as_str(), r.signing))
            .collect::<Vec<_>>(),
        [("old", false), ("new", true)]
    );
    assert_eq!(
        times(&s.ca_root_times().await.unwrap()),
        [("old".into(), 500), ("new".into(), 0)]
    );
    assert!(matches!(
        s.remove_ca_root("new").await,
        Err(StoreError::FailedPrecondition(_))
    ));
    s.remove_ca_root("old").await.unwrap();
    assert_eq!(s.config_state().await.unwrap().ca_roots.len(), 1);
}

#[tokio::test]
async fn a_version_1_store_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V1).unwrap();
        conn.execute(
            "INSERT INTO ca_roots (sha256, cert_pem, key_pem, signing, added_at) VALUES ('r', 'P', 'K', 1, 1)",
            [],
        )
        .unwrap();
        conn.execute_batch(
            "INSERT INTO services (name, protocol, port, revision, created_at) VALUES ('web', 2, NULL, 1, 1);
             INSERT INTO routes (host, path_prefix, service, rewrite_host, revision) VALUES ('a.example.com', '/', 'web', '', 2);",
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let version: i64 = s
        .with(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let times = s.ca_root_times().await.unwrap();
    assert_eq!(
        times,
        [CaRootTimes {
            sha256: "r".into(),
            signing_ended_at: 0
        }]
    );
    let st = s.config_state().await.unwrap();
    assert!(st.ca_roots[0].signing);
    // A route from before version 3 has no region preference.
    assert_eq!(st.routes.len(), 1);
    assert_eq!(
        (
            st.routes[0].host.as_str(),
            st.routes[0].prefer_region.as_str()
        ),
        ("a.example.com", "")
    );
    // Opening again is a no-op.
    drop(s);
    SqliteStore::open(&path).unwrap();
}

#[tokio::test]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create_service("a", Protocol::Grpc, 9000, 1)
            .await
            .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let a = s.get_service("a").await.unwrap();
    assert_eq!(a.protocol, Protocol::Grpc as i32);
    assert_eq!(a.port, 9000);
}

fn permission(id: &str, source: &str, destination: &str, port: u32) -> weft_proto::v1::Permission {
    weft_proto::v1::Permission {
        id: id.into(),
        source: source.into(),
        destination: destination.into(),
        port,
        action: weft_proto::v1::PermissionAction::Allow as i32,
        revision: 0,
        created_at: 1,
    }
}

#[tokio::test]
async fn permissions_are_revisioned_unique_and_name_existing_services() {
    let (_d, s) = store();
    s.create_service("web", Protocol::Http, 0, 1).await.unwrap();
    s.create_service("api", Protocol::Grpc, 0, 1).await.unwrap();
    let p = s
        .create_permission(permission("perm-1", "api", "web", 0))
        .await
        .unwrap();
    assert_eq!(p.revision, s.config_state().await.unwrap().revision);
    // Same selector, any action: refused, naming the rule in the way.
    let dup = s
        .create_permission(permission("perm-2", "api", "web", 0))
        .await;
    assert!(matches!(dup, Err(StoreError::AlreadyExists(m)) if m.contains("perm-1")));
    // Another port is another selector; gateways and '*' need no service.
    s.create_permission(permission("perm-3", "api", "web", 8080))
        .await
        .unwrap();
    s.create_permission(permission("perm-4", "gateway:edge", "*", 0))
        .await
        .unwrap();
    for (source, destination) in [("nope", "web"), ("api", "nope")] {
        let missing = s
            .create_permission(permission("perm-9", source, destination, 0))
            .await;
        assert!(matches!(missing, Err(StoreError::NotFound(m)) if m.contains("\"nope\"")));
    }
    // A service named by permissions cannot be deleted.
    let blocked = s.delete_service("api").await;
    assert!(
        matches!(blocked, Err(StoreError::FailedPrecondition(m)) if m.contains("perm-1") && m.contains("perm-3"))
    );
    let del = s.delete_permission("perm-1").await.unwrap();
    let st = s.config_state().await.unwrap();
    assert_eq!(st.permissions.len(), 2);
    assert!(st.tombstones.contains(&Tombstone {
        kind: TombstoneKind::Permission,
        key: "perm-1".into(),
        revision: del
    }));
    assert!(matches!(
        s.delete_permission("perm-1").await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn the_default_policy_starts_unset_and_bumps_only_on_change() {
    use weft_proto::v1::DefaultPolicy;
    let (_d, s) = store();
    let unset = s.mesh_settings().await.unwrap();
    assert_eq!((unset.default_policy, unset.revision), (0, 0));
    let deny = s.set_default_policy(DefaultPolicy::Deny).await.unwrap();
    assert_eq!(deny.default_policy, DefaultPolicy::Deny as i32);
    assert_eq!(deny.revision, s.config_state().await.unwrap().revision);
    let again = s.set_default_policy(DefaultPolicy::Deny).await.unwrap();
    assert_eq!(again.revision, deny.revision);
    assert_eq!(s.config_state().await.unwrap().mesh, deny);
}

fn cert(serial: &str, lineage: &str) -> CertificateRecord {
    CertificateRecord {
        serial: serial.into(),
        lineage: lineage.into(),
        token_id: "tok-1".into(),
        kind: DataplaneKind::Sidecar,
        name: "web".into(),
        not_after: 1_000_000,
        revoked_at: 0,
    }
}

#[tokio::test]
async fn revoking_a_dataplane_revokes_its_lineage_and_removes_it() {
    let (_d, s) = store();
    s.record_certificate(cert("a1", "a1"), 10).await.unwrap();
    s.record_certificate(cert("a2", "a1"), 10).await.unwrap();
    s.record_certificate(cert("b1", "b1"), 10).await.unwrap();
    let reg = DataplaneRegistration {
        id: "service/web/10.0.0.1:15008".into(),
        kind: DataplaneKind::Sidecar,
        name: "web".into(),
        region: String::new(),
        address: "10.0.0.1:15008".into(),
        cert_expiry: 1_000_000,
        cert_serial: "a2".into(),
        now: 10,
    };
    s.register_dataplane(reg.clone()).await.unwrap();
    let revoked = s.revoke_dataplane(&reg.id, 20).await.unwrap();
    assert_eq!(revoked.serials, ["a1", "a2"]);
    assert_eq!(revoked.record.cert_serial, "a2");
    let st = s.config_state().await.unwrap();
    assert_eq!(st.revoked_revision, revoked.revision);
    assert_eq!(
        st.revoked
            .iter()
            .map(|r| r.serial.as_str())
            .collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert!(st.dataplanes.is_empty());
    assert_eq!(
        s.get_certificate("a1").await.unwrap().unwrap().revoked_at,
        20
    );
    assert_eq!(
        s.get_certificate("b1").await.unwrap().unwrap().revoked_at,
        0
    );
    assert!(matches!(
        s.revoke_dataplane(&reg.id, 30).await,
        Err(StoreError::NotFound(_))
    ));
    // Certificates expired for a day are forgotten when the next one is recorded.
    s.record_certificate(cert("c1", "c1"), 1_000_000 + 2 * 86_400)
        .await
        .unwrap();
    assert!(s.get_certificate("a1").await.unwrap().is_none());
}

#[tokio::test]
async fn a_dataplane_id_is_never_taken_over_by_another_identity() {
    let (_d, s) = store();
    let web = DataplaneRegistration {
        id: "shared-id".into(),
        kind: DataplaneKind::Sidecar,
        name: "web".into(),
        region: String::new(),
        address: "10.0.0.1:15008".into(),
        cert_expiry: 0,
        cert_serial: String::new(),
        now: 1,
    };
    s.register_dataplane(web.clone()).await.unwrap();
    for (kind, name) in [
        (DataplaneKind::Sidecar, "db"),
        (DataplaneKind::Ingress, "web"),
    ] {
        let other = DataplaneRegistration {
            kind,
            name: name.into(),
            address: "10.0.0.9:15008".into(),
            ..web.clone()
        };
        let refused = s.register_dataplane(other).await;
        assert!(
            matches!(refused, Err(StoreError::FailedPrecondition(_))),
            "{name}"
        );
    }
    let kept = s.list_dataplanes().await.unwrap();
    assert_eq!(
        (kept[0].name.as_str(), kept[0].address.as_str()),
        ("web", "10.0.0.1:15008")
    );
}
