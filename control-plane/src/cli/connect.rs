//! Opening an authenticated admin connection to the control plane.
//!
//! The control plane's gRPC port is TLS with a certificate from the mesh CA, so the
//! channel trusts exactly that CA (not the system roots) and checks the host of the
//! URL against the certificate. The admin token rides on every request through an
//! interceptor, which keeps the command code free of metadata handling.

use std::fmt;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};
use weft_proto::v1::admin_client::AdminClient;

use super::error::{CliError, ErrorContext, explain_status, explain_transport};

/// How long to wait for TCP connect and for the TLS handshake, each.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one admin request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin client that sends the admin token with every request.
pub type AdminConn = AdminClient<InterceptedService<Channel, BearerAuth>>;

/// Everything needed to reach the control plane, already resolved (see
/// [`super::options::resolve`]); tests and tools can also fill it in directly.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `https://host:port` of the control plane's gRPC listener.
    pub url: String,
    /// The admin token (without `Bearer `).
    pub token: String,
    /// PEM of the CA certificate(s) the control plane's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// Where the CA came from, named in "not signed by the CA in ..." errors.
    pub ca_label: String,
    /// The data directory to name in hints (`weft-data` by default).
    pub data_dir_label: String,
}

impl ConnectOptions {
    /// Options for a control plane at `url` with the given token and CA PEM.
    pub fn new(
        url: impl Into<String>,
        token: impl Into<String>,
        ca_pem: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            ca_pem: ca_pem.into(),
            ca_label: "the given CA".to_string(),
            data_dir_label: super::options::DEFAULT_DATA_DIR.to_string(),
        }
    }

    /// What error messages about this connection need.
    pub fn error_context(&self) -> ErrorContext {
        ErrorContext {
            url: self.url.clone(),
            ca_label: self.ca_label.clone(),
            data_dir_label: self.data_dir_label.clone(),
        }
    }

    /// Maps a status returned by an admin call on this connection.
    pub fn explain(&self, status: &Status) -> CliError {
        explain_status(&self.error_context(), status)
    }
}

/// The token is a secret: never print it in debug output.
impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("ca_label", &self.ca_label)
            .field("data_dir_label", &self.data_dir_label)
            .finish()
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerAuth {
    header: MetadataValue<Ascii>,
}

impl BearerAuth {
    /// Fails when the token holds characters that cannot go in a header.
    pub fn new(token: &str) -> Result<Self, CliError> {
        let header = format!("Bearer {token}").parse().map_err(|_| {
            CliError::Usage(
                "the admin token holds characters not allowed in a header; copy it again from admin.token"
                    .to_string(),
            )
        })?;
        Ok(Self { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// Connects to the control plane's admin API. The connection (TCP and TLS) is made
/// here rather than on the first call, so an unreachable control plane or an untrusted
/// certificate is reported before any command runs. With several URLs (the replicas of
/// one control plane), each is tried in turn; the error of the last is reported.
pub async fn connect_admin(opts: &ConnectOptions) -> Result<AdminConn, CliError> {
    let auth = BearerAuth::new(&opts.token)?;
    let mut last = None;
    for url in opts.url.split(',') {
        match connect_one(opts, url).await {
            Ok(channel) => return Ok(AdminClient::with_interceptor(channel, auth)),
            Err(e @ CliError::Usage(_)) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| CliError::Usage("--cp: no URL given".to_string())))
}

async fn connect_one(opts: &ConnectOptions, url: &str) -> Result<Channel, CliError> {
    let ctx = ErrorContext {
        url: url.to_string(),
        ..opts.error_context()
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| CliError::Usage(format!("--cp {url}: not a URL ({e})")))?;
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| CliError::Usage(format!("--cp {url}: no host in the URL")))?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&opts.ca_pem))
        .domain_name(host)
        .timeout(CONNECT_TIMEOUT);
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| CliError::Usage(format!("--cp {url}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .tls_config(tls)
        .map_err(|e| {
            CliError::Usage(format!(
                "cannot use the CA in {}: {e}; pass --ca {}/ca.pem",
                opts.ca_label, opts.data_dir_label
            ))
        })?;
    endpoint
        .connect()
        .await
        .map_err(|e| explain_transport(&ctx, &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::error::EXIT_RUNTIME;

    #[test]
    fn interceptor_sets_bearer_header() {
        let mut auth = BearerAuth::new("abc").unwrap();
        let req = auth.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer abc");
        assert!(BearerAuth::new("bad\ntoken").is_err());
    }

    #[test]
    fn debug_hides_the_token() {
        let opts = ConnectOptions::new("https://127.0.0.1:1", "secret-token", Vec::new());
        assert!(!format!("{opts:?}").contains("secret-token"));
    }

    #[tokio::test]
    async fn refused_connection_says_what_to_do() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pem = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
        let opts = ConnectOptions::new(format!("https://127.0.0.1:{port}"), "t", pem);
        let err = connect_admin(&opts).await.err().unwrap();
        assert_eq!(err.exit_code(), EXIT_RUNTIME);
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the control plane at https://127.0.0.1:{port}: connection refused; \
                 is weft-cp running? pass --cp or set WEFT_CP"
            )
        );
    }
}
