//! Certificate renewal against a real weft-cp with a short `--cert-ttl`: two dataplane
//! identities keep renewing (`IdentityManager::run` through the sidecar's
//! `run_renewal`), a mesh mTLS connection opened before the first renewal keeps carrying
//! data across several renewals (even after the certificates it was opened with have
//! expired), and new connections present the newer certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use weft_certs::IdentityManager;
use weft_proto::v1::DataplaneKind;
use weft_tests::mtls::{connect, echo_server, roundtrip};
use weft_tests::{ControlPlane, DataplaneIdentity};

/// notAfter of a DER certificate.
fn not_after(der: &[u8]) -> i64 {
    x509_parser::parse_x509_certificate(der)
        .unwrap()
        .1
        .validity()
        .not_after
        .timestamp()
}

fn peer_not_after(conn: &TlsStream<TcpStream>) -> i64 {
    not_after(&conn.get_ref().1.peer_certificates().unwrap()[0])
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Waits until `manager` has published `n` certificates newer than `after`, each with a
/// later notAfter than the one before. Returns the last notAfter.
async fn renewals(manager: &IdentityManager, after: i64, n: usize) -> i64 {
    let mut rx = manager.subscribe();
    let mut last = after;
    let mut seen = 0;
    while seen < n {
        let na = rx.borrow_and_update().identity.not_after();
        if na > last {
            seen += 1;
            last = na;
            continue;
        }
        // 20 s TTL: a renewal is due every 12.6-15.4 s.
        tokio::time::timeout(Duration::from_secs(40), rx.changed())
            .await
            .expect("a renewal within 40 s")
            .unwrap();
    }
    last
}

#[tokio::test]
async fn a_connection_outlives_several_renewals_and_new_ones_use_the_new_certificate() {
    let cp = ControlPlane::start(&["--cert-ttl", "20s"]).await;
    cp.weftctl_ok(&["service", "create", "a", "--protocol", "tcp"]);
    cp.weftctl_ok(&["service", "create", "b", "--protocol", "tcp"]);
    let a =
        DataplaneIdentity::bootstrap(&cp.url(), &cp.token_for(DataplaneKind::Sidecar, "a").await)
            .await;
    let b =
        DataplaneIdentity::bootstrap(&cp.url(), &cp.token_for(DataplaneKind::Sidecar, "b").await)
            .await;
    for dp in [&a, &b] {
        tokio::spawn(weft_sidecar::control::bootstrap::run_renewal(
            dp.manager.clone(),
            dp.channel.clone(),
            None,
        ));
    }
    let b_id = b.manager.spiffe_id().clone();
    let first_a = a.manager.current().identity.not_after();
    let first_b = b.manager.current().identity.not_after();

    let (addr, mut accepted) = echo_server(b.manager.clone()).await;
    let mut held = connect(&a.manager, &b_id, addr).await.unwrap();
    roundtrip(&mut held, "before any renewal").await;
    assert_eq!(peer_not_after(&held), first_b);
    assert_eq!(not_after(&accepted.recv().await.unwrap().unwrap()), first_a);

    // Two renewals on each side, the held connection carrying data after each.
    let (last_a, last_b) = tokio::join!(
        async {
            let mut na = first_a;
            for _ in 0..2 {
                na = renewals(&a.manager, na, 1).await;
            }
            na
        },
        async {
            let mut na = first_b;
            for i in 0..2 {
                na = renewals(&b.manager, na, 1).await;
                roundtrip(&mut held, &format!("after renewal {}", i + 1)).await;
            }
            na
        }
    );
    assert!(last_a > first_a && last_b > first_b);

    // The certificates the held connection was opened with have expired by now (two
    // renewals take at least 2 x 63% of 20 s); TLS does not re-check them mid-connection.
    assert!(
        now() > first_b,
        "two renewals outlast the first certificate"
    );
    roundtrip(&mut held, "still up after the renewals").await;
    assert_eq!(peer_not_after(&held), first_b);

    // A new connection presents the newest certificates, both ways.
    let mut fresh = connect(&a.manager, &b_id, addr).await.unwrap();
    roundtrip(&mut fresh, "new connection").await;
    let presented_b = peer_not_after(&fresh);
    assert!(presented_b >= last_b && presented_b > first_b);
    assert_eq!(presented_b, b.manager.current().identity.not_after());
    let presented_a = not_after(&accepted.recv().await.unwrap().unwrap());
    assert!(presented_a >= last_a && presented_a > first_a);

    roundtrip(&mut held, "and the old one still works").await;
}
