//! Request bodies that can be sent again: a request an endpoint did not process (its app
//! refused the connection, `REFUSED_STREAM`, a stream above its GOAWAY's last id) goes
//! to another endpoint with its body, as long as every byte read from the client so far
//! is still held.
//!
//! The body streams to the first endpoint as it arrives (nothing waits for it to end);
//! a copy of what passed is kept up to [`REPLAY_LIMIT`]. Past the limit the copy is
//! dropped and the request can no longer be re-sent; once an endpoint took the request
//! ([`Replayable::settle`]) the copy is dropped too. A re-sent body replays the copy,
//! then continues with the rest of the client's body. Each re-send supersedes the
//! attempt before it, whose body then fails (its stream is reset): only the newest
//! attempt reads from the client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;

use crate::errors::{Body, BoxError, boxed};

/// The most of a request body kept for sending it again (per request in progress,
/// until an endpoint took it).
pub const REPLAY_LIMIT: usize = 64 * 1024;

/// Why a superseded attempt's body ends.
#[derive(Debug, thiserror::Error)]
#[error("the request was sent to another endpoint")]
struct Superseded;

struct Shared {
    /// The client's body, until it ended or failed.
    inner: Option<Body>,
    /// What was read from it, while it fits in [`REPLAY_LIMIT`].
    kept: Vec<Bytes>,
    kept_len: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// The copy was dropped (over the limit, the body failed, or the request settled).
    spent: bool,
    /// The attempt that may read.
    current: u64,
}

/// A request body and the copy that lets it be sent again.
pub struct Replayable {
    shared: Arc<Mutex<Shared>>,
    hint: SizeHint,
    empty: bool,
}

impl Replayable {
    /// Wraps `body`; [`Replayable::first`] is what the first attempt sends.
    pub fn new(body: Body) -> Self {
        let (hint, empty) = (body.size_hint(), body.is_end_stream());
        Replayable {
            shared: Arc::new(Mutex::new(Shared {
                inner: Some(body),
                kept: Vec::new(),
                kept_len: 0,
                trailers: None,
                ended: empty,
                spent: false,
                current: 0,
            })),
            hint,
            empty,
        }
    }

    /// The body of the first attempt.
    pub fn first(&self) -> Body {
        self.body(0)
    }

    /// The body for one more attempt, from the first byte, or `None` when the copy was
    /// dropped (more than [`REPLAY_LIMIT`] was already read, or the body failed).
    pub fn again(&self) -> Option<Body> {
        let generation = {
            let mut s = self.shared.lock();
            if s.spent {
                return None;
            }
            s.current += 1;
            s.current
        };
        Some(self.body(generation))
    }

    /// An endpoint took the request: the copy is no longer needed.
    pub fn settle(&self) {
        let mut s = self.shared.lock();
        s.spent = true;
        s.kept = Vec::new();
    }

    fn body(&self, generation: u64) -> Body {
        boxed(Attempt {
            shared: self.shared.clone(),
            generation,
            next: 0,
            trailers_sent: false,
            hint: self.hint,
            empty: self.empty,
        })
    }
}

/// One attempt's view of the body.
struct Attempt {
    shared: Arc<Mutex<Shared>>,
    generation: u64,
    /// Index of the next kept chunk to hand out.
    next: usize,
    trailers_sent: bool,
    hint: SizeHint,
    empty: bool,
}

impl http_body::Body for Attempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock();
        if s.current != this.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        // What an earlier attempt read first (every chunk read while the copy is kept
        // is kept, so an attempt that caught up reads on from the client).
        if !s.spent && this.next < s.kept.len() {
            let chunk = s.kept[this.next].clone();
            this.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if s.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(inner) = s.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                s.inner = None;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A body that failed cannot be sent again.
                s.inner = None;
                s.spent = true;
                s.kept = Vec::new();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if !s.spent {
                            if s.kept_len + data.len() > REPLAY_LIMIT {
                                s.spent = true;
                                s.kept = Vec::new();
                            } else {
                                s.kept_len += data.len();
                                s.kept.push(data.clone());
                                this.next = s.kept.len();
                            }
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(frame) => frame,
                };
                if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.ended = true;
                    s.inner = None;
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.empty
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::full;
    use http_body_util::{BodyExt as _, StreamBody};

    fn chunked(chunks: Vec<Vec<u8>>, trailers: Option<HeaderMap>) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from(c))))
            .collect();
        if let Some(t) = trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        boxed(StreamBody::new(futures_util::stream::iter(frames)))
    }

    async fn read_all(body: Body) -> Result<(Vec<u8>, Option<HeaderMap>), BoxError> {
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes().to_vec(), trailers))
    }

    /// Reads `n` data bytes or more, as an attempt refused mid-body would have.
    async fn read_some(body: &mut Body, n: usize) {
        let mut got = 0;
        while got < n {
            let f = body.frame().await.unwrap().unwrap();
            got += f.data_ref().map_or(0, |d| d.len());
        }
    }

    #[tokio::test]
    async fn a_body_partly_sent_is_sent_again_whole_with_its_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "7".parse().unwrap());
        let chunks: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 1000]).collect();
        let whole: Vec<u8> = chunks.concat();
        let r = Replayable::new(chunked(chunks, Some(t.clone())));
        let mut first = r.first();
        read_some(&mut first, 2000).await;
        let second = r.again().expect("under the limit: can be sent again");
        // The superseded attempt reads no further.
        assert!(first.frame().await.unwrap().is_err());
        let (bytes, trailers) = read_all(second).await.unwrap();
        assert_eq!(bytes, whole);
        assert_eq!(trailers, Some(t));
        // Read to the end, it can still be sent again (a refusal after the whole body).
        let (bytes, _) = read_all(r.again().unwrap()).await.unwrap();
        assert_eq!(bytes, whole);
    }

    #[tokio::test]
    async fn over_the_limit_a_body_streams_on_but_cannot_be_sent_again() {
        let chunks: Vec<Vec<u8>> = (0..4).map(|_| vec![1u8; REPLAY_LIMIT / 2]).collect();
        let r = Replayable::new(chunked(chunks, None));
        let mut first = r.first();
        read_some(&mut first, REPLAY_LIMIT / 2).await;
        assert!(r.again().is_some(), "half the limit read: still possible");
        let mut second = r.again().unwrap();
        read_some(&mut second, REPLAY_LIMIT + 1).await;
        assert!(r.again().is_none(), "past the limit: not replayable");
        let (rest, _) = read_all(second).await.unwrap();
        assert_eq!(
            rest.len(),
            REPLAY_LIMIT / 2,
            "the body streams on to its end"
        );
    }

    #[tokio::test]
    async fn a_settled_request_keeps_no_copy() {
        let r = Replayable::new(full(Bytes::from_static(b"hello")));
        let (bytes, _) = read_all(r.first()).await.unwrap();
        assert_eq!(bytes, b"hello");
        r.settle();
        assert!(r.again().is_none());
        assert!(r.shared.lock().kept.is_empty());
    }

    #[tokio::test]
    async fn size_and_end_are_those_of_the_original() {
        let r = Replayable::new(full(Bytes::from_static(b"12345")));
        assert_eq!(r.first().size_hint().exact(), Some(5));
        assert!(!r.first().is_end_stream());
        let empty = Replayable::new(full(Bytes::new()));
        assert!(empty.first().is_end_stream());
        assert!(read_all(empty.again().unwrap()).await.unwrap().0.is_empty());
    }
}
