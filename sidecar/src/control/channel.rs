//! gRPC channels to the control plane over a rustls config we build ourselves: tonic's
//! own TLS options cannot pin a CA fingerprint or present a certificate that rotates.
//! The connector reads the config from a `watch` at every (re)connect, so a renewed
//! certificate is used by the next connection while open ones keep theirs.
//!
//! `--cp` may name several replicas of the control plane (`URL[,URL...]`). Each new
//! connection tries them in turn, starting with the one that answered last, so when a
//! replica goes away the next reconnect (of the discovery stream, a renewal, a
//! bootstrap) lands on another. They are replicas of one control plane on one store:
//! the dataplane resumes there from the version it acknowledged, and one CA pin holds
//! for all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};

use super::ControlError;

/// How long one replica gets to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// One control plane address: host, port and the TLS name to check.
#[derive(Clone, Debug)]
struct Target {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

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

/// The URLs of a `--cp URL[,URL...]` value, each checked.
pub fn parse_urls(list: &str) -> Result<Vec<(String, u16)>, ControlError> {
    let urls: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(ControlError::BadUrl(list.to_owned()));
    }
    urls.into_iter().map(parse_url).collect()
}

fn targets(list: &str) -> Result<Vec<Target>, ControlError> {
    parse_urls(list)?
        .into_iter()
        .map(|(host, port)| {
            let server_name = ServerName::try_from(host.clone())
                .map_err(|_| ControlError::BadUrl(list.to_owned()))?
                .to_owned();
            Ok(Target {
                host,
                port,
                server_name,
            })
        })
        .collect()
}

/// Connects to the first target that accepts, starting at `preferred`, which is left
/// pointing at the one that did.
async fn connect_any(
    targets: &[Target],
    preferred: &AtomicUsize,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let start = preferred.load(Ordering::Relaxed);
    let mut last_error = None;
    for i in (0..targets.len()).map(|k| (start + k) % targets.len()) {
        let t = &targets[i];
        let attempt = async {
            let tcp = TcpStream::connect((t.host.as_str(), t.port)).await?;
            tcp.set_nodelay(true)?;
            tokio_rustls::TlsConnector::from(config.clone())
                .connect(t.server_name.clone(), tcp)
                .await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(tls)) => {
                if i != start {
                    tracing::info!(control_plane = %format!("{}:{}", t.host, t.port), "connected to another control plane replica");
                }
                preferred.store(i, Ordering::Relaxed);
                return Ok(tls);
            }
            Ok(Err(e)) => last_error = Some(e),
            Err(_) => {
                last_error = Some(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "{}:{} did not answer within {CONNECT_TIMEOUT:?}",
                        t.host, t.port
                    ),
                ))
            }
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no control plane address")))
}

/// A lazily connecting channel to the control plane at `urls` (one URL or a comma
/// list) whose TLS config is the current value of `tls`.
pub fn channel(
    urls: &str,
    tls: watch::Receiver<Arc<rustls::ClientConfig>>,
) -> Result<Channel, ControlError> {
    let targets = Arc::new(targets(urls)?);
    // The connector below picks the replica and does the TLS itself; the endpoint's
    // URI is only a label (tonic refuses an https URI it would not encrypt, hence
    // http://).
    let first = &targets[0];
    let authority = if first.host.contains(':') {
        format!("[{}]", first.host)
    } else {
        first.host.clone()
    };
    let endpoint = Endpoint::from_shared(format!("http://{authority}:{}", first.port))
        .map_err(|_| ControlError::BadUrl(urls.to_owned()))?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let preferred = Arc::new(AtomicUsize::new(0));
    let connector = tower::service_fn(move |_: Uri| {
        let config = tls.borrow().clone();
        let (targets, preferred) = (targets.clone(), preferred.clone());
        async move {
            let tls = connect_any(&targets, &preferred, config).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A channel with a fixed TLS config.
pub fn fixed_channel(urls: &str, tls: Arc<rustls::ClientConfig>) -> Result<Channel, ControlError> {
    // A receiver keeps returning the last value after its sender is gone.
    let (_tx, rx) = watch::channel(tls);
    channel(urls, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_urls_is_parsed_and_each_checked() {
        let urls = parse_urls("https://a:1, https://b,https://[::1]:7400").unwrap();
        assert_eq!(
            urls,
            [
                ("a".to_owned(), 1),
                ("b".to_owned(), 7400),
                ("::1".to_owned(), 7400)
            ]
        );
        assert!(matches!(
            parse_urls("https://a:1,http://b:2"),
            Err(ControlError::BadUrl(u)) if u == "http://b:2"
        ));
        assert!(parse_urls(" , ").is_err());
    }
}
