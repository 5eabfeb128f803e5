//! The discovery stream: one per dataplane. The dataplane proves who it is with its
//! mesh certificate, says hello, and from then on receives a config update whenever
//! something it cares about changed, one at a time: the next update is computed from
//! the version it acknowledged, so a slow dataplane gets one coalesced delta instead
//! of a backlog, and a nack leaves its current version where it was.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_certs::IdentityKind;
use weft_proto::v1::discovery_request::Message as In;
use weft_proto::v1::discovery_response::Message as Out;
use weft_proto::v1::discovery_server::Discovery;
use weft_proto::v1::{AppProtocol, DataplaneKind, DiscoveryRequest, DiscoveryResponse, Hello};

use super::{Shared, auth, status};
use crate::registry::{default_id, now_unix};
use crate::store::DataplaneRegistration;
use crate::validate;

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct DiscoveryService {
    shared: Arc<Shared>,
}

impl DiscoveryService {
    pub fn new(shared: Arc<Shared>) -> Self {
        DiscoveryService { shared }
    }
}

fn kind_matches(cert: &IdentityKind, kind: DataplaneKind) -> bool {
    matches!(
        (cert, kind),
        (IdentityKind::Service, DataplaneKind::Sidecar)
            | (IdentityKind::Gateway, DataplaneKind::Gateway)
            | (IdentityKind::Ingress, DataplaneKind::Ingress)
    )
}

fn check_region(region: &str) -> Result<(), Status> {
    if region.len() <= 63
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid region \"{region}\": use up to 63 of [a-z0-9-] (e.g. eu, us-east); set it with --region"
        )))
    }
}

/// Everything a session needs to know about its dataplane.
struct Session {
    shared: Arc<Shared>,
    id: String,
    kind: DataplaneKind,
    generation: u64,
    /// Version the dataplane holds (None: it holds nothing we can delta from).
    base: Option<u64>,
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn stream(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let Some((peer, cert_expiry)) = auth::peer_identity(&req) else {
            return Err(Status::unauthenticated(
                "the discovery stream needs the dataplane's mesh certificate on the TLS connection; obtain one with Identity.IssueCertificate and a bootstrap token first",
            ));
        };
        let mut inbound = req.into_inner();
        let hello: Hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(DiscoveryRequest {
                message: Some(In::Hello(h)),
            }))) => h,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "no Hello within 10 s of opening the discovery stream",
                ));
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on the discovery stream must be Hello",
                ));
            }
        };
        let kind = DataplaneKind::try_from(hello.kind)
            .ok()
            .filter(|k| *k != DataplaneKind::Unspecified)
            .ok_or_else(|| {
                Status::invalid_argument("Hello.kind must be SIDECAR, GATEWAY or INGRESS")
            })?;
        let td = self.shared.ca.trust_domain().as_str();
        if peer.trust_domain() != td
            || !kind_matches(peer.kind(), kind)
            || peer.name() != hello.name
        {
            return Err(Status::permission_denied(format!(
                "the certificate is for {peer}, but the hello claims {} \"{}\" in trust domain {td}; use a token for that identity",
                kind.segment(),
                hello.name
            )));
        }
        validate::address(&hello.address).map_err(Status::invalid_argument)?;
        check_region(&hello.region)?;
        let id = if hello.dataplane_id.is_empty() {
            default_id(kind, &hello.name, &hello.address)
        } else {
            let id = hello.dataplane_id.clone();
            if id.len() > 253 || id.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Status::invalid_argument(
                    "dataplane_id must be at most 253 printable characters without spaces",
                ));
            }
            id
        };
        let shared = self.shared.clone();
        shared
            .store
            .register_dataplane(DataplaneRegistration {
                id: id.clone(),
                kind,
                name: hello.name.clone(),
                region: hello.region.clone(),
                address: hello.address.clone(),
                cert_expiry,
                now: now_unix(),
            })
            .await
            .map_err(status)?;
        // Publish our own (re)registration before computing what to send.
        if let Err(e) = shared.hub.reload().await {
            tracing::warn!(error = %e, "reload after registration failed");
        }
        let generation = shared.registry.connected(&id, cert_expiry);
        let snap = shared.hub.current();
        let base = snap
            .can_delta_from(&hello.control_plane_id, hello.known_version)
            .then_some(hello.known_version);
        tracing::info!(dataplane = %id, region = %hello.region, known = hello.known_version, delta = base.is_some(), "discovery stream opened");

        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            shared,
            id,
            kind,
            generation,
            base,
        };
        tokio::spawn(session.run(inbound, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Session {
    async fn run(
        mut self,
        mut inbound: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let metrics = self.shared.metrics.clone();
        metrics.streams_connected.inc();
        let mut snapshots = self.shared.hub.subscribe();
        let mut in_flight: Option<(u64, Instant)> = None;
        let mut nacked: Option<u64> = None;
        let mut check = true;
        loop {
            if check && in_flight.is_none() {
                check = false;
                let snap = snapshots.borrow_and_update().clone();
                // A nacked version is not sent again; a newer one is.
                if nacked.is_none_or(|n| n < snap.version) {
                    match snap.update_for(self.kind, self.base) {
                        Some(update) => {
                            let version = update.version;
                            let msg = DiscoveryResponse {
                                message: Some(Out::Update(update)),
                            };
                            if tx.send(Ok(msg)).await.is_err() {
                                break;
                            }
                            metrics.pushes.inc();
                            self.shared.registry.sent(&self.id, version);
                            in_flight = Some((version, Instant::now()));
                        }
                        None => {
                            if let Some(base) = self.base {
                                self.shared.registry.acked(&self.id, base);
                            }
                        }
                    }
                }
            }
            tokio::select! {
                changed = snapshots.changed(), if in_flight.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                    check = true;
                }
                msg = inbound.message() => match msg {
                    Ok(Some(DiscoveryRequest { message: Some(m) })) => {
                        if let Err(e) = self.handle(m, &mut in_flight, &mut nacked).await {
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                        check = true;
                    }
                    Ok(Some(DiscoveryRequest { message: None })) => {}
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(dataplane = %self.id, error = %e, "discovery stream broke");
                        break;
                    }
                },
                _ = tx.closed() => break,
            }
        }
        metrics.streams_connected.dec();
        tracing::info!(dataplane = %self.id, "discovery stream closed");
        self.shared
            .registry
            .disconnected(&self.id, self.generation)
            .await;
    }

    async fn handle(
        &mut self,
        m: In,
        in_flight: &mut Option<(u64, Instant)>,
        nacked: &mut Option<u64>,
    ) -> Result<(), Status> {
        let metrics = &self.shared.metrics;
        match m {
            In::Ack(ack) => {
                if let Some((v, sent_at)) = *in_flight {
                    if ack.version == v {
                        *in_flight = None;
                        *nacked = None;
                        self.base = Some(v);
                        self.shared.registry.acked(&self.id, v);
                        metrics.acks.inc();
                        metrics
                            .push_to_ack_seconds
                            .observe(sent_at.elapsed().as_secs_f64());
                    }
                }
            }
            In::Nack(nack) => {
                if let Some((v, _)) = *in_flight {
                    if nack.version == v {
                        *in_flight = None;
                        *nacked = Some(v);
                        metrics.nacks.inc();
                        tracing::warn!(dataplane = %self.id, version = v, error = %nack.error, "dataplane rejected config");
                        self.shared.registry.nacked(&self.id, v, nack.error);
                    }
                }
            }
            In::AppStatus(s) => {
                let app = AppProtocol::try_from(s.protocol).unwrap_or(AppProtocol::Unknown);
                self.shared.registry.app_status(&self.id, app).await;
            }
            In::Hello(_) => {
                return Err(Status::invalid_argument(
                    "Hello may only be sent once, as the first message",
                ));
            }
        }
        Ok(())
    }
}
