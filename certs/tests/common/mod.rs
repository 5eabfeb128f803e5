//! Shared helpers for the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use weft_certs::{
    CertificateAuthority, Identity, IdentityKind, IdentityManager, IssueError, IssuedPem, Issuer,
    SpiffeId, TrustBundle, TrustDomain, generate_csr,
};

pub const DAY: Duration = Duration::from_secs(24 * 3600);

pub fn td() -> TrustDomain {
    TrustDomain::new("weft.local").unwrap()
}

pub fn svc(name: &str) -> SpiffeId {
    SpiffeId::new(&td(), IdentityKind::Service, name).unwrap()
}

/// A workload identity for `id`, issued by `ca` through the real CSR path.
pub fn identity(ca: &CertificateAuthority, id: &SpiffeId, ttl: Duration) -> Identity {
    let (key_pem, csr_pem) = generate_csr(id).unwrap();
    let issued = ca.issue_from_csr(&csr_pem, id, ttl).unwrap();
    Identity::from_pem(&issued.chain_pem, &key_pem).unwrap()
}

/// An identity for the control plane's listener, valid for DNS "localhost" and 127.0.0.1.
pub fn server_identity(ca: &CertificateAuthority) -> Identity {
    let id = SpiffeId::new(&td(), IdentityKind::ControlPlane, "cp").unwrap();
    let (issued, key) = ca
        .issue_server_cert(
            &id,
            &["localhost".to_owned()],
            &["127.0.0.1".parse().unwrap()],
            DAY,
        )
        .unwrap();
    Identity::from_pem(&issued.chain_pem, &key).unwrap()
}

pub fn bundle(ca: &CertificateAuthority) -> TrustBundle {
    TrustBundle::from_pem(ca.cert_pem()).unwrap()
}

pub type Handshake = (
    Result<server::TlsStream<DuplexStream>, std::io::Error>,
    Result<client::TlsStream<DuplexStream>, std::io::Error>,
);

/// Runs both sides of a handshake over an in-memory pipe.
pub async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    server_name: &str,
) -> Handshake {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let acceptor = TlsAcceptor::from(server);
    let connector = TlsConnector::from(client);
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(acceptor.accept(a), connector.connect(name, b))
    })
    .await
    .unwrap()
}

/// Proves a connection works end to end: the client writes, the server echoes.
pub async fn ping(
    server: &mut server::TlsStream<DuplexStream>,
    client: &mut client::TlsStream<DuplexStream>,
    msg: &[u8],
) -> std::io::Result<()> {
    client.write_all(msg).await?;
    client.flush().await?;
    let mut buf = vec![0u8; msg.len()];
    server.read_exact(&mut buf).await?;
    server.write_all(&buf).await?;
    server.flush().await?;
    let mut back = vec![0u8; msg.len()];
    client.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

/// An in-memory issuer backed by a real CA, as the control plane's identity service would be.
pub struct CaIssuer {
    pub ca: Arc<CertificateAuthority>,
    pub id: SpiffeId,
    pub ttl: Duration,
}

impl Issuer for CaIssuer {
    async fn issue(&self, csr_pem: String) -> Result<IssuedPem, IssueError> {
        let issued = self
            .ca
            .issue_from_csr(&csr_pem, &self.id, self.ttl)
            .map_err(|e| IssueError::Refused(e.to_string()))?;
        Ok(IssuedPem {
            cert_chain_pem: issued.chain_pem,
            trust_bundle_pem: self.ca.cert_pem().to_owned(),
        })
    }
}

pub async fn bootstrap(issuer: &CaIssuer) -> IdentityManager {
    let (identity, bundle) = IdentityManager::obtain(&issuer.id, issuer).await.unwrap();
    IdentityManager::new(issuer.id.clone(), identity, bundle)
}
