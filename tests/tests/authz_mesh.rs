//! Permissions enforced by the destination's sidecar, end to end with real binaries and
//! real clients: curl through callers' sidecars and the gateway (HTTP), grpcio (gRPC),
//! raw TCP, and mTLS clients holding an ingress's certificate; plus the trust gaps on
//! the data path (an announced loopback address, a revoked dataplane).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_proto::v1::DataplaneKind;
use weft_tests::{
    ControlPlane, Gateway, Ingress, Proc, Sidecar, bin, client_sidecar, created_id, curl, deploy,
    eventually, free_port, loopback_ip, metric, py,
};

const WAIT: Duration = Duration::from_secs(20);

/// `curl -i`: (status code, headers and body).
fn get(args: &[String]) -> (u16, String) {
    let mut all = vec!["-i".to_string()];
    all.extend(args.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let (_, out, err) = curl(&refs);
    let code = out
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, format!("{out}{err}"))
}

/// Waits until `call` answers `status` with a response containing every one of `says`.
async fn expect(what: &str, call: impl Fn() -> (u16, String), status: u16, says: &[&str]) {
    let mut last = String::new();
    let within = eventually(WAIT, || {
        let (code, text) = call();
        let ok = code == status && says.iter().all(|s| text.contains(s));
        if !ok {
            last = format!("{code}: {text}");
        }
        async move { ok.then_some(()) }
    });
    if tokio::time::timeout(WAIT + Duration::from_secs(5), within)
        .await
        .is_err()
    {
        panic!("{what}: want {status} saying {says:?}, last got {last}");
    }
}

#[tokio::test]
async fn every_selector_allows_denies_and_audits_through_sidecars_and_the_gateway() {
    let cp = ControlPlane::start(&[]).await;
    let port = free_port();
    let (web_app, web) = deploy(&cp, "web", "http", port, "h1", "eu").await;
    let (_fa, frontend) = deploy(&cp, "frontend", "tcp", 0, "h1", "eu").await;
    let (_ba, batch) = deploy(&cp, "batch", "tcp", 0, "h1", "eu").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    gw.wait_route("web.example.com").await;
    for sc in [&frontend, &batch] {
        sc.wait_endpoints("web", 1).await;
    }
    let via = |sc: &Sidecar| {
        let url = format!("http://{}/", sc.outbound(port));
        move || get(std::slice::from_ref(&url))
    };
    let via_gw = || get(&gw.plain("web.example.com", "/"));
    let code = "weft-error-code: WEFT-10";

    // A new mesh allows everything.
    expect("frontend, default", via(&frontend), 200, &[]).await;
    expect("gateway, default", via_gw, 200, &[]).await;

    // An exact service and an exact gateway are denied; others are not.
    let d1 =
        created_id(&cp.weftctl_ok(&["permission", "deny", "--from", "frontend", "--to", "web"]));
    expect("frontend denied", via(&frontend), 403, &[code, &d1]).await;
    expect("batch still allowed", via(&batch), 200, &[]).await;
    expect("gateway still allowed", via_gw, 200, &[]).await;
    let d2 = created_id(&cp.weftctl_ok(&[
        "permission",
        "deny",
        "--from",
        "gateway:edge",
        "--to",
        "web",
    ]));
    expect("gateway denied", via_gw, 403, &[code, &d2, "gateway:edge"]).await;

    // Default deny: only what is allowed goes through.
    cp.weftctl_ok(&["permission", "delete", &d1]);
    cp.weftctl_ok(&["permission", "delete", &d2]);
    cp.weftctl_ok(&["mesh", "set-default-policy", "deny"]);
    expect(
        "frontend by default",
        via(&frontend),
        403,
        &[code, "default policy"],
    )
    .await;
    expect("gateway by default", via_gw, 403, &[code, "default policy"]).await;
    cp.weftctl_ok(&["permission", "allow", "--from", "frontend", "--to", "web"]);
    expect("frontend allowed", via(&frontend), 200, &[]).await;
    expect("batch by default", via(&batch), 403, &[code]).await;

    // A port rule matches the destination app's port only.
    cp.weftctl_ok(&[
        "permission",
        "allow",
        "--from",
        "gateway:edge",
        "--to",
        "web",
        "--port",
        "1",
    ]);
    let app_port = web_app.addr.port().to_string();
    let on_port = created_id(&cp.weftctl_ok(&[
        "permission",
        "allow",
        "--from",
        "gateway:edge",
        "--to",
        "web",
        "--port",
        &app_port,
    ]));
    expect("gateway on the app's port", via_gw, 200, &[]).await;
    let (code_now, _) = via_gw();
    assert_eq!(code_now, 200, "allowed by {on_port}");

    // '*' audited: allowed, and counted as a would-be denial.
    cp.weftctl_ok(&["permission", "audit", "--from", "*", "--to", "web"]);
    expect("batch audited", via(&batch), 200, &[]).await;

    let count = |source: &'static str, decision: &'static str| async move {
        metric(
            web.admin,
            "weft_authz_decisions_total",
            &[
                ("source", source),
                ("destination", "web"),
                ("decision", decision),
            ],
        )
        .await
    };
    assert!(count("batch", "audit").await >= 1);
    assert!(count("frontend", "deny").await >= 1);
    assert!(count("frontend", "allow").await >= 1);
    assert!(count("gateway:edge", "deny").await >= 1);
    assert!(count("gateway:edge", "allow").await >= 1);
    let log = web.proc.log_text();
    assert!(
        log.contains("weft::authz") && log.contains("would be denied"),
        "{log}"
    );
}

#[tokio::test]
async fn a_denied_grpc_call_is_permission_denied_with_the_rule() {
    let cp = ControlPlane::start(&[]).await;
    let port = free_port();
    let (_app, _echo) = deploy(&cp, "echo", "grpc", port, "grpc", "eu").await;
    let (_ca, client) = client_sidecar(&cp).await;
    client.wait_endpoints("echo", 1).await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    cp.weftctl_ok(&["route", "create", "grpc.example.com", "--service", "echo"]);
    gw.wait_route("grpc.example.com").await;
    let via_client = client.outbound(port).to_string();
    let via_gw = gw.http.to_string();
    let unary = |target: &str| {
        let (json, _) = py(
            "grpc_client.py",
            &[
                "--target",
                target,
                "--authority",
                "grpc.example.com",
                "unary",
            ],
        );
        json["cases"]["unary"].clone()
    };
    assert_eq!(unary(&via_client)["ok"], true);
    assert_eq!(unary(&via_gw)["ok"], true);

    let deny =
        created_id(&cp.weftctl_ok(&["permission", "deny", "--from", "client", "--to", "echo"]));
    let gw_deny = created_id(&cp.weftctl_ok(&[
        "permission",
        "deny",
        "--from",
        "gateway:edge",
        "--to",
        "echo",
    ]));
    for (target, rule) in [(&via_client, &deny), (&via_gw, &gw_deny)] {
        let outcome = eventually(WAIT, || async {
            let r = unary(target);
            (r["ok"] == false).then_some(r)
        })
        .await;
        let error = outcome["error"].as_str().unwrap();
        assert!(
            error.contains("PERMISSION_DENIED") && error.contains(rule.as_str()),
            "{target}: {error}"
        );
    }
}

/// What a recording app received, all connections together (the sidecar's app probe
/// connects too, so tests look for their own bytes).
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<u8>>>);

impl Received {
    fn contains(&self, needle: &[u8]) -> bool {
        self.0
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

/// A TCP app that echoes and records every byte it received.
async fn recording_echo() -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let record = received.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = tcp.read(&mut buf).await {
                    record.0.lock().unwrap().extend_from_slice(&buf[..n]);
                    if n == 0 || tcp.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, received)
}

/// Sends `msg` on a new connection to `addr`; returns what came back before it closed
/// (within 5 s).
async fn exchange(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        return Vec::new();
    };
    let _ = tcp.write_all(msg).await;
    let mut got = vec![0u8; msg.len()];
    match tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got)).await {
        Ok(Ok(_)) => got,
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn a_denied_tcp_connection_closes_with_no_byte_at_the_app() {
    let cp = ControlPlane::start(&[]).await;
    let port = cp.create_tcp_service("raw");
    let (app, received) = recording_echo().await;
    let _raw = Sidecar::start(&cp, "raw", app, "eu").await;
    let (_ca, client) = client_sidecar(&cp).await;
    client.wait_endpoints("raw", 1).await;
    assert_eq!(exchange(client.outbound(port), b"hello").await, b"hello");

    cp.weftctl_ok(&["permission", "deny", "--from", "client", "--to", "raw"]);
    eventually(WAIT, || async {
        exchange(client.outbound(port), b"ping")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    // The connection is accepted by the caller's sidecar, then closed: nothing came back.
    let mut tcp = TcpStream::connect(client.outbound(port)).await.unwrap();
    tcp.write_all(b"denied-secret").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the caller's connection closes");
    assert!(received.contains(b"hello"), "the allowed bytes reached it");
    assert!(
        !received.contains(b"denied-secret"),
        "no denied byte reached the app"
    );
}

/// An mTLS HTTP/2 client holding the identity in `state_dir` (cert.pem, key.pem,
/// bundle.pem), to the inbound at `addr` expecting `server`, speaking `alpn`.
async fn h2_as(
    state_dir: &std::path::Path,
    addr: SocketAddr,
    server: &str,
    alpn: &[u8],
) -> h2::client::SendRequest<Bytes> {
    let read = |f: &str| std::fs::read_to_string(state_dir.join(f)).unwrap();
    let identity = weft_certs::Identity::from_pem(&read("cert.pem"), &read("key.pem")).unwrap();
    let bundle = weft_certs::TrustBundle::from_pem(&read("bundle.pem")).unwrap();
    let expected = weft_certs::SpiffeId::parse(server).unwrap();
    let config = weft_certs::mesh_client_config(&identity, &bundle, &expected, &[alpn]).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls_pki_types::ServerName::try_from("peer.mesh.invalid").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

#[tokio::test]
async fn an_ingress_certificate_cannot_open_a_tunnel_or_send_a_request() {
    let cp = ControlPlane::start(&[]).await;
    cp.create_tcp_service("raw");
    let (app, received) = recording_echo().await;
    let raw = Sidecar::start(&cp, "raw", app, "eu").await;
    let (_wa, web) = deploy(&cp, "web", "http", 0, "h1", "eu").await;
    let ingress = Ingress::start(&cp, "eu").await;
    eventually(WAIT, || async {
        ingress.state_dir.join("key.pem").exists().then_some(())
    })
    .await;
    // Whatever the rules say.
    cp.weftctl_ok(&["permission", "allow", "--from", "*", "--to", "*"]);
    raw.wait_protocol("raw", "tcp").await;

    // A CONNECT tunnel with the ingress's certificate is refused before the app.
    let mut send = h2_as(
        &ingress.state_dir,
        raw.inbound,
        "spiffe://weft.local/service/raw",
        b"h2",
    )
    .await;
    let connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("raw:0")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(connect, false).unwrap();
    let _ = body.send_data(Bytes::from_static(b"from-the-ingress"), false);
    let response = response.await.unwrap();
    assert_eq!(response.status(), http::StatusCode::FORBIDDEN);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!received.contains(b"from-the-ingress"));

    // A request on the mesh HTTP path is answered 403 WEFT-10.
    let mut send = h2_as(
        &ingress.state_dir,
        web.inbound,
        "spiffe://weft.local/service/web",
        b"weft-http/2",
    )
    .await;
    let get = http::Request::builder()
        .uri("http://web/")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(get, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), http::StatusCode::FORBIDDEN);
    assert_eq!(response.headers()["weft-error-code"], "WEFT-10");
    assert!(
        metric(
            raw.admin,
            "weft_authz_decisions_total",
            &[("source", "ingress:eu-ingress"), ("decision", "deny")]
        )
        .await
            >= 1
    );
}

#[tokio::test]
async fn an_announced_loopback_address_is_refused_at_registration_and_at_the_ingress() {
    // The victim: a service on the ingress host's loopback.
    let (victim, victim_received) = recording_echo().await;

    // At registration: a control plane not on loopback refuses it, and says why.
    let wide = ControlPlane::start_listening([0, 0, 0, 0].into(), &[]).await;
    wide.weftctl_ok(&["service", "create", "evil", "--protocol", "tcp"]);
    let token = wide.token_for(DataplaneKind::Sidecar, "evil").await;
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "run".to_string(),
        "--cp".into(),
        wide.url(),
        "--token".into(),
        token,
        "--service".into(),
        "evil".into(),
        "--app".into(),
        "127.0.0.1:9".into(),
        "--inbound".into(),
        format!("127.0.0.1:{}", free_port()),
        "--admin".into(),
        format!("127.0.0.1:{}", free_port()),
        "--outbound-ip".into(),
        loopback_ip().to_string(),
        "--advertise".into(),
        victim.to_string(),
    ]
    .into();
    let refused = Proc::spawn(bin("weft-sidecar"), args, dir.path().join("evil.log"));
    eventually(WAIT, || async {
        let log = refused.log_text();
        (log.contains("InvalidArgument") && log.contains("loopback")).then_some(())
    })
    .await;
    assert!(!wide.weftctl_ok(&["dataplane", "list"]).contains("evil"));
    drop(refused);

    // At the ingress: a single-host control plane accepts loopback, but an ingress
    // that faces other hosts never splices to its own host.
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "evil", "--protocol", "tcp"]);
    let ingress = Ingress::start_listening(&cp, "us", [0, 0, 0, 0].into()).await;
    let token = cp.token_for(DataplaneKind::Sidecar, "evil").await;
    let app = weft_tests::App::start("h1", "evil").await;
    let evil = Sidecar::start_with(
        cp.url(),
        &token,
        "evil",
        app.addr,
        "us",
        &["--advertise", &victim.to_string()],
    )
    .await;
    let sni = eventually(WAIT, || async {
        let c = evil.config().await;
        c["endpoints"]
            .as_object()
            .and_then(|m| {
                m.values()
                    .find(|e| e["service"] == "evil" && e["ingress_address"] != "")
            })
            .and_then(|e| e["sni"].as_str().map(str::to_owned))
    })
    .await;
    let hello = client_hello(&sni);
    let mut tcp = TcpStream::connect(ingress.listen).await.unwrap();
    tcp.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !victim_received.contains(&hello[..5]),
        "nothing reached the victim"
    );
    assert_eq!(ingress.connections("refused_target").await, 1);
}

/// A minimal TLS 1.3 ClientHello naming `sni` (enough for the ingress to route it).
fn client_hello(sni: &str) -> Vec<u8> {
    let name = sni.as_bytes();
    let mut server_name = vec![0u8];
    server_name.extend((name.len() as u16).to_be_bytes());
    server_name.extend(name);
    let mut list = (server_name.len() as u16).to_be_bytes().to_vec();
    list.extend(server_name);
    let mut ext = vec![0u8, 0];
    ext.extend((list.len() as u16).to_be_bytes());
    ext.extend(list);
    let mut body = vec![3u8, 3];
    body.extend([7u8; 32]);
    body.push(0);
    body.extend([0u8, 2, 0x13, 0x01, 1, 0]);
    body.extend((ext.len() as u16).to_be_bytes());
    body.extend(ext);
    let mut handshake = vec![1u8];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16u8, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test]
async fn a_revoked_dataplane_is_refused_by_its_peers_at_once() {
    let cp = ControlPlane::start(&[]).await;
    let port = free_port();
    let (_wa, _web) = deploy(&cp, "web", "http", port, "h1", "eu").await;
    let (_ca, client) = client_sidecar(&cp).await;
    client.wait_endpoints("web", 1).await;
    let via = {
        let url = format!("http://{}/", client.outbound(port));
        move || get(std::slice::from_ref(&url))
    };
    expect("before", via.clone(), 200, &[]).await;
    let id = format!("service/client/{}", client.inbound);
    cp.weftctl_ok(&["dataplane", "revoke", &id]);
    // The pooled tunnel connection it already had gets no new stream.
    expect("after", via, 403, &["WEFT-10", "revoked"]).await;
    let log = client.proc.log_text();
    assert!(log.contains("revoked"), "{log}");
}

#[tokio::test]
async fn a_sidecar_whose_token_was_revoked_says_why_and_stops_being_ready_at_expiry() {
    let cp = ControlPlane::start(&["--cert-ttl", "20s"]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let created = cp
        .admin()
        .await
        .create_token(weft_proto::v1::CreateTokenRequest {
            kind: DataplaneKind::Sidecar as i32,
            name: "web".into(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let app = weft_tests::App::start("h1", "web").await;
    let sc = Sidecar::start_with(cp.url(), &created.token, "web", app.addr, "eu", &[]).await;
    cp.weftctl_ok(&["token", "revoke", &created.info.unwrap().id]);

    // The renewal at ~70% of 20 s is refused; the sidecar says why and what to do.
    eventually(Duration::from_secs(40), || async {
        let log = sc.proc.log_text();
        (log.contains("refuses to renew") && log.contains("weftctl token create --service web"))
            .then_some(())
    })
    .await;
    // Once the certificate has expired, it is no longer ready, and says so.
    eventually(Duration::from_secs(40), || async {
        let r = weft_tests::http_get(sc.admin, "/ready").await.ok()?;
        (r.starts_with("HTTP/1.1 503") && r.contains("expired")).then_some(())
    })
    .await;
}
