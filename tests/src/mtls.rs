//! mTLS helpers for identity tests: an echo listener that, like a sidecar's inbound,
//! builds its config from the current credentials at each accept, and clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use weft_certs::{
    Identity, IdentityManager, SpiffeId, TrustBundle, mesh_client_config, mesh_server_config,
};

const ALPN: &[u8] = b"weft-test";

/// Listens on 127.0.0.1 as `manager`'s identity and echoes; reports each handshake:
/// the client's leaf (DER) or the error.
pub async fn echo_server(
    manager: Arc<IdentityManager>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<Vec<u8>, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let creds = manager.current();
            let config = mesh_server_config(&creds.identity, &creds.bundle, &[ALPN]).unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tls = match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:?}")));
                        return;
                    }
                };
                let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                let _ = tx.send(Ok(leaf));
                let mut buf = vec![0u8; 4096];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// An identity for `id` signed by a CA of its own, which the mesh does not trust.
pub fn foreign_identity(td: &weft_certs::TrustDomain, id: &SpiffeId) -> Identity {
    let foreign_ca = weft_certs::CertificateAuthority::generate(td).unwrap();
    let (key, csr) = weft_certs::generate_csr(id).unwrap();
    let issued = foreign_ca
        .issue_from_csr(&csr, id, Duration::from_secs(3600))
        .unwrap();
    Identity::from_pem(&issued.chain_pem, &key).unwrap()
}

/// Opens an mTLS connection as `client`, accepting only `server`'s id.
pub async fn connect_as(
    client: &Identity,
    bundle: &TrustBundle,
    server: &SpiffeId,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = mesh_client_config(client, bundle, server, &[ALPN]).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("peer.mesh.invalid").unwrap(), tcp)
        .await
}

/// Opens an mTLS connection with `client`'s current credentials.
pub async fn connect(
    client: &IdentityManager,
    server: &SpiffeId,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let creds = client.current();
    connect_as(&creds.identity, &creds.bundle, server, addr).await
}

/// Sends `msg` and expects it echoed within 10 s.
pub async fn roundtrip(conn: &mut TlsStream<TcpStream>, msg: &str) {
    conn.write_all(msg.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut buf))
        .await
        .expect("echo within 10 s")
        .unwrap();
    assert_eq!(String::from_utf8(buf).unwrap(), msg);
}
