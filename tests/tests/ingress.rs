//! The region ingress: callers in another region reach an endpoint through the ingress of
//! the endpoint's region, which routes by TLS SNI and never decrypts. A caller whose
//! region has an ingress of its own leaves through it (it relays by SNI to the other
//! region's ingress), so sidecars need no route to other regions' networks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use weft_proto::v1::DataplaneKind;
use weft_tests::{
    ControlPlane, Proc, bin, client_sidecar, curl_json, deploy, eventually, free_port, http_get,
};

async fn ingress_metric(admin: SocketAddr, result: &str) -> u64 {
    let body = http_get(admin, "/metrics").await.unwrap_or_default();
    body.lines()
        .find(|l| {
            l.starts_with("weft_connections_total")
                && l.contains("direction=\"ingress\"")
                && l.contains(&format!("result=\"{result}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A running `weft-sidecar ingress`: the process (and the directory of its log), its
/// listen and admin addresses.
type Ingress = ((Proc, tempfile::TempDir), SocketAddr, SocketAddr);

async fn start_ingress(cp: &ControlPlane, region: &str) -> Ingress {
    let token = cp
        .token_for(DataplaneKind::Ingress, &format!("{region}-ingress"))
        .await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ingress.log");
    let proc = Proc::spawn(
        bin("weft-sidecar"),
        [
            "ingress",
            "--cp",
            &cp.url(),
            "--token",
            &token,
            "--region",
            region,
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        log,
    );
    ((proc, dir), listen, admin)
}

#[tokio::test]
async fn other_regions_go_through_the_ingress_by_sni() {
    let cp = ControlPlane::start(&[]).await;
    // The only endpoint of web is in region us.
    let _us = deploy(&cp, "web", "http", 18980, "h1", "us").await;

    let (_ingress, listen, admin) = start_ingress(&cp, "us").await;
    let (_c, client) = client_sidecar(&cp).await; // region eu
    // The caller learns which ingress reaches the us endpoint.
    eventually(Duration::from_secs(15), || async {
        let c = client.config().await;
        c["endpoints"]
            .as_object()?
            .values()
            .any(|e| e["ingress_address"] == listen.to_string() && e["region"] == "us")
            .then_some(())
    })
    .await;

    for _ in 0..5 {
        let json = curl_json(&[
            "--http2-prior-knowledge",
            &format!("http://{}/x", client.outbound(18980)),
        ]);
        assert_eq!(json["app"], "web");
        assert_eq!(
            json["version"], "HTTP/1.1",
            "translated at the last hop, past the ingress"
        );
    }
    assert!(
        ingress_metric(admin, "spliced").await >= 1,
        "the traffic went through the ingress"
    );

    // A name that is no dataplane of its region is refused.
    let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
    let config = weft_certs::control_plane_client_config(
        &weft_certs::TrustBundle::from_pem(&cp.ca_pem()).unwrap(),
        None,
        &[b"h2"],
    )
    .unwrap();
    let name = rustls_pki_types::ServerName::try_from("0000000000000000.web.weft").unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .unwrap();
    assert!(r.is_err(), "an unknown SNI must not be routed");
    assert!(ingress_metric(admin, "unknown_sni").await >= 1);
}

#[tokio::test]
async fn callers_leave_through_their_own_regions_ingress() {
    let cp = ControlPlane::start(&[]).await;
    // The only endpoint of web is in region us.
    let _us = deploy(&cp, "web", "http", 18981, "h1", "us").await;
    let (_us_ingress, us_listen, us_admin) = start_ingress(&cp, "us").await;
    let (_eu_ingress, eu_listen, eu_admin) = start_ingress(&cp, "eu").await;
    let (_c, client) = client_sidecar(&cp).await; // region eu
    // The caller knows both ingresses: its own region's (through its own endpoint) and
    // the us endpoint's.
    eventually(Duration::from_secs(15), || async {
        let c = client.config().await;
        let eps = c["endpoints"].as_object()?.clone();
        let knows = |region: &str, addr: SocketAddr| {
            eps.values()
                .any(|e| e["region"] == region && e["ingress_address"] == addr.to_string())
        };
        (knows("us", us_listen) && knows("eu", eu_listen)).then_some(())
    })
    .await;

    for _ in 0..5 {
        let json = curl_json(&[
            "--http2-prior-knowledge",
            &format!("http://{}/x", client.outbound(18981)),
        ]);
        assert_eq!(json["app"], "web");
        assert_eq!(json["version"], "HTTP/1.1");
    }
    assert!(
        ingress_metric(eu_admin, "relayed").await >= 1,
        "the caller left through the eu ingress"
    );
    assert_eq!(ingress_metric(eu_admin, "spliced").await, 0);
    assert!(
        ingress_metric(us_admin, "spliced").await >= 1,
        "and came in through the us ingress"
    );
}
