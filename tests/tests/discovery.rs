//! The discovery stream against a real weft-cp: pushes on change, deltas on resume,
//! nacks, authentication, and endpoint health.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tonic::Code;
use weft_proto::v1::*;
use weft_tests::{ControlPlane, DataplaneIdentity, Subscriber, eventually, sidecar_hello};

const WAIT: Duration = Duration::from_secs(10);

async fn dataplane(cp: &ControlPlane, id: &str) -> Dataplane {
    cp.admin()
        .await
        .get_dataplane(GetDataplaneRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn selector_change_is_pushed_and_resume_sends_only_the_delta() {
    let mut cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&[
        "service",
        "create",
        "web",
        "--protocol",
        "http",
        "--port",
        "18090",
    ]);
    cp.weftctl_ok(&["service", "create", "api", "--protocol", "grpc"]);
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let id = DataplaneIdentity::bootstrap(&cp.url(), &token).await;

    let mut sub = Subscriber::connect(
        id.channel.clone(),
        sidecar_hello("web", "eu", "127.0.0.1:25001"),
    )
    .await
    .unwrap();
    let full = sub.next_update(WAIT).await;
    assert!(full.full);
    let names: Vec<&str> = full.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    assert_eq!(full.endpoints.len(), 1, "its own endpoint is registered");
    assert_eq!(
        full.endpoints[0].identity,
        "spiffe://weft.local/service/web"
    );
    assert!(full.trust_bundle_pem.contains("BEGIN CERTIFICATE"));
    sub.ack(full.version).await;
    let dp_id = "service/web/127.0.0.1:25001";
    eventually(WAIT, || async {
        let dp = dataplane(&cp, dp_id).await;
        (dp.connected && dp.acked_version == full.version && dp.latest_version == full.version)
            .then_some(())
    })
    .await;
    let list = cp.weftctl_ok(&["dataplane", "list"]);
    assert!(list.contains(dp_id) && list.contains("in sync"), "{list}");

    // A selector change reaches the open stream as a delta holding just that service.
    cp.weftctl_ok(&["service", "set-protocol", "web", "http2"]);
    let delta = sub.next_update(WAIT).await;
    assert!(!delta.full);
    assert_eq!(delta.base_version, full.version);
    assert_eq!(delta.services.len(), 1);
    assert_eq!(delta.services[0].name, "web");
    assert_eq!(delta.services[0].protocol, Protocol::Http2 as i32);
    assert!(delta.endpoints.is_empty() && delta.trust_bundle_pem.is_empty());
    sub.ack(delta.version).await;
    let held = delta.version;
    let cp_id = delta.control_plane_id.clone();
    drop(sub);

    // While it is away: one change, one creation, one deletion.
    cp.weftctl_ok(&["service", "set-protocol", "api", "http2"]);
    cp.weftctl_ok(&["service", "create", "extra", "--protocol", "tcp"]);
    cp.weftctl_ok(&["service", "delete", "extra"]);

    // Resuming with the held version gets only what changed since.
    let mut hello = sidecar_hello("web", "eu", "127.0.0.1:25001");
    hello.known_version = held;
    hello.control_plane_id = cp_id.clone();
    let mut sub = Subscriber::connect(id.channel.clone(), hello.clone())
        .await
        .unwrap();
    let resumed = sub.next_update(WAIT).await;
    assert!(!resumed.full, "resume must not resend everything");
    assert_eq!(resumed.base_version, held);
    let names: Vec<&str> = resumed.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api"]);
    assert_eq!(resumed.removed_services, ["extra"]);
    sub.ack(resumed.version).await;
    drop(sub);

    // Versions come from the durable store, so a delta works across a kill -9 too.
    cp.weftctl_ok(&["service", "set-protocol", "web", "grpc"]);
    cp.restart().await;
    hello.known_version = resumed.version;
    let mut sub = Subscriber::connect(id.channel.clone(), hello.clone())
        .await
        .unwrap();
    let after_restart = sub.next_update(WAIT).await;
    assert!(!after_restart.full);
    assert_eq!(after_restart.services.len(), 1);
    assert_eq!(after_restart.services[0].protocol, Protocol::Grpc as i32);
    sub.ack(after_restart.version).await;

    // Already in sync: nothing is sent at all.
    drop(sub);
    hello.known_version = after_restart.version;
    let mut sub = Subscriber::connect(id.channel.clone(), hello.clone())
        .await
        .unwrap();
    assert!(
        sub.try_next_update(Duration::from_millis(500))
            .await
            .is_none()
    );

    // A version from another control plane's store means a full resync.
    drop(sub);
    hello.control_plane_id = "someone-else".into();
    let mut sub = Subscriber::connect(id.channel.clone(), hello)
        .await
        .unwrap();
    assert!(sub.next_update(WAIT).await.full);
}

#[tokio::test]
async fn nack_keeps_the_acknowledged_version_current() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let id = DataplaneIdentity::bootstrap(&cp.url(), &token).await;
    let mut sub = Subscriber::connect(
        id.channel.clone(),
        sidecar_hello("web", "", "127.0.0.1:25002"),
    )
    .await
    .unwrap();
    let v1 = sub.next_update(WAIT).await.version;
    sub.ack(v1).await;

    cp.weftctl_ok(&["service", "set-protocol", "web", "grpc"]);
    let v2 = sub.next_update(WAIT).await;
    sub.nack(v2.version, "cannot bind port 18099: address in use")
        .await;
    let dp_id = "service/web/127.0.0.1:25002";
    let dp = eventually(WAIT, || async {
        let dp = dataplane(&cp, dp_id).await;
        (dp.nacked_version == v2.version).then_some(dp)
    })
    .await;
    assert_eq!(dp.acked_version, v1, "the nacked version is not current");
    assert!(dp.nack_error.contains("address in use"));
    let list = cp.weftctl_ok(&["dataplane", "list"]);
    assert!(list.contains("nacked"), "{list}");
    // The rejected version is not resent.
    assert!(
        sub.try_next_update(Duration::from_millis(500))
            .await
            .is_none()
    );

    // The next change is computed from the version the dataplane really holds (v1), so
    // it carries the nacked change as well.
    cp.weftctl_ok(&["service", "create", "more", "--protocol", "tcp"]);
    let v3 = sub.next_update(WAIT).await;
    assert_eq!(v3.base_version, v1);
    let mut names: Vec<&str> = v3.services.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["more", "web"]);
    sub.ack(v3.version).await;
    eventually(WAIT, || async {
        (dataplane(&cp, dp_id).await.acked_version == v3.version).then_some(())
    })
    .await;
}

#[tokio::test]
async fn discovery_checks_who_is_calling() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["service", "create", "db", "--protocol", "tcp"]);

    // No client certificate: refused.
    let anon = cp.tls_channel().await;
    let err = match Subscriber::connect(anon, sidecar_hello("web", "", "127.0.0.1:25003")).await {
        Ok(mut s) => s.error().await,
        Err(e) => e,
    };
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A certificate for web cannot subscribe as db.
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let id = DataplaneIdentity::bootstrap(&cp.url(), &token).await;
    let err = match Subscriber::connect(
        id.channel.clone(),
        sidecar_hello("db", "", "127.0.0.1:25003"),
    )
    .await
    {
        Ok(mut s) => s.error().await,
        Err(e) => e,
    };
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("spiffe://weft.local/service/web"),
        "{}",
        err.message()
    );

    // Nor as a gateway.
    let mut hello = sidecar_hello("web", "", "127.0.0.1:25003");
    hello.kind = DataplaneKind::Gateway as i32;
    let err = match Subscriber::connect(id.channel.clone(), hello).await {
        Ok(mut s) => s.error().await,
        Err(e) => e,
    };
    assert_eq!(err.code(), Code::PermissionDenied);

    // A bad advertised address is named.
    let err =
        match Subscriber::connect(id.channel.clone(), sidecar_hello("web", "", "nowhere")).await {
            Ok(mut s) => s.error().await,
            Err(e) => e,
        };
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("--advertise"), "{}", err.message());
}

#[tokio::test]
async fn an_endpoint_whose_stream_is_gone_becomes_unhealthy() {
    let cp = ControlPlane::start(&["--grace-period", "1s"]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let id = DataplaneIdentity::bootstrap(&cp.url(), &token).await;

    let mut watcher = Subscriber::connect(
        id.channel.clone(),
        sidecar_hello("web", "eu", "127.0.0.1:25010"),
    )
    .await
    .unwrap();
    let v = watcher.next_update(WAIT).await.version;
    watcher.ack(v).await;

    let mut other = Subscriber::connect(
        id.channel.clone(),
        sidecar_hello("web", "us", "127.0.0.1:25011"),
    )
    .await
    .unwrap();
    let o = other.next_update(WAIT).await;
    other.ack(o.version).await;

    // The watcher learns about the new endpoint...
    let joined = watcher.next_update(WAIT).await;
    let ep = joined
        .endpoints
        .iter()
        .find(|e| e.address == "127.0.0.1:25011")
        .expect("new endpoint pushed");
    assert!(ep.healthy && ep.region == "us");
    watcher.ack(joined.version).await;

    // ...and, once its stream has been gone past the grace period, that it is unhealthy.
    drop(other);
    let gone = watcher.next_update(WAIT).await;
    let ep = gone
        .endpoints
        .iter()
        .find(|e| e.address == "127.0.0.1:25011")
        .expect("health change pushed");
    assert!(!ep.healthy);
    watcher.ack(gone.version).await;

    // The app-status report of a sidecar whose app is down has the same effect.
    watcher
        .send(discovery_request::Message::AppStatus(AppStatus {
            protocol: AppProtocol::Down as i32,
        }))
        .await;
    let down = watcher.next_update(WAIT).await;
    assert!(
        down.endpoints
            .iter()
            .any(|e| e.address == "127.0.0.1:25010" && !e.healthy)
    );
}

/// Opens a discovery stream that asks for updates in parts, as `weft-sidecar` does.
async fn parts_stream(
    channel: tonic::transport::Channel,
    hello: Hello,
) -> (
    tokio::sync::mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = Hello {
        accepts_update_parts: true,
        ..hello
    };
    tx.send(DiscoveryRequest {
        message: Some(discovery_request::Message::Hello(hello)),
    })
    .await
    .unwrap();
    let req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let stream = discovery_client::DiscoveryClient::new(channel)
        .stream(req)
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

/// The messages of the next update, up to the one without `more`.
async fn next_parts(stream: &mut tonic::Streaming<DiscoveryResponse>) -> Vec<ConfigUpdate> {
    let mut parts = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("an update within the wait")
            .unwrap()
            .expect("the stream is open");
        let Some(discovery_response::Message::Update(part)) = msg.message else {
            continue;
        };
        let more = part.more;
        parts.push(part);
        if !more {
            return parts;
        }
    }
}

#[tokio::test]
async fn a_large_update_comes_in_small_parts_to_dataplanes_that_ask() {
    use prost::Message as _;
    let cp = ControlPlane::start(&[]).await;
    let mut admin = cp.admin().await;
    let names: Vec<String> = (0..100)
        .map(|i| format!("a-service-with-a-long-name-so-the-config-is-large-{i:03}"))
        .collect();
    for name in &names {
        admin
            .create_service(CreateServiceRequest {
                name: name.clone(),
                protocol: Protocol::Http as i32,
                port: 0,
            })
            .await
            .unwrap();
    }
    let token = cp.token_for(DataplaneKind::Sidecar, &names[0]).await;
    let id = DataplaneIdentity::bootstrap(&cp.url(), &token).await;
    let hello = sidecar_hello(&names[0], "eu", "127.0.0.1:25020");

    // A dataplane that did not ask for parts gets the full config as one message.
    let mut whole_sub = Subscriber::connect(id.channel.clone(), hello.clone())
        .await
        .unwrap();
    let whole = whole_sub.next_update(WAIT).await;
    assert!(whole.full && !whole.more);
    assert_eq!(whole.services.len(), 100);
    assert!(whole.encoded_len() > 6000, "{}", whole.encoded_len());

    // The same dataplane asking for parts gets the same update in small messages.
    let (tx, mut stream) = parts_stream(id.channel.clone(), hello).await;
    let parts = next_parts(&mut stream).await;
    assert!(parts.len() >= 2, "{} parts", parts.len());
    for p in &parts {
        assert!(
            p.encoded_len() <= 4000,
            "a part of {} bytes",
            p.encoded_len()
        );
        assert_eq!((p.version, p.full), (whole.version, true));
    }
    let mut asm = weft_sidecar::control::config::UpdateAssembler::default();
    let mut assembled = None;
    for p in parts {
        assembled = asm.push(p).unwrap();
    }
    assert_eq!(assembled.as_ref(), Some(&whole));

    // Acked at the last part, it is the base of the next delta, a single message.
    tx.send(DiscoveryRequest {
        message: Some(discovery_request::Message::Ack(Ack {
            version: whole.version,
        })),
    })
    .await
    .unwrap();
    cp.weftctl_ok(&["service", "set-protocol", &names[1], "http2"]);
    let delta = next_parts(&mut stream).await;
    assert_eq!(delta.len(), 1);
    assert_eq!(delta[0].base_version, whole.version);
    assert_eq!(delta[0].services.len(), 1);
    assert_eq!(delta[0].services[0].protocol, Protocol::Http2 as i32);
    drop(whole_sub);
}

/// Routes are not sent to sidecars, so a route change leaves them in sync. A sidecar that
/// then reconnects without a held version (restarted with no state) gets a full config
/// stamped with the newest version, and acks it: the listing must show it in sync,
/// never "acked v11 of v10".
#[tokio::test]
async fn an_ack_newer_than_the_last_relevant_change_is_in_sync() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let token = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let id = DataplaneIdentity::bootstrap(&cp.url(), &token).await;
    let hello = sidecar_hello("web", "eu", "127.0.0.1:25030");
    let dp_id = "service/web/127.0.0.1:25030";
    let mut sub = Subscriber::connect(id.channel.clone(), hello.clone())
        .await
        .unwrap();
    let first = sub.next_update(WAIT).await;
    sub.ack(first.version).await;
    eventually(WAIT, || async {
        (dataplane(&cp, dp_id).await.acked_version == first.version).then_some(())
    })
    .await;
    drop(sub);

    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    let mut sub = Subscriber::connect(id.channel.clone(), hello)
        .await
        .unwrap();
    let full = sub.next_update(WAIT).await;
    assert!(full.full);
    sub.ack(full.version).await;
    let dp = eventually(WAIT, || async {
        let dp = dataplane(&cp, dp_id).await;
        (dp.acked_version == full.version).then_some(dp)
    })
    .await;
    assert!(
        dp.acked_version <= dp.latest_version,
        "acked v{} of v{}",
        dp.acked_version,
        dp.latest_version
    );
    let list = cp.weftctl_ok(&["dataplane", "list", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|d| d["id"] == dp_id))
        .unwrap_or_else(|| panic!("{dp_id} missing from {list}"));
    assert_eq!(row["in_sync"], true, "{row}");
    assert_eq!(row["sync"], "in sync", "{row}");
}
