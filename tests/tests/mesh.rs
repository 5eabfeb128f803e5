//! The sidecar data plane end to end: real weft-cp, real sidecars, real demo apps and
//! real clients (curl) on 127.0.0.1. Each cell asserts what DESIGN §2 promises,
//! including which HTTP version the app saw.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weft_proto::v1::DataplaneKind;
use weft_tests::{App, ControlPlane, Sidecar, client_sidecar, curl, curl_json, deploy, eventually};

/// What a client should get through the mesh.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// 200 from the app, which saw this HTTP version.
    Saw(&'static str),
    /// The mesh or the app refused (wrong selector for the app).
    Fails,
}

fn call(url: &str, h2: bool) -> Result<serde_json::Value, String> {
    let mode = if h2 {
        "--http2-prior-knowledge"
    } else {
        "--http1.1"
    };
    let (code, out, err) = curl(&[mode, "-H", "x-test: yes", "-w", "\n%{http_code}", url]);
    if code != 0 {
        return Err(format!("curl exit {code}: {err}"));
    }
    let (body, status) = out.rsplit_once('\n').unwrap_or(("", ""));
    if status != "200" {
        return Err(format!("status {status}: {body}"));
    }
    serde_json::from_str(body).map_err(|e| format!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn selector_matrix_with_curl() {
    let cp = ControlPlane::start(&[]).await;
    use Expect::{Fails, Saw};
    // (selector, app mode, expected for an HTTP/1.1 client, for an h2c client)
    let cells = [
        ("tcp", "h1", Saw("HTTP/1.1"), Fails),
        ("tcp", "h2c", Fails, Saw("HTTP/2.0")),
        ("http", "h1", Saw("HTTP/1.1"), Saw("HTTP/1.1")),
        ("http", "h2c", Fails, Fails),
        ("http2", "h1", Fails, Fails),
        ("http2", "h2c", Saw("HTTP/2.0"), Saw("HTTP/2.0")),
        ("grpc", "h1", Fails, Fails),
        ("grpc", "h2c", Saw("HTTP/2.0"), Saw("HTTP/2.0")),
    ];
    let mut servers = Vec::new();
    for (i, (selector, mode, _, _)) in cells.iter().enumerate() {
        let name = format!("m-{selector}-{mode}");
        let port = (18100 + i).to_string();
        cp.weftctl_ok(&[
            "service",
            "create",
            &name,
            "--protocol",
            selector,
            "--port",
            &port,
        ]);
        let app = App::start(mode, &name).await;
        let sc = Sidecar::start(&cp, &name, app.addr, "eu").await;
        servers.push((app, sc));
    }
    let (_capp, client) = client_sidecar(&cp).await;
    for (i, (selector, _, _, _)) in cells.iter().enumerate() {
        client
            .wait_protocol(&format!("m-{selector}-{}", cells[i].1), selector)
            .await;
    }
    let mut failures = Vec::new();
    for (i, (selector, mode, h1_expect, h2_expect)) in cells.iter().enumerate() {
        let url = format!("http://{}/cell", client.outbound(18100 + i as u16));
        for (h2, expect) in [(false, h1_expect), (true, h2_expect)] {
            let got = call(&url, h2);
            let ok = match (expect, &got) {
                (Saw(version), Ok(json)) => {
                    json["version"] == *version
                        && json["headers"]["x-test"][0] == "yes"
                        && json["app"] == format!("m-{selector}-{mode}")
                }
                (Fails, Err(_)) => true,
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "selector {selector}, app {mode}, client {}: expected {expect:?}, got {got:?}",
                    if h2 { "h2c" } else { "h1" }
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn translation_drops_hop_by_hop_and_builds_authority() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&[
        "service",
        "create",
        "h2app",
        "--protocol",
        "http2",
        "--port",
        "18200",
    ]);
    cp.weftctl_ok(&[
        "service",
        "create",
        "h1app",
        "--protocol",
        "http",
        "--port",
        "18201",
    ]);
    let a2 = App::start("h2c", "h2app").await;
    let a1 = App::start("h1", "h1app").await;
    let _s2 = Sidecar::start(&cp, "h2app", a2.addr, "eu").await;
    let _s1 = Sidecar::start(&cp, "h1app", a1.addr, "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_protocol("h2app", "http2").await;

    // HTTP/1.1 client → h2c app: Connection-named and hop-by-hop fields never arrive,
    // :authority comes from Host.
    let json = curl_json(&[
        "--http1.1",
        "-H",
        "Host: api.example",
        "-H",
        "Connection: keep-alive, x-secret",
        "-H",
        "X-Secret: 1",
        "-H",
        "Keep-Alive: 300",
        "-H",
        "TE: gzip",
        "-H",
        "Upgrade: h2c",
        "-H",
        "weft-error-code: WEFT-1",
        "-H",
        "X-Keep: yes",
        &format!("http://{}/p?q=1", client.outbound(18200)),
    ]);
    assert_eq!(json["version"], "HTTP/2.0");
    assert_eq!(json["host"], "api.example");
    assert_eq!(json["path"], "/p?q=1");
    let headers = json["headers"].as_object().unwrap();
    for gone in [
        "x-secret",
        "keep-alive",
        "te",
        "upgrade",
        "connection",
        "weft-error-code",
        "host",
    ] {
        assert!(!headers.contains_key(gone), "{gone} crossed: {json}");
    }
    assert_eq!(json["headers"]["x-keep"][0], "yes");

    // h2c client → HTTP/1.1 app: cookies joined, Host from :authority.
    let json = curl_json(&[
        "--http2-prior-knowledge",
        "-H",
        "cookie: a=1",
        "-H",
        "cookie: b=2",
        &format!("http://{}/c", client.outbound(18201)),
    ]);
    assert_eq!(json["version"], "HTTP/1.1");
    assert_eq!(json["headers"]["cookie"], serde_json::json!(["a=1; b=2"]));
    assert_eq!(json["host"], client.outbound(18201).to_string());
}

#[tokio::test]
async fn grpc_to_an_http_service_names_the_fix() {
    let cp = ControlPlane::start(&[]).await;
    let (_app, _s) = deploy(&cp, "legacy", "http", 18300, "h1", "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_protocol("legacy", "http").await;
    let (code, out, err) = curl(&[
        "--http2-prior-knowledge",
        "-i",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        "",
        &format!("http://{}/pkg.Svc/Method", client.outbound(18300)),
    ]);
    assert_eq!(code, 0, "{err}");
    let lower = out.to_lowercase();
    assert!(lower.starts_with("http/2 200"), "{out}");
    assert!(lower.contains("grpc-status: 12"), "{out}");
    assert!(lower.contains("weft-error-code: weft-7"), "{out}");
    assert!(out.contains("set-protocol legacy grpc"), "{out}");
}

#[tokio::test]
async fn set_protocol_applies_to_new_connections() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&[
        "service",
        "create",
        "web",
        "--protocol",
        "http",
        "--port",
        "18400",
    ]);
    // An app that speaks both, so the selector alone decides.
    let app = App::start("auto", "web").await;
    let _s = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_protocol("web", "http").await;
    let url = format!("http://{}/", client.outbound(18400));
    assert_eq!(
        call(&url, true).unwrap()["version"],
        "HTTP/1.1",
        "http: h2 client translated"
    );
    assert_eq!(call(&url, false).unwrap()["version"], "HTTP/1.1");

    cp.weftctl_ok(&["service", "set-protocol", "web", "http2"]);
    _s.wait_protocol("web", "http2").await;
    assert_eq!(call(&url, true).unwrap()["version"], "HTTP/2.0");
    assert_eq!(
        call(&url, false).unwrap()["version"],
        "HTTP/2.0",
        "http2: h1 client translated"
    );

    // The sidecar's probe saw an app that answers both; the selector is honoured.
    let detail = cp.weftctl_ok(&["-o", "json", "service", "get", "web"]);
    assert!(detail.contains("\"http2\""), "{detail}");
}

#[tokio::test]
async fn app_protocol_mismatch_is_reported() {
    let cp = ControlPlane::start(&[]).await;
    let (_app, _s) = deploy(&cp, "wrong", "http2", 18450, "h1", "eu").await;
    let warning = eventually(Duration::from_secs(15), || async {
        let out = cp.weftctl(&["service", "get", "wrong"]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.contains("warning").then_some(err)
    })
    .await;
    assert!(
        warning.contains("declared http2") && warning.contains("http/1.1"),
        "{warning}"
    );
    assert!(warning.contains("set-protocol wrong http"), "{warning}");
}

#[tokio::test]
async fn big_bodies_stream_without_growing_memory() {
    let cp = ControlPlane::start(&[]).await;
    let (_app, server) = deploy(&cp, "bulk", "http", 18500, "h1", "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_protocol("bulk", "http").await;
    const SIZE: u64 = 100 * 1024 * 1024;
    let base = format!("http://{}", client.outbound(18500));
    let dir = tempfile::tempdir().unwrap();
    let upload = dir.path().join("upload.bin");
    {
        let f = std::fs::File::create(&upload).unwrap();
        f.set_len(SIZE).unwrap();
    }
    for h2 in [false, true] {
        let mode = if h2 {
            "--http2-prior-knowledge"
        } else {
            "--http1.1"
        };
        let (code, out, err) = curl(&[
            mode,
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &format!("{base}/bytes?n={SIZE}"),
        ]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), SIZE.to_string(), "download via {mode}");
        let json = curl_json(&[
            mode,
            "--data-binary",
            &format!("@{}", upload.display()),
            &format!("{base}/upload"),
        ]);
        assert_eq!(json["body_bytes"], SIZE, "upload via {mode}");
    }
    for (name, sc) in [("client", &client), ("server", &server)] {
        let (_rss, peak) = sc.proc.rss_kib();
        eprintln!("{name} sidecar peak RSS after 4 x 100 MB: {peak} KiB");
        assert!(
            peak < 64 * 1024,
            "{name} sidecar peaked at {peak} KiB: memory grew with the body"
        );
    }
}

#[tokio::test]
async fn traffic_survives_the_control_plane_going_away() {
    let mut cp = ControlPlane::start(&[]).await;
    let (_app, mut server) = deploy(&cp, "web", "http", 18600, "h1", "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_protocol("web", "http").await;
    let url = format!("http://{}/", client.outbound(18600));
    assert!(call(&url, false).is_ok());

    cp.kill9();
    for _ in 0..5 {
        call(&url, false).expect("traffic goes on without the control plane");
    }
    // A sidecar restarted while the control plane is down serves from its state dir.
    server.proc.restart();
    server.wait_ready(Duration::from_secs(20)).await;
    for _ in 0..5 {
        call(&url, true).expect("restarted sidecar serves from its state dir");
    }

    // The control plane comes back: everyone reconnects and is in sync.
    cp.restart().await;
    eventually(Duration::from_secs(30), || async {
        let list = cp.weftctl(&["-o", "json", "dataplane", "list"]);
        let v: serde_json::Value = serde_json::from_slice(&list.stdout).ok()?;
        let dps = v.as_array()?;
        let all = dps.len() == 2
            && dps
                .iter()
                .all(|d| d["connected"] == true && d["acked_version"] == d["latest_version"]);
        all.then_some(())
    })
    .await;
    cp.weftctl_ok(&["service", "set-protocol", "web", "tcp"]);
    client.wait_protocol("web", "tcp").await;
    let _ = &mut server;
}

#[tokio::test]
async fn peers_without_a_mesh_certificate_cannot_open_a_tunnel() {
    use weft_certs::*;
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "tcp"]);
    let app = App::start("h1", "web").await;
    let server = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let bundle = TrustBundle::from_pem(&cp.ca_pem()).unwrap();
    let td = TrustDomain::new("weft.local").unwrap();
    let web = SpiffeId::new(&td, IdentityKind::Service, "web").unwrap();

    // A certificate from another CA with a SPIFFE id of the mesh.
    let client = SpiffeId::new(&td, IdentityKind::Service, "client").unwrap();
    let foreign = weft_tests::mtls::foreign_identity(&td, &client);
    let with_foreign = mesh_client_config(&foreign, &bundle, &web, &[b"h2"]).unwrap();
    let anonymous = control_plane_client_config(&bundle, None, &[b"h2"]).unwrap();

    for (what, config) in [("foreign CA", with_foreign), ("no certificate", anonymous)] {
        let tcp = tokio::net::TcpStream::connect(server.inbound)
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("web.weft").unwrap();
        let opened = async {
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            let (mut h2, conn) = h2_handshake(tls).await?;
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method("CONNECT")
                .uri("web:0")
                .body(())
                .unwrap();
            h2.send_request(req, false)
                .map_err(std::io::Error::other)?
                .0
                .await
                .map_err(std::io::Error::other)
        };
        let result = tokio::time::timeout(Duration::from_secs(10), opened)
            .await
            .unwrap();
        assert!(
            result.is_err(),
            "{what}: the tunnel must refuse, got {result:?}"
        );
    }
}

async fn h2_handshake<T>(
    io: T,
) -> std::io::Result<(
    h2::client::SendRequest<bytes::Bytes>,
    h2::client::Connection<T, bytes::Bytes>,
)>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    h2::client::handshake(io)
        .await
        .map_err(std::io::Error::other)
}

#[tokio::test]
async fn a_killed_endpoint_is_routed_around() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&[
        "service",
        "create",
        "web",
        "--protocol",
        "http",
        "--port",
        "18700",
    ]);
    let a1 = App::start("h1", "one").await;
    let a2 = App::start("h1", "two").await;
    let mut s1 = Sidecar::start(&cp, "web", a1.addr, "eu").await;
    let _s2 = Sidecar::start(&cp, "web", a2.addr, "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_endpoints("web", 2).await;
    let url = format!("http://{}/", client.outbound(18700));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        seen.insert(
            call(&url, false).unwrap()["app"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(seen.len(), 2, "both endpoints take traffic: {seen:?}");

    s1.proc.kill9();
    let mut failed = 0;
    for _ in 0..30 {
        match call(&url, false) {
            Ok(json) => assert_eq!(json["app"], "two"),
            Err(_) => failed += 1,
        }
    }
    assert_eq!(failed, 0, "new connections must go to the live endpoint");
    let _ = DataplaneKind::Sidecar;
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let cp = ControlPlane::start(&[]).await;
    let (_app, mut server) = deploy(&cp, "web", "http", 18950, "h1", "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_endpoints("web", 1).await;
    let url = format!("http://{}/sleep?ms=1500", client.outbound(18950));
    // curl blocks, so it runs on its own thread while this one sends SIGTERM.
    let slow = std::thread::spawn(move || call(&url, false));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = std::time::Instant::now();
    let status = server
        .proc
        .terminate(Duration::from_secs(15))
        .expect("sidecar exited");
    assert!(status.success(), "exit status {status}");
    let answered = slow.join().unwrap();
    assert!(
        answered.is_ok(),
        "the in-flight request must complete: {answered:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "exited before the request finished"
    );
}

#[tokio::test]
async fn same_region_first_failover_and_back() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&[
        "service",
        "create",
        "web",
        "--protocol",
        "http",
        "--port",
        "18960",
    ]);
    let mut eu = App::start("h1", "eu").await;
    let us = App::start("h1", "us").await;
    let _seu = Sidecar::start(&cp, "web", eu.addr, "eu").await;
    let _sus = Sidecar::start(&cp, "web", us.addr, "us").await;
    let (_c, client) = client_sidecar(&cp).await; // region eu
    client.wait_endpoints("web", 2).await;
    let url = format!("http://{}/", client.outbound(18960));
    let who = |url: &str| call(url, false).map(|j| j["app"].as_str().unwrap_or("").to_owned());
    for _ in 0..20 {
        assert_eq!(who(&url).unwrap(), "eu", "the caller's own region first");
    }

    // The eu app stops: new connections fail over to us, none fails.
    eu.proc.kill9();
    for _ in 0..20 {
        assert_eq!(who(&url).unwrap(), "us", "failover to the other region");
    }
    // The sidecar's probe reports it down; the control plane pushes it as unhealthy.
    client.wait_endpoints("web", 1).await;

    // It comes back: so does the traffic.
    eu.proc.restart();
    client.wait_endpoints("web", 2).await;
    eventually(Duration::from_secs(20), || async {
        (who(&url).ok()? == "eu").then_some(())
    })
    .await;
    for _ in 0..10 {
        assert_eq!(who(&url).unwrap(), "eu");
    }
}
