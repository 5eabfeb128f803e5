//! What the app reports about a request: the JSON echo document and its helpers.

use http::{HeaderMap, Version};
use serde::Serialize;
use serde::ser::SerializeMap;

/// The version string reported for `version` (`"HTTP/1.1"`, `"HTTP/2.0"`, …), as
/// `http::Version`'s `Debug` spells it.
pub fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

/// Serializes a header map as `{name: [values...]}`, names in the order they were first
/// received and values in the order received. (A plain `serde_json::Map` would sort the
/// names.) Values that are not UTF-8 are shown lossily.
pub struct Headers<'a>(pub &'a HeaderMap);

impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.keys_len()))?;
        for name in self.0.keys() {
            let values: Vec<String> = self
                .0
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            map.serialize_entry(name.as_str(), &values)?;
        }
        map.end()
    }
}

/// The body of the default echo answer.
#[derive(Serialize)]
pub struct Echo<'a> {
    /// The app's `--name`.
    pub app: &'a str,
    /// HTTP version of the request as received.
    pub version: &'static str,
    pub method: &'a str,
    /// Path and query as received.
    pub path: &'a str,
    /// The Host header, or the URI authority (`:authority` in h2) when there is none.
    pub host: Option<String>,
    /// The address of the peer that connected to the app.
    pub peer: String,
    pub headers: Headers<'a>,
    pub body_bytes: u64,
    /// SHA-256 of the body as received, lower-case hex.
    pub sha256: String,
    /// Request trailers, read after the body.
    pub trailers: Headers<'a>,
}

/// The body of the `/upload` answer.
#[derive(Serialize)]
pub struct Upload<'a> {
    pub app: String,
    pub version: &'static str,
    pub body_bytes: u64,
    /// SHA-256 of the body as received, lower-case hex.
    pub sha256: String,
    /// Request trailers, read after the body.
    pub trailers: Headers<'a>,
}

/// The body of an error answer the app makes itself (bad query, …).
#[derive(Serialize)]
pub struct Problem {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_received_order() {
        let mut map = HeaderMap::new();
        map.append("zeta", "1".parse().unwrap());
        map.append("alpha", "2".parse().unwrap());
        map.append("zeta", "3".parse().unwrap());
        let json = serde_json::to_string(&Headers(&map)).unwrap();
        assert_eq!(json, r#"{"zeta":["1","3"],"alpha":["2"]}"#);
    }
}
