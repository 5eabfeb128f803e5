//! The tunnel's byte path end to end, through real sidecars on 127.0.0.1: the shapes of
//! traffic its buffering must carry unchanged (bulk both ways at once, a peer writing
//! one byte at a time, a half-close with data still in flight, HTTP/2 frames split
//! across every byte) on the spliced and the translated paths.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use weft_tests::{App, ControlPlane, Sidecar, client_sidecar, deploy, free_port, sha256_hex};

/// A `tcp` service whose app is a listener of the test, and a client sidecar that
/// reaches it at `addr`.
struct RawMesh {
    _cp: ControlPlane,
    _server: Sidecar,
    _client: (App, Sidecar),
    app: TcpListener,
    addr: SocketAddr,
}

async fn raw_mesh() -> RawMesh {
    let cp = ControlPlane::start(&[]).await;
    let port = cp.create_tcp_service("raw");
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Sidecar::start(&cp, "raw", app.local_addr().unwrap(), "eu").await;
    let (capp, client) = client_sidecar(&cp).await;
    client.wait_endpoints("raw", 1).await;
    let addr = client.outbound(port);
    RawMesh {
        _cp: cp,
        _server: server,
        _client: (capp, client),
        app,
        addr,
    }
}

impl RawMesh {
    /// A connection through the mesh, and the app's end of it.
    async fn connect(&self) -> (TcpStream, TcpStream) {
        let mut client = TcpStream::connect(self.addr).await.unwrap();
        client.set_nodelay(true).unwrap();
        let marker = *b"weft-test-stream";
        client.write_all(&marker).await.unwrap();
        loop {
            let (mut app, _) = self.app.accept().await.unwrap();
            // The sidecar's protocol probes connect to the app too: told apart by what
            // they send first.
            let mut first = [0u8; 16];
            if app.read_exact(&mut first).await.is_ok() && first == marker {
                app.set_nodelay(true).unwrap();
                return (client, app);
            }
        }
    }
}

/// `n` pseudo-random bytes from `seed`.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

/// Writes `data` in chunks of varied sizes, then ends its side; reads the other side to
/// its end at the same time. Returns what was read.
async fn exchange(s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(data.len() as u64);
        let mut rest = &data[..];
        while !rest.is_empty() {
            let k = rng.usize(1..=200_000).min(rest.len());
            w.write_all(&rest[..k]).await.unwrap();
            rest = &rest[k..];
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    got
}

#[tokio::test]
async fn fifty_megabytes_cross_both_ways_at_once_intact() {
    let mesh = raw_mesh().await;
    let (client, app) = mesh.connect().await;
    let up = noise(50_000_000, 1);
    let down = noise(50_000_000, 2);
    let (up_sum, down_sum) = (sha256_hex(&up), sha256_hex(&down));
    let (at_app, at_client) = tokio::join!(exchange(app, down), exchange(client, up));
    assert_eq!(at_app.len(), 50_000_000);
    assert_eq!(at_client.len(), 50_000_000);
    assert_eq!(sha256_hex(&at_app), up_sum, "bytes to the app changed");
    assert_eq!(
        sha256_hex(&at_client),
        down_sum,
        "bytes to the client changed"
    );
}

#[tokio::test]
async fn a_peer_writing_one_byte_at_a_time_is_echoed_exactly() {
    let mesh = raw_mesh().await;
    let (mut client, mut app) = mesh.connect().await;
    // The app echoes byte by byte; the client sends byte by byte and reads each echo
    // before the next, so every byte travels alone in both directions.
    let echo = tokio::spawn(async move {
        let mut b = [0u8; 1];
        while app.read(&mut b).await.unwrap() == 1 {
            app.write_all(&b).await.unwrap();
        }
    });
    let data = noise(2_000, 3);
    for &byte in &data {
        client.write_all(&[byte]).await.unwrap();
        let mut b = [0u8; 1];
        client.read_exact(&mut b).await.unwrap();
        assert_eq!(b[0], byte);
    }
    client.shutdown().await.unwrap();
    echo.await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn a_half_close_arrives_after_the_data_queued_before_it() {
    let mesh = raw_mesh().await;
    let (mut client, mut app) = mesh.connect().await;
    // The client writes 4 MB and closes its side at once, before the app read anything:
    // the data is still in the mesh's buffers when the FIN comes in behind it.
    let request = noise(4_000_000, 4);
    client.write_all(&request).await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    app.read_to_end(&mut got).await.unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&request));
    // The other direction is still open: the app answers after the client's end, then
    // closes in turn.
    let reply = noise(3_000_000, 5);
    app.write_all(&reply).await.unwrap();
    app.shutdown().await.unwrap();
    let mut back = Vec::new();
    client.read_to_end(&mut back).await.unwrap();
    assert_eq!(sha256_hex(&back), sha256_hex(&reply));
}

/// A client connection that writes at most one byte per write and reads at most one
/// byte per read: every HTTP/2 frame reaches the mesh split at every byte.
struct OneByte(TcpStream);

impl AsyncRead for OneByte {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut one = [0u8; 1];
        let mut rb = ReadBuf::new(&mut one);
        ready!(Pin::new(&mut self.0).poll_read(cx, &mut rb))?;
        buf.put_slice(rb.filled());
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for OneByte {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(1);
        Pin::new(&mut self.0).poll_write(cx, &buf[..n])
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An h2c (prior knowledge) client connection to `addr`, one byte at a time or not.
async fn h2c(addr: SocketAddr, one_byte: bool) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let send = if one_byte {
        let (send, conn) = h2::client::handshake(OneByte(tcp)).await.unwrap();
        tokio::spawn(conn);
        send
    } else {
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(4 << 20)
            .initial_connection_window_size(8 << 20)
            .handshake(tcp)
            .await
            .unwrap();
        tokio::spawn(conn);
        send
    };
    send.ready().await.unwrap()
}

/// Sends `body` (none when empty) to `path`; returns the status, the response headers
/// and the body.
async fn call(
    send: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Bytes,
) -> (u16, http::HeaderMap, Vec<u8>) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .unwrap();
    let (resp, mut stream) = send.send_request(req, body.is_empty()).unwrap();
    if !body.is_empty() {
        send_body(&mut stream, body).await;
    }
    let (parts, mut recv) = resp.await.unwrap().into_parts();
    let mut got = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        got.extend_from_slice(&chunk);
        recv.flow_control().release_capacity(chunk.len()).unwrap();
    }
    (parts.status.as_u16(), parts.headers, got)
}

/// Sends `body` as the window allows, then END_STREAM.
async fn send_body(s: &mut h2::SendStream<Bytes>, mut body: Bytes) {
    while !body.is_empty() {
        s.reserve_capacity(body.len().min(1 << 20));
        let mut n = s.capacity();
        if n == 0 {
            n = std::future::poll_fn(|cx| s.poll_capacity(cx))
                .await
                .unwrap()
                .unwrap();
        }
        s.send_data(body.split_to(n.min(body.len())), false)
            .unwrap();
    }
    s.send_data(Bytes::new(), true).unwrap();
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e})"))
}

/// Services with both ways of the last hop: `spliced` (http2, h2c app: the client's
/// bytes reach the app unchanged) and `translated` (http, HTTP/1.1 app: requests are
/// re-sent one by one); the client sidecar's outbound addresses for each.
async fn http_mesh() -> (ControlPlane, Vec<(App, Sidecar)>, SocketAddr, SocketAddr) {
    let cp = ControlPlane::start(&[]).await;
    let (p2, p1) = (free_port(), free_port());
    let spliced = deploy(&cp, "spliced", "http2", p2, "h2c", "eu").await;
    let translated = deploy(&cp, "translated", "http", p1, "h1", "eu").await;
    let client = client_sidecar(&cp).await;
    client.1.wait_endpoints("spliced", 1).await;
    client.1.wait_endpoints("translated", 1).await;
    let (a2, a1) = (client.1.outbound(p2), client.1.outbound(p1));
    (cp, vec![spliced, translated, client], a2, a1)
}

#[tokio::test]
async fn http2_frames_split_at_every_byte_pass_both_ways_of_the_last_hop() {
    let (_cp, _dataplanes, spliced, translated) = http_mesh().await;
    for (addr, version) in [(spliced, "HTTP/2.0"), (translated, "HTTP/1.1")] {
        let mut send = h2c(addr, true).await;
        // Two requests on the connection: the preface and the first frames were split
        // too, and the stream goes on after a whole exchange.
        for i in 0..2 {
            let (status, headers, body) =
                call(&mut send, addr, "GET", &format!("/split/{i}"), Bytes::new()).await;
            assert_eq!(status, 200, "{addr}");
            assert_eq!(headers["x-demo-version"], version, "{addr}");
            assert_eq!(json(&body)["path"], format!("/split/{i}"), "{addr}");
        }
        let payload = Bytes::from(noise(3_000, 6));
        let (status, _, body) = call(&mut send, addr, "POST", "/upload", payload.clone()).await;
        assert_eq!(status, 200, "{addr}");
        let got = json(&body);
        assert_eq!(got["body_bytes"], 3_000, "{addr}");
        assert_eq!(got["sha256"], sha256_hex(&payload), "{addr}");
    }
}

#[tokio::test]
async fn fifty_megabyte_bodies_pass_both_ways_of_the_last_hop() {
    let (_cp, _dataplanes, spliced, translated) = http_mesh().await;
    let upload = Bytes::from(noise(50_000_000, 7));
    let sum = sha256_hex(&upload);
    for addr in [spliced, translated] {
        let mut send = h2c(addr, false).await;
        let (status, _, body) = call(&mut send, addr, "POST", "/upload", upload.clone()).await;
        assert_eq!(status, 200, "{addr}");
        let got = json(&body);
        assert_eq!(got["body_bytes"], 50_000_000, "{addr}");
        assert_eq!(got["sha256"], sum, "{addr}");
        let path = "/bytes?n=50000000&seed=9";
        let (status, headers, body) = call(&mut send, addr, "GET", path, Bytes::new()).await;
        assert_eq!(status, 200, "{addr}");
        assert_eq!(body.len(), 50_000_000, "{addr}");
        assert_eq!(headers["x-demo-sha256"], sha256_hex(&body), "{addr}");
    }
}
