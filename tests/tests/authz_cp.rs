//! Authorization on the control plane, against a real weft-cp: permissions and their
//! explanation through the real weftctl (exit codes included), the mesh default
//! policy, and the trust gaps closed at the control plane: announced addresses, dataplane
//! ids chosen by the client, renewals after the bootstrap token was revoked or the
//! service deleted, and `weftctl dataplane revoke`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tonic::Code;
use weft_proto::v1::identity_client::IdentityClient;
use weft_proto::v1::{DataplaneKind, IssueCertificateRequest};
use weft_tests::postgres::Shared;
use weft_tests::{ControlPlane, DataplaneIdentity, Subscriber, created_id, sidecar_hello};

/// (exit code, stdout, stderr) of weftctl.
fn run(cp: &ControlPlane, args: &[&str]) -> (i32, String, String) {
    let out = cp.weftctl(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn permissions_are_managed_and_explained_with_weftctl() {
    permissions_flow(&ControlPlane::start(&[]).await).await;
}

#[tokio::test]
async fn permissions_default_policy_and_revocation_work_on_postgres_replicas() {
    let db = Shared::start();
    let a = db.replica(&[]).await;
    let b = db.replica(&[]).await;
    permissions_flow(&a).await;
    // The other replica explains with the same rules and default.
    let (code, out, _) = run(
        &b,
        &["permission", "check", "--from", "batch", "--to", "web"],
    );
    assert_eq!(code, 3, "{out}");
    renewal_flow(&a).await;
    // Revoked through one replica, the stream held by the other is closed.
    revoke_flow(&a, &b).await;
}

async fn permissions_flow(cp: &ControlPlane) {
    for s in ["web", "frontend", "batch"] {
        cp.weftctl_ok(&["service", "create", s, "--protocol", "http"]);
    }
    // A new mesh allows everything, and says so plainly.
    let show = cp.weftctl_ok(&["mesh", "show"]);
    assert!(
        show.contains("calls no permission matches are ALLOWED"),
        "{show}"
    );
    let (code, out, _) = run(
        cp,
        &["permission", "check", "--from", "frontend", "--to", "web"],
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("decision:    allow") && out.contains("the mesh default policy (allow)"),
        "{out}"
    );

    let allow =
        created_id(&cp.weftctl_ok(&["permission", "allow", "--from", "frontend", "--to", "web"]));
    let audit = created_id(&cp.weftctl_ok(&["permission", "audit", "--from", "*", "--to", "web"]));
    let deny = created_id(&cp.weftctl_ok(&[
        "permission",
        "deny",
        "--from",
        "gateway:edge",
        "--to",
        "web",
        "--port",
        "8443",
    ]));
    let (code, _, err) = run(
        cp,
        &["permission", "allow", "--from", "frontend", "--to", "web"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(&allow) && err.contains("permission delete"),
        "{err}"
    );

    // Each selector decides what it names; audit is allowed with a note.
    let (code, out, _) = run(
        cp,
        &["permission", "check", "--from", "frontend", "--to", "web"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("rule {allow} (allow frontend -> web)")),
        "{out}"
    );
    let (code, out, _) = run(
        cp,
        &["permission", "check", "--from", "batch", "--to", "web"],
    );
    assert_eq!(code, 0, "audit is allowed: {out}");
    assert!(
        out.contains("decision:    audit") && out.contains("would-be denial"),
        "{out}"
    );
    let (code, out, err) = run(
        cp,
        &[
            "permission",
            "check",
            "--from",
            "gateway:edge",
            "--to",
            "web",
            "--port",
            "8443",
        ],
    );
    assert_eq!(code, 3, "deny exits 3: {out}");
    assert!(
        out.contains("decision:    deny") && out.contains(&deny),
        "{out}"
    );
    assert!(err.is_empty(), "the answer is on stdout only: {err}");
    // Without --port the port rule cannot match, and the output says it exists.
    let (code, out, _) = run(
        cp,
        &[
            "permission",
            "check",
            "--from",
            "gateway:edge",
            "--to",
            "web",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains(&format!("{audit} (audit * -> web)")), "{out}");
    assert!(
        out.contains(&format!("{deny} (deny gateway:edge -> web:8443)")) && out.contains("--port"),
        "{out}"
    );

    // The default flips: unmatched calls are denied by it.
    cp.weftctl_ok(&["permission", "delete", &audit]);
    let show = cp.weftctl_ok(&["mesh", "set-default-policy", "deny"]);
    assert!(show.contains("DENIED"), "{show}");
    let (code, out, _) = run(
        cp,
        &[
            "permission",
            "check",
            "--from",
            "batch",
            "--to",
            "web",
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 3);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (j["decision"].as_str(), j["by_default"].as_bool()),
        (Some("deny"), Some(true))
    );

    let list: serde_json::Value =
        serde_json::from_str(&cp.weftctl_ok(&["permission", "list", "-o", "json"])).unwrap();
    let rules: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["allow frontend -> web", "deny gateway:edge -> web:8443"]
    );

    // A service named by a permission is not deleted from under it.
    let (code, _, err) = run(cp, &["service", "delete", "frontend"]);
    assert_eq!(code, 1);
    assert!(err.contains(&allow), "{err}");
}

#[tokio::test]
async fn bad_permission_arguments_exit_2_with_the_fix() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    for (args, says) in [
        (
            vec!["permission", "allow", "--from", "ingress:us", "--to", "web"],
            "gateway:NAME",
        ),
        (
            vec!["permission", "allow", "--from", "Web", "--to", "web"],
            "gateway:NAME",
        ),
        (
            vec![
                "permission",
                "deny",
                "--from",
                "web",
                "--to",
                "gateway:edge",
            ],
            "a service name (web) or '*'",
        ),
        (
            vec!["permission", "check", "--from", "*", "--to", "web"],
            "one caller",
        ),
        (
            vec!["permission", "check", "--from", "web", "--to", "*"],
            "one destination",
        ),
        (
            vec![
                "permission",
                "allow",
                "--from",
                "web",
                "--to",
                "web",
                "--port",
                "0",
            ],
            "--port",
        ),
        (vec!["mesh", "set-default-policy", "block"], "allow or deny"),
    ] {
        let (code, _, err) = run(&cp, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // A rule naming a service that does not exist is refused by the control plane.
    let (code, _, err) = run(
        &cp,
        &["permission", "allow", "--from", "nope", "--to", "web"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("\"nope\" does not exist"), "{err}");
}

#[tokio::test]
async fn a_dataplane_cannot_choose_its_id() {
    let cp = ControlPlane::start(&[]).await;
    for s in ["web", "db"] {
        cp.weftctl_ok(&["service", "create", s, "--protocol", "tcp"]);
    }
    let db =
        DataplaneIdentity::bootstrap(&cp.url(), &cp.token_for(DataplaneKind::Sidecar, "db").await)
            .await;
    let mut victim = Subscriber::connect(
        db.channel.clone(),
        sidecar_hello("db", "eu", "127.0.0.1:25101"),
    )
    .await
    .unwrap();
    victim.next_update(Duration::from_secs(10)).await;

    // A sidecar of web names itself after db's dataplane: refused, db's record intact.
    let web = DataplaneIdentity::bootstrap(
        &cp.url(),
        &cp.token_for(DataplaneKind::Sidecar, "web").await,
    )
    .await;
    let mut hello = sidecar_hello("web", "eu", "127.0.0.1:25102");
    hello.dataplane_id = "service/db/127.0.0.1:25101".into();
    let status = match Subscriber::connect(web.channel.clone(), hello).await {
        Ok(mut s) => s.error().await,
        Err(s) => s,
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(status.message().contains("derived"), "{status}");
    let list = cp.weftctl_ok(&["dataplane", "list"]);
    assert!(
        list.contains("service/db/127.0.0.1:25101") && !list.contains("25102"),
        "{list}"
    );
}

#[tokio::test]
async fn announced_addresses_must_be_reachable_and_the_callers_own() {
    // Not on loopback: the mesh spans hosts, so loopback and foreign addresses are refused.
    let cp = ControlPlane::start_listening([0, 0, 0, 0].into(), &[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "tcp"]);
    let web = DataplaneIdentity::bootstrap(
        &cp.url(),
        &cp.token_for(DataplaneKind::Sidecar, "web").await,
    )
    .await;
    for (address, says) in [
        ("127.0.0.1:6379", "loopback"),
        ("169.254.169.254:80", "link-local"),
        ("192.0.2.10:15008", "--allow-advertise"),
    ] {
        let status =
            match Subscriber::connect(web.channel.clone(), sidecar_hello("web", "", address)).await
            {
                Ok(mut s) => s.error().await,
                Err(s) => s,
            };
        assert_eq!(status.code(), Code::InvalidArgument, "{address}: {status}");
        assert!(status.message().contains(says), "{address}: {status}");
    }
    assert!(!cp.weftctl_ok(&["dataplane", "list"]).contains("web"));
}

/// A renewal over the dataplane's mTLS channel, as its identity manager would send it.
async fn renew(dp: &DataplaneIdentity) -> Result<(), tonic::Status> {
    let (_key, csr_pem) = weft_certs::generate_csr(dp.manager.spiffe_id()).unwrap();
    IdentityClient::new(dp.channel.clone())
        .issue_certificate(IssueCertificateRequest {
            csr_pem,
            token: String::new(),
        })
        .await
        .map(|_| ())
}

async fn token(cp: &ControlPlane, service: &str) -> (String, String) {
    let created = cp
        .admin()
        .await
        .create_token(weft_proto::v1::CreateTokenRequest {
            kind: DataplaneKind::Sidecar as i32,
            name: service.into(),
            ttl_seconds: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (created.info.unwrap().id, created.token)
}

#[tokio::test]
async fn renewal_stops_once_the_token_is_revoked_or_the_service_deleted() {
    renewal_flow(&ControlPlane::start(&[]).await).await;
}

async fn renewal_flow(cp: &ControlPlane) {
    for s in ["web2", "api"] {
        cp.weftctl_ok(&["service", "create", s, "--protocol", "tcp"]);
    }
    let (web_token_id, web_token) = token(cp, "web2").await;
    let web = DataplaneIdentity::bootstrap(&cp.url(), &web_token).await;
    let api = DataplaneIdentity::bootstrap(&cp.url(), &token(cp, "api").await.1).await;
    renew(&web).await.unwrap();
    renew(&api).await.unwrap();

    cp.weftctl_ok(&["token", "revoke", &web_token_id]);
    let refused = renew(&web).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(
        refused.message().contains(&web_token_id)
            && refused
                .message()
                .contains("weftctl token create --service web"),
        "{refused}"
    );
    renew(&api).await.unwrap();

    cp.weftctl_ok(&["service", "delete", "api"]);
    let refused = renew(&api).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains("no longer exists"), "{refused}");
}

#[tokio::test]
async fn revoking_a_dataplane_ends_its_identity_at_once() {
    let cp = ControlPlane::start(&[]).await;
    revoke_flow(&cp, &cp).await;
}

/// Revokes through `admin` a dataplane whose stream is on `serving`.
async fn revoke_flow(admin: &ControlPlane, serving: &ControlPlane) {
    let cp = serving;
    for s in ["rev", "client"] {
        admin.weftctl_ok(&["service", "create", s, "--protocol", "tcp"]);
    }
    let web = DataplaneIdentity::bootstrap(&cp.url(), &token(admin, "rev").await.1).await;
    let serial = weft_certs::serial_hex(&web.manager.current().identity.chain()[0]).unwrap();
    let hello = sidecar_hello("rev", "eu", "127.0.0.1:25201");
    let mut stream = Subscriber::connect(web.channel.clone(), hello.clone())
        .await
        .unwrap();
    stream.next_update(Duration::from_secs(10)).await;
    let client = DataplaneIdentity::bootstrap(&cp.url(), &token(admin, "client").await.1).await;
    let mut peer = Subscriber::connect(
        client.channel.clone(),
        sidecar_hello("client", "eu", "127.0.0.1:25202"),
    )
    .await
    .unwrap();
    let first = peer.next_update(Duration::from_secs(10)).await;
    assert!(first.revoked.unwrap().certificates.is_empty());
    peer.ack(first.version).await;

    let out = admin.weftctl_ok(&["dataplane", "revoke", "service/rev/127.0.0.1:25201"]);
    assert!(
        out.contains(&serial) && out.contains("weftctl token create --service rev"),
        "{out}"
    );

    // Its stream is closed, it cannot come back or renew...
    let closed = stream.error().await;
    assert_eq!(closed.code(), Code::PermissionDenied, "{closed}");
    assert!(closed.message().contains("revoked"), "{closed}");
    let again = match Subscriber::connect(web.channel.clone(), hello).await {
        Ok(mut s) => s.error().await,
        Err(s) => s,
    };
    assert_eq!(again.code(), Code::PermissionDenied, "{again}");
    assert_eq!(
        renew(&web).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // ...and every peer is told to refuse its certificate, and loses its endpoint.
    let update = peer.next_update(Duration::from_secs(10)).await;
    let revoked: Vec<String> = update
        .revoked
        .unwrap()
        .certificates
        .into_iter()
        .map(|c| c.serial)
        .collect();
    assert_eq!(revoked, [serial]);
    assert_eq!(update.removed_endpoints, ["service/rev/127.0.0.1:25201"]);
    assert!(
        !admin
            .weftctl_ok(&["dataplane", "list"])
            .contains("service/rev/")
    );
}
