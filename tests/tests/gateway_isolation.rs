//! No public client can slow another: a client that opens many streams for large bodies
//! with a window of 0 and never reads holds its own streams and nothing else. Real
//! weft-cp, gateway, sidecars and demo apps; the staller is a Python h2 client, the
//! victims are curl downloads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use weft_tests::{
    ControlPlane, Gateway, curl, deploy, eventually, py_dir, require_python_packages,
};

const VICTIM_BYTES: usize = 2_000_000;

/// Downloads `VICTIM_BYTES` through the gateway in `mode`; returns curl's exit code and
/// the bytes received. The deadline is generous (a download takes milliseconds here):
/// it only says "it did not hang".
fn victim(gw_port: u16, host: &str, mode: &str) -> (i32, String, String) {
    curl(&[
        mode,
        "--max-time",
        "15",
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        "--connect-to",
        &format!("{host}:{gw_port}:127.0.0.1:{gw_port}"),
        &format!("http://{host}:{gw_port}/bytes?n={VICTIM_BYTES}"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_does_not_stall_the_others() {
    require_python_packages();
    let cp = ControlPlane::start(&[]).await;
    // One HTTP/1.1 app (the inbound translates) and one h2c app (HTTP/2 end to end).
    let _web = deploy(&cp, "web", "http", 0, "h1", "eu").await;
    let _api = deploy(&cp, "api", "http2", 0, "h2c", "eu").await;
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    cp.weftctl_ok(&["route", "create", "api.example.com", "--service", "api"]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("api.example.com").await;
    let port = gw.http.port();

    for host in ["web.example.com", "api.example.com"] {
        // The staller: 12 streams of 8 MB, initial window 0, never read.
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("stalled");
        let done = dir.path().join("done");
        let staller = Command::new("python3")
            .arg(py_dir().join("h2_stall.py"))
            .args(["--port", &port.to_string(), "--authority", host])
            .args([
                "--streams",
                "12",
                "--path",
                "/bytes?n=8000000",
                "--hold",
                "25",
            ])
            .arg("--ready-file")
            .arg(&ready)
            .arg("--until-file")
            .arg(&done)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        eventually(Duration::from_secs(20), || async {
            ready.exists().then_some(())
        })
        .await;

        // Five victims at once, HTTP/2 and HTTP/1.1, each on its own connection.
        let victims: Vec<_> = ["--http2-prior-knowledge", "--http1.1"]
            .iter()
            .cycle()
            .take(5)
            .map(|mode| {
                let (host, mode) = (host.to_owned(), (*mode).to_owned());
                tokio::task::spawn_blocking(move || victim(port, &host, &mode))
            })
            .collect();
        for v in victims {
            let (code, size, err) = v.await.unwrap();
            assert_eq!(code, 0, "{host}: a victim's download failed or hung: {err}");
            assert_eq!(
                size,
                VICTIM_BYTES.to_string(),
                "{host}: a victim got part of its body"
            );
        }

        // The staller still holds its streams: every response started, nothing flowed.
        std::fs::write(&done, "done\n").unwrap();
        let out = tokio::task::spawn_blocking(move || staller.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "h2_stall.py printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(json["headers"], 12, "{host}: {json}");
        assert_eq!(json["data_bytes"], 0, "{host}: {json}");
    }
}
