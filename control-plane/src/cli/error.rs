//! Errors of `weftctl` and how they become one-line messages and exit codes.
//!
//! Every message says what went wrong and what to do next, because the person
//! reading it is at a terminal with the flags in front of them. tonic hides the useful
//! part of a failure (connection refused, untrusted certificate) several layers down
//! its error chain, so [`explain_transport`] walks `source()` and the `io::Error`
//! payloads to find it.

use std::error::Error as StdError;
use std::io;

use tonic::{Code, Status};

/// Exit code for success.
pub const EXIT_OK: i32 = 0;
/// Exit code for failures at run time (control plane unreachable or refusing).
pub const EXIT_RUNTIME: i32 = 1;
/// Exit code for usage errors (bad flags, bad values, missing credentials).
pub const EXIT_USAGE: i32 = 2;
/// Exit code of `permission check` when the call would be denied.
pub const EXIT_DENIED: i32 = 3;

/// Something `weftctl` could not do. `Display` is the message without the
/// `error: ` prefix, on one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the local configuration is wrong; nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// No connection could be made to the control plane.
    #[error(
        "cannot reach the control plane at {url}: {reason}; is weft-cp running? pass --cp or set WEFT_CP"
    )]
    Unreachable { url: String, reason: String },
    /// The control plane's certificate did not verify against our CA.
    #[error("{0}")]
    Tls(String),
    /// The control plane answered UNAUTHENTICATED: the token is wrong, expired or revoked.
    #[error(
        "the control plane refused the token ({reason}); pass --token or set WEFT_TOKEN (the admin token is in {token_file})"
    )]
    Unauthenticated { token_file: String, reason: String },
    /// The control plane refused the request; its message says why and what to do.
    #[error("{message}")]
    Server { code: Code, message: String },
    /// Any other failure at run time (for example writing the output).
    #[error("{0}")]
    Runtime(String),
    /// `permission check` answered deny: the answer is already printed; only the exit
    /// code is left to give.
    #[error("denied: {0}")]
    Denied(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Denied(_) => EXIT_DENIED,
            _ => EXIT_RUNTIME,
        }
    }

    /// Whether the output already said everything (no `error:` line is needed).
    pub fn already_reported(&self) -> bool {
        matches!(self, CliError::Denied(_))
    }
}

/// What error messages need to know about the connection in use.
#[derive(Debug, Clone, Default)]
pub struct ErrorContext {
    /// The control plane URL as given.
    pub url: String,
    /// Where the CA came from, for "not signed by the CA in FILE".
    pub ca_label: String,
    /// The data directory to name in hints ("weft-data" when unknown).
    pub data_dir_label: String,
}

impl ErrorContext {
    fn token_file(&self) -> String {
        format!("{}/admin.token", self.data_dir_label)
    }

    fn ca_file(&self) -> String {
        format!("{}/ca.pem", self.data_dir_label)
    }
}

/// Turns a gRPC status from the control plane into a [`CliError`].
pub fn explain_status(ctx: &ErrorContext, status: &Status) -> CliError {
    match status.code() {
        Code::Unauthenticated => CliError::Unauthenticated {
            token_file: ctx.token_file(),
            reason: one_line(status.message()),
        },
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::OutOfRange
        | Code::ResourceExhausted => CliError::Server {
            code: status.code(),
            message: one_line(status.message()),
        },
        Code::DeadlineExceeded | Code::Cancelled
            if status.message().to_ascii_lowercase().contains("timeout") =>
        {
            CliError::Runtime(format!(
                "the control plane at {} did not answer in time; check that weft-cp is healthy and retry",
                ctx.url
            ))
        }
        _ => {
            // Transport failures after connecting (the server went away) carry the
            // real cause as the status source.
            if let Some(err) = status.source().and_then(|s| explain_cause(ctx, s)) {
                return err;
            }
            let message = if status.message().is_empty() {
                format!("{:?}", status.code())
            } else {
                one_line(status.message())
            };
            CliError::Runtime(format!(
                "the control plane at {} failed the request: {message}; see the weft-cp log",
                ctx.url
            ))
        }
    }
}

/// Turns a failure to connect into a [`CliError`].
pub fn explain_transport(ctx: &ErrorContext, err: &(dyn StdError + 'static)) -> CliError {
    explain_cause(ctx, err).unwrap_or_else(|| CliError::Unreachable {
        url: ctx.url.clone(),
        reason: innermost_message(err),
    })
}

/// The recognised cause somewhere in an error chain, if any.
fn explain_cause(ctx: &ErrorContext, err: &(dyn StdError + 'static)) -> Option<CliError> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(explain_rustls(ctx, tls));
        }
        if let Some(found) = e
            .downcast_ref::<io::Error>()
            .and_then(|io_err| explain_io(ctx, io_err))
        {
            return Some(found);
        }
        if let Some(timeout) = e.downcast_ref::<tonic::TimeoutExpired>() {
            return Some(CliError::Unreachable {
                url: ctx.url.clone(),
                reason: timeout.to_string(),
            });
        }
        let text = e.to_string();
        if text.contains("TLS handshake timeout") {
            return Some(unreachable(ctx, "TLS handshake timed out"));
        }
        if text.contains("HTTP/2 was not negotiated") {
            return Some(CliError::Tls(format!(
                "the server at {} does not speak gRPC over HTTP/2; check that --cp names weft-cp's gRPC port (7400)",
                ctx.url
            )));
        }
        current = e.source();
    }
    None
}

/// `io::Error::source` skips the error it wraps, so look at the payload as well.
fn explain_io(ctx: &ErrorContext, err: &io::Error) -> Option<CliError> {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => return Some(unreachable(ctx, "connection refused")),
        io::ErrorKind::TimedOut => return Some(unreachable(ctx, "connection timed out")),
        io::ErrorKind::ConnectionReset => return Some(unreachable(ctx, "connection reset")),
        _ => {}
    }
    err.get_ref().and_then(|inner| explain_cause(ctx, inner))
}

fn unreachable(ctx: &ErrorContext, reason: &str) -> CliError {
    CliError::Unreachable {
        url: ctx.url.clone(),
        reason: reason.to_string(),
    }
}

fn explain_rustls(ctx: &ErrorContext, err: &rustls::Error) -> CliError {
    use rustls::CertificateError as C;
    let message = match err {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => format!(
            "the control plane's certificate is not signed by the CA in {}; pass --ca {}",
            ctx.ca_label,
            ctx.ca_file()
        ),
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => format!(
            "the control plane's certificate does not cover the host in {}; use a host it was issued for \
             (start weft-cp with --san HOST to add one)",
            ctx.url
        ),
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the control plane's certificate has expired (or this machine's clock is wrong); \
             restart weft-cp to renew it"
                .to_string()
        }
        rustls::Error::InvalidMessage(_) => format!(
            "the server at {} did not answer with TLS; weft-cp serves TLS only, check the --cp URL and port",
            ctx.url
        ),
        other => format!(
            "TLS handshake with the control plane at {} failed: {other}",
            ctx.url
        ),
    };
    CliError::Tls(message)
}

/// The deepest message in an error chain, which is usually the specific one.
fn innermost_message(err: &(dyn StdError + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    one_line(&current.to_string())
}

/// Messages end up on one stderr line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ErrorContext {
        ErrorContext {
            url: "https://127.0.0.1:7400".into(),
            ca_label: "weft-data/ca.pem".into(),
            data_dir_label: "weft-data".into(),
        }
    }

    #[derive(Debug)]
    struct Wrapper(Box<dyn StdError + Send + Sync>);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(self.0.as_ref())
        }
    }

    #[test]
    fn finds_connection_refused_deep_in_the_chain() {
        let io_err = io::Error::from(io::ErrorKind::ConnectionRefused);
        let err = Wrapper(Box::new(Wrapper(Box::new(io_err))));
        let msg = explain_transport(&ctx(), &err).to_string();
        assert_eq!(
            msg,
            "cannot reach the control plane at https://127.0.0.1:7400: connection refused; \
             is weft-cp running? pass --cp or set WEFT_CP"
        );
    }

    #[test]
    fn finds_rustls_error_inside_io_error() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io_err = io::Error::new(io::ErrorKind::InvalidData, tls);
        let err = Wrapper(Box::new(io_err));
        let msg = explain_transport(&ctx(), &err).to_string();
        assert_eq!(
            msg,
            "the control plane's certificate is not signed by the CA in weft-data/ca.pem; \
             pass --ca weft-data/ca.pem"
        );
    }

    #[test]
    fn unauthenticated_names_the_token_file() {
        let err = explain_status(&ctx(), &Status::unauthenticated("bad token"));
        assert_eq!(err.exit_code(), EXIT_RUNTIME);
        assert!(
            err.to_string()
                .contains("(bad token); pass --token or set WEFT_TOKEN (the admin token is in weft-data/admin.token)")
        );
    }

    #[test]
    fn server_messages_pass_through_on_one_line() {
        let err = explain_status(
            &ctx(),
            &Status::not_found("service \"x\" not found;\ncreate it"),
        );
        assert_eq!(err.to_string(), "service \"x\" not found; create it");
    }
}
