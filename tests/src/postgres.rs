//! A throwaway PostgreSQL server for the replica tests: `initdb` in a temporary
//! directory, `pg_ctl start` on a free loopback port, `pg_ctl stop` on drop.
//!
//! PostgreSQL refuses to run as root. When the tests run as root (CI, containers), every
//! server command goes through `runuser -u postgres` and the directory is handed to that
//! user (Debian's `postgresql` package creates it; scripts/test installs the package).
//! Binaries are found on PATH, else in Debian's /usr/lib/postgresql/<version>/bin.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::free_port;

/// A running PostgreSQL server with a database `weft` owned by user `weft`.
pub struct Postgres {
    bindir: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    run_as: Option<String>,
    _tmp: tempfile::TempDir,
}

/// How to install the server when it is missing.
pub const INSTALL: &str = "apt-get install postgresql";

fn bindir() -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !path.is_empty() {
            // Debian links some of them into /usr/local/bin or /usr/bin: use the
            // directory of the real file, where pg_ctl and postgres are too.
            let real = std::fs::canonicalize(&path).unwrap_or_else(|_| PathBuf::from(&path));
            return real.parent().unwrap().to_path_buf();
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin); install it with `{INSTALL}` (scripts/test does)")
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// Initialises and starts a server; waits until it accepts connections.
    pub fn start() -> Postgres {
        let bindir = bindir();
        let tmp = tempfile::tempdir().unwrap();
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let ok = Command::new("chown")
                .args(["-R", user])
                .arg(tmp.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot hand {} to user {user}", tmp.path().display());
        }
        let pg = Postgres {
            data: tmp.path().join("data"),
            port: free_port(),
            bindir,
            run_as,
            _tmp: tmp,
        };
        // Trust authentication: the server listens on loopback only, for this test.
        let out = pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.display().to_string(),
                "-U",
                "weft",
                "--auth=trust",
                "--locale=C",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(out.status.success(), "initdb failed: {}", text(&out));
        pg.start_server();
        let out = pg.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "weft",
                "weft",
            ],
        );
        assert!(out.status.success(), "createdb failed: {}", text(&out));
        pg
    }

    /// `postgres://weft@127.0.0.1:PORT/weft`, or the same through another port (a proxy).
    pub fn url(&self) -> String {
        self.url_via(self.port)
    }

    pub fn url_via(&self, port: u16) -> String {
        format!("postgres://weft@127.0.0.1:{port}/weft")
    }

    /// Starts the server (after [`Postgres::stop`]).
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self._tmp.path().display()
        );
        let log = self._tmp.path().join("postgres.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-o",
                &options,
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server: `fast` ends sessions and shuts down cleanly; `immediate` is
    /// the equivalent of a crash (recovery from the WAL at the next start).
    pub fn stop(&self, mode: &str) {
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                mode,
                "-w",
                "stop",
            ],
        );
        assert!(out.status.success(), "pg_ctl stop failed: {}", text(&out));
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bindir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args)
            .current_dir(self._tmp.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }

    pub fn dir(&self) -> &Path {
        self._tmp.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The database and its replicas' shared secret.
pub struct Shared {
    pub pg: Postgres,
    pub secret: PathBuf,
}

impl Shared {
    pub fn start() -> Shared {
        let pg = Postgres::start();
        let secret = pg.dir().join("ca-key-secret");
        std::fs::write(&secret, format!("{}\n", "s3cret-for-the-tests-".repeat(3))).unwrap();
        Shared { pg, secret }
    }

    /// weft-cp flags of a replica on this database (through `port`, e.g. a proxy's).
    pub fn replica_args_via(&self, port: u16) -> Vec<String> {
        vec![
            "--store".into(),
            self.pg.url_via(port),
            "--ca-key-secret".into(),
            self.secret.display().to_string(),
        ]
    }

    pub fn replica_args(&self) -> Vec<String> {
        self.replica_args_via(self.pg.port)
    }

    /// Starts one weft-cp replica on this database.
    pub async fn replica(&self, extra: &[&str]) -> crate::ControlPlane {
        let mut args = self.replica_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::ControlPlane::start(&args).await
    }
}
