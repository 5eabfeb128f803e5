//! Restarts and partitions under continuous traffic, with real binaries: the only
//! endpoint of a service restarting (with the control plane up, and down), a tunnel path
//! cut silently by a proxy, and requests re-sent after an endpoint refused a stream.
//!
//! Timing is measured with the test's own clock: the client loops stamp every request,
//! and the restarted sidecar's `/ready` is polled tightly, so the bounds hold on a loaded
//! machine (nothing here waits for a fixed sleep to "be enough").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use weft_proto::v1::DataplaneKind;
use weft_sidecar::tls::MeshTls;
use weft_tests::load::{Load, Outcome, longest_failure_run};
use weft_tests::proxy::CutProxy;
use weft_tests::{
    App, ControlPlane, DataplaneIdentity, Gateway, Sidecar, Subscriber, client_sidecar, curl,
    deploy, eventually, free_port, http_get, sha256_hex, sidecar_hello,
};

/// Polls `/ready` every few milliseconds; the instant it first answers 200.
async fn ready_at(sc: &Sidecar, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = http_get(sc.admin, "/ready").await {
            if r.starts_with("HTTP/1.1 200") {
                return Instant::now();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the restarted sidecar was not ready within {within:?}; log:\n{}",
            sc.proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.result.is_err()).collect()
}

/// The only endpoint of `web` restarts (SIGTERM, then started again) under a client
/// loop through a client sidecar: failures, if any, end within 0.5 s of its `/ready`.
async fn single_endpoint_restart(control_plane_up: bool, port: u16) {
    let mut cp = ControlPlane::start(&[]).await;
    let (_app, mut web) = deploy(&cp, "web", "http", port, "h1", "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_endpoints("web", 1).await;
    if !control_plane_up {
        cp.kill9();
    }

    let load = Load::start(
        client.outbound(port),
        "/",
        2,
        Duration::from_secs(10),
        Duration::from_millis(5),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        load.outcomes().iter().any(|o| o.result.is_ok()),
        "no request succeeded before the restart: {:?}",
        load.outcomes()
    );

    let stopping = Instant::now();
    web.proc.terminate_and_start(Duration::from_secs(15));
    let ready = ready_at(&web, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outcomes = load.stop().await;

    let failed = failures(&outcomes);
    let (run, run_for) = longest_failure_run(&outcomes);
    println!(
        "control plane {}: restart took {} ms to /ready; {} requests, {} failed, longest run {run} ({} ms)",
        if control_plane_up { "up" } else { "down" },
        ready.duration_since(stopping).as_millis(),
        outcomes.len(),
        failed.len(),
        run_for.as_millis()
    );
    if let Some(last) = failed.last() {
        let after = last.ended.saturating_duration_since(ready);
        assert!(
            last.ended <= ready + Duration::from_millis(500),
            "requests still failed {} ms after the restarted sidecar was ready ({} of {} failed; last: {:?}); client sidecar log:\n{}",
            after.as_millis(),
            failed.len(),
            outcomes.len(),
            last.result,
            client.proc.log_text()
        );
    }
    let after_ready: Vec<_> = outcomes.iter().filter(|o| o.started > ready).collect();
    assert!(
        after_ready.len() > 10 && after_ready.iter().all(|o| o.result.is_ok()),
        "requests after /ready must succeed: {} of {} did",
        after_ready.iter().filter(|o| o.result.is_ok()).count(),
        after_ready.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_endpoint_restarting_fails_nothing_after_it_is_ready() {
    single_endpoint_restart(true, 18810).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_only_endpoint_restarting_without_the_control_plane_fails_nothing_after_it_is_ready() {
    single_endpoint_restart(false, 18820).await;
}

/// Two endpoints of `web`; the client sidecar reaches one of them through a proxy that
/// then goes silent in both directions (no FIN, no reset: a partition). New requests
/// must succeed on the other endpoint within 3 s of the cut, and every request made
/// after the cut must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_path_cut_silently_fails_over_within_three_seconds() {
    let port = 18830;
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&[
        "service",
        "create",
        "web",
        "--protocol",
        "http",
        "--port",
        &port.to_string(),
    ]);
    let app_a = App::start("h1", "web-a").await;
    let app_b = App::start("h1", "web-b").await;
    let inbound_a = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let proxy = CutProxy::start(inbound_a).await;
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let _a = Sidecar::start_on(
        cp.url(),
        &token,
        "web",
        app_a.addr,
        "eu",
        inbound_a,
        &["--advertise", &proxy.addr.to_string()],
    )
    .await;
    let _b = Sidecar::start(&cp, "web", app_b.addr, "eu").await;
    let (_c, client) = client_sidecar(&cp).await;
    client.wait_endpoints("web", 2).await;

    let load = Load::start(
        client.outbound(port),
        "/",
        2,
        Duration::from_secs(20),
        Duration::from_millis(10),
    );
    // Both endpoints answer (so a tunnel connection to A through the proxy is pooled).
    eventually(Duration::from_secs(15), || async {
        let apps: HashSet<String> = load
            .outcomes()
            .into_iter()
            .filter_map(|o| o.result.ok())
            .collect();
        (apps.contains("web-a") && apps.contains("web-b")).then_some(())
    })
    .await;

    proxy.cut();
    let cut = Instant::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let outcomes = load.stop().await;

    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.started >= cut).collect();
    let slowest = after
        .iter()
        .map(|o| o.ended - o.started)
        .max()
        .unwrap_or_default();
    let in_flight_failed = outcomes
        .iter()
        .filter(|o| o.started < cut && o.result.is_err())
        .count();
    println!(
        "{} requests after the cut, slowest {} ms; {in_flight_failed} in flight at the cut failed",
        after.len(),
        slowest.as_millis()
    );
    let failed: Vec<_> = after.iter().filter(|o| o.result.is_err()).collect();
    assert!(
        failed.is_empty(),
        "requests made after the cut failed: {:?}; client sidecar log:\n{}",
        failed.iter().map(|o| &o.result).collect::<Vec<_>>(),
        client.proc.log_text()
    );
    assert!(
        after
            .iter()
            .all(|o| o.ended <= cut.max(o.started) + Duration::from_secs(3)),
        "a request made after the cut took {} ms; client sidecar log:\n{}",
        slowest.as_millis(),
        client.proc.log_text()
    );
    let late: Vec<_> = after
        .iter()
        .filter(|o| o.started >= cut + Duration::from_secs(3))
        .collect();
    assert!(
        late.len() > 20,
        "too little traffic to tell: {}",
        late.len()
    );
    assert!(
        late.iter()
            .all(|o| o.result.as_deref() == Ok("web-b")
                && o.ended - o.started < Duration::from_secs(1)),
        "from 3 s after the cut, requests go straight to the endpoint that is reachable"
    );
}

/// A mesh endpoint of `service` that refuses every stream (RST_STREAM REFUSED_STREAM),
/// after reading `read_first` bytes of its body: a test double registered with the
/// control plane like a sidecar, holding a real certificate for the service.
struct RefusingEndpoint {
    addr: SocketAddr,
    refused: Arc<AtomicUsize>,
    _discovery: Subscriber,
}

impl RefusingEndpoint {
    async fn start(cp: &ControlPlane, service: &str, region: &str, read_first: usize) -> Self {
        let token = cp.token_for(DataplaneKind::Sidecar, service).await;
        let id = DataplaneIdentity::bootstrap(&cp.url(), &token).await;
        let tls = MeshTls::new(id.manager.subscribe());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(AtomicUsize::new(0));
        let count = refused.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.server().unwrap());
                let count = count.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut conn = h2::server::handshake(tls).await.unwrap();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let count = count.clone();
                        tokio::spawn(async move {
                            let mut body = req.into_body();
                            let mut read = 0;
                            while read < read_first {
                                match body.data().await {
                                    Some(Ok(d)) => {
                                        read += d.len();
                                        let _ = body.flow_control().release_capacity(d.len());
                                    }
                                    _ => break,
                                }
                            }
                            count.fetch_add(1, Ordering::SeqCst);
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        });
                    }
                });
            }
        });
        let discovery = Subscriber::connect(
            id.channel.clone(),
            sidecar_hello(service, region, &addr.to_string()),
        )
        .await
        .unwrap();
        RefusingEndpoint {
            addr,
            refused,
            _discovery: discovery,
        }
    }
}

/// The gateway sends a request with a body to an endpoint that refuses the stream
/// unprocessed (`REFUSED_STREAM`): the request is sent again, body and all, to the
/// other endpoint. A body the refusing endpoint read past the copy the gateway keeps
/// (64 KiB) cannot be sent again, and fails instead of reaching an app incomplete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_is_sent_again_after_refused_stream() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    // The refusing endpoint is in the gateway's region, so it is tried first.
    let refusing = RefusingEndpoint::start(&cp, "web", "eu", 0).await;
    let app = App::start("h1", "web-real").await;
    let _real = Sidecar::start(&cp, "web", app.addr, "us").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("web.example.com").await;
    eventually(Duration::from_secs(15), || async {
        let body = http_get(gw.admin, "/config").await.ok()?;
        (body.contains(&refusing.addr.to_string())
            && body.matches("\"healthy\": true").count() >= 2)
            .then_some(())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let upload = |len: usize| {
        let path = dir.path().join(format!("body-{len}"));
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut args = vec![
            "-X".to_owned(),
            "POST".to_owned(),
            "--data-binary".to_owned(),
            format!("@{}", path.display()),
            "-w".to_owned(),
            "\n%{http_code}".to_owned(),
        ];
        args.extend(gw.plain("web.example.com", "/upload"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = curl(&args);
        assert_eq!(code, 0, "curl failed: {err}");
        let (body, status) = out.rsplit_once('\n').unwrap();
        (status.to_owned(), body.to_owned(), sha256_hex(&data))
    };

    for len in [40_000, 64 * 1024] {
        let before = refusing.refused.load(Ordering::SeqCst);
        let (status, body, sha) = upload(len);
        assert_eq!(
            status,
            "200",
            "{body}\ngateway log:\n{}",
            gw.proc.log_text()
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["app"], "web-real");
        assert_eq!(json["body_bytes"], len, "the whole body reached the app");
        assert_eq!(json["sha256"], sha.as_str());
        assert!(
            refusing.refused.load(Ordering::SeqCst) > before,
            "the refusing endpoint was tried first"
        );
    }
}

/// Past the copy the gateway keeps, a refused request is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_read_past_the_replay_limit_is_not_sent_again() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    let refusing = RefusingEndpoint::start(&cp, "web", "eu", 100 * 1024).await;
    let app = App::start("h1", "web-real").await;
    let _real = Sidecar::start(&cp, "web", app.addr, "us").await;
    let gw = Gateway::start(&cp, "edge", &[]).await;
    gw.wait_route("web.example.com").await;
    eventually(Duration::from_secs(15), || async {
        let body = http_get(gw.admin, "/config").await.ok()?;
        (body.contains(&refusing.addr.to_string())
            && body.matches("\"healthy\": true").count() >= 2)
            .then_some(())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("body");
    std::fs::write(&path, vec![7u8; 200 * 1024]).unwrap();
    let data = format!("@{}", path.display());
    let mut args = vec![
        "-X",
        "POST",
        "--data-binary",
        &data,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    let target = gw.plain("web.example.com", "/upload");
    args.extend(target.iter().map(String::as_str));
    let (_, status, _) = curl(&args);
    assert_eq!(status, "502", "gateway log:\n{}", gw.proc.log_text());
    assert_eq!(refusing.refused.load(Ordering::SeqCst), 1);
    let (_, journal, _) = curl(&[&format!("http://{}/_requests", app.addr)]);
    let journal: serde_json::Value = serde_json::from_str(&journal).unwrap();
    let uploads = journal["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/upload")
        .count();
    assert_eq!(uploads, 0, "nothing reached the other app: {journal}");
}
