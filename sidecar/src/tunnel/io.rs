//! An HTTP/2 stream as a byte pipe: `AsyncRead + AsyncWrite` over h2's send and receive
//! halves, so the tunnel can be spliced with `copy_bidirectional` like a TCP socket.
//!
//! Flow control follows the consumer: received window is released only when the bytes
//! were handed to the reader, so a slow app stalls its own stream (and only its own),
//! never the connection, and memory per stream stays bounded by the window.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bidirectional byte stream over one h2 stream. END_STREAM is EOF in both directions
/// (`poll_shutdown` sends it); RST_STREAM surfaces as an I/O error.
pub struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    pending: Bytes,
    recv_done: bool,
    /// A receive error seen after data was handed over, reported on the next read.
    failed: Option<io::Error>,
}

impl H2Io {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Io {
            send,
            recv,
            pending: Bytes::new(),
            recv_done: false,
            failed: None,
        }
    }

    /// Aborts the stream (RST_STREAM CANCEL), e.g. when the other side failed.
    pub fn abort(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    match e.reason() {
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => {
            io::Error::new(io::ErrorKind::ConnectionReset, e)
        }
        _ => io::Error::other(e),
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Hand over every chunk already received (up to the reader's buffer), so a
        // response's headers and body, sent as separate DATA frames, leave in one write.
        // An error or the end that shows up after some data was copied is kept for the
        // next read, so a reset is never reported as a clean end.
        let mut copied = false;
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                // Release only what the reader actually took.
                let _ = self.recv.flow_control().release_capacity(n);
                copied = true;
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
            }
            if self.recv_done {
                return Poll::Ready(Ok(()));
            }
            if self.failed.is_some() {
                return match (copied, self.failed.take()) {
                    (false, Some(e)) => Poll::Ready(Err(e)),
                    (_, e) => {
                        self.failed = e;
                        Poll::Ready(Ok(()))
                    }
                };
            }
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => self.pending = data,
                Poll::Ready(Some(Err(e))) => self.failed = Some(h2_to_io(e)),
                Poll::Ready(None) => self.recv_done = true,
                Poll::Pending if copied => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    self.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "tunnel stream closed",
                    )));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // END_STREAM = FIN: the other direction stays open.
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) if e.is_io() => Poll::Ready(Err(h2_to_io(e))),
            // Already closed or reset: nothing left to end.
            Err(_) => Poll::Ready(Ok(())),
        }
    }
}
