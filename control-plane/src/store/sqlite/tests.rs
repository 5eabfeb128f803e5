//! The SQLite backend's behaviour: revisions, tombstones, refusals that write nothing,
//! migrations of older stores, durability across reopening.

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
async fn revisions_grow_and_deletes_leave_tombstones() {
    let (_d, s) = store();
    let a = s
        .create_service("a", Protocol::Http, 8080, 1)
        .await
        .unwrap();
    let b = s.create_service("b", Protocol::Grpc, 0, 1).await.unwrap();
    assert!(b.revision > a.revision);
    let a2 = s.set_protocol("a", Protocol::Http2).await.unwrap();
    assert!(a2.revision > b.revision);
    let del = s.delete_service("b").await.unwrap();
    let st = s.config_state().await.unwrap();
    assert_eq!(st.revision, del);
    assert_eq!(st.services.len(), 1);
    assert_eq!(
        st.tombstones,
        vec![Tombstone {
            kind: TombstoneKind::Service,
            key: "b".into(),
            revision: del
        }]
    );
    // Recreating clears the tombstone.
    s.create_service("b", Protocol::Tcp, 0, 2).await.unwrap();
    assert!(s.config_state().await.unwrap().tombstones.is_empty());
}

#[tokio::test]
async fn failed_changes_write_nothing() {
    let (_d, s) = store();
    s.create_service("a", Protocol::Http, 8080, 1)
        .await
        .unwrap();
    let before = s.config_state().await.unwrap().revision;
    assert!(matches!(
        s.create_service("b", Protocol::Http, 8080, 1).await,
        Err(StoreError::AlreadyExists(m)) if m.contains("port 8080") && m.contains("\"a\"")
    ));
    assert!(matches!(
        s.create_service("a", Protocol::Http, 0, 1).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.create_route(Route {
            host: "x.example.com".into(),
            path_prefix: "/".into(),
            service: "missing".into(),
            ..Default::default()
        })
        .await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.config_state().await.unwrap().revision, before);
    assert_eq!(s.list_services().await.unwrap().len(), 1);
}

#[tokio::test]
async fn routes_block_service_deletion() {
    let (_d, s) = store();
    s.create_service("web", Protocol::Http, 0, 1).await.unwrap();
    s.create_route(Route {
        host: "*.example.com".into(),
        path_prefix: "/".into(),
        service: "web".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(matches!(
        s.delete_service("web").await,
        Err(StoreError::FailedPrecondition(m)) if m.contains("*.example.com")
    ));
    s.delete_route("*.example.com", "/").await.unwrap();
    s.delete_service("web").await.unwrap();
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

#[tokio::test]
async fn dataplane_reconnect_without_change_does_not_bump() {
    let (_d, s) = store();
    let reg = DataplaneRegistration {
        id: "service/web/127.0.0.1:15008".into(),
        kind: DataplaneKind::Sidecar,
        name: "web".into(),
        region: "eu".into(),
        address: "127.0.0.1:15008".into(),
        cert_expiry: 0,
        now: 1,
    };
    let first = s.register_dataplane(reg.clone()).await.unwrap();
    let again = s.register_dataplane(reg.clone()).await.unwrap();
    assert_eq!(first.revision, again.revision);
    s.set_dataplane_health(&reg.id, false, None).await.unwrap();
    let back = s.register_dataplane(reg.clone()).await.unwrap();
    assert!(back.healthy);
    assert!(back.revision > first.revision);
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
