//! Finds out what the app actually speaks, so a wrong selector shows up as a warning in
//! `weftctl service get` instead of as mysterious failures: an HTTP/2 preface answered
//! by a SETTINGS frame means h2c; an `OPTIONS *` answered with `HTTP/1.` means HTTP/1.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use weft_proto::v1::AppProtocol;

use crate::inbound::detect::PREFACE;

const TIMEOUT: Duration = Duration::from_secs(2);
/// How often the probe repeats (apps get redeployed behind a running sidecar).
pub const INTERVAL: Duration = Duration::from_secs(30);
/// How often a down app is probed, so its endpoint returns to service soon after it does.
pub const DOWN_INTERVAL: Duration = Duration::from_secs(2);

async fn exchange(app: SocketAddr, send: &[u8], want: usize) -> Result<Vec<u8>, bool> {
    let mut tcp = match tokio::time::timeout(TIMEOUT, TcpStream::connect(app)).await {
        Ok(Ok(t)) => t,
        _ => return Err(true),
    };
    if tcp.write_all(send).await.is_err() {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match tokio::time::timeout(TIMEOUT, tcp.read(&mut buf[got..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Probes the app once.
pub async fn probe(app: SocketAddr) -> AppProtocol {
    // Preface + empty SETTINGS; an h2 server's first frame is its SETTINGS (type 4).
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    match exchange(app, &hello, 9).await {
        Err(_) => return AppProtocol::Down,
        Ok(b) if b.len() >= 4 && b[3] == 4 => return AppProtocol::Http2,
        Ok(_) => {}
    }
    let req = b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nUser-Agent: weft-probe\r\nConnection: close\r\n\r\n";
    match exchange(app, req, 7).await {
        Err(_) => AppProtocol::Down,
        Ok(b) if b.starts_with(b"HTTP/1.") => AppProtocol::Http1,
        Ok(_) => AppProtocol::Opaque,
    }
}

/// Probes at start, every [`INTERVAL`] ([`DOWN_INTERVAL`] while the app is down), and
/// whenever `kick` fires; publishes changes.
pub async fn run(
    app: SocketAddr,
    tx: watch::Sender<AppProtocol>,
    mut kick: watch::Receiver<Option<crate::control::config::Selector>>,
    refused: Arc<Notify>,
) {
    loop {
        let seen = probe(app).await;
        tx.send_if_modified(|cur| {
            if *cur != seen {
                tracing::info!(app = %app, speaks = seen.display_name(), "app probe");
                *cur = seen;
                true
            } else {
                false
            }
        });
        let interval = if seen == AppProtocol::Down {
            DOWN_INTERVAL
        } else {
            INTERVAL
        };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            r = kick.changed() => if r.is_err() { tokio::time::sleep(interval).await },
            // The inbound could not connect to the app: find out now, not in 30 s.
            _ = refused.notified() => {}
        }
    }
}
