//! gRPC channels to the control plane over a rustls config we build ourselves: tonic's
//! own TLS options cannot pin a CA fingerprint or present a certificate that rotates.
//! The connector reads the config from a `watch` at every (re)connect, so a renewed
//! certificate is used by the next connection while open ones keep theirs.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};

use super::ControlError;

/// Host and port of an `https://HOST:PORT` control plane URL.
pub fn parse_url(url: &str) -> Result<(String, u16), ControlError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| ControlError::BadUrl(url.to_owned()))?;
    if uri.scheme_str() != Some("https") {
        return Err(ControlError::BadUrl(url.to_owned()));
    }
    let host = uri
        .host()
        .ok_or_else(|| ControlError::BadUrl(url.to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(7400)))
}

/// A lazily connecting channel to `url` whose TLS config is the current value of `tls`.
pub fn channel(
    url: &str,
    tls: watch::Receiver<Arc<rustls::ClientConfig>>,
) -> Result<Channel, ControlError> {
    let (host, port) = parse_url(url)?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| ControlError::BadUrl(url.to_owned()))?
        .to_owned();
    // The connector below does the TLS itself; tonic only refuses an https URI it would
    // not encrypt, so the endpoint is named http:// here.
    let authority = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let endpoint = Endpoint::from_shared(format!("http://{authority}:{port}"))
        .map_err(|_| ControlError::BadUrl(url.to_owned()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let connector = tower::service_fn(move |_: Uri| {
        let config = tls.borrow().clone();
        let (host, server_name) = (host.clone(), server_name.clone());
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A channel with a fixed TLS config.
pub fn fixed_channel(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<Channel, ControlError> {
    // A receiver keeps returning the last value after its sender is gone.
    let (_tx, rx) = watch::channel(tls);
    channel(url, rx)
}
