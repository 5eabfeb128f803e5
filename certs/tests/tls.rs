//! Real TLS handshakes between the configs of this crate, over in-memory pipes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use common::{DAY, Handshake, bundle, handshake, identity, ping, server_identity, svc, td};
use tokio::io::AsyncReadExt;
use weft_certs::{
    CertificateAuthority, Revocations, TrustBundle, control_plane_client_config,
    control_plane_server_config, mesh_client_config, mesh_client_config_with_revocations,
    mesh_server_config, mesh_server_config_with_revocations, peer_spiffe_id,
    pinned_ca_client_config, serial_hex,
};

const ALPN: &[&[u8]] = &[b"h2"];

/// `frontend` connects to `backend` (one CA), both with the mesh configs; the SNI sent is
/// `sni`.
async fn frontend_to_backend(sni: &str) -> Handshake {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let b = bundle(&ca);
    let server_id = identity(&ca, &svc("backend"), DAY);
    let client_id = identity(&ca, &svc("frontend"), DAY);
    let server = mesh_server_config(&server_id, &b, ALPN).unwrap();
    let client = mesh_client_config(&client_id, &b, &svc("backend"), ALPN).unwrap();
    handshake(server, client, sni).await
}

#[tokio::test]
async fn mesh_mtls_succeeds_and_server_sees_client_id() {
    // The SNI is irrelevant to the identity decision; use something unrelated.
    let (s, c) = frontend_to_backend("anything.invalid").await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());

    let conn = s.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        peer_spiffe_id(conn.peer_certificates()),
        Some(svc("frontend"))
    );
    assert_eq!(
        peer_spiffe_id(c.get_ref().1.peer_certificates()),
        Some(svc("backend"))
    );
    ping(&mut s, &mut c, b"hello mesh").await.unwrap();
}

#[tokio::test]
async fn mesh_connections_seal_with_aes_128_gcm() {
    let (s, c) = frontend_to_backend("backend").await;
    let (s, c) = (s.unwrap(), c.unwrap());
    for suite in [
        s.get_ref().1.negotiated_cipher_suite(),
        c.get_ref().1.negotiated_cipher_suite(),
    ] {
        assert_eq!(
            suite.map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
    }
}

#[tokio::test]
async fn revoked_certificates_are_refused_on_both_sides_from_the_next_handshake() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let b = bundle(&ca);
    let server_id = identity(&ca, &svc("backend"), DAY);
    let client_id = identity(&ca, &svc("frontend"), DAY);
    let revoked = Revocations::new();
    let server = mesh_server_config_with_revocations(&server_id, &b, ALPN, &revoked).unwrap();
    let client =
        mesh_client_config_with_revocations(&client_id, &b, &svc("backend"), ALPN, &revoked)
            .unwrap();
    let (s, c) = handshake(server.clone(), client.clone(), "backend").await;
    assert!(s.is_ok() && c.is_ok(), "nothing revoked yet");

    // The client's certificate is revoked: the same server config now refuses it.
    let client_serial = serial_hex(&client_id.chain()[0]).unwrap();
    revoked.replace([client_serial.clone()]);
    let plain_client = mesh_client_config(&client_id, &b, &svc("backend"), ALPN).unwrap();
    let (s, _) = handshake(server.clone(), plain_client, "backend").await;
    let err = s.unwrap_err().to_string();
    assert!(
        err.contains(&client_serial) && err.contains("revoked"),
        "{err}"
    );

    // The server's certificate is revoked: a client with the list refuses it.
    revoked.replace([serial_hex(&server_id.chain()[0]).unwrap()]);
    let plain_server = mesh_server_config(&server_id, &b, ALPN).unwrap();
    let (_, c) = handshake(plain_server, client, "backend").await;
    assert!(c.unwrap_err().to_string().contains("server certificate"));
}

#[tokio::test]
async fn client_refuses_server_with_other_identity() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let b = bundle(&ca);
    let a_id = identity(&ca, &svc("service-a"), DAY);
    let client_id = identity(&ca, &svc("frontend"), DAY);

    let server = mesh_server_config(&a_id, &b, ALPN).unwrap();
    let client = mesh_client_config(&client_id, &b, &svc("service-b"), ALPN).unwrap();
    let (s, c) = handshake(server, client, "service-b").await;
    let err = c.unwrap_err().to_string();
    assert!(
        err.contains("spiffe://weft.local/service/service-b")
            && err.contains("spiffe://weft.local/service/service-a"),
        "error must name both ids: {err}"
    );
    assert!(s.is_err());
}

#[tokio::test]
async fn foreign_ca_is_refused_on_both_sides() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let foreign = CertificateAuthority::generate(&td()).unwrap();
    let b = bundle(&ca);
    let fb = bundle(&foreign);
    let good_server = identity(&ca, &svc("backend"), DAY);
    let good_client = identity(&ca, &svc("frontend"), DAY);
    // Same names, other CA: the id alone must not be enough.
    let evil_server = identity(&foreign, &svc("backend"), DAY);
    let evil_client = identity(&foreign, &svc("frontend"), DAY);

    // Our client, foreign server.
    let (s, c) = handshake(
        mesh_server_config(&evil_server, &fb, ALPN).unwrap(),
        mesh_client_config(&good_client, &b, &svc("backend"), ALPN).unwrap(),
        "backend",
    )
    .await;
    let err = c.unwrap_err().to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(s.is_err());

    // Foreign client, our server: the server refuses during the handshake. (The client
    // trusts our CA, so the refusal is the server's.)
    let (s, c) = handshake(
        mesh_server_config(&good_server, &b, ALPN).unwrap(),
        mesh_client_config(&evil_client, &b, &svc("backend"), ALPN).unwrap(),
        "backend",
    )
    .await;
    let err = s.unwrap_err().to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");
    // The client may finish its side first (TLS 1.3), but it cannot use the connection.
    if let Ok(mut c) = c {
        let mut buf = [0u8; 1];
        assert!(!matches!(c.read(&mut buf).await, Ok(1)));
    }
}

#[tokio::test]
async fn mesh_server_requires_a_client_cert_but_control_plane_does_not() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let b = bundle(&ca);
    let cp = server_identity(&ca);
    let anonymous = control_plane_client_config(&b, None, ALPN).unwrap();

    let (s, c) = handshake(
        mesh_server_config(&cp, &b, ALPN).unwrap(),
        anonymous.clone(),
        "localhost",
    )
    .await;
    let err = s.unwrap_err().to_string();
    assert!(err.contains("no certificates"), "{err}");
    if let Ok(mut c) = c {
        let mut buf = [0u8; 1];
        assert!(!matches!(c.read(&mut buf).await, Ok(1)));
    }

    let (s, c) = handshake(
        control_plane_server_config(&cp, &b, ALPN).unwrap(),
        anonymous,
        "localhost",
    )
    .await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    assert_eq!(peer_spiffe_id(s.get_ref().1.peer_certificates()), None);
    ping(&mut s, &mut c, b"weftctl").await.unwrap();
}

#[tokio::test]
async fn control_plane_sees_sidecar_identity_and_checks_server_name() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let b = bundle(&ca);
    let cp = server_identity(&ca);
    let sidecar = identity(&ca, &svc("web"), DAY);
    let server = control_plane_server_config(&cp, &b, ALPN).unwrap();

    let client = control_plane_client_config(&b, Some(&sidecar), ALPN).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let (s, c) = handshake(server.clone(), client.clone(), name).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(
            peer_spiffe_id(s.get_ref().1.peer_certificates()),
            Some(svc("web"))
        );
        ping(&mut s, &mut c, b"hello").await.unwrap();
    }

    let (_, c) = handshake(server.clone(), client, "cp.elsewhere.example").await;
    let err = c.unwrap_err().to_string();
    assert!(err.contains("not valid for name"), "{err}");

    // A foreign-CA client cert is refused even though client certs are optional.
    let foreign = CertificateAuthority::generate(&td()).unwrap();
    let evil = identity(&foreign, &svc("web"), DAY);
    let client = control_plane_client_config(&b, Some(&evil), ALPN).unwrap();
    let (s, _) = handshake(server, client, "localhost").await;
    assert!(s.is_err());
}

#[tokio::test]
async fn control_plane_server_allows_tls12() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let b = bundle(&ca);
    let cp = server_identity(&ca);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(b.roots()[0].clone()).unwrap();
    let tls12_only = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls12_only = std::sync::Arc::new(tls12_only);

    let (s, c) = handshake(
        control_plane_server_config(&cp, &b, ALPN).unwrap(),
        tls12_only.clone(),
        "localhost",
    )
    .await;
    let s = s.unwrap();
    c.unwrap();
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // The mesh server is TLS 1.3 only.
    let (s, _) = handshake(
        mesh_server_config(&cp, &b, ALPN).unwrap(),
        tls12_only,
        "localhost",
    )
    .await;
    assert!(s.is_err());
}

#[tokio::test]
async fn pinned_ca_accepts_the_right_ca_only() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let other = CertificateAuthority::generate(&td()).unwrap();
    let b = bundle(&ca);
    let cp = server_identity(&ca);
    let server = control_plane_server_config(&cp, &b, ALPN).unwrap();

    let good = pinned_ca_client_config(&ca.sha256_hex(), ALPN).unwrap();
    let (s, c) = handshake(server.clone(), good.clone(), "localhost").await;
    let (mut s, mut c) = (s.unwrap(), c.unwrap());
    ping(&mut s, &mut c, b"bootstrap").await.unwrap();

    // Upper-case fingerprints are fine too.
    let upper = pinned_ca_client_config(&ca.sha256_hex().to_uppercase(), ALPN).unwrap();
    let (s, c) = handshake(server.clone(), upper, "127.0.0.1").await;
    s.unwrap();
    c.unwrap();

    let wrong = pinned_ca_client_config(&other.sha256_hex(), ALPN).unwrap();
    let (_, c) = handshake(server.clone(), wrong, "localhost").await;
    let err = c.unwrap_err().to_string();
    assert!(err.contains(&other.sha256_hex()), "{err}");

    // Right pin, wrong name: the leaf must still be valid for the server name.
    let (_, c) = handshake(server, good.clone(), "elsewhere.example").await;
    assert!(c.is_err());

    // A server from another CA that merely *sends* the pinned CA cert along is refused,
    // because its leaf does not verify under the pinned CA.
    let evil = server_identity(&other);
    let chain = format!("{}{}", evil.chain_pem(), ca.cert_pem());
    let evil = weft_certs::Identity::from_pem(&chain, evil.key_pem()).unwrap();
    let evil_server = control_plane_server_config(&evil, &bundle(&other), ALPN).unwrap();
    let (_, c) = handshake(evil_server, good, "localhost").await;
    assert!(c.is_err());
}

#[tokio::test]
async fn bundle_with_two_roots_accepts_leaves_from_both() {
    let old = CertificateAuthority::generate(&td()).unwrap();
    let new = CertificateAuthority::generate(&td()).unwrap();
    let both = TrustBundle::from_pem(&format!("{}{}", old.cert_pem(), new.cert_pem())).unwrap();
    let server_old = identity(&old, &svc("backend"), DAY);
    let client_new = identity(&new, &svc("frontend"), DAY);
    let server_new = identity(&new, &svc("backend"), DAY);
    let client_old = identity(&old, &svc("frontend"), DAY);

    for (server_id, client_id) in [(&server_old, &client_new), (&server_new, &client_old)] {
        let (s, c) = handshake(
            mesh_server_config(server_id, &both, ALPN).unwrap(),
            mesh_client_config(client_id, &both, &svc("backend"), ALPN).unwrap(),
            "backend",
        )
        .await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(
            peer_spiffe_id(s.get_ref().1.peer_certificates()),
            Some(svc("frontend"))
        );
        ping(&mut s, &mut c, b"rotation").await.unwrap();
    }

    // With only the old root, a new-CA leaf is refused.
    let only_old = bundle(&old);
    let (_, c) = handshake(
        mesh_server_config(&server_new, &both, ALPN).unwrap(),
        mesh_client_config(&client_old, &only_old, &svc("backend"), ALPN).unwrap(),
        "backend",
    )
    .await;
    assert!(c.is_err());
}

#[tokio::test]
async fn mesh_tls_over_tcp() {
    use tokio::net::{TcpListener, TcpStream};
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let b = bundle(&ca);
    let server_id = identity(&ca, &svc("backend"), DAY);
    let client_id = identity(&ca, &svc("frontend"), DAY);
    let acceptor =
        tokio_rustls::TlsAcceptor::from(mesh_server_config(&server_id, &b, ALPN).unwrap());
    let connector = tokio_rustls::TlsConnector::from(
        mesh_client_config(&client_id, &b, &svc("backend"), ALPN).unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        peer_spiffe_id(tls.get_ref().1.peer_certificates())
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("backend").unwrap();
    let _tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(server.await.unwrap(), Some(svc("frontend")));
}
