//! Every HTTP rule of the mesh, written once and used by the gateway (public clients →
//! mesh) and the inbound (mesh → app, and clients inside a tunnel stream that speak
//! another HTTP version than the app):
//!
//! - [`authority`]: which host a request addressed, and what is a valid one;
//! - [`headers`]: hop-by-hop fields, `te`, forwarding headers and `Via`, cookies,
//!   trailers, the mesh's reserved error header;
//! - [`convert`]: requests and responses between HTTP/1.1 and HTTP/2, both directions;
//! - [`ws`]: WebSockets, HTTP/1.1 Upgrade ↔ RFC 8441 extended CONNECT;
//! - [`limits`]: header sizes, streams, windows, timeouts, admission, and the server and
//!   client builders that apply them.
//!
//! The responses the mesh makes itself (one typed [`crate::errors::Rejection`], answered
//! in HTTP or gRPC form as decided once per request) live in [`crate::errors`].

pub mod authority;
pub mod convert;
pub mod headers;
pub mod limits;
pub mod ws;
