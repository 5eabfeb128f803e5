//! Transparency, protocol details: trailers both ways (also to and from HTTP/1.1 peers),
//! HTTP/1.0 without Host, and `Expect: 100-continue`, held to one specification on every
//! path to an app, as in `transparency.rs` (which says how the matrix is run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use serde_json::Value;
use weft_tests::every_route;
use weft_tests::paths::{Cell, Failures, H1Response, Paths, Refusal, Route, Selector, h2_exchange};

/// The gateway's answer to a request with no Host (HTTP/1.0): it routes by host, so
/// there is nothing to route by — a malformed request for it.
const NO_HOST: Refusal = Refusal {
    status: 400,
    code: "WEFT-6",
};

// ---------------------------------------------------------------- trailers

/// Trailers cross in both directions, also to and from HTTP/1.1 peers, when they are
/// declared up front in a `Trailer` header (which HTTP/1.1 requires, and hyper's
/// HTTP/1.1 sides enforce): request trailers reach the app; response trailers reach a
/// client that accepts them (`TE: trailers`, with `Connection: TE` from HTTP/1.1). Undeclared trailers (as h2 peers usually
/// send them) cross between HTTP/2 peers; towards an HTTP/1.1 peer they are dropped,
/// never merged into the header section, and the message is otherwise whole (a known
/// gap: their names would have to be known before the body starts).
async fn trailers_cross_both_ways(p: &Paths) {
    let mut f = Failures::default();
    for cell in p.cells(&Selector::HTTP) {
        let mut sends = vec![true];
        if cell.client.is_h2() {
            sends.push(false);
        }
        for declared in sends {
            let Some(echo) = send_request_trailer(p, cell, declared, &mut f).await else {
                continue;
            };
            let crosses = declared || !cell.selector.app_is_h1();
            let got = &echo["trailers"]["x-req-trailer"][0];
            f.check(cell, echo["body_bytes"] == 5, || {
                format!("request body: {}", echo["body_bytes"])
            });
            f.check(
                cell,
                if crosses { got == "yes" } else { got.is_null() },
                || {
                    format!(
                        "request trailer (declared: {declared}): the app got trailers {}",
                        echo["trailers"]
                    )
                },
            );
            f.check(cell, echo["headers"].get("x-req-trailer").is_none(), || {
                "a request trailer was merged into the headers".into()
            });
        }

        let mut paths = vec![("/trailers", true)];
        if !cell.selector.app_is_h1() {
            paths.push(("/trailers?declare=0", false));
        }
        for (path, declared) in paths {
            // An HTTP/1.1 client that sends TE must name it in Connection too.
            let te: &[&str] = if cell.client.is_h2() {
                &["-H", "TE: trailers"]
            } else {
                &["-H", "TE: trailers", "-H", "Connection: TE"]
            };
            let a = p.curl(cell, te, path);
            f.check(cell, a.exit == 0 && a.status == 200, || a.brief());
            f.check(cell, a.json().is_ok(), || {
                format!("{path}: the body is not whole")
            });
            let crosses = declared || cell.client.is_h2();
            let got = a.trailer("x-demo-trailer");
            f.check(cell, got == crosses.then_some("done"), || {
                format!("{path}: response trailers {:?}", a.trailers)
            });
            f.check(cell, a.header("x-demo-trailer").is_none(), || {
                format!("{path}: a response trailer was merged into the headers")
            });
        }
    }
    f.finish();
}

/// POSTs `hello` with trailer `x-req-trailer: yes` (named in a `Trailer` header when
/// `declared`; HTTP/1.1 clients always declare it); returns the app's echo.
async fn send_request_trailer(
    p: &Paths,
    cell: Cell,
    declared: bool,
    f: &mut Failures,
) -> Option<Value> {
    let path = format!("/trailers-in?{}-{declared}", cell.tag());
    if cell.client.is_h2() {
        let mut send = p.h2(cell).await;
        let mut req = p.h2_request(cell, "POST", &path);
        if declared {
            req.headers_mut()
                .insert("trailer", "x-req-trailer".parse().unwrap());
        }
        let mut t = http::HeaderMap::new();
        t.insert("x-req-trailer", "yes".parse().unwrap());
        let a = h2_exchange(&mut send, req, Some(Bytes::from_static(b"hello")), Some(t)).await;
        f.check(cell, a.status == 200 && a.error.is_none(), || {
            format!("request trailers: status {} {:?}", a.status, a.error)
        });
        return f.json(cell, "request trailers", a.json());
    }
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\
         Trailer: x-req-trailer\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\n0\r\nx-req-trailer: yes\r\n\r\n",
        p.target(cell).authority
    );
    let raw = p.raw_exchange(cell, req.as_bytes()).await;
    match H1Response::parse(&raw) {
        Some(r) => f.json(cell, "request trailers", r.json()),
        None => {
            f.check(cell, false, || {
                format!("no answer: {:?}", String::from_utf8_lossy(&raw))
            });
            None
        }
    }
}

// ---------------------------------------------------------------- HTTP/1.0, 100-continue

/// An HTTP/1.0 request without Host: through the client sidecar it reaches the app and
/// the answer is not chunked. An HTTP/1.1 app sees it as sent. An h2 app sees the
/// service's name as `:authority`: RFC 9113 §8.3.1 would have none, but an HTTP/2
/// request needs `:scheme`, and the `http` crate's URIs (so hyper's and h2's requests)
/// cannot carry a scheme without an authority. The gateway, which routes by host,
/// refuses it.
async fn http10_without_host(p: &Paths) {
    let mut f = Failures::default();
    for cell in p.cells(&Selector::HTTP) {
        if cell.client.is_h2() {
            continue;
        }
        let path = format!("/old?{}", cell.tag());
        // Raw: over TLS curl would offer ALPN `http/1.0`, which the gateway rightly
        // refuses at the handshake; this is an HTTP/1.0 request on an http/1.1 connection.
        let raw = p
            .raw_exchange(cell, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await;
        let Some(r) = H1Response::parse(&raw) else {
            f.check(cell, false, || {
                format!("no answer: {:?}", String::from_utf8_lossy(&raw))
            });
            continue;
        };
        if p.route == Route::Gateway {
            let code = r.header("weft-error-code");
            f.check(
                cell,
                r.status == NO_HOST.status && code == Some(NO_HOST.code),
                || format!("want {NO_HOST:?}, got {} {code:?}", r.status_line),
            );
            continue;
        }
        f.check(cell, r.status == 200 && r.complete, || {
            format!("{} (complete: {})", r.status_line, r.complete)
        });
        f.check(cell, r.header("transfer-encoding").is_none(), || {
            "chunked answer to an HTTP/1.0 client".into()
        });
        if let Some(echo) = f.json(cell, "HTTP/1.0 without Host", r.json()) {
            let (version, host) = if cell.selector.app_is_h1() {
                ("HTTP/1.0", Value::Null)
            } else {
                ("HTTP/2.0", Value::from(cell.selector.service_name()))
            };
            f.check(
                cell,
                echo["version"] == version && echo["host"] == host && echo["path"] == path.as_str(),
                || {
                    format!(
                        "the app saw {} host {} path {}",
                        echo["version"], echo["host"], echo["path"]
                    )
                },
            );
        }
    }
    f.finish();
}

/// `Expect: 100-continue` (HTTP/1.1 clients): the client gets its 100 Continue, sends
/// the body, and the body arrives whole. (An app's early final answer, sent before it
/// reads the body, is not part of the specification yet: see "Known gaps" in
/// docs/architecture.md.)
async fn expect_100_continue(p: &Paths) {
    let mut f = Failures::default();
    let (file, sha) = p.random_file(1024 * 1024);
    for cell in p.cells(&Selector::HTTP) {
        if cell.client.is_h2() {
            continue;
        }
        let a = p.curl(
            cell,
            &[
                "-H",
                "Expect: 100-continue",
                "--data-binary",
                &format!("@{}", file.display()),
            ],
            "/upload",
        );
        f.check(cell, a.interim == [100], || {
            format!("interim answers {:?}, want [100]", a.interim)
        });
        f.check(cell, a.exit == 0 && a.status == 200, || a.brief());
        if let Some(j) = f.json(cell, "upload after 100-continue", a.json()) {
            f.check(
                cell,
                j["body_bytes"] == 1024 * 1024 && j["sha256"] == sha.as_str(),
                || format!("the app got {} bytes, sha {}", j["body_bytes"], j["sha256"]),
            );
        }
    }
    f.finish();
}

// ---------------------------------------------------------------- every case × every route

every_route!(
    trailers_cross_both_ways,
    http10_without_host,
    expect_100_continue,
);
