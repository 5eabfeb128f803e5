//! Traffic figures end to end: real sidecars count what their inbound delivers, report it
//! on the discovery stream, and `weftctl service stats` / `weftctl top` show what the
//! control plane's window holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use weft_tests::{ControlPlane, Gateway, bin, client_sidecar, curl, deploy, eventually, py, py_ok};

/// Reports come every 10 s and only complete 10 s buckets count: figures show within
/// about 20 s of the traffic.
const REPORTED_WITHIN: Duration = Duration::from_secs(45);

/// `weftctl service stats NAME -o json` once the figures satisfy `done`.
async fn stats_when(cp: &ControlPlane, service: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(REPORTED_WITHIN, || async {
        let out = cp.weftctl_ok(&["service", "stats", service, "-o", "json"]);
        let stats: Value = serde_json::from_str(&out).unwrap();
        let s = stats["services"]
            .as_array()?
            .iter()
            .find(|s| s["service"] == service)?
            .clone();
        done(&s).then_some(s)
    })
    .await
}

/// The status of one request through the gateway's plain listener, as h2c.
fn status_via(gw: &Gateway, host: &str, path: &str) -> String {
    let target = gw.plain(host, path);
    let mut args = vec![
        "--http2-prior-knowledge",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    args.extend(target.iter().map(String::as_str));
    let (code, status, err) = curl(&args);
    assert_eq!(code, 0, "{err}");
    status
}

#[tokio::test]
async fn requests_through_the_gateway_are_counted_at_the_inbound_and_shown_by_weftctl() {
    let cp = ControlPlane::start(&[]).await;
    let (_app, _sc) = deploy(&cp, "web", "http", 0, "h1", "eu").await;
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("web.example.com").await;

    // 20 answered 200 and 5 answered 500 by the app: the gateway speaks HTTP/2 to the
    // sidecar, which translates each request to the HTTP/1.1 app and counts it.
    for (path, status, times) in [("/", "200", 20), ("/status?code=500", "500", 5)] {
        for _ in 0..times {
            assert_eq!(status_via(&gw, "web.example.com", path), status);
        }
    }

    let web = stats_when(&cp, "web", |s| s["total"]["requests"] == 25).await;
    let total = &web["total"];
    assert_eq!(total["responses"]["2xx"], 20, "{web:#}");
    assert_eq!(total["responses"]["5xx"], 5, "{web:#}");
    assert_eq!(total["errors"], 5);
    assert!(
        (total["success_rate"].as_f64().unwrap() - 0.8).abs() < 1e-9,
        "{web:#}"
    );
    assert!(total["request_rate"].as_f64().unwrap() > 0.0, "{web:#}");
    let p50 = total["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = total["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{web:#}");
    let callers: u64 = web["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["figures"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(
        callers, 25,
        "every request is under one of the callers: {web:#}"
    );
    let series = web["series"].as_array().unwrap();
    let in_series: u64 = series
        .iter()
        .map(|p| p["figures"]["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(
        in_series, 25,
        "the 10 s points add up to the total: {web:#}"
    );

    // The table views.
    let table = cp.weftctl_ok(&["service", "stats"]);
    let row = table.lines().find(|l| l.starts_with("web ")).unwrap();
    assert!(row.contains("80.00%"), "{table}");
    let detail = cp.weftctl_ok(&["service", "stats", "web"]);
    assert!(detail.contains("5xx 5"), "{detail}");
    assert!(detail.contains("callers ("), "{detail}");

    // `top` with stdout not a terminal prints one screen and exits.
    let top = cp.weftctl(&["top", "--limit", "5"]);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    let screen = String::from_utf8(top.stdout).unwrap();
    assert!(
        screen.contains("REQ/S") && screen.contains("\nweb "),
        "{screen}"
    );
    assert!(
        !screen.contains('\x1b'),
        "no terminal sequences into a pipe: {screen:?}"
    );
}

#[tokio::test]
async fn spliced_tcp_streams_count_connections_and_bytes_not_requests() {
    let cp = ControlPlane::start(&[]).await;
    let port = weft_tests::free_port();
    let (_app, _db) = deploy(&cp, "db", "tcp", port, "h1", "eu").await;
    let (_client_app, client) = client_sidecar(&cp).await;
    client.wait_endpoints("db", 1).await;

    // curl speaks HTTP/1.1 through the outbound; with the `tcp` selector the inbound
    // splices the bytes to the app without looking at them.
    let url = format!("http://{}/bytes?n=5000", client.outbound(port));
    let (code, size, err) = curl(&["-o", "/dev/null", "-w", "%{size_download}", &url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(size, "5000");

    let db = stats_when(&cp, "db", |s| s["total"]["connections"].as_u64() >= Some(1)).await;
    let total = &db["total"];
    assert_eq!(
        total["requests"], 0,
        "a spliced stream's requests are not seen: {db:#}"
    );
    assert_eq!(total["success_rate"], Value::Null);
    assert!(
        total["bytes_in"].as_u64().unwrap() > 50,
        "the request went in: {db:#}"
    );
    assert!(
        total["bytes_out"].as_u64().unwrap() >= 5000,
        "the body came out: {db:#}"
    );
}

#[tokio::test]
async fn grpc_calls_count_a_failed_status_as_an_error() {
    let cp = ControlPlane::start(&[]).await;
    let (_app, _sc) = deploy(&cp, "greeter", "grpc", 0, "grpc", "eu").await;
    cp.weftctl_ok(&[
        "route",
        "create",
        "grpc.example.com",
        "--service",
        "greeter",
    ]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("grpc.example.com").await;
    let target = gw.http.to_string();
    let call = |case: &str| {
        let args = ["--target", &target, "--authority", "grpc.example.com", case];
        py_ok("grpc_client.py", &args);
    };
    // Three OK calls and two answered NOT_FOUND: HTTP 200 all, two gRPC errors.
    for case in ["unary", "unary", "unary", "error", "error"] {
        call(case);
    }
    let greeter = stats_when(&cp, "greeter", |s| s["total"]["requests"] == 5).await;
    let total = &greeter["total"];
    assert_eq!(total["responses"]["2xx"], 5, "{greeter:#}");
    assert_eq!(total["grpc_errors"], 2, "{greeter:#}");
    assert!(
        (total["success_rate"].as_f64().unwrap() - 0.6).abs() < 1e-9,
        "{greeter:#}"
    );
}

#[tokio::test]
async fn requests_no_inbound_answered_are_counted_by_the_gateway() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "ghost", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "ghost.example.com", "--service", "ghost"]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("ghost.example.com").await;
    for _ in 0..4 {
        assert_eq!(
            status_via(&gw, "ghost.example.com", "/"),
            "503",
            "no endpoint"
        );
    }
    let ghost = stats_when(&cp, "ghost", |s| s["total"]["requests"] == 4).await;
    assert_eq!(ghost["total"]["responses"]["5xx"], 4, "{ghost:#}");
    assert_eq!(ghost["total"]["success_rate"], 0.0, "{ghost:#}");
    assert_eq!(ghost["sources"][0]["source"], "gateway:edge", "{ghost:#}");
}

#[tokio::test]
async fn stats_arguments_are_checked() {
    let cp = ControlPlane::start(&[]).await;
    let out = cp.weftctl(&["service", "stats", "--window", "10m"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("10s to 5m"), "{err}");

    let out = cp.weftctl(&["service", "stats", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nosuch"), "{err}");

    cp.weftctl_ok(&["service", "create", "quiet", "--protocol", "http"]);
    let out = cp.weftctl(&["service", "stats", "quiet"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no traffic reported"), "{err}");
    assert!(err.contains("from 0 of the 0 dataplanes"), "{err}");
}

#[tokio::test]
async fn top_on_a_terminal_refreshes_until_ctrl_c_and_gives_the_screen_back() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let weftctl = bin("weftctl").display().to_string();
    let ca = cp.data_dir.join("ca.pem").display().to_string();
    let (token, url) = (cp.admin_token(), cp.url());
    let command = [
        "--seconds",
        "3",
        "--",
        &weftctl,
        "--cp",
        &url,
        "--token",
        &token,
        "--ca",
        &ca,
        "top",
        "--interval",
        "1s",
    ];
    let (run, _) = py("pty_run.py", &command);
    assert_eq!(run["exited_after_interrupt"], true, "{run:#}");
    assert_eq!(run["exit_code"], 0, "Ctrl-C is a normal way out: {run:#}");
    let screen = run["output"].as_str().unwrap();
    assert!(
        screen.starts_with("\u{1b}[?1049h"),
        "the alternate screen: {screen:?}"
    );
    assert!(
        screen.trim_end().ends_with("\u{1b}[?1049l"),
        "given back: {screen:?}"
    );
    assert!(
        screen.matches("REQ/S").count() >= 2,
        "refreshed: {screen:?}"
    );
    assert!(screen.contains("(Ctrl-C quits)"), "{screen:?}");
}
