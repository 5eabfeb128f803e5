//! The gateway's mesh HTTP path end to end: each public request travels as one plain
//! HTTP/2 stream on a pooled mTLS connection (ALPN `weft-http/2`) to the destination
//! sidecar's inbound port, which forwards it to the app per the selector. Real weft-cp,
//! gateway, sidecars, ingress and demo apps, driven by curl and Python clients.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weft_tests::{App, ControlPlane, Gateway, Ingress, Sidecar, curl, deploy, eventually, metric};

/// curl `mode` + `args` with the status appended; returns (status, body).
fn fetch(mode: &[&str], args: &[String]) -> (String, String) {
    let mut all: Vec<&str> = mode.to_vec();
    all.extend(["-w", "\n%{http_code}"]);
    all.extend(args.iter().map(String::as_str));
    let (code, out, err) = curl(&all);
    assert_eq!(code, 0, "curl {all:?}: {err}");
    let (body, status) = out.rsplit_once('\n').unwrap();
    (status.to_owned(), body.to_owned())
}

/// Response head (status line and headers, lowercased) of a curl -i call.
fn head(mode: &[&str], args: &[String]) -> String {
    let mut all: Vec<&str> = mode.to_vec();
    all.push("-i");
    all.extend(args.iter().map(String::as_str));
    let (code, out, err) = curl(&all);
    assert_eq!(code, 0, "curl {all:?}: {err}");
    out.to_lowercase()
}

#[tokio::test]
async fn gateway_requests_are_plain_http2_streams_served_by_the_inbound() {
    let cp = ControlPlane::start(&[]).await;
    let (_web_app, web) = deploy(&cp, "web", "http", 0, "h1", "eu").await;
    let (_api_app, api) = deploy(&cp, "api", "http2", 0, "h2c", "eu").await;
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    cp.weftctl_ok(&["route", "create", "api.example.com", "--service", "api"]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("api.example.com").await;

    for _ in 0..5 {
        for mode in ["--http1.1", "--http2-prior-knowledge"] {
            for (host, version) in [
                ("web.example.com", "HTTP/1.1"),
                ("api.example.com", "HTTP/2.0"),
            ] {
                let (status, body) = fetch(&[mode], &gw.plain(host, "/v"));
                assert_eq!(status, "200", "{host} {mode}: {body}");
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(json["version"], version, "{host} {mode}: {json}");
                let via = json["headers"]["via"].to_string();
                assert!(via.contains("weft"), "the gateway names its hop: {json}");
            }
        }
    }
    // The inbounds forwarded each request (translated for web, HTTP/2 to HTTP/2 for
    // api); no tunnel stream was spliced, so no HTTP/2 travelled inside another.
    let requests = |sc: &Sidecar, outbound: &'static str| {
        let admin = sc.admin;
        async move {
            metric(
                admin,
                "weft_requests_total",
                &[("inbound", "h2"), ("outbound", outbound)],
            )
            .await
        }
    };
    assert_eq!(requests(&web, "h1").await, 10);
    assert_eq!(requests(&api, "h2").await, 10);
    for sc in [&web, &api] {
        assert_eq!(metric(sc.admin, "weft_streams_spliced_total", &[]).await, 0);
        // Twenty requests, one pooled connection (the gateway fills one before opening
        // another).
        let accepted = metric(
            sc.admin,
            "weft_connections_total",
            &[("direction", "inbound"), ("result", "accepted")],
        )
        .await;
        assert_eq!(accepted, 1, "{} inbound connections", sc.service);
    }
}

#[tokio::test]
async fn tcp_services_are_never_sent_http_and_errors_name_no_internal_address() {
    let cp = ControlPlane::start(&[]).await;
    let (_raw_app, _raw) = deploy(&cp, "raw", "tcp", 0, "h2c", "eu").await;
    let (mut web_app, _web) = deploy(&cp, "web", "http", 0, "h1", "eu").await;
    cp.weftctl_ok(&["route", "create", "raw.example.com", "--service", "raw"]);
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("raw.example.com").await;
    gw.wait_route("web.example.com").await;

    // A route to a `tcp` service: 502 WEFT-12, never h2c into a raw app.
    let h = head(&["--http1.1"], &gw.plain("raw.example.com", "/"));
    assert!(
        h.starts_with("http/1.1 502") && h.contains("weft-error-code: weft-12"),
        "{h}"
    );
    assert!(
        h.contains("set-protocol raw"),
        "the message names the fix: {h}"
    );
    let grpc: Vec<String> = [
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "--data-binary",
        "",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(gw.plain("raw.example.com", "/p.S/M"))
    .collect();
    let h = head(&["--http2-prior-knowledge"], &grpc);
    assert!(
        h.contains("grpc-status: 12") && h.contains("weft-error-code: weft-12"),
        "{h}"
    );

    // The app stops: the answer says which service, never where it runs.
    let port = web_app.addr.port().to_string();
    web_app.proc.kill9();
    let (status, body) = fetch(&["--http1.1"], &gw.plain("web.example.com", "/"));
    assert_eq!(status, "503", "{body}");
    assert!(
        body.starts_with("WEFT-2:") && body.contains("web"),
        "{body}"
    );
    assert!(
        !body.contains("127.0.0.1") && !body.contains(&port),
        "no internal address in a public error: {body}"
    );
}

#[tokio::test]
async fn gateway_requests_to_another_region_pass_its_ingress() {
    let cp = ControlPlane::start(&[]).await;
    // The only endpoint of web is in region us, behind its ingress; the gateway is in eu.
    let _us = deploy(&cp, "web", "http", 0, "h1", "us").await;
    let ingress = Ingress::start(&cp, "us").await;
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("web.example.com").await;
    let listen = ingress.listen.to_string();
    eventually(Duration::from_secs(15), || async {
        let body = weft_tests::http_get(gw.admin, "/config").await.ok()?;
        body.contains(&listen).then_some(())
    })
    .await;
    for mode in ["--http1.1", "--http2-prior-knowledge", "--http2"] {
        let (status, body) = fetch(&[mode], &gw.plain("web.example.com", "/far"));
        assert_eq!(status, "200", "{mode}: {body}");
        assert!(body.contains("\"path\":\"/far\""), "{body}");
    }
    // The ingress spliced the gateway's mTLS connection by SNI, without decrypting it:
    // the mesh HTTP path's ALPN passed through.
    assert!(ingress.connections("spliced").await >= 1);
}

#[tokio::test]
async fn mesh_http_connections_need_a_mesh_certificate() {
    use weft_certs::*;
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let app = App::start("h1", "web").await;
    let server = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let bundle = TrustBundle::from_pem(&cp.ca_pem()).unwrap();
    let td = TrustDomain::new("weft.local").unwrap();
    let web = SpiffeId::new(&td, IdentityKind::Service, "web").unwrap();
    // A certificate from another CA claiming to be a gateway.
    let edge = SpiffeId::new(&td, IdentityKind::Gateway, "edge").unwrap();
    let foreign = weft_tests::mtls::foreign_identity(&td, &edge);
    let alpn: &[&[u8]] = &[b"weft-http/2"];
    let with_foreign = mesh_client_config(&foreign, &bundle, &web, alpn).unwrap();
    let anonymous = control_plane_client_config(&bundle, None, alpn).unwrap();
    for (what, config) in [("foreign CA", with_foreign), ("no certificate", anonymous)] {
        let tcp = tokio::net::TcpStream::connect(server.inbound)
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("web.weft").unwrap();
        let answered = async {
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            let (mut h2, conn) = h2::client::handshake(tls)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let req = http::Request::get("http://web/").body(()).unwrap();
            h2.send_request(req, true)
                .map_err(std::io::Error::other)?
                .0
                .await
                .map_err(std::io::Error::other)
        };
        let result = tokio::time::timeout(Duration::from_secs(10), answered)
            .await
            .unwrap();
        assert!(result.is_err(), "{what}: must be refused, got {result:?}");
    }
}
