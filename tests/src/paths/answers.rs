//! What the clients of a cell got, parsed: curl's dump ([`Answer`]), an HTTP/1.x
//! response read off a raw connection ([`H1Response`]), an HTTP/2 exchange driven with
//! the `h2` crate ([`H2Answer`]).

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads until the peer closes (or resets), or `within` passed.
pub async fn read_to_close<R: AsyncRead + Unpin + ?Sized>(io: &mut R, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return out,
        }
    }
}

/// What curl got: the final answer, the interim (1xx) statuses before it, trailers.
#[derive(Debug, Default)]
pub struct Answer {
    /// curl's exit code (0: a complete answer arrived).
    pub exit: i32,
    pub stderr: String,
    pub interim: Vec<u16>,
    /// 0 when no answer arrived.
    pub status: u16,
    /// `1.0`, `1.1` or `2`.
    pub version: String,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub trailers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Request body bytes curl sent.
    pub uploaded: u64,
    pub downloaded: u64,
}

impl Answer {
    /// Parses curl's `-D` dump: 1xx heads, the final head, then trailer lines.
    pub(super) fn from_dump(dump: &str) -> Answer {
        let mut answer = Answer::default();
        let mut blocks = dump.split("\r\n\r\n");
        for block in blocks.by_ref() {
            let mut lines = block.lines();
            let Some(status_line) = lines.next() else {
                break;
            };
            let mut words = status_line.split_whitespace();
            let version = words
                .next()
                .unwrap_or("")
                .trim_start_matches("HTTP/")
                .to_owned();
            let status: u16 = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            if (100..200).contains(&status) {
                answer.interim.push(status);
                continue;
            }
            answer.status = status;
            answer.version = version;
            answer.headers = parse_fields(lines);
            break;
        }
        answer.trailers = blocks.flat_map(|b| parse_fields(b.lines())).collect();
        answer
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    /// The first value of trailer `name`.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        field(&self.trailers, name)
    }

    pub fn json(&self) -> Result<serde_json::Value, String> {
        json_body(&format!("status {}", self.status), &self.body)
    }

    /// A one-line description for failure messages.
    pub fn brief(&self) -> String {
        format!(
            "curl exit {} ({}), status {} HTTP/{}, weft-error-code {:?}, {} body bytes: {:.200}",
            self.exit,
            self.stderr,
            self.status,
            self.version,
            self.header("weft-error-code"),
            self.body.len(),
            String::from_utf8_lossy(&self.body)
        )
    }
}

fn parse_fields<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// An HTTP/1.x response read off a raw connection (to the close).
#[derive(Debug, Default)]
pub struct H1Response {
    pub status_line: String,
    pub status: u16,
    /// Names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// De-chunked when the response was chunked.
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// Whether the body ended as its framing says (not cut off by the close).
    pub complete: bool,
}

impl H1Response {
    /// Parses the first response in `raw`, skipping interim (1xx) ones. `None` when not
    /// even a head arrived.
    pub fn parse(mut raw: &[u8]) -> Option<H1Response> {
        loop {
            let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
            let head = String::from_utf8_lossy(&raw[..end]).into_owned();
            raw = &raw[end + 4..];
            let mut lines = head.lines();
            let status_line = lines.next()?.to_owned();
            let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
            if (100..200).contains(&status) {
                continue;
            }
            let mut r = H1Response {
                status_line,
                status,
                headers: parse_fields(lines),
                ..H1Response::default()
            };
            let chunked = r
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
            let length = r.header("content-length").and_then(|v| v.parse().ok());
            if chunked {
                r.dechunk(raw);
            } else if let Some(n) = length {
                r.complete = raw.len() >= n;
                r.body = raw[..n.min(raw.len())].to_vec();
            } else {
                r.complete = true;
                r.body = raw.to_vec();
            }
            return Some(r);
        }
    }

    fn dechunk(&mut self, mut raw: &[u8]) {
        loop {
            let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let line = String::from_utf8_lossy(&raw[..eol]);
            let size = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size, 16) else {
                return;
            };
            raw = &raw[eol + 2..];
            if size == 0 {
                let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
                    return;
                };
                // Trailer lines up to an empty line.
                let text = String::from_utf8_lossy(raw);
                let block = text.split("\r\n\r\n").next().unwrap_or("");
                if end > 0 {
                    self.trailers = parse_fields(block.lines());
                }
                self.complete = true;
                return;
            }
            if raw.len() < size + 2 {
                self.body.extend_from_slice(&raw[..size.min(raw.len())]);
                return;
            }
            self.body.extend_from_slice(&raw[..size]);
            raw = &raw[size + 2..];
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }

    pub fn trailer(&self, name: &str) -> Option<&str> {
        field(&self.trailers, name)
    }

    pub fn json(&self) -> Result<serde_json::Value, String> {
        json_body(&self.status_line, &self.body)
    }
}

/// What an HTTP/2 exchange got.
#[derive(Debug, Default)]
pub struct H2Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
    /// The stream (or connection) ended with this error instead of a clean end.
    pub error: Option<h2::Error>,
}

impl H2Answer {
    pub fn json(&self) -> Result<serde_json::Value, String> {
        json_body(&format!("status {}", self.status), &self.body)
    }
}

/// `body` as JSON, or what was wrong with it (after `what`, the answer's status).
fn json_body(what: &str, body: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "{what}: body is not JSON ({e}): {:.300}",
            String::from_utf8_lossy(body)
        )
    })
}

/// Sends `req` with `body` and `trailers` on `send`, and reads the whole answer.
pub async fn h2_exchange(
    send: &mut h2::client::SendRequest<Bytes>,
    req: http::Request<()>,
    body: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
) -> H2Answer {
    let mut answer = H2Answer::default();
    let end = body.is_none() && trailers.is_none();
    let (response, mut stream) = match send.send_request(req, end) {
        Ok(x) => x,
        Err(e) => {
            answer.error = Some(e);
            return answer;
        }
    };
    if let Some(data) = body {
        if let Err(e) = stream.send_data(data, trailers.is_none()) {
            answer.error = Some(e);
            return answer;
        }
    }
    if let Some(t) = trailers {
        if let Err(e) = stream.send_trailers(t) {
            answer.error = Some(e);
            return answer;
        }
    }
    let response = match tokio::time::timeout(Duration::from_secs(20), response).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            answer.error = Some(e);
            return answer;
        }
        Err(_) => panic!("no HTTP/2 answer within 20 s"),
    };
    let (parts, mut recv) = response.into_parts();
    answer.status = parts.status.as_u16();
    answer.headers = parts.headers;
    while let Some(chunk) = recv.data().await {
        match chunk {
            Ok(data) => {
                let _ = recv.flow_control().release_capacity(data.len());
                answer.body.extend_from_slice(&data);
            }
            Err(e) => {
                answer.error = Some(e);
                return answer;
            }
        }
    }
    match recv.trailers().await {
        Ok(t) => answer.trailers = t,
        Err(e) => answer.error = Some(e),
    }
    answer
}
