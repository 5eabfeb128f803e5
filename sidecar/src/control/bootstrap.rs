//! Obtaining and renewing the dataplane's identity.
//!
//! First contact uses the bootstrap token: the token carries the CA fingerprint, so the
//! control plane's TLS chain is pinned without any CA file, and the CSR (made from a key
//! generated here, which never leaves the process) is authorised by the token. Renewals
//! go over mTLS with the current certificate and need no token.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;
use weft_certs::token::{BootstrapClaims, parse_unverified};
use weft_certs::{
    CertError, Credentials, Identity, IdentityManager, IssueError, IssuedPem, Issuer, SpiffeId,
    TrustBundle, control_plane_client_config, pinned_ca_client_config,
};
use weft_proto::v1::IssueCertificateRequest;
use weft_proto::v1::identity_client::IdentityClient;

use super::channel::{channel, fixed_channel};
use super::state_dir::StateDir;
use super::{ControlError, status_line};

/// Sends CSRs to the control plane's identity service.
pub struct GrpcIssuer {
    client: IdentityClient<Channel>,
    /// Present for first issuance; empty for renewals over mTLS.
    token: String,
}

impl Issuer for GrpcIssuer {
    async fn issue(&self, csr_pem: String) -> Result<IssuedPem, IssueError> {
        let resp = self
            .client
            .clone()
            .issue_certificate(IssueCertificateRequest {
                csr_pem,
                token: self.token.clone(),
            })
            .await
            .map_err(|s| {
                // A refusal (token revoked, dataplane revoked, service deleted, a bad CSR)
                // will not pass by retrying: say so loudly, with the control plane's advice.
                let refused = matches!(
                    s.code(),
                    Code::PermissionDenied
                        | Code::FailedPrecondition
                        | Code::Unauthenticated
                        | Code::InvalidArgument
                );
                if !refused {
                    return IssueError::Unavailable(status_line(&s));
                }
                if self.token.is_empty() {
                    tracing::error!(
                        reason = %s.message(),
                        "the control plane refuses to renew this dataplane's certificate: it stops serving when the certificate expires (/ready then says so); follow the reason to bring it back"
                    );
                }
                IssueError::Refused(status_line(&s))
            })?
            .into_inner();
        Ok(IssuedPem {
            cert_chain_pem: resp.cert_chain_pem,
            trust_bundle_pem: resp.trust_bundle_pem,
        })
    }
}

/// The claims of a bootstrap token, for naming the identity before asking for it.
pub fn token_claims(token: &str) -> Result<BootstrapClaims, ControlError> {
    Ok(parse_unverified(token)?)
}

/// Credentials for `token`: from the state dir when a still-valid certificate for the
/// same identity is there, else by a fresh CSR. Saves what it obtained.
pub async fn obtain_identity(
    cp_url: &str,
    token: &str,
    state: Option<&StateDir>,
) -> Result<(SpiffeId, Identity, TrustBundle), ControlError> {
    let claims = token_claims(token)?;
    let id = claims
        .spiffe_id()
        .map_err(|e| ControlError::Refused(format!("token names an invalid identity: {e}")))?;
    if let Some((chain, key, bundle)) = state.and_then(StateDir::load_identity) {
        if let (Ok(identity), Ok(bundle)) = (
            Identity::from_pem(&chain, &key),
            TrustBundle::from_pem(&bundle),
        ) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if identity.spiffe_id() == &id && identity.not_after() > now + 5 {
                tracing::info!(%id, not_after = identity.not_after(), "using the certificate saved in the state dir");
                return Ok((id, identity, bundle));
            }
        }
    }
    let tls = pinned_ca_client_config(&claims.ca_sha256, &[b"h2"])?;
    let issuer = GrpcIssuer {
        client: IdentityClient::new(fixed_channel(cp_url, tls)?),
        token: token.trim().to_owned(),
    };
    let (identity, bundle) = IdentityManager::obtain(&id, &issuer)
        .await
        .map_err(|e| match e {
            CertError::Issuer(IssueError::Unavailable(detail)) => ControlError::Unreachable {
                url: cp_url.to_owned(),
                detail,
            },
            refused => ControlError::Refused(refused.to_string()),
        })?;
    if let Some(state) = state {
        state.save_identity(identity.chain_pem(), identity.key_pem(), &bundle.to_pem())?;
    }
    tracing::info!(%id, not_after = identity.not_after(), "certificate obtained");
    Ok((id, identity, bundle))
}

/// The mTLS client config to reach the control plane with the current credentials,
/// kept up to date as credentials rotate.
pub fn control_plane_tls(
    mut creds: watch::Receiver<Arc<Credentials>>,
) -> Result<watch::Receiver<Arc<rustls::ClientConfig>>, ControlError> {
    let build =
        |c: &Credentials| control_plane_client_config(&c.bundle, Some(&c.identity), &[b"h2"]);
    let first = build(&creds.borrow_and_update())?;
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while creds.changed().await.is_ok() {
            let next = build(&creds.borrow_and_update());
            match next {
                Ok(cfg) => {
                    if tx.send(cfg).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot build control plane TLS config"),
            }
        }
    });
    Ok(rx)
}

/// An mTLS channel to the control plane that follows credential rotation.
pub fn mtls_channel(
    cp_url: &str,
    creds: watch::Receiver<Arc<Credentials>>,
) -> Result<Channel, ControlError> {
    channel(cp_url, control_plane_tls(creds)?)
}

/// Keeps the certificate renewed over mTLS, saving each new one to the state dir.
pub async fn run_renewal(manager: Arc<IdentityManager>, channel: Channel, state: Option<StateDir>) {
    if let Some(state) = state {
        let mut rx = manager.subscribe();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let c = rx.borrow_and_update().clone();
                if let Err(e) = state.save_identity(
                    c.identity.chain_pem(),
                    c.identity.key_pem(),
                    &c.bundle.to_pem(),
                ) {
                    tracing::warn!(error = %e, "cannot save renewed certificate");
                }
            }
        });
    }
    manager
        .run(GrpcIssuer {
            client: IdentityClient::new(channel),
            token: String::new(),
        })
        .await;
}
