//! Edge hardening end to end: idle and first-bytes timeouts, the connection cap, the
//! drain at SIGTERM, gRPC deadlines, and the HTTP rules the edge enforces (Host,
//! absolute-form, `OPTIONS *`, whitespace, trailers). Real weft-cp, gateway, sidecars
//! and demo apps, driven by raw sockets, curl and Python h2 clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::{ControlPlane, Gateway, curl, deploy, metric, py_ok};

/// Sends `request` on a new connection and reads until the server closes it (or 10 s).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits for the server to close `s` (EOF or reset); returns how long it took, or
/// panics after `within`. Bytes that arrive meanwhile are returned too.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the gateway kept the connection open for {within:?}"),
        }
    }
}

/// A gateway with one HTTP/1.1 service `web` routed from `web.example.com` and
/// `localhost`, started with `extra` flags.
async fn edge(
    extra: &[&str],
) -> (
    ControlPlane,
    (weft_tests::App, weft_tests::Sidecar),
    Gateway,
) {
    let cp = ControlPlane::start(&[]).await;
    let web = deploy(&cp, "web", "http", 0, "h1", "eu").await;
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    cp.weftctl_ok(&["route", "create", "localhost", "--service", "web"]);
    let gw = Gateway::start(&cp, "edge", extra).await;
    gw.wait_route("localhost").await;
    (cp, web, gw)
}

#[tokio::test]
async fn pings_do_not_keep_an_idle_connection_and_silent_clients_are_let_go() {
    let (_cp, _web, gw) = edge(&["--idle-timeout", "2s"]).await;

    // An HTTP/2 client that sends nothing but PINGs (and answers the gateway's, as a
    // real client does): still idle, so GOAWAY, then the close.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut ping = tokio::time::interval(Duration::from_millis(300));
    loop {
        let mut head = [0u8; 9];
        let read = tokio::select! {
            r = s.read_exact(&mut head) => r,
            _ = ping.tick() => {
                let _ = s.write_all(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00keepmeup").await;
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => {
                panic!("still open after 15 s of PINGs; frame types {frames:?}")
            }
        };
        if read.is_err() {
            break;
        }
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            break;
        }
        frames.push(head[3]);
        if head[3] == 0x6 && head[4] & 1 == 0 {
            let mut ack = b"\x00\x00\x08\x06\x01\x00\x00\x00\x00".to_vec();
            ack.extend_from_slice(&payload);
            let _ = s.write_all(&ack).await;
        }
    }
    assert!(
        frames.contains(&0x7),
        "a GOAWAY before the close, despite the PINGs: frame types {frames:?}"
    );

    // A connection that sends nothing at all.
    let mut silent = TcpStream::connect(gw.http).await.unwrap();
    closed_by_server(&mut silent, Duration::from_secs(10)).await;
    // After `Upgrade: h2c`, a client that never sends its preface.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let (_, got) = closed_by_server(&mut s, Duration::from_secs(10)).await;
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
        "upgraded first: {}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn an_idle_websocket_is_closed() {
    let (_cp, _web, gw) = edge(&["--idle-timeout", "1s"]).await;
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let (_, got) = closed_by_server(&mut s, Duration::from_secs(10)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 101"), "{got}");
    assert!(got.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{got}");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_counted() {
    let (_cp, _web, gw) = edge(&["--max-connections", "2"]).await;
    let _held: Vec<TcpStream> = vec![
        TcpStream::connect(gw.http).await.unwrap(),
        TcpStream::connect(gw.http).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(gw.http).await.unwrap();
    closed_by_server(&mut third, Duration::from_secs(5)).await;
    let over = metric(
        gw.admin,
        "weft_connections_total",
        &[("direction", "gateway"), ("result", "over_cap")],
    )
    .await;
    assert_eq!(over, 1);
    // The TLS listener has a cap of its own and still serves.
    let args = gw.tls("web.example.com", "/still");
    let (code, out, err) = curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"path\":\"/still\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_progress() {
    let (_cp, _web, mut gw) = edge(&["--drain-timeout", "20s"]).await;
    let args = gw.plain("web.example.com", "/sleep?ms=3000");
    let slow = std::thread::spawn(move || {
        let mut all = vec!["--http2-prior-knowledge", "-w", "\n%{http_code}"];
        all.extend(args.iter().map(String::as_str));
        curl(&all)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    let status = gw.proc.terminate(Duration::from_secs(30)).unwrap();
    let (code, out, err) = slow.join().unwrap();
    assert_eq!(code, 0, "the request in progress finished: {err}");
    assert!(out.ends_with("\n200"), "{out}");
    assert!(status.success(), "clean exit: {status}");
    // It left once the request was done, not at its drain timeout.
    assert!(started.elapsed() < Duration::from_secs(15));
    let refused = TcpStream::connect(gw.http).await;
    assert!(refused.is_err(), "no longer accepting");
}

#[tokio::test]
async fn grpc_deadlines_are_enforced_at_the_gateway() {
    let cp = ControlPlane::start(&[]).await;
    let _api = deploy(&cp, "api", "http2", 0, "h2c", "eu").await;
    cp.weftctl_ok(&["route", "create", "api.example.com", "--service", "api"]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("api.example.com").await;
    // A gRPC call with a 300 ms deadline to a handler that takes 5 s: the gateway ends
    // it (the app would answer 200 with JSON, and never with the mesh's code).
    let mut args: Vec<String> = [
        "--http2-prior-knowledge",
        "-i",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "grpc-timeout: 300m",
        "--data-binary",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(gw.plain("api.example.com", "/sleep?ms=5000"));
    let (code, out, err) = curl(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let h = out.to_lowercase();
    assert!(
        h.starts_with("http/2 200")
            && h.contains("grpc-status: 4")
            && h.contains("weft-error-code: weft-4"),
        "{out}"
    );
}

#[tokio::test]
async fn host_rules_absolute_form_and_options_asterisk() {
    let (cp, _web, gw) = edge(&[]).await;
    let _other = deploy(&cp, "other", "http", 0, "h1", "eu").await;
    cp.weftctl_ok(&["route", "create", "b.example.com", "--service", "other"]);
    gw.wait_route("b.example.com").await;

    // Invalid, repeated or missing Host: 400 with the mesh's code.
    for request in [
        "GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: web.example.com@evil\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: web.example.com:99999\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: web.example.com\r\nHost: b.example.com\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    ] {
        let resp = raw(gw.http, request.as_bytes()).await.to_lowercase();
        // hyper itself answers some of these (400 without the header); never 200.
        assert!(resp.starts_with("http/1.1 400"), "{request:?}: {resp}");
    }
    let resp = raw(
        gw.http,
        b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        resp.to_lowercase().contains("weft-error-code: weft-6"),
        "{resp}"
    );

    // Absolute-form wins over Host: routed by, and forwarded with, b.example.com.
    let resp = raw(
        gw.http,
        b"GET http://b.example.com/x HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("\"app\":\"other\""), "{resp}");
    assert!(resp.contains("\"host\":\"b.example.com\""), "{resp}");

    // OPTIONS * reaches the app as OPTIONS *.
    let resp = raw(
        gw.http,
        b"OPTIONS * HTTP/1.1\r\nHost: web.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.contains("\"method\":\"OPTIONS\"") && resp.contains("\"path\":\"*\""),
        "{resp}"
    );

    // The h2c upgrade path applies the same rules: no upgrade, the ordinary 400.
    let resp = raw(
        gw.http,
        b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");

    // HTTP/2 values with surrounding whitespace are malformed.
    let out = py_ok(
        "h2_request.py",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &gw.http.port().to_string(),
            "--authority",
            "web.example.com",
            "--raw-header",
            "x-padded: value ",
        ],
    );
    assert_eq!(out["status"], "400", "{out:#}");
    assert_eq!(out["headers"]["weft-error-code"][0], "WEFT-6", "{out:#}");
}

#[tokio::test]
async fn request_trailers_cross_cleaned_and_declared_ones_reach_an_http1_app() {
    let (_cp, _web, gw) = edge(&[]).await;
    // An HTTP/2 client's trailers to the HTTP/1.1 app: declared, so hyper sends them;
    // fields that must not be trailers, and the mesh's header, are dropped.
    let out = py_ok(
        "h2_request.py",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &gw.http.port().to_string(),
            "--authority",
            "web.example.com",
            "--method",
            "POST",
            "--body-bytes",
            "1000",
            "--header",
            "trailer: x-sum, content-length, weft-error-code",
            "--trailer",
            "x-sum:abc",
            "--trailer",
            "content-length:1",
            "--trailer",
            "weft-error-code:WEFT-1",
        ],
    );
    assert_eq!(out["status"], "200", "{out:#}");
    let seen = &out["json"]["trailers"];
    assert_eq!(seen["x-sum"][0], "abc", "{out:#}");
    assert!(seen.get("content-length").is_none(), "{out:#}");
    assert!(seen.get("weft-error-code").is_none(), "{out:#}");
    assert_eq!(out["json"]["body_bytes"], 1000, "{out:#}");
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_abandoned() {
    let (_cp, _web, gw) = edge(&["--idle-timeout", "1s"]).await;
    // 10 of the 100 bytes announced, then nothing: the gateway gives up on the body
    // (after the idle timeout, shorter than the 60 s default) and answers.
    let mut s = TcpStream::connect(gw.http).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let (_, got) = closed_by_server(&mut s, Duration::from_secs(10)).await;
    let got = String::from_utf8_lossy(&got).to_lowercase();
    assert!(got.starts_with("http/1.1 502"), "{got}");
    assert!(got.contains("weft-error-code: weft-3"), "{got}");
}

#[tokio::test]
async fn a_client_that_takes_no_response_data_is_closed() {
    weft_tests::require_python_packages();
    let (_cp, _web, gw) = edge(&["--idle-timeout", "2s"]).await;
    // Streams whose responses wait with a window of 0: not idle (requests are in
    // progress), but stalled, so the connection is closed after the progress timeout
    // (the idle timeout here, shorter than the 60 s default).
    let out = std::process::Command::new("python3")
        .arg(weft_tests::py_dir().join("h2_stall.py"))
        .args(["--port", &gw.http.port().to_string()])
        .args([
            "--authority",
            "web.example.com",
            "--streams",
            "3",
            "--hold",
            "20",
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["headers"], 3, "{json}");
    assert_eq!(json["closed_by_server"], true, "{json}");
}
