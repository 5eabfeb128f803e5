//! WebSocket echo on `/ws`: every text and binary message is sent back unchanged, pings
//! are answered and the close handshake is completed.
//!
//! Two ways in, both ending in the same echo loop over the upgraded stream:
//! - HTTP/1.1 `Upgrade: websocket` (RFC 6455): the key is validated and the answer is
//!   `101 Switching Protocols` with the matching `Sec-WebSocket-Accept`;
//! - HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441, in `h2c`, `auto` and
//!   `grpc` modes, whose h2 server advertises `SETTINGS_ENABLE_CONNECT_PROTOCOL`): the
//!   answer is `200` and the stream carries the frames.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::body::{self, RespBody};
use crate::http::problem;

/// How long a closed WebSocket waits for the peer to end its side of the stream.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Answers a request to `/ws`: accepts a WebSocket (h1 Upgrade or h2 extended CONNECT)
/// and starts its echo, or explains what was wrong with the request.
pub fn accept(mut req: Request<Incoming>) -> Response<RespBody> {
    let h1_upgrade = req.version() <= Version::HTTP_11 && is_h1_upgrade(req.headers());
    let h2_connect = req.version() == Version::HTTP_2 && is_extended_connect(&req);
    if !h1_upgrade && !h2_connect {
        let mut resp = problem(
            StatusCode::UPGRADE_REQUIRED,
            "/ws is a WebSocket echo: use HTTP/1.1 `Upgrade: websocket` or HTTP/2 extended \
             CONNECT with `:protocol websocket`"
                .to_owned(),
        );
        resp.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    }
    if req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut resp = problem(
            StatusCode::BAD_REQUEST,
            "a WebSocket request needs `sec-websocket-version: 13`".to_owned(),
        );
        resp.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return resp;
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    if h2_connect {
        tokio::spawn(echo(on_upgrade, "h2"));
        return Response::new(body::empty());
    }
    let Some(key) = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .filter(|key| valid_key(key.as_bytes()))
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs `sec-websocket-key`: 16 random bytes in base64".to_owned(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode Sec-WebSocket-Accept".to_owned(),
        );
    };
    tokio::spawn(echo(on_upgrade, "h1"));
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// `Connection` has the `upgrade` token and `Upgrade` names `websocket`.
fn is_h1_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, CONNECTION, "upgrade") && has_token(headers, UPGRADE, "websocket")
}

fn has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// RFC 8441: `:method CONNECT` with `:protocol websocket`.
fn is_extended_connect(req: &Request<Incoming>) -> bool {
    req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// RFC 6455 §4.2.1: the key is base64 of 16 bytes.
fn valid_key(key: &[u8]) -> bool {
    STANDARD.decode(key).is_ok_and(|raw| raw.len() == 16)
}

/// The echo loop on an upgraded stream, until the peer closes.
async fn echo(on_upgrade: OnUpgrade, via: &'static str) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::warn!(via, "websocket upgrade failed: {err}");
            return;
        }
    };
    tracing::info!(via, "websocket open");
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
    let (mut messages, mut bytes) = (0u64, 0u64);
    while let Some(msg) = ws.next().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(err) => {
                tracing::warn!(via, "websocket read failed: {err}");
                return;
            }
        };
        match msg {
            Message::Text(_) | Message::Binary(_) => {
                messages += 1;
                bytes += msg.len() as u64;
                if let Err(err) = ws.send(msg).await {
                    tracing::warn!(via, "websocket write failed: {err}");
                    return;
                }
            }
            Message::Close(frame) => {
                tracing::debug!(via, ?frame, "websocket close received");
            }
            // Pings are answered by tungstenite itself; pongs and raw frames need nothing.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    // The close handshake is done: end our side of the stream (FIN on h1, END_STREAM on
    // h2), then wait for the peer to end its side, so that the h2 stream closes with
    // END_STREAM both ways rather than a reset.
    let mut io = ws.into_inner();
    if let Err(err) = io.shutdown().await {
        tracing::debug!(via, "websocket shutdown: {err}");
    }
    let mut sink = tokio::io::sink();
    let drained = tokio::time::timeout(CLOSE_LINGER, tokio::io::copy(&mut io, &mut sink)).await;
    tracing::info!(
        via,
        messages,
        bytes,
        peer_ended = matches!(drained, Ok(Ok(_))),
        "websocket closed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(!valid_key(b"short"));
    }

    #[test]
    fn upgrade_tokens_are_case_insensitive_lists() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(is_h1_upgrade(&headers));
        headers.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_h1_upgrade(&headers));
    }
}
