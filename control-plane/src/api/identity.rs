//! The identity service: signs a CSR for exactly the identity the caller may hold.
//! First issuance is authorised by a bootstrap token (checked for signature, expiry and
//! revocation on every use); renewal by the caller's current mesh certificate, as long
//! as that certificate's lineage still stands: not revoked, the token it started from
//! not revoked, and (for a service) the service not deleted. Every issued certificate is
//! recorded with its lineage, which is what links a renewal to its token.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_certs::token;
use weft_certs::{IdentityKind, SpiffeId};
use weft_proto::v1::identity_server::Identity;
use weft_proto::v1::{DataplaneKind, IssueCertificateRequest, IssueCertificateResponse};

use super::{Shared, auth};
use crate::metrics::ResultLabel;
use crate::registry::now_unix;
use crate::store::{CertificateRecord, StoreError, TokenKind};

/// Who a certificate is being issued to, and the lineage it continues.
struct Grant {
    id: SpiffeId,
    /// The lineage the new certificate continues (`None`: it starts one).
    lineage: Option<String>,
    token_id: String,
}

/// The `weftctl token create` flag for an identity.
fn token_flag(kind: &IdentityKind, name: &str) -> String {
    match kind {
        IdentityKind::Gateway => format!("--gateway {name}"),
        IdentityKind::Ingress => format!("--ingress {name}"),
        _ => format!("--service {name}"),
    }
}

pub struct IdentityService {
    shared: Arc<Shared>,
}

impl IdentityService {
    pub fn new(shared: Arc<Shared>) -> Self {
        IdentityService { shared }
    }

    /// The identity a bootstrap token allows, or why it allows nothing.
    async fn grant_by_token(&self, raw: &str) -> Result<Grant, Status> {
        let claims = token::verify(raw, &self.shared.token_key)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let record = self
            .shared
            .store
            .get_token(&claims.id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => Status::unauthenticated(format!(
                    "bootstrap token {} is unknown to this control plane; create one with `weftctl token create`",
                    claims.id
                )),
                other => super::status(other),
            })?;
        let again = token_flag(&claims.kind, &claims.name);
        let bootstrap_kind = match claims.kind {
            IdentityKind::Service => DataplaneKind::Sidecar,
            IdentityKind::Gateway => DataplaneKind::Gateway,
            _ => DataplaneKind::Ingress,
        };
        if record.kind != TokenKind::Bootstrap(bootstrap_kind) {
            return Err(Status::unauthenticated(format!(
                "token {} is not a bootstrap token for a {}; create one with `weftctl token create {again}`",
                claims.id,
                claims.kind.segment()
            )));
        }
        if record.revoked_at != 0 {
            return Err(Status::unauthenticated(format!(
                "bootstrap token {} was revoked; create a new one with `weftctl token create {again}`",
                claims.id
            )));
        }
        if now_unix() >= record.expires_at {
            return Err(Status::unauthenticated(format!(
                "bootstrap token {} expired; create a new one with `weftctl token create {again}`",
                claims.id
            )));
        }
        if claims.kind == IdentityKind::Service {
            self.service_exists(&claims.name).await?;
        }
        let id = SpiffeId::new(self.shared.ca.trust_domain(), claims.kind, &claims.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Grant {
            id,
            lineage: None,
            token_id: claims.id,
        })
    }

    async fn service_exists(&self, name: &str) -> Result<(), Status> {
        match self.shared.store.get_service(name).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound(_)) => Err(Status::failed_precondition(format!(
                "service \"{name}\" no longer exists, so its identity is not renewed; recreate it (`weftctl service create {name} ...`) and bootstrap its sidecars again with a new token"
            ))),
            Err(other) => Err(super::status(other)),
        }
    }

    /// A renewal with the certificate `peer` presented: allowed while its lineage
    /// stands. A certificate issued before certificates were recorded starts a lineage
    /// of its own (it has no known token, but can still be revoked).
    async fn grant_renewal(&self, peer: auth::PeerCert) -> Result<Grant, Status> {
        let id = peer.id;
        if *id.kind() == IdentityKind::ControlPlane {
            return Err(Status::permission_denied(
                "the control plane identity cannot be renewed through this API",
            ));
        }
        let store = &self.shared.store;
        let record = store
            .get_certificate(&peer.serial)
            .await
            .map_err(super::status)?;
        let again = token_flag(id.kind(), id.name());
        let (lineage, token_id) = match record {
            Some(r) if r.revoked_at != 0 => {
                return Err(Status::permission_denied(
                    super::discovery::revoked_message(&id),
                ));
            }
            Some(r) => (r.lineage, r.token_id),
            None => (peer.serial.clone(), String::new()),
        };
        if !token_id.is_empty() {
            let token_revoked = match store.get_token(&token_id).await {
                Ok(t) => t.revoked_at != 0,
                Err(StoreError::NotFound(_)) => true,
                Err(other) => return Err(super::status(other)),
            };
            if token_revoked {
                return Err(Status::permission_denied(format!(
                    "bootstrap token {token_id}, which this dataplane joined with, was revoked, so its certificate is not renewed; create a new token with `weftctl token create {again}` and restart the dataplane with it and an empty --state-dir"
                )));
            }
        }
        if *id.kind() == IdentityKind::Service {
            self.service_exists(id.name()).await?;
        }
        Ok(Grant {
            id,
            lineage: Some(lineage),
            token_id,
        })
    }

    /// Which identity the request may obtain: by token (first issuance) or by the
    /// presented certificate (renewal).
    async fn grant(&self, token: &str, peer: Option<auth::PeerCert>) -> Result<Grant, Status> {
        if !token.is_empty() {
            return self.grant_by_token(token).await;
        }
        match peer {
            Some(peer) => self.grant_renewal(peer).await,
            None => Err(Status::unauthenticated(
                "send a bootstrap token (first issuance) or connect with your current mesh certificate (renewal)",
            )),
        }
    }
}

fn dataplane_kind(kind: &IdentityKind) -> weft_proto::v1::DataplaneKind {
    use weft_proto::v1::DataplaneKind;
    match kind {
        IdentityKind::Service => DataplaneKind::Sidecar,
        IdentityKind::Gateway => DataplaneKind::Gateway,
        IdentityKind::Ingress => DataplaneKind::Ingress,
        IdentityKind::ControlPlane => DataplaneKind::Unspecified,
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn issue_certificate(
        &self,
        req: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        let peer = auth::peer_identity(&req);
        let r = req.into_inner();
        let result: Result<IssueCertificateResponse, Status> = async {
            let grant = self.grant(&r.token, peer).await?;
            let ca = self.shared.ca.current();
            let issued = ca
                .signing
                .issue_from_csr(&r.csr_pem, &grant.id, self.shared.cert_ttl)
                .map_err(|e| match e {
                    weft_certs::CsrError::WrongIdentity { .. } => {
                        Status::permission_denied(e.to_string())
                    }
                    other => Status::invalid_argument(other.to_string()),
                })?;
            // Recorded before it is handed out: a certificate the store does not know
            // could not be traced to its token, nor revoked with its dataplane.
            let record = CertificateRecord {
                serial: issued.serial.clone(),
                lineage: grant.lineage.unwrap_or_else(|| issued.serial.clone()),
                token_id: grant.token_id,
                kind: dataplane_kind(grant.id.kind()),
                name: grant.id.name().to_owned(),
                not_after: issued.not_after,
                revoked_at: 0,
            };
            self.shared
                .store
                .record_certificate(record, now_unix())
                .await
                .map_err(super::status)?;
            Ok(IssueCertificateResponse {
                cert_chain_pem: issued.chain_pem,
                trust_bundle_pem: ca.bundle.to_pem(),
                spiffe_id: issued.spiffe_id.uri(),
                not_before: issued.not_before,
                not_after: issued.not_after,
            })
        }
        .await;
        let label = match &result {
            Ok(_) => "issued",
            Err(_) => "refused",
        };
        self.shared
            .metrics
            .certificates
            .get_or_create(&ResultLabel { result: label })
            .inc();
        match result {
            Ok(resp) => {
                tracing::info!(id = %resp.spiffe_id, not_after = resp.not_after, "certificate issued");
                Ok(Response::new(resp))
            }
            Err(status) => {
                tracing::info!(reason = %status.message(), "certificate request refused");
                Err(status)
            }
        }
    }
}
