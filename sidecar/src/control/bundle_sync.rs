//! Keeps the workload's trust bundle in step with the one the control plane pushes.
//!
//! The discovery stream carries the mesh trust bundle (it changes during CA rotation),
//! but the TLS configs are built from the [`IdentityManager`]'s credentials. This task
//! forwards each new pushed bundle to [`IdentityManager::update_bundle`], so listeners,
//! connectors and the control-plane channel trust a new root as soon as the config that
//! carries it is applied: the control plane switches signing only after every connected
//! dataplane acknowledged that config.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_certs::{IdentityManager, TrustBundle};

use super::config::MeshConfig;

/// Spawns the forwarding task; it ends when the config channel's sender is dropped.
///
/// A bundle that does not parse is skipped with a warning (the discovery client already
/// nacks such configs, so this only guards against a config loaded from an old state dir).
pub fn spawn_bundle_sync(
    mut config: watch::Receiver<Arc<MeshConfig>>,
    manager: Arc<IdentityManager>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut applied = String::new();
        loop {
            let pem = config.borrow_and_update().trust_bundle_pem.clone();
            if !pem.is_empty() && pem != applied {
                match TrustBundle::from_pem(&pem) {
                    Ok(bundle) => manager.update_bundle(bundle),
                    Err(e) => {
                        tracing::warn!(error = %e, "the pushed trust bundle does not parse; keeping the current one")
                    }
                }
                applied = pem;
            }
            if config.changed().await.is_err() {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use weft_certs::{CertificateAuthority, IdentityKind, SpiffeId, TrustDomain};

    use super::*;

    #[tokio::test]
    async fn pushed_bundles_reach_the_identity_manager() {
        let td = TrustDomain::new("weft.local").unwrap();
        let old = CertificateAuthority::generate(&td).unwrap();
        let new = CertificateAuthority::generate(&td).unwrap();
        let id = SpiffeId::new(&td, IdentityKind::Service, "web").unwrap();
        let (key, csr) = weft_certs::generate_csr(&id).unwrap();
        let leaf = old
            .issue_from_csr(&csr, &id, Duration::from_secs(3600))
            .unwrap();
        let identity = weft_certs::Identity::from_pem(&leaf.chain_pem, &key).unwrap();
        let manager = Arc::new(IdentityManager::new(
            id,
            identity,
            TrustBundle::from_pem(old.cert_pem()).unwrap(),
        ));
        let mut creds = manager.subscribe();
        let (tx, rx) = watch::channel(Arc::new(MeshConfig::default()));
        let task = spawn_bundle_sync(rx, manager.clone());

        let both = format!("{}{}", old.cert_pem(), new.cert_pem());
        tx.send_replace(Arc::new(MeshConfig {
            trust_bundle_pem: both,
            ..MeshConfig::default()
        }));
        tokio::time::timeout(Duration::from_secs(5), creds.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(manager.current().bundle.contains_sha256(&new.sha256_hex()));
        assert_eq!(manager.current().bundle.roots().len(), 2);

        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
