//! Certificate issuance by a real weft-cp: what a bootstrap token allows, and what it
//! does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tonic::Code;
use weft_certs::{IdentityKind, SpiffeId, TrustDomain, generate_csr};
use weft_proto::v1::identity_client::IdentityClient;
use weft_proto::v1::*;
use weft_tests::{ControlPlane, DataplaneIdentity};

fn spiffe(kind: IdentityKind, name: &str) -> SpiffeId {
    SpiffeId::new(&TrustDomain::new("weft.local").unwrap(), kind, name).unwrap()
}

async fn issue(
    cp: &ControlPlane,
    csr_pem: String,
    token: &str,
) -> Result<IssueCertificateResponse, tonic::Status> {
    IdentityClient::new(cp.tls_channel().await)
        .issue_certificate(IssueCertificateRequest {
            csr_pem,
            token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn issued_leaf_has_the_expected_fields() {
    let cp = ControlPlane::start(&["--cert-ttl", "2h"]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let (_key, csr) = generate_csr(&spiffe(IdentityKind::Service, "web")).unwrap();
    let resp = issue(&cp, csr, &token).await.unwrap();
    assert_eq!(resp.spiffe_id, "spiffe://weft.local/service/web");

    let pems = x509_parser::pem::Pem::iter_from_buffer(resp.cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(pems.len(), 2, "leaf then CA");
    let leaf = pems[0].parse_x509().unwrap();
    let ca = pems[1].parse_x509().unwrap();
    assert_eq!(leaf.issuer(), ca.subject());
    assert!(
        resp.trust_bundle_pem
            .contains(&cp.ca_pem().trim().to_string())
    );
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (7200..=7200 + 120).contains(&life),
        "lifetime {life}s for --cert-ttl 2h"
    );
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect();
    assert_eq!(uris.len(), 1, "{uris:?}");
    assert!(uris[0].contains("spiffe://weft.local/service/web"));
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
}

#[tokio::test]
async fn a_token_grants_exactly_one_identity() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["service", "create", "db", "--protocol", "tcp"]);
    let web_token = cp.token_for(DataplaneKind::Sidecar, "web").await;

    // A token for web cannot obtain db, nor a gateway identity.
    for id in [
        spiffe(IdentityKind::Service, "db"),
        spiffe(IdentityKind::Gateway, "web"),
    ] {
        let (_k, csr) = generate_csr(&id).unwrap();
        let err = issue(&cp, csr, &web_token).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{id}: {err:?}");
    }

    // A CSR that asks for more than the identity (an extra DNS SAN) is refused.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://weft.local/service/web".try_into().unwrap(),
    ));
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let err = issue(&cp, csr, &web_token).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().to_lowercase().contains("san"),
        "{}",
        err.message()
    );

    // Garbage is a bad CSR, named as such.
    let err = issue(&cp, "not a csr".into(), &web_token)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // A forged token (signature from another key) and no credentials at all.
    let mut claims = weft_certs::token::parse_unverified(&web_token).unwrap();
    claims.name = "db".into();
    let forged = claims.sign(b"not the control plane's key");
    let (_k, csr) = generate_csr(&spiffe(IdentityKind::Service, "db")).unwrap();
    let err = issue(&cp, csr.clone(), &forged).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = issue(&cp, csr, "").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn revoked_and_expired_tokens_are_refused_with_their_reason() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let id = spiffe(IdentityKind::Service, "web");

    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let claims = weft_certs::token::parse_unverified(&token).unwrap();
    let (_k, csr) = generate_csr(&id).unwrap();
    issue(&cp, csr.clone(), &token).await.unwrap();
    cp.weftctl_ok(&["token", "revoke", &claims.id]);
    let err = issue(&cp, csr.clone(), &token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("revoked") && err.message().contains("token create"),
        "{}",
        err.message()
    );

    let short = cp
        .admin()
        .await
        .create_token(CreateTokenRequest {
            kind: DataplaneKind::Sidecar as i32,
            name: "web".into(),
            ttl_seconds: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let err = issue(&cp, csr, &short).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());
}

#[tokio::test]
async fn renewal_uses_the_current_certificate_instead_of_a_token() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let dp = DataplaneIdentity::bootstrap(&cp.url(), &token).await;
    // Renewal needs no token (revoking the token does stop it: see authz_cp.rs).
    let (_k, csr) = generate_csr(&spiffe(IdentityKind::Service, "web")).unwrap();
    let resp = IdentityClient::new(dp.channel.clone())
        .issue_certificate(IssueCertificateRequest {
            csr_pem: csr,
            token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.spiffe_id, "spiffe://weft.local/service/web");

    // But the certificate only renews its own identity.
    let (_k, csr) = generate_csr(&spiffe(IdentityKind::Service, "db")).unwrap();
    let err = IdentityClient::new(dp.channel.clone())
        .issue_certificate(IssueCertificateRequest {
            csr_pem: csr,
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn an_sqlite_store_gets_its_ca_key_sealed_when_a_secret_is_given_and_then_needs_it() {
    let mut cp = ControlPlane::start(&[]).await;
    let sha = cp.weftctl_ok(&["ca", "show", "-o", "json"]);
    let secret = cp.data_dir.parent().unwrap().join("ca-key-secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
    let secret_arg = secret.display().to_string();

    // The same CA, now sealed: it still signs.
    cp.restart_with(&["--ca-key-secret", &secret_arg]).await;
    assert_eq!(cp.weftctl_ok(&["ca", "show", "-o", "json"]), sha);
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let dp = DataplaneIdentity::bootstrap(&cp.url(), &token).await;
    assert_eq!(
        dp.manager.current().identity.spiffe_id().to_string(),
        "spiffe://weft.local/service/web"
    );

    // Without the secret the key cannot be used: start-up says what to pass.
    cp.kill9();
    let out = std::process::Command::new(weft_tests::bin("weft-cp"))
        .arg("--data-dir")
        .arg(&cp.data_dir)
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("encrypted; pass --ca-key-secret"), "{err}");
}

/// Runs `weft-sidecar run` with `token` against `cp_url` and waits up to `within` for
/// it to exit: Some((success, log)) if it did, None if it was still running (then killed).
fn sidecar_exit(cp_url: &str, token: &str, within: Duration) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sidecar.log");
    let port = |p: u16| format!("127.0.0.1:{p}");
    let mut child = std::process::Command::new(weft_tests::bin("weft-sidecar"))
        .args(["run", "--cp", cp_url, "--token", token, "--service", "web"])
        .args(["--app", &port(weft_tests::free_port())])
        .args(["--inbound", &port(weft_tests::free_port())])
        .args(["--admin", &port(weft_tests::free_port())])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    status.map(|s| (s.success(), text))
}

#[tokio::test]
async fn a_sidecar_gives_up_on_a_refused_token_and_waits_for_an_unreachable_control_plane() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let claims = weft_certs::token::parse_unverified(&token).unwrap();
    cp.weftctl_ok(&["token", "revoke", &claims.id]);

    // A refusal does not pass by retrying: the sidecar exits and says why.
    let (ok, log) = sidecar_exit(&cp.url(), &token, Duration::from_secs(20))
        .expect("a sidecar with a revoked token must exit, not retry forever");
    assert!(!ok, "{log}");
    assert!(log.contains("revoked"), "{log}");

    // A control plane that does not answer may come back: the sidecar keeps trying.
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let nobody = format!("https://127.0.0.1:{}", weft_tests::free_port());
    assert!(
        sidecar_exit(&nobody, &token, Duration::from_secs(3)).is_none(),
        "a sidecar whose control plane is unreachable must keep retrying"
    );
}
