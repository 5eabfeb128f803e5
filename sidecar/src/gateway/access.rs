//! The access log: one line per request on the `weft::access` target (JSON with
//! `--log-format json`), written when the response body has been sent or abandoned
//! (see [`super::body::ResponseBody`]), so bytes and duration cover the whole
//! exchange, streams included.

use std::net::SocketAddr;
use std::time::Instant;

/// Everything known about a request when its response headers go out.
pub struct AccessRecord {
    pub started: Instant,
    pub client: SocketAddr,
    pub host: String,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub inbound: &'static str,
    /// The protocol spoken into the mesh (always HTTP/2) and the endpoint, if any.
    pub upstream_protocol: &'static str,
    pub upstream: String,
    pub grpc: bool,
    pub error_code: &'static str,
}

impl AccessRecord {
    /// Writes the line: `bytes` of response body sent, `complete` if it ended.
    pub fn log(self, bytes: u64, complete: bool) {
        tracing::info!(
            target: "weft::access",
            client = %self.client,
            host = %self.host,
            method = %self.method,
            path = %self.path,
            status = self.status,
            inbound = self.inbound,
            upstream_protocol = self.upstream_protocol,
            upstream = %self.upstream,
            grpc = self.grpc,
            bytes,
            complete,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            error_code = %self.error_code,
            "request"
        );
    }
}
