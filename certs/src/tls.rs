//! rustls configurations for every kind of connection in the mesh.
//!
//! All configs are built with an explicit ring [`CryptoProvider`], so no process-wide default
//! provider has to be installed (and two crates in one binary cannot disagree about it).
//!
//! Why custom verifiers: rustls verifies a server against a DNS name or IP, but mesh peers
//! are identified by the SPIFFE URI SAN in their certificate. [`mesh_client_config`]
//! therefore still runs the full webpki chain/time/EKU/signature checks against the trust
//! bundle, ignores the `ServerName`, and then compares the leaf's SPIFFE id with the one the
//! caller expects. [`pinned_ca_client_config`] does the same trick for first contact with
//! the control plane, where the only trust the sidecar has is a CA fingerprint in its token.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme, SupportedProtocolVersion,
};

use crate::bundle::TrustBundle;
use crate::error::CertError;
use crate::identity::{Identity, serial_hex, sha256_hex, spiffe_id_of};
use crate::revocation::Revocations;
use crate::spiffe::SpiffeId;

/// TLS 1.3 only: the mesh tunnel between Weft components.
static MESH_VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
/// TLS 1.2 and 1.3: the control-plane endpoint, which stock gRPC tooling also talks to.
static CP_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The ring crypto provider all configs of this crate use.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// [`provider`] with AES-128-GCM first, for connections between Weft components: both
/// ends are ours, so the order chosen here is the suite used. AES-128 runs 10 AES rounds
/// per block where AES-256 runs 14, and on the tunnel every byte a mesh carries is
/// sealed once and opened once, so this is a measurable share of a bulk stream's CPU
/// (see docs/benchmarks.md). AES-128-GCM is TLS 1.3's mandatory suite and what
/// BoringSSL-based proxies prefer; AES-256-GCM and ChaCha20-Poly1305 stay offered.
fn mesh_provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    let aes128 = rustls::CipherSuite::TLS13_AES_128_GCM_SHA256;
    p.cipher_suites.sort_by_key(|s| s.suite() != aes128);
    Arc::new(p)
}

/// Mesh server: TLS 1.3, requires a client certificate that chains to `bundle` and carries
/// exactly one SPIFFE id. Read the caller's id with [`peer_spiffe_id`] after the handshake;
/// authorisation (which ids may connect) is the caller's business.
pub fn mesh_server_config(
    id: &Identity,
    bundle: &TrustBundle,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, CertError> {
    server_config(mesh_provider(), id, bundle, alpn, MESH_VERSIONS, true, None)
}

/// [`mesh_server_config`] that also refuses client certificates listed in `revoked`
/// (read at each handshake, so a list pushed later applies to the same config).
pub fn mesh_server_config_with_revocations(
    id: &Identity,
    bundle: &TrustBundle,
    alpn: &[&[u8]],
    revoked: &Arc<Revocations>,
) -> Result<Arc<ServerConfig>, CertError> {
    server_config(
        mesh_provider(),
        id,
        bundle,
        alpn,
        MESH_VERSIONS,
        true,
        Some(revoked.clone()),
    )
}

/// Control-plane server: like [`mesh_server_config`] but client certificates are optional
/// (`weftctl` and bootstrapping sidecars have none) and TLS 1.2 is allowed for tooling.
/// A certificate that *is* presented must still chain to `bundle`.
pub fn control_plane_server_config(
    id: &Identity,
    bundle: &TrustBundle,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, CertError> {
    server_config(provider(), id, bundle, alpn, CP_VERSIONS, false, None)
}

fn server_config(
    provider: Arc<CryptoProvider>,
    id: &Identity,
    bundle: &TrustBundle,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
    client_cert_required: bool,
    revoked: Option<Arc<Revocations>>,
) -> Result<Arc<ServerConfig>, CertError> {
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(bundle.root_store()),
        Arc::clone(&provider),
    );
    let builder = if client_cert_required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    let verifier = Arc::new(SpiffeClientVerifier {
        inner: builder.build()?,
        revoked,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(id.certified_key())));
    config.alpn_protocols = alpn_list(alpn);
    Ok(Arc::new(config))
}

/// Mesh client: TLS 1.3, presents `id`, verifies the server's chain against `bundle`, and
/// accepts the server only if its leaf's SPIFFE id equals `expected`. The `ServerName` used
/// to connect (SNI, e.g. for ingress routing) plays no part in the identity decision.
pub fn mesh_client_config(
    id: &Identity,
    bundle: &TrustBundle,
    expected: &SpiffeId,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, CertError> {
    client_config(id, bundle, expected, alpn, None)
}

/// [`mesh_client_config`] that also refuses server certificates listed in `revoked`.
pub fn mesh_client_config_with_revocations(
    id: &Identity,
    bundle: &TrustBundle,
    expected: &SpiffeId,
    alpn: &[&[u8]],
    revoked: &Arc<Revocations>,
) -> Result<Arc<ClientConfig>, CertError> {
    client_config(id, bundle, expected, alpn, Some(revoked.clone()))
}

fn client_config(
    id: &Identity,
    bundle: &TrustBundle,
    expected: &SpiffeId,
    alpn: &[&[u8]],
    revoked: Option<Arc<Revocations>>,
) -> Result<Arc<ClientConfig>, CertError> {
    let provider = mesh_provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: bundle.root_store(),
        expected: expected.clone(),
        algs: provider.signature_verification_algorithms,
        revoked,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(MESH_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(id.certified_key())));
    config.alpn_protocols = alpn_list(alpn);
    Ok(Arc::new(config))
}

/// Client for the control-plane endpoint: standard webpki verification against `bundle`
/// for the `ServerName` (DNS or IP SAN), TLS 1.2/1.3, and `client` as the client
/// certificate when the sidecar already holds an identity.
pub fn control_plane_client_config(
    bundle: &TrustBundle,
    client: Option<&Identity>,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, CertError> {
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(bundle.root_store()),
        Arc::clone(&provider),
    )
    .build()?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(CP_VERSIONS)?
        .with_webpki_verifier(verifier);
    let mut config = match client {
        Some(id) => {
            builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(id.certified_key())))
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn_list(alpn);
    Ok(Arc::new(config))
}

/// Bootstrap client (first contact, before the sidecar holds the trust bundle): accepts the
/// server if its presented chain contains a CA certificate whose SHA-256 (of DER) equals
/// `ca_sha256_hex`, and the leaf verifies for the `ServerName` with that CA as the only root.
///
/// This is how a bootstrap token, which carries the CA fingerprint, pins the control plane
/// without any prior trust store. TLS 1.2/1.3, no client certificate.
pub fn pinned_ca_client_config(
    ca_sha256_hex: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, CertError> {
    let pin = parse_fingerprint(ca_sha256_hex)?;
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        pin,
        algs: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(CP_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = alpn_list(alpn);
    Ok(Arc::new(config))
}

/// The peer's SPIFFE id from the certificates a rustls connection reports (first = leaf).
/// `None` when the peer sent no certificate or its leaf has no single valid SPIFFE id.
pub fn peer_spiffe_id(certs: Option<&[CertificateDer<'_>]>) -> Option<SpiffeId> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| spiffe_id_of(leaf).ok())
}

/// Checks that `chain` (leaf first) verifies against `bundle` right now, ignoring names.
///
/// Used before publishing a freshly issued identity: a certificate that peers would refuse
/// is no better than no renewal at all.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    bundle: &TrustBundle,
) -> Result<(), CertError> {
    let (leaf, intermediates) = chain.split_first().ok_or(CertError::MissingPem {
        what: "certificate chain",
        label: "CERTIFICATE",
    })?;
    let parsed =
        ParsedCertificate::try_from(leaf).map_err(|e| CertError::Untrusted(e.to_string()))?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &bundle.root_store(),
        intermediates,
        UnixTime::now(),
        provider().signature_verification_algorithms.all,
    )
    .map_err(|e| CertError::Untrusted(e.to_string()))
}

fn alpn_list(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|p| p.to_vec()).collect()
}

fn parse_fingerprint(hex: &str) -> Result<[u8; 32], CertError> {
    let bad = || CertError::BadFingerprint(hex.to_owned());
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A certificate problem reported through rustls; the Debug form is the message, because
/// rustls prints `CertificateError::Other` with `{:?}`.
struct PeerRejected(String);

impl fmt::Debug for PeerRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for PeerRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerRejected {}

fn rejected(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PeerRejected(
        msg,
    )))))
}

/// A revoked peer certificate, as a rustls error naming the serial.
fn check_not_revoked(
    revoked: Option<&Arc<Revocations>>,
    leaf: &CertificateDer<'_>,
    who: &str,
) -> Result<(), rustls::Error> {
    match revoked {
        Some(r) if r.is_revoked_cert(leaf) => Err(rejected(format!(
            "the {who} certificate (serial {}) was revoked by the control plane",
            serial_hex(leaf).unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

/// Server-side check: webpki client verification, plus "the leaf carries one SPIFFE id",
/// plus "it was not revoked" when a revocation list is attached.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Option<Arc<Revocations>>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        spiffe_id_of(end_entity)
            .map_err(|e| rejected(format!("client certificate is not a mesh identity: {e}")))?;
        check_not_revoked(self.revoked.as_ref(), end_entity, "client")?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The handshake-signature methods both server verifiers share: signatures are checked
/// with the verifier's `algs` (the crypto provider's algorithms); the verifiers differ
/// only in which certificates they accept.
macro_rules! handshake_signatures_by_algs {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// Client-side check for mesh peers: chain to the bundle, then SPIFFE id == expected,
/// then not revoked (when a revocation list is attached).
struct SpiffeServerVerifier {
    roots: RootCertStore,
    expected: SpiffeId,
    algs: WebPkiSupportedAlgorithms,
    revoked: Option<Arc<Revocations>>,
}

impl fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeServerVerifier")
            .field("expected", &self.expected.uri())
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let presented = spiffe_id_of(end_entity).map_err(|e| {
            rejected(format!(
                "expected peer {}, but its certificate has no usable SPIFFE id: {e}",
                self.expected
            ))
        })?;
        if presented != self.expected {
            return Err(rejected(format!(
                "expected peer {}, but it presented {presented}",
                self.expected
            )));
        }
        check_not_revoked(self.revoked.as_ref(), end_entity, "server")?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures_by_algs!();
}

/// Bootstrap check: the chain contains the pinned CA, and the leaf verifies under it alone.
struct PinnedCaVerifier {
    pin: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("pin", &crate::identity::hex(&self.pin))
            .finish()
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pin_hex = crate::identity::hex(&self.pin);
        let ca = intermediates
            .iter()
            .find(|c| sha256_hex(c) == pin_hex)
            .ok_or_else(|| {
                rejected(format!(
                    "the control plane did not present the CA with SHA-256 {pin_hex} from the \
                     bootstrap token; check the token belongs to this control plane"
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| sha256_hex(c) != pin_hex)
            .cloned()
            .collect();
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(&cert, &roots, &others, now, self.algs.all)?;
        rustls::client::verify_server_name(&cert, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures_by_algs!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parsing() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_fingerprint(&hex).unwrap(), [0xab; 32]);
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
        assert!(pinned_ca_client_config("nope", &[]).is_err());
    }

    #[test]
    fn no_peer_certs_means_no_id() {
        assert_eq!(peer_spiffe_id(None), None);
        assert_eq!(peer_spiffe_id(Some(&[])), None);
    }
}
