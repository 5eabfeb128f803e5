//! The identity service: signs a CSR for exactly the identity the caller may hold.
//! First issuance is authorised by a bootstrap token (checked for signature, expiry and
//! revocation on every use); renewal by the caller's current mesh certificate.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use weft_certs::token;
use weft_certs::{IdentityKind, SpiffeId};
use weft_proto::v1::identity_server::Identity;
use weft_proto::v1::{DataplaneKind, IssueCertificateRequest, IssueCertificateResponse};

use super::{Shared, auth};
use crate::metrics::ResultLabel;
use crate::registry::now_unix;
use crate::store::{StoreError, TokenKind};

pub struct IdentityService {
    shared: Arc<Shared>,
}

impl IdentityService {
    pub fn new(shared: Arc<Shared>) -> Self {
        IdentityService { shared }
    }

    /// The identity a bootstrap token allows, or why it allows nothing.
    async fn identity_from_token(&self, raw: &str) -> Result<SpiffeId, Status> {
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
        let again = match claims.kind {
            IdentityKind::Service => format!("--service {}", claims.name),
            IdentityKind::Gateway => format!("--gateway {}", claims.name),
            _ => format!("--ingress {}", claims.name),
        };
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
            self.shared
                .store
                .get_service(&claims.name)
                .await
                .map_err(|_| {
                    Status::failed_precondition(format!(
                        "service \"{}\" no longer exists; recreate it before its sidecars can join",
                        claims.name
                    ))
                })?;
        }
        SpiffeId::new(self.shared.ca.trust_domain(), claims.kind, &claims.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))
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
        let result = async {
            let expected = if !r.token.is_empty() {
                self.identity_from_token(&r.token).await?
            } else if let Some((id, _)) = peer {
                if *id.kind() == IdentityKind::ControlPlane {
                    return Err(Status::permission_denied(
                        "the control plane identity cannot be renewed through this API",
                    ));
                }
                id
            } else {
                return Err(Status::unauthenticated(
                    "send a bootstrap token (first issuance) or connect with your current mesh certificate (renewal)",
                ));
            };
            let ca = self.shared.ca.current();
            let issued = ca
                .signing
                .issue_from_csr(&r.csr_pem, &expected, self.shared.cert_ttl)
                .map_err(|e| match e {
                    weft_certs::CsrError::WrongIdentity { .. } => {
                        Status::permission_denied(e.to_string())
                    }
                    other => Status::invalid_argument(other.to_string()),
                })?;
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
