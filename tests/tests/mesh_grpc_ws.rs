//! gRPC and WebSockets through the mesh, with real Python clients (grpcio, websockets,
//! h2 + wsproto) and the demo app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use weft_tests::{App, ControlPlane, Sidecar, client_sidecar, deploy, py, py_ok};

#[tokio::test]
async fn grpc_end_to_end_through_the_mesh() {
    let cp = ControlPlane::start(&[]).await;
    let (app, _server) = deploy(&cp, "greeter", "grpc", 18900, "grpc", "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_protocol("greeter", "grpc").await;
    let target = client.outbound(18900).to_string();

    let out = py_ok(
        "grpc_client.py",
        &["--target", &target, "--metadata", "x-trace=abc", "all"],
    );
    let cases = &out["cases"];
    for case in [
        "unary",
        "server_stream",
        "client_stream",
        "bidi",
        "deadline",
        "cancel",
        "error",
    ] {
        assert_eq!(cases[case]["ok"], true, "{case}: {:#}", cases[case]);
    }
    let unary = &cases["unary"];
    assert_eq!(unary["reply"]["http_version"], "HTTP/2.0", "{unary:#}");
    assert_eq!(unary["reply"]["metadata"]["te"], "trailers", "{unary:#}");
    assert_eq!(unary["reply"]["metadata"]["x-trace"], "abc", "{unary:#}");
    assert_eq!(cases["deadline"]["code"], "DEADLINE_EXCEEDED");
    assert_eq!(cases["cancel"]["code"], "CANCELLED");
    let error = &cases["error"];
    assert_eq!(error["code"], "NOT_FOUND", "{error:#}");
    assert!(
        error["trailing_metadata"]
            .to_string()
            .contains("x-demo-detail"),
        "{error:#}"
    );
    assert!(
        cases["server_stream"]["spread_s"].as_f64().unwrap() >= 0.3,
        "streamed, not buffered"
    );
    // The app saw the cancellation (it was carried, not swallowed by the mesh).
    let log = app.proc.log_text();
    assert!(log.contains("request cancelled"), "app log:\n{log}");
}

#[tokio::test]
async fn grpc_to_an_http1_service_is_unimplemented_for_grpcio() {
    let cp = ControlPlane::start(&[]).await;
    let (_app, _server) = deploy(&cp, "legacy", "http", 18910, "h1", "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_protocol("legacy", "http").await;
    let (out, ok) = py(
        "grpc_client.py",
        &["--target", &client.outbound(18910).to_string(), "unary"],
    );
    assert!(!ok, "{out:#}");
    let text = out.to_string();
    assert!(text.contains("UNIMPLEMENTED"), "{out:#}");
    assert!(text.contains("set-protocol legacy grpc"), "{out:#}");
}

#[tokio::test]
async fn websockets_cross_http_versions() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&[
        "service",
        "create",
        "ws1",
        "--protocol",
        "http",
        "--port",
        "18920",
    ]);
    cp.weftctl_ok(&[
        "service",
        "create",
        "ws2",
        "--protocol",
        "http2",
        "--port",
        "18921",
    ]);
    let a1 = App::start("h1", "ws1").await;
    let a2 = App::start("h2c", "ws2").await;
    let _s1 = Sidecar::start(&cp, "ws1", a1.addr, "eu").await;
    let _s2 = Sidecar::start(&cp, "ws2", a2.addr, "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_protocol("ws2", "http2").await;
    client.wait_protocol("ws1", "http").await;

    for port in [18920u16, 18921] {
        let addr = client.outbound(port);
        // HTTP/1.1 Upgrade: spliced to the h1 app, RFC 8441 towards the h2c app.
        let h1 = py_ok("ws_client.py", &["--url", &format!("ws://{addr}/ws")]);
        assert_eq!(h1["close_code"], 1000, "{h1:#}");
        // RFC 8441 over h2c: spliced to the h2c app, an h1 Upgrade towards the h1 app.
        let h2 = py_ok(
            "h2_ws_client.py",
            &[
                "--host",
                &addr.ip().to_string(),
                "--port",
                &port.to_string(),
                "--path",
                "/ws",
            ],
        );
        assert_eq!(h2["status"], "200", "{h2:#}");
    }
}
