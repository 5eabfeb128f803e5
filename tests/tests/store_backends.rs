//! The store's contract, held to both backends: SQLite (a temporary file) and
//! PostgreSQL (a real server started by the test). Revisions, tombstones, refusals that
//! write nothing, and the leader lease behave the same on both; on PostgreSQL, changes
//! made at once through several connections (replicas) take distinct revisions in
//! commit order, and replicas starting together migrate the schema once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use weft_control_plane::store::postgres::{PgStore, PgTarget};
use weft_control_plane::store::sqlite::SqliteStore;
use weft_control_plane::store::{
    DataplaneRegistration, Fence, Store, StoreError, Tombstone, TombstoneKind,
};
use weft_proto::v1::{DataplaneKind, Protocol, Route};
use weft_tests::postgres::Postgres;

/// Runs `check` against a fresh store of each backend.
async fn on_both<F, Fut>(check: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&dir.path().join("weft.db")).unwrap();
    check(Arc::new(sqlite)).await;
    let pg = Postgres::start();
    let store = PgStore::connect(PgTarget::parse(&pg.url()).unwrap())
        .await
        .unwrap();
    check(Arc::new(store)).await;
}

fn route(host: &str, service: &str) -> Route {
    Route {
        host: host.into(),
        path_prefix: "/".into(),
        service: service.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn revisions_grow_deletes_leave_tombstones_and_refusals_write_nothing() {
    on_both(|s| async move {
        let a = s
            .create_service("a", Protocol::Http, 8080, 1)
            .await
            .unwrap();
        let b = s.create_service("b", Protocol::Grpc, 0, 1).await.unwrap();
        assert!(b.revision > a.revision);
        assert_eq!(b.port, 0);
        let unchanged = s.set_protocol("a", Protocol::Http).await.unwrap();
        assert_eq!(unchanged.revision, a.revision, "a no-op does not bump");
        let changed = s.set_protocol("a", Protocol::Http2).await.unwrap();
        assert!(changed.revision > b.revision);
        let before = s.revision().await.unwrap();
        assert!(matches!(
            s.create_service("c", Protocol::Http, 8080, 1).await,
            Err(StoreError::AlreadyExists(m)) if m.contains("port 8080") && m.contains("\"a\"")
        ));
        assert!(matches!(
            s.create_service("a", Protocol::Http, 0, 1).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            s.create_route(route("x.example.com", "missing")).await,
            Err(StoreError::NotFound(_))
        ));
        s.create_route(route("x.example.com", "a")).await.unwrap();
        assert!(matches!(
            s.delete_service("a").await,
            Err(StoreError::FailedPrecondition(m)) if m.contains("x.example.com")
        ));
        assert_eq!(
            s.revision().await.unwrap(),
            before + 1,
            "only the route was written"
        );

        let del = s.delete_service("b").await.unwrap();
        let st = s.config_state().await.unwrap();
        assert_eq!(st.revision, del);
        assert_eq!(
            st.tombstones,
            [Tombstone {
                kind: TombstoneKind::Service,
                key: "b".into(),
                revision: del
            }]
        );
        s.create_service("b", Protocol::Tcp, 0, 2).await.unwrap();
        assert!(s.config_state().await.unwrap().tombstones.is_empty());
        assert_eq!(
            s.list_services()
                .await
                .unwrap()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    })
    .await;
}

#[tokio::test]
async fn dataplanes_bump_only_on_visible_changes() {
    on_both(|s| async move {
        let reg = DataplaneRegistration {
            id: "service/web/127.0.0.1:15008".into(),
            kind: DataplaneKind::Sidecar,
            name: "web".into(),
            region: "eu".into(),
            address: "127.0.0.1:15008".into(),
            cert_expiry: 0,
            cert_serial: String::new(),
            now: 1,
        };
        let first = s.register_dataplane(reg.clone()).await.unwrap();
        let again = s.register_dataplane(reg.clone()).await.unwrap();
        assert_eq!(first.revision, again.revision);
        s.set_dataplane_health(&reg.id, false, None).await.unwrap();
        let back = s.register_dataplane(reg.clone()).await.unwrap();
        assert!(back.healthy && back.revision > first.revision);
        let gone = s.delete_dataplane(&reg.id).await.unwrap();
        let st = s.config_state().await.unwrap();
        assert!(st.dataplanes.is_empty());
        assert_eq!(st.tombstones[0].revision, gone);
    })
    .await;
}

#[tokio::test]
async fn the_lease_moves_only_when_free_and_a_stale_fence_writes_nothing() {
    on_both(|s| async move {
        let (first, _) = s.try_lead("a", 60_000).await.unwrap().unwrap();
        assert!(s.try_lead("b", 60_000).await.unwrap().is_none());
        let a = Fence {
            holder: "a".into(),
            epoch: first,
        };
        assert!(s.renew_lead(&a, 60_000).await.unwrap());
        s.release_lead(&a).await.unwrap();
        let (second, _) = s.try_lead("b", 60_000).await.unwrap().unwrap();
        assert!(second > first);
        assert!(!s.renew_lead(&a, 60_000).await.unwrap());
        let before = s.revision().await.unwrap();
        assert!(matches!(
            s.set_signing_root("any", 1, &a).await,
            Err(StoreError::NotLeader(_))
        ));
        assert_eq!(s.revision().await.unwrap(), before);
        let lease = s.lease().await.unwrap();
        assert_eq!((lease.holder.as_str(), lease.epoch), ("b", second));
    })
    .await;
}

#[tokio::test]
async fn concurrent_changes_through_several_replicas_take_distinct_revisions_in_commit_order() {
    let pg = Postgres::start();
    // Two "replicas" migrating the same fresh database at once: both succeed.
    let (a, b) = tokio::join!(
        PgStore::connect(PgTarget::parse(&pg.url()).unwrap()),
        PgStore::connect(PgTarget::parse(&pg.url()).unwrap())
    );
    let stores: Vec<Arc<dyn Store>> = vec![Arc::new(a.unwrap()), Arc::new(b.unwrap())];
    let base = stores[0].revision().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = stores[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            s.create_service(&format!("svc-{i:02}"), Protocol::Http, 0, 1)
                .await
                .unwrap()
                .revision
        }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.push(t.await.unwrap());
    }
    revisions.sort_unstable();
    let expected: Vec<u64> = (base + 1..=base + 40).collect();
    assert_eq!(revisions, expected, "one revision each, none skipped");
    // Every snapshot is complete up to its revision: each row stamped at or below it.
    let st = stores[1].config_state().await.unwrap();
    assert_eq!(st.revision, base + 40);
    assert_eq!(st.services.len(), 40);
    assert!(st.services.iter().all(|s| s.revision <= st.revision));
}

#[tokio::test]
async fn viewer_and_bootstrap_tokens_keep_their_kind() {
    use weft_control_plane::store::{TokenKind, TokenRecord};
    on_both(|s| async move {
        for (id, kind) in [
            ("tok-v", TokenKind::Viewer),
            ("tok-g", TokenKind::Bootstrap(DataplaneKind::Gateway)),
        ] {
            let record = TokenRecord {
                id: id.into(),
                kind,
                name: "ops".into(),
                created_at: 1,
                expires_at: 2,
                revoked_at: 0,
            };
            s.create_token(record.clone()).await.unwrap();
            assert_eq!(s.get_token(id).await.unwrap(), record);
        }
        assert_eq!(s.list_tokens().await.unwrap().len(), 2);
    })
    .await;
}
