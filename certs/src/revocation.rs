//! Certificates that must be refused although they chain to the trust bundle and have
//! not expired: those of a dataplane the operator revoked (`weftctl dataplane revoke`).
//!
//! The control plane pushes the revoked serials to every dataplane; each keeps them in
//! one [`Revocations`] shared by all its mesh TLS configs, so a handshake with a revoked
//! peer fails on both sides (server and client verifiers), and the inbound can also ask
//! per stream for connections opened before the revocation. The list stays small: an
//! entry is dropped once its certificate expires, since then the chain check refuses it.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};

use crate::identity::serial_hex;

/// The revoked serials (lowercase hex) a dataplane knows of.
#[derive(Debug, Default)]
pub struct Revocations {
    serials: RwLock<Arc<HashSet<String>>>,
}

impl Revocations {
    pub fn new() -> Arc<Self> {
        Arc::new(Revocations::default())
    }

    /// Replaces the whole list (the control plane always sends all of it).
    pub fn replace(&self, serials: impl IntoIterator<Item = String>) {
        let next = Arc::new(serials.into_iter().collect::<HashSet<_>>());
        *self.serials.write().unwrap_or_else(PoisonError::into_inner) = next;
    }

    /// Whether the certificate with this serial was revoked.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(serial)
    }

    /// Whether the DER certificate was revoked (an unparsable one counts as revoked:
    /// the chain check would have refused it anyway).
    pub fn is_revoked_cert(&self, cert_der: &[u8]) -> bool {
        if self.is_empty() {
            return false;
        }
        serial_hex(cert_der).map_or(true, |s| self.is_revoked(&s))
    }

    pub fn is_empty(&self) -> bool {
        self.serials
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    pub fn len(&self) -> usize {
        self.serials
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
