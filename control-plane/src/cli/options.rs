//! Where `weftctl` finds the control plane URL, the admin token and the CA.
//!
//! Each value is taken from, in order: its flag, its environment variable, then the
//! data directory (`--data-dir`, `WEFT_DATA_DIR`, or `./weft-data` when it exists), which
//! is what `weft-cp` writes at first start. That makes `weftctl` work with no flags when
//! run beside a local control plane, and lets scripts override any single value.
//!
//! [`resolve`] is pure apart from reading the token and CA files: the environment and
//! the working directory are passed in, so tests never touch the process environment.

use std::path::{Path, PathBuf};

use super::args::GlobalArgs;
use super::connect::ConnectOptions;
use super::error::CliError;

/// URL used when neither `--cp` nor `WEFT_CP` is given.
pub const DEFAULT_CP: &str = "https://127.0.0.1:7400";
/// Data directory looked for in the working directory.
pub const DEFAULT_DATA_DIR: &str = "weft-data";
/// File in the data directory holding the admin token.
pub const TOKEN_FILE: &str = "admin.token";
/// File in the data directory holding the mesh CA certificate(s).
pub const CA_FILE: &str = "ca.pem";

/// The `WEFT_*` environment variables; empty values count as unset.
#[derive(Debug, Clone, Default)]
pub struct EnvValues {
    pub cp: Option<String>,
    pub token: Option<String>,
    pub ca: Option<String>,
    pub data_dir: Option<String>,
}

impl EnvValues {
    /// Reads `WEFT_CP`, `WEFT_TOKEN`, `WEFT_CA` and `WEFT_DATA_DIR`.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok();
        Self::new(
            var("WEFT_CP"),
            var("WEFT_TOKEN"),
            var("WEFT_CA"),
            var("WEFT_DATA_DIR"),
        )
    }

    /// Builds the values, dropping empty or blank ones.
    pub fn new(
        cp: Option<String>,
        token: Option<String>,
        ca: Option<String>,
        data_dir: Option<String>,
    ) -> Self {
        let keep = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        Self {
            cp: keep(cp),
            token: keep(token),
            ca: keep(ca),
            data_dir: keep(data_dir),
        }
    }
}

/// The data directory in use, if any, and how to name it in messages.
struct DataDir {
    /// Path to read files from (made absolute against the working directory).
    path: Option<PathBuf>,
    /// Whether the user named it (then missing files are an error, not a fallback).
    explicit: bool,
    /// As the user would type it, for hints.
    label: String,
}

fn data_dir(flags: &GlobalArgs, env: &EnvValues, cwd: &Path) -> DataDir {
    let given = flags
        .data_dir
        .clone()
        .or_else(|| env.data_dir.as_ref().map(PathBuf::from));
    match given {
        Some(dir) => DataDir {
            path: Some(cwd.join(&dir)),
            explicit: true,
            label: dir.display().to_string(),
        },
        None => {
            let default = cwd.join(DEFAULT_DATA_DIR);
            DataDir {
                path: default.is_dir().then_some(default),
                explicit: false,
                label: DEFAULT_DATA_DIR.to_string(),
            }
        }
    }
}

/// Resolves flags, environment and data directory into [`ConnectOptions`].
/// Every error here is a usage error (exit 2): nothing has been sent yet.
pub fn resolve(
    flags: &GlobalArgs,
    env: &EnvValues,
    cwd: &Path,
) -> Result<ConnectOptions, CliError> {
    let dir = data_dir(flags, env, cwd);
    let url = normalize_url(flags.cp.as_deref().or(env.cp.as_deref()))?;
    let token = resolve_token(flags, env, &dir)?;
    let (ca_pem, ca_label) = resolve_ca(flags, env, cwd, &dir)?;
    Ok(ConnectOptions {
        url,
        token,
        ca_pem,
        ca_label,
        data_dir_label: dir.label,
    })
}

fn resolve_token(flags: &GlobalArgs, env: &EnvValues, dir: &DataDir) -> Result<String, CliError> {
    if let Some(token) = flags.token.as_deref().or(env.token.as_deref()) {
        let token = token.trim();
        if token.is_empty() {
            return Err(no_token());
        }
        return Ok(token.to_string());
    }
    let Some(path) = dir.path.as_ref().map(|p| p.join(TOKEN_FILE)) else {
        return Err(no_token());
    };
    let label = format!("{}/{TOKEN_FILE}", dir.label);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(CliError::Usage(format!(
            "no admin token: {label} is empty; pass --token or set WEFT_TOKEN"
        ))),
        Err(e) if !dir.explicit && e.kind() == std::io::ErrorKind::NotFound => Err(no_token()),
        Err(e) => Err(CliError::Usage(format!(
            "no admin token: cannot read {label}: {e}; pass --token, set WEFT_TOKEN, or point --data-dir at weft-cp's data directory"
        ))),
    }
}

fn no_token() -> CliError {
    CliError::Usage(
        "no admin token: pass --token, set WEFT_TOKEN, or run from the directory holding weft-data/"
            .to_string(),
    )
}

fn resolve_ca(
    flags: &GlobalArgs,
    env: &EnvValues,
    cwd: &Path,
    dir: &DataDir,
) -> Result<(Vec<u8>, String), CliError> {
    let hint = format!("pass --ca {}/{CA_FILE}", dir.label);
    let given = flags
        .ca
        .clone()
        .or_else(|| env.ca.as_ref().map(PathBuf::from));
    let (path, label) = match (given, dir.path.as_ref()) {
        (Some(file), _) => (cwd.join(&file), file.display().to_string()),
        (None, Some(d)) => (d.join(CA_FILE), format!("{}/{CA_FILE}", dir.label)),
        (None, None) => {
            return Err(CliError::Usage(
                "no CA certificate to check the control plane with: pass --ca FILE, set WEFT_CA, \
                 or run from the directory holding weft-data/"
                    .to_string(),
            ));
        }
    };
    let pem = std::fs::read(&path)
        .map_err(|e| CliError::Usage(format!("cannot read the CA file {label}: {e}; {hint}")))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(CliError::Usage(format!(
            "{label} holds no PEM certificate; {hint}"
        )));
    }
    Ok((pem, label))
}

/// `--cp URL[,URL...]`: each URL normalised ([`normalize_one`]), joined by commas. The
/// replicas of one control plane are tried in turn when connecting.
pub fn normalize_url(given: Option<&str>) -> Result<String, CliError> {
    let Some(list) = given else {
        return normalize_one(DEFAULT_CP);
    };
    let urls = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(normalize_one)
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(CliError::Usage(format!(
            "--cp {list}: no URL given; use e.g. {DEFAULT_CP}, or several separated by commas"
        )));
    }
    Ok(urls.join(","))
}

/// Accepts `https://host:port` or bare `host:port`; refuses `http://` because the
/// control plane only serves TLS, and a plaintext attempt would fail obscurely.
fn normalize_one(raw: &str) -> Result<String, CliError> {
    let raw = raw.trim();
    let url = if let Some(rest) = raw.strip_prefix("http://") {
        return Err(CliError::Usage(format!(
            "--cp {raw}: the control plane is TLS-only; use https://{rest}"
        )));
    } else if raw.contains("://") {
        raw.to_string()
    } else {
        format!("https://{raw}")
    };
    let uri: http::Uri = url.parse().map_err(|e| {
        CliError::Usage(format!(
            "--cp {raw}: not a URL ({e}); use e.g. {DEFAULT_CP}"
        ))
    })?;
    if uri.scheme_str() != Some("https") {
        return Err(CliError::Usage(format!(
            "--cp {raw}: the control plane is reached over https only; use e.g. {DEFAULT_CP}"
        )));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(CliError::Usage(format!(
            "--cp {raw}: no host in the URL; use e.g. {DEFAULT_CP}"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::error::EXIT_USAGE;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn data_dir_in(root: &Path, name: &str, token: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(TOKEN_FILE), token).unwrap();
        std::fs::write(dir.join(CA_FILE), PEM).unwrap();
        dir
    }

    fn err_text(r: Result<ConnectOptions, CliError>) -> (i32, String) {
        match r {
            Ok(o) => panic!("expected an error, got {o:?}"),
            Err(e) => (e.exit_code(), e.to_string()),
        }
    }

    #[test]
    fn uses_weft_data_in_the_working_directory() {
        let tmp = tempfile::tempdir().unwrap();
        data_dir_in(tmp.path(), DEFAULT_DATA_DIR, "  file-token\n");
        let opts = resolve(&GlobalArgs::default(), &EnvValues::default(), tmp.path()).unwrap();
        assert_eq!(opts.url, DEFAULT_CP);
        assert_eq!(opts.token, "file-token");
        assert_eq!(opts.ca_pem, PEM.as_bytes());
        assert_eq!(opts.ca_label, "weft-data/ca.pem");
    }

    #[test]
    fn flag_beats_env_beats_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        data_dir_in(tmp.path(), DEFAULT_DATA_DIR, "file-token");
        let other = data_dir_in(tmp.path(), "other", "other-token");
        let env = EnvValues::new(
            Some("https://env:1".into()),
            Some("env-token".into()),
            None,
            None,
        );
        let opts = resolve(&GlobalArgs::default(), &env, tmp.path()).unwrap();
        assert_eq!(
            (opts.url.as_str(), opts.token.as_str()),
            ("https://env:1", "env-token")
        );

        let flags = GlobalArgs {
            cp: Some("https://flag:2".into()),
            token: Some("flag-token".into()),
            ca: Some(other.join(CA_FILE)),
            ..GlobalArgs::default()
        };
        let opts = resolve(&flags, &env, tmp.path()).unwrap();
        assert_eq!(
            (opts.url.as_str(), opts.token.as_str()),
            ("https://flag:2", "flag-token")
        );
        assert!(opts.ca_label.ends_with("other/ca.pem"));
    }

    #[test]
    fn data_dir_flag_beats_env_and_default() {
        let tmp = tempfile::tempdir().unwrap();
        data_dir_in(tmp.path(), DEFAULT_DATA_DIR, "default-token");
        data_dir_in(tmp.path(), "env-dir", "env-dir-token");
        data_dir_in(tmp.path(), "flag-dir", "flag-dir-token");
        let env = EnvValues::new(None, None, None, Some("env-dir".into()));
        let opts = resolve(&GlobalArgs::default(), &env, tmp.path()).unwrap();
        assert_eq!(opts.token, "env-dir-token");
        let flags = GlobalArgs {
            data_dir: Some("flag-dir".into()),
            ..GlobalArgs::default()
        };
        let opts = resolve(&flags, &env, tmp.path()).unwrap();
        assert_eq!(opts.token, "flag-dir-token");
        assert_eq!(opts.data_dir_label, "flag-dir");
    }

    #[test]
    fn no_token_anywhere_is_a_usage_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (code, msg) = err_text(resolve(
            &GlobalArgs::default(),
            &EnvValues::default(),
            tmp.path(),
        ));
        assert_eq!(code, EXIT_USAGE);
        assert_eq!(
            msg,
            "no admin token: pass --token, set WEFT_TOKEN, or run from the directory holding weft-data/"
        );
    }

    #[test]
    fn missing_ca_file_names_the_flag() {
        let tmp = tempfile::tempdir().unwrap();
        let flags = GlobalArgs {
            token: Some("t".into()),
            ca: Some(tmp.path().join("nope.pem")),
            ..GlobalArgs::default()
        };
        let (code, msg) = err_text(resolve(&flags, &EnvValues::default(), tmp.path()));
        assert_eq!(code, EXIT_USAGE);
        assert!(
            msg.contains("nope.pem") && msg.contains("pass --ca weft-data/ca.pem"),
            "{msg}"
        );
    }

    #[test]
    fn several_urls_are_each_normalised() {
        assert_eq!(
            normalize_url(Some("a:1, https://b:2/")).unwrap(),
            "https://a:1,https://b:2"
        );
        assert!(normalize_url(Some("https://a:1,http://b:2")).is_err());
        assert!(normalize_url(Some(",")).is_err());
    }

    #[test]
    fn urls_must_be_https() {
        assert_eq!(normalize_url(None).unwrap(), DEFAULT_CP);
        assert_eq!(
            normalize_url(Some("cp.example:7400")).unwrap(),
            "https://cp.example:7400"
        );
        assert_eq!(
            normalize_url(Some("https://[::1]:7400/")).unwrap(),
            "https://[::1]:7400"
        );
        let err = normalize_url(Some("http://127.0.0.1:7400")).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(
            err.to_string()
                .contains("TLS-only; use https://127.0.0.1:7400")
        );
        assert!(normalize_url(Some("ftp://x")).is_err());
    }
}
