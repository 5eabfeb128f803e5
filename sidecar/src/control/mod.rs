//! The dataplane's side of the control plane connection.
//!
//! - [`channel`]: gRPC channels over rustls configs we choose (CA-pinned bootstrap,
//!   mTLS after), reading the current credentials at every (re)connect;
//! - [`bootstrap`]: first identity from a bootstrap token, renewal with the current
//!   certificate;
//! - [`bundle_sync`]: pushed trust bundles forwarded to the identity manager (CA rotation);
//! - [`config`]: the config a dataplane holds, and how updates apply to it;
//! - [`client`]: the discovery stream loop (hello, apply, ack/nack, resume, persist);
//! - [`state_dir`]: what survives a restart.

pub mod bootstrap;
pub mod bundle_sync;
pub mod channel;
pub mod client;
pub mod config;
pub mod state_dir;

/// Why talking to the control plane failed. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "invalid --cp URL \"{0}\": use https://HOST:PORT (e.g. https://127.0.0.1:7400), or several separated by commas"
    )]
    BadUrl(String),
    #[error("{0}")]
    Token(#[from] weft_certs::token::TokenError),
    #[error("{0}")]
    Cert(#[from] weft_certs::CertError),
    #[error("cannot reach the control plane at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the control plane refused: {0}")]
    Refused(String),
    #[error("state dir: {0}")]
    State(String),
}

/// Renders a tonic status as one line: code and message.
pub fn status_line(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}
