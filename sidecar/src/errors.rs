//! Errors the mesh itself answers with. Each carries `weft-error-code: WEFT-<n>` so a
//! client can tell a mesh failure from an app's own response (the header is stripped
//! from app responses); gRPC requests get a Trailers-Only response with the mapped
//! `grpc-status` instead of an HTTP error page.
//!
//! | code | HTTP | gRPC | meaning |
//! |---|---|---|---|
//! | WEFT-1 | 404 | 12 UNIMPLEMENTED | no route for this host / service unknown here |
//! | WEFT-2 | 503 | 14 UNAVAILABLE | no healthy endpoint |
//! | WEFT-3 | 502 | 14 UNAVAILABLE | upstream refused, reset, or spoke invalid HTTP |
//! | WEFT-4 | 504 | 4 DEADLINE_EXCEEDED | upstream timed out |
//! | WEFT-5 | 431 | 8 RESOURCE_EXHAUSTED | header section too large |
//! | WEFT-6 | 400 | 13 INTERNAL | malformed request |
//! | WEFT-7 | — | 12 UNIMPLEMENTED | gRPC sent to a service declared `http` (HTTP/1.1) |
//! | WEFT-8 | 421 | 14 UNAVAILABLE | misdirected request on a coalesced connection |
//! | WEFT-9 | 502 | 14 UNAVAILABLE | upgrade the app cannot take (e.g. WebSocket to an h2 app without RFC 8441) |

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};

/// The header only the mesh may set.
pub const ERROR_CODE_HEADER: &str = "weft-error-code";

/// Response body type used throughout the HTTP paths.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Wraps bytes as a [`Body`].
/// Why gRPC cannot reach a service declared `http`, and the fix.
pub fn grpc_to_http_message(service: &str) -> String {
    format!(
        "service {service} is declared `http` (HTTP/1.1), which cannot carry gRPC; run `weftctl service set-protocol {service} grpc`"
    )
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The kinds of error the mesh answers itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeshError {
    NoRoute,
    NoEndpoint,
    UpstreamFailed,
    UpstreamTimeout,
    HeaderTooLarge,
    BadRequest,
    GrpcToHttp1,
    Misdirected,
    UpgradeUnsupported,
}

impl MeshError {
    pub fn code(self) -> &'static str {
        match self {
            MeshError::NoRoute => "WEFT-1",
            MeshError::NoEndpoint => "WEFT-2",
            MeshError::UpstreamFailed => "WEFT-3",
            MeshError::UpstreamTimeout => "WEFT-4",
            MeshError::HeaderTooLarge => "WEFT-5",
            MeshError::BadRequest => "WEFT-6",
            MeshError::GrpcToHttp1 => "WEFT-7",
            MeshError::Misdirected => "WEFT-8",
            MeshError::UpgradeUnsupported => "WEFT-9",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            MeshError::NoRoute => StatusCode::NOT_FOUND,
            MeshError::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            MeshError::UpstreamFailed | MeshError::UpgradeUnsupported => StatusCode::BAD_GATEWAY,
            MeshError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            MeshError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            MeshError::BadRequest => StatusCode::BAD_REQUEST,
            MeshError::GrpcToHttp1 => StatusCode::OK,
            MeshError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    pub fn grpc_status(self) -> u32 {
        match self {
            MeshError::NoRoute | MeshError::GrpcToHttp1 => 12,
            MeshError::NoEndpoint
            | MeshError::UpstreamFailed
            | MeshError::Misdirected
            | MeshError::UpgradeUnsupported => 14,
            MeshError::UpstreamTimeout => 4,
            MeshError::HeaderTooLarge => 8,
            MeshError::BadRequest => 13,
        }
    }

    /// The response for a request; `grpc` selects the Trailers-Only form.
    pub fn response(self, message: &str, grpc: bool) -> Response<Body> {
        if grpc {
            return grpc_trailers_only(self.grpc_status(), message, Some(self.code()));
        }
        let mut resp = Response::new(full(format!("{}: {message}\n", self.code())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(ERROR_CODE_HEADER, HeaderValue::from_static(self.code()));
        resp
    }
}

/// Percent-encodes a grpc-message (gRPC HTTP/2 spec: bytes outside 0x20..0x7E and '%').
pub fn grpc_message_encode(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Trailers-Only gRPC response: one HEADERS frame with END_STREAM (the empty body
/// reports end-of-stream, so hyper's h2 server sets the flag on the headers).
pub fn grpc_trailers_only(
    status: u32,
    message: &str,
    code: Option<&'static str>,
) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(status));
    if let Ok(v) = HeaderValue::from_str(&grpc_message_encode(message)) {
        h.insert("grpc-message", v);
    }
    if let Some(code) = code {
        h.insert(ERROR_CODE_HEADER, HeaderValue::from_static(code));
    }
    resp
}

/// Whether a request is gRPC (by content type).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct == "application/grpc"
                || ct.starts_with("application/grpc+")
                || ct.starts_with("application/grpc;")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    #[test]
    fn grpc_errors_are_trailers_only() {
        let r = MeshError::GrpcToHttp1.response("use grpc: 100%", true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "12");
        assert_eq!(r.headers()["grpc-message"], "use grpc: 100%25");
        assert_eq!(r.headers()[ERROR_CODE_HEADER], "WEFT-7");
        assert!(r.body().is_end_stream(), "must end on the HEADERS frame");
    }

    #[tokio::test]
    async fn http_errors_carry_the_code() {
        let r = MeshError::NoEndpoint.response("no healthy endpoint for web", false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[ERROR_CODE_HEADER], "WEFT-2");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"WEFT-2: no healthy endpoint"));
    }
}
