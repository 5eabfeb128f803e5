//! Certificates renew under continuous traffic without a single failed request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use weft_tests::{App, ControlPlane, Sidecar, http_get};

async fn not_after(sc: &Sidecar) -> i64 {
    let body = http_get(sc.admin, "/certs").await.unwrap();
    let json: serde_json::Value =
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    json["not_after"].as_i64().unwrap()
}

#[tokio::test]
async fn a_minute_of_traffic_across_20s_certificates_loses_nothing() {
    let cp = ControlPlane::start(&["--cert-ttl", "20s"]).await;
    cp.weftctl_ok(&[
        "service",
        "create",
        "web",
        "--protocol",
        "http",
        "--port",
        "18800",
    ]);
    cp.weftctl_ok(&["service", "create", "client", "--protocol", "tcp"]);
    let app = App::start("h1", "web").await;
    let server = Sidecar::start(&cp, "web", app.addr, "eu").await;
    let capp = App::start("h1", "client").await;
    let client = Sidecar::start(&cp, "client", capp.addr, "eu").await;
    client.wait_endpoints("web", 1).await;

    let target = client.outbound(18800);
    let started = Instant::now();
    let (mut ok, mut failed) = (0u32, Vec::new());
    let mut certs = (BTreeSet::new(), BTreeSet::new());
    while started.elapsed() < Duration::from_secs(60) {
        match http_get(target, "/").await {
            Ok(resp) if resp.starts_with("HTTP/1.1 200") => ok += 1,
            Ok(resp) => failed.push(format!(
                "{:?}: {}",
                started.elapsed(),
                resp.lines().next().unwrap_or("")
            )),
            Err(e) => failed.push(format!("{:?}: {e}", started.elapsed())),
        }
        certs.0.insert(not_after(&client).await);
        certs.1.insert(not_after(&server).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{ok} requests, {} failed; client certs {:?}, server certs {:?}",
        failed.len(),
        certs.0,
        certs.1
    );
    if !failed.is_empty() {
        let warnings = |log: String| {
            log.lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "failed requests: {failed:#?}\nclient sidecar:\n{}\nserver sidecar:\n{}",
            warnings(client.proc.log_text()),
            warnings(server.proc.log_text())
        );
    }
    assert!(ok > 300, "too little traffic: {ok}");
    // 20 s certificates renewed at ~70%: at least three in a minute on each side.
    assert!(
        certs.0.len() >= 3,
        "client renewed too rarely: {:?}",
        certs.0
    );
    assert!(
        certs.1.len() >= 3,
        "server renewed too rarely: {:?}",
        certs.1
    );
}
