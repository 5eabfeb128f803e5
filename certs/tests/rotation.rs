//! IdentityManager: renewal against an in-memory CA, publication, and no dropped connections.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CaIssuer, DAY, bootstrap, bundle, handshake, identity, ping, svc, td};
use weft_certs::{
    CertError, CertificateAuthority, IdentityManager, IssueError, IssuedPem, Issuer, TrustBundle,
    mesh_client_config, mesh_server_config, peer_spiffe_id,
};

const ALPN: &[&[u8]] = &[b"h2"];

#[tokio::test]
async fn renews_twice_within_six_seconds_without_dropping_connections() {
    let ca = Arc::new(CertificateAuthority::generate(&td()).unwrap());
    let issuer = CaIssuer {
        ca: Arc::clone(&ca),
        id: svc("frontend"),
        ttl: Duration::from_secs(3),
    };
    let manager = Arc::new(bootstrap(&issuer).await);
    let first = manager.current();
    assert_eq!(first.identity.spiffe_id(), &svc("frontend"));
    let mut rx = manager.subscribe();

    // A peer with a long-lived identity, and a connection opened before any renewal.
    let b = bundle(&ca);
    let backend = identity(&ca, &svc("backend"), DAY);
    let server = mesh_server_config(&backend, &b, ALPN).unwrap();
    let client = mesh_client_config(&first.identity, &first.bundle, &svc("backend"), ALPN).unwrap();
    let (s, c) = handshake(server.clone(), client, "backend").await;
    let (mut early_s, mut early_c) = (s.unwrap(), c.unwrap());
    ping(&mut early_s, &mut early_c, b"before").await.unwrap();

    let runner = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move { manager.run(issuer).await })
    };

    let started = Instant::now();
    let mut seen = vec![first.identity.clone()];
    while seen.len() < 3 && started.elapsed() < Duration::from_secs(7) {
        if tokio::time::timeout(Duration::from_millis(200), rx.changed())
            .await
            .is_ok()
        {
            let creds = rx.borrow_and_update().clone();
            seen.push(creds.identity.clone());
        }
    }
    let elapsed = started.elapsed();
    runner.abort();
    assert!(
        seen.len() >= 3,
        "expected at least two renewals in ~6 s, saw {} in {elapsed:?}",
        seen.len() - 1
    );
    assert!(
        elapsed <= Duration::from_secs(6),
        "renewals took {elapsed:?}"
    );

    for pair in seen.windows(2) {
        let (old, new) = (&pair[0], &pair[1]);
        assert_eq!(new.spiffe_id(), &svc("frontend"));
        assert_ne!(new.key_pem(), old.key_pem(), "every renewal uses a new key");
        assert_ne!(new.chain(), old.chain());
        assert!(new.not_after() >= old.not_after());
    }

    // The connection from before the first renewal is still usable, even though the
    // certificate it was opened with has expired by now.
    ping(&mut early_s, &mut early_c, b"after").await.unwrap();

    // New connections use the newest identity.
    let latest = manager.current();
    let client =
        mesh_client_config(&latest.identity, &latest.bundle, &svc("backend"), ALPN).unwrap();
    let (s, c) = handshake(server, client, "backend").await;
    let s = s.unwrap();
    c.unwrap();
    let presented = s.get_ref().1.peer_certificates().unwrap();
    assert_eq!(presented[0], latest.identity.chain()[0]);
    assert_eq!(peer_spiffe_id(Some(presented)), Some(svc("frontend")));
}

/// Fails the first `failures` requests, then delegates.
struct Flaky {
    inner: CaIssuer,
    failures: std::sync::atomic::AtomicUsize,
    calls: Arc<std::sync::atomic::AtomicUsize>,
}

impl Issuer for Flaky {
    async fn issue(&self, csr_pem: String) -> Result<IssuedPem, IssueError> {
        use std::sync::atomic::Ordering;
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(IssueError::Unavailable(
                "control plane unavailable".to_owned(),
            ));
        }
        self.inner.issue(csr_pem).await
    }
}

#[tokio::test]
async fn failed_renewals_are_retried_and_old_identity_stays_published() {
    let ca = Arc::new(CertificateAuthority::generate(&td()).unwrap());
    let inner = CaIssuer {
        ca: Arc::clone(&ca),
        id: svc("web"),
        ttl: Duration::from_secs(2),
    };
    let manager = Arc::new(bootstrap(&inner).await);
    let original = manager.current();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flaky = Flaky {
        inner,
        failures: std::sync::atomic::AtomicUsize::new(2),
        calls: Arc::clone(&calls),
    };
    let mut rx = manager.subscribe();
    let runner = {
        let manager = Arc::clone(&manager);
        tokio::spawn(async move { manager.run(flaky).await })
    };
    // Renewal starts at ~1.4 s (±10%), fails twice (1 s then 2 s backoff), then succeeds
    // at ~4.4 s. Half-way through, the original identity must still be the published one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(!rx.has_changed().unwrap());
    assert_eq!(
        manager.current().identity.chain(),
        original.identity.chain()
    );
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .unwrap()
        .unwrap();
    runner.abort();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    let renewed = manager.current();
    assert_ne!(renewed.identity.key_pem(), original.identity.key_pem());
}

#[tokio::test]
async fn obtain_checks_what_it_gets() {
    let ca = Arc::new(CertificateAuthority::generate(&td()).unwrap());
    // An issuer that signs for another identity than the one asked for... cannot, because
    // the CA refuses the CSR; the error string is surfaced.
    let wrong = CaIssuer {
        ca: Arc::clone(&ca),
        id: svc("other"),
        ttl: DAY,
    };
    let err = IdentityManager::obtain(&svc("web"), &wrong)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CertError::Issuer(IssueError::Refused(m)) if m.contains("spiffe://weft.local/service/other")),
        "{err}"
    );

    // An issuer whose bundle does not cover the leaf is refused.
    struct BadBundle(CaIssuer, String);
    impl Issuer for BadBundle {
        async fn issue(&self, csr_pem: String) -> Result<IssuedPem, IssueError> {
            let mut issued = self.0.issue(csr_pem).await?;
            issued.trust_bundle_pem = self.1.clone();
            Ok(issued)
        }
    }
    let foreign = CertificateAuthority::generate(&td()).unwrap();
    let bad = BadBundle(
        CaIssuer {
            ca: Arc::clone(&ca),
            id: svc("web"),
            ttl: DAY,
        },
        foreign.cert_pem().to_owned(),
    );
    let err = IdentityManager::obtain(&svc("web"), &bad)
        .await
        .unwrap_err();
    assert!(matches!(err, CertError::Untrusted(_)), "{err}");
}

#[tokio::test]
async fn update_bundle_publishes_only_changes() {
    let ca = Arc::new(CertificateAuthority::generate(&td()).unwrap());
    let issuer = CaIssuer {
        ca: Arc::clone(&ca),
        id: svc("web"),
        ttl: DAY,
    };
    let manager = bootstrap(&issuer).await;
    let mut rx = manager.subscribe();

    manager.update_bundle(bundle(&ca));
    assert!(!rx.has_changed().unwrap(), "same bundle: no notification");

    let next = CertificateAuthority::generate(&td()).unwrap();
    let both = TrustBundle::from_pem(&format!("{}{}", ca.cert_pem(), next.cert_pem())).unwrap();
    manager.update_bundle(both.clone());
    assert!(rx.has_changed().unwrap());
    let creds = rx.borrow_and_update().clone();
    assert_eq!(creds.bundle, both);
    assert_eq!(
        creds.identity.chain(),
        manager.current().identity.chain(),
        "identity unchanged"
    );
}
