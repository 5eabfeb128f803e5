//! Who is calling: the admin bearer token for the admin API, the mesh certificate on the
//! TLS connection for dataplanes.

use std::sync::Arc;

use tonic::{Request, Status};
use weft_certs::SpiffeId;

/// SHA-256 of a token, the only form in which the admin token is kept.
pub fn token_sha256(token: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes())
        .as_ref()
        .to_vec()
}

/// Interceptor for the admin service: requires `authorization: Bearer <admin token>`.
#[derive(Clone)]
pub struct AdminAuth {
    admin_sha256: Arc<Vec<u8>>,
}

impl AdminAuth {
    pub fn new(admin_sha256: Vec<u8>) -> Self {
        AdminAuth {
            admin_sha256: Arc::new(admin_sha256),
        }
    }
}

impl tonic::service::Interceptor for AdminAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "admin calls need the admin token: send `authorization: Bearer <token>` (weftctl: --token or WEFT_TOKEN; the token is in <data-dir>/admin.token)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or("");
        // Comparing digests: timing reveals nothing useful about the token itself.
        if token.is_empty() || token_sha256(token) != *self.admin_sha256 {
            return Err(Status::unauthenticated(
                "the admin token is wrong; use the one in <data-dir>/admin.token (weftctl: --token or WEFT_TOKEN)",
            ));
        }
        Ok(req)
    }
}

/// The caller's mesh identity, if its TLS connection presented a certificate (the TLS
/// layer has already checked that it chains to the trust bundle). Returns the SPIFFE id
/// and the leaf's expiry.
pub fn peer_identity<T>(req: &Request<T>) -> Option<(SpiffeId, i64)> {
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    let id = weft_certs::spiffe_id_of(leaf.as_ref()).ok()?;
    let expiry = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map(|(_, c)| c.validity().not_after.timestamp())
        .unwrap_or(0);
    Some((id, expiry))
}
