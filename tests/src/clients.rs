//! Clients the tests drive the mesh with: raw HTTP/1.1, curl, and the Python
//! clients of tests/py.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A plain HTTP/1.1 GET with `Connection: close`; returns the raw response.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

/// Runs curl; returns (exit code, stdout, stderr).
pub fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl must be installed (apt-get install curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl that must succeed; returns the JSON body.
pub fn curl_json(args: &[&str]) -> serde_json::Value {
    let (code, out, err) = curl(args);
    assert_eq!(code, 0, "curl {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("curl {args:?}: not JSON ({e}): {out}"))
}

/// SHA-256 of `data`, lower-case hex (what the demo app reports).
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The events of a demo app's journal (its `/_requests` JSON) for requests to `path`.
pub fn journal_events(journal: &serde_json::Value, path: &str) -> Vec<serde_json::Value> {
    journal["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["path"] == path)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// How to install the Python clients' packages.
pub const PIP_INSTALL: &str = "python3 -m pip install -r tests/py/requirements.txt";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn py_dir() -> PathBuf {
    workspace_root().join("tests").join("py")
}

/// Fails (never skips) when the Python clients' packages are missing.
pub fn require_python_packages() {
    let out = Command::new("python3")
        .args([
            "-c",
            "import grpc, grpc_tools, websockets, h2, hyperframe, wsproto",
        ])
        .output()
        .unwrap_or_else(|err| panic!("python3 is needed ({err}); then run: {PIP_INSTALL}"));
    assert!(
        out.status.success(),
        "the Python clients' packages are missing; install them with `{PIP_INSTALL}` \
         (from the workspace root):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a Python client of tests/py; returns its JSON output and whether it exited 0.
pub fn py(script: &str, args: &[&str]) -> (serde_json::Value, bool) {
    require_python_packages();
    let out = Command::new("python3")
        .arg(py_dir().join(script))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|err| {
        panic!(
            "{script} {args:?} printed no JSON ({err}); stdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (json, out.status.success())
}

/// Runs a Python client that must succeed.
pub fn py_ok(script: &str, args: &[&str]) -> serde_json::Value {
    let (json, success) = py(script, args);
    assert!(
        success && json["ok"] == true,
        "{script} {args:?} failed: {json:#}"
    );
    json
}

/// The id a `weftctl ... create` command printed: the first column of its one row.
pub fn created_id(out: &str) -> String {
    out.lines()
        .nth(1)
        .and_then(|row| row.split_whitespace().next())
        .unwrap_or_else(|| panic!("no created row in {out:?}"))
        .to_owned()
}
