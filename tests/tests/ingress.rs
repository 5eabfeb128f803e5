//! The region ingress: callers in another region reach an endpoint through the ingress of
//! the endpoint's region, which routes by TLS SNI and never decrypts. A caller whose
//! region has an ingress of its own leaves through it (it relays by SNI to the other
//! region's ingress), so sidecars need no route to other regions' networks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weft_tests::{ControlPlane, Ingress, client_sidecar, curl_json, deploy, eventually};

#[tokio::test]
async fn other_regions_go_through_the_ingress_by_sni() {
    let cp = ControlPlane::start(&[]).await;
    // The only endpoint of web is in region us.
    let _us = deploy(&cp, "web", "http", 18980, "h1", "us").await;

    let ingress = Ingress::start(&cp, "us").await;
    let listen = ingress.listen;
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
        ingress.connections("spliced").await >= 1,
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
    assert!(ingress.connections("unknown_sni").await >= 1);
}

#[tokio::test]
async fn callers_leave_through_their_own_regions_ingress() {
    let cp = ControlPlane::start(&[]).await;
    // The only endpoint of web is in region us.
    let _us = deploy(&cp, "web", "http", 18981, "h1", "us").await;
    let us_ingress = Ingress::start(&cp, "us").await;
    let eu_ingress = Ingress::start(&cp, "eu").await;
    let (us_listen, eu_listen) = (us_ingress.listen, eu_ingress.listen);
    let (_c, client) = client_sidecar(&cp).await; // region eu
    // The caller knows both ingresses: its own region's (through its own endpoint) and
    // the us endpoint's.
    eventually(Duration::from_secs(15), || async {
        let c = client.config().await;
        let eps = c["endpoints"].as_object()?.clone();
        let knows = |region: &str, addr: std::net::SocketAddr| {
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
        eu_ingress.connections("relayed").await >= 1,
        "the caller left through the eu ingress"
    );
    assert_eq!(eu_ingress.connections("spliced").await, 0);
    assert!(
        us_ingress.connections("spliced").await >= 1,
        "and came in through the us ingress"
    );
}
