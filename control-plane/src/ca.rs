//! The mesh CA as the control plane holds it: the signing root and the trust bundle,
//! both loaded from the store (so a restart never makes a new CA), plus the control
//! plane's own serving certificate, issued from that CA at start and renewed in place.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use weft_certs::{
    CertificateAuthority, Identity, IdentityKind, SpiffeId, TrustBundle, TrustDomain,
};

use crate::registry::now_unix;
use crate::store::{CaRootRecord, Store};

/// Why the CA could not be set up. Each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Cert(String),
    #[error("cannot read {path}: {err}; check --ca-cert/--ca-key")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("cannot write {path}: {err}; check that --data-dir is writable")]
    Write { path: PathBuf, err: std::io::Error },
    #[error(
        "the store already holds a mesh CA ({existing}) and --ca-cert names another ({given}); \
         --ca-cert/--ca-key are only read at first start. Remove the flags, or start with an empty --data-dir"
    )]
    Conflict { existing: String, given: String },
}

fn cert_err(e: impl std::fmt::Display) -> CaError {
    CaError::Cert(e.to_string())
}

/// The signing CA and the bundle of every trusted root.
pub struct CaState {
    pub signing: CertificateAuthority,
    pub bundle: TrustBundle,
    pub roots: Vec<CaRootRecord>,
}

pub struct CaManager {
    store: Arc<dyn Store>,
    trust_domain: TrustDomain,
    data_dir: PathBuf,
    state: RwLock<Arc<CaState>>,
}

/// Writes `contents` to `path` atomically (temp file + rename) with the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let werr = |err| CaError::Write {
        path: path.to_owned(),
        err,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(contents).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)?;
    Ok(())
}

impl CaManager {
    /// Loads the CA from the store, creating it (or importing `files`) at first start,
    /// and writes the trust bundle to `<data-dir>/ca.pem` for weftctl.
    pub async fn init(
        store: Arc<dyn Store>,
        trust_domain: TrustDomain,
        data_dir: &Path,
        files: Option<(PathBuf, PathBuf)>,
    ) -> Result<Arc<Self>, CaError> {
        let roots = store.config_state().await?.ca_roots;
        let given = match &files {
            Some((cert, key)) => {
                let read = |p: &PathBuf| {
                    std::fs::read_to_string(p).map_err(|err| CaError::Read {
                        path: p.clone(),
                        err,
                    })
                };
                Some(CertificateAuthority::from_pem(&read(cert)?, &read(key)?).map_err(cert_err)?)
            }
            None => None,
        };
        if roots.is_empty() {
            let ca = match given {
                Some(ca) => ca,
                None => CertificateAuthority::generate(&trust_domain).map_err(cert_err)?,
            };
            tracing::info!(sha256 = %ca.sha256_hex(), "mesh CA created");
            store
                .add_ca_root(CaRootRecord {
                    sha256: ca.sha256_hex(),
                    cert_pem: ca.cert_pem().to_owned(),
                    key_pem: ca.key_pem().to_owned(),
                    signing: true,
                    added_at: now_unix(),
                })
                .await?;
        } else if let Some(ca) = given {
            let sha = ca.sha256_hex();
            if !roots.iter().any(|r| r.sha256 == sha) {
                let existing = roots
                    .iter()
                    .find(|r| r.signing)
                    .map(|r| r.sha256.clone())
                    .unwrap_or_default();
                return Err(CaError::Conflict {
                    existing,
                    given: sha,
                });
            }
        }
        let mgr = Arc::new(CaManager {
            store: store.clone(),
            trust_domain,
            data_dir: data_dir.to_owned(),
            state: RwLock::new(Arc::new(Self::load_state(&store).await?)),
        });
        mgr.write_bundle_file()?;
        Ok(mgr)
    }

    async fn load_state(store: &Arc<dyn Store>) -> Result<CaState, CaError> {
        let roots = store.config_state().await?.ca_roots;
        let signing = roots
            .iter()
            .find(|r| r.signing)
            .ok_or_else(|| CaError::Cert("the store holds no signing CA root".into()))?;
        let signing = CertificateAuthority::from_pem(&signing.cert_pem, &signing.key_pem)
            .map_err(cert_err)?;
        let pem: String = roots
            .iter()
            .map(|r| r.cert_pem.trim_end().to_owned() + "\n")
            .collect();
        let bundle = TrustBundle::from_pem(&pem).map_err(cert_err)?;
        Ok(CaState {
            signing,
            bundle,
            roots,
        })
    }

    /// Re-reads roots from the store (after a rotation step) and rewrites ca.pem.
    pub async fn refresh(&self) -> Result<(), CaError> {
        let state = Self::load_state(&self.store).await?;
        if let Ok(mut guard) = self.state.write() {
            *guard = Arc::new(state);
        }
        self.write_bundle_file()
    }

    fn write_bundle_file(&self) -> Result<(), CaError> {
        let pem = self.current().bundle.to_pem();
        write_atomic(&self.data_dir.join("ca.pem"), pem.as_bytes(), 0o644)
    }

    pub fn current(&self) -> Arc<CaState> {
        match self.state.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Issues the control plane's own serving identity (key made here, never stored).
    pub fn issue_control_plane_identity(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<Identity, CaError> {
        let id = SpiffeId::new(&self.trust_domain, IdentityKind::ControlPlane, "weft-cp")
            .map_err(cert_err)?;
        let state = self.current();
        let (issued, key_pem) = state
            .signing
            .issue_server_cert(&id, dns_names, ips, ttl)
            .map_err(cert_err)?;
        Identity::from_pem(&issued.chain_pem, &key_pem).map_err(cert_err)
    }
}
