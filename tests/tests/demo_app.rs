//! The demo app (`weft-demo-app`) driven directly, with no mesh in between, by the real
//! clients the mesh tests use: curl (`--http1.1`, `--http2-prior-knowledge`) and the
//! Python clients in `tests/py/` (grpcio, websockets, h2 + wsproto). These prove the app
//! and the clients, so a mesh test that fails points at the mesh.
//!
//! Needs the binaries (`cargo build --workspace --bins`) and the Python packages
//! (`python3 -m pip install -r tests/py/requirements.txt`); a missing package fails the
//! test with that command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_tests::{bin, free_port, journal_events, py, py_ok, sha256_hex};

/// A running `weft-demo-app`, killed when dropped.
struct DemoApp {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    _tmp: tempfile::TempDir,
}

impl DemoApp {
    fn start(mode: &str) -> DemoApp {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("demo-app.log");
        let port = free_port();
        let child = Command::new(bin("weft-demo-app"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--mode", mode])
            .args(["--name", &format!("demo-{mode}")])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut app = DemoApp {
            child: Some(child),
            port,
            log,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = app.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weft-demo-app exited early ({status}):\n{}", app.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "weft-demo-app did not listen:\n{}",
                app.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        app
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (None if it did not exit within `within`).
    fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A curl answer: status, response headers (lower-case names) and body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// curl with `-i`, parsed; asserts curl succeeded.
fn curl_answer(args: &[&str]) -> Answer {
    let out = curl(&[&["-i"], args].concat());
    assert!(
        out.status.success(),
        "curl {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut raw = out.stdout;
    // Skip interim answers (e.g. `100 Continue` to `Expect: 100-continue`).
    while raw.starts_with(b"HTTP/1.1 1") || raw.starts_with(b"HTTP/2 1") {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("end of an interim answer");
        raw.drain(..end + 4);
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn h1(app: &DemoApp, path: &str, extra: &[&str]) -> Answer {
    curl_answer(&[&["--http1.1", &app.url(path)], extra].concat())
}

fn h2(app: &DemoApp, path: &str, extra: &[&str]) -> Answer {
    curl_answer(&[&["--http2-prior-knowledge", &app.url(path)], extra].concat())
}

/// Sends raw bytes on a fresh connection and reads until the peer closes, `enough`
/// says so, or 5 s passed.
fn raw_exchange_until(app: &DemoApp, request: &[u8], enough: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while !enough(&out) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// [`raw_exchange_until`] the peer closes.
fn raw_exchange(app: &DemoApp, request: &[u8]) -> Vec<u8> {
    raw_exchange_until(app, request, |_| false)
}

/// Polls `f` for up to 5 s.
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "condition not met within 5 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

/// Tests live in this module so `cargo nextest run -p weft-tests demo_app` selects them.
mod demo_app {
    use super::*;

    // ---- versions, headers, bodies ----

    #[test]
    fn h1_mode_reports_http11_request() {
        let app = DemoApp::start("h1");
        let a = h1(
            &app,
            "/echo/path?x=1&y=2",
            &[
                "-H",
                "X-Demo: a",
                "-H",
                "X-Demo: b",
                "--data-binary",
                "hello",
            ],
        );
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-demo-version"), Some("HTTP/1.1"));
        assert_eq!(a.header("content-type"), Some("application/json"));
        let j = a.json();
        assert_eq!(j["app"], "demo-h1");
        assert_eq!(j["version"], "HTTP/1.1");
        assert_eq!(j["method"], "POST");
        assert_eq!(j["path"], "/echo/path?x=1&y=2");
        assert_eq!(j["host"], app.target());
        assert_eq!(strings(&j["headers"]["x-demo"]), ["a", "b"]);
        assert_eq!(strings(&j["headers"]["host"]), [app.target().as_str()]);
        assert_eq!(j["body_bytes"], 5);
        assert_eq!(j["trailers"], serde_json::json!({}));
        // Headers are reported in the order received (curl sends Host first, then
        // User-Agent); serde_json's Value sorts keys, so look at the raw body.
        let body = String::from_utf8_lossy(&a.body);
        let host_at = body.find(r#""host":["#).unwrap();
        let agent_at = body.find(r#""user-agent":["#).unwrap();
        assert!(host_at < agent_at, "{body}");

        // No HTTP/2 here: curl with prior knowledge fails.
        let out = curl(&["--http2-prior-knowledge", &app.url("/")]);
        assert!(!out.status.success(), "h2 to an h1-only app must fail");
    }

    #[test]
    fn h2c_mode_reports_http2_request() {
        let app = DemoApp::start("h2c");
        let a = h2(&app, "/p?q=1", &["-H", "X-Custom: v1", "-d", "abc"]);
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-demo-version"), Some("HTTP/2.0"));
        let j = a.json();
        assert_eq!(j["version"], "HTTP/2.0");
        assert_eq!(j["app"], "demo-h2c");
        assert_eq!(j["path"], "/p?q=1");
        assert_eq!(j["method"], "POST");
        // The host comes from :authority; h2 has no Host header.
        assert_eq!(j["host"], app.target());
        assert!(j["headers"].get("host").is_none(), "{j:#}");
        assert_eq!(strings(&j["headers"]["x-custom"]), ["v1"]);
        assert_eq!(j["body_bytes"], 3);

        // No HTTP/1.1 here: the app answers an h1 request with h2 frames and closes.
        let out = curl(&["--http1.1", &app.url("/")]);
        assert!(!out.status.success(), "h1 to an h2c-only app must fail");
    }

    #[test]
    fn auto_mode_serves_both_versions() {
        let app = DemoApp::start("auto");
        assert_eq!(h1(&app, "/", &[]).json()["version"], "HTTP/1.1");
        assert_eq!(h2(&app, "/", &[]).json()["version"], "HTTP/2.0");
    }

    #[test]
    fn grpc_mode_answers_plain_http_with_the_echo() {
        let app = DemoApp::start("grpc");
        let j = h2(&app, "/not-grpc", &[]).json();
        assert_eq!(j["version"], "HTTP/2.0");
        assert_eq!(j["app"], "demo-grpc");
        assert_eq!(j["path"], "/not-grpc");
    }

    /// What a sidecar's probe sees: an h2c app answers the preface with SETTINGS; an h1 app
    /// closes without an HTTP/2 frame.
    #[test]
    fn probes_can_tell_h1_from_h2c() {
        const PREFACE_AND_SETTINGS: &[u8] =
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        let h2c = DemoApp::start("h2c");
        let got = raw_exchange_until(&h2c, PREFACE_AND_SETTINGS, |got| got.len() >= 9);
        assert!(
            got.len() >= 9 && got[3] == 0x04,
            "h2c app: want a SETTINGS frame, got {got:?}"
        );
        let h1 = DemoApp::start("h1");
        let got = raw_exchange(&h1, PREFACE_AND_SETTINGS);
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 4") || got.starts_with(b"HTTP/1.1 5"),
            "h1 app: want a close or an h1 error, got {:?}",
            String::from_utf8_lossy(&got)
        );
    }

    // ---- trailers ----

    #[test]
    fn request_trailers_are_reported_h1_and_h2() {
        let app = DemoApp::start("auto");
        let request = "POST /t HTTP/1.1\r\nHost: trailers.test\r\nTransfer-Encoding: chunked\r\n\
                       Trailer: x-req-trailer\r\nConnection: close\r\n\r\n\
                       5\r\nhello\r\n0\r\nx-req-trailer: yes\r\n\r\n";
        let got = String::from_utf8(raw_exchange(&app, request.as_bytes())).unwrap();
        let body = &got[got.find("\r\n\r\n").expect("headers end") + 4..];
        let j: Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {got}"));
        assert_eq!(j["version"], "HTTP/1.1");
        assert_eq!(j["host"], "trailers.test");
        assert_eq!(j["body_bytes"], 5);
        assert_eq!(strings(&j["trailers"]["x-req-trailer"]), ["yes"]);

        let r = py_ok(
            "h2_request.py",
            &[
                "--host",
                "127.0.0.1",
                "--port",
                &app.port.to_string(),
                "--method",
                "POST",
                "--path",
                "/t2",
                "--body-bytes",
                "100000",
                "--trailer",
                "x-req-trailer:h2",
                "--trailer",
                "x-other:2",
            ],
        );
        let j = &r["json"];
        assert_eq!(r["status"], "200");
        assert_eq!(j["version"], "HTTP/2.0");
        assert_eq!(j["body_bytes"], 100_000);
        assert_eq!(strings(&j["trailers"]["x-req-trailer"]), ["h2"]);
        assert_eq!(strings(&j["trailers"]["x-other"]), ["2"]);
        assert_eq!(strings(&j["headers"]["te"]), ["trailers"]);
    }

    #[test]
    fn response_trailers_h1_chunked_and_h2() {
        let app = DemoApp::start("auto");
        // h1: sent as chunked trailers when the request says `TE: trailers`.
        let out = curl(&[
            "--http1.1",
            "--raw",
            "-i",
            "-H",
            "TE: trailers",
            &app.url("/trailers"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("trailer: x-demo-trailer"),
            "{text}"
        );
        assert!(
            text.contains("\r\n0\r\nx-demo-trailer: done\r\n"),
            "no chunked trailer: {text}"
        );
        // …and not without it.
        let out = curl(&["--http1.1", "--raw", "-i", &app.url("/trailers")]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("x-demo-trailer: done"), "{text}");

        // h2: a trailing HEADERS frame.
        let r = py_ok(
            "h2_request.py",
            &[
                "--host",
                "127.0.0.1",
                "--port",
                &app.port.to_string(),
                "--path",
                "/trailers",
            ],
        );
        assert_eq!(strings(&r["trailers"]["x-demo-trailer"]), ["done"]);
        assert_eq!(r["json"]["version"], "HTTP/2.0");
    }

    // ---- sizes, delays, statuses ----

    /// Byte i of a /bytes body is i % 256.
    fn assert_pattern(path: &Path, n: usize) {
        let data = std::fs::read(path).unwrap();
        assert_eq!(data.len(), n, "downloaded size");
        if let Some(i) = data.iter().enumerate().position(|(i, b)| *b != i as u8) {
            panic!("byte {i} is {} (want {})", data[i], i as u8);
        }
    }

    #[test]
    fn bytes_and_upload_count_exactly() {
        let app = DemoApp::start("auto");
        let tmp = tempfile::tempdir().unwrap();
        const N: usize = 5 * 1024 * 1024 + 123;
        for (version, flag) in [("h1", "--http1.1"), ("h2", "--http2-prior-knowledge")] {
            let file = tmp.path().join(format!("bytes-{version}"));
            let out = curl(&[
                flag,
                "-o",
                file.to_str().unwrap(),
                &app.url(&format!("/bytes?n={N}")),
            ]);
            assert!(out.status.success(), "{out:?}");
            assert_pattern(&file, N);
        }

        let upload = tmp.path().join("upload");
        std::fs::write(&upload, vec![7u8; 3 * 1024 * 1024 + 7]).unwrap();
        for (flag, version) in [
            ("--http1.1", "HTTP/1.1"),
            ("--http2-prior-knowledge", "HTTP/2.0"),
        ] {
            // --data-binary: content-length; -T with chunked on h1.
            let a = curl_answer(&[
                flag,
                "--data-binary",
                &format!("@{}", upload.display()),
                &app.url("/upload"),
            ]);
            assert_eq!(a.json()["body_bytes"], 3 * 1024 * 1024 + 7);
            assert_eq!(a.json()["version"], version);
            let a = curl_answer(&[
                flag,
                "-T",
                upload.to_str().unwrap(),
                "-H",
                "Transfer-Encoding: chunked",
                &app.url("/upload"),
            ]);
            assert_eq!(a.json()["body_bytes"], 3 * 1024 * 1024 + 7);
        }
    }

    #[test]
    fn status_and_sleep() {
        let app = DemoApp::start("auto");
        let a = h1(&app, "/status?code=418", &[]);
        assert_eq!(a.status, 418);
        assert_eq!(a.json()["path"], "/status?code=418");
        assert_eq!(h2(&app, "/status?code=503", &[]).status, 503);
        let a = h2(&app, "/status?code=204", &[]);
        assert_eq!(a.status, 204);
        assert!(a.body.is_empty());
        let a = h1(&app, "/status?code=abc", &[]);
        assert_eq!(a.status, 400);
        assert!(a.json()["error"].as_str().unwrap().contains("code"));

        let start = Instant::now();
        let a = h2(&app, "/sleep?ms=300", &[]);
        assert_eq!(a.status, 200);
        assert!(start.elapsed() >= Duration::from_millis(300));
        // A client that gives up first times out (curl exit 28).
        let out = curl(&["--http1.1", "--max-time", "0.3", &app.url("/sleep?ms=3000")]);
        assert_eq!(out.status.code(), Some(28), "{out:?}");
    }

    /// The bodies the transparency suite relies on: seeded bytes announced by their
    /// digest, chunked, HEAD with a length and no body, failing part-way, and the
    /// journal that tells how each body ended.
    #[test]
    fn bytes_variants_and_the_journal() {
        let app = DemoApp::start("auto");
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("seeded");
        for flag in ["--http1.1", "--http2-prior-knowledge"] {
            let out = curl(&[
                flag,
                "-D",
                "-",
                "-o",
                file.to_str().unwrap(),
                &app.url("/bytes?n=300000&seed=9"),
            ]);
            assert!(out.status.success(), "{out:?}");
            let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
            let got = std::fs::read(&file).unwrap();
            assert_eq!(got.len(), 300_000);
            let digest = sha256_hex(&got);
            assert!(
                head.contains(&format!("x-demo-sha256: {digest}")),
                "{flag}: {head}"
            );
        }
        let a = h1(&app, "/bytes?n=1000&chunked=1", &[]);
        assert_eq!(a.header("transfer-encoding"), Some("chunked"));
        assert_eq!(a.header("content-length"), None);
        assert_eq!(a.body.len(), 1000);
        let a = h1(&app, "/bytes?n=55", &["-I"]);
        assert_eq!(a.header("content-length"), Some("55"));
        assert!(a.body.is_empty());
        // The echo reports the SHA-256 of what it read.
        let j = h2(&app, "/echo", &["--data-binary", "hello"]).json();
        assert_eq!(j["sha256"], sha256_hex(b"hello"));
        // Trailers, declared in a Trailer header or not (as h2 servers usually send them).
        let declared = h2(&app, "/trailers", &[]);
        assert_eq!(declared.header("trailer"), Some("x-demo-trailer"));
        let undeclared = h2(&app, "/trailers?declare=0", &[]);
        assert_eq!(undeclared.header("trailer"), None);
        // Failing part-way: h1 closes short of the length (curl 18), h2 resets (curl 92).
        for (flag, exit) in [("--http1.1", 18), ("--http2-prior-knowledge", 92)] {
            let out = curl(&[
                flag,
                "-o",
                "/dev/null",
                &app.url("/bytes?n=900000&reset_after=1000"),
            ]);
            assert_eq!(out.status.code(), Some(exit), "{flag}: {out:?}");
        }
        // An early answer leaves the body unread.
        let a = h1(
            &app,
            "/status?code=413&read=0",
            &["--data-binary", "0123456789"],
        );
        assert_eq!(a.status, 413);
        assert_eq!(a.json()["body_bytes"], 0);

        let events = h1(&app, "/_requests", &[]).json();
        let of = |path: &str| journal_events(&events, path);
        let seeded = of("/bytes?n=300000&seed=9");
        assert_eq!(seeded.len(), 2, "{events:#}");
        assert!(
            seeded
                .iter()
                .all(|e| e["outcome"] == "complete" && e["bytes"] == 300_000)
        );
        let failed = of("/bytes?n=900000&reset_after=1000");
        assert!(
            failed
                .iter()
                .all(|e| e["outcome"] == "failed" && e["bytes"] == 1000),
            "{events:#}"
        );
        assert!(of("/status?code=413&read=0").is_empty(), "{events:#}");
        let head = of("/bytes?n=55");
        assert!(
            head.len() == 1 && head[0]["method"] == "HEAD" && head[0]["bytes"] == 0,
            "{events:#}"
        );
        // Under the 1,000 kept, the total is the count of events.
        assert_eq!(
            events["total"].as_u64(),
            Some(events["events"].as_array().unwrap().len() as u64)
        );
    }

    /// A request body cut off mid-way is journaled as aborted, with what had arrived.
    #[test]
    fn an_aborted_upload_is_journaled() {
        let app = DemoApp::start("h1");
        let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
        s.write_all(
            b"POST /upload?cut HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
        let a = wait_for(|| {
            let journal = h1(&app, "/_requests", &[]).json();
            journal_events(&journal, "/upload?cut").into_iter().next()
        });
        assert_eq!(a["outcome"], "aborted", "{a}");
        assert_eq!(a["bytes"], 10, "{a}");
        assert_eq!(a["body"], "request", "{a}");
    }

    /// Raw mode: the app speaks first, answers after the client's half-close with what it
    /// received, and on `send N` sends N bytes, ends its side and still reads.
    #[test]
    fn raw_mode_speaks_first_and_honours_half_close() {
        use std::net::Shutdown;
        let app = DemoApp::start("raw");
        let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Nothing sent yet: the banner comes first.
        let mut banner = [0u8; 27];
        s.read_exact(&mut banner).unwrap();
        assert_eq!(&banner, b"weft-demo-app raw demo-raw\n");
        let payload = vec![42u8; 200_000];
        s.write_all(&payload).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = String::new();
        s.read_to_string(&mut rest).unwrap();
        assert_eq!(
            rest,
            format!("received 200000 sha256 {}\n", sha256_hex(&payload))
        );

        let mut s = TcpStream::connect(("127.0.0.1", app.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"send 100000\n").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got);
        let (banner, rest) = text.split_once('\n').unwrap();
        assert_eq!(banner, "weft-demo-app raw demo-raw");
        let header_end = got[banner.len() + 1..]
            .iter()
            .position(|b| *b == b'\n')
            .unwrap()
            + banner.len()
            + 2;
        let data = &got[header_end..];
        assert_eq!(data.len(), 100_000, "{rest:.60}");
        assert_eq!(
            String::from_utf8_lossy(&got[banner.len() + 1..header_end]),
            format!("sending 100000 sha256 {}\n", sha256_hex(data))
        );
        // The app ended its side; it still reads what the client sends.
        s.write_all(b"after the app's FIN").unwrap();
        drop(s);
        wait_for(|| {
            app.log_text()
                .contains("raw: 19 bytes received after the app's FIN")
                .then_some(())
        });
    }

    // ---- WebSockets ----

    #[test]
    fn websocket_over_h1_upgrade() {
        for mode in ["h1", "auto"] {
            let app = DemoApp::start(mode);
            let r = py_ok(
                "ws_client.py",
                &["--url", &format!("ws://{}/ws", app.target())],
            );
            assert_eq!(r["status"], 101);
            assert_eq!(r["text_echo"], true);
            assert_eq!(r["binary_echo"], true);
            assert_eq!(r["binary_bytes"], 65536);
            assert_eq!(r["close_code"], 1000);
            assert_eq!(
                strings(&r["response_headers"]["x-demo-version"]),
                ["HTTP/1.1"]
            );
        }
        // A plain GET to /ws is refused with 426.
        let app = DemoApp::start("h1");
        let a = h1(&app, "/ws", &[]);
        assert_eq!(a.status, 426);
    }

    #[test]
    fn websocket_over_h2_extended_connect() {
        for mode in ["h2c", "auto", "grpc"] {
            let app = DemoApp::start(mode);
            let r = py_ok(
                "h2_ws_client.py",
                &[
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &app.port.to_string(),
                    "--path",
                    "/ws",
                    "--binary-bytes",
                    "200000",
                ],
            );
            assert_eq!(r["enable_connect_protocol"], 1, "{mode}");
            assert_eq!(r["status"], "200");
            assert_eq!(r["text_echo"], true);
            assert_eq!(r["binary_echo"], true);
            assert_eq!(r["binary_bytes"], 200_000);
            assert_eq!(r["close_code"], 1000);
            assert_eq!(r["stream_ended"], true);
        }
        // An h1-only app has no h2 at all.
        let app = DemoApp::start("h1");
        let (r, ok) = py(
            "h2_ws_client.py",
            &["--host", "127.0.0.1", "--port", &app.port.to_string()],
        );
        assert!(!ok && r["ok"] == false, "{r:#}");
    }

    // ---- gRPC ----

    #[test]
    fn grpc_every_case() {
        let app = DemoApp::start("grpc");
        let r = py_ok(
            "grpc_client.py",
            &["--target", &app.target(), "--metadata", "x-extra=1", "all"],
        );
        let cases = &r["cases"];
        for case in [
            "unary",
            "server_stream",
            "client_stream",
            "bidi",
            "deadline",
            "cancel",
            "error",
            "health",
        ] {
            assert_eq!(cases[case]["ok"], true, "{case}: {:#}", cases[case]);
        }
        let reply = &cases["unary"]["reply"];
        assert_eq!(reply["http_version"], "HTTP/2.0");
        assert_eq!(reply["app"], "demo-grpc");
        let md = &reply["metadata"];
        assert_eq!(md["te"], "trailers");
        assert_eq!(md["x-extra"], "1");
        assert_eq!(md[":authority"], app.target());
        assert!(
            md["content-type"]
                .as_str()
                .unwrap()
                .starts_with("application/grpc")
        );
        assert!(md["grpc-timeout"].is_string());
        assert!(md["user-agent"].as_str().unwrap().contains("grpc-python"));

        // Streaming, not buffered: five replies spread over ~400 ms.
        assert!(cases["server_stream"]["spread_s"].as_f64().unwrap() >= 0.3);
        assert_eq!(cases["client_stream"]["reply"]["message"], "abcd");
        assert_eq!(cases["bidi"]["messages"], 5);
        assert_eq!(cases["deadline"]["code"], "DEADLINE_EXCEEDED");
        assert_eq!(cases["cancel"]["code"], "CANCELLED");
        let error = &cases["error"];
        assert_eq!(error["code"], "NOT_FOUND");
        assert_eq!(error["details"], "no such thing");
        assert_eq!(error["trailing_metadata"]["x-demo-detail"], "no such thing");
        assert_eq!(
            error["trailing_metadata"]["x-demo-bin"]["utf8"],
            "no such thing"
        );

        // The app logged the cancelled stream and the expired deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = app.log_text();
            let cancelled = log.contains("request cancelled") && log.contains("ServerStream");
            let expired = log.contains("deadline exceeded");
            if cancelled && expired {
                break;
            }
            assert!(Instant::now() < deadline, "missing cancel logs:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn grpc_single_cases_have_their_own_output() {
        let app = DemoApp::start("grpc");
        let r = py_ok("grpc_client.py", &["--target", &app.target(), "error"]);
        assert_eq!(r["cases"].as_object().unwrap().len(), 1);
        assert_eq!(r["cases"]["error"]["code"], "NOT_FOUND");
        // A gRPC client against a non-gRPC app fails, and says so in JSON.
        let h1_app = DemoApp::start("h1");
        let (r, ok) = py("grpc_client.py", &["--target", &h1_app.target(), "unary"]);
        assert!(!ok, "{r:#}");
        assert_eq!(r["cases"]["unary"]["ok"], false);
    }

    // ---- process ----

    #[test]
    fn sigterm_stops_cleanly_and_bad_usage_exits_2() {
        let mut app = DemoApp::start("auto");
        assert_eq!(h1(&app, "/", &[]).status, 200);
        // A request in flight when SIGTERM arrives still gets its answer.
        let slow = Command::new("curl")
            .args(["-sS", "--http1.1", "--max-time", "20"])
            .arg(app.url("/sleep?ms=1000"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        let status = app.terminate(Duration::from_secs(15));
        let slow = slow.wait_with_output().unwrap();
        assert!(slow.status.success(), "{slow:?}");
        let j: Value = serde_json::from_slice(&slow.stdout).unwrap();
        assert_eq!(j["path"], "/sleep?ms=1000");
        let log = app.log_text();
        assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
        assert!(log.contains("SIGTERM received"), "{log}");

        let out = Command::new(bin("weft-demo-app"))
            .args(["--mode", "h3"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("h2c"));
    }
}
