//! The CA: generation, loading, CSR policy and the fields of issued leaves.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is a test failure

mod common;

use std::time::Duration;

use common::{DAY, svc, td};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use weft_certs::{
    CertError, CertificateAuthority, CsrError, Identity, IdentityKind, SpiffeId, TrustBundle,
    generate_csr, sha256_hex, spiffe_id_of,
};
use x509_parser::prelude::*;

fn now() -> i64 {
    ::time::OffsetDateTime::now_utc().unix_timestamp()
}

fn ders(chain_pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// A CSR for arbitrary SANs, signed with `key`.
fn csr_with(key: &KeyPair, sans: Vec<SanType>) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

#[test]
fn generated_ca_is_a_p256_root() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let (_, cert) = X509Certificate::from_der(ca.cert_der()).unwrap();
    assert_eq!(cert.subject(), cert.issuer(), "self-signed");
    cert.verify_signature(None).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "Weft mesh CA weft.local");
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.digital_signature());
    let curve = cert
        .public_key()
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, x509_parser::oid_registry::OID_EC_P256);
    let ten_years = 10 * 365 * 24 * 3600;
    assert!((ca.not_after() - now() - ten_years).abs() < 120);
    assert!(ca.not_before() <= now());
    assert_eq!(ca.sha256_hex(), sha256_hex(ca.cert_der()));
    assert_eq!(ca.sha256_hex().len(), 64);
    assert!(ca.key_pem().contains("BEGIN PRIVATE KEY"));
}

#[test]
fn leaf_fields() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let id = svc("billing");
    let (key_pem, csr_pem) = generate_csr(&id).unwrap();
    let ttl = Duration::from_secs(3600);
    let issued = ca.issue_from_csr(&csr_pem, &id, ttl).unwrap();
    assert_eq!(issued.spiffe_id, id);

    let chain = ders(&issued.chain_pem);
    assert_eq!(chain.len(), 2, "leaf then CA");
    assert_eq!(chain[1].as_ref(), ca.cert_der());
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(ca.cert_der()).unwrap();

    assert_eq!(leaf.issuer(), ca_cert.subject());
    leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
    let cn = leaf.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "billing");

    let sans = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(sans.len(), 1);
    assert_eq!(
        sans[0],
        GeneralName::URI("spiffe://weft.local/service/billing")
    );

    let bc = leaf.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing);

    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    assert_eq!((nb, na), (issued.not_before, issued.not_after));
    assert!((now() - 60 - nb).abs() <= 2, "back-dated by 60 s");
    assert!((na - now() - 3600).abs() <= 2, "validity = ttl");
    assert_eq!(leaf.raw_serial().len(), 16);

    // Serials are random.
    let again = ca.issue_from_csr(&csr_pem, &id, ttl).unwrap();
    let again_chain = ders(&again.chain_pem);
    let (_, leaf2) = X509Certificate::from_der(&again_chain[0]).unwrap();
    assert_ne!(leaf.raw_serial(), leaf2.raw_serial());

    let identity = Identity::from_pem(&issued.chain_pem, &key_pem).unwrap();
    assert_eq!(identity.spiffe_id(), &id);
    assert_eq!(identity.not_after(), na);
    assert_eq!(identity.chain().len(), 2);
    assert_eq!(spiffe_id_of(&chain[0]).unwrap(), id);
}

#[test]
fn ttl_is_capped_and_validated() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let id = svc("a");
    let (_, csr) = generate_csr(&id).unwrap();
    let issued = ca
        .issue_from_csr(&csr, &id, Duration::from_secs(100 * 365 * 24 * 3600))
        .unwrap();
    assert_eq!(issued.not_after, ca.not_after());
    assert!(matches!(
        ca.issue_from_csr(&csr, &id, Duration::from_millis(10)),
        Err(CsrError::InvalidTtl(_))
    ));
}

#[test]
fn csr_with_extra_dns_san_is_refused() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let id = svc("web");
    let key = KeyPair::generate().unwrap();
    let csr = csr_with(
        &key,
        vec![
            uri(&id.uri()),
            SanType::DnsName("evil.example".try_into().unwrap()),
        ],
    );
    let err = ca.issue_from_csr(&csr, &id, DAY).unwrap_err();
    assert_eq!(
        err,
        CsrError::ExtraSans {
            extra: vec!["DNS:evil.example".into()],
            allowed: id.uri()
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("DNS:evil.example") && msg.contains(&id.uri()),
        "{msg}"
    );

    let csr = csr_with(
        &key,
        vec![
            uri(&id.uri()),
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
        ],
    );
    assert!(matches!(
        ca.issue_from_csr(&csr, &id, DAY),
        Err(CsrError::ExtraSans { extra, .. }) if extra == ["IP:10.0.0.1"]
    ));
}

#[test]
fn csr_with_other_uri_is_refused() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let id = svc("web");
    let key = KeyPair::generate().unwrap();
    let other = svc("db").uri();
    let csr = csr_with(&key, vec![uri(&id.uri()), uri(&other)]);
    assert!(matches!(
        ca.issue_from_csr(&csr, &id, DAY),
        Err(CsrError::ExtraSans { extra, .. }) if extra == [format!("URI:{other}")]
    ));
    // The same URI twice is also one too many.
    let csr = csr_with(&key, vec![uri(&id.uri()), uri(&id.uri())]);
    assert!(matches!(
        ca.issue_from_csr(&csr, &id, DAY),
        Err(CsrError::ExtraSans { .. })
    ));
}

#[test]
fn csr_for_wrong_identity_is_refused() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let allowed = svc("web");
    let (_, csr) = generate_csr(&svc("db")).unwrap();
    let err = ca.issue_from_csr(&csr, &allowed, DAY).unwrap_err();
    assert_eq!(
        err,
        CsrError::WrongIdentity {
            asked: "spiffe://weft.local/service/db".into(),
            allowed: allowed.uri()
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://weft.local/service/db") && msg.contains(&allowed.uri()),
        "{msg}"
    );

    // Same name, other kind: a gateway token cannot obtain a service identity.
    let gw = SpiffeId::new(&td(), IdentityKind::Gateway, "web").unwrap();
    let (_, csr) = generate_csr(&gw).unwrap();
    assert!(matches!(
        ca.issue_from_csr(&csr, &allowed, DAY),
        Err(CsrError::WrongIdentity { .. })
    ));

    // No SAN at all.
    let key = KeyPair::generate().unwrap();
    let csr = csr_with(&key, vec![]);
    assert!(matches!(
        ca.issue_from_csr(&csr, &allowed, DAY),
        Err(CsrError::WrongIdentity { asked, .. }) if asked == "no URI SAN"
    ));
}

#[test]
fn csr_key_types() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let id = svc("web");
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let issued = ca
        .issue_from_csr(&csr_with(&ed, vec![uri(&id.uri())]), &id, DAY)
        .unwrap();
    Identity::from_pem(&issued.chain_pem, &ed.serialize_pem()).unwrap();

    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let err = ca
        .issue_from_csr(&csr_with(&p384, vec![uri(&id.uri())]), &id, DAY)
        .unwrap_err();
    assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err}");
}

#[test]
fn malformed_and_tampered_csrs_are_refused() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let id = svc("web");
    assert!(matches!(
        ca.issue_from_csr("hello", &id, DAY),
        Err(CsrError::Malformed(_))
    ));

    // Flip a byte inside the signed part: the signature must no longer verify.
    let (_, csr_pem) = generate_csr(&id).unwrap();
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .unwrap();
    let mut bytes = der.as_ref().to_vec();
    let pos = bytes
        .windows(3)
        .position(|w| w == b"web")
        .expect("subject CN in CSR");
    bytes[pos] = b'x';
    let tampered = pem_wrap("CERTIFICATE REQUEST", &bytes);
    assert_eq!(
        ca.issue_from_csr(&tampered, &id, DAY),
        Err(CsrError::BadSignature)
    );
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    // Reuse the crate's encoder through TrustBundle would need a CA; a tiny local encoder
    // keeps this test self-contained.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in der.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    format!("-----BEGIN {label}-----\n{s}\n-----END {label}-----\n")
}

#[test]
fn ca_from_pem_round_trip() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.sha256_hex(), ca.sha256_hex());
    assert_eq!(
        (loaded.not_before(), loaded.not_after()),
        (ca.not_before(), ca.not_after())
    );

    // A leaf from the reloaded CA chains to the original root.
    let id = svc("web");
    let (_, csr) = generate_csr(&id).unwrap();
    let issued = loaded.issue_from_csr(&csr, &id, DAY).unwrap();
    let chain = ders(&issued.chain_pem);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let (_, root) = X509Certificate::from_der(ca.cert_der()).unwrap();
    leaf.verify_signature(Some(root.public_key())).unwrap();
}

#[test]
fn ca_from_pem_refuses_mismatch_and_non_ca() {
    let a = CertificateAuthority::generate(&td()).unwrap();
    let b = CertificateAuthority::generate(&td()).unwrap();
    let err = CertificateAuthority::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
    assert!(
        matches!(err, CertError::KeyMismatch { what: "CA" }),
        "{err}"
    );

    // A leaf (with its own key) is not a CA.
    let id = svc("web");
    let (key, csr) = generate_csr(&id).unwrap();
    let issued = a.issue_from_csr(&csr, &id, DAY).unwrap();
    let leaf_pem = issued
        .chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .next()
        .unwrap();
    let err = CertificateAuthority::from_pem(leaf_pem, &key).unwrap_err();
    assert!(matches!(err, CertError::NotACa { .. }), "{err}");

    assert!(CertificateAuthority::from_pem("", a.key_pem()).is_err());
    assert!(CertificateAuthority::from_pem(a.cert_pem(), "junk").is_err());
}

#[test]
fn identity_from_pem_round_trip_and_mismatch() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let id = svc("web");
    let (key, csr) = generate_csr(&id).unwrap();
    let issued = ca.issue_from_csr(&csr, &id, DAY).unwrap();
    let identity = Identity::from_pem(&issued.chain_pem, &key).unwrap();
    let again = Identity::from_pem(identity.chain_pem(), identity.key_pem()).unwrap();
    assert_eq!(again.spiffe_id(), identity.spiffe_id());
    assert_eq!(again.chain(), identity.chain());
    assert!(
        !format!("{identity:?}").contains("PRIVATE"),
        "Debug must not leak the key"
    );

    let (other_key, _) = generate_csr(&id).unwrap();
    let err = Identity::from_pem(&issued.chain_pem, &other_key).unwrap_err();
    assert!(
        matches!(err, CertError::KeyMismatch { what: "leaf" }),
        "{err}"
    );

    // A certificate without a SPIFFE id is not an identity.
    let err = Identity::from_pem(ca.cert_pem(), ca.key_pem()).unwrap_err();
    assert!(matches!(err, CertError::NoSpiffeId), "{err}");
}

#[test]
fn server_cert_has_uri_dns_and_ip_sans() {
    let ca = CertificateAuthority::generate(&td()).unwrap();
    let id = SpiffeId::new(&td(), IdentityKind::ControlPlane, "cp").unwrap();
    let (issued, key) = ca
        .issue_server_cert(
            &id,
            &["cp.weft.local".into()],
            &["127.0.0.1".parse().unwrap()],
            DAY,
        )
        .unwrap();
    let chain = ders(&issued.chain_pem);
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let sans = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(
        sans,
        &vec![
            GeneralName::URI("spiffe://weft.local/control-plane/cp"),
            GeneralName::DNSName("cp.weft.local"),
            GeneralName::IPAddress(&[127, 0, 0, 1]),
        ]
    );
    let identity = Identity::from_pem(&issued.chain_pem, &key).unwrap();
    assert_eq!(identity.spiffe_id(), &id);
}

#[test]
fn bundle_round_trip() {
    let a = CertificateAuthority::generate(&td()).unwrap();
    let b = CertificateAuthority::generate(&td()).unwrap();
    let pem = format!("{}{}", a.cert_pem(), b.cert_pem());
    let bundle = TrustBundle::from_pem(&pem).unwrap();
    assert_eq!(bundle.roots().len(), 2);
    assert_eq!(bundle.sha256_hexes(), vec![a.sha256_hex(), b.sha256_hex()]);
    assert!(bundle.contains_sha256(&b.sha256_hex().to_uppercase()));
    assert_eq!(bundle.root_store().len(), 2);
    let again = TrustBundle::from_pem(&bundle.to_pem()).unwrap();
    assert_eq!(again, bundle);

    // Duplicates collapse; empty and non-CA inputs are refused.
    let dup = TrustBundle::from_pem(&format!("{}{}", a.cert_pem(), a.cert_pem())).unwrap();
    assert_eq!(dup.roots().len(), 1);
    assert!(TrustBundle::from_pem("").is_err());
    assert!(TrustBundle::from_ders(vec![]).is_err());
    let id = svc("web");
    let (_, csr) = generate_csr(&id).unwrap();
    let leaf = a.issue_from_csr(&csr, &id, DAY).unwrap();
    let leaf_only = ders(&leaf.chain_pem).remove(0);
    assert!(matches!(
        TrustBundle::from_ders(vec![leaf_only]),
        Err(CertError::NotACa { .. })
    ));
}

#[test]
fn shared_types_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CertificateAuthority>();
    check::<Identity>();
    check::<TrustBundle>();
    check::<weft_certs::IdentityManager>();
    check::<CertError>();
}
