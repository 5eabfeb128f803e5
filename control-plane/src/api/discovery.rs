//! The discovery stream: one per dataplane. The dataplane proves who it is with its
//! mesh certificate, says hello, and from then on receives a config update whenever
//! something it cares about changed, one at a time: the next update is computed from
//! the version it acknowledged, so a slow dataplane gets one coalesced delta instead
//! of a backlog, and a nack leaves its current version where it was.
//!
//! A control plane holds one stream per dataplane of the fleet, so what a stream costs
//! while idle is what matters: the session is the response stream itself (no task, no
//! channel), woken by the inbound messages and the config watch, and updates go out
//! in small parts to dataplanes that can assemble them (`Hello.accepts_update_parts`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};
use weft_certs::IdentityKind;
use weft_proto::v1::discovery_request::Message as In;
use weft_proto::v1::discovery_response::Message as Out;
use weft_proto::v1::discovery_server::Discovery;
use weft_proto::v1::{AppProtocol, DataplaneKind, DiscoveryRequest, DiscoveryResponse, Hello};

use super::{Shared, auth, status};
use crate::hub::{Snapshot, UpdateParts};
use crate::registry::{default_id, now_unix};
use crate::store::DataplaneRegistration;
use crate::traffic::Reporting;
use crate::validate;

/// How long a new stream may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest encoded part of an update, for dataplanes that take parts. tonic encodes
/// the messages of a stream into one buffer that starts at 8 KiB and is kept for the
/// stream's life, grown to fit the largest message: a 113 kB full config left 128 KiB
/// behind on every stream. Parts of at most half the initial size also never make it
/// grow when a part starts near the end of the buffer (`BytesMut` then reclaims the
/// space already sent instead of doubling).
const PART_BYTES: usize = 4000;

/// The response stream of one discovery session.
type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

pub struct DiscoveryService {
    shared: Arc<Shared>,
}

impl DiscoveryService {
    pub fn new(shared: Arc<Shared>) -> Self {
        DiscoveryService { shared }
    }

    /// Checks a hello against the certificate that sent it and the address it came
    /// from; returns the dataplane's kind and its id, which is derived from the
    /// verified identity and the checked address (never taken from the client).
    async fn check_hello(
        &self,
        peer: &auth::PeerCert,
        source: Option<std::net::IpAddr>,
        hello: &Hello,
    ) -> Result<(DataplaneKind, String), Status> {
        let kind = DataplaneKind::try_from(hello.kind)
            .ok()
            .filter(|k| *k != DataplaneKind::Unspecified)
            .ok_or_else(|| {
                Status::invalid_argument("Hello.kind must be SIDECAR, GATEWAY or INGRESS")
            })?;
        let td = self.shared.ca.trust_domain().as_str();
        let id = &peer.id;
        if id.trust_domain() != td || !kind_matches(id.kind(), kind) || id.name() != hello.name {
            return Err(Status::permission_denied(format!(
                "the certificate is for {id}, but the hello claims {} \"{}\" in trust domain {td}; use a token for that identity",
                kind.segment(),
                hello.name
            )));
        }
        let revoked = self
            .shared
            .store
            .get_certificate(&peer.serial)
            .await
            .map_err(status)?
            .is_some_and(|c| c.revoked_at != 0);
        if revoked {
            return Err(Status::permission_denied(revoked_message(&peer.id)));
        }
        validate::address(&hello.address).map_err(Status::invalid_argument)?;
        validate::region(&hello.region, "--region").map_err(Status::invalid_argument)?;
        // Others connect to the address of a sidecar (its inbound) or an ingress; a
        // gateway's is only shown, never dialled, so it is not held to the rule.
        if kind != DataplaneKind::Gateway {
            self.shared
                .advertise
                .check(&hello.address, source)
                .await
                .map_err(Status::invalid_argument)?;
        }
        let derived = default_id(kind, &hello.name, &hello.address);
        if !hello.dataplane_id.is_empty() && hello.dataplane_id != derived {
            return Err(Status::permission_denied(format!(
                "dataplane ids are derived by the control plane from the certificate and the address (here \"{derived}\"), not chosen by the dataplane; leave Hello.dataplane_id empty"
            )));
        }
        Ok((kind, derived))
    }
}

/// Why a revoked dataplane is refused, and what to do.
pub(crate) fn revoked_message(id: &weft_certs::SpiffeId) -> String {
    let flag = match id.kind() {
        IdentityKind::Gateway => "--gateway",
        IdentityKind::Ingress => "--ingress",
        _ => "--service",
    };
    format!(
        "this dataplane's certificate was revoked (`weftctl dataplane revoke`); to bring it back, create a new token with `weftctl token create {flag} {}` and start it with that token and an empty --state-dir",
        id.name()
    )
}

/// The first message of a stream, which must be the hello.
async fn read_hello(inbound: &mut Streaming<DiscoveryRequest>) -> Result<Hello, Status> {
    match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(DiscoveryRequest {
            message: Some(In::Hello(h)),
        }))) => Ok(h),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Status::deadline_exceeded(
            "no Hello within 10 s of opening the discovery stream",
        )),
        _ => Err(Status::invalid_argument(
            "the first message on the discovery stream must be Hello",
        )),
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

/// One open stream, counted in the metrics; dropping it (when the session ends for any
/// reason, including hyper dropping the response stream because the dataplane went
/// away) records the disconnection.
struct Connected {
    shared: Arc<Shared>,
    id: String,
    generation: u64,
}

impl Connected {
    fn new(shared: Arc<Shared>, id: String, generation: u64) -> Self {
        shared.metrics.streams_connected.inc();
        Connected {
            shared,
            id,
            generation,
        }
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.shared.metrics.streams_connected.dec();
        tracing::info!(dataplane = %self.id, "discovery stream closed");
        // Recording it writes to the store: do that on a task of its own. Without a
        // runtime the process is shutting down and the grace timers are moot anyway.
        let registry = self.shared.registry.clone();
        let (id, generation) = (std::mem::take(&mut self.id), self.generation);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { registry.disconnected(&id, generation).await });
        }
    }
}

/// Everything a session needs to know about its dataplane, and where it is.
struct Session {
    conn: Connected,
    kind: DataplaneKind,
    /// Service, gateway or ingress name (as on its certificate).
    name: String,
    /// The identity and certificate serial the stream was opened with: when the
    /// serial is revoked, the stream ends at once.
    peer: auth::PeerCert,
    /// Snapshots watched for revocation only, whether or not an update is in flight.
    revocations: watch::Receiver<Arc<Snapshot>>,
    /// Encoded size limit of one message (`usize::MAX`: whole updates only).
    part_bytes: usize,
    inbound: Streaming<DiscoveryRequest>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Version the dataplane holds (None: it holds nothing we can delta from).
    base: Option<u64>,
    /// The update sent and not yet acknowledged, and when it was sent.
    in_flight: Option<(u64, Instant)>,
    /// The parts of the in-flight update still to send.
    sending: Option<UpdateParts>,
    /// The last version the dataplane rejected; it is not sent again.
    nacked: Option<u64>,
    /// Whether to look for something to send.
    check: bool,
    /// A protocol error was sent: the stream ends.
    ended: bool,
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // Who: the certificate, checked against revocations; where from: the TCP peer.
        let Some(peer) = auth::peer_identity(&req) else {
            return Err(Status::unauthenticated(
                "the discovery stream needs the dataplane's mesh certificate on the TLS connection; obtain one with Identity.IssueCertificate and a bootstrap token first",
            ));
        };
        let source = req.remote_addr().map(|a| a.ip());
        let mut inbound = req.into_inner();
        let hello = read_hello(&mut inbound).await?;
        let (kind, id) = self.check_hello(&peer, source, &hello).await?;
        let part_bytes = if hello.accepts_update_parts {
            PART_BYTES
        } else {
            usize::MAX
        };
        let shared = self.shared.clone();
        let record = shared
            .store
            .register_dataplane(DataplaneRegistration {
                id: id.clone(),
                kind,
                name: hello.name.clone(),
                region: hello.region.clone(),
                address: hello.address.clone(),
                cert_expiry: peer.not_after,
                cert_serial: peer.serial.clone(),
                now: now_unix(),
            })
            .await
            .map_err(status)?;
        // Our own (re)registration must be in the snapshot we compute from.
        if let Err(e) = shared.hub.published(record.revision).await {
            tracing::warn!(error = %e, "reload after registration failed");
        }
        let snapshots = shared.hub.subscribe();
        let base = snapshots
            .borrow()
            .can_delta_from(&hello.control_plane_id, hello.known_version)
            .then_some(hello.known_version);
        // A dataplane that fails over from another replica holds what it acknowledged
        // there: that counts as acknowledged here too.
        let generation = shared
            .registry
            .connected(&id, peer.not_after, base.unwrap_or(0))
            .await
            .map_err(status)?;
        tracing::info!(dataplane = %id, region = %hello.region, known = hello.known_version, delta = base.is_some(), parts = part_bytes != usize::MAX, "discovery stream opened");

        let revocations = shared.hub.subscribe();
        let session = Session {
            conn: Connected::new(shared, id, generation),
            kind,
            name: hello.name,
            peer,
            revocations,
            part_bytes,
            inbound,
            snapshots,
            base,
            in_flight: None,
            sending: None,
            nacked: None,
            check: true,
            ended: false,
        };
        let stream = futures_util::stream::unfold(session, |mut session| async move {
            let item = session.next_message().await?;
            Some((item, session))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

impl Session {
    /// The next message to send; `None` ends the stream. Runs only while tonic polls
    /// the response stream, i.e. while the stream is open and can take more data. The
    /// parts of an update go out back to back; the dataplane's answer is read after.
    async fn next_message(&mut self) -> Option<Result<DiscoveryResponse, Status>> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(parts) = &mut self.sending {
                if parts.started() {
                    // Pause twice between parts. tonic encodes every message the
                    // stream has ready into one buffer before handing it on, so the
                    // first pause makes it hand on the previous part alone and its
                    // buffer stays small. At the second, nothing is ready and hyper
                    // yields the task: the connection task writes that part out
                    // before the next is queued. Otherwise h2 would queue every part
                    // of a full config at once and keep its send queue that large for
                    // the connection's life (about 7 kB per stream).
                    tokio::task::yield_now().await;
                    tokio::task::yield_now().await;
                }
                match parts.next() {
                    Some(part) => {
                        return Some(Ok(DiscoveryResponse {
                            message: Some(Out::Update(part)),
                        }));
                    }
                    None => self.sending = None,
                }
            }
            if self.check && self.in_flight.is_none() {
                self.check = false;
                self.start_update();
                if self.sending.is_some() {
                    continue;
                }
            }
            tokio::select! {
                changed = self.revocations.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                    if self.revocations.borrow_and_update().is_revoked(&self.peer.serial) {
                        tracing::info!(dataplane = %self.conn.id, serial = %self.peer.serial, "certificate revoked: discovery stream closed");
                        self.ended = true;
                        return Some(Err(Status::permission_denied(revoked_message(&self.peer.id))));
                    }
                }
                changed = self.snapshots.changed(), if self.in_flight.is_none() => {
                    if changed.is_err() {
                        return None;
                    }
                    self.check = true;
                }
                msg = self.inbound.message() => match msg {
                    Ok(Some(DiscoveryRequest { message: Some(In::Traffic(report)) })) => {
                        // Figures only: nothing to send in answer.
                        let shared = &self.conn.shared;
                        shared.metrics.traffic_reports.inc();
                        let from = Reporting {
                            dataplane_id: &self.conn.id,
                            kind: self.kind,
                            name: &self.name,
                        };
                        shared.traffic.record(from, &report, now_unix());
                    }
                    Ok(Some(DiscoveryRequest { message: Some(m) })) => {
                        if let Err(e) = self.handle(m).await {
                            self.ended = true;
                            return Some(Err(e));
                        }
                        self.check = true;
                    }
                    Ok(Some(DiscoveryRequest { message: None })) => {}
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::debug!(dataplane = %self.conn.id, error = %e, "discovery stream broke");
                        return None;
                    }
                },
            }
        }
    }

    /// Starts sending the update from the acknowledged version to the latest snapshot,
    /// if there is one to send.
    fn start_update(&mut self) {
        let snap = self.snapshots.borrow_and_update().clone();
        // A nacked version is not sent again; a newer one is.
        if self.nacked.is_some_and(|n| n >= snap.version) {
            return;
        }
        let shared = &self.conn.shared;
        match snap.parts_for(self.kind, self.base, self.part_bytes) {
            Some(parts) => {
                let version = parts.version();
                shared.metrics.pushes.inc();
                shared.registry.sent(&self.conn.id, version);
                self.in_flight = Some((version, Instant::now()));
                self.sending = Some(parts);
            }
            None => {
                if let Some(base) = self.base {
                    shared.registry.acked(&self.conn.id, base);
                }
            }
        }
    }

    async fn handle(&mut self, m: In) -> Result<(), Status> {
        let shared = &self.conn.shared;
        let metrics = &shared.metrics;
        let id = &self.conn.id;
        match m {
            In::Ack(ack) => {
                if let Some((v, sent_at)) = self.in_flight {
                    if ack.version == v {
                        self.in_flight = None;
                        self.nacked = None;
                        self.base = Some(v);
                        shared.registry.acked(id, v);
                        metrics.acks.inc();
                        metrics
                            .push_to_ack_seconds
                            .observe(sent_at.elapsed().as_secs_f64());
                    }
                }
            }
            In::Nack(nack) => {
                if let Some((v, _)) = self.in_flight {
                    if nack.version == v {
                        self.in_flight = None;
                        self.nacked = Some(v);
                        metrics.nacks.inc();
                        tracing::warn!(dataplane = %id, version = v, error = %nack.error, "dataplane rejected config");
                        shared.registry.nacked(id, v, nack.error);
                    }
                }
            }
            In::AppStatus(s) => {
                let app = AppProtocol::try_from(s.protocol).unwrap_or(AppProtocol::Unknown);
                shared.registry.app_status(id, app).await;
            }
            In::Traffic(_) => {} // taken before, in `next_message`
            In::Hello(_) => {
                return Err(Status::invalid_argument(
                    "Hello may only be sent once, as the first message",
                ));
            }
        }
        Ok(())
    }
}
