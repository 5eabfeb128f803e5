//! The mesh CA as the control plane holds it: the signing root and the trust bundle,
//! both loaded from the store (so a restart never makes a new CA), plus the control
//! plane's own serving certificate, issued from that CA at start and renewed in place.
//!
//! # CA rotation
//!
//! A rotation moves signing to a new root without any connection failing, in three steps:
//!
//! 1. [`CaManager::begin_rotation`] generates a root and adds it to the trust bundle
//!    *without* signing with it. The bundle is pushed on every discovery stream.
//! 2. [`run_rotation`] waits, woken by acknowledgements rather than by polling, until
//!    every connected dataplane acknowledged a config carrying that bundle; only then
//!    does [`CaManager::switch_to`] make the new root sign (and the control plane's own
//!    certificate is re-issued from it, see `server.rs`). Switching earlier would hand
//!    out leaves that some peers cannot verify yet.
//! 3. [`CaManager::retire`] removes the old root once every leaf it signed has expired
//!    (one certificate TTL after the switch), or earlier when forced.
//!
//! The state lives in the store only: a root that is trusted, has a key and never signed
//! is the target of a rotation in progress, which is how a restarted control plane
//! resumes waiting.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, watch};
use weft_certs::{
    CertificateAuthority, Identity, IdentityKind, SpiffeId, TrustBundle, TrustDomain,
};

use crate::hub::ConfigHub;
use crate::registry::{Registry, now_unix};
use crate::secret::{SecretError, SecretKey, is_sealed};
use crate::store::{CaRootRecord, CaRootTimes, Fence, Store, StoreError};

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
    /// A rotation step that cannot be done now; the message says when it can.
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error(
        "the CA key in the store is encrypted; pass --ca-key-secret FILE with the secret it was sealed with"
    )]
    SecretNeeded,
}

fn cert_err(e: impl std::fmt::Display) -> CaError {
    CaError::Cert(e.to_string())
}

/// The signing CA and the bundle of every trusted root.
pub struct CaState {
    pub signing: CertificateAuthority,
    pub bundle: TrustBundle,
    pub roots: Vec<CaRootRecord>,
    /// When each root stopped signing, in the order of `roots`.
    pub times: Vec<CaRootTimes>,
    /// Config revision at which the bundle last changed: a dataplane that acknowledged
    /// this version (or later) holds this bundle.
    pub bundle_revision: u64,
}

impl CaState {
    /// When the root `sha256` stopped signing; 0 while it signs or if it never did.
    pub fn signing_ended_at(&self, sha256: &str) -> i64 {
        self.times
            .iter()
            .find(|t| t.sha256 == sha256)
            .map_or(0, |t| t.signing_ended_at)
    }

    /// The target of a rotation in progress: trusted, able to sign, never signed.
    pub fn pending(&self) -> Option<&CaRootRecord> {
        self.roots
            .iter()
            .find(|r| !r.signing && !r.key_pem.is_empty() && self.signing_ended_at(&r.sha256) == 0)
    }

    /// When signing last moved to a new root, if an older root is still trusted.
    pub fn last_switch(&self) -> Option<i64> {
        self.times
            .iter()
            .map(|t| t.signing_ended_at)
            .filter(|t| *t > 0)
            .max()
    }

    /// The root that signs now.
    pub fn signing_root(&self) -> Option<&CaRootRecord> {
        self.roots.iter().find(|r| r.signing)
    }
}

pub struct CaManager {
    store: Arc<dyn Store>,
    trust_domain: TrustDomain,
    data_dir: PathBuf,
    /// Published so the serving certificate and the rotation task follow every change.
    state: watch::Sender<Arc<CaState>>,
    /// Serialises rotation steps: begin, switch and retire each read the state, then
    /// write the store, and must not interleave (e.g. two rotations begun at once).
    rotation: Mutex<()>,
    /// `--ca-key-secret`: CA keys are stored sealed with it.
    secret: Option<Arc<SecretKey>>,
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
        secret: Option<Arc<SecretKey>>,
    ) -> Result<Arc<Self>, CaError> {
        let roots = store.config_state().await?.ca_roots;
        let stored_key = |ca: &CertificateAuthority| -> Result<String, CaError> {
            stored_key(secret.as_deref(), &ca.sha256_hex(), ca.key_pem())
        };
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
                    key_pem: stored_key(&ca)?,
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
        seal_plain_keys(&store, secret.as_deref(), &roots).await?;
        let (state, _) =
            watch::channel(Arc::new(Self::load_state(&store, secret.as_deref()).await?));
        let mgr = Arc::new(CaManager {
            store: store.clone(),
            trust_domain,
            data_dir: data_dir.to_owned(),
            state,
            rotation: Mutex::new(()),
            secret,
        });
        mgr.write_bundle_file()?;
        Ok(mgr)
    }

    async fn load_state(
        store: &Arc<dyn Store>,
        secret: Option<&SecretKey>,
    ) -> Result<CaState, CaError> {
        let config = store.config_state().await?;
        let (roots, bundle_revision) = (config.ca_roots, config.bundle_revision);
        let times = store.ca_root_times().await?;
        let signing = roots
            .iter()
            .find(|r| r.signing)
            .ok_or_else(|| CaError::Cert("the store holds no signing CA root".into()))?;
        let key_pem = open_key(secret, signing)?;
        let signing =
            CertificateAuthority::from_pem(&signing.cert_pem, &key_pem).map_err(cert_err)?;
        let pem: String = roots
            .iter()
            .map(|r| r.cert_pem.trim_end().to_owned() + "\n")
            .collect();
        let bundle = TrustBundle::from_pem(&pem).map_err(cert_err)?;
        Ok(CaState {
            signing,
            bundle,
            roots,
            times,
            bundle_revision,
        })
    }

    /// Re-reads roots from the store (after a rotation step), publishes them and
    /// rewrites ca.pem.
    pub async fn refresh(&self) -> Result<(), CaError> {
        let state = Self::load_state(&self.store, self.secret.as_deref()).await?;
        self.state.send_replace(Arc::new(state));
        self.write_bundle_file()
    }

    /// Every change of roots, signing root or bundle (rotation steps).
    pub fn subscribe(&self) -> watch::Receiver<Arc<CaState>> {
        self.state.subscribe()
    }

    /// Step 1 of a rotation: a new root joins the bundle without signing. Returns its
    /// SHA-256. The caller publishes the config so the bundle is pushed.
    pub async fn begin_rotation(&self) -> Result<String, CaError> {
        let _guard = self.rotation.lock().await;
        if let Some(p) = self.current().pending() {
            return Err(CaError::Precondition(format!(
                "a CA rotation to root {} is already in progress; it switches once every connected \
                 dataplane acknowledged the new bundle (see `weftctl ca show`)",
                p.sha256
            )));
        }
        let ca = CertificateAuthority::generate(&self.trust_domain).map_err(cert_err)?;
        let sha = ca.sha256_hex();
        self.store
            .add_ca_root(CaRootRecord {
                sha256: sha.clone(),
                cert_pem: ca.cert_pem().to_owned(),
                key_pem: stored_key(self.secret.as_deref(), &sha, ca.key_pem())?,
                signing: false,
                added_at: now_unix(),
            })
            .await?;
        tracing::info!(sha256 = %sha, "CA rotation begun: new root added to the trust bundle; it signs once every connected dataplane acknowledged it");
        self.refresh().await?;
        Ok(sha)
    }

    /// Step 2: `sha256` becomes the signing root, if it is still the rotation target
    /// (it may have been retired meanwhile). Returns whether it switched. A leader duty:
    /// the write is refused unless `fence` still holds.
    pub async fn switch_to(&self, sha256: &str, fence: &Fence) -> Result<bool, CaError> {
        let _guard = self.rotation.lock().await;
        if self.current().pending().is_none_or(|p| p.sha256 != sha256) {
            return Ok(false);
        }
        self.store
            .set_signing_root(sha256, now_unix(), fence)
            .await?;
        self.refresh().await?;
        tracing::info!(sha256, "CA rotation: the new root signs from now on");
        Ok(true)
    }

    /// Step 3: removes a root that does not sign from the bundle. Unless `force`, only
    /// once `cert_ttl` has passed since it stopped signing, so that no valid certificate
    /// signed by it is still in use. A rotation target (never signed) can always be
    /// removed: that cancels the rotation. The caller publishes the config.
    pub async fn retire(
        &self,
        sha256: &str,
        force: bool,
        cert_ttl: Duration,
    ) -> Result<(), CaError> {
        let _guard = self.rotation.lock().await;
        let state = self.current();
        let sha = sha256.trim().to_ascii_lowercase();
        let Some(root) = state.roots.iter().find(|r| r.sha256 == sha) else {
            return Err(CaError::NotFound(format!(
                "no CA root with sha256 {sha} in the trust bundle; see `weftctl ca show`"
            )));
        };
        if root.signing {
            return Err(CaError::Precondition(format!(
                "CA root {sha} is the signing root; rotate first with `weftctl ca rotate`, then retire it once the new root signs"
            )));
        }
        let ended = state.signing_ended_at(&sha);
        let ttl = i64::try_from(cert_ttl.as_secs()).unwrap_or(i64::MAX);
        let retirable_at = ended.saturating_add(ttl);
        let now = now_unix();
        if ended > 0 && now < retirable_at && !force {
            return Err(CaError::Precondition(format!(
                "certificates signed by CA root {sha} may be valid until {} (it stopped signing at {}, \
                 certificate TTL {}); retire it after that, or pass --force to cut off workloads that \
                 have not renewed yet",
                rfc3339(retirable_at),
                rfc3339(ended),
                humantime::format_duration(cert_ttl)
            )));
        }
        self.store.remove_ca_root(&sha).await?;
        if ended == 0 {
            tracing::info!(sha256 = %sha, "CA rotation cancelled: its target root was removed before it signed");
        } else {
            tracing::info!(sha256 = %sha, forced = force && now < retirable_at, "CA root retired from the trust bundle");
        }
        self.refresh().await
    }

    fn write_bundle_file(&self) -> Result<(), CaError> {
        let pem = self.current().bundle.to_pem();
        write_atomic(&self.data_dir.join("ca.pem"), pem.as_bytes(), 0o644)
    }

    pub fn current(&self) -> Arc<CaState> {
        self.state.borrow().clone()
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

/// A CA key as the store keeps it: sealed for its root when there is a secret.
fn stored_key(secret: Option<&SecretKey>, sha256: &str, key_pem: &str) -> Result<String, CaError> {
    Ok(match secret {
        Some(key) => key.seal(key_pem.as_bytes(), sha256)?,
        None => key_pem.to_owned(),
    })
}

/// The PEM of a root's key, opened with the secret if it is sealed.
fn open_key(secret: Option<&SecretKey>, root: &CaRootRecord) -> Result<String, CaError> {
    if !is_sealed(&root.key_pem) {
        return Ok(root.key_pem.clone());
    }
    let key = secret.ok_or(CaError::SecretNeeded)?;
    let pem = key.open(&root.key_pem, &root.sha256)?;
    String::from_utf8(pem)
        .map_err(|_| CaError::Secret(SecretError::Malformed("CA key is not text")))
}

/// With a secret, seals the keys still stored in the clear (a store from before
/// `--ca-key-secret` was given); without one, checks that no key needs it.
async fn seal_plain_keys(
    store: &Arc<dyn Store>,
    secret: Option<&SecretKey>,
    roots: &[CaRootRecord],
) -> Result<(), CaError> {
    for root in roots.iter().filter(|r| !r.key_pem.is_empty()) {
        match (secret, is_sealed(&root.key_pem)) {
            (Some(key), false) => {
                let sealed = key.seal(root.key_pem.as_bytes(), &root.sha256)?;
                store.set_ca_root_key(&root.sha256, &sealed).await?;
                tracing::info!(sha256 = %root.sha256, "CA key sealed with --ca-key-secret");
            }
            (Some(key), true) => {
                open_key(Some(key), root)?;
            }
            (None, true) => return Err(CaError::SecretNeeded),
            (None, false) => {}
        }
    }
    Ok(())
}

/// Unix seconds as RFC 3339 (UTC), for messages.
pub fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// How often a rotation in progress re-counts acknowledgements, which may arrive on any
/// replica.
const ROTATION_POLL: Duration = Duration::from_millis(250);

/// Completes CA rotations: whenever a rotation target exists, waits until every
/// connected dataplane (on any replica) acknowledged the bundle that carries it, then
/// switches signing to it and publishes the config. A leader duty: runs while this
/// replica leads, and its switch is fenced by `fence`.
///
/// It wakes on CA changes and on this replica's connect/ack/disconnect notifications,
/// and re-counts every [`ROTATION_POLL`] while a rotation is in progress (for streams
/// held by other replicas). With no dataplane connected it switches at once, except
/// when a rotation is found pending as leadership starts (after a restart or a
/// takeover): it first gives dataplanes `resume_grace` to reconnect and pick up the
/// bundle.
pub async fn run_rotation(
    ca: Arc<CaManager>,
    registry: Arc<Registry>,
    hub: Arc<ConfigHub>,
    resume_grace: Duration,
    fence: Fence,
) {
    let mut ca_rx = ca.subscribe();
    let mut dp_rx = registry.subscribe_changes();
    if let Some(p) = ca.current().pending() {
        tracing::info!(sha256 = %p.sha256, grace = ?resume_grace, "a CA rotation is in progress as this replica starts leading; waiting for dataplanes to reconnect before switching");
        tokio::time::sleep(resume_grace).await;
    }
    let mut last_progress = None;
    loop {
        // Mark both as seen before checking, so a change during the check wakes us.
        let state = ca_rx.borrow_and_update().clone();
        dp_rx.borrow_and_update();
        let pending = state.pending().cloned();
        if let Some(target) = &pending {
            let counted = registry.acked_count(state.bundle_revision).await;
            match counted {
                Ok((acked, connected)) if acked >= connected => {
                    match ca.switch_to(&target.sha256, &fence).await {
                        Ok(true) => {
                            if let Err(e) = hub.reload().await {
                                tracing::error!(error = %e, "reload after the CA switch failed; will retry on the next change");
                                hub.notify();
                            }
                        }
                        Ok(false) => {}
                        Err(CaError::Store(StoreError::NotLeader(m))) => {
                            tracing::info!(reason = %m, "CA rotation left to the new leader");
                            return;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "cannot switch the signing CA root; retrying in 5 s");
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                    }
                    last_progress = None;
                    continue;
                }
                Ok((acked, connected)) => {
                    if last_progress != Some((acked, connected)) {
                        tracing::info!(sha256 = %target.sha256, acked, connected, "CA rotation: waiting for connected dataplanes to acknowledge the new bundle");
                        last_progress = Some((acked, connected));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot count acknowledgements of the new bundle; retrying")
                }
            }
        }
        let poll = async {
            if pending.is_some() {
                tokio::time::sleep(ROTATION_POLL).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = ca_rx.changed() => if r.is_err() { return },
            r = dp_rx.changed() => if r.is_err() { return },
            () = poll => {}
        }
    }
}
