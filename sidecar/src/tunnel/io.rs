//! An HTTP/2 stream as a byte pipe: `AsyncRead + AsyncWrite` over h2's send and receive
//! halves, for the code that needs a stream (HTTP served or sent over a tunnel stream),
//! and the buffers [`super::splice`] moves bytes with, copy-free.
//!
//! Flow control follows the consumer: received window is released only when the bytes
//! were handed to the reader (or written to the socket by the splice), so a slow app
//! stalls its own stream (and only its own), never the connection, and memory per
//! stream stays bounded by the window.
//!
//! Writes are gathered: bytes written are kept until a flush (or [`GATHER`] bytes) and
//! then leave as one DATA frame, so a response written as headers then body is one frame
//! and one TLS record, not one per `poll_write`. Received chunks are queued as h2 hands
//! them over, and every chunk already received leaves in one read.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes gathered before they are sent without waiting for a flush; also what one read
/// of the splice takes from a socket at most.
pub(super) const GATHER: usize = 64 * 1024;
/// Smallest allocation of the gather buffer.
const WRITE_BLOCK: usize = 8 * 1024;
/// Received chunks queued at most (one vectored write's worth).
pub(super) const MAX_QUEUED: usize = 64;

/// Bidirectional byte stream over one h2 stream. END_STREAM is EOF in both directions
/// (`poll_shutdown` sends it); RST_STREAM surfaces as an I/O error.
pub struct H2Io {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Written and not yet handed to h2; also where the splice reads the socket into.
    pub(super) out: BytesMut,
    /// END_STREAM sent.
    ended: bool,
    /// Received from h2 and not yet handed to the reader.
    pub(super) queued: VecDeque<Bytes>,
    recv_done: bool,
    /// A receive error seen after data was queued, reported once the queue is empty.
    failed: Option<io::Error>,
}

impl H2Io {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Io {
            send,
            recv,
            out: BytesMut::new(),
            ended: false,
            queued: VecDeque::new(),
            recv_done: false,
            failed: None,
        }
    }

    /// Aborts the stream (RST_STREAM CANCEL), e.g. when the other side failed.
    pub fn abort(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }

    /// Queues every chunk h2 already received (up to [`MAX_QUEUED`]); registers for
    /// more when there is none. Errors and the end are kept for [`Self::poll_end`].
    pub(super) fn fill(&mut self, cx: &mut Context<'_>) {
        while self.queued.len() < MAX_QUEUED && !self.recv_done && self.failed.is_none() {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) if data.is_empty() => {}
                Poll::Ready(Some(Ok(data))) => self.queued.push_back(data),
                Poll::Ready(Some(Err(e))) => self.failed = Some(h2_to_io(e)),
                Poll::Ready(None) => self.recv_done = true,
                Poll::Pending => return,
            }
        }
    }

    /// Drops `n` queued bytes the consumer took, and gives their window back to the
    /// sender.
    pub(super) fn consume(&mut self, mut n: usize) {
        let _ = self.recv.flow_control().release_capacity(n);
        while n > 0 {
            let Some(front) = self.queued.front_mut() else {
                return;
            };
            let k = n.min(front.len());
            front.advance(k);
            n -= k;
            if front.is_empty() {
                self.queued.pop_front();
            }
        }
    }

    /// With the queue empty: `Ready(Ok(true))` at the end of the received stream,
    /// `Ready(Err)` after a reset, `Pending` while more may come.
    pub(super) fn poll_end(&mut self) -> Poll<io::Result<bool>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Err(e));
        }
        if self.recv_done {
            return Poll::Ready(Ok(true));
        }
        Poll::Pending
    }

    /// Hands every gathered byte to h2 as flow control allows (one DATA frame per grant
    /// of capacity); with `end`, the last one carries END_STREAM (sent alone when
    /// nothing is gathered). `Ready(Ok)` once nothing is left.
    pub(super) fn poll_push(&mut self, cx: &mut Context<'_>, end: bool) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            self.send.reserve_capacity(self.out.len());
            let mut cap = self.send.capacity();
            if cap == 0 {
                cap = match ready!(self.send.poll_capacity(cx)) {
                    Some(Ok(n)) => n,
                    Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                    None => return Poll::Ready(Err(closed())),
                };
            }
            let chunk = self.out.split_to(cap.min(self.out.len())).freeze();
            let last = end && self.out.is_empty();
            self.send.send_data(chunk, last).map_err(h2_to_io)?;
            self.ended |= last;
        }
        if end && !self.ended {
            self.ended = true;
            match self.send.send_data(Bytes::new(), true) {
                Err(e) if e.is_io() => return Poll::Ready(Err(h2_to_io(e))),
                // Already closed or reset: nothing left to end.
                _ => {}
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "tunnel stream closed")
}

pub(super) fn h2_to_io(e: h2::Error) -> io::Error {
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
        // An error or the end that shows up after some data was queued is reported once
        // the data was read, so a reset is never reported as a clean end.
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        this.fill(cx);
        let mut copied = 0;
        for chunk in &this.queued {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            copied += n;
            if buf.remaining() == 0 {
                break;
            }
        }
        if copied > 0 {
            // Release only what the reader actually took.
            this.consume(copied);
            return Poll::Ready(Ok(()));
        }
        this.poll_end().map_ok(|_| ())
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(Err(closed()));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        if this.out.len() >= GATHER {
            // Full: what was gathered must leave (as the window allows) first.
            ready!(this.poll_push(cx, false))?;
        }
        let room = GATHER - this.out.len();
        let want = total.min(room);
        if this.out.capacity() - this.out.len() < want {
            // Reserved in blocks, so small writes share one allocation across flushes.
            this.out.reserve(want.max(WRITE_BLOCK));
        }
        let mut n = 0;
        for b in bufs {
            let k = b.len().min(room - n);
            this.out.extend_from_slice(&b[..k]);
            n += k;
            if n == room {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_push(cx, false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // END_STREAM = FIN, with the last gathered bytes: the other direction stays open.
        self.poll_push(cx, true)
    }
}
