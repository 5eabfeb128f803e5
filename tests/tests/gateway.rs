//! The edge gateway end to end: real weft-cp, gateway, sidecars and demo apps, driven by
//! curl (HTTP/1.1, h2c, Upgrade: h2c, TLS with ALPN), grpcio over TLS and WebSocket
//! clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weft_tests::{App, ControlPlane, Gateway, Sidecar, curl, py_ok};

/// Runs curl with `mode` plus `args`; returns (client HTTP version, body JSON).
fn get(mode: &[&str], args: &[String]) -> (String, serde_json::Value) {
    let mut all: Vec<&str> = mode.to_vec();
    all.extend(["-w", "\n%{http_version} %{http_code}"]);
    all.extend(args.iter().map(String::as_str));
    let (code, out, err) = curl(&all);
    assert_eq!(code, 0, "curl {all:?}: {err}");
    let (body, tail) = out.rsplit_once('\n').unwrap();
    let (version, status) = tail.split_once(' ').unwrap();
    assert_eq!(status, "200", "curl {all:?}: {body}");
    (
        version.to_owned(),
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// Response head (status line + headers, lowercased) of a curl -i call.
fn head(mode: &[&str], extra: &[&str], args: &[String]) -> String {
    let mut all: Vec<&str> = mode.to_vec();
    all.push("-i");
    all.extend(extra);
    all.extend(args.iter().map(String::as_str));
    let (code, out, err) = curl(&all);
    assert_eq!(code, 0, "curl {all:?}: {err}");
    out.split("\r\n\r\n").next().unwrap_or("").to_lowercase()
}

#[tokio::test]
async fn every_client_protocol_reaches_h1_and_h2c_apps() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["service", "create", "h2web", "--protocol", "http2"]);
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    cp.weftctl_ok(&["route", "create", "h2.example.com", "--service", "h2web"]);
    let a1 = App::start("h1", "web").await;
    let a2 = App::start("h2c", "h2web").await;
    let _s1 = Sidecar::start(&cp, "web", a1.addr, "eu").await;
    let _s2 = Sidecar::start(&cp, "h2web", a2.addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("h2.example.com").await;

    for (host, app_version) in [
        ("web.example.com", "HTTP/1.1"),
        ("h2.example.com", "HTTP/2.0"),
    ] {
        let cases: [(&[&str], bool, &str); 5] = [
            (&["--http1.1"], false, "1.1"),
            (&["--http2-prior-knowledge"], false, "2"),
            (&["--http2"], false, "2"), // plain http: the Upgrade: h2c path
            (&["--http1.1"], true, "1.1"),
            (&["--http2"], true, "2"), // TLS: ALPN h2
        ];
        for (mode, tls, client_version) in cases {
            let args = if tls {
                gw.tls(host, "/v")
            } else {
                gw.plain(host, "/v")
            };
            let (seen, json) = get(mode, &args);
            let what = format!("{host} {mode:?} tls={tls}");
            assert_eq!(seen, client_version, "client side of {what}");
            assert_eq!(json["version"], app_version, "app side of {what}: {json}");
            assert_eq!(
                json["headers"]["x-forwarded-proto"][0],
                if tls { "https" } else { "http" },
                "{what}"
            );
            let headers = json["headers"].as_object().unwrap();
            for never in ["upgrade", "http2-settings", "connection"] {
                assert!(
                    !headers.contains_key(never),
                    "{never} reached the app for {what}: {json}"
                );
            }
        }
    }
}

#[tokio::test]
async fn grpc_over_tls_through_the_gateway() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "greeter", "--protocol", "grpc"]);
    cp.weftctl_ok(&[
        "route",
        "create",
        "grpc.example.com",
        "--service",
        "greeter",
    ]);
    let app = App::start("grpc", "greeter").await;
    let _s = Sidecar::start(&cp, "greeter", app.addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("grpc.example.com").await;
    let out = py_ok(
        "grpc_client.py",
        &[
            "--target",
            &gw.https.to_string(),
            "--tls-ca",
            &gw.cert.display().to_string(),
            "--server-name",
            "grpc.example.com",
            "--authority",
            "grpc.example.com",
            "all",
        ],
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
    assert_eq!(cases["unary"]["reply"]["metadata"]["te"], "trailers");
    assert_eq!(cases["error"]["code"], "NOT_FOUND");
    assert!(
        cases["error"]["trailing_metadata"]
            .to_string()
            .contains("x-demo-detail")
    );
    assert!(cases["server_stream"]["spread_s"].as_f64().unwrap() >= 0.3);
}

#[tokio::test]
async fn websockets_over_h1_and_rfc8441_to_h1_and_h2c_apps() {
    let cp = ControlPlane::start(&[]).await;
    // An HTTP/1.1 app gets an Upgrade, an h2c app an extended CONNECT, whatever the
    // client used at the edge.
    let _h1 = weft_tests::deploy(&cp, "chat", "http", 0, "h1", "eu").await;
    let _h2 = weft_tests::deploy(&cp, "chat2", "http2", 0, "h2c", "eu").await;
    cp.weftctl_ok(&["route", "create", "localhost", "--service", "chat"]);
    // Names the client resolves by itself.
    cp.weftctl_ok(&["route", "create", "127.0.0.1", "--service", "chat2"]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("127.0.0.1").await;
    for host in ["localhost", "127.0.0.1"] {
        let h1 = py_ok(
            "ws_client.py",
            &["--url", &format!("ws://{host}:{}/ws", gw.http.port())],
        );
        assert_eq!(h1["close_code"], 1000, "{host}: {h1:#}");
        let h2 = py_ok(
            "h2_ws_client.py",
            &[
                "--host",
                "127.0.0.1",
                "--port",
                &gw.http.port().to_string(),
                "--authority",
                host,
                "--path",
                "/ws",
            ],
        );
        assert_eq!(
            h2["enable_connect_protocol"], 1,
            "SETTINGS_ENABLE_CONNECT_PROTOCOL: {h2:#}"
        );
        assert_eq!(h2["status"], "200", "{host}: {h2:#}");
        assert_eq!(h2["close_code"], 1000, "{host}: {h2:#}");
    }
}

#[tokio::test]
async fn the_most_specific_route_wins_and_no_route_is_404() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "exact", "--protocol", "http"]);
    cp.weftctl_ok(&["service", "create", "wild", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "*.example.com", "--service", "wild"]);
    cp.weftctl_ok(&["route", "create", "api.example.com", "--service", "exact"]);
    cp.weftctl_ok(&[
        "route",
        "create",
        "api.example.com",
        "--service",
        "wild",
        "--path-prefix",
        "/legacy",
    ]);
    let ae = App::start("h1", "exact").await;
    let aw = App::start("h1", "wild").await;
    let _se = Sidecar::start(&cp, "exact", ae.addr, "eu").await;
    let _sw = Sidecar::start(&cp, "wild", aw.addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("api.example.com").await;
    let app = |host: &str, path: &str| get(&["--http1.1"], &gw.plain(host, path)).1["app"].clone();
    assert_eq!(app("api.example.com", "/x"), "exact");
    assert_eq!(app("api.example.com", "/legacy/y"), "wild");
    assert_eq!(app("api.example.com", "/legacyx"), "exact");
    assert_eq!(app("www.example.com", "/"), "wild");
    assert_eq!(app("deep.www.example.com", "/"), "wild");
    let h = head(&["--http1.1"], &[], &gw.plain("example.org", "/"));
    assert!(
        h.starts_with("http/1.1 404") && h.contains("weft-error-code: weft-1"),
        "{h}"
    );
    // Per request on one coalesced h2 connection: two hosts, two routes.
    let (code, out, err) = curl(&[
        "--http2",
        "--cacert",
        &gw.cert.display().to_string(),
        "--connect-to",
        &format!("api.example.com:{0}:127.0.0.1:{0}", gw.https.port()),
        "--connect-to",
        &format!("www.example.com:{0}:127.0.0.1:{0}", gw.https.port()),
        &format!("https://api.example.com:{}/a", gw.https.port()),
        &format!("https://www.example.com:{}/b", gw.https.port()),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"app\":\"exact\"") && out.contains("\"app\":\"wild\""),
        "{out}"
    );
}

#[tokio::test]
async fn forwarding_headers_cannot_be_spoofed_or_removed() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    let app = App::start("h1", "web").await;
    let _s = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("web.example.com").await;

    let mut args = vec![
        "-H".to_string(),
        "X-Forwarded-For: 1.2.3.4".into(),
        "-H".into(),
        "X-Forwarded-Proto: https".into(),
        "-H".into(),
        "X-Forwarded-Host: evil.example".into(),
        "-H".into(),
        "weft-error-code: WEFT-1".into(),
    ];
    args.extend(gw.plain("web.example.com", "/"));
    let (_, json) = get(&["--http1.1"], &args);
    let h = &json["headers"];
    assert_eq!(
        h["x-forwarded-for"][0], "1.2.3.4, 127.0.0.1",
        "appended: {json}"
    );
    assert_eq!(
        h["x-forwarded-proto"][0], "http",
        "derived from the connection: {json}"
    );
    assert_eq!(
        h["x-forwarded-host"][0],
        format!("web.example.com:{}", gw.http.port())
    );
    assert!(h.get("weft-error-code").is_none(), "{json}");

    // Naming the gateway's own header in Connection removes the client's, not the gateway's.
    let mut args = vec![
        "-H".to_string(),
        "Connection: x-forwarded-for, x-secret".into(),
        "-H".into(),
        "X-Forwarded-For: 6.6.6.6".into(),
        "-H".into(),
        "X-Secret: 1".into(),
    ];
    args.extend(gw.plain("web.example.com", "/"));
    let (_, json) = get(&["--http1.1"], &args);
    assert_eq!(
        json["headers"]["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"]),
        "{json}"
    );
    assert!(json["headers"].get("x-secret").is_none(), "{json}");
}

// Multi-threaded: the raw app below must keep running while curl blocks this thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_cannot_set_the_mesh_error_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "liar", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "liar.example.com", "--service", "liar"]);
    // A raw HTTP/1.1 app that claims to be the mesh.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nweft-error-code: WEFT-2\r\ncontent-length: 4\r\n\r\nfake")
                        .await;
                }
            });
        }
    });
    let _s = Sidecar::start(&cp, "liar", addr, "eu").await;
    // The same claim from an h2c app whose responses reach the gateway untranslated.
    cp.weftctl_ok(&["service", "create", "liar2", "--protocol", "http2"]);
    cp.weftctl_ok(&["route", "create", "liar2.example.com", "--service", "liar2"]);
    let h2_liar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h2_addr = h2_liar.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = h2_liar.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let resp = http::Response::builder()
                        .status(503)
                        .header("weft-error-code", "WEFT-2")
                        .body(())
                        .unwrap();
                    // ...and in its trailers.
                    let Ok(mut send) = respond.send_response(resp, false) else {
                        continue;
                    };
                    let _ = send.send_data(bytes::Bytes::from_static(b"fake"), false);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("weft-error-code", "WEFT-3".parse().unwrap());
                    trailers.insert("x-app-trailer", "kept".parse().unwrap());
                    let _ = send.send_trailers(trailers);
                }
            });
        }
    });
    let _s2 = Sidecar::start(&cp, "liar2", h2_addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("liar2.example.com").await;
    for host in ["liar.example.com", "liar2.example.com"] {
        for mode in ["--http1.1", "--http2-prior-knowledge"] {
            let h = head(&[mode], &[], &gw.plain(host, "/"));
            assert!(h.contains(" 503"), "{h}");
            assert!(
                !h.contains("weft-error-code"),
                "{host} {mode}: the app's claim must be stripped: {h}"
            );
        }
    }
    // Not in trailers either (the app's other trailers cross).
    let out = py_ok(
        "h2_request.py",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &gw.http.port().to_string(),
            "--authority",
            "liar2.example.com",
        ],
    );
    assert_eq!(out["status"], "503", "{out:#}");
    assert_eq!(out["trailers"]["x-app-trailer"][0], "kept", "{out:#}");
    assert!(out["trailers"].get("weft-error-code").is_none(), "{out:#}");
    // Nor in the answer to a WebSocket handshake the app refuses.
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: liar.example.com\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let h = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(h.starts_with("http/1.1 503"), "{h}");
    assert!(!h.contains("weft-error-code"), "{h}");
}

#[tokio::test]
async fn each_gateway_error_has_its_status_and_code() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["service", "create", "empty", "--protocol", "http2"]);
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    cp.weftctl_ok(&["route", "create", "empty.example.com", "--service", "empty"]);
    cp.weftctl_ok(&["service", "create", "rpc", "--protocol", "grpc"]);
    cp.weftctl_ok(&["route", "create", "rpc.example.com", "--service", "rpc"]);
    let mut app = App::start("h1", "web").await;
    let _s = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let mut rpc_app = App::start("grpc", "rpc").await;
    let _rpc = Sidecar::start(&cp, "rpc", rpc_app.addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &["--upstream-timeout", "1s"]).await;
    gw.wait_route("rpc.example.com").await;
    gw.wait_route("empty.example.com").await;
    let grpc = [
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        "",
    ];

    // Stalled app: 504.
    let h = head(
        &["--http1.1"],
        &[],
        &gw.plain("web.example.com", "/sleep?ms=3000"),
    );
    assert!(
        h.starts_with("http/1.1 504") && h.contains("weft-error-code: weft-4"),
        "{h}"
    );
    // Oversized header: 431.
    // Header sections as several lines (curl caps one line near 100 kB).
    let dir = tempfile::tempdir().unwrap();
    let headers_file = |name: &str, lines: usize, each: usize| {
        let path = dir.path().join(name);
        let text: String = (0..lines)
            .map(|i| format!("x-big-{i:02}: {}\n", "a".repeat(each)))
            .collect();
        std::fs::write(&path, text).unwrap();
        format!("@{}", path.display())
    };
    // Just under 1 MB passes, on both hops (gateway and the last hop to the app).
    let under = headers_file("under", 11, 90_000);
    let (_, json) = get(
        &["--http1.1", "-H", &under],
        &gw.plain("web.example.com", "/"),
    );
    assert_eq!(
        json["headers"]["x-big-10"][0].as_str().map(str::len),
        Some(90_000)
    );
    // Just over: 431 with the mesh's code (a raw socket: curl will not send > 1 MB).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut req =
            String::from("GET / HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n");
        for i in 0..12 {
            req.push_str(&format!("x-big-{i:02}: {}\r\n", "a".repeat(88_000)));
        }
        req.push_str("\r\n");
        let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let h = resp.to_lowercase();
        assert!(
            h.starts_with("http/1.1 431") && h.contains("weft-error-code: weft-5"),
            "{resp}"
        );
    }
    // No instance at all: 503, gRPC UNAVAILABLE.
    let h = head(&["--http1.1"], &[], &gw.plain("empty.example.com", "/"));
    assert!(
        h.starts_with("http/1.1 503") && h.contains("weft-error-code: weft-2"),
        "{h}"
    );
    let h = head(
        &["--http2-prior-knowledge"],
        &grpc,
        &gw.plain("empty.example.com", "/p.S/M"),
    );
    assert!(
        h.starts_with("http/2 200") && h.contains("grpc-status: 14"),
        "{h}"
    );
    // No route, for gRPC: UNIMPLEMENTED.
    let h = head(
        &["--http2-prior-knowledge"],
        &grpc,
        &gw.plain("nothing.org", "/p.S/M"),
    );
    assert!(
        h.contains("grpc-status: 12") && h.contains("weft-error-code: weft-1"),
        "{h}"
    );
    // The app is stopped: its sidecar answers that nothing reached the app, and there
    // is no other endpoint: 503.
    app.proc.kill9();
    let h = head(&["--http1.1"], &[], &gw.plain("web.example.com", "/"));
    assert!(
        h.starts_with("http/1.1 503") && h.contains("weft-error-code: weft-2"),
        "{h}"
    );
    // gRPC to an `http` service is refused whatever the app's state...
    let h = head(
        &["--http2-prior-knowledge"],
        &grpc,
        &gw.plain("web.example.com", "/p.S/M"),
    );
    assert!(
        h.contains("grpc-status: 12") && h.contains("set-protocol web grpc"),
        "{h}"
    );
    // ...and a stopped gRPC app is UNAVAILABLE: its sidecar says nothing reached it.
    rpc_app.proc.kill9();
    let h = head(
        &["--http2-prior-knowledge"],
        &grpc,
        &gw.plain("rpc.example.com", "/p.S/M"),
    );
    assert!(
        h.starts_with("http/2 200")
            && h.contains("grpc-status: 14")
            && h.contains("weft-error-code: weft-2"),
        "{h}"
    );
}

#[tokio::test]
async fn edge_attacks_are_refused_and_the_gateway_keeps_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "localhost", "--service", "web"]);
    let app = App::start("h1", "web").await;
    let _s = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("localhost").await;
    let healthy =
        || get(&["--http1.1"], &gw.plain("localhost", "/still-ok")).1["path"] == "/still-ok";

    // CL + TE: framed by chunked, Content-Length never forwarded, connection closed.
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(
        b"POST /smuggle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .unwrap();
    let mut resp = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut resp)).await;
    assert!(
        !resp.contains("\"path\":\"/admin\""),
        "a smuggled request was answered: {resp}"
    );
    if resp.starts_with("HTTP/1.1 200") {
        assert!(
            resp.contains("\"body_bytes\":5") && !resp.contains("\"content-length\""),
            "{resp}"
        );
    }
    assert!(healthy());

    // Rapid reset, CONTINUATION floods and the other HTTP/2 abuses, each measured
    // against a victim client: tests/tests/attacks.rs.
}

#[tokio::test]
async fn idle_client_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "localhost", "--service", "web"]);
    let app = App::start("h1", "web").await;
    let _s = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &["--idle-timeout", "1s"]).await;
    gw.wait_route("localhost").await;

    // HTTP/1.1 keep-alive: served, then closed once idle.
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break,
            Err(_) => panic!("idle HTTP/1.1 connection still open after 10 s"),
        }
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "served first"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        started.elapsed()
    );

    // HTTP/2: the server's SETTINGS, then a GOAWAY once idle, then the close.
    let mut s = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 9];
        match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => break,
            Err(_) => panic!("idle HTTP/2 connection still open after 10 s: frames {frames:?}"),
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            break;
        }
        frames.push(head[3]);
        if head[3] == 0x4 && head[4] & 1 == 0 {
            // Acknowledge the server's SETTINGS like a real client.
            s.write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
                .await
                .unwrap();
        }
        if head[3] == 0x6 && head[4] & 1 == 0 {
            // Answer PINGs (the graceful GOAWAY waits for one) like a real client.
            let mut ack = b"\x00\x00\x08\x06\x01\x00\x00\x00\x00".to_vec();
            ack.extend_from_slice(&payload);
            let _ = s.write_all(&ack).await;
        }
    }
    assert!(
        frames.contains(&0x7),
        "expected a GOAWAY before the close, got frame types {frames:?}"
    );
}

#[tokio::test]
async fn a_host_the_certificate_does_not_cover_is_misdirected() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    cp.weftctl_ok(&["route", "create", "other.org", "--service", "web"]);
    let app = App::start("h1", "web").await;
    let _s = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("other.org").await;
    // A connection made for web.example.com (SNI) asked to carry other.org, which the
    // served certificate does not cover: 421, so the client opens a proper connection.
    let mut args = vec!["-H".to_string(), "Host: other.org".into()];
    args.extend(gw.tls("web.example.com", "/"));
    let h = head(&["--http2"], &[], &args);
    assert!(
        h.starts_with("http/2 421") && h.contains("weft-error-code: weft-8"),
        "{h}"
    );
    // The same host on its own plain connection is routed normally.
    let (_, json) = get(&["--http1.1"], &gw.plain("other.org", "/"));
    assert_eq!(json["app"], "web");
}

#[tokio::test]
async fn host_rewrite_and_the_access_log() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&[
        "route",
        "create",
        "api.example.com",
        "--service",
        "web",
        "--rewrite-host",
        "web.internal:8080",
    ]);
    let app = App::start("h1", "web").await;
    let _s = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let gw = Gateway::start(&cp, "edge", &["--log-format", "json"]).await;
    gw.wait_route("api.example.com").await;

    let mut args: Vec<String> = vec![
        "--http2-prior-knowledge".into(),
        "-o".into(),
        "/dev/null".into(),
    ];
    args.extend(gw.plain("api.example.com", "/bytes?n=5000"));
    let (code, _, err) = curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let (_, json) = get(&["--http1.1"], &gw.plain("api.example.com", "/who"));
    assert_eq!(
        json["host"], "web.internal:8080",
        "the app sees the rewritten host: {json}"
    );
    assert_eq!(
        json["headers"]["x-forwarded-host"][0],
        format!("api.example.com:{}", gw.http.port()),
        "the public host is kept for the app: {json}"
    );

    // One JSON access line per request, with bytes, versions and the endpoint.
    let lines = weft_tests::eventually(Duration::from_secs(5), || async {
        let log = gw.proc.log_text();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "weft::access")
            .collect();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    let bytes = lines
        .iter()
        .find(|l| l["fields"]["path"] == "/bytes?n=5000")
        .expect("access line for /bytes");
    let f = &bytes["fields"];
    assert_eq!(f["status"], 200, "{bytes}");
    assert_eq!(f["inbound"], "h2c", "{bytes}");
    assert_eq!(f["upstream_protocol"], "h2", "{bytes}");
    assert!(f["bytes"].as_u64().unwrap() >= 5000, "{bytes}");
    assert_eq!(f["complete"], true, "{bytes}");
    assert!(
        f["host"].as_str().unwrap().starts_with("api.example.com"),
        "{bytes}"
    );
    assert!(bytes["timestamp"].is_string(), "{bytes}");
}

#[tokio::test]
async fn a_route_can_prefer_a_region_and_falls_back_without_it() {
    // A short grace period: the stopped sidecar below is marked unhealthy within ~1 s.
    let cp = ControlPlane::start(&["--grace-period", "1s"]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    cp.weftctl_ok(&[
        "route",
        "create",
        "us.example.com",
        "--service",
        "web",
        "--prefer-region",
        "us",
    ]);
    let eu = App::start("h1", "web-eu").await;
    let us = App::start("h1", "web-us").await;
    let _seu = Sidecar::start(&cp, "web", eu.addr, "eu").await;
    // It drains for 1 s when stopped below, not the default 10 s.
    let token = cp
        .token_for(weft_proto::v1::DataplaneKind::Sidecar, "web")
        .await;
    let mut sus = Sidecar::start_with(
        cp.url(),
        &token,
        "web",
        us.addr,
        "us",
        &["--drain-timeout", "1s"],
    )
    .await;
    let gw = Gateway::start(&cp, "edge", &[]).await; // region eu
    gw.wait_route("us.example.com").await;
    // The route carries its preference to the gateway.
    let config = gateway_config(&gw).await;
    assert_eq!(
        config["routes"]["us.example.com/"]["prefer_region"], "us",
        "{config:#}"
    );
    let healthy = || async {
        let c = gateway_config(&gw).await;
        let n = c["endpoints"]
            .as_object()?
            .values()
            .filter(|e| e["service"] == "web" && e["healthy"] == true)
            .count();
        Some(n)
    };
    weft_tests::eventually(Duration::from_secs(15), || async {
        (healthy().await? == 2).then_some(())
    })
    .await;

    let app = |host: &str| get(&["--http1.1"], &gw.plain(host, "/")).1["app"].clone();
    for _ in 0..10 {
        assert_eq!(
            app("web.example.com"),
            "web-eu",
            "no preference: the gateway's own region"
        );
        assert_eq!(app("us.example.com"), "web-us", "the preferred region");
    }

    // The us instance goes away: the preferring route falls back to eu. Right after
    // the stop the gateway may still believe in it (it then ejects it and retries);
    // once the control plane marks it unhealthy every request goes to eu at once.
    sus.proc
        .terminate(Duration::from_secs(15))
        .expect("us sidecar exited");
    weft_tests::eventually(Duration::from_secs(20), || async {
        let mut args = vec!["--http1.1".to_string()];
        args.extend(gw.plain("us.example.com", "/"));
        let (code, out, _) = curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let json: serde_json::Value = serde_json::from_str(&out).ok()?;
        (code == 0 && json["app"] == "web-eu").then_some(())
    })
    .await;
    weft_tests::eventually(Duration::from_secs(15), || async {
        (healthy().await? == 1).then_some(())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            app("us.example.com"),
            "web-eu",
            "fallback to the usual order"
        );
        assert_eq!(app("web.example.com"), "web-eu");
    }
}

/// The config the gateway holds (its /config endpoint).
async fn gateway_config(gw: &Gateway) -> serde_json::Value {
    let body = weft_tests::http_get(gw.admin, "/config")
        .await
        .unwrap_or_default();
    let json = body.split("\r\n\r\n").nth(1).unwrap_or("{}");
    serde_json::from_str(json).unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn set_protocol_takes_effect_on_the_gateways_pooled_connections() {
    let cp = ControlPlane::start(&[]).await;
    // An app that answers both HTTP/1.1 and h2c reports which one its sidecar used.
    let (_app, _sc) = weft_tests::deploy(&cp, "flip", "http", 0, "auto", "eu").await;
    cp.weftctl_ok(&["route", "create", "flip.example.com", "--service", "flip"]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("flip.example.com").await;
    let version = || {
        get(
            &["--http2-prior-knowledge"],
            &gw.plain("flip.example.com", "/"),
        )
        .1["version"]
            .clone()
    };
    for _ in 0..3 {
        assert_eq!(
            version(),
            "HTTP/1.1",
            "selector http: translated to HTTP/1.1"
        );
    }
    // The gateway's inner connection to the endpoint stays open between requests; the
    // new selector must still apply to the next requests, not only after it closes.
    cp.weftctl_ok(&["service", "set-protocol", "flip", "http2"]);
    weft_tests::eventually(Duration::from_secs(10), || async {
        (version() == "HTTP/2.0").then_some(())
    })
    .await;
    for _ in 0..3 {
        assert_eq!(version(), "HTTP/2.0", "selector http2: HTTP/2 all the way");
    }
}

#[tokio::test]
async fn requests_move_to_another_endpoint_when_an_app_stops() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    let mut eu = App::start("h1", "web-eu").await;
    let us = App::start("h1", "web-us").await;
    let _seu = Sidecar::start(&cp, "web", eu.addr, "eu").await;
    let _sus = Sidecar::start(&cp, "web", us.addr, "us").await;
    let gw = Gateway::start(&cp, "edge", &[]).await; // region eu
    gw.wait_route("web.example.com").await;
    let healthy = |name: &'static str| {
        let gw = &gw;
        async move {
            let c = gateway_config(gw).await;
            c["endpoints"]
                .as_object()?
                .values()
                .find(|e| e["region"] == name)
                .map(|e| e["healthy"] == true)
        }
    };
    weft_tests::eventually(Duration::from_secs(15), || async {
        (healthy("eu").await? && healthy("us").await?).then_some(())
    })
    .await;
    let app = |mode: &str| {
        get(&[mode], &gw.tls("web.example.com", "/")).1["app"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(app("--http2"), "web-eu", "the gateway's own region first");

    // The eu app stops; its sidecar and the gateway's connection to it stay up. Not one
    // request may fail: the eu sidecar answers that nothing reached its app, and the
    // gateway sends the request to us instead.
    eu.proc.kill9();
    for mode in ["--http2", "--http1.1"].iter().cycle().take(20) {
        assert_eq!(app(mode), "web-us");
    }
    // The refusal woke the eu sidecar's probe: the control plane marks the endpoint
    // unhealthy, so gateways stop trying it at all.
    weft_tests::eventually(Duration::from_secs(10), || async {
        (!healthy("eu").await?).then_some(())
    })
    .await;
}
