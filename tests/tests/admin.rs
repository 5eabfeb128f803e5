//! The admin surface, driven the way users drive it: the real `weftctl` binary and a raw
//! gRPC client against a real `weft-cp` on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use tonic::Code;
use weft_proto::v1::*;
use weft_tests::{ControlPlane, bin};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn weftctl_service_lifecycle() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&[
        "service",
        "create",
        "web",
        "--protocol",
        "http",
        "--port",
        "18080",
    ]);
    cp.weftctl_ok(&["service", "create", "api", "--protocol", "grpc"]);

    let list = cp.weftctl_ok(&["service", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(
        lines[0].contains("NAME") && lines[0].contains("PROTOCOL"),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("api") && l.contains("grpc")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("web") && l.contains("http") && l.contains("18080")),
        "{list}"
    );

    cp.weftctl_ok(&["service", "set-protocol", "web", "http2"]);
    let json: serde_json::Value =
        serde_json::from_str(&cp.weftctl_ok(&["-o", "json", "service", "get", "web"])).unwrap();
    assert_eq!(json["service"]["protocol"], "http2");
    assert_eq!(json["service"]["port"], 18080);

    cp.weftctl_ok(&["service", "delete", "api"]);
    let json: serde_json::Value =
        serde_json::from_str(&cp.weftctl_ok(&["-o", "json", "service", "list"])).unwrap();
    let names: Vec<&str> = json
        .as_array()
        .or_else(|| json["services"].as_array())
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"]);

    // The same state is what a raw gRPC client sees.
    let services = cp
        .admin()
        .await
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .services;
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].protocol, Protocol::Http2 as i32);
}

#[tokio::test]
async fn weftctl_routes_tokens_and_ca() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    cp.weftctl_ok(&["route", "create", "*.example.com", "--service", "web"]);
    cp.weftctl_ok(&[
        "route",
        "create",
        "api.example.com",
        "--service",
        "web",
        "--path-prefix",
        "/v1",
        "--rewrite-host",
        "web.internal",
    ]);
    let routes = cp.weftctl_ok(&["route", "list"]);
    assert!(
        routes.contains("*.example.com") && routes.contains("/v1"),
        "{routes}"
    );
    assert!(routes.contains("web.internal"), "{routes}");

    // Deleting a service that routes point at is refused with the fix.
    let out = cp.weftctl(&["service", "delete", "web"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("route delete"), "{}", stderr(&out));
    cp.weftctl_ok(&["route", "delete", "*.example.com"]);
    cp.weftctl_ok(&["route", "delete", "api.example.com", "--path-prefix", "/v1"]);
    cp.weftctl_ok(&["service", "delete", "web"]);

    cp.weftctl_ok(&["service", "create", "db", "--protocol", "tcp"]);
    let created = cp.weftctl_ok(&["token", "create", "--service", "db", "--ttl", "1h"]);
    let token = created.lines().last().unwrap().trim();
    assert!(
        token.starts_with("weft1."),
        "last line must be the token: {created}"
    );
    let claims = weft_certs::token::parse_unverified(token).unwrap();
    assert_eq!(claims.name, "db");
    let tokens = cp.weftctl_ok(&["token", "list"]);
    assert!(
        tokens.contains(&claims.id) && tokens.contains("active"),
        "{tokens}"
    );
    cp.weftctl_ok(&["token", "revoke", &claims.id]);
    assert!(cp.weftctl_ok(&["token", "list"]).contains("revoked"));

    let ca = cp.weftctl_ok(&["ca", "show"]);
    assert!(ca.contains("weft.local"), "{ca}");
    assert!(
        ca.contains(&claims.ca_sha256),
        "token must pin the signing CA: {ca}"
    );
}

#[tokio::test]
async fn weftctl_route_region_preference() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);

    // A bad region is a usage error (2), on one line naming the flag; nothing is sent.
    for bad in ["US", "us east", "eu_west"] {
        let out = cp.weftctl(&[
            "route",
            "create",
            "a.example.com",
            "--service",
            "web",
            "--prefer-region",
            bad,
        ]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.starts_with("error: ") && err.contains("--prefer-region") && err.contains(bad),
            "{err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
    assert!(
        !cp.weftctl_ok(&["route", "list"]).contains("a.example.com"),
        "a refused route must not be created"
    );
    // The API refuses it too, for clients other than weftctl.
    let err = cp
        .admin()
        .await
        .create_route(CreateRouteRequest {
            host: "a.example.com".into(),
            service: "web".into(),
            prefer_region: "US".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("--prefer-region"),
        "{}",
        err.message()
    );

    cp.weftctl_ok(&[
        "route",
        "create",
        "a.example.com",
        "--service",
        "web",
        "--prefer-region",
        "us-east",
    ]);
    cp.weftctl_ok(&["route", "create", "b.example.com", "--service", "web"]);
    let table = cp.weftctl_ok(&["route", "list"]);
    assert!(
        table.lines().next().unwrap().contains("PREFER REGION"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("a.example.com") && l.contains("us-east")),
        "{table}"
    );
    let routes = |cp: &ControlPlane| -> serde_json::Value {
        serde_json::from_str(&cp.weftctl_ok(&["-o", "json", "route", "list"])).unwrap()
    };
    let json = routes(&cp);
    let by_host = |json: &serde_json::Value, host: &str| {
        json.as_array()
            .unwrap()
            .iter()
            .find(|r| r["host"] == host)
            .cloned()
            .unwrap()
    };
    let a = by_host(&json, "a.example.com");
    assert_eq!(a["prefer_region"], "us-east", "{json}");
    assert_eq!(
        by_host(&json, "b.example.com")["prefer_region"],
        serde_json::Value::Null,
        "{json}"
    );

    // Re-created with another preference: a new revision, so gateways pick it up.
    cp.weftctl_ok(&["route", "delete", "a.example.com"]);
    cp.weftctl_ok(&[
        "route",
        "create",
        "a.example.com",
        "--service",
        "web",
        "--prefer-region",
        "eu",
    ]);
    let again = by_host(&routes(&cp), "a.example.com");
    assert_eq!(again["prefer_region"], "eu");
    assert!(
        again["revision"].as_u64().unwrap() > a["revision"].as_u64().unwrap(),
        "{again} after {a}"
    );
}

#[tokio::test]
async fn weftctl_reads_local_weft_data_without_flags() {
    let cp = ControlPlane::start(&[]).await;
    // Only --cp differs from the defaults (the test picks a free port).
    let out = Command::new(bin("weftctl"))
        .current_dir(cp.data_dir.parent().unwrap())
        .env_remove("WEFT_TOKEN")
        .env_remove("WEFT_CA")
        .env("WEFT_CP", cp.url())
        .args(["service", "create", "solo", "--protocol", "http2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(cp.weftctl_ok(&["service", "list"]).contains("solo"));
}

#[tokio::test]
async fn bad_input_gets_its_status_and_a_fix() {
    let cp = ControlPlane::start(&[]).await;
    let mut admin = cp.admin().await;
    let create = |name: &str, protocol: i32, port: u32| CreateServiceRequest {
        name: name.into(),
        protocol,
        port,
    };
    admin.create_service(create("web", 2, 18081)).await.unwrap();

    let cases: Vec<(tonic::Status, Code, &str)> = vec![
        (
            admin
                .create_service(create("Bad_Name", 2, 0))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "invalid service name",
        ),
        (
            admin.create_service(create("x", 42, 0)).await.unwrap_err(),
            Code::InvalidArgument,
            "tcp, http, http2, grpc",
        ),
        (
            admin.create_service(create("web", 2, 0)).await.unwrap_err(),
            Code::AlreadyExists,
            "already exists",
        ),
        (
            admin
                .create_service(create("other", 2, 18081))
                .await
                .unwrap_err(),
            Code::AlreadyExists,
            "port 18081 is already used by service \"web\"",
        ),
        (
            admin
                .create_service(create("big", 2, 70000))
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "1-65535",
        ),
        (
            admin
                .create_route(CreateRouteRequest {
                    host: "a.example.com".into(),
                    service: "missing".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::NotFound,
            "weftctl service create missing",
        ),
        (
            admin
                .create_route(CreateRouteRequest {
                    host: "a.*.com".into(),
                    service: "web".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "wildcard",
        ),
        (
            admin
                .set_protocol(SetProtocolRequest {
                    name: "nope".into(),
                    protocol: 2,
                })
                .await
                .unwrap_err(),
            Code::NotFound,
            "weftctl service list",
        ),
        (
            admin
                .set_protocol(SetProtocolRequest {
                    name: "web".into(),
                    protocol: 0,
                })
                .await
                .unwrap_err(),
            Code::InvalidArgument,
            "protocol is required",
        ),
        (
            admin
                .create_token(CreateTokenRequest {
                    kind: DataplaneKind::Sidecar as i32,
                    name: "ghost".into(),
                    ttl_seconds: 0,
                    ..Default::default()
                })
                .await
                .unwrap_err(),
            Code::NotFound,
            "does not exist",
        ),
    ];
    for (status, code, needle) in cases {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(needle),
            "{:?} lacks {needle:?}",
            status.message()
        );
    }
    // Nothing was half-written by the failures.
    let services = admin
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .services;
    assert_eq!(
        services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["web"]
    );
    assert!(
        admin
            .list_routes(ListRoutesRequest {})
            .await
            .unwrap()
            .into_inner()
            .routes
            .is_empty()
    );

    // The CLI: unknown protocol is a usage error (2) that lists the valid values.
    let out = cp.weftctl(&["service", "create", "x", "--protocol", "udp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("tcp, http, http2, grpc"),
        "{}",
        stderr(&out)
    );
    // A server-side refusal is a runtime error (1) with the server's message.
    let out = cp.weftctl(&["service", "create", "web", "--protocol", "http"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[tokio::test]
async fn admin_calls_need_the_admin_token() {
    let cp = ControlPlane::start(&[]).await;
    for token in ["", "weft-admin-wrong"] {
        let err = cp
            .admin_with_token(token)
            .await
            .list_services(ListServicesRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        assert!(err.message().contains("admin.token"), "{}", err.message());
    }
    // A bootstrap token is not an admin token.
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let bootstrap = cp.token_for(DataplaneKind::Sidecar, "web").await;
    let err = cp
        .admin_with_token(&bootstrap)
        .await
        .create_service(CreateServiceRequest {
            name: "evil".into(),
            protocol: 1,
            port: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let out = Command::new(bin("weftctl"))
        .args(["--cp", &cp.url(), "--token", "nope", "--ca"])
        .arg(cp.data_dir.join("ca.pem"))
        .args(["service", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("admin token"), "{}", stderr(&out));
}

#[tokio::test]
async fn weftctl_explains_unreachable_and_wrong_ca() {
    let cp = ControlPlane::start(&[]).await;
    let other = ControlPlane::start(&[]).await;
    // The CA of another mesh does not vouch for this control plane.
    let out = Command::new(bin("weftctl"))
        .args(["--cp", &cp.url(), "--token", &cp.admin_token(), "--ca"])
        .arg(other.data_dir.join("ca.pem"))
        .args(["service", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.starts_with("error: ") && err.contains("--ca"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let port = weft_tests::free_port();
    let out = Command::new(bin("weftctl"))
        .args([
            "--cp",
            &format!("https://127.0.0.1:{port}"),
            "--token",
            "x",
            "--ca",
        ])
        .arg(cp.data_dir.join("ca.pem"))
        .args(["service", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach the control plane") && err.contains("--cp"),
        "{err}"
    );
}

#[tokio::test]
async fn health_and_reflection_serve_stock_tooling() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let cp = ControlPlane::start(&[]).await;
    let channel = cp.tls_channel().await;
    for service in ["", "weft.v1.Admin", "weft.v1.Discovery"] {
        let resp = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "{service}");
    }

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer: {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "weft.v1.Admin",
        "weft.v1.Discovery",
        "weft.v1.Identity",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }

    // The HTTP side port.
    let body = http_get(cp.http, "/healthz").await;
    assert!(
        body.starts_with("HTTP/1.1 200") && body.contains("ok revision="),
        "{body}"
    );
    let metrics = http_get(cp.http, "/metrics").await;
    assert!(metrics.contains("weft_cp_config_version"), "{metrics}");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn acknowledged_changes_survive_kill_9() {
    let mut cp = ControlPlane::start(&[]).await;
    let mut expected = Vec::new();
    for round in 0..3 {
        let mut admin = cp.admin().await;
        for i in 0..10 {
            let name = format!("svc-{round}-{i}");
            let protocol = 1 + (i % 4);
            admin
                .create_service(CreateServiceRequest {
                    name: name.clone(),
                    protocol,
                    port: 20000 + (round * 10 + i) as u32,
                })
                .await
                .unwrap();
            expected.push((name, protocol));
        }
        // Acknowledged, then killed without warning.
        let (name, _) = expected.remove(0);
        admin
            .delete_service(DeleteServiceRequest { name })
            .await
            .unwrap();
        let (name, p) = expected.last_mut().unwrap();
        admin
            .set_protocol(SetProtocolRequest {
                name: name.clone(),
                protocol: 4,
            })
            .await
            .unwrap();
        *p = 4;
        let admin_token = cp.admin_token();
        cp.restart().await;
        assert_eq!(
            cp.admin_token(),
            admin_token,
            "the admin token survives restarts"
        );
        let got: Vec<(String, i32)> = cp
            .admin()
            .await
            .list_services(ListServicesRequest {})
            .await
            .unwrap()
            .into_inner()
            .services
            .into_iter()
            .map(|s| (s.name, s.protocol))
            .collect();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(got, want, "after kill -9 number {round}");
    }
    // The CA is never regenerated by a restart.
    let before = cp.ca_pem();
    cp.restart().await;
    assert_eq!(cp.ca_pem(), before);
}
