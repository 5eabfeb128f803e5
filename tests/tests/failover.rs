//! The leader lease under faults, with real replicas on a real PostgreSQL: kill -9 of
//! the leader under continuous traffic, and a leader cut off from the database by a
//! network partition (a proxy in the test that goes silent).
//!
//! The tests run on a multi-threaded runtime: weftctl is run as a blocking child
//! process, and the proxy and the traffic must go on meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_proto::v1::DataplaneKind;
use weft_tests::postgres::Shared;
use weft_tests::proxy::CutProxy;
use weft_tests::{App, ControlPlane, Sidecar, eventually, http_get};

/// `weftctl cp status -o json` through `cp`.
fn cp_status(cp: &ControlPlane) -> Value {
    serde_json::from_str(&cp.weftctl_ok(&["cp", "status", "-o", "json"])).unwrap()
}

/// The replica id `cp` answers as.
fn own_id(cp: &ControlPlane) -> String {
    cp_status(cp)["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["answering"] == true)
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .unwrap()
}

/// Waits until `cp` reports a leader; returns (leader id, epoch).
async fn leader_seen_by(cp: &ControlPlane, within: Duration) -> (String, u64) {
    eventually(within, || async {
        let out = cp.weftctl(&["cp", "status", "-o", "json"]);
        let s: Value = serde_json::from_slice(&out.stdout).ok()?;
        let leader = s["leader_id"].as_str()?.to_owned();
        (!leader.is_empty()).then(|| (leader, s["epoch"].as_u64().unwrap_or(0)))
    })
    .await
}

/// GETs through a sidecar's outbound port until stopped: (ok, failed).
fn traffic(addr: std::net::SocketAddr) -> (Arc<AtomicBool>, Arc<AtomicU64>, Arc<AtomicU64>) {
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
    tokio::spawn(async move {
        while !s.load(Ordering::Relaxed) {
            match http_get(addr, "/").await {
                Ok(r) if r.starts_with("HTTP/1.1 200") => o.fetch_add(1, Ordering::Relaxed),
                _ => f.fetch_add(1, Ordering::Relaxed),
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (stop, ok, failed)
}

/// The timestamp that starts a log line of `text` (RFC 3339, so it sorts as text).
fn logged_at(log: &str, text: &str) -> String {
    log.lines()
        .find(|l| l.contains(text))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no log line with {text:?} in:\n{log}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_traffic_fails_no_request_and_its_duties_move() {
    let db = Shared::start();
    let mut a = db.replica(&["--grace-period", "2s"]).await;
    let mut b = db.replica(&["--grace-period", "2s"]).await;
    let cps = format!("{},{}", a.url(), b.url());

    a.weftctl_ok(&[
        "service",
        "create",
        "web",
        "--protocol",
        "http",
        "--port",
        "18080",
    ]);
    a.weftctl_ok(&["service", "create", "client", "--protocol", "tcp"]);
    a.weftctl_ok(&["service", "create", "idle", "--protocol", "tcp"]);
    let web_app = App::start("h1", "web").await;
    let client_app = App::start("h1", "client").await;
    let idle_app = App::start("h1", "idle").await;
    // Tokens from either replica work against any: one CA, one token key.
    let web_token = a.token_for(DataplaneKind::Sidecar, "web").await;
    let client_token = b.token_for(DataplaneKind::Sidecar, "client").await;
    let idle_token = a.token_for(DataplaneKind::Sidecar, "idle").await;
    let web = Sidecar::start_with(cps.clone(), &web_token, "web", web_app.addr, "eu", &[]).await;
    let client = Sidecar::start_with(
        cps.clone(),
        &client_token,
        "client",
        client_app.addr,
        "eu",
        &[],
    )
    .await;
    let mut idle =
        Sidecar::start_with(cps.clone(), &idle_token, "idle", idle_app.addr, "eu", &[]).await;
    client.wait_endpoints("web", 1).await;

    let (leader_id, epoch_before) = leader_seen_by(&a, Duration::from_secs(10)).await;
    let a_id = own_id(&a);
    let (leader, survivor) = if leader_id == a_id {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let (stop, ok, failed) = traffic(client.outbound(18080));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // kill -9 of the leader: the survivor leads within the bound, at a higher epoch.
    let log_before = survivor.log_text().len();
    let killed = Instant::now();
    leader.kill9();
    let survivor_id = own_id(survivor);
    let (new_leader, epoch_after) = eventually(Duration::from_secs(10), || async {
        let (id, epoch) = leader_seen_by(survivor, Duration::from_secs(10)).await;
        (id == survivor_id).then_some((id, epoch))
    })
    .await;
    let takeover = killed.elapsed();
    println!(
        "takeover after kill -9 of the leader: {} ms",
        takeover.as_millis()
    );
    assert_eq!(new_leader, survivor_id);
    assert!(epoch_after > epoch_before, "{epoch_after} > {epoch_before}");
    assert!(
        takeover <= Duration::from_secs(3),
        "takeover took {takeover:?}"
    );

    // Writes succeed on the survivor and reach the sidecars, which failed over to it.
    survivor.weftctl_ok(&["service", "create", "after", "--protocol", "tcp"]);
    web.wait_protocol("after", "tcp").await;
    client.wait_protocol("after", "tcp").await;
    eventually(Duration::from_secs(20), || async {
        let out = survivor.weftctl(&["dataplane", "list", "-o", "json"]);
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        let all = list.as_array()?;
        (all.len() == 3
            && all
                .iter()
                .all(|d| d["connected"] == true && d["in_sync"] == true))
        .then_some(())
    })
    .await;

    // The sidecars that were on the killed replica resumed on the survivor from the
    // version they had acknowledged: a delta, not a full config.
    let log = survivor.log_text();
    let reconnects: Vec<&str> = log[log_before..]
        .lines()
        .filter(|l| l.contains("discovery stream opened"))
        .collect();
    assert!(
        reconnects.iter().all(|l| l.contains("delta=true")),
        "a dataplane failing over got a full config:\n{}",
        reconnects.join("\n")
    );
    println!(
        "{} dataplanes failed over to the survivor",
        reconnects.len()
    );

    // The new leader does the leader's duties: a sidecar that goes away is marked
    // unhealthy after the grace period.
    idle.proc.kill9();
    eventually(Duration::from_secs(15), || async {
        let out = survivor.weftctl(&["dataplane", "list", "--name", "idle", "-o", "json"]);
        let list: Value = serde_json::from_slice(&out.stdout).ok()?;
        (list[0]["healthy"] == false && list[0]["connected"] == false).then_some(())
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("traffic through the kill: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "{failed} requests failed ({ok} ok)");
    assert!(ok > 20, "too little traffic to tell: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_database_steps_down_before_another_leads() {
    let db = Shared::start();
    let proxy = CutProxy::start(([127, 0, 0, 1], db.pg.port).into()).await;
    let args = db.replica_args_via(proxy.port());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = ControlPlane::start(&args).await;
    let a_id = own_id(&a);
    let (first, epoch_a) = leader_seen_by(&a, Duration::from_secs(10)).await;
    assert_eq!(first, a_id, "the only replica leads");
    let b = db.replica(&[]).await;
    let b_id = own_id(&b);

    proxy.cut();
    let (second, epoch_b) = eventually(Duration::from_secs(15), || async {
        let (id, epoch) = leader_seen_by(&b, Duration::from_secs(10)).await;
        (id == b_id).then_some((id, epoch))
    })
    .await;
    assert_eq!(second, b_id);
    assert!(epoch_b > epoch_a, "{epoch_b} > {epoch_a}");

    // A stopped leading (on its own clock, with no word from the database) before B
    // started: both logs are on this host's clock.
    let stepped_down = logged_at(&a.log_text(), "this replica stopped leading");
    let took_over = logged_at(&b.log_text(), "this replica leads now");
    assert!(
        stepped_down < took_over,
        "A stopped leading at {stepped_down}, B led from {took_over}"
    );
}
