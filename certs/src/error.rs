//! Error types of the crate.
//!
//! Three small enums, one per concern, so callers can match on what matters to them:
//! [`IdError`] for SPIFFE ids and names (user input, shown to operators by `weftctl`),
//! [`CsrError`] for certificate requests (sent back to a sidecar over gRPC, so it must tell
//! the sidecar's operator what was wrong), and [`CertError`] for everything else that
//! touches certificates, keys and TLS configuration.

use thiserror::Error;

/// A SPIFFE id, trust domain or workload name that does not follow Weft's rules.
///
/// The messages state the rule, because they end up in front of a person who typed a name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The trust domain is malformed.
    #[error(
        "invalid trust domain {value:?}: {reason}; a trust domain is 1 to 255 characters of \
         lowercase letters, digits, '.' and '-', not starting or ending with '.' or '-' \
         (for example \"weft.local\")"
    )]
    TrustDomain {
        /// What was given.
        value: String,
        /// Which part of the rule it breaks.
        reason: &'static str,
    },
    /// The workload name is malformed.
    #[error(
        "invalid name {value:?}: {reason}; a name is 1 to 63 characters of lowercase letters, \
         digits and '-', starting with a letter and not ending with '-' (for example \"billing-api\")"
    )]
    Name {
        /// What was given.
        value: String,
        /// Which part of the rule it breaks.
        reason: &'static str,
    },
    /// The URI is not a Weft SPIFFE id.
    #[error(
        "invalid SPIFFE id {value:?}: {reason}; expected \
         spiffe://<trust-domain>/<service|gateway|ingress|control-plane>/<name>"
    )]
    Uri {
        /// What was given.
        value: String,
        /// Which part of the form it breaks.
        reason: String,
    },
}

/// Why the CA refused (or failed) to sign a certificate signing request.
///
/// These errors are returned to the requesting sidecar, so each message names what was asked
/// and what would have been allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CsrError {
    /// The CSR could not be decoded.
    #[error(
        "malformed certificate signing request: {0}; send one PEM \"CERTIFICATE REQUEST\" block"
    )]
    Malformed(String),
    /// The CSR's self-signature does not verify, so it does not prove possession of the key.
    #[error(
        "the certificate signing request's signature does not verify; it must be signed with the \
         private key whose public key it carries"
    )]
    BadSignature,
    /// The CSR carries a key type the mesh does not issue for.
    #[error(
        "unsupported key in certificate signing request: {0}; use an ECDSA P-256 (signed with SHA-256) or Ed25519 key"
    )]
    UnsupportedKey(String),
    /// The CSR asks for a different SPIFFE id than the caller is entitled to.
    #[error(
        "the certificate signing request asks for {asked}, but this caller may only obtain {allowed}"
    )]
    WrongIdentity {
        /// The URI SAN(s) in the CSR (or "no URI SAN").
        asked: String,
        /// The one SPIFFE id the caller may obtain.
        allowed: String,
    },
    /// The CSR asks for the right SPIFFE id but also for other names.
    #[error(
        "the certificate signing request asks for extra subject alternative names [{}]; \
         only the URI SAN {allowed} is allowed",
        extra.join(", ")
    )]
    ExtraSans {
        /// The names beyond the allowed one, as "DNS:x", "IP:y", "URI:z", ...
        extra: Vec<String>,
        /// The one SPIFFE id the caller may obtain.
        allowed: String,
    },
    /// The requested lifetime is not usable.
    #[error("invalid certificate lifetime: {0}")]
    InvalidTtl(String),
    /// The CA cannot sign any more because its own certificate expired.
    #[error(
        "the mesh CA certificate expired; rotate the CA (add a new root to the trust bundle) before issuing"
    )]
    CaExpired,
    /// rcgen failed to produce the certificate (internal error).
    #[error("could not sign the certificate: {0}")]
    Signing(String),
}

/// Errors about certificates, keys, trust bundles and TLS configuration.
#[derive(Debug, Error)]
pub enum CertError {
    /// A PEM input had no block of the expected kind.
    #[error("no {what} found in the PEM input; expected a \"-----BEGIN {label}-----\" block")]
    MissingPem {
        /// What was being loaded (e.g. "CA certificate").
        what: &'static str,
        /// The PEM label looked for.
        label: &'static str,
    },
    /// A PEM or DER input could not be decoded.
    #[error("could not decode {what}: {detail}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The underlying parser's message.
        detail: String,
    },
    /// The private key does not belong to the certificate it was paired with.
    #[error(
        "the private key does not match the {what} certificate; pair the certificate with the key it was issued for"
    )]
    KeyMismatch {
        /// Which certificate ("CA", "leaf").
        what: &'static str,
    },
    /// A certificate that must be a CA is not one.
    #[error("{what} is not a CA certificate ({reason}); use the mesh CA's root certificate")]
    NotACa {
        /// Which certificate.
        what: String,
        /// What is missing.
        reason: &'static str,
    },
    /// A certificate carries no SPIFFE URI SAN.
    #[error("the certificate has no spiffe:// URI SAN, so it is not a Weft workload certificate")]
    NoSpiffeId,
    /// A certificate carries several SPIFFE URI SANs; a workload has exactly one identity.
    #[error("the certificate has {0} spiffe:// URI SANs; a Weft certificate has exactly one")]
    MultipleSpiffeIds(usize),
    /// The SPIFFE id inside a certificate is malformed.
    #[error(transparent)]
    Id(#[from] IdError),
    /// An issued certificate names a different identity than the one requested.
    #[error("the control plane issued a certificate for {got}, but {expected} was requested")]
    WrongIdentity {
        /// What we asked for.
        expected: String,
        /// What the certificate says.
        got: String,
    },
    /// A certificate chain does not verify against the trust bundle.
    #[error("the certificate chain does not verify against the trust bundle: {0}")]
    Untrusted(String),
    /// A SHA-256 fingerprint string is malformed.
    #[error(
        "invalid CA fingerprint {0:?}: expected 64 hexadecimal characters (SHA-256 of the CA certificate DER)"
    )]
    BadFingerprint(String),
    /// Key or certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// The CA refused a request (for `issue_server_cert`, which shares the signing path).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// rustls refused the configuration.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// The issuer (normally the control plane's identity service) failed.
    #[error("certificate issuance failed: {0}")]
    Issuer(IssueError),
}

/// Why an [`Issuer`](crate::Issuer) returned no certificate, told apart by whether
/// asking again can help: a sidecar retries the first kind and gives up on the second.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IssueError {
    /// The CA could not be reached, or failed for a reason that may pass.
    #[error("{0}")]
    Unavailable(String),
    /// The CA refused the request (token or dataplane revoked, service deleted, a CSR
    /// for another identity): asking again gets the same answer.
    #[error("{0}")]
    Refused(String),
}

impl From<rcgen::Error> for CertError {
    fn from(e: rcgen::Error) -> Self {
        CertError::Generate(e.to_string())
    }
}

impl From<rustls::server::VerifierBuilderError> for CertError {
    fn from(e: rustls::server::VerifierBuilderError) -> Self {
        CertError::Untrusted(e.to_string())
    }
}
