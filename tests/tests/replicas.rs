//! Several weft-cp replicas on one PostgreSQL database (a real server, started by the
//! test): one admin token and CA for all, changes through any replica pushed by every
//! other, and nothing acknowledged lost when the database restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weft_proto::v1::DataplaneKind;
use weft_tests::postgres::Shared;
use weft_tests::{Sidecar, deploy, eventually};

#[tokio::test]
async fn a_change_through_one_replica_is_pushed_to_a_sidecar_connected_to_another() {
    let db = Shared::start();
    let a = db.replica(&[]).await;
    let b = db.replica(&[]).await;
    // One mesh: the same admin token and trust bundle in both data dirs.
    assert_eq!(a.admin_token(), b.admin_token());
    assert_eq!(a.ca_pem(), b.ca_pem());

    // The service and the token come from A; the sidecar talks to B only.
    a.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let token = a.token_for(DataplaneKind::Sidecar, "web").await;
    let app = weft_tests::App::start("h1", "web").await;
    let sc = Sidecar::start_with(b.url(), &token, "web", app.addr, "eu", &[]).await;
    sc.wait_protocol("web", "http").await;

    // A change through A reaches the sidecar on B, and B's admin API shows it.
    a.weftctl_ok(&["service", "set-protocol", "web", "http2"]);
    sc.wait_protocol("web", "http2").await;
    let listed = b.weftctl_ok(&["service", "list", "-o", "json"]);
    assert!(
        listed.contains("\"name\": \"web\"") && listed.contains("\"protocol\": \"http2\""),
        "{listed}"
    );
    // The sidecar registered through B is listed by A.
    eventually(Duration::from_secs(10), || async {
        let out = a.weftctl_ok(&["dataplane", "list", "--name", "web"]);
        out.contains(&sc.inbound.to_string()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn replicas_need_the_same_secret_and_a_new_data_dir_gets_the_token_from_the_store() {
    let db = Shared::start();
    let a = db.replica(&[]).await;
    let token = a.admin_token();

    // A wrong secret stops start-up with a message that says so.
    let wrong = db.pg.dir().join("wrong-secret");
    std::fs::write(&wrong, "x".repeat(40)).unwrap();
    let out = std::process::Command::new(weft_tests::bin("weft-cp"))
        .args(["--store", &db.pg.url(), "--ca-key-secret"])
        .arg(&wrong)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(db.pg.dir().join("wrong-data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--ca-key-secret") && err.contains("not the secret"),
        "{err}"
    );

    // Without a secret, a postgres store is refused as a usage error.
    let out = std::process::Command::new(weft_tests::bin("weft-cp"))
        .args(["--store", &db.pg.url()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --ca-key-secret"));

    // The CA key is not in the database in the clear.
    let dump = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "pg_dump -h 127.0.0.1 -p {} -U weft weft 2>/dev/null || $(ls -d /usr/lib/postgresql/*/bin | tail -1)/pg_dump -h 127.0.0.1 -p {} -U weft weft",
            db.pg.port, db.pg.port
        ))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("BEGIN CERTIFICATE"),
        "pg_dump printed no CA certificate"
    );
    assert!(
        !dump.contains("PRIVATE KEY"),
        "a CA key is stored in the clear"
    );

    // A replica with an empty data dir writes the same admin token.
    let b = db.replica(&[]).await;
    assert_eq!(b.admin_token(), token);
    drop(a);
    b.weftctl_ok(&["service", "create", "api", "--protocol", "grpc"]);
}

#[tokio::test]
async fn after_a_database_restart_replicas_reconnect_and_nothing_acknowledged_is_lost() {
    let db = Shared::start();
    let a = db.replica(&[]).await;
    let b = db.replica(&[]).await;
    let (_app, sc) = deploy(&a, "web", "http", 0, "h1", "eu").await;
    a.weftctl_ok(&["service", "create", "before", "--protocol", "tcp"]);

    // A crash of the database (no clean shutdown), then it comes back.
    db.pg.stop("immediate");
    let refused = a.weftctl(&["service", "create", "during", "--protocol", "tcp"]);
    assert!(
        !refused.status.success(),
        "a change without a database must fail"
    );
    db.pg.start_server();

    // Both replicas serve again, with what was acknowledged before the crash.
    for cp in [&a, &b] {
        let out = eventually(Duration::from_secs(20), || async {
            let out = cp.weftctl(&["service", "list"]);
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .await;
        assert!(out.contains("before") && !out.contains("during"), "{out}");
    }
    // A change through B after the restart reaches the sidecar registered through A.
    b.weftctl_ok(&["service", "set-protocol", "web", "http2"]);
    sc.wait_protocol("web", "http2").await;
}
