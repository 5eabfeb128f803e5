//! Transparency: what goes in comes out unchanged, on every path to an app. This file:
//! bodies and their framing, resets and cut-offs, raw TCP; `transparency_protocol.rs`:
//! trailers, HTTP/1.0 and `Expect: 100-continue`.
//!
//! Each case below runs over both routes ([`Route::Direct`]: client → client sidecar →
//! CONNECT tunnel → app sidecar → app; [`Route::Gateway`]: client → edge gateway → app
//! sidecar → app), and within a route over every client version (HTTP/1.1 and h2c; the
//! gateway also TLS with ALPN `http/1.1` and `h2`) × selector (`http` with an HTTP/1.1
//! app, `http2` with an h2c app, `grpc` with a gRPC app, `tcp` with a raw app where it
//! applies). A case checks both sides: what the client got, and what the demo app says
//! it received. A cell that must fail asserts which failure (status and
//! `weft-error-code`), never just "fails". Every failing cell of a case is listed
//! before the case fails, so one run shows the whole matrix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use weft_tests::paths::{
    Cell, Client, Failures, H1Response, Paths, Refusal, Route, Selector, h2_exchange,
    read_to_close, seen,
};
use weft_tests::{eventually, every_route, sha256_hex};

/// The gateway's answer for a route to a `tcp` service: raw TCP cannot be reached by
/// HTTP requests, and HTTP must never be written into a raw app.
const TCP_ROUTE: Refusal = Refusal {
    status: 502,
    code: "WEFT-12",
};

// ---------------------------------------------------------------- bodies and framing

/// HEAD: the app's `content-length` arrives, no body does, and the app saw a HEAD.
async fn head_keeps_the_length_and_sends_no_body(p: &Paths) {
    let mut f = Failures::default();
    for cell in p.cells(&Selector::HTTP) {
        let path = format!("/bytes?n=55&head-{}", cell.tag());
        // What follows the head on the wire matters, so no curl here (it never reads a
        // body after HEAD).
        let (status, length, body, chunked) = if cell.client.is_h2() {
            let mut send = p.h2(cell).await;
            let a = h2_exchange(&mut send, p.h2_request(cell, "HEAD", &path), None, None).await;
            let length = a
                .headers
                .get("content-length")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            (a.status, length, a.body, false)
        } else {
            let req = format!(
                "HEAD {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                p.target(cell).authority
            );
            let raw = p.raw_exchange(cell, req.as_bytes()).await;
            let end = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(raw.len(), |e| e + 4);
            let r = H1Response::parse(&raw[..end]).unwrap_or_default();
            let chunked = r.header("transfer-encoding").is_some();
            (
                r.status,
                r.header("content-length").map(str::to_owned),
                raw[end..].to_vec(),
                chunked,
            )
        };
        f.check(cell, status == 200, || format!("HEAD status {status}"));
        f.check(cell, length.as_deref() == Some("55"), || {
            format!("content-length {length:?}, want 55")
        });
        f.check(cell, body.is_empty(), || {
            format!("{} bytes followed the HEAD answer", body.len())
        });
        f.check(cell, !chunked, || "HEAD answer is chunked".into());
        let events = p.app_events(cell.selector, &path);
        f.check(
            cell,
            events.len() == 1 && events[0]["method"] == "HEAD",
            || format!("the app should have seen one HEAD: {events:?}"),
        );
    }
    f.finish();
}

/// 204 and 304: the status arrives with no body and no chunked framing; 204 carries no
/// `content-length` (RFC 9110 §8.6).
async fn no_content_and_not_modified_have_no_body(p: &Paths) {
    let mut f = Failures::default();
    for cell in p.cells(&Selector::HTTP) {
        for code in [204u16, 304] {
            let a = p.curl(cell, &[], &format!("/status?code={code}"));
            f.check(cell, a.exit == 0 && a.status == code, || a.brief());
            f.check(cell, a.body.is_empty(), || format!("{code} had a body"));
            f.check(cell, a.header("transfer-encoding").is_none(), || {
                format!("{code} is chunked")
            });
            if code == 204 {
                f.check(cell, a.header("content-length").is_none(), || {
                    format!("204 with content-length {:?}", a.header("content-length"))
                });
            }
        }
    }
    f.finish();
}

/// `content-length: 0` is kept both ways, and a request without a body gets no framing
/// header on the way (an HTTP/1.1 app must not see `transfer-encoding` for a GET).
async fn content_length_zero_is_kept_both_ways(p: &Paths) {
    let mut f = Failures::default();
    for cell in p.cells(&Selector::HTTP) {
        let a = p.curl(
            cell,
            &["--data-binary", ""],
            &format!("/cl0?{}", cell.tag()),
        );
        f.check(cell, a.exit == 0 && a.status == 200, || a.brief());
        if let Some(echo) = f.json(cell, "POST with content-length 0", a.json()) {
            f.check(cell, echo["body_bytes"] == 0, || format!("{echo}"));
            f.check(cell, seen(&echo, "content-length") == Some("0"), || {
                format!("the app did not get content-length: 0: {}", echo["headers"])
            });
            f.check(cell, seen(&echo, "transfer-encoding").is_none(), || {
                format!("the app got transfer-encoding: {}", echo["headers"])
            });
        }
        let a = p.curl(cell, &[], &format!("/nobody?{}", cell.tag()));
        if let Some(echo) = f.json(cell, "GET", a.json()) {
            for framing in ["content-length", "transfer-encoding"] {
                f.check(cell, seen(&echo, framing).is_none(), || {
                    format!("a GET reached the app with {framing}: {}", echo["headers"])
                });
            }
        }
        let a = p.curl(cell, &[], "/bytes?n=0");
        f.check(cell, a.exit == 0 && a.status == 200, || a.brief());
        f.check(cell, a.header("content-length") == Some("0"), || {
            format!(
                "answer content-length {:?}, want 0",
                a.header("content-length")
            )
        });
        f.check(
            cell,
            a.body.is_empty() && a.header("transfer-encoding").is_none(),
            || "an empty answer came chunked or with a body".into(),
        );
    }
    f.finish();
}

/// Bodies of unknown length stream both ways: chunked on HTTP/1.1, no length on h2,
/// every byte in order.
async fn bodies_without_a_length_stream_both_ways(p: &Paths) {
    let mut f = Failures::default();
    let (file, sha) = p.random_file(300_000);
    for cell in p.cells(&Selector::HTTP) {
        // curl -T - reads stdin: it cannot know the length.
        let a = p.curl_stdin(
            cell,
            &["-T", "-"],
            &format!("/up?{}", cell.tag()),
            Some(&file),
        );
        f.check(cell, a.exit == 0 && a.status == 200, || a.brief());
        if let Some(echo) = f.json(cell, "upload of unknown length", a.json()) {
            f.check(
                cell,
                echo["body_bytes"] == 300_000 && echo["sha256"] == sha.as_str(),
                || {
                    format!(
                        "the app got {} bytes, sha {}",
                        echo["body_bytes"], echo["sha256"]
                    )
                },
            );
            let te = seen(&echo, "transfer-encoding");
            let want_te = cell.selector.app_is_h1().then_some("chunked");
            f.check(
                cell,
                te == want_te && seen(&echo, "content-length").is_none(),
                || format!("the app's framing headers: {}", echo["headers"]),
            );
        }
        let a = p.curl(cell, &[], "/bytes?n=300000&seed=3&chunked=1");
        f.check(cell, a.exit == 0 && a.status == 200, || a.brief());
        f.check(
            cell,
            a.header("x-demo-sha256") == Some(sha256_hex(&a.body).as_str()),
            || format!("{} bytes arrived, not the app's", a.body.len()),
        );
        f.check(cell, a.header("content-length").is_none(), || {
            "an answer without a length got one".into()
        });
        if !cell.client.is_h2() {
            f.check(
                cell,
                a.header("transfer-encoding") == Some("chunked"),
                || format!("transfer-encoding {:?}", a.header("transfer-encoding")),
            );
        }
    }
    f.finish();
}

/// 50 MB both ways, checksummed: uploads (the app reports the SHA-256 of what it read)
/// and downloads (seeded bytes announced by their SHA-256); for `tcp`, through the raw
/// app with a half-close.
async fn fifty_megabytes_arrive_unchanged_both_ways(p: &Paths) {
    const N: usize = 50 * 1024 * 1024;
    let mut f = Failures::default();
    let (file, sha) = p.random_file(N);
    for cell in p.cells(&Selector::HTTP) {
        let upload = format!("@{}", file.display());
        let a = p.curl(cell, &["--data-binary", &upload], "/upload");
        f.check(cell, a.exit == 0 && a.status == 200, || a.brief());
        if let Some(j) = f.json(cell, "50 MB upload", a.json()) {
            f.check(
                cell,
                j["body_bytes"] == N && j["sha256"] == sha.as_str(),
                || format!("the app got {} bytes, sha {}", j["body_bytes"], j["sha256"]),
            );
        }
        let a = p.curl(cell, &[], &format!("/bytes?n={N}&seed=11"));
        f.check(cell, a.exit == 0 && a.status == 200, || a.brief());
        f.check(
            cell,
            a.body.len() == N && a.header("x-demo-sha256") == Some(sha256_hex(&a.body).as_str()),
            || format!("{} bytes arrived, not the app's", a.body.len()),
        );
    }
    if p.route == Route::Direct {
        let cell = p.cell(Client::H1, Selector::Tcp);
        let data = std::fs::read(&file).unwrap();
        let (banner, reply) = raw_upload(p, cell, &data).await;
        f.check(cell, banner.starts_with("weft-demo-app raw"), || {
            banner.clone()
        });
        f.check(
            cell,
            reply == format!("received {N} sha256 {sha}\n"),
            || format!("the app answered {reply:?}"),
        );
        let (header, data) = raw_download(p, cell, N).await;
        f.check(
            cell,
            header == format!("sending {N} sha256 {}", sha256_hex(&data)),
            || format!("{} bytes arrived after {header:?}", data.len()),
        );
    }
    f.finish();
}

// ---------------------------------------------------------------- resets and cut-offs

/// A stream ended early by either side ends early on the other side too, and never
/// turns into a clean, shorter message: a client that resets (h2 RST_STREAM) or drops
/// its connection (HTTP/1.1) mid-upload or mid-download is seen by the app as an
/// aborted request or a cancelled response; an app that fails mid-body is seen by the
/// client as a reset or a cut-off (curl 18 or 92), never as a complete answer.
async fn resets_propagate_both_ways(p: &Paths) {
    let mut f = Failures::default();
    for cell in p.cells(&Selector::HTTP) {
        // The client gives up mid-upload.
        let path = format!("/upload?abort-{}", cell.tag());
        abort_upload(p, cell, &path).await;
        let events = app_events_eventually(p, cell, &path).await;
        f.check(
            cell,
            events.len() == 1
                && events[0]["outcome"] == "aborted"
                && events[0]["bytes"].as_u64().is_some_and(|b| b <= 65_536),
            || format!("client gave up mid-upload; the app saw {events:?}"),
        );

        // The client gives up mid-download.
        let path = format!("/bytes?n=50000000&cancel-{}", cell.tag());
        cancel_download(p, cell, &path).await;
        let events = app_events_eventually(p, cell, &path).await;
        f.check(
            cell,
            events.len() == 1
                && events[0]["outcome"] == "cancelled"
                && events[0]["bytes"].as_u64().is_some_and(|b| b < 50_000_000),
            || format!("client gave up mid-download; the app saw {events:?}"),
        );

        // The app fails mid-body.
        let a = p.curl(
            cell,
            &[],
            &format!("/bytes?n=1000000&reset_after=100000&{}", cell.tag()),
        );
        f.check(
            cell,
            matches!(a.exit, 18 | 56 | 92) && a.downloaded < 1_000_000,
            || format!("the app failed mid-body; the client got {}", a.brief()),
        );
    }
    f.finish();
}

/// Sends half an upload on `path`, then gives up: h2 RST_STREAM(CANCEL), or HTTP/1.1
/// closes the connection.
async fn abort_upload(p: &Paths, cell: Cell, path: &str) {
    let chunk = Bytes::from(vec![b'x'; 65_536]);
    if cell.client.is_h2() {
        let mut send = p.h2(cell).await;
        let (_response, mut stream) = send
            .send_request(p.h2_request(cell, "POST", path), false)
            .unwrap();
        stream.send_data(chunk, false).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream.send_reset(h2::Reason::CANCEL);
        // Keep the connection up while the reset travels.
        tokio::time::sleep(Duration::from_millis(300)).await;
    } else {
        let mut io = p.connect(cell).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000000\r\n\r\n",
            p.target(cell).authority
        );
        io.write_all(head.as_bytes()).await.unwrap();
        io.write_all(&chunk).await.unwrap();
        io.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Asks for a big download on `path`, reads a little, then gives up.
async fn cancel_download(p: &Paths, cell: Cell, path: &str) {
    if cell.client.is_h2() {
        let mut send = p.h2(cell).await;
        let (response, mut stream) = send
            .send_request(p.h2_request(cell, "GET", path), true)
            .unwrap();
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(10), response).await {
            let mut body = resp.into_body();
            let _ = tokio::time::timeout(Duration::from_secs(5), body.data()).await;
        }
        stream.send_reset(h2::Reason::CANCEL);
        tokio::time::sleep(Duration::from_millis(300)).await;
    } else {
        let mut io = p.connect(cell).await.unwrap();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            p.target(cell).authority
        );
        io.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 65_536];
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut io, &mut buf),
        )
        .await;
    }
}

/// The app's journal entries for `path`, once there is one (within 10 s).
async fn app_events_eventually(p: &Paths, cell: Cell, path: &str) -> Vec<Value> {
    for _ in 0..100 {
        let events = p.app_events(cell.selector, path);
        if !events.is_empty() {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Vec::new()
}

// ---------------------------------------------------------------- tcp

/// The `tcp` selector carries raw TCP untouched: a server-first app's banner arrives
/// before the client sent anything, a client's half-close reaches the app while the
/// app's reply still comes back, and the app's half-close reaches the client while the
/// client can still send. The gateway refuses routes to a `tcp` service.
async fn tcp_speaks_first_and_half_closes(p: &Paths) {
    let mut f = Failures::default();
    if p.route == Route::Gateway {
        for &client in p.clients() {
            let cell = p.cell(client, Selector::Tcp);
            let a = p.curl(cell, &[], "/");
            f.check(cell, TCP_ROUTE.matches(&a), || {
                format!("want {TCP_ROUTE:?}, got {}", a.brief())
            });
        }
        f.finish();
        return;
    }
    let cell = p.cell(Client::H1, Selector::Tcp);
    let data = b"no reply before my FIN".to_vec();
    let (banner, reply) = raw_upload(p, cell, &data).await;
    f.check(cell, banner == "weft-demo-app raw t-tcp", || {
        format!("banner {banner:?}")
    });
    f.check(
        cell,
        reply == format!("received {} sha256 {}\n", data.len(), sha256_hex(&data)),
        || format!("after the client's FIN the app answered {reply:?}"),
    );
    // The app ends its side first; the client's bytes after that still reach it.
    let (header, got) = raw_download(p, cell, 100_000).await;
    f.check(
        cell,
        header == format!("sending 100000 sha256 {}", sha256_hex(&got)),
        || format!("{} bytes after {header:?}", got.len()),
    );
    eventually(Duration::from_secs(10), || async {
        let log = p.app(Selector::Tcp).proc.log_text();
        log.contains("raw: 25 bytes received after the app's FIN")
            .then_some(())
    })
    .await;
    f.finish();
}

/// Raw app: reads the banner before sending, sends `data`, half-closes, reads the
/// reply to the close. Returns (banner, reply).
async fn raw_upload(p: &Paths, cell: Cell, data: &[u8]) -> (String, String) {
    let mut io = p.connect(cell).await.unwrap();
    let banner = read_line(&mut io).await;
    io.write_all(data).await.unwrap();
    io.shutdown().await.unwrap();
    let rest = read_to_close(&mut io, Duration::from_secs(60)).await;
    (banner, String::from_utf8_lossy(&rest).into_owned())
}

/// Raw app: `send n`, reads the header line and the data to the app's FIN, then sends
/// 25 more bytes (the app logs them). Returns (header line, data).
async fn raw_download(p: &Paths, cell: Cell, n: usize) -> (String, Vec<u8>) {
    let mut io = p.connect(cell).await.unwrap();
    let _banner = read_line(&mut io).await;
    io.write_all(format!("send {n}\n").as_bytes())
        .await
        .unwrap();
    let header = read_line(&mut io).await;
    let data = read_to_close(&mut io, Duration::from_secs(60)).await;
    io.write_all(b"still talking after a FIN").await.unwrap();
    io.shutdown().await.unwrap();
    (header, data)
}

/// Reads one line (without its newline), byte by byte, within 10 s.
async fn read_line<R: tokio::io::AsyncRead + Unpin>(io: &mut R) -> String {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut byte))
        .await
        .is_ok_and(|r| r.is_ok())
    {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

// ---------------------------------------------------------------- every case × every route

every_route!(
    head_keeps_the_length_and_sends_no_body,
    no_content_and_not_modified_have_no_body,
    content_length_zero_is_kept_both_ways,
    bodies_without_a_length_stream_both_ways,
    fifty_megabytes_arrive_unchanged_both_ways,
    resets_propagate_both_ways,
    tcp_speaks_first_and_half_closes,
);
