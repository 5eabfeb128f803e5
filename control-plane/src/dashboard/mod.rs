//! The read-only web dashboard, on weft-cp's `--http` listener at `/`.
//!
//! Plain HTML, CSS and JavaScript embedded in the binary (no build step, nothing
//! fetched from elsewhere) that read one JSON document per page under `/api/` and
//! refresh it every 2 s. Pages: the mesh overview, a service, dataplanes, routes,
//! permissions.
//! [`access`] decides who may look; [`api`] builds the JSON from the admin API's own
//! read calls. Nothing here can change the mesh: there is no write endpoint.

pub mod access;
pub mod api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tonic::{Code, Status};

use crate::api::Shared;
use access::{Gatekeeper, Refusal, Visitor, session_cookie, via_tls};
use api::Api;

const INDEX: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Largest login form accepted.
const LOGIN_BODY_LIMIT: usize = 4096;

/// Only what this origin serves may run, load or frame: no inline script or style, so
/// data shown in a page can never become code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub type Reply = Response<Full<Bytes>>;

/// The dashboard of one `--http` listener.
pub struct Dashboard {
    api: Api,
    gate: Gatekeeper,
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    resp
}

fn json_reply(status: StatusCode, value: &Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

fn error_json(status: StatusCode, message: &str) -> Reply {
    json_reply(status, &json!({ "error": message }))
}

fn redirect(to: &'static str, cookie: Option<String>) -> Reply {
    let mut resp = reply(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn login_page(status: StatusCode, message: &str) -> Reply {
    let body = LOGIN.replace("{{message}}", &escape_html(message));
    reply(status, "text/html; charset=utf-8", body)
}

fn status_reply(s: &Status) -> Reply {
    let code = match s.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_json(code, s.message())
}

/// A cross-site form post carries another origin; a same-site one carries ours or none.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    origin_host.is_some() && origin_host == host
}

impl Dashboard {
    /// The dashboard of a listener bound to `listen` (no login when it is loopback).
    pub fn new(shared: Arc<Shared>, listen: SocketAddr) -> Arc<Self> {
        Arc::new(Dashboard {
            gate: Gatekeeper {
                loopback: listen.ip().is_loopback(),
                auth: shared.auth.clone(),
            },
            api: Api::new(shared),
        })
    }

    /// Serves a request for any path the metrics port does not serve itself.
    pub async fn handle(&self, req: Request<Incoming>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        match (&method, path.as_str()) {
            (&Method::GET, "/static/app.js") => {
                reply(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS)
            }
            (&Method::GET, "/static/style.css") => {
                reply(StatusCode::OK, "text/css; charset=utf-8", STYLE)
            }
            (&Method::GET, "/login") if self.gate.loopback => redirect("/", None),
            (&Method::GET, "/login") => login_page(StatusCode::OK, ""),
            (&Method::POST, "/login") => self.login(req).await,
            (&Method::POST, "/logout") => {
                redirect("/login", Some(session_cookie(None, via_tls(req.headers()))))
            }
            (&Method::GET, "/" | "/index.html") => match self.gate.visitor(req.headers()).await {
                Ok(_) => reply(StatusCode::OK, "text/html; charset=utf-8", INDEX),
                Err(r @ Refusal::ForeignHost(_)) => {
                    error_json(StatusCode::FORBIDDEN, &r.to_string())
                }
                Err(_) => redirect("/login", None),
            },
            (&Method::GET, p) if p.starts_with("/api/") => self.api(req.headers(), p).await,
            (_, "/" | "/index.html" | "/login" | "/logout") => error_json(
                StatusCode::METHOD_NOT_ALLOWED,
                "the dashboard is read-only: GET pages, POST only to log in or out",
            ),
            (_, p) if p.starts_with("/api/") => error_json(
                StatusCode::METHOD_NOT_ALLOWED,
                "the dashboard's API is read-only: use GET",
            ),
            _ => error_json(
                StatusCode::NOT_FOUND,
                "not found: the dashboard is at /, metrics at /metrics, health at /healthz",
            ),
        }
    }

    async fn login(&self, req: Request<Incoming>) -> Reply {
        if !same_origin(req.headers()) {
            return login_page(
                StatusCode::FORBIDDEN,
                "log in from the dashboard's own page",
            );
        }
        let secure = via_tls(req.headers());
        let body = match Limited::new(req.into_body(), LOGIN_BODY_LIMIT)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => return login_page(StatusCode::BAD_REQUEST, "the login form is too large"),
        };
        let Some(token) = access::form_token(&body).filter(|t| !t.is_empty()) else {
            return login_page(StatusCode::BAD_REQUEST, "enter a token");
        };
        match self.gate.login(&token).await {
            Ok((principal, session)) => {
                tracing::info!(who = %principal.label(), "dashboard login");
                redirect("/", Some(session_cookie(Some(&session), secure)))
            }
            Err(e) => {
                tracing::info!(error = %e, "dashboard login refused");
                login_page(StatusCode::UNAUTHORIZED, &e.to_string())
            }
        }
    }

    async fn api(&self, headers: &HeaderMap, path: &str) -> Reply {
        let visitor = match self.gate.visitor(headers).await {
            Ok(v) => v,
            Err(r @ Refusal::ForeignHost(_)) => {
                return error_json(StatusCode::FORBIDDEN, &r.to_string());
            }
            Err(r) => {
                let mut resp = error_json(StatusCode::UNAUTHORIZED, &r.to_string());
                resp.headers_mut()
                    .insert("x-login", HeaderValue::from_static("/login"));
                return resp;
            }
        };
        let started = Instant::now();
        let result = match path {
            "/api/overview" => self.api.overview().await,
            "/api/dataplanes" => self.api.dataplanes_page().await,
            "/api/routes" => self.api.routes().await,
            "/api/permissions" => self.api.permissions().await,
            "/api/traffic" => self.api.traffic_page().await,
            p => match p.strip_prefix("/api/services/") {
                Some(name) if crate::validate::name("service", name).is_ok() => {
                    self.api.service(name).await
                }
                _ => return error_json(StatusCode::NOT_FOUND, "no such API: see /api/overview"),
            },
        };
        let mut resp = match result {
            Ok(mut value) => {
                value["viewer"] = json!(match visitor {
                    Visitor::Local => "local".to_owned(),
                    Visitor::LoggedIn(p) => p.label(),
                });
                json_reply(StatusCode::OK, &value)
            }
            Err(s) => status_reply(&s),
        };
        // How long building the document took, for browsers' developer tools and the
        // benchmark.
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
            resp.headers_mut().insert("server-timing", v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_messages_are_escaped() {
        assert_eq!(
            escape_html("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
        assert!(LOGIN.contains("{{message}}"));
    }

    #[test]
    fn cross_site_posts_are_told_apart() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("cp.example:7401"));
        assert!(
            same_origin(&h),
            "no Origin: not a cross-site browser request"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://cp.example:7401"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
    }
}
