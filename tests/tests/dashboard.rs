//! The dashboard end to end: a real mesh with traffic, the page loaded in headless
//! Chromium, its JSON endpoints driven with curl, logins off loopback, and viewer
//! tokens on the admin API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tonic::Code;
use weft_tests::{ControlPlane, Gateway, browser, curl, deploy, eventually, free_port};

/// Reports come every 10 s and only complete 10 s buckets count.
const FIGURES_WITHIN: Duration = Duration::from_secs(45);

/// An HTTP answer: status, head and body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The value of header `name` (lowercase), as sent.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// curl against weft-cp's --http port.
fn http(cp: &ControlPlane, path: &str, args: &[&str]) -> Answer {
    let url = format!("http://127.0.0.1:{}{path}", cp.http.port());
    let mut all = vec!["-i"];
    all.extend(args);
    all.push(&url);
    let (code, out, err) = curl(&all);
    assert_eq!(code, 0, "curl {all:?}: {err}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The value of attribute `name` in the first tag holding `marker`.
fn attr<'a>(dom: &'a str, marker: &str, name: &str) -> Option<&'a str> {
    let at = dom.find(marker)?;
    let start = dom[..at].rfind('<')?;
    let tag = &dom[start..at + dom[at..].find('>')?];
    let value = tag.split(&format!(" {name}=\"")).nth(1)?;
    value.split('"').next()
}

/// Requests through the gateway in a loop until dropped: web (translated at its
/// sidecar, so seen one by one, a few answered 500) and api.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &Gateway) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Vec<Vec<String>> = [
            ("web.example.com", "/"),
            ("web.example.com", "/"),
            ("web.example.com", "/status?code=500"),
            ("web.example.com", "/sleep?ms=20"),
            ("api.example.com", "/"),
        ]
        .iter()
        .map(|(host, path)| gw.plain(host, path))
        .collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for t in &targets {
                    let mut args = vec!["--http2-prior-knowledge", "-o", "/dev/null"];
                    args.extend(t.iter().map(String::as_str));
                    curl(&args);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A mesh worth looking at: three services of three selectors in two regions, a
/// gateway with two routes, and steady traffic through it.
struct ShowMesh {
    cp: ControlPlane,
    _parts: Vec<(weft_tests::App, weft_tests::Sidecar)>,
    _gw: Gateway,
    _load: Load,
}

impl ShowMesh {
    async fn start() -> ShowMesh {
        let cp = ControlPlane::start(&[]).await;
        let parts = vec![
            deploy(&cp, "web", "http", 0, "h1", "eu").await,
            deploy(&cp, "api", "http2", 0, "h2c", "us").await,
            deploy(&cp, "db", "tcp", free_port(), "h1", "eu").await,
        ];
        cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
        cp.weftctl_ok(&["route", "create", "api.example.com", "--service", "api"]);
        // With the default policy (allow), these change no call; the page lists them.
        cp.weftctl_ok(&[
            "permission",
            "allow",
            "--from",
            "gateway:edge",
            "--to",
            "web",
        ]);
        cp.weftctl_ok(&["permission", "audit", "--from", "*", "--to", "db"]);
        let gw = Gateway::start(&cp, "edge", &[]).await;
        gw.wait_route("api.example.com").await;
        let load = Load::start(&gw);
        // Wait for the figures the page should show.
        eventually(FIGURES_WITHIN, || async {
            let o = http(&cp, "/api/overview", &[]).json();
            let rate = |name: &str| -> Option<f64> {
                let s = o["services"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == name)?;
                s["traffic"]["total"]["request_rate"].as_f64()
            };
            (rate("web")? > 0.0 && rate("api")? > 0.0).then_some(())
        })
        .await;
        ShowMesh {
            cp,
            _parts: parts,
            _gw: gw,
            _load: load,
        }
    }
}

/// Screenshots for people: in target/test-artifacts/, and the README's in docs/ with
/// WEFT_UPDATE_SCREENSHOT=1.
fn screenshots(base: &str) {
    let dir = browser::artifacts_dir();
    let pages = [
        ("dashboard.png", ""),
        ("dashboard-service.png", "#/services/web"),
    ];
    for (name, page) in pages {
        browser::screenshot(&format!("{base}{page}"), &dir.join(name));
    }
    if std::env::var_os("WEFT_UPDATE_SCREENSHOT").is_some() {
        let docs = weft_tests::workspace_root().join("docs");
        for (name, _) in pages {
            std::fs::copy(dir.join(name), docs.join(name)).unwrap();
        }
    }
}

#[tokio::test]
async fn the_dashboard_shows_services_selectors_sync_and_traffic_in_a_real_browser() {
    browser::chromium();
    let mesh = ShowMesh::start().await;
    let base = format!("http://127.0.0.1:{}/", mesh.cp.http.port());
    let dom = browser::dump_dom(&base);
    for (service, selector) in [("web", "http"), ("api", "http2"), ("db", "tcp")] {
        let marker = format!("data-service=\"{service}\"");
        assert_eq!(
            attr(&dom, &marker, "data-protocol"),
            Some(selector),
            "{dom}"
        );
        assert_eq!(
            attr(&dom, &marker, "data-in-sync"),
            Some("1"),
            "{service}: {dom}"
        );
    }
    for service in ["web", "api"] {
        let marker = format!("data-service=\"{service}\"");
        let rate: f64 = attr(&dom, &marker, "data-rate").unwrap().parse().unwrap();
        assert!(rate > 0.0, "{service}'s request rate shows: {dom}");
    }
    assert!(dom.contains("1/1 in sync"), "{dom}");
    assert!(dom.contains("4 / 4"), "every dataplane connected: {dom}");
    assert!(
        dom.contains("class=\"status live\""),
        "the refresh works: {dom}"
    );

    let service = browser::dump_dom(&format!("{base}#/services/web"));
    assert!(service.contains("id=\"latency-chart\""), "{service}");
    assert!(service.contains("class=\"line-p99\""), "{service}");
    assert!(service.contains("Region eu"), "{service}");
    assert!(
        service.contains("web.example.com"),
        "the route to it: {service}"
    );
    assert!(
        service.contains("data-source=\"gateway:edge\""),
        "who calls it: {service}"
    );

    let dataplanes = browser::dump_dom(&format!("{base}#/dataplanes"));
    assert_eq!(
        dataplanes.matches("data-dataplane=").count(),
        4,
        "{dataplanes}"
    );
    assert!(
        !dataplanes.contains("data-in-sync=\"false\""),
        "{dataplanes}"
    );
    let routes = browser::dump_dom(&format!("{base}#/routes"));
    assert!(routes.contains("data-host=\"api.example.com\""), "{routes}");
    let permissions = browser::dump_dom(&format!("{base}#/permissions"));
    assert_eq!(
        permissions.matches("data-permission=").count(),
        2,
        "{permissions}"
    );
    assert!(
        permissions.contains("data-action=\"audit\""),
        "{permissions}"
    );
    assert!(
        permissions.contains("calls no permission matches are ALLOWED"),
        "{permissions}"
    );
    screenshots(&base);
}

#[tokio::test]
async fn the_json_api_serves_one_document_per_page() {
    let cp = ControlPlane::start(&[]).await;
    let (_app, _web) = deploy(&cp, "web", "http", 0, "h1", "eu").await;
    cp.weftctl_ok(&["route", "create", "web.example.com", "--service", "web"]);
    cp.weftctl_ok(&[
        "permission",
        "deny",
        "--from",
        "gateway:edge",
        "--to",
        "web",
        "--port",
        "9",
    ]);

    let overview = http(&cp, "/api/overview", &[]);
    assert_eq!(overview.status, 200);
    assert_eq!(overview.header("content-type"), Some("application/json"));
    assert!(
        overview
            .header("server-timing")
            .unwrap()
            .starts_with("app;dur=")
    );
    let o = overview.json();
    assert_eq!(o["viewer"], "local");
    assert_eq!(o["ca"]["phase"], "idle");
    assert_eq!(o["dataplanes"]["total"], 1);
    let web = &o["services"][0];
    assert_eq!(
        (web["name"].as_str(), web["protocol"].as_str()),
        (Some("web"), Some("http"))
    );
    assert_eq!(web["instances"]["connected"], 1);
    assert_eq!(web["instances"]["in_sync"], 1);
    assert!(o["warnings"].as_array().unwrap().is_empty(), "{o:#}");
    assert!(
        o["traffic"]["note"]
            .as_str()
            .unwrap()
            .contains("of the 1 dataplanes")
    );

    let s = http(&cp, "/api/services/web", &[]).json();
    assert_eq!(s["service"]["name"], "web");
    assert_eq!(s["regions"][0]["region"], "eu");
    assert_eq!(s["regions"][0]["dataplanes"][0]["sync"], "in sync");
    assert_eq!(s["routes"][0]["host"], "web.example.com");
    let missing = http(&cp, "/api/services/nosuch", &[]);
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].as_str().unwrap().contains("nosuch"));
    assert_eq!(http(&cp, "/api/services/Not%20A%20Name", &[]).status, 404);
    let d = http(&cp, "/api/dataplanes", &[]).json();
    assert_eq!(d["dataplanes"][0]["in_sync"], true);
    assert!(
        d["dataplanes"][0]["warnings"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        http(&cp, "/api/routes", &[]).json()["routes"][0]["service"],
        "web"
    );
    assert_eq!(http(&cp, "/api/traffic", &[]).json()["window_seconds"], 60);
    assert_eq!(o["mesh"]["default_policy"], "allow");
    assert_eq!(o["mesh"]["permissions"]["deny"], 1);
    assert_eq!(
        s["permissions"][0]["action"], "deny",
        "the rule for web: {s:#}"
    );
    let p = http(&cp, "/api/permissions", &[]).json();
    assert_eq!(p["permissions"][0]["from"], "gateway:edge");
    assert_eq!(p["permissions"][0]["port"], 9);
    assert!(
        p["mesh"]["default_policy_text"]
            .as_str()
            .unwrap()
            .contains("ALLOWED")
    );
}

#[tokio::test]
async fn the_dashboard_only_reads_and_on_loopback_answers_only_to_local_names() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    // Read-only: no method but GET on the pages and the API.
    for (method, path) in [
        ("POST", "/api/overview"),
        ("DELETE", "/"),
        ("PUT", "/api/services/web"),
    ] {
        assert_eq!(
            http(&cp, path, &["-X", method]).status,
            405,
            "{method} {path}"
        );
    }
    // The page and its assets; no login on loopback.
    let page = http(&cp, "/", &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/static/app.js"));
    assert!(
        page.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(http(&cp, "/static/app.js", &[]).status, 200);
    assert_eq!(http(&cp, "/login", &[]).header("location"), Some("/"));
    // A name that resolves to 127.0.0.1 elsewhere (DNS rebinding) is not this machine.
    for path in ["/", "/api/overview"] {
        let foreign = http(&cp, path, &["-H", "Host: attacker.example"]);
        assert_eq!(foreign.status, 403, "{path}");
    }
    assert_eq!(
        http(&cp, "/api/overview", &["-H", "Host: localhost:1"]).status,
        200
    );
    // The port's other endpoints are as before.
    assert_eq!(http(&cp, "/healthz", &[]).status, 200);
    assert!(
        http(&cp, "/metrics", &[])
            .body
            .contains("weft_cp_traffic_reports")
    );
}

/// The token on the last line of `weftctl token create --viewer NAME`, and its id.
fn viewer_token(cp: &ControlPlane, name: &str) -> (String, String) {
    let out = cp.weftctl_ok(&["token", "create", "--viewer", name, "-o", "json"]);
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["kind"], "viewer");
    (
        j["token"].as_str().unwrap().to_owned(),
        j["id"].as_str().unwrap().to_owned(),
    )
}

/// The session cookie set by a login answer.
fn session(a: &Answer) -> String {
    let set = a
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie: {}", a.head));
    set.split(';').next().unwrap().trim().to_owned()
}

#[tokio::test]
async fn off_loopback_the_dashboard_asks_for_a_token_and_keeps_a_strict_session() {
    let cp = ControlPlane::start_http_on(Some([0, 0, 0, 0].into()), &[]).await;
    assert_eq!(http(&cp, "/", &[]).header("location"), Some("/login"));
    let denied = http(&cp, "/api/overview", &[]);
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("x-login"), Some("/login"));
    let form = http(&cp, "/login", &[]);
    assert!(form.status == 200 && form.body.contains("name=\"token\""));
    assert_eq!(
        http(&cp, "/metrics", &[]).status,
        200,
        "metrics need no login"
    );

    let wrong = http(
        &cp,
        "/login",
        &["--data-urlencode", "token=weftview1.tok-0.AAAA"],
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("not valid here"), "{}", wrong.body);

    let (token, _) = viewer_token(&cp, "ops");
    let login = ["--data-urlencode", &format!("token={token}")];
    let cross_site = http(
        &cp,
        "/login",
        &[&login[..], &["-H", "Origin: http://evil.example"]].concat(),
    );
    assert_eq!(cross_site.status, 403);
    let ok = http(&cp, "/login", &login);
    assert_eq!((ok.status, ok.header("location")), (303, Some("/")));
    let set = ok.header("set-cookie").unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = session(&ok);
    assert!(
        !cookie.to_lowercase().contains(&token.to_lowercase()),
        "the token stays out of the browser"
    );
    let behind_tls = http(
        &cp,
        "/login",
        &[&login[..], &["-H", "X-Forwarded-Proto: https"]].concat(),
    );
    assert!(
        behind_tls
            .header("set-cookie")
            .unwrap()
            .contains("; Secure")
    );

    let admin = http(
        &cp,
        "/login",
        &["--data-urlencode", &format!("token={}", cp.admin_token())],
    );
    let as_admin = http(
        &cp,
        "/api/overview",
        &["-H", &format!("Cookie: {}", session(&admin))],
    );
    assert_eq!(as_admin.json()["viewer"], "admin");
}

/// GET `path` with the session `cookie`.
fn with_cookie(cp: &ControlPlane, path: &str, cookie: &str) -> Answer {
    http(cp, path, &["-H", &format!("Cookie: {cookie}")])
}

#[tokio::test]
async fn a_viewer_session_reads_until_its_token_is_revoked() {
    let cp = ControlPlane::start_http_on(Some([0, 0, 0, 0].into()), &[]).await;
    let (token, id) = viewer_token(&cp, "ops");
    let cookie = session(&http(
        &cp,
        "/login",
        &["--data-urlencode", &format!("token={token}")],
    ));
    let with = |path: &str, cookie: &str| with_cookie(&cp, path, cookie);
    let seen = with("/api/overview", &cookie);
    assert_eq!(seen.status, 200);
    assert!(
        seen.json()["viewer"]
            .as_str()
            .unwrap()
            .starts_with("viewer ops")
    );
    assert_eq!(with("/", &cookie).status, 200);
    let tampered = cookie.replacen("viewer", "admin", 1);
    assert_eq!(with("/api/overview", &tampered).status, 401);

    // Revoking the token ends its sessions at once.
    cp.weftctl_ok(&["token", "revoke", &id]);
    let revoked = with("/api/overview", &cookie);
    assert_eq!(revoked.status, 401);
    assert!(revoked.body.contains("revoked"), "{}", revoked.body);

    let out = http(
        &cp,
        "/logout",
        &["-X", "POST", "-H", &format!("Cookie: {cookie}")],
    );
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
}

/// Calls `/weft.v1.Admin/<method>` with an empty request and `token`.
async fn call(cp: &ControlPlane, method: &str, token: &str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(cp.tls_channel().await);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let path: http::uri::PathAndQuery = format!("/weft.v1.Admin/{method}").parse().unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(req, path, codec).await.map(|_| ())
}

#[tokio::test]
async fn a_viewer_token_reads_through_the_admin_api_and_every_write_is_refused() {
    use prost::Message as _;
    use weft_control_plane::api::gate::READ_ONLY;

    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let (token, id) = viewer_token(&cp, "ops");
    let before = cp.weftctl_ok(&["token", "list", "-o", "json"]);

    let set = prost_types::FileDescriptorSet::decode(weft_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
    let admin = set
        .file
        .iter()
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "Admin")
        .unwrap();
    let mut writes = 0;
    for method in admin.method.iter().map(|m| m.name()) {
        let result = call(&cp, method, &token).await;
        if READ_ONLY.contains(&method) {
            let code = result.err().map(|s| s.code());
            assert!(
                !matches!(code, Some(Code::PermissionDenied | Code::Unauthenticated)),
                "{method} is a read and the viewer may call it: {code:?}"
            );
        } else {
            writes += 1;
            let err = result.expect_err(method);
            assert_eq!(err.code(), Code::PermissionDenied, "{method}: {err:?}");
            assert!(
                err.message().contains("viewer token only reads"),
                "{method}: {}",
                err.message()
            );
        }
        if method.starts_with("Get") || method.starts_with("List") {
            assert!(
                READ_ONLY.contains(&method),
                "{method}: viewers may list and get"
            );
        }
    }
    assert!(writes >= 9, "every write RPC was tried ({writes})");
    // Nothing changed: the same service and tokens as before.
    assert_eq!(cp.weftctl_ok(&["token", "list", "-o", "json"]), before);
    let services: Value =
        serde_json::from_str(&cp.weftctl_ok(&["service", "list", "-o", "json"])).unwrap();
    assert_eq!(services.as_array().unwrap().len(), 1);

    // A viewer token bootstraps nothing, and once revoked reads nothing.
    let identity = weft_sidecar::control::bootstrap::obtain_identity(&cp.url(), &token, None).await;
    assert!(identity.is_err(), "a viewer token is no bootstrap token");
    cp.weftctl_ok(&["token", "revoke", &id]);
    let err = call(&cp, "ListServices", &token).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());
}

#[tokio::test]
async fn weftctl_with_a_viewer_token_reads_and_says_why_it_cannot_write() {
    let cp = ControlPlane::start(&[]).await;
    cp.weftctl_ok(&["service", "create", "web", "--protocol", "http"]);
    let (token, id) = viewer_token(&cp, "ops");
    let as_viewer = |args: &[&str]| cp.weftctl_with_token(&token, args);
    for read in [
        &["service", "list"][..],
        &["dataplane", "list"],
        &["service", "stats"],
        &["ca", "show"],
    ] {
        let out = as_viewer(read);
        assert!(
            out.status.success(),
            "{read:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = String::from_utf8(as_viewer(&["token", "list"]).stdout).unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("viewer")),
        "{listed}"
    );
    let write = as_viewer(&["service", "create", "x", "--protocol", "http"]);
    assert_eq!(write.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&write.stderr).contains("viewer token only reads"));
    cp.weftctl_ok(&["token", "revoke", &id]);
    let revoked = as_viewer(&["service", "list"]);
    assert_eq!(revoked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&revoked.stderr).contains("revoked"));
}
