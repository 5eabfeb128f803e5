//! Weft mesh identity.
//!
//! Everything a Weft component needs to prove who it is and to check who it talks to:
//!
//! - [`spiffe`]: the SPIFFE ids the mesh uses (`spiffe://<td>/<kind>/<name>`) and the name
//!   rule shared with the control plane.
//! - [`ca`]: the mesh CA held by the control plane; it signs workload CSRs after checking
//!   they ask for exactly the identity the caller is entitled to.
//! - [`bundle`]: the trust bundle (one or more roots, so the CA can be rotated).
//! - [`identity`]: a workload's own chain + key, CSR generation, certificate inspection.
//! - [`tls`]: rustls configs for mesh mTLS (TLS 1.3, SPIFFE-checked), the control-plane
//!   endpoint, and CA-pinned bootstrap.
//! - [`revocation`]: serials of revoked certificates, refused by the mesh verifiers.
//! - [`rotation`]: the sidecar-side renewal loop publishing credentials through a watch channel.
//!
//! Workload private keys are generated where they are used and never leave that process;
//! only CSRs and certificates travel. All rustls configs use an explicit ring provider, so
//! no process-wide provider needs installing.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
pub mod error;
pub mod identity;
pub mod revocation;
pub mod rotation;
pub mod spiffe;
pub mod tls;
pub mod token;

pub use bundle::TrustBundle;
pub use ca::{CertificateAuthority, IssuedCert};
pub use error::{CertError, CsrError, IdError, IssueError};
pub use identity::{Identity, generate_csr, serial_hex, sha256_hex, spiffe_id_of};
pub use revocation::Revocations;
pub use rotation::{Credentials, IdentityManager, IssuedPem, Issuer};
pub use spiffe::{IdentityKind, SpiffeId, TrustDomain, validate_name};
pub use tls::{
    control_plane_client_config, control_plane_server_config, mesh_client_config,
    mesh_client_config_with_revocations, mesh_server_config, mesh_server_config_with_revocations,
    peer_spiffe_id, pinned_ca_client_config,
};

/// Re-exported so callers name the same `CertificateDer` type this crate uses.
pub use rustls_pki_types::CertificateDer;
