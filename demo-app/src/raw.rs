//! `--mode raw`: a plain TCP app that speaks first, for the `tcp` selector.
//!
//! On accept it sends one line, `weft-demo-app raw <name>`, before reading anything
//! (server-first protocols such as SMTP or MySQL must work through the mesh). Then:
//! - by default it reads until the client ends its side (half-close), hashing what
//!   arrived, and answers `received <n> sha256 <hex>` on the still-open other half,
//!   then closes: the client's FIN must reach the app without tearing down the reply;
//! - if the client's first line is `send <n>`, it answers `sending <n> sha256 <hex>`,
//!   then n pseudo-random bytes (seed n), then ends its own side while still reading:
//!   what the client sends after that is counted and logged
//!   (`raw: <m> bytes received after the app's FIN`), the other direction of half-close.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::body::{CHUNK, Seeded, Source, hex, sha256_of};

/// How long to wait for the rest of a first line that looks like `send`.
const FIRST_LINE_WAIT: Duration = Duration::from_secs(5);
/// The longest first line taken as a command.
const MAX_COMMAND: usize = 32;

/// Serves one raw connection.
pub async fn serve(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream
        .write_all(format!("weft-demo-app raw {name}\n").as_bytes())
        .await?;
    let mut first = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    // Read what may be a command line: up to a newline, MAX_COMMAND bytes or EOF.
    let mut eof = false;
    while !first.contains(&b'\n') && first.len() < MAX_COMMAND {
        match tokio::time::timeout(FIRST_LINE_WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0)) => {
                eof = true;
                break;
            }
            Ok(Ok(n)) => first.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    if let Some(n) = send_command(&first) {
        return send_then_count(stream, n, &mut buf).await;
    }
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(&first);
    let mut total = first.len() as u64;
    while !eof {
        let n = stream.read(&mut buf).await?;
        eof = n == 0;
        digest.update(&buf[..n]);
        total += n as u64;
    }
    let sha = hex(digest.finish().as_ref());
    tracing::info!(bytes = total, %sha, "raw: the client ended its side");
    stream
        .write_all(format!("received {total} sha256 {sha}\n").as_bytes())
        .await?;
    stream.shutdown().await
}

/// `send <n>\n` as a command.
fn send_command(first: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(first).ok()?.strip_suffix('\n')?;
    line.strip_prefix("send ")?.trim().parse().ok()
}

/// Sends `n` seeded bytes, ends its side, then counts what still comes in.
async fn send_then_count(mut stream: TcpStream, n: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let source = Source::Seeded(n);
    let sha = sha256_of(n, source);
    stream
        .write_all(format!("sending {n} sha256 {sha}\n").as_bytes())
        .await?;
    let mut seeded = Seeded::new(n);
    let mut left = n;
    while left > 0 {
        let len = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        seeded.fill(&mut buf[..len]);
        stream.write_all(&buf[..len]).await?;
        left -= len as u64;
    }
    stream.shutdown().await?;
    let mut after = 0u64;
    loop {
        let got = stream.read(buf).await?;
        if got == 0 {
            break;
        }
        after += got as u64;
    }
    tracing::info!("raw: {after} bytes received after the app's FIN");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::send_command;

    #[test]
    fn only_a_whole_send_line_is_a_command() {
        assert_eq!(send_command(b"send 42\n"), Some(42));
        assert_eq!(send_command(b"send 42"), None);
        assert_eq!(send_command(b"hello\n"), None);
        assert_eq!(send_command(b"send x\n"), None);
    }
}
