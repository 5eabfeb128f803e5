//! Prometheus metrics of the control plane, served on `--http` at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Every metric the control plane exports.
pub struct Metrics {
    registry: Registry,
    pub streams_connected: Gauge,
    pub config_version: Gauge,
    pub pushes: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    pub push_to_ack_seconds: Histogram,
    pub certificates: Family<ResultLabel, Counter>,
    pub admin_changes: Counter,
    pub traffic_reports: Counter,
    pub traffic_window_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft_cp");
        let streams_connected = Gauge::default();
        let config_version = Gauge::default();
        let pushes = Counter::default();
        let acks = Counter::default();
        let nacks = Counter::default();
        let push_to_ack_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        let certificates = Family::<ResultLabel, Counter>::default();
        let admin_changes = Counter::default();
        let traffic_reports = Counter::default();
        let traffic_window_bytes = Gauge::default();
        registry.register(
            "discovery_streams",
            "Discovery streams currently open",
            streams_connected.clone(),
        );
        registry.register(
            "config_version",
            "Latest config version (store revision)",
            config_version.clone(),
        );
        registry.register(
            "pushes",
            "Config updates sent to dataplanes",
            pushes.clone(),
        );
        registry.register("acks", "Config updates acknowledged", acks.clone());
        registry.register(
            "nacks",
            "Config updates rejected by dataplanes",
            nacks.clone(),
        );
        registry.register(
            "push_to_ack_seconds",
            "Time from sending an update to its ack",
            push_to_ack_seconds.clone(),
        );
        registry.register(
            "certificate_requests",
            "Certificate requests by result",
            certificates.clone(),
        );
        registry.register(
            "admin_changes",
            "Committed changes through the admin API",
            admin_changes.clone(),
        );
        registry.register(
            "traffic_reports",
            "Traffic reports received from dataplanes",
            traffic_reports.clone(),
        );
        registry.register(
            "traffic_window_bytes",
            "Memory held by the rolling window of traffic figures",
            traffic_window_bytes.clone(),
        );
        Metrics {
            registry,
            streams_connected,
            config_version,
            pushes,
            acks,
            nacks,
            push_to_ack_seconds,
            certificates,
            admin_changes,
            traffic_reports,
            traffic_window_bytes,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
