//! Headless Chromium for the dashboard tests: load a page, let its scripts run, then
//! read the DOM they built (`--dump-dom`) or take a screenshot.
//!
//! Chromium must be installed (Debian: `apt-get install chromium`; scripts/test and
//! .ci/run install it). It runs with `--no-sandbox` because tests may run as root,
//! where Chromium's sandbox refuses to start; pages come only from the local test
//! control plane.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long the page's scripts may run (virtual time: Chromium waits for pending
/// fetches): long enough for the first answer and a refresh or two.
const SCRIPT_BUDGET_MS: u32 = 6000;
/// A Chromium run that takes longer than this (real time) has hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The Chromium binary on PATH; fails (never skips) with how to install it.
pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
        {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if out.status.success() && !path.is_empty() {
                return PathBuf::from(path);
            }
        }
    }
    panic!(
        "the dashboard tests need Chromium: apt-get install chromium (scripts/test installs it when missing)"
    );
}

/// Runs headless Chromium on `url` with `extra` arguments, in a fresh profile.
fn run(url: &str, extra: &[String]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--window-size=1280,960",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={SCRIPT_BUDGET_MS}"))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start Chromium: {e}"));
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "Chromium did not finish with {url} within {RUN_TIMEOUT:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The DOM of `url` after its scripts ran, as HTML.
pub fn dump_dom(url: &str) -> String {
    let out = run(url, &["--dump-dom".to_owned()]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("<html"),
        "Chromium could not load {url} ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// A PNG screenshot of `url` after its scripts ran, written to `path`.
pub fn screenshot(url: &str, path: &Path) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let _ = std::fs::remove_file(path);
    let out = run(url, &[format!("--screenshot={}", path.display())]);
    let png = std::fs::read(path).unwrap_or_default();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "no screenshot of {url} in {} ({}): {}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where tests leave files for people to look at: `target/test-artifacts/`.
pub fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/test-artifacts
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("test-artifacts"))
        .unwrap()
}
