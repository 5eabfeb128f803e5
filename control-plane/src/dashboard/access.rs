//! Who may see the dashboard.
//!
//! On a loopback `--http` address nobody else can connect, so there is no login; the
//! `Host` header must then name the local machine, or a web page elsewhere could read
//! the dashboard through a DNS name that resolves to 127.0.0.1 (DNS rebinding).
//!
//! On any other address a visitor logs in with a token (admin, or a read-only viewer
//! token) and gets a signed session in an `HttpOnly`, `SameSite=Strict` cookie (marked
//! `Secure` when a TLS proxy in front says `X-Forwarded-Proto: https`). The dashboard
//! is read-only whoever logs in: it has no action that changes the mesh.

use http::HeaderMap;
use http::header::{COOKIE, HOST};

use crate::api::auth::{AuthError, Authenticator, Principal};
use crate::registry::now_unix;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "weft_session";
/// How long a dashboard session lasts (a viewer's also ends with its token).
pub const SESSION_SECONDS: i64 = 12 * 3600;

/// Who is looking at the dashboard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Visitor {
    /// Someone on this machine (loopback listener): no login.
    Local,
    /// Logged in with a token.
    LoggedIn(Principal),
}

/// Why a request may not see the dashboard.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the dashboard on a loopback address answers only to localhost names (Host {0:?} is not one); open it as http://localhost:PORT/ or http://127.0.0.1:PORT/"
    )]
    ForeignHost(String),
    #[error("log in with a token first")]
    NotLoggedIn,
    #[error("{0}")]
    Auth(#[from] AuthError),
}

/// Whether `host` (a `Host` header value, with or without port) names this machine.
pub fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request came through a TLS proxy (cookies are then marked `Secure`).
pub fn via_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// `Set-Cookie` for a new session, or (`None`) for ending one.
pub fn session_cookie(session: Option<&str>, secure: bool) -> String {
    let (value, max_age) = match session {
        Some(s) => (s, SESSION_SECONDS),
        None => ("", 0),
    };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Decides who is asking, for the listener the request came on.
pub struct Gatekeeper {
    pub loopback: bool,
    pub auth: std::sync::Arc<Authenticator>,
}

impl Gatekeeper {
    /// Who sent `headers`, or why they may not look.
    pub async fn visitor(&self, headers: &HeaderMap) -> Result<Visitor, Refusal> {
        if self.loopback {
            let host = headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            return if is_local_host(host) {
                Ok(Visitor::Local)
            } else {
                Err(Refusal::ForeignHost(host.to_owned()))
            };
        }
        let session = cookie(headers, SESSION_COOKIE).ok_or(Refusal::NotLoggedIn)?;
        Ok(Visitor::LoggedIn(
            self.auth.authenticate_session(session).await?,
        ))
    }

    /// Logs in with `token`: the session to put in the cookie.
    pub async fn login(&self, token: &str) -> Result<(Principal, String), AuthError> {
        let principal = self.auth.authenticate(token).await?;
        let session = self
            .auth
            .session(&principal, now_unix().saturating_add(SESSION_SECONDS));
        Ok((principal, session))
    }
}

/// The `token` field of an `application/x-www-form-urlencoded` body.
pub fn form_token(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "token")
        .and_then(|(_, v)| {
            let v = v.replace('+', " ");
            percent_encoding::percent_decode_str(&v)
                .decode_utf8()
                .ok()
                .map(|v| v.trim().to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn only_names_of_this_machine_are_local() {
        for local in [
            "localhost",
            "localhost:7401",
            "LOCALHOST.",
            "dash.localhost:80",
            "127.0.0.1:7401",
            "127.3.4.5",
            "[::1]:7401",
        ] {
            assert!(is_local_host(local), "{local}");
        }
        for foreign in [
            "",
            "evil.example",
            "evil.example:7401",
            "10.0.0.1:7401",
            "localhost.evil.example",
            "[2001:db8::1]:80",
        ] {
            assert!(!is_local_host(foreign), "{foreign}");
        }
    }

    #[test]
    fn cookies_and_forms_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; weft_session=s.1.2"));
        h.append(COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("s.1.2"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "weft"), None);
        assert_eq!(
            form_token(b"x=1&token=weftview1.tok-1.ab%2Dc+&y=2").as_deref(),
            Some("weftview1.tok-1.ab-c")
        );
        assert_eq!(form_token(b"tok=1"), None);
    }

    #[test]
    fn session_cookies_are_http_only_and_strict() {
        let c = session_cookie(Some("v"), false);
        assert_eq!(
            c,
            "weft_session=v; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200"
        );
        assert!(session_cookie(None, true).ends_with("Max-Age=0; Secure"));
    }
}
