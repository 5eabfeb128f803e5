//! The HTTP/1.1 `Upgrade: h2c` handshake (RFC 7540 §3.2), which neither hyper nor
//! hyper-util implements.
//!
//! After answering 101, the upgraded request must be served as HTTP/2 stream 1, already
//! half-closed by the client. Instead of forking an HTTP/2 server, the gateway rewrites
//! the byte stream the client sends: right after the client's preface and first SETTINGS
//! frame it inserts a HEADERS frame (END_STREAM | END_HEADERS) for stream 1 carrying the
//! upgraded request. The HTTP/2 server then sees an ordinary stream 1 and answers on it,
//! which is exactly what the client expects; the client's own streams start at 3.
//! HPACK fields are encoded as literals without indexing, so the server's dynamic table
//! stays in step with the client's.

use bytes::{BufMut, Bytes, BytesMut};
use http::Request;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::inbound::detect::PREFACE;

/// Largest header block we inject as one frame (the default SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;

fn hpack_int(out: &mut BytesMut, prefix_bits: u8, first: u8, mut v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.put_u8(first | v as u8);
        return;
    }
    out.put_u8(first | max as u8);
    v -= max;
    while v >= 128 {
        out.put_u8((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.put_u8(v as u8);
}

fn literal(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    // Literal Header Field without Indexing, new name (RFC 7541 §6.2.2), no Huffman.
    out.put_u8(0x00);
    hpack_int(out, 7, 0, name.len());
    out.put_slice(name);
    hpack_int(out, 7, 0, value.len());
    out.put_slice(value);
}

/// The HEADERS frame for stream 1 carrying `req` (already stripped of hop-by-hop fields),
/// or `None` if it does not fit in one frame.
pub fn headers_frame<B>(req: &Request<B>, authority: &str) -> Option<Bytes> {
    let mut block = BytesMut::new();
    literal(&mut block, b":method", req.method().as_str().as_bytes());
    literal(&mut block, b":scheme", b"http");
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    literal(&mut block, b":path", path.as_bytes());
    literal(&mut block, b":authority", authority.as_bytes());
    for (name, value) in req.headers() {
        if name == http::header::HOST {
            continue;
        }
        literal(&mut block, name.as_str().as_bytes(), value.as_bytes());
    }
    if block.len() > MAX_FRAME {
        return None;
    }
    let mut frame = BytesMut::with_capacity(9 + block.len());
    let len = block.len();
    frame.put_u8((len >> 16) as u8);
    frame.put_u8((len >> 8) as u8);
    frame.put_u8(len as u8);
    frame.put_u8(0x1); // HEADERS
    frame.put_u8(0x1 | 0x4); // END_STREAM | END_HEADERS
    frame.put_u32(1);
    frame.put_slice(&block);
    Some(frame.freeze())
}

/// Reads the client's preface and first frame (which must be SETTINGS) from the
/// upgraded connection, and returns those bytes with `headers` spliced in after them.
pub async fn preamble<R: AsyncRead + Unpin>(io: &mut R, headers: Bytes) -> std::io::Result<Bytes> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut head = vec![0u8; PREFACE.len() + 9];
    io.read_exact(&mut head).await?;
    if &head[..PREFACE.len()] != PREFACE {
        return Err(bad("upgraded client did not send the HTTP/2 preface"));
    }
    let f = &head[PREFACE.len()..];
    if f[3] != 0x4 {
        return Err(bad("upgraded client's first frame is not SETTINGS"));
    }
    let len = (usize::from(f[0]) << 16) | (usize::from(f[1]) << 8) | usize::from(f[2]);
    if len > MAX_FRAME {
        return Err(bad("SETTINGS frame too large"));
    }
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await?;
    let mut out = BytesMut::with_capacity(head.len() + len + headers.len());
    out.put_slice(&head);
    out.put_slice(&payload);
    out.put_slice(&headers);
    Ok(out.freeze())
}

/// Whether an HTTP/1.1 request asks for (and qualifies for) the h2c upgrade: `Upgrade`
/// naming h2c, exactly one `HTTP2-Settings`, both listed in `Connection`, and no body.
pub fn wants_h2c<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    let tokens = |name: http::header::HeaderName| -> Vec<String> {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    let upgrade = tokens(http::header::UPGRADE);
    let connection = tokens(http::header::CONNECTION);
    let no_body = !h.contains_key(http::header::TRANSFER_ENCODING)
        && h.get(http::header::CONTENT_LENGTH).is_none_or(|v| v == "0");
    req.version() == http::Version::HTTP_11
        && upgrade.iter().any(|t| t == "h2c")
        && h.get_all("http2-settings").iter().count() == 1
        && connection.iter().any(|t| t == "upgrade")
        && connection.iter().any(|t| t == "http2-settings")
        && no_body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers() {
        let mut b = BytesMut::new();
        hpack_int(&mut b, 7, 0, 10);
        hpack_int(&mut b, 7, 0, 1337);
        assert_eq!(&b[..], &[10, 127, 0xba, 0x09]);
    }

    #[test]
    fn upgrade_rules() {
        let ok = Request::builder()
            .header("upgrade", "h2c")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
            .body(())
            .unwrap();
        assert!(wants_h2c(&ok));
        let two = Request::builder()
            .header("upgrade", "h2c")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("http2-settings", "A")
            .header("http2-settings", "B")
            .body(())
            .unwrap();
        assert!(!wants_h2c(&two), "repeated HTTP2-Settings must not upgrade");
        let body = Request::builder()
            .header("upgrade", "h2c")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("http2-settings", "A")
            .header("content-length", "5")
            .body(())
            .unwrap();
        assert!(!wants_h2c(&body));
    }
}
