//! Which HTTP version the client inside a tunnel stream speaks: read until the bytes
//! either match or leave the HTTP/2 connection preface. One pass over what the client
//! sent first, no timeouts, and every byte read is replayed to whoever handles the
//! stream next.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the start of the stream. Returns whether it is the HTTP/2 preface, and the
/// bytes read (to be replayed).
pub async fn sniff<R: AsyncRead + Unpin>(io: &mut R) -> io::Result<(bool, Bytes)> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if io.read_buf(&mut buf).await? == 0 {
            return Ok((false, buf.freeze()));
        }
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Ok((false, buf.freeze()));
        }
        if buf.len() >= PREFACE.len() {
            return Ok((true, buf.freeze()));
        }
    }
}

/// An IO that first yields `prefix`, then reads from `inner`. Writes go to `inner`.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Rewind { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn detects_preface_split_across_reads() {
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(&PREFACE[..5]).await.unwrap();
            a.flush().await.unwrap();
            tokio::task::yield_now().await;
            a.write_all(&PREFACE[5..]).await.unwrap();
            a.write_all(b"\x00\x00").await.unwrap();
        });
        let (h2, bytes) = sniff(&mut b).await.unwrap();
        assert!(h2);
        assert!(bytes.starts_with(PREFACE));
    }

    #[tokio::test]
    async fn h1_is_decided_at_the_first_byte() {
        let (mut a, mut b) = tokio::io::duplex(64);
        use tokio::io::AsyncWriteExt;
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (h2, bytes) = sniff(&mut b).await.unwrap();
        assert!(!h2);
        let mut r = Rewind::new(bytes, b);
        let mut got = vec![0u8; 16];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
    }
}
