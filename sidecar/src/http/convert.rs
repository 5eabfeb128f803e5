//! Requests and responses crossing a hop, HTTP/1.1 ↔ HTTP/2 both ways, in one place.
//!
//! A request leaves with its authority in one place only, so the two forms can never
//! disagree: over HTTP/2 in an absolute URI `http://<authority><path>` (hyper's client
//! makes `:authority` of it), over HTTP/1.1 as the `Host` field with an origin-form
//! target. A received `host` field is replaced. Hop-by-hop
//! fields go ([`super::headers`]), cookies are joined for HTTP/1.1, `te: trailers` is
//! kept (added for gRPC; with `Connection: TE` on HTTP/1.1). `OPTIONS *` stays `*` both
//! ways.
//!
//! A response loses its hop-by-hop fields and the app's copy of `weft-error-code` (in
//! headers and trailers); towards an HTTP/1.1 client a gRPC response declares its
//! trailers, since hyper sends only declared ones.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use http_body::Body as HttpBody;
use http_body_util::BodyExt as _;

use super::headers;
use crate::errors::{Body, BoxError, Rejection, Respond};

/// The origin-form target must start with `/` (or be `*`): its bytes become the
/// HTTP/1.1 request line on the other side.
fn check_path(uri: &Uri) -> Result<(), Rejection> {
    match uri.path_and_query().map(PathAndQuery::as_str) {
        Some(p) if p.starts_with('/') || p == "*" => Ok(()),
        None => Ok(()),
        Some(p) => Err(Rejection::bad_request(format!(
            "request path {:?} must start with '/'",
            &p[..p.len().min(64)]
        ))),
    }
}

/// `http://<authority><path and query>`, built from parts (no formatting, no parse).
pub fn absolute(authority: Authority, path: Option<&PathAndQuery>) -> Result<Uri, Rejection> {
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(
            path.cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        )
        .build()
        .map_err(|e| Rejection::bad_request(format!("invalid request target: {e}")))
}

/// The path and query of `uri` alone (`/` when it has none), for an HTTP/1.1 request
/// line.
fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
        .into()
}

/// Rewrites `req` in place to be sent to `authority` over `to`. The request has
/// already passed [`super::authority::of_request`] (that is where `authority` comes
/// from, or a route's rewrite of it).
pub fn request<B>(
    req: &mut Request<B>,
    authority: Authority,
    to: Version,
    respond: Respond,
) -> Result<(), Rejection> {
    check_path(req.uri())?;
    if req.version() == Version::HTTP_2 {
        headers::check_h2_values(req.headers())?;
    }
    let h = req.headers_mut();
    let te_trailers = headers::strip_hop_by_hop(h);
    headers::strip_reserved(h);
    h.remove(header::HOST);
    headers::keep_te_trailers(h, te_trailers || respond.is_grpc(), to);
    if to == Version::HTTP_2 {
        *req.uri_mut() = absolute(authority, req.uri().path_and_query())?;
    } else {
        headers::join_cookies(h);
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Rejection::bad_request("invalid authority"))?;
        h.insert(header::HOST, host);
        *req.uri_mut() = origin_form(req.uri());
    }
    *req.version_mut() = to;
    Ok(())
}

/// An app's response on its way back to a client speaking `client`: hop-by-hop fields
/// and the app's `weft-error-code` go, in the headers and in the trailers. `hold` is
/// kept until the body is done with (e.g. the request's slot towards the app).
pub fn response_from_app<B>(
    resp: Response<B>,
    client: Version,
    hold: impl Send + Sync + 'static,
) -> Response<Body>
where
    B: HttpBody<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_reserved(&mut parts.headers);
    let mut resp = Response::from_parts(parts, clean_trailers(body, hold));
    if client != Version::HTTP_2 {
        headers::declare_grpc_trailers(resp.headers_mut());
    }
    resp
}

/// `body` with every trailer section cleaned ([`headers::clean_trailers`]), holding
/// `hold` until it is dropped (one wrapper for both: one allocation per body).
pub fn clean_trailers<B>(body: B, hold: impl Send + Sync + 'static) -> Body
where
    B: HttpBody<Data = bytes::Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_frame(move |f| match f.into_trailers() {
        Ok(mut t) => {
            let _ = &hold;
            headers::clean_trailers(&mut t);
            http_body::Frame::trailers(t)
        }
        Err(f) => f,
    })
    .map_err(Into::into)
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn req(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn h1_to_h2_builds_authority_and_keeps_te_trailers() {
        let mut r = req(
            Version::HTTP_11,
            "/x?q=1",
            &[
                ("host", "web"),
                ("connection", "keep-alive, X-Secret"),
                ("x-secret", "1"),
                ("te", "trailers"),
                ("weft-error-code", "WEFT-1"),
                ("x-keep", "yes"),
            ],
        );
        request(
            &mut r,
            Authority::from_static("web"),
            Version::HTTP_2,
            Respond::Http,
        )
        .unwrap();
        let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-keep"]);
        assert_eq!(r.uri().to_string(), "http://web/x?q=1");
        assert_eq!(r.version(), Version::HTTP_2);
        // gRPC gets te: trailers even when the client did not send it.
        let mut r = req(Version::HTTP_11, "/", &[("host", "a")]);
        request(
            &mut r,
            Authority::from_static("a"),
            Version::HTTP_2,
            Respond::Grpc,
        )
        .unwrap();
        assert_eq!(r.headers()["te"], "trailers");
    }

    #[test]
    fn h2_to_h1_joins_cookies_and_keeps_te_trailers_with_connection_te() {
        let mut r = req(
            Version::HTTP_2,
            "http://a.example/p",
            &[("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers")],
        );
        request(
            &mut r,
            Authority::from_static("a.example"),
            Version::HTTP_11,
            Respond::Http,
        )
        .unwrap();
        assert_eq!(r.headers()["cookie"], "a=1; b=2");
        // An HTTP/1.1 app sends its trailers only when told the client takes them.
        assert_eq!(r.headers()["te"], "trailers");
        assert_eq!(r.headers()["connection"], "te");
        // The authority travels as Host, the target in origin-form.
        assert_eq!(r.headers()["host"], "a.example");
        assert_eq!(r.uri().to_string(), "/p");
        assert_eq!(r.version(), Version::HTTP_11);
    }

    #[test]
    fn options_asterisk_and_bad_paths() {
        let mut r = req(Version::HTTP_11, "*", &[("host", "a")]);
        *r.method_mut() = http::Method::OPTIONS;
        request(
            &mut r,
            Authority::from_static("a"),
            Version::HTTP_2,
            Respond::Http,
        )
        .unwrap();
        assert_eq!(r.uri().path_and_query().unwrap().as_str(), "*");
        let mut r = req(Version::HTTP_2, "http://a/p", &[("x-a", " padded")]);
        assert!(
            request(
                &mut r,
                Authority::from_static("a"),
                Version::HTTP_11,
                Respond::Http
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn app_responses_lose_the_mesh_header_in_headers_and_trailers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("weft-error-code", "WEFT-3".parse().unwrap());
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok::<_, hyper::Error>(http_body::Frame::data(bytes::Bytes::from_static(b"x"))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let resp = Response::builder()
            .header("weft-error-code", "WEFT-2")
            .header("connection", "close")
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap();
        let resp = response_from_app(resp, Version::HTTP_11, ());
        assert!(resp.headers().get("weft-error-code").is_none());
        assert!(resp.headers().get("connection").is_none());
        assert!(
            resp.headers()["trailer"]
                .to_str()
                .unwrap()
                .contains("grpc-status")
        );
        let collected = resp.into_body().collect().await.unwrap();
        let t = collected.trailers().unwrap();
        assert!(t.get("weft-error-code").is_none());
        assert_eq!(t["grpc-status"], "0");
    }
}
