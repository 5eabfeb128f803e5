//! The trust bundle: the set of mesh CA roots a workload accepts peers from.
//!
//! It is a set rather than a single root so the CA can be rotated without downtime: the
//! control plane first pushes `{old, new}`, then starts issuing from the new root, and only
//! drops the old root once every leaf signed by it has expired.

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

use crate::error::CertError;
use crate::identity::{parse_cert_chain, parse_x509, sha256_hex};

/// One or more trusted CA root certificates.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

impl TrustBundle {
    /// Parses every CERTIFICATE block of `pem`; zero blocks is an error.
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        Self::from_ders(parse_cert_chain(pem, "trust bundle")?)
    }

    /// Builds a bundle from DER roots.
    ///
    /// Every root must be a CA certificate usable as a rustls trust anchor; duplicates are
    /// dropped (a bundle pushed twice with the same root must not grow). Checking here means
    /// [`TrustBundle::root_store`] cannot silently lose a root later.
    pub fn from_ders(ders: Vec<CertificateDer<'static>>) -> Result<Self, CertError> {
        if ders.is_empty() {
            return Err(CertError::MissingPem {
                what: "trust bundle",
                label: "CERTIFICATE",
            });
        }
        let mut roots: Vec<CertificateDer<'static>> = Vec::with_capacity(ders.len());
        for der in ders {
            let cert = parse_x509(&der, "trust bundle root")?;
            let is_ca = cert
                .basic_constraints()
                .ok()
                .flatten()
                .is_some_and(|bc| bc.value.ca);
            if !is_ca {
                return Err(CertError::NotACa {
                    what: format!("trust bundle root \"{}\"", cert.subject()),
                    reason: "basicConstraints CA:TRUE is missing",
                });
            }
            let mut probe = RootCertStore::empty();
            probe.add(der.clone()).map_err(|e| CertError::Decode {
                what: "trust bundle root",
                detail: e.to_string(),
            })?;
            if !roots.contains(&der) {
                roots.push(der);
            }
        }
        Ok(TrustBundle { roots })
    }

    /// The bundle as concatenated PEM blocks (the form pushed to sidecars and stored on disk).
    pub fn to_pem(&self) -> String {
        self.roots.iter().map(|der| der_to_pem(der)).collect()
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// A rustls root store holding every root.
    pub fn root_store(&self) -> RootCertStore {
        let mut store = RootCertStore::empty();
        // Every root was checked to be a valid anchor in `from_ders`.
        store.add_parsable_certificates(self.roots.iter().cloned());
        store
    }

    /// Lowercase hex SHA-256 of each root's DER, in bundle order.
    pub fn sha256_hexes(&self) -> Vec<String> {
        self.roots.iter().map(|r| sha256_hex(r)).collect()
    }

    /// Whether a root with this SHA-256 (hex, any case) is in the bundle.
    pub fn contains_sha256(&self, hex: &str) -> bool {
        let hex = hex.to_ascii_lowercase();
        self.sha256_hexes().contains(&hex)
    }
}

impl std::fmt::Debug for TrustBundle {
    /// Fingerprints rather than raw DER, so bundles are readable in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("sha256", &self.sha256_hexes())
            .finish()
    }
}

/// PEM-encodes a DER certificate (64-column base64, LF line endings).
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
