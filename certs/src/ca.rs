//! The mesh certificate authority, held by the control plane.
//!
//! The CA never sees workload private keys: sidecars send CSRs and the CA copies nothing from
//! a CSR except its public key. Every other field of the leaf (names, usages, lifetime) is
//! decided here, so a crafted CSR cannot obtain more than its caller is entitled to.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
    SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;

use crate::bundle::der_to_pem;
use crate::error::{CertError, CsrError};
use crate::identity::{parse_x509, pem_error, sha256_hex};
use crate::spiffe::{SpiffeId, TrustDomain};

/// How far back a leaf's notBefore is set, so a peer whose clock is slightly behind ours
/// does not reject a certificate that was just issued.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
/// Lifetime of a generated CA root (about ten years): long enough that CA rotation is a
/// planned operation, not an emergency.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Bytes of randomness in certificate serial numbers (RFC 5280 allows up to 20 octets).
const SERIAL_LEN: usize = 16;

/// A certificate issued by the CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// Leaf certificate then the CA certificate, PEM.
    pub chain_pem: String,
    /// notBefore of the leaf, unix seconds.
    pub not_before: i64,
    /// notAfter of the leaf, unix seconds.
    pub not_after: i64,
    /// The identity in the leaf's URI SAN.
    pub spiffe_id: SpiffeId,
    /// Lowercase hex of the leaf's serial number (see [`crate::serial_hex`]).
    pub serial: String,
}

/// The mesh CA: its certificate and signing key.
///
/// `Send + Sync`, so the control plane can share one behind an `Arc` between request handlers.
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    not_before: i64,
    not_after: i64,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("sha256", &self.sha256_hex())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl CertificateAuthority {
    /// Generates a new self-signed ECDSA P-256 root for `td`: CA:TRUE with pathlen 0 (it
    /// signs leaves only), keyCertSign + cRLSign, CN `"Weft mesh CA <td>"`, about ten years.
    pub fn generate(td: &TrustDomain) -> Result<Self, CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = now_unix();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        // Distinct per key: during CA rotation old and new roots sit side by side in the
        // bundle, and identical subject names would make path building and diagnostics
        // (rustls, openssl) try the wrong root first.
        let key_id = sha256_hex(key.public_key_raw());
        dn.push(
            DnType::OrganizationalUnitName,
            format!("key {}", key_id.get(..16).unwrap_or(&key_id)),
        );
        dn.push(DnType::CommonName, format!("Weft mesh CA {}", td.as_str()));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial().map_err(CertError::Generate)?);
        params.not_before = to_datetime(now.saturating_sub(secs(CLOCK_SKEW_ALLOWANCE)))
            .map_err(CertError::Generate)?;
        params.not_after =
            to_datetime(now.saturating_add(secs(CA_VALIDITY))).map_err(CertError::Generate)?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Self::assemble(cert.der().clone(), cert_pem, key, key_pem)
    }

    /// Loads a CA from its certificate and PKCS#8 private key (PEM).
    ///
    /// Refuses a key that does not belong to the certificate and a certificate that is not a
    /// CA (basicConstraints CA:TRUE, and keyCertSign if keyUsage is present): either mistake
    /// would otherwise only show up as every sidecar failing its handshakes.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| pem_error(e, "CA certificate", "CERTIFICATE"))?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| CertError::Decode {
            what: "CA private key",
            detail: format!("{e} (the key must be an unencrypted PKCS#8 \"PRIVATE KEY\")"),
        })?;
        Self::assemble(cert_der, cert_pem.to_owned(), key, key_pem.to_owned())
    }

    fn assemble(
        cert_der: CertificateDer<'static>,
        cert_pem: String,
        key: KeyPair,
        key_pem: String,
    ) -> Result<Self, CertError> {
        let cert = parse_x509(&cert_der, "CA certificate")?;
        let subject = cert.subject().to_string();
        let not_a_ca = |reason| CertError::NotACa {
            what: format!("\"{subject}\""),
            reason,
        };
        let bc = cert
            .basic_constraints()
            .map_err(|_| not_a_ca("its basicConstraints extension is malformed"))?;
        if !bc.is_some_and(|bc| bc.value.ca) {
            return Err(not_a_ca("basicConstraints CA:TRUE is missing"));
        }
        let ku = cert
            .key_usage()
            .map_err(|_| not_a_ca("its keyUsage extension is malformed"))?;
        if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
            return Err(not_a_ca("keyUsage lacks keyCertSign"));
        }
        if cert.public_key().subject_public_key.data.as_ref()
            != rcgen::PublicKeyData::der_bytes(&key)
        {
            return Err(CertError::KeyMismatch { what: "CA" });
        }
        let validity = cert.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        if not_after <= now_unix() {
            tracing::warn!(
                ca = %subject,
                not_after,
                "the mesh CA certificate has expired; it cannot issue certificates until the CA is rotated"
            );
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(CertificateAuthority {
            cert_pem,
            key_pem,
            cert_der,
            issuer,
            not_before,
            not_after,
        })
    }

    /// The CA certificate, PEM (as given to `from_pem`, or as generated).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PKCS#8 PEM. Store it with owner-only permissions.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Lowercase hex SHA-256 of the CA certificate DER: the fingerprint bootstrap tokens carry.
    pub fn sha256_hex(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// notBefore of the CA certificate, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// notAfter of the CA certificate, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// Verifies a workload's CSR and signs a leaf for `expected`.
    ///
    /// The CSR must be correctly self-signed, carry an ECDSA P-256 or Ed25519 key, and ask for
    /// exactly one subject alternative name: the URI SAN `expected.uri()`. Anything else is
    /// refused rather than silently dropped, so a misconfigured sidecar learns why its
    /// request failed. The leaf gets a random 16-byte serial, notBefore = now - 60 s,
    /// notAfter = now + `ttl` (capped at the CA's notAfter), CA:FALSE, digitalSignature,
    /// serverAuth + clientAuth, CN = name. Returns the chain PEM (leaf, then CA).
    pub fn issue_from_csr(
        &self,
        csr_pem: &str,
        expected: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert, CsrError> {
        let csr_der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
                .map_err(|e| CsrError::Malformed(e.to_string()))?;
        let csr = match X509CertificationRequest::from_der(&csr_der) {
            Ok(([], csr)) => csr,
            Ok(_) => return Err(CsrError::Malformed("trailing bytes after the CSR".into())),
            Err(e) => return Err(CsrError::Malformed(e.to_string())),
        };
        let spki = &csr.certification_request_info.subject_pki;
        check_key_type(spki)?;
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
        check_sans(&csr, expected)?;

        let public_key = SubjectPublicKeyInfo::from_der(spki.raw)
            .map_err(|e| CsrError::UnsupportedKey(e.to_string()))?;
        let params = self.leaf_params(expected, &[], &[], ttl)?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| CsrError::Signing(e.to_string()))?;
        self.finish(cert.der(), expected, &params)
    }

    /// Issues a certificate for the control plane's own TLS listener.
    ///
    /// The key is generated here because this process is the CA's host and the key's user;
    /// it never travels. SANs: the URI of `id`, then `dns_names`, then `ips`, so both SPIFFE
    /// peers and ordinary TLS clients (`weftctl`, grpcurl) can verify it. Returns the issued
    /// chain and the key (PKCS#8 PEM).
    pub fn issue_server_cert(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(IssuedCert, String), CertError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = self.leaf_params(id, dns_names, ips, ttl)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let issued = self.finish(cert.der(), id, &params)?;
        Ok((issued, key.serialize_pem()))
    }

    /// The leaf template; only the public key differs between CSR and server issuance.
    fn leaf_params(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<CertificateParams, CsrError> {
        if ttl < Duration::from_secs(1) {
            return Err(CsrError::InvalidTtl(format!(
                "{ttl:?} is shorter than one second; ask for a lifetime of at least a few minutes"
            )));
        }
        let now = now_unix();
        if now >= self.not_after {
            return Err(CsrError::CaExpired);
        }
        let not_before = now
            .saturating_sub(secs(CLOCK_SKEW_ALLOWANCE))
            .max(self.not_before);
        let not_after = now.saturating_add(secs(ttl)).min(self.not_after);

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.name());
        params.distinguished_name = dn;
        params.not_before = to_datetime(not_before).map_err(CsrError::Signing)?;
        params.not_after = to_datetime(not_after).map_err(CsrError::Signing)?;
        params.serial_number = Some(random_serial().map_err(CsrError::Signing)?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let uri = id
            .uri()
            .try_into()
            .map_err(|e: rcgen::Error| CsrError::Signing(e.to_string()))?;
        let mut sans = vec![SanType::URI(uri)];
        for dns in dns_names {
            let name = dns.as_str().try_into().map_err(|e: rcgen::Error| {
                CsrError::Signing(format!("DNS name {dns:?} is not a valid SAN: {e}"))
            })?;
            sans.push(SanType::DnsName(name));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.subject_alt_names = sans;
        Ok(params)
    }

    fn finish(
        &self,
        leaf_der: &[u8],
        id: &SpiffeId,
        params: &CertificateParams,
    ) -> Result<IssuedCert, CsrError> {
        let mut chain_pem = der_to_pem(leaf_der);
        chain_pem.push_str(&der_to_pem(&self.cert_der));
        Ok(IssuedCert {
            chain_pem,
            not_before: params.not_before.unix_timestamp(),
            not_after: params.not_after.unix_timestamp(),
            spiffe_id: id.clone(),
            serial: crate::serial_hex(leaf_der).map_err(|e| CsrError::Signing(e.to_string()))?,
        })
    }
}

/// Only ECDSA P-256 and Ed25519 workload keys: both are fast, small, supported by every
/// rustls provider, and keep the mesh free of RSA key-size policy questions.
fn check_key_type(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_SIG_ED25519 {
        return Ok(());
    }
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => Ok(()),
            Some(c) => Err(CsrError::UnsupportedKey(format!("EC key on curve {c}"))),
            None => Err(CsrError::UnsupportedKey(
                "EC key without named curve".into(),
            )),
        };
    }
    Err(CsrError::UnsupportedKey(format!("key algorithm {alg}")))
}

/// The CSR must ask for exactly one SAN, the URI of `expected`.
fn check_sans(csr: &X509CertificationRequest<'_>, expected: &SpiffeId) -> Result<(), CsrError> {
    let allowed = expected.uri();
    let mut names = Vec::new();
    for attr in csr.certification_request_info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() {
            for ext in &req.extensions {
                if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                    names.extend(san.general_names.iter().map(describe_name));
                }
            }
        }
    }
    let wanted = format!("URI:{allowed}");
    let Some(pos) = names.iter().position(|n| *n == wanted) else {
        let uris: Vec<&str> = names
            .iter()
            .filter_map(|n| n.strip_prefix("URI:"))
            .collect();
        let asked = if uris.is_empty() {
            "no URI SAN".to_owned()
        } else {
            uris.join(", ")
        };
        return Err(CsrError::WrongIdentity { asked, allowed });
    };
    names.remove(pos);
    if !names.is_empty() {
        return Err(CsrError::ExtraSans {
            extra: names,
            allowed,
        });
    }
    Ok(())
}

fn describe_name(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::URI(u) => format!("URI:{u}"),
        GeneralName::DNSName(d) => format!("DNS:{d}"),
        GeneralName::RFC822Name(e) => format!("email:{e}"),
        GeneralName::IPAddress(octets) => match <[u8; 4]>::try_from(*octets) {
            Ok(v4) => format!("IP:{}", IpAddr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(*octets) {
                Ok(v6) => format!("IP:{}", IpAddr::from(v6)),
                Err(_) => format!("IP:<{} bytes>", octets.len()),
            },
        },
        GeneralName::DirectoryName(dn) => format!("dirName:{dn}"),
        GeneralName::OtherName(oid, _) => format!("otherName:{oid}"),
        GeneralName::RegisteredID(oid) => format!("registeredID:{oid}"),
        GeneralName::X400Address(_) => "x400Address".to_owned(),
        GeneralName::EDIPartyName(_) => "ediPartyName".to_owned(),
        GeneralName::Invalid(_, _) => "<invalid name>".to_owned(),
    }
}

fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; SERIAL_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_owned())?;
    // Positive, and never starting with a zero octet, so the DER INTEGER is exactly 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn to_datetime(unix: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| format!("invalid timestamp {unix}: {e}"))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

pub(crate) fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}
