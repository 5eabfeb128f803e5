//! WebSockets across HTTP versions: the HTTP/1.1 `Upgrade` handshake (RFC 6455) and
//! HTTP/2 extended CONNECT (RFC 8441), converted both ways.
//!
//! - HTTP/1.1 → HTTP/2: `GET` + `Upgrade: websocket` becomes `CONNECT` with
//!   `:protocol websocket`; the client's key stays at this hop, and the `101` the client
//!   gets carries the accept value computed from it once the other side answered 2xx.
//! - HTTP/2 → HTTP/1.1: extended CONNECT becomes `GET` with a fresh key; the app's
//!   `Sec-WebSocket-Accept` is checked before the client gets its `200`.
//! - Only a `101` answering an Upgrade (with the right accept) or a 2xx answering an
//!   extended CONNECT switches protocols; anything else is relayed as an ordinary
//!   response (RFC 9110 §7.8; a `200` carrying `Upgrade` is not a switch).
//! - Every other end-to-end header (cookies, origin, sub-protocols, `X-Forwarded-*`,
//!   `Via`) crosses like on any request: the conversion happens after
//!   [`super::convert::request`], and the switch response copies the answer's headers
//!   once, here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::ext::Protocol;

use super::headers;
use crate::errors::{Body, full};

const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const KEY: header::HeaderName = header::SEC_WEBSOCKET_KEY;

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
    // The key only has to differ between handshakes; on the (never seen) failure of the
    // system RNG the zero key still yields a valid handshake.
    let _ = ring::rand::SystemRandom::new().fill(&mut k);
    STANDARD.encode(k)
}

/// How a client asked for a WebSocket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Form {
    /// HTTP/1.1 `Upgrade: websocket`, with the client's key.
    Upgrade { key: HeaderValue },
    /// HTTP/2 extended CONNECT.
    Extended,
}

/// Whether `req` opens a WebSocket, and how. Checked before the hop-by-hop fields
/// (`Connection`, `Upgrade`) are removed.
pub fn form<B>(req: &Request<B>) -> Option<Form> {
    if req.method() == Method::CONNECT {
        return req
            .extensions()
            .get::<Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
            .then_some(Form::Extended);
    }
    // `Upgrade` means nothing from HTTP/1.0 (RFC 9110 §7.8).
    let h = req.headers();
    if req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && headers::has_token(h, header::CONNECTION, "upgrade")
        && headers::has_token(h, header::UPGRADE, "websocket")
    {
        return h.get(KEY).map(|key| Form::Upgrade { key: key.clone() });
    }
    None
}

/// Turns a converted request (see [`super::convert::request`] to HTTP/2) into an
/// extended CONNECT.
pub fn to_extended<B>(req: &mut Request<B>) {
    *req.method_mut() = Method::CONNECT;
    req.extensions_mut()
        .insert(Protocol::from_static("websocket"));
    let h = req.headers_mut();
    h.remove(KEY);
    h.entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
}

/// Turns a converted request (see [`super::convert::request`] to HTTP/1.1) into an
/// Upgrade handshake with a fresh key; returns the accept value the app must answer.
pub fn to_upgrade<B>(req: &mut Request<B>) -> String {
    *req.method_mut() = Method::GET;
    req.extensions_mut().remove::<Protocol>();
    let key = new_key();
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert(KEY, v);
    }
    accept_key(key.as_bytes())
}

/// Whether an HTTP/1.1 answer to [`to_upgrade`] switched protocols correctly: `101`,
/// `Upgrade: websocket` and the expected accept value.
pub fn upgraded<B>(resp: &Response<B>, expected_accept: &str) -> bool {
    resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && headers::has_token(resp.headers(), header::UPGRADE, "websocket")
        && resp
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes() == expected_accept.as_bytes())
}

/// The switch response for a client that asked in `form`, carrying the end-to-end
/// headers of the answer (sub-protocol, extensions, cookies...) exactly once.
pub fn switch(form: &Form, mut answer: HeaderMap) -> Response<Body> {
    headers::strip_hop_by_hop(&mut answer);
    headers::strip_reserved(&mut answer);
    answer.remove(header::SEC_WEBSOCKET_ACCEPT);
    answer.remove(header::CONTENT_LENGTH);
    let mut resp = Response::new(full(bytes::Bytes::new()));
    if let Form::Upgrade { key } = form {
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        answer.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        answer.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept_key(key.as_bytes())) {
            answer.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
    }
    *resp.headers_mut() = answer;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn upgrade_request(version: Version) -> Request<()> {
        Request::builder()
            .version(version)
            .uri("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
    }

    #[test]
    fn only_http11_get_upgrades_and_extended_connect_are_websockets() {
        assert!(matches!(
            form(&upgrade_request(Version::HTTP_11)),
            Some(Form::Upgrade { .. })
        ));
        assert_eq!(form(&upgrade_request(Version::HTTP_10)), None);
        let mut post = upgrade_request(Version::HTTP_11);
        *post.method_mut() = Method::POST;
        assert_eq!(form(&post), None);
        let mut connect = Request::builder()
            .method(Method::CONNECT)
            .version(Version::HTTP_2)
            .uri("http://a/ws")
            .body(())
            .unwrap();
        assert_eq!(form(&connect), None, "plain CONNECT is no WebSocket");
        connect
            .extensions_mut()
            .insert(Protocol::from_static("websocket"));
        assert_eq!(form(&connect), Some(Form::Extended));
    }

    #[test]
    fn an_upgrade_switch_answers_with_the_clients_accept_and_headers_once() {
        let form = form(&upgrade_request(Version::HTTP_11)).unwrap();
        let mut answer = HeaderMap::new();
        answer.insert("sec-websocket-protocol", "chat".parse().unwrap());
        answer.insert("set-cookie", "s=1".parse().unwrap());
        answer.insert("weft-error-code", "WEFT-1".parse().unwrap());
        let r = switch(&form, answer);
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            r.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(
            r.headers().get_all("sec-websocket-protocol").iter().count(),
            1
        );
        assert_eq!(r.headers()["set-cookie"], "s=1");
        assert!(r.headers().get("weft-error-code").is_none());
        let r = switch(&Form::Extended, HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get("upgrade").is_none());
    }

    #[test]
    fn a_fresh_key_must_be_answered_exactly() {
        let mut r = upgrade_request(Version::HTTP_11);
        let expected = to_upgrade(&mut r);
        let key = r.headers()["sec-websocket-key"].clone();
        assert_ne!(key, "dGhlIHNhbXBsZSBub25jZQ==", "a fresh key each time");
        assert_eq!(expected, accept_key(key.as_bytes()));
        let ok = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", expected.as_str())
            .body(())
            .unwrap();
        assert!(upgraded(&ok, &expected));
        let wrong = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "nope")
            .body(())
            .unwrap();
        assert!(!upgraded(&wrong, &expected));
        let not_101 = Response::builder()
            .status(200)
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", expected.as_str())
            .body(())
            .unwrap();
        assert!(!upgraded(&not_101, &expected), "only 101 switches");
    }
}
