//! Splicing a socket with a tunnel stream, without a copy in between: bytes read from
//! the socket land in the stream's gather buffer and go to h2 as frozen `Bytes` (rustls
//! encrypts straight from them); chunks h2 received are written to the socket as they
//! are, every chunk already received in one vectored write. Window is given back as
//! bytes reach the socket, so a slow reader stalls only its own stream.
//!
//! Half-closes propagate like [`crate::io::splice`]: the socket's FIN becomes
//! END_STREAM (on the last DATA frame when one is waiting), END_STREAM becomes a FIN.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::io::{GATHER, H2Io, MAX_QUEUED};

/// Spare room below which the read buffer is grown before reading the socket.
const MIN_READ: usize = 4 * 1024;

/// Copies both ways between `sock` and `tunnel` until both directions ended; returns
/// the bytes sent into the tunnel and the bytes written to `sock`.
pub async fn splice<S>(sock: &mut S, tunnel: &mut H2Io) -> io::Result<(u64, u64)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut up, mut down) = (Dir::default(), Dir::default());
    std::future::poll_fn(|cx| {
        if !up.done {
            if let Poll::Ready(r) = poll_up(sock, tunnel, &mut up, cx) {
                r?;
                up.done = true;
            }
        }
        if !down.done {
            if let Poll::Ready(r) = poll_down(sock, tunnel, &mut down, cx) {
                r?;
                down.done = true;
            }
        }
        if up.done && down.done {
            Poll::Ready(Ok((up.bytes, down.bytes)))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// State of one direction.
#[derive(Default)]
struct Dir {
    bytes: u64,
    /// The source ended (socket FIN; unused for the way down).
    eof: bool,
    /// Written since the last flush.
    unflushed: bool,
    done: bool,
}

/// Socket to tunnel: read into the gather buffer, hand it to h2 as flow control allows;
/// while the window is closed, keep reading up to [`GATHER`] so the bytes leave
/// together.
fn poll_up<S>(
    sock: &mut S,
    t: &mut H2Io,
    st: &mut Dir,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>>
where
    S: AsyncRead + Unpin,
{
    loop {
        let pushed = t.poll_push(cx, st.eof)?;
        if st.eof || (pushed.is_pending() && t.out.len() >= GATHER) {
            return pushed.map(Ok);
        }
        if t.out.capacity() - t.out.len() < MIN_READ {
            t.out.reserve(GATHER);
        }
        let n = ready!(std::pin::pin!(sock.read_buf(&mut t.out)).poll(cx))?;
        if n == 0 {
            st.eof = true;
        }
        st.bytes += n as u64;
    }
}

/// Tunnel to socket: every received chunk, several per vectored write; the window of
/// what was written is released; a flush before waiting for more; FIN at the end.
fn poll_down<S>(
    sock: &mut S,
    t: &mut H2Io,
    st: &mut Dir,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>>
where
    S: AsyncWrite + Unpin,
{
    loop {
        t.fill(cx);
        if !t.queued.is_empty() {
            let n = if sock.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_QUEUED];
                let k = t.queued.len().min(MAX_QUEUED);
                for (s, b) in slices.iter_mut().zip(&t.queued) {
                    *s = IoSlice::new(b);
                }
                ready!(Pin::new(&mut *sock).poll_write_vectored(cx, &slices[..k]))?
            } else {
                ready!(Pin::new(&mut *sock).poll_write(cx, &t.queued[0]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            t.consume(n);
            st.bytes += n as u64;
            st.unflushed = true;
            continue;
        }
        if st.unflushed {
            ready!(Pin::new(&mut *sock).poll_flush(cx))?;
            st.unflushed = false;
        }
        ready!(t.poll_end())?;
        return Pin::new(&mut *sock).poll_shutdown(cx);
    }
}
