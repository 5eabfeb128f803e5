//! What a dataplane keeps on disk under `--state-dir`: its certificate chain and key
//! (0600), the trust bundle, and the last config it acknowledged. Every file is written
//! atomically (temp file, fsync, rename), so a crash leaves the old or the new version,
//! never half of one.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::ControlError;
use super::config::MeshConfig;

const CHAIN: &str = "cert.pem";
const KEY: &str = "key.pem";
const BUNDLE: &str = "bundle.pem";
const CONFIG: &str = "config.json";

/// A dataplane's state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

fn err(path: &Path, e: impl std::fmt::Display) -> ControlError {
    ControlError::State(format!(
        "{}: {e}; check that --state-dir is writable",
        path.display()
    ))
}

/// Writes `data` to `path` atomically with `mode`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), ControlError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| err(&tmp, e))?;
    f.write_all(data).map_err(|e| err(&tmp, e))?;
    f.sync_all().map_err(|e| err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, e))?;
    Ok(())
}

impl StateDir {
    /// Opens (creating, mode 0700) the directory.
    pub fn open(dir: &Path) -> Result<Self, ControlError> {
        std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(dir, e))?;
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    /// Saves the identity and bundle.
    pub fn save_identity(
        &self,
        chain_pem: &str,
        key_pem: &str,
        bundle_pem: &str,
    ) -> Result<(), ControlError> {
        write_atomic(&self.dir.join(KEY), key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.dir.join(CHAIN), chain_pem.as_bytes(), 0o644)?;
        write_atomic(&self.dir.join(BUNDLE), bundle_pem.as_bytes(), 0o644)
    }

    /// The saved (chain, key, bundle) PEMs, if all three are present.
    pub fn load_identity(&self) -> Option<(String, String, String)> {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).ok();
        Some((read(CHAIN)?, read(KEY)?, read(BUNDLE)?))
    }

    pub fn save_config(&self, config: &MeshConfig) -> Result<(), ControlError> {
        let path = self.dir.join(CONFIG);
        let json = serde_json::to_vec_pretty(config).map_err(|e| err(&path, e))?;
        write_atomic(&path, &json, 0o644)
    }

    /// The last acknowledged config, if one was saved and parses.
    pub fn load_config(&self) -> Option<MeshConfig> {
        let bytes = std::fs::read(self.dir.join(CONFIG)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring unreadable saved config; will fetch a full one");
                None
            }
        }
    }
}
