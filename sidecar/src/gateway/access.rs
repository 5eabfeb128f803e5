//! The access log: one line per request on the `weft::access` target (JSON with
//! `--log-format json`), written when the response body has been sent or abandoned, so
//! bytes and duration cover the whole exchange, streams included.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::errors::Body;

/// Everything known about a request when its response headers go out.
pub struct AccessRecord {
    pub started: Instant,
    pub client: SocketAddr,
    pub host: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub inbound: &'static str,
    /// The protocol spoken into the mesh (always HTTP/2) and the endpoint, if any.
    pub upstream_protocol: &'static str,
    pub upstream: String,
    pub grpc: bool,
    pub error_code: String,
}

/// Wraps a response body; counts its bytes and logs the record when it is dropped.
pub struct Logged {
    inner: Body,
    bytes: u64,
    complete: bool,
    record: Option<AccessRecord>,
}

impl Logged {
    pub fn new(inner: Body, record: AccessRecord) -> Self {
        Logged {
            inner,
            bytes: 0,
            complete: false,
            record: Some(record),
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => self.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // Kept exact: hyper's h2 server ends Trailers-Only responses on HEADERS by it.
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let Some(r) = self.record.take() else { return };
        let complete = self.complete || self.inner.is_end_stream();
        tracing::info!(
            target: "weft::access",
            client = %r.client,
            host = %r.host,
            method = %r.method,
            path = %r.path,
            status = r.status,
            inbound = r.inbound,
            upstream_protocol = r.upstream_protocol,
            upstream = %r.upstream,
            grpc = r.grpc,
            bytes = self.bytes,
            complete,
            duration_ms = r.started.elapsed().as_secs_f64() * 1000.0,
            error_code = %r.error_code,
            "request"
        );
    }
}
