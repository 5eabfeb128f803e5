//! Opening tunnel streams: a pool with one HTTP/2 connection per peer (address and
//! expected identity). A stream is a `CONNECT` whose `:authority` names the destination
//! service; the peer answers 200 only once it has connected to its app, so a refusal
//! arrives before any byte of the carried connection was sent and can be retried on
//! another endpoint.
//!
//! Every pooled connection is watched ([`super::liveness`]): one found dead is dropped
//! from the pool at once (no new stream goes to it), its endpoint is reported
//! unreachable to the balancer, and a probe brings it back once it answers again.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use weft_certs::SpiffeId;

use super::io::H2Io;
use super::liveness::{self, Ended};
use super::{
    CONNECT_TIMEOUT, CONNECTION_WINDOW, DIAL_TIMEOUT, HANDSHAKE_TIMEOUT, MAX_FRAME, STREAM_WINDOW,
};
use crate::control::config::EndpointEntry;
use crate::io::{Activity, Tracked};
use crate::outbound::balance::Balancer;
use crate::tls::{MeshAlpn, MeshTls};

/// Why a tunnel stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot connect to {addr}: {err}")]
    Connect { addr: String, err: std::io::Error },
    #[error("TLS with {addr} failed: {err}")]
    Tls { addr: String, err: std::io::Error },
    #[error("tunnel to {addr} timed out")]
    Timeout { addr: String },
    #[error("HTTP/2 with {addr} failed: {err}")]
    H2 { addr: String, err: h2::Error },
    #[error("HTTP/2 with {addr} failed: {err}")]
    Http { addr: String, err: hyper::Error },
    #[error(
        "{addr} does not speak {wanted:?} on its inbound port; is its sidecar older than this dataplane?"
    )]
    Alpn { addr: String, wanted: MeshAlpn },
    #[error("{addr} refused the stream for {service}: {status}")]
    Refused {
        addr: String,
        service: String,
        status: StatusCode,
    },
    #[error("invalid peer identity {0}")]
    Identity(String),
    #[error("{0}")]
    Cert(#[from] weft_certs::CertError),
}

impl TunnelError {
    /// Whether the stream was refused unprocessed by a peer that is alive (HTTP/2
    /// `REFUSED_STREAM`, or above the last stream id of its GOAWAY: RFC 9113 §8.7):
    /// another endpoint can take it, and this one is not at fault.
    pub fn unprocessed(&self) -> bool {
        matches!(self, TunnelError::H2 { err, .. } if unprocessed(err))
    }

    /// Whether the endpoint answered at all (a refusal with a status); otherwise it
    /// could not be reached or its connection failed.
    pub fn answered(&self) -> bool {
        matches!(self, TunnelError::Refused { .. } | TunnelError::Alpn { .. })
    }
}

/// Whether an HTTP/2 stream error says the peer did not process the stream: a
/// `REFUSED_STREAM` reset, or a stream above the last id of the peer's GOAWAY (h2
/// reports those as the GOAWAY itself; streams it processed fail otherwise).
pub fn unprocessed(err: &h2::Error) -> bool {
    err.is_remote()
        && (err.is_go_away()
            || (err.is_reset() && err.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

/// Where a stream goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// host:port the TCP connection goes to: the peer's inbound listener, or the
    /// ingress of its region when it is in another region and has one.
    pub address: String,
    /// TLS server name: names the peer for an ingress (which splices by it).
    pub sni: String,
    /// SPIFFE id the peer must present (checked end to end: the ingress never decrypts).
    pub identity: String,
    /// Destination service.
    pub service: String,
    /// The endpoint's own address: what the balancer ejects when it cannot be reached.
    pub endpoint: String,
}

impl Target {
    /// How a caller in `region` reaches `ep` of `service`. In its own region, and in
    /// regions without an ingress (flat networks): directly. Otherwise through an
    /// ingress: `egress` when given (the caller's own region's ingress, for callers
    /// whose network reaches only their region; it relays by SNI), else the ingress of
    /// the endpoint's region.
    pub fn for_endpoint(
        ep: &EndpointEntry,
        service: &str,
        region: &str,
        egress: Option<&str>,
    ) -> Self {
        let address = if ep.region == region || ep.ingress_address.is_empty() {
            ep.address.clone()
        } else {
            egress.unwrap_or(&ep.ingress_address).to_owned()
        };
        Target {
            address,
            sni: if ep.sni.is_empty() {
                format!("{service}.weft")
            } else {
                ep.sni.clone()
            },
            identity: ep.identity.clone(),
            service: service.to_owned(),
            endpoint: ep.address.clone(),
        }
    }
}

/// Which pooled connection a target uses: through an ingress one address leads to many
/// peers, which the SNI tells apart, and the identity the peer must hold is part of it.
/// `lane` tells apart the connections to one peer ([`lanes`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub address: String,
    pub sni: String,
    pub identity: String,
    pub lane: usize,
}

impl PeerKey {
    pub fn of(target: &Target, lane: usize) -> Self {
        PeerKey {
            address: target.address.clone(),
            sni: target.sni.clone(),
            identity: target.identity.clone(),
            lane,
        }
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (sni {}, {})", self.address, self.sni, self.identity)?;
        if self.lane > 0 {
            write!(f, " lane {}", self.lane)?;
        }
        Ok(())
    }
}

/// Connections kept to each peer: one per runtime worker (at most [`MAX_LANES`]). A
/// connection's TLS and HTTP/2 framing run in its one driver task, i.e. on one worker
/// at a time; streams spread over one connection per worker let a second worker carry
/// half of a busy peer's bytes. With one worker: one connection, as before.
fn lanes() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(1)
        .clamp(1, MAX_LANES)
}

/// Most connections kept to one peer.
const MAX_LANES: usize = 4;

type Slot = Arc<tokio::sync::Mutex<Option<SendRequest<Bytes>>>>;

/// Whether a pooled connection can still open streams: a dead connection's `ready`
/// fails at once; a live one is ready or merely waiting for stream capacity.
fn alive(s: &SendRequest<Bytes>) -> bool {
    use futures_util::FutureExt as _;
    !matches!(s.clone().ready().now_or_never(), Some(Err(_)))
}

/// Opens an mTLS connection to `target` speaking `alpn`: the peer must present the
/// target's SPIFFE id and agree on the protocol. Through an ingress the SNI names the
/// peer (the ingress splices by it, and ALPN passes through untouched). The TCP connect
/// may take [`DIAL_TIMEOUT`], the TLS handshake [`HANDSHAKE_TIMEOUT`]; the socket gets
/// the mesh's keepalive and user timeout ([`crate::net::mesh_socket`]).
pub async fn connect_tls(
    tls: &MeshTls,
    target: &Target,
    alpn: MeshAlpn,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, TunnelError> {
    let addr = target.address.clone();
    let expected = SpiffeId::parse(&target.identity)
        .map_err(|_| TunnelError::Identity(target.identity.clone()))?;
    let config = tls.client(&expected, alpn)?;
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| TunnelError::Timeout { addr: addr.clone() })?
        .map_err(|err| TunnelError::Connect {
            addr: addr.clone(),
            err,
        })?;
    crate::net::mesh_socket(&tcp);
    // The verifier checks the SPIFFE id, not this name; SNI names the peer.
    let sni = ServerName::try_from(target.sni.clone())
        .map_err(|_| TunnelError::Identity(target.sni.clone()))?;
    let stream = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_rustls::TlsConnector::from(config).connect(sni, tcp),
    )
    .await
    .map_err(|_| TunnelError::Timeout { addr: addr.clone() })?
    .map_err(|err| TunnelError::Tls {
        addr: addr.clone(),
        err,
    })?;
    if MeshAlpn::of(stream.get_ref().1.alpn_protocol()) != Some(alpn) {
        return Err(TunnelError::Alpn { addr, wanted: alpn });
    }
    Ok(stream)
}

/// Pooled HTTP/2 connections to peers.
pub struct TunnelPool {
    tls: Arc<MeshTls>,
    /// Told about endpoints whose connection was found dead; probes bring them back.
    balancer: Arc<Balancer>,
    conns: DashMap<PeerKey, Slot>,
    lanes: usize,
    /// Lane of the next stream (round robin).
    next_lane: std::sync::atomic::AtomicUsize,
}

impl TunnelPool {
    pub fn new(tls: Arc<MeshTls>, balancer: Arc<Balancer>) -> Arc<Self> {
        Arc::new(TunnelPool {
            tls,
            balancer,
            conns: DashMap::new(),
            lanes: lanes(),
            next_lane: Default::default(),
        })
    }

    /// Number of peers with a pooled connection (in their first lane: each peer once).
    pub fn size(&self) -> usize {
        self.conns.iter().filter(|e| e.key().lane == 0).count()
    }

    /// Drops pooled connections to peers no longer in `keep` (address set); their
    /// connections close once their open streams finish.
    pub fn retain_addresses(&self, keep: &std::collections::HashSet<String>) {
        self.conns.retain(|key, _| keep.contains(&key.address));
    }

    /// The pooled connection to `target`, connecting when there is none alive.
    async fn sender(self: &Arc<Self>, target: &Target) -> Result<SendRequest<Bytes>, TunnelError> {
        let lane = match self.lanes {
            1 => 0,
            n => {
                use std::sync::atomic::Ordering::Relaxed;
                self.next_lane.fetch_add(1, Relaxed) % n
            }
        };
        let key = PeerKey::of(target, lane);
        let slot = self.conns.entry(key.clone()).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(s) = guard.as_ref().filter(|s| alive(s)) {
            return Ok(s.clone());
        }
        let s = self.connect(target, key, slot.clone()).await?;
        *guard = Some(s.clone());
        Ok(s)
    }

    /// Starts probing `target`'s endpoint, which could not be reached: it comes back
    /// into the balancer's choice once a connection to it opens (and stays pooled).
    pub fn probe(self: &Arc<Self>, target: &Target) {
        let (pool, target) = (self.clone(), target.clone());
        let addr = target.endpoint.clone();
        tokio::spawn(self.balancer.clone().probe(addr, move || {
            let (pool, target) = (pool.clone(), target.clone());
            async move { pool.sender(&target).await.is_ok() }
        }));
    }

    /// Opens a CONNECT stream to `target`.
    pub async fn open(self: &Arc<Self>, target: &Target) -> Result<H2Io, TunnelError> {
        let mut sender = self.sender(target).await?;
        let addr = target.address.clone();
        let h2err = |err| TunnelError::H2 {
            addr: addr.clone(),
            err,
        };
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("{}:0", target.service))
            .body(())
            .map_err(|_| TunnelError::Identity(target.service.clone()))?;
        sender = sender.ready().await.map_err(h2err)?;
        let (response, send) = sender.send_request(req, false).map_err(h2err)?;
        let response = tokio::time::timeout(CONNECT_TIMEOUT * 2, response)
            .await
            .map_err(|_| TunnelError::Timeout { addr: addr.clone() })?
            .map_err(h2err)?;
        if response.status() != StatusCode::OK {
            return Err(TunnelError::Refused {
                addr,
                service: target.service.clone(),
                status: response.status(),
            });
        }
        Ok(H2Io::new(send, response.into_body()))
    }

    async fn connect(
        self: &Arc<Self>,
        target: &Target,
        key: PeerKey,
        slot: Slot,
    ) -> Result<SendRequest<Bytes>, TunnelError> {
        let addr = target.address.clone();
        let h2err = |err| TunnelError::H2 {
            addr: addr.clone(),
            err,
        };
        let tls = connect_tls(&self.tls, target, MeshAlpn::Tunnel).await?;
        let heard = Activity::default();
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(1024 * 1024)
            .enable_push(false)
            .handshake::<_, Bytes>(Tracked::reads(tls, heard.clone()));
        let (sender, mut conn) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| TunnelError::Timeout { addr: addr.clone() })?
            .map_err(h2err)?;
        // The watcher runs on its own task: a PING completes only while the connection
        // future is being polled, so it must never be awaited inside the driver.
        let (dead_tx, mut dead_rx) = tokio::sync::oneshot::channel::<()>();
        if let Some(pong) = conn.ping_pong() {
            tokio::spawn(async move {
                if liveness::watch(pong, heard).await == Ended::Dead {
                    let _ = dead_tx.send(());
                }
            });
        }
        let this = Arc::downgrade(self);
        let target = target.clone();
        tokio::spawn(async move {
            // The connection is dropped when this block ends: that fails its streams at
            // once, and no new stream can start on it.
            let dead = async {
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    r = &mut conn => {
                        if let Err(e) = r {
                            tracing::debug!(peer = %key, error = %e, "tunnel connection ended");
                        }
                        false
                    }
                    Ok(()) = &mut dead_rx => {
                        tracing::warn!(peer = %key, "tunnel peer stopped answering; connection dropped");
                        true
                    }
                }
            }
            .await;
            // Forget it unless a newer one already replaced it.
            let Some(pool) = this.upgrade() else { return };
            {
                let mut guard = slot.lock().await;
                if !guard.as_ref().is_some_and(alive) {
                    *guard = None;
                    drop(guard);
                    pool.conns.remove_if(&key, |_, s| Arc::ptr_eq(s, &slot));
                }
            }
            if dead && pool.balancer.unreachable(&target.endpoint) {
                pool.probe(&target);
            }
        });
        Ok(sender)
    }
}
