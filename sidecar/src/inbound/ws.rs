//! WebSockets across HTTP versions (RFC 6455, RFC 8441).
//!
//! - HTTP/2 extended CONNECT (`:protocol websocket`) to an HTTP/1.1 app: the inbound
//!   synthesises the HTTP/1.1 handshake with a fresh key, checks the app's
//!   `Sec-WebSocket-Accept` before answering 200, then splices the two.
//! - HTTP/1.1 Upgrade to an h2c app: only if the app advertised
//!   SETTINGS_ENABLE_CONNECT_PROTOCOL; the inbound answers 101 with the accept value
//!   computed from the client's key once the app answered 200. Otherwise 502.
//!
//! Only a 101 (HTTP/1.1) or a 2xx (extended CONNECT) switches protocols; any other
//! answer is relayed as an ordinary response.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::ext::Protocol;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Delivery, splice};
use crate::errors::{Body, MeshError, full};
use crate::tunnel::io::H2Io;

const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Headers of the handshake that carry over between the two forms.
const CARRIED: &[&str] = &[
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "origin",
    "cookie",
    "authorization",
    "user-agent",
];

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(WS_GUID);
    STANDARD.encode(ctx.finish().as_ref())
}

fn new_key() -> String {
    use ring::rand::SecureRandom as _;
    let mut k = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut k);
    STANDARD.encode(k)
}

fn header_has_token(req_headers: &http::HeaderMap, name: HeaderName, token: &str) -> bool {
    req_headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/2 extended CONNECT for a WebSocket.
pub fn is_extended_websocket<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// An HTTP/1.1 WebSocket upgrade request.
pub fn is_h1_websocket<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && header_has_token(req.headers(), header::CONNECTION, "upgrade")
        && header_has_token(req.headers(), header::UPGRADE, "websocket")
}

fn copy_carried(from: &http::HeaderMap, to: &mut http::HeaderMap) {
    for name in CARRIED {
        for v in from.get_all(*name) {
            to.append(HeaderName::from_static(name), v.clone());
        }
    }
}

/// RFC 8441 client → HTTP/1.1 app.
pub async fn h2_to_h1(mut req: Request<Incoming>, d: &Delivery) -> Response<Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return MeshError::BadRequest.response("extended CONNECT without :authority", false);
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let key = new_key();
    let mut up = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{authority}{path}"))
        .header(header::HOST, authority.as_str())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", key.as_str());
    if let Some(h) = up.headers_mut() {
        copy_carried(req.headers(), h);
    }
    let Ok(up) = up.body(full(bytes::Bytes::new())) else {
        return MeshError::BadRequest.response("invalid WebSocket request", false);
    };
    let server_upgrade = hyper::upgrade::on(&mut req);
    let resp = match d.apps.h1.request(up).await {
        Ok(r) => r,
        Err(e) => {
            return MeshError::UpstreamFailed
                .response(&format!("the app at {} failed: {e}", d.apps.addr), false);
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Not a switch: relay as an ordinary response.
        let (mut parts, body) = resp.into_parts();
        super::translate::response(&mut parts.headers);
        return Response::from_parts(parts, body.boxed());
    }
    let expected = accept_key(key.as_bytes());
    let accepted = resp
        .headers()
        .get("sec-websocket-accept")
        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
    if !accepted || !header_has_token(resp.headers(), header::UPGRADE, "websocket") {
        return MeshError::UpstreamFailed.response(
            "the app answered the WebSocket handshake incorrectly",
            false,
        );
    }
    let mut ok = Response::new(full(bytes::Bytes::new()));
    for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
        if let Some(v) = resp.headers().get(name) {
            ok.headers_mut()
                .insert(HeaderName::from_static(name), v.clone());
        }
    }
    tokio::spawn(async move {
        let (client, app) = match (server_upgrade.await, hyper::upgrade::on(resp).await) {
            (Ok(c), Ok(a)) => (c, a),
            _ => return,
        };
        let _ = splice(&mut TokioIo::new(client), &mut TokioIo::new(app)).await;
    });
    ok
}

/// HTTP/1.1 WebSocket client → h2c app (RFC 8441 towards the app).
pub async fn h1_to_h2(mut req: Request<Incoming>, d: &Delivery) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return MeshError::BadRequest
            .response("WebSocket upgrade without Sec-WebSocket-Key", false);
    };
    let authority = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let unsupported = |why: &str| {
        MeshError::UpgradeUnsupported.response(
            &format!(
                "service {} speaks h2c and {why}; WebSockets need an app that supports RFC 8441, or selector `http`",
                d.service
            ),
            false,
        )
    };
    let tcp = match TcpStream::connect(d.apps.addr).await {
        Ok(t) => t,
        Err(e) => {
            return MeshError::UpstreamFailed
                .response(&format!("cannot connect to the app: {e}"), false);
        }
    };
    let (sender, conn) = match h2::client::handshake(tcp).await {
        Ok(x) => x,
        Err(e) => {
            return MeshError::UpstreamFailed
                .response(&format!("HTTP/2 handshake with the app failed: {e}"), false);
        }
    };
    tokio::spawn(conn);
    let Ok(mut sender) = sender.ready().await else {
        return MeshError::UpstreamFailed.response("the app closed the connection", false);
    };
    // The app's SETTINGS arrive with its first frames; give them a moment.
    for _ in 0..50 {
        if sender.is_extended_connect_protocol_enabled() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    if !sender.is_extended_connect_protocol_enabled() {
        return unsupported("did not enable extended CONNECT");
    }
    let mut up = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(format!("http://{authority}{path}"))
        .header("sec-websocket-version", "13");
    if let Some(h) = up.headers_mut() {
        copy_carried(req.headers(), h);
    }
    let Ok(mut up) = up.body(()) else {
        return MeshError::BadRequest.response("invalid WebSocket request", false);
    };
    up.extensions_mut()
        .insert(h2::ext::Protocol::from_static("websocket"));
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (resp, send) = match sender.send_request(up, false) {
        Ok((fut, send)) => match fut.await {
            Ok(r) => (r, send),
            Err(e) => {
                return MeshError::UpstreamFailed.response(&format!("the app failed: {e}"), false);
            }
        },
        Err(e) => {
            return MeshError::UpstreamFailed.response(&format!("the app failed: {e}"), false);
        }
    };
    if !resp.status().is_success() {
        let mut relay = Response::new(full(bytes::Bytes::new()));
        *relay.status_mut() = resp.status();
        return relay;
    }
    let mut switch = Response::new(full(bytes::Bytes::new()));
    *switch.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = switch.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
        if let Some(v) = resp.headers().get(name) {
            h.insert(HeaderName::from_static(name), v.clone());
        }
    }
    let (parts, recv) = resp.into_parts();
    let _ = parts;
    let mut app = H2Io::new(send, recv);
    tokio::spawn(async move {
        if let Ok(client) = client_upgrade.await {
            let _ = splice(&mut TokioIo::new(client), &mut app).await;
        }
    });
    switch
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
