//! The discovery stream, from the dataplane's side: say hello with the version held,
//! apply each update to a copy, check it, save it, publish it, then ack; nack what does
//! not apply. On any break, reconnect with backoff and resume from the held version, so
//! a control plane that comes back sends only what changed. Traffic figures go up the
//! same stream about every 10 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use weft_proto::v1::discovery_client::DiscoveryClient as RawClient;
use weft_proto::v1::discovery_request::Message as Out;
use weft_proto::v1::discovery_response::Message as In;
use weft_proto::v1::{Ack, AppProtocol, AppStatus, DataplaneKind, DiscoveryRequest, Hello, Nack};

use super::config::{ApplyError, MeshConfig, UpdateAssembler};
use super::state_dir::StateDir;
use super::status_line;
use crate::traffic::{REPORT_INTERVAL, Traffic};

/// Extra checks a dataplane runs on a candidate config before acking it (e.g. that it
/// can bind every outbound port). An error nacks the update.
pub type Validator = Arc<dyn Fn(&MeshConfig) -> Result<(), String> + Send + Sync>;

/// Who this dataplane is, as announced in the hello.
#[derive(Clone, Debug)]
pub struct HelloInfo {
    pub kind: DataplaneKind,
    pub name: String,
    pub region: String,
    pub address: String,
    pub dataplane_id: String,
}

/// Follows the config stream forever.
pub struct DiscoveryClient {
    channel: Channel,
    hello: HelloInfo,
    state: Option<StateDir>,
    validator: Option<Validator>,
    config: watch::Sender<Arc<MeshConfig>>,
    app_status: watch::Receiver<AppProtocol>,
    connected: watch::Sender<bool>,
    /// Figures reported on the stream, and when the previous report was taken.
    traffic: Option<Arc<Traffic>>,
    last_report: Instant,
}

/// Handles to what the client publishes.
pub struct DiscoveryHandles {
    /// The current config (starts from the state dir, if any).
    pub config: watch::Receiver<Arc<MeshConfig>>,
    /// True while the stream is up and the first update since (re)connect applied.
    pub connected: watch::Receiver<bool>,
    /// Send probe results here; they are reported on the stream.
    pub app_status: watch::Sender<AppProtocol>,
}

enum End {
    /// Reconnect after a backoff.
    Retry(String),
    /// Reconnect at once asking for a full config.
    Resync,
}

impl DiscoveryClient {
    /// Prepares the client; the held config starts from the state dir if present.
    pub fn new(
        channel: Channel,
        hello: HelloInfo,
        state: Option<StateDir>,
        validator: Option<Validator>,
    ) -> (Self, DiscoveryHandles) {
        let initial = state
            .as_ref()
            .and_then(StateDir::load_config)
            .unwrap_or_default();
        if initial.version > 0 {
            tracing::info!(
                version = initial.version,
                "loaded last acknowledged config from the state dir"
            );
        }
        let (config, config_rx) = watch::channel(Arc::new(initial));
        let (app_tx, app_status) = watch::channel(AppProtocol::Unknown);
        let (connected, connected_rx) = watch::channel(false);
        (
            DiscoveryClient {
                channel,
                hello,
                state,
                validator,
                config,
                app_status,
                connected,
                traffic: None,
                last_report: Instant::now(),
            },
            DiscoveryHandles {
                config: config_rx,
                connected: connected_rx,
                app_status: app_tx,
            },
        )
    }

    /// Reports `traffic` on the stream every [`REPORT_INTERVAL`].
    pub fn report_traffic(&mut self, traffic: Arc<Traffic>) {
        self.traffic = Some(traffic);
    }

    /// Sends what was carried since the previous report, if anything.
    fn send_report(&mut self, tx: &mpsc::Sender<DiscoveryRequest>) {
        let Some(traffic) = &self.traffic else {
            return;
        };
        let now = Instant::now();
        let interval = now.duration_since(self.last_report);
        self.last_report = now;
        if let Some(report) = traffic.report(interval) {
            // A full channel means the stream is stuck: the report is dropped rather
            // than made to wait in front of the next ack.
            let _ = tx.try_send(DiscoveryRequest {
                message: Some(Out::Traffic(report)),
            });
        }
    }

    /// Runs until the process ends.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        let mut full = false;
        let mut failures = 0u32;
        loop {
            match self.session(full).await {
                End::Resync => {
                    full = true;
                    continue;
                }
                End::Retry(why) => {
                    full = false;
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %why, "discovery stream down; serving the last good config and reconnecting");
                    } else {
                        tracing::debug!(error = %why, attempt = failures, "discovery reconnect failed");
                    }
                }
            }
            let _ = self.connected.send(false);
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
            if *self.connected.borrow() {
                backoff = Duration::from_millis(200);
                failures = 0;
            }
        }
    }

    async fn session(&mut self, full: bool) -> End {
        let held = self.config.borrow().clone();
        let (tx, rx) = mpsc::channel(8);
        let hello = Hello {
            kind: self.hello.kind as i32,
            name: self.hello.name.clone(),
            region: self.hello.region.clone(),
            address: self.hello.address.clone(),
            known_version: if full { 0 } else { held.version },
            control_plane_id: held.control_plane_id.clone(),
            dataplane_id: self.hello.dataplane_id.clone(),
            // Small messages only: a large one costs memory on both ends for the
            // stream's whole life (ConfigUpdate.more).
            accepts_update_parts: true,
        };
        let _ = tx
            .send(DiscoveryRequest {
                message: Some(Out::Hello(hello)),
            })
            .await;
        let app = *self.app_status.borrow_and_update();
        if app != AppProtocol::Unknown {
            let _ = tx.send(app_status(app)).await;
        }
        let mut app_status_open = true;
        let mut report = tokio::time::interval_at(
            tokio::time::Instant::now() + REPORT_INTERVAL,
            REPORT_INTERVAL,
        );
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let request = tonic::Request::new(ReceiverStream::new(rx));
        let mut parts = UpdateAssembler::default();
        let mut inbound = match RawClient::new(self.channel.clone()).stream(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return End::Retry(status_line(&s)),
        };
        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let part = match msg {
                        Ok(Some(r)) => match r.message {
                            Some(In::Update(u)) => u,
                            None => continue,
                        },
                        Ok(None) => return End::Retry("control plane closed the stream".into()),
                        Err(s) => return End::Retry(status_line(&s)),
                    };
                    let update = match parts.push(part) {
                        Ok(Some(update)) => update,
                        Ok(None) => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "the control plane broke an update's parts; asking for a full config");
                            return End::Resync;
                        }
                    };
                    let current = self.config.borrow().clone();
                    let reply = match current.apply(&update).and_then(|next| self.check(next)) {
                        Ok(next) => {
                            if let Some(state) = &self.state {
                                if let Err(e) = state.save_config(&next) {
                                    tracing::warn!(error = %e, "cannot save config; it will be refetched after a restart");
                                }
                            }
                            tracing::info!(version = next.version, full = update.full, services = next.services.len(), endpoints = next.endpoints.len(), "config applied");
                            self.config.send_replace(Arc::new(next));
                            let _ = self.connected.send(true);
                            Out::Ack(Ack { version: update.version })
                        }
                        Err(ApplyError::BaseMismatch { base, held }) => {
                            tracing::warn!(base, held, "delta does not match the held config; asking for a full one");
                            return End::Resync;
                        }
                        Err(ApplyError::Invalid(error)) => {
                            tracing::warn!(version = update.version, %error, "config rejected; keeping the current one");
                            let _ = self.connected.send(true);
                            Out::Nack(Nack { version: update.version, error })
                        }
                    };
                    if tx.send(DiscoveryRequest { message: Some(reply) }).await.is_err() {
                        return End::Retry("stream closed".into());
                    }
                }
                _ = report.tick(), if self.traffic.is_some() => self.send_report(&tx),
                changed = self.app_status.changed(), if app_status_open => {
                    if changed.is_ok() {
                        let app = *self.app_status.borrow_and_update();
                        let _ = tx.send(app_status(app)).await;
                    } else {
                        // Nobody reports probes any more; stop watching.
                        app_status_open = false;
                    }
                }
            }
        }
    }

    fn check(&self, next: MeshConfig) -> Result<MeshConfig, ApplyError> {
        if let Some(v) = &self.validator {
            v(&next).map_err(ApplyError::Invalid)?;
        }
        Ok(next)
    }
}

fn app_status(p: AppProtocol) -> DiscoveryRequest {
    DiscoveryRequest {
        message: Some(Out::AppStatus(AppStatus { protocol: p as i32 })),
    }
}

/// `d` ± 20%, so a fleet does not reconnect in lockstep.
fn jittered(d: Duration) -> Duration {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    d.mul_f64(0.8 + 0.4 * f64::from(b[0]) / 255.0)
}
