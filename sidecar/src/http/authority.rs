//! Which authority (host and port) a request addressed, by the rules of its HTTP
//! version, and what counts as a valid one. Routing, forwarding and logging all use
//! the authority this module returns, so what decides the route is what is forwarded.
//!
//! - HTTP/1.1 (RFC 9112 §3.2): exactly one `Host`; an absolute-form target wins over
//!   `Host`, which is then ignored; no `Host` is an error (HTTP/1.0 may omit it).
//! - HTTP/2 (RFC 9113 §8.3.1): `:authority`, or `host` when it is absent; when both are
//!   present they must agree (h2 does not check this; a proxy that routed on one and
//!   forwarded the other could be steered).
//! - Valid: `host[:port]`, where host is a DNS name, an IPv4 address or a bracketed
//!   IPv6 address, and the port is at most 65535; userinfo (`user@host`) is refused.

use std::net::Ipv6Addr;

use http::uri::Authority;
use http::{Request, Version, header};

use crate::errors::Rejection;

/// How much of a client's value an error message repeats.
const ECHO: usize = 64;

fn echo(value: &[u8]) -> String {
    let s = String::from_utf8_lossy(&value[..value.len().min(ECHO)]).into_owned();
    if value.len() > ECHO { s + "…" } else { s }
}

/// Checks that `value` is a valid authority for routing and returns it parsed.
pub fn parse(value: &[u8]) -> Result<Authority, Rejection> {
    let invalid = || Rejection::bad_request(format!("invalid host {:?}", echo(value)));
    if value.contains(&b'@') {
        return Err(Rejection::bad_request(
            "userinfo (user@host) is not allowed in the host",
        ));
    }
    let authority = Authority::try_from(value).map_err(|_| invalid())?;
    let s = authority.as_str();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(invalid)?;
        ip.parse::<Ipv6Addr>().map_err(|_| invalid())?;
        match after {
            "" => (ip, None),
            p => (ip, Some(p.strip_prefix(':').ok_or_else(invalid)?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let name_ok = !host.trim_end_matches('.').is_empty()
        && (s.starts_with('[')
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')));
    let port_ok = port.is_none_or(|p| {
        p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
    });
    if !name_ok || !port_ok {
        return Err(invalid());
    }
    Ok(authority)
}

/// The authority `req` addressed. `fallback` stands in for the `Host` an HTTP/1.0
/// request may omit (the inbound knows its own service; the gateway has none to offer
/// and refuses such a request, since it routes by host).
pub fn of_request<B>(
    req: &Request<B>,
    fallback: Option<&Authority>,
) -> Result<Authority, Rejection> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::bad_request("more than one Host header"));
    }
    if req.version() == Version::HTTP_2 {
        return match (req.uri().authority(), host) {
            (Some(a), Some(h)) if !a.as_str().as_bytes().eq_ignore_ascii_case(h.as_bytes()) => {
                Err(Rejection::bad_request(format!(
                    "host header {:?} differs from :authority {:?}",
                    echo(h.as_bytes()),
                    echo(a.as_str().as_bytes())
                )))
            }
            (Some(a), _) => parse(a.as_str().as_bytes()),
            (None, Some(h)) => parse(h.as_bytes()),
            (None, None) => Err(Rejection::bad_request(
                "request has neither :authority nor host",
            )),
        };
    }
    // Absolute-form wins over Host (RFC 9112 §3.2.2); authority-form only comes with
    // CONNECT, which callers refuse before asking.
    if let Some(a) = req.uri().authority() {
        return parse(a.as_str().as_bytes());
    }
    match (host, fallback) {
        (Some(h), _) => parse(h.as_bytes()),
        (None, Some(f)) if req.version() == Version::HTTP_10 => Ok(f.clone()),
        (None, _) if req.version() == Version::HTTP_10 => Err(Rejection::bad_request(
            "HTTP/1.0 request without Host: the gateway routes by host",
        )),
        (None, _) => Err(Rejection::bad_request("HTTP/1.1 request without Host")),
    }
}

/// The host as routes name it: lowercase, without port or trailing dot, IPv6 without
/// brackets. `authority` has passed [`parse`].
pub fn route_host(authority: &Authority) -> String {
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn valid_and_invalid_hosts() {
        for ok in [
            "a",
            "api.example.com",
            "API.Example.com.:8443",
            "1.2.3.4:80",
            "[::1]:8080",
            "[::1]",
            "a:",
            "under_score.internal",
        ] {
            assert!(parse(ok.as_bytes()).is_ok(), "{ok} must be valid");
        }
        for bad in [
            "", "a b", "a@b", "u:p@b", "a:99999", "a:+5", "a:x", "*", ".", "[::1", "[zz]:1", "a/b",
            "a%20b", "a:80:90",
        ] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.error, crate::errors::MeshError::BadRequest, "{bad}");
        }
    }

    #[test]
    fn route_hosts_are_normalised() {
        let host = |s: &str| route_host(&parse(s.as_bytes()).unwrap());
        assert_eq!(host("API.Example.com.:8443"), "api.example.com");
        assert_eq!(host("[::1]:80"), "::1");
        assert_eq!(host("web"), "web");
    }

    #[test]
    fn http1_needs_one_valid_host_and_absolute_form_wins() {
        let a = of_request(&req(Version::HTTP_11, "/", &["a.example"]), None).unwrap();
        assert_eq!(a, "a.example");
        let a = of_request(
            &req(Version::HTTP_11, "http://b.example/x", &["a.example"]),
            None,
        )
        .unwrap();
        assert_eq!(a, "b.example", "absolute-form wins over Host");
        assert!(of_request(&req(Version::HTTP_11, "/", &[]), None).is_err());
        assert!(of_request(&req(Version::HTTP_11, "/", &["a", "b"]), None).is_err());
        assert!(of_request(&req(Version::HTTP_11, "/", &["a b"]), None).is_err());
        assert!(of_request(&req(Version::HTTP_11, "/", &["a:99999"]), None).is_err());
    }

    #[test]
    fn http10_may_omit_host_where_a_fallback_exists() {
        let svc = Authority::from_static("web");
        let r = req(Version::HTTP_10, "/", &[]);
        assert_eq!(of_request(&r, Some(&svc)).unwrap(), "web");
        assert!(of_request(&r, None).is_err());
        // HTTP/1.1 never falls back.
        assert!(of_request(&req(Version::HTTP_11, "/", &[]), Some(&svc)).is_err());
    }

    #[test]
    fn http2_host_must_agree_with_authority() {
        let ok = req(Version::HTTP_2, "http://a.example/p", &["A.example"]);
        assert_eq!(of_request(&ok, None).unwrap(), "a.example");
        let bad = req(Version::HTTP_2, "http://a.example/p", &["evil.example"]);
        assert!(
            of_request(&bad, None)
                .unwrap_err()
                .message
                .contains("differs")
        );
        let host_only = req(Version::HTTP_2, "/p", &["h.example"]);
        assert_eq!(of_request(&host_only, None).unwrap(), "h.example");
        assert!(of_request(&req(Version::HTTP_2, "/p", &[]), None).is_err());
    }
}
