//! Header rules for crossing between HTTP/1.1 and HTTP/2 at the last hop
//! (shared/HTTP-CONFORMANCE.md §2–§3): hop-by-hop fields never cross, `Connection`
//! options are honoured before anything is added, `:authority` and `Host` are derived
//! from each other and must agree, cookies are joined for HTTP/1.1, and `te: trailers`
//! is kept on HTTP/2 (and added for gRPC, whose servers require it).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};

use crate::errors::{ERROR_CODE_HEADER, MeshError};

/// Fields that describe one connection and never cross a hop (RFC 9110 §7.6.1, RFC 9113
/// §8.2.2), besides those named in `Connection`.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// A request the translator refuses, with the reason for the client.
pub type Reject = (MeshError, String);

fn bad(msg: impl Into<String>) -> Reject {
    (MeshError::BadRequest, msg.into())
}

/// Removes hop-by-hop fields, first those the `Connection` header names, and returns
/// whether `TE` asked for trailers. Non-UTF-8 tokens are opaque and ignored.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(&name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    te_trailers
}

/// The client may not set the mesh's own error header.
pub fn strip_reserved(headers: &mut HeaderMap) {
    headers.remove(ERROR_CODE_HEADER);
}

fn absolute(authority: Authority, path: Option<&PathAndQuery>) -> Result<Uri, Reject> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(
            path.cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
        .build()
        .map_err(|e| bad(format!("invalid request target: {e}")))
}

fn check_path(uri: &Uri) -> Result<(), Reject> {
    match uri.path_and_query().map(PathAndQuery::as_str) {
        Some(p) if p.starts_with('/') || p == "*" => Ok(()),
        None => Ok(()),
        Some(p) => Err(bad(format!("request path {p:?} must start with '/'"))),
    }
}

/// HTTP/2 request → HTTP/1.1 request for an app behind the `http` selector.
pub fn h2_to_h1<B>(req: &mut Request<B>) -> Result<(), Reject> {
    check_path(req.uri())?;
    let host = req.headers().get(header::HOST).cloned();
    let authority = match (req.uri().authority().cloned(), host) {
        (Some(a), Some(h)) => {
            if !a.as_str().eq_ignore_ascii_case(h.to_str().unwrap_or("")) {
                return Err(bad(format!(
                    "host header {:?} differs from :authority {:?}",
                    h,
                    a.as_str()
                )));
            }
            a
        }
        (Some(a), None) => a,
        (None, Some(h)) => {
            Authority::try_from(h.as_bytes()).map_err(|_| bad("invalid host header"))?
        }
        (None, None) => return Err(bad("request has neither :authority nor host")),
    };
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    strip_reserved(headers);
    headers.remove(header::HOST);
    join_cookies(headers);
    *req.uri_mut() = absolute(authority, req.uri().path_and_query())?;
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// HTTP/1.1 request → HTTP/2 request for an app behind `http2`/`grpc`.
pub fn h1_to_h2<B>(req: &mut Request<B>, grpc: bool) -> Result<(), Reject> {
    check_path(req.uri())?;
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(bad("more than one Host header"));
    }
    // Absolute-form wins over Host (RFC 9112 §3.2.2).
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => {
            let h = req
                .headers()
                .get(header::HOST)
                .ok_or_else(|| bad("HTTP/1.1 request without Host"))?;
            Authority::try_from(h.as_bytes()).map_err(|_| bad("invalid Host header"))?
        }
    };
    if authority.as_str().contains('@') {
        return Err(bad("userinfo is not allowed in the authority"));
    }
    let headers = req.headers_mut();
    let te_trailers = strip_hop_by_hop(headers);
    strip_reserved(headers);
    headers.remove(header::HOST);
    if te_trailers || grpc {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    *req.uri_mut() = absolute(authority, req.uri().path_and_query())?;
    *req.version_mut() = Version::HTTP_2;
    Ok(())
}

/// Response headers crossing to the other version: hop-by-hop fields go.
pub fn response(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
}

/// Joins several `cookie` fields into one, as HTTP/1.1 requires (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let values: Vec<HeaderValue> = headers.get_all(header::COOKIE).iter().cloned().collect();
    if values.len() < 2 {
        return;
    }
    let mut joined = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn connection_options_are_removed_first() {
        let mut r = req(
            Version::HTTP_11,
            "/x",
            &[
                ("host", "web"),
                ("connection", "keep-alive, X-Secret"),
                ("x-secret", "1"),
                ("keep-alive", "300"),
                ("proxy-connection", "keep-alive"),
                ("te", "gzip"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAA"),
                ("weft-error-code", "WEFT-1"),
                ("x-keep", "yes"),
            ],
        );
        h1_to_h2(&mut r, false).unwrap();
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep"]);
        assert_eq!(r.uri().to_string(), "http://web/x");
        assert_eq!(r.version(), Version::HTTP_2);
    }

    #[test]
    fn te_trailers_survives_to_h2_and_grpc_gets_it() {
        let mut r = req(Version::HTTP_11, "/", &[("host", "a"), ("te", "trailers")]);
        h1_to_h2(&mut r, false).unwrap();
        assert_eq!(r.headers()["te"], "trailers");
        let mut r = req(Version::HTTP_11, "/", &[("host", "a")]);
        h1_to_h2(&mut r, true).unwrap();
        assert_eq!(r.headers()["te"], "trailers");
    }

    #[test]
    fn absolute_form_wins_and_host_rules_hold() {
        let mut r = req(
            Version::HTTP_11,
            "http://b.example/x?q=1",
            &[("host", "a.example")],
        );
        h1_to_h2(&mut r, false).unwrap();
        assert_eq!(r.uri().to_string(), "http://b.example/x?q=1");
        assert!(r.headers().get("host").is_none());

        let mut r = req(Version::HTTP_11, "/", &[]);
        assert!(h1_to_h2(&mut r, false).is_err());
        let mut r = req(Version::HTTP_11, "/", &[("host", "a"), ("host", "b")]);
        assert!(h1_to_h2(&mut r, false).is_err());
    }

    #[test]
    fn h2_to_h1_builds_host_and_joins_cookies() {
        let mut r = req(
            Version::HTTP_2,
            "http://a.example/p",
            &[("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers")],
        );
        h2_to_h1(&mut r).unwrap();
        assert_eq!(r.headers()["cookie"], "a=1; b=2");
        assert!(
            r.headers().get("te").is_none(),
            "TE is dropped on the h1 hop"
        );
        assert_eq!(r.uri().authority().unwrap().as_str(), "a.example");
        assert_eq!(r.version(), Version::HTTP_11);

        let mut r = req(
            Version::HTTP_2,
            "http://a.example/p",
            &[("host", "evil.example")],
        );
        let (e, msg) = h2_to_h1(&mut r).unwrap_err();
        assert_eq!(e, MeshError::BadRequest);
        assert!(msg.contains("differs"));
    }
}
