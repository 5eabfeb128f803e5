//! Prometheus metrics of a dataplane, served at `/metrics` on the admin port, and the
//! traffic figures it reports to the control plane ([`crate::traffic`]).

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::traffic::Traffic;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabel {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub direction: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP version the client spoke inside the tunnel.
    pub inbound: &'static str,
    /// HTTP version spoken to the app.
    pub outbound: &'static str,
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpliceLabel {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtoPair {
    pub inbound: &'static str,
    pub outbound: &'static str,
}

/// Labels of one authorization decision: the caller as rules name it (`web`,
/// `gateway:edge`, `ingress:us`: mesh identities, so the set is bounded), the local
/// service, and `allow`, `deny` or `audit`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub source: String,
    pub destination: String,
    pub decision: &'static str,
}

/// Every metric a dataplane exports.
pub struct Metrics {
    registry: Registry,
    pub authz: Family<AuthzLabels, Counter>,
    pub connections: Family<ResultLabel, Counter>,
    pub active: Family<DirLabel, Gauge>,
    pub bytes: Family<DirLabel, Counter>,
    pub spliced: Family<SpliceLabel, Counter>,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<ProtoPair, Histogram>,
    pub tunnel_pool: Gauge,
    pub cert_expiry: Gauge,
    pub config_version: Gauge,
    /// Traffic figures reported to the control plane, counted per caller by the
    /// inbound ([`crate::inbound::Delivery::counters`]).
    pub traffic: Arc<Traffic>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let connections = Family::<ResultLabel, Counter>::default();
        let active = Family::<DirLabel, Gauge>::default();
        let bytes = Family::<DirLabel, Counter>::default();
        let spliced = Family::<SpliceLabel, Counter>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ProtoPair, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        });
        let tunnel_pool = Gauge::default();
        let cert_expiry = Gauge::default();
        let config_version = Gauge::default();
        let authz = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "authz_decisions",
            "Authorization decisions at the inbound, per tunnel stream or mesh request, by caller, destination and decision (audit: allowed, would have been denied)",
            authz.clone(),
        );
        registry.register(
            "connections",
            "Connections by direction (inbound tunnel, outbound listener) and result",
            connections.clone(),
        );
        registry.register("connections_active", "Open connections", active.clone());
        registry.register("bytes", "Bytes carried, by direction", bytes.clone());
        registry.register(
            "streams_spliced",
            "Tunnel streams delivered by splicing bytes, by protocol",
            spliced.clone(),
        );
        registry.register(
            "requests",
            "Requests translated at the last hop, by versions and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to response headers for translated requests",
            latency.clone(),
        );
        registry.register(
            "tunnel_pool_peers",
            "Peers with a pooled tunnel connection",
            tunnel_pool.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the current mesh certificate expires",
            cert_expiry.clone(),
        );
        registry.register(
            "config_version",
            "Config version held",
            config_version.clone(),
        );
        Metrics {
            registry,
            authz,
            connections,
            active,
            bytes,
            spliced,
            requests,
            latency,
            tunnel_pool,
            cert_expiry,
            config_version,
            traffic: Traffic::new(),
        }
    }

    pub fn record_request(
        &self,
        inbound: &'static str,
        outbound: &'static str,
        status: u16,
        started: Instant,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                inbound,
                outbound,
                status: status_class(status),
            })
            .inc();
        self.latency
            .get_or_create(&ProtoPair { inbound, outbound })
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn record_splice(&self, protocol: &'static str, r: &std::io::Result<(u64, u64)>) {
        self.spliced.get_or_create(&SpliceLabel { protocol }).inc();
        if let Ok((a, b)) = r {
            self.bytes
                .get_or_create(&DirLabel {
                    direction: "inbound",
                })
                .inc_by(a + b);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Counts an open connection for as long as it lives.
pub struct ActiveGuard(Gauge);

impl ActiveGuard {
    pub fn new(m: &Metrics, direction: &'static str) -> Self {
        let g = m.active.get_or_create(&DirLabel { direction }).clone();
        g.inc();
        ActiveGuard(g)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
