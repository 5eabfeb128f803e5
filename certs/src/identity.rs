//! A workload's own identity (leaf chain + private key), CSR generation and certificate
//! inspection helpers shared by the rest of the crate.

use std::fmt;
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
};
use ring::digest;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::error::CertError;
use crate::spiffe::SpiffeId;
use crate::tls::provider;

/// A workload's credentials: its certificate chain (leaf first), the leaf's private key and
/// the SPIFFE id the leaf carries.
///
/// Cloning is cheap (the signing key is shared behind an `Arc`), so an `Identity` can be
/// handed to every connection that needs it. The `Debug` output never shows the key.
#[derive(Clone)]
pub struct Identity {
    spiffe_id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    chain_pem: String,
    key_pem: String,
    certified: Arc<CertifiedKey>,
    not_before: i64,
    not_after: i64,
}

impl Identity {
    /// Loads a chain (leaf first, then optional intermediates/root) and the leaf's key.
    ///
    /// Fails when the key does not belong to the leaf, or when the leaf does not carry exactly
    /// one valid SPIFFE URI SAN: an identity without a SPIFFE id would be useless in the mesh,
    /// so it is better refused at load time than at the first handshake.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let chain = parse_cert_chain(chain_pem, "certificate chain")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| pem_error(e, "private key", "PRIVATE KEY"))?;
        let leaf = chain.first().ok_or(CertError::MissingPem {
            what: "certificate chain",
            label: "CERTIFICATE",
        })?;
        let spiffe_id = spiffe_id_of(leaf)?;
        let (not_before, not_after) = validity_of(leaf)?;

        let provider = provider();
        let signing_key =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| CertError::Decode {
                    what: "private key",
                    detail: e.to_string(),
                })?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        // Strict: unlike CertifiedKey::from_der we also refuse "unknown" consistency, since
        // every key type we support can report its public key.
        certified
            .keys_match()
            .map_err(|_| CertError::KeyMismatch { what: "leaf" })?;

        Ok(Identity {
            spiffe_id,
            chain,
            chain_pem: chain_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            certified: Arc::new(certified),
            not_before,
            not_after,
        })
    }

    /// The SPIFFE id of the leaf.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The leaf's notBefore, unix seconds.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// The leaf's notAfter, unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The chain, leaf first, as DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The chain as it was loaded (PEM).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The private key (PKCS#8 PEM). Handle with care: this is the workload's secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The chain and key in the form rustls signs with; useful for custom cert resolvers that
    /// swap identities on rotation without rebuilding a whole config.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id.uri())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.chain.len())
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Makes a fresh ECDSA P-256 key and a CSR whose only SAN is `id`'s URI (subject CN = name).
///
/// Returns `(key_pem, csr_pem)`. The key is generated here, in the workload's process, and
/// never needs to leave it: only the CSR travels to the control plane.
pub fn generate_csr(id: &SpiffeId) -> Result<(String, String), CertError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.name());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(id.uri().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Extracts the single SPIFFE URI SAN of a DER certificate.
///
/// Non-`spiffe://` URI SANs are ignored; zero or several SPIFFE URIs are an error, because a
/// certificate that claims two identities cannot be authorised as either.
pub fn spiffe_id_of(cert_der: &[u8]) -> Result<SpiffeId, CertError> {
    let cert = parse_x509(cert_der, "certificate")?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Decode {
            what: "subjectAltName extension",
            detail: e.to_string(),
        })?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(CertError::NoSpiffeId),
        [one] => Ok(SpiffeId::parse(one)?),
        many => Err(CertError::MultipleSpiffeIds(many.len())),
    }
}

/// Lowercase hex of a DER certificate's serial number, as the control plane records
/// and revokes it.
pub fn serial_hex(cert_der: &[u8]) -> Result<String, CertError> {
    Ok(hex(parse_x509(cert_der, "certificate")?
        .tbs_certificate
        .raw_serial()))
}

/// Lowercase hex SHA-256 of `bytes` (certificate fingerprints, as in bootstrap tokens).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Parses every CERTIFICATE block of `pem_text`; at least one is required.
pub(crate) fn parse_cert_chain(
    pem_text: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem_text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e, what, "CERTIFICATE"))?;
    if certs.is_empty() {
        return Err(CertError::MissingPem {
            what,
            label: "CERTIFICATE",
        });
    }
    for cert in &certs {
        parse_x509(cert, what)?;
    }
    Ok(certs)
}

/// Parses a DER certificate with x509-parser, refusing trailing garbage.
pub(crate) fn parse_x509<'a>(
    der: &'a [u8],
    what: &'static str,
) -> Result<X509Certificate<'a>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertError::Decode {
            what,
            detail: "trailing bytes after the certificate".to_owned(),
        }),
        Err(e) => Err(CertError::Decode {
            what,
            detail: e.to_string(),
        }),
    }
}

/// notBefore/notAfter of a DER certificate, unix seconds.
pub(crate) fn validity_of(der: &[u8]) -> Result<(i64, i64), CertError> {
    let cert = parse_x509(der, "certificate")?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

pub(crate) fn pem_error(e: pem::Error, what: &'static str, label: &'static str) -> CertError {
    match e {
        pem::Error::NoItemsFound => CertError::MissingPem { what, label },
        other => CertError::Decode {
            what,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe::{IdentityKind, TrustDomain};

    #[test]
    fn hex_and_sha() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f]), "00ab0f");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn csr_carries_only_the_uri_san() {
        let td = TrustDomain::new("weft.local").unwrap();
        let id = SpiffeId::new(&td, IdentityKind::Service, "web").unwrap();
        let (key_pem, csr_pem) = generate_csr(&id).unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let params = rcgen::CertificateSigningRequestParams::from_pem(&csr_pem).unwrap();
        assert_eq!(params.params.subject_alt_names.len(), 1);
        assert!(matches!(
            &params.params.subject_alt_names[0],
            SanType::URI(u) if u.as_str() == "spiffe://weft.local/service/web"
        ));
    }

    #[test]
    fn garbage_is_refused() {
        assert!(matches!(
            Identity::from_pem("nothing", "nothing"),
            Err(CertError::MissingPem { .. })
        ));
        assert!(spiffe_id_of(b"not a cert").is_err());
    }
}
