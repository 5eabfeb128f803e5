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
//! | WEFT-6 | 400 | 13 INTERNAL | malformed request (405 for a plain CONNECT: the mesh opens no tunnels for clients) |
//! | WEFT-7 | — | 12 UNIMPLEMENTED | gRPC sent to a service declared `http` (HTTP/1.1) |
//! | WEFT-8 | 421 | 14 UNAVAILABLE | misdirected request on a coalesced connection |
//! | WEFT-9 | 502 | 14 UNAVAILABLE | upgrade the app cannot take (e.g. WebSocket to an h2 app without RFC 8441) |
//! | WEFT-10 | 403 | 7 PERMISSION_DENIED | the caller's identity may not reach this service |
//! | WEFT-11 | 503 | 14 UNAVAILABLE | overloaded: every stream to the endpoint is busy and its queue is full |
//! | WEFT-12 | 502 | 12 UNIMPLEMENTED | HTTP routed to a service declared `tcp` |
//!
//! A request's [`Respond`] is decided once, when it arrives (gRPC or not), and every
//! refusal on its way is a [`Rejection`] turned into a response by it.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};

/// The header only the mesh may set.
pub const ERROR_CODE_HEADER: &str = "weft-error-code";
/// [`ERROR_CODE_HEADER`] parsed once, for the lookups every request makes (a `&str` key
/// is validated and lower-cased again at each lookup: 900 instructions per request).
pub static ERROR_CODE_NAME: HeaderName = HeaderName::from_static(ERROR_CODE_HEADER);

/// Any error a body may end with (the client's, the app's, a timeout of the mesh).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type used throughout the HTTP paths.
pub type Body = BoxBody<Bytes, BoxError>;

/// Why gRPC cannot reach a service declared `http`, and the fix.
pub fn grpc_to_http_message(service: &str) -> String {
    format!(
        "service {service} is declared `http` (HTTP/1.1), which cannot carry gRPC; run `weftctl service set-protocol {service} grpc`"
    )
}

/// Any body as a [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Wraps bytes as a [`Body`].
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
    /// A plain CONNECT (not a WebSocket): answered 405 with `Allow`.
    Connect,
    GrpcToHttp1,
    Misdirected,
    UpgradeUnsupported,
    PermissionDenied,
    Overloaded,
    NotHttp,
}

const ALL: &[MeshError] = &[
    MeshError::NoRoute,
    MeshError::NoEndpoint,
    MeshError::UpstreamFailed,
    MeshError::UpstreamTimeout,
    MeshError::HeaderTooLarge,
    MeshError::BadRequest,
    MeshError::GrpcToHttp1,
    MeshError::Misdirected,
    MeshError::UpgradeUnsupported,
    MeshError::PermissionDenied,
    MeshError::Overloaded,
    MeshError::NotHttp,
];

impl MeshError {
    pub fn code(self) -> &'static str {
        match self {
            MeshError::NoRoute => "WEFT-1",
            MeshError::NoEndpoint => "WEFT-2",
            MeshError::UpstreamFailed => "WEFT-3",
            MeshError::UpstreamTimeout => "WEFT-4",
            MeshError::HeaderTooLarge => "WEFT-5",
            MeshError::BadRequest | MeshError::Connect => "WEFT-6",
            MeshError::GrpcToHttp1 => "WEFT-7",
            MeshError::Misdirected => "WEFT-8",
            MeshError::UpgradeUnsupported => "WEFT-9",
            MeshError::PermissionDenied => "WEFT-10",
            MeshError::Overloaded => "WEFT-11",
            MeshError::NotHttp => "WEFT-12",
        }
    }

    /// The error a `weft-error-code` value names.
    pub fn from_code(code: &[u8]) -> Option<MeshError> {
        ALL.iter().copied().find(|e| e.code().as_bytes() == code)
    }

    pub fn status(self) -> StatusCode {
        match self {
            MeshError::NoRoute => StatusCode::NOT_FOUND,
            MeshError::NoEndpoint | MeshError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            MeshError::UpstreamFailed | MeshError::UpgradeUnsupported | MeshError::NotHttp => {
                StatusCode::BAD_GATEWAY
            }
            MeshError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            MeshError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            MeshError::BadRequest => StatusCode::BAD_REQUEST,
            MeshError::Connect => StatusCode::METHOD_NOT_ALLOWED,
            MeshError::GrpcToHttp1 => StatusCode::OK,
            MeshError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            MeshError::PermissionDenied => StatusCode::FORBIDDEN,
        }
    }

    pub fn grpc_status(self) -> u32 {
        match self {
            MeshError::NoRoute | MeshError::GrpcToHttp1 | MeshError::NotHttp => 12,
            MeshError::NoEndpoint
            | MeshError::UpstreamFailed
            | MeshError::Misdirected
            | MeshError::UpgradeUnsupported
            | MeshError::Overloaded => 14,
            MeshError::PermissionDenied => 7,
            MeshError::UpstreamTimeout => 4,
            MeshError::HeaderTooLarge => 8,
            MeshError::BadRequest | MeshError::Connect => 13,
        }
    }

    /// The response for a request; `grpc` selects the Trailers-Only form.
    fn response(self, message: &str, grpc: bool) -> Response<Body> {
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
        if self == MeshError::Connect {
            h.insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        resp
    }
}

/// A request the mesh refuses or could not carry, and the reason for the client. The
/// message reaches public clients: it names services and fixes, never an internal
/// address (log those where the failure is seen).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", .error.code())]
pub struct Rejection {
    pub error: MeshError,
    pub message: String,
}

impl Rejection {
    pub fn new(error: MeshError, message: impl Into<String>) -> Self {
        Rejection {
            error,
            message: message.into(),
        }
    }

    /// A malformed request (400, `WEFT-6`).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Rejection::new(MeshError::BadRequest, message)
    }
}

/// How the mesh answers a request it refuses: decided once per request, from the
/// request itself, and carried with it instead of a flag passed through every call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Respond {
    /// An HTTP error page with the status and `weft-error-code`.
    Http,
    /// A Trailers-Only gRPC response with the mapped `grpc-status`.
    Grpc,
}

impl Respond {
    /// How to answer `req`: gRPC clients (by content type) get gRPC statuses.
    pub fn to<B>(req: &http::Request<B>) -> Self {
        if is_grpc(req) {
            Respond::Grpc
        } else {
            Respond::Http
        }
    }

    pub fn is_grpc(self) -> bool {
        self == Respond::Grpc
    }

    /// The response the mesh makes for `rejection`.
    pub fn reject(self, rejection: &Rejection) -> Response<Body> {
        rejection.error.response(&rejection.message, self.is_grpc())
    }

    /// The response for `error` with `message`.
    pub fn error(self, error: MeshError, message: &str) -> Response<Body> {
        error.response(message, self.is_grpc())
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
        let r = Respond::Grpc.error(MeshError::GrpcToHttp1, "use grpc: 100%");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "12");
        assert_eq!(r.headers()["grpc-message"], "use grpc: 100%25");
        assert_eq!(r.headers()[ERROR_CODE_HEADER], "WEFT-7");
        assert!(r.body().is_end_stream(), "must end on the HEADERS frame");
    }

    #[tokio::test]
    async fn http_errors_carry_the_code() {
        let r = Respond::Http.error(MeshError::NoEndpoint, "no healthy endpoint for web");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[ERROR_CODE_HEADER], "WEFT-2");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"WEFT-2: no healthy endpoint"));
    }

    #[test]
    fn permission_denied_is_403_or_grpc_7() {
        let denied = Rejection::new(MeshError::PermissionDenied, "rule 7 denies gateway:edge");
        let r = Respond::Http.reject(&denied);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[ERROR_CODE_HEADER], "WEFT-10");
        let r = Respond::Grpc.reject(&denied);
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(r.headers()[ERROR_CODE_HEADER], "WEFT-10");
    }
}
