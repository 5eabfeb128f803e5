//! [`H2Io`] and the splice against a real h2 peer over an in-memory pipe.

use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::io::H2Io;
use super::splice::splice;

/// A stream as the tunnel client holds it, and the peer's two halves of it.
async fn pair() -> (H2Io, SendStream<Bytes>, RecvStream) {
    let (a, b) = tokio::io::duplex(1 << 20);
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(b).await.unwrap();
        let (req, mut respond) = conn.accept().await.unwrap().unwrap();
        let send = respond
            .send_response(http::Response::new(()), false)
            .unwrap();
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        (send, req.into_body())
    });
    let (client, conn) = h2::client::handshake(a).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://peer/").body(()).unwrap();
    let (resp, send) = client.send_request(req, false).unwrap();
    let (peer_send, peer_recv) = server.await.unwrap();
    let recv = resp.await.unwrap().into_body();
    (H2Io::new(send, recv), peer_send, peer_recv)
}

/// The next non-empty DATA chunk the peer receives, or `None` at END_STREAM (which
/// arrives on an empty frame when nothing was left to send with it).
async fn chunk(recv: &mut RecvStream) -> Option<Bytes> {
    loop {
        let data = recv.data().await?.unwrap();
        let _ = recv.flow_control().release_capacity(data.len());
        if !data.is_empty() {
            return Some(data);
        }
    }
}

#[tokio::test]
async fn writes_leave_together_at_the_flush() {
    let (mut io, _peer_send, mut peer) = pair().await;
    io.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
    io.write_all(b"body").await.unwrap();
    // Nothing leaves before the flush (the pipe and both tasks are in this process:
    // a frame sent would arrive well within the wait).
    let early = tokio::time::timeout(Duration::from_millis(100), peer.data()).await;
    assert!(early.is_err(), "a write left before the flush");
    io.flush().await.unwrap();
    let got = chunk(&mut peer).await.unwrap();
    assert_eq!(&got[..], b"HTTP/1.1 200 OK\r\n\r\nbody", "one DATA frame");
}

#[tokio::test]
async fn a_write_of_zero_bytes_sends_nothing_and_ends_nothing() {
    let (mut io, _peer_send, mut peer) = pair().await;
    assert_eq!(io.write(b"").await.unwrap(), 0);
    io.flush().await.unwrap();
    io.write_all(b"after").await.unwrap();
    io.flush().await.unwrap();
    assert_eq!(&chunk(&mut peer).await.unwrap()[..], b"after");
    io.shutdown().await.unwrap();
    assert_eq!(chunk(&mut peer).await, None);
}

#[tokio::test]
async fn shutdown_sends_what_was_gathered_then_the_end_and_reading_goes_on() {
    let (mut io, mut peer_send, mut peer) = pair().await;
    io.write_all(b"last words").await.unwrap();
    io.shutdown().await.unwrap();
    let mut got = Vec::new();
    while let Some(c) = chunk(&mut peer).await {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, b"last words");
    // Half-closed: the other way still carries bytes, then its own end.
    peer_send
        .send_data(Bytes::from_static(b"reply"), true)
        .unwrap();
    let mut back = Vec::new();
    io.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"reply");
}

#[tokio::test]
async fn every_chunk_already_received_leaves_in_one_read() {
    let (mut io, mut peer_send, _peer) = pair().await;
    for part in [&b"one "[..], b"two ", b"three"] {
        peer_send
            .send_data(Bytes::from_static(part), false)
            .unwrap();
    }
    peer_send.send_data(Bytes::new(), true).unwrap();
    // Wait until all of it is in (the end comes last), then read once.
    let mut first = [0u8; 64];
    let mut n = io.read(&mut first).await.unwrap();
    while n < 13 {
        n += io.read(&mut first[n..]).await.unwrap();
    }
    assert_eq!(&first[..n], b"one two three");
    assert_eq!(io.read(&mut first).await.unwrap(), 0, "then the end");
}

#[tokio::test]
async fn the_splice_carries_both_ways_and_passes_each_end_on() {
    let (mut io, mut peer_send, mut peer) = pair().await;
    let (mut app, mut sock) = tokio::io::duplex(4096);
    let spliced = tokio::spawn(async move { splice(&mut sock, &mut io).await });
    // Socket to tunnel, in pieces smaller and larger than the pipe, then the socket's
    // end: the peer gets every byte, then END_STREAM.
    let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let up = up.clone();
        tokio::spawn(async move {
            for piece in up.chunks(7_001) {
                app.write_all(piece).await.unwrap();
            }
            app.shutdown().await.unwrap();
            app
        })
    };
    let mut got = Vec::new();
    while let Some(c) = chunk(&mut peer).await {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, up);
    let mut app = writer.await.unwrap();
    // Tunnel to socket, several frames, then END_STREAM: the socket reads them all and
    // then its end; the splice ends with both counts.
    for _ in 0..10 {
        peer_send
            .send_data(Bytes::from(vec![7u8; 10_000]), false)
            .unwrap();
    }
    peer_send.send_data(Bytes::new(), true).unwrap();
    let mut down = Vec::new();
    app.read_to_end(&mut down).await.unwrap();
    assert_eq!(down, vec![7u8; 100_000]);
    let (sent, written) = spliced.await.unwrap().unwrap();
    assert_eq!((sent, written), (300_000, 100_000));
}
