//! CA rotation against a real weft-cp: `weftctl ca rotate` adds a root, the bundle
//! reaches the dataplanes over the discovery stream (the sidecar's `bundle_sync` feeds
//! it to their identity managers), signing switches only once every connected
//! dataplane acknowledged it, renewals then come from the new root, and the old root is
//! retired. Mesh mTLS connections made before, during and after all keep working.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use weft_certs::{Identity, IdentityManager, generate_csr, sha256_hex};
use weft_proto::v1::identity_client::IdentityClient;
use weft_proto::v1::*;
use weft_sidecar::control::bundle_sync::spawn_bundle_sync;
use weft_sidecar::control::client::{DiscoveryClient, HelloInfo};
use weft_tests::mtls::{connect, connect_as, echo_server, roundtrip};
use weft_tests::{
    ControlPlane, DataplaneIdentity, Subscriber, eventually, free_port, sidecar_hello,
};

const WAIT: Duration = Duration::from_secs(10);

/// SHA-256 of the CA certificate that follows the leaf in a chain.
fn issuer_sha(identity: &Identity) -> String {
    sha256_hex(&identity.chain()[1])
}

/// SHA-256 of the CA in the chain the peer of `conn` presented.
fn peer_issuer_sha(conn: &TlsStream<TcpStream>) -> String {
    sha256_hex(&conn.get_ref().1.peer_certificates().unwrap()[1])
}

/// A sidecar-like dataplane: identity renewed by `run_renewal`, config followed by the
/// real `DiscoveryClient`, pushed bundles forwarded by `spawn_bundle_sync`.
struct Dataplane {
    manager: Arc<IdentityManager>,
    channel: tonic::transport::Channel,
    connected: tokio::sync::watch::Receiver<bool>,
    /// Held so the discovery client's app-status channel stays open.
    _app_status: tokio::sync::watch::Sender<AppProtocol>,
}

async fn dataplane(cp: &ControlPlane, service: &str, address: &str) -> Dataplane {
    let token = cp.token_for(DataplaneKind::Sidecar, service).await;
    let id = DataplaneIdentity::bootstrap(&cp.url(), &token).await;
    tokio::spawn(weft_sidecar::control::bootstrap::run_renewal(
        id.manager.clone(),
        id.channel.clone(),
        None,
    ));
    let (client, handles) = DiscoveryClient::new(
        id.channel.clone(),
        HelloInfo {
            kind: DataplaneKind::Sidecar,
            name: service.into(),
            region: "local".into(),
            address: address.into(),
            dataplane_id: String::new(),
        },
        None,
        None,
    );
    tokio::spawn(client.run());
    spawn_bundle_sync(handles.config, id.manager.clone());
    Dataplane {
        manager: id.manager,
        channel: id.channel,
        connected: handles.connected,
        _app_status: handles.app_status,
    }
}

async fn ca_info(cp: &ControlPlane) -> CaInfo {
    cp.admin()
        .await
        .get_ca(GetCaRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn connections_before_during_and_after_a_ca_rotation_all_work() {
    // 40 s TTL: renewals every ~28 s, and an old-CA leaf obtained just before the switch
    // is still valid (so "refused" below means untrusted, not expired) when checked.
    let cp = ControlPlane::start(&["--cert-ttl", "40s"]).await;
    for s in ["a", "b", "c"] {
        cp.weftctl_ok(&["service", "create", s, "--protocol", "tcp"]);
    }
    let a = dataplane(&cp, "a", &format!("127.0.0.1:{}", free_port())).await;
    let b = dataplane(&cp, "b", &format!("127.0.0.1:{}", free_port())).await;
    for dp in [&a, &b] {
        let mut connected = dp.connected.clone();
        tokio::time::timeout(WAIT, connected.wait_for(|c| *c))
            .await
            .expect("discovery stream up")
            .unwrap();
    }
    // A third dataplane acknowledges only when told: it holds the rotation in its
    // "distributing" phase for as long as the test needs.
    let c =
        DataplaneIdentity::bootstrap(&cp.url(), &cp.token_for(DataplaneKind::Sidecar, "c").await)
            .await;
    let mut slow = Subscriber::connect(
        c.channel.clone(),
        sidecar_hello("c", "local", &format!("127.0.0.1:{}", free_port())),
    )
    .await
    .unwrap();
    while let Some(u) = slow.try_next_update(Duration::from_millis(500)).await {
        slow.ack(u.version).await;
    }

    let before = ca_info(&cp).await;
    assert_eq!(before.rotation.as_ref().unwrap().phase, "idle");
    let old = before
        .roots
        .iter()
        .find(|r| r.signing)
        .unwrap()
        .sha256
        .clone();
    let b_id = b.manager.spiffe_id().clone();
    let (addr, mut accepted) = echo_server(b.manager.clone()).await;

    // #1: before the rotation.
    let mut conn1 = connect(&a.manager, &b_id, addr).await.unwrap();
    roundtrip(&mut conn1, "one").await;
    assert_eq!(peer_issuer_sha(&conn1), old);

    let out = cp.weftctl_ok(&["ca", "rotate"]);
    let new = out
        .split_whitespace()
        .skip_while(|w| *w != "root")
        .nth(1)
        .unwrap_or_else(|| panic!("no root in {out:?}"))
        .to_owned();
    assert_eq!(new.len(), 64, "{out}");
    assert_ne!(new, old);
    assert!(out.contains("acknowledged"), "{out}");

    // Distributing: a and b take the bundle and ack; c holds the switch.
    let bundle_update = slow.next_update(WAIT).await;
    assert!(
        bundle_update
            .trust_bundle_pem
            .matches("BEGIN CERTIFICATE")
            .count()
            == 2
    );
    for dp in [&a, &b] {
        eventually(WAIT, || async {
            dp.manager
                .current()
                .bundle
                .contains_sha256(&new)
                .then_some(())
        })
        .await;
    }
    let info = eventually(WAIT, || async {
        let info = ca_info(&cp).await;
        let r = info.rotation.clone().unwrap();
        (r.acked_dataplanes == 2 && r.connected_dataplanes == 3).then_some(info)
    })
    .await;
    let rotation = info.rotation.unwrap();
    assert_eq!(rotation.phase, "distributing");
    assert_eq!(rotation.new_root_sha256, new);
    assert!(rotation.summary.contains("2 of 3"), "{}", rotation.summary);
    assert!(info.roots.iter().any(|r| r.sha256 == old && r.signing));
    let shown = cp.weftctl_ok(&["ca", "show"]);
    assert!(
        shown.contains("distributing") && shown.contains("next (rotation)"),
        "{shown}"
    );
    // A second rotation cannot start while this one distributes.
    let again = cp.weftctl(&["ca", "rotate"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in progress"));

    // #2: during the rotation, still on old-CA leaves.
    let mut conn2 = connect(&a.manager, &b_id, addr).await.unwrap();
    roundtrip(&mut conn2, "two").await;
    assert_eq!(peer_issuer_sha(&conn2), old);
    assert!(accepted.recv().await.unwrap().is_ok());
    assert!(accepted.recv().await.unwrap().is_ok());

    // An old-CA leaf for "a", obtained at the last moment before the switch; it is used
    // after the old root is retired, to check that it is then refused.
    let (key, csr) = generate_csr(a.manager.spiffe_id()).unwrap();
    let issued = IdentityClient::new(a.channel.clone())
        .issue_certificate(IssueCertificateRequest {
            csr_pem: csr,
            token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let old_leaf = Identity::from_pem(&issued.cert_chain_pem, &key).unwrap();
    assert_eq!(issuer_sha(&old_leaf), old);

    // c acknowledges: every connected dataplane holds the bundle, signing switches.
    slow.ack(bundle_update.version).await;
    let info = eventually(WAIT, || async {
        let info = ca_info(&cp).await;
        (info.rotation.clone().unwrap().phase == "switched").then_some(info)
    })
    .await;
    assert!(info.roots.iter().any(|r| r.sha256 == new && r.signing));
    let old_root = info.roots.iter().find(|r| r.sha256 == old).unwrap();
    assert!(!old_root.signing && old_root.signing_ended_at > 0);
    assert_eq!(old_root.retirable_at, old_root.signing_ended_at + 40);
    assert!(cp.weftctl_ok(&["ca", "show"]).contains("switched at"));

    // Retiring the old root is refused while its leaves may be valid.
    let early = cp.weftctl(&["ca", "retire", &old]);
    assert_eq!(early.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&early.stderr);
    assert!(
        msg.contains("--force") && msg.contains("valid until"),
        "{msg}"
    );

    // Renewals now come from the new root (up to 0.77 x 40 s after the last one).
    for dp in [&a, &b] {
        eventually(Duration::from_secs(45), || async {
            let identity = dp.manager.current().identity.clone();
            (issuer_sha(&identity) == new).then_some(())
        })
        .await;
    }
    let leaf = a.manager.current().identity.clone();
    let leaf_x509 = x509_parser::parse_x509_certificate(&leaf.chain()[0])
        .unwrap()
        .1;
    let ca_x509 = x509_parser::parse_x509_certificate(&leaf.chain()[1])
        .unwrap()
        .1;
    assert_eq!(leaf_x509.issuer(), ca_x509.subject());

    // #3: after the switch, on new-CA leaves.
    let mut conn3 = connect(&a.manager, &b_id, addr).await.unwrap();
    roundtrip(&mut conn3, "three").await;
    assert_eq!(peer_issuer_sha(&conn3), new);
    assert!(accepted.recv().await.unwrap().is_ok());
    for (conn, msg) in [
        (&mut conn1, "one!"),
        (&mut conn2, "two!"),
        (&mut conn3, "three!"),
    ] {
        roundtrip(conn, msg).await;
    }

    // Retire the old root early with --force; the bundle push reaches a and b.
    let out = cp.weftctl_ok(&["ca", "retire", &old, "--force"]);
    assert!(out.contains("retired"), "{out}");
    for dp in [&a, &b] {
        eventually(WAIT, || async {
            let bundle = dp.manager.current().bundle.clone();
            (bundle.roots().len() == 1 && bundle.contains_sha256(&new)).then_some(())
        })
        .await;
    }
    assert!(!cp.ca_pem().is_empty());
    assert_eq!(ca_info(&cp).await.roots.len(), 1);

    // A new connection still works; the old ones are still up.
    let mut conn4 = connect(&a.manager, &b_id, addr).await.unwrap();
    roundtrip(&mut conn4, "four").await;
    assert!(accepted.recv().await.unwrap().is_ok());
    for (conn, msg) in [(&mut conn1, "1"), (&mut conn2, "2"), (&mut conn3, "3")] {
        roundtrip(conn, msg).await;
    }

    // The old-CA leaf, still within its lifetime, is now refused as untrusted.
    assert!(
        old_leaf.not_after()
            > std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
        "the old-CA leaf must still be valid for this check to mean anything"
    );
    let bundle = a.manager.current().bundle.clone();
    if let Ok(mut conn) = connect_as(&old_leaf, &bundle, &b_id, addr).await {
        // TLS 1.3: the client may finish before the server has checked its certificate.
        let _ = conn.write_all(b"x").await;
        let mut buf = [0u8; 1];
        assert!(
            !matches!(conn.read(&mut buf).await, Ok(1)),
            "the server must not serve an old-CA client"
        );
    }
    let refused = tokio::time::timeout(WAIT, accepted.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
}

#[tokio::test]
async fn with_no_dataplane_signing_switches_at_once_and_a_restart_resumes_a_pending_rotation() {
    let mut cp = ControlPlane::start(&["--grace-period", "2s"]).await;
    let first = ca_info(&cp).await.roots[0].sha256.clone();

    // Nobody to wait for: `--wait` returns once the new root signs.
    let out = cp.weftctl_ok(&["ca", "rotate", "--wait", "--timeout", "20s"]);
    assert!(out.contains("switched: root"), "{out}");
    let info = ca_info(&cp).await;
    let second = info
        .roots
        .iter()
        .find(|r| r.signing)
        .unwrap()
        .sha256
        .clone();
    assert_ne!(first, second);
    assert_eq!(info.rotation.unwrap().phase, "switched");
    // The control plane now serves with a certificate from the new root, and ca.pem
    // (which weftctl uses) holds both roots.
    assert_eq!(cp.ca_pem().matches("BEGIN CERTIFICATE").count(), 2);
    cp.weftctl_ok(&["ca", "retire", &first, "--force"]);
    assert_eq!(cp.ca_pem().matches("BEGIN CERTIFICATE").count(), 1);
    let json: serde_json::Value =
        serde_json::from_str(&cp.weftctl_ok(&["ca", "show", "-o", "json"])).unwrap();
    assert_eq!(json["rotation"]["phase"], "idle");

    // A connected dataplane that never acknowledges holds the next rotation...
    cp.weftctl_ok(&["service", "create", "c", "--protocol", "tcp"]);
    let c =
        DataplaneIdentity::bootstrap(&cp.url(), &cp.token_for(DataplaneKind::Sidecar, "c").await)
            .await;
    let mut slow = Subscriber::connect(
        c.channel.clone(),
        sidecar_hello("c", "local", "127.0.0.1:1"),
    )
    .await
    .unwrap();
    let full = slow.next_update(WAIT).await;
    slow.ack(full.version).await;
    let out = cp.weftctl_ok(&["ca", "rotate"]);
    assert!(out.contains("1 connected"), "{out}");
    slow.next_update(WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ca_info(&cp).await.rotation.unwrap().phase, "distributing");

    // ...across a crash: after the restart it waits the grace period for dataplanes to
    // come back, then (none did) switches.
    cp.restart().await;
    let info = ca_info(&cp).await;
    assert_eq!(info.rotation.unwrap().phase, "distributing");
    assert!(info.roots.iter().any(|r| r.sha256 == second && r.signing));
    eventually(WAIT, || async {
        (ca_info(&cp).await.rotation.unwrap().phase == "switched").then_some(())
    })
    .await;
    let info = ca_info(&cp).await;
    assert!(!info.roots.iter().any(|r| r.sha256 == second && r.signing));
}
