//! Header rules for a message crossing a hop of the mesh, whatever its HTTP versions.
//!
//! - Hop-by-hop fields never cross (RFC 9110 §7.6.1, RFC 9113 §8.2.2): first every
//!   field the `Connection` header names, then the fixed set. Naming a field in
//!   `Connection` therefore removes the client's copy, never a header the mesh adds
//!   afterwards (forwarding headers, `Via`).
//! - `te: trailers` survives (and is added for gRPC, whose servers require it); any
//!   other `TE` goes. On an HTTP/1.1 hop it goes with `Connection: TE` (RFC 9110
//!   §10.1.4): an HTTP/1.1 app sends the trailers it declares only to a client that
//!   said it takes them.
//! - `weft-error-code` is the mesh's own: removed from everything a client or an app
//!   sends, in headers and in trailers.
//! - Trailers carry no field that frames, routes, authenticates or describes content
//!   (RFC 9110 §6.5.1); such fields are dropped from trailers, never merged into the
//!   header section.
//! - `Trailer` is end to end and kept: hyper's HTTP/1.1 sides send only trailers it names.

use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::errors::{ERROR_CODE_NAME, Rejection};

/// Fields that describe one connection and never cross a hop, besides those named in
/// `Connection`.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("http2-settings"),
];

/// Fields that must not appear in trailers (RFC 9110 §6.5.1: framing, routing, request
/// modifiers, authentication, response control and content description).
static NOT_IN_TRAILERS: [HeaderName; 29] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::TE,
    header::TRAILER,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::PROXY_AUTHENTICATE,
    header::COOKIE,
    header::SET_COOKIE,
    header::CACHE_CONTROL,
    header::EXPECT,
    header::MAX_FORWARDS,
    header::PRAGMA,
    header::RANGE,
    header::AGE,
    header::EXPIRES,
    header::DATE,
    header::LOCATION,
    header::RETRY_AFTER,
    header::VARY,
    header::CONNECTION,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Trailers every gRPC response ends with; declared for HTTP/1.1 clients, to which
/// hyper sends only the trailers a `Trailer` header names.
const GRPC_TRAILERS: &str = "grpc-status, grpc-message, grpc-status-details-bin";

fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a comma-separated header lists `token` (case-insensitive). Non-UTF-8
/// values are opaque and list nothing.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop fields, first those `Connection` names, and returns whether `TE`
/// asked for trailers.
///
/// `TE` is read first: an HTTP/1.1 client that sends it must also name it in
/// `Connection` (RFC 9110 §10.1.4), so reading it after that removal would lose every
/// conforming client's request for trailers. It goes with the fixed set below and
/// [`keep_te_trailers`] sets it again for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let te_trailers = headers.contains_key(header::TE)
        && tokens(headers, header::TE).any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    if headers.contains_key(header::CONNECTION) {
        // `close` and the fixed set (an HTTP/1.1 peer's `keep-alive`, nearly always,
        // and `TE`) need no removal of their own: nothing is collected for them.
        let named: Vec<HeaderName> = tokens(headers, header::CONNECTION)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| t.eq_ignore_ascii_case(h.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(&name);
        }
    }
    // One pass over the message's names finds which of the fixed set it carries (most
    // carry none, an HTTP/1.1 response `connection`): only those are hashed for removal.
    let mut present = [false; HOP_BY_HOP.len()];
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present[i] = true;
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    te_trailers
}

/// Removes the mesh's own error header: only the mesh may set it.
pub fn strip_reserved(headers: &mut HeaderMap) {
    headers.remove(&ERROR_CODE_NAME);
}

/// Sets `te: trailers` on a request going out over `to` when the client asked for
/// trailers or the request is gRPC; on HTTP/1.1 with the `Connection: TE` that must name
/// it. Run after [`strip_hop_by_hop`], which removed the client's `Connection`.
pub fn keep_te_trailers(headers: &mut HeaderMap, wanted: bool, to: Version) {
    if wanted {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        if to != Version::HTTP_2 {
            headers.append(header::CONNECTION, HeaderValue::from_static("te"));
        }
    }
}

/// Joins several `cookie` fields into one, as HTTP/1.1 requires (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// HTTP/2 field values may not begin or end with whitespace (RFC 9113 §8.2.1); hyper
/// and h2 accept them, and an HTTP/1.1 peer would read them differently.
pub fn check_h2_values(headers: &HeaderMap) -> Result<(), Rejection> {
    let padded = |v: &HeaderValue| {
        let b = v.as_bytes();
        matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
    };
    match headers.iter().find(|(_, v)| padded(v)) {
        Some((name, _)) => Err(Rejection::bad_request(format!(
            "HTTP/2 field {name} has leading or trailing whitespace"
        ))),
        None => Ok(()),
    }
}

/// Drops what a trailer section may not carry, and the mesh's error header.
pub fn clean_trailers(trailers: &mut HeaderMap) {
    for name in &NOT_IN_TRAILERS {
        trailers.remove(name);
    }
    strip_reserved(trailers);
}

/// What the gateway observed of a client connection, for the forwarding headers.
pub struct Forwarded<'a> {
    pub peer: std::net::IpAddr,
    pub tls: bool,
    pub authority: &'a str,
    /// The HTTP version the request arrived with (for `Via`).
    pub version: Version,
}

/// Appends the client to `x-forwarded-for`, sets `x-forwarded-proto` and
/// `x-forwarded-host` from what the gateway itself saw, and appends `Via`. Run after
/// [`strip_hop_by_hop`], so a client cannot remove them through `Connection`.
pub fn forwarding(headers: &mut HeaderMap, f: &Forwarded<'_>) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    let peer = f.peer.to_string();
    let xff = if headers.contains_key(&XFF) {
        let mut all: Vec<&[u8]> = headers.get_all(&XFF).iter().map(|v| v.as_bytes()).collect();
        all.push(peer.as_bytes());
        HeaderValue::from_bytes(&all.join(&b", "[..])).ok()
    } else {
        HeaderValue::from_str(&peer).ok()
    };
    if let Some(v) = xff {
        headers.insert(XFF, v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if f.tls { "https" } else { "http" }),
    );
    if let Ok(v) = HeaderValue::from_str(f.authority) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), v);
    }
    append_via(headers, f.version);
}

/// Appends this hop to `Via` (RFC 9110 §7.6.3): the version the message was received
/// with and the pseudonym `weft`; no host or port of the mesh is revealed.
pub fn append_via(headers: &mut HeaderMap, received: Version) {
    let via = match received {
        Version::HTTP_2 => "2 weft",
        Version::HTTP_10 => "1.0 weft",
        _ => "1.1 weft",
    };
    headers.append(header::VIA, HeaderValue::from_static(via));
}

/// Declares the gRPC trailers on a gRPC response for an HTTP/1.1 client (hyper sends
/// only declared trailers); other responses keep the app's own `Trailer` header.
pub fn declare_grpc_trailers(headers: &mut HeaderMap) {
    let grpc = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if grpc && !headers.contains_key(header::TRAILER) {
        headers.insert(header::TRAILER, HeaderValue::from_static(GRPC_TRAILERS));
    }
}

/// The deadline a gRPC client set (`grpc-timeout`: at most 8 digits and a unit, H M S
/// m u n). Invalid values are ignored, as the gRPC spec asks.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<std::time::Duration> {
    use std::time::Duration;
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n.saturating_mul(3600)),
        b"M" => Duration::from_secs(n.saturating_mul(60)),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn connection_options_are_removed_first() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "300"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("x-keep", "yes"),
            ("trailer", "x-sum"),
        ]);
        assert!(!strip_hop_by_hop(&mut h));
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["trailer", "x-keep"]);
        let mut h = map(&[("te", "gzip, trailers;q=1")]);
        assert!(strip_hop_by_hop(&mut h), "TE: trailers is reported");
        assert!(h.is_empty());
        // An HTTP/1.1 app's usual response: only its own hop-by-hop fields go.
        let mut h = map(&[
            ("connection", "Keep-Alive, close"),
            ("keep-alive", "timeout=5"),
            ("content-length", "2"),
        ]);
        assert!(!strip_hop_by_hop(&mut h));
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length"]);
        // A conforming HTTP/1.1 client names TE in Connection: its request for
        // trailers is read before either goes.
        let mut h = map(&[("connection", "TE"), ("te", "trailers")]);
        assert!(strip_hop_by_hop(&mut h), "TE: trailers with Connection: TE");
        assert!(h.is_empty());
    }

    #[test]
    fn forwarding_headers_append_and_overwrite_and_survive_connection() {
        let mut h = map(&[
            ("connection", "x-forwarded-for"),
            ("x-forwarded-for", "6.6.6.6"),
        ]);
        strip_hop_by_hop(&mut h);
        h.append("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.append("x-forwarded-for", "5.6.7.8".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        h.insert("x-forwarded-host", "evil".parse().unwrap());
        forwarding(
            &mut h,
            &Forwarded {
                peer: "10.9.8.7".parse().unwrap(),
                tls: false,
                authority: "api.example.com",
                version: Version::HTTP_11,
            },
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.9.8.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example.com");
        assert_eq!(h["via"], "1.1 weft");
    }

    #[test]
    fn forbidden_trailers_and_the_mesh_header_are_dropped() {
        let mut t = map(&[
            ("grpc-status", "0"),
            ("content-length", "1"),
            ("host", "x"),
            ("weft-error-code", "WEFT-2"),
            ("x-checksum", "abc"),
        ]);
        clean_trailers(&mut t);
        let mut names: Vec<&str> = t.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["grpc-status", "x-checksum"]);
    }

    #[test]
    fn h2_values_with_surrounding_whitespace_are_malformed() {
        assert!(check_h2_values(&map(&[("x-a", "v w")])).is_ok());
        assert!(check_h2_values(&map(&[("x-a", " v")])).is_err());
        assert!(check_h2_values(&map(&[("x-a", "v\t")])).is_err());
    }

    #[test]
    fn grpc_timeouts_parse_and_bad_ones_are_ignored() {
        use std::time::Duration;
        let t = |v: &str| grpc_timeout(&map(&[("grpc-timeout", v)]));
        assert_eq!(t("200m"), Some(Duration::from_millis(200)));
        assert_eq!(t("3S"), Some(Duration::from_secs(3)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cookies_are_joined_for_http1() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
    }
}
