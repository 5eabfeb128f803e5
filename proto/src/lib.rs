//! Generated code for Weft's control API (`proto/weft/v1`).
//!
//! Three services: [`v1::admin_server::Admin`] for operators, [`v1::discovery_server::Discovery`]
//! (one config stream per dataplane) and [`v1::identity_server::Identity`] (CSR signing).
#![forbid(unsafe_code)]

/// Package `weft.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("weft.v1");

    /// Encoded `FileDescriptorSet` of every Weft proto, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/weft_descriptor.bin"));

    impl Protocol {
        /// The selector name users type (`tcp`, `http`, `http2`, `grpc`).
        /// `PROTOCOL_UNSPECIFIED` is shown as `tcp`, which is how it behaves.
        pub fn selector_name(self) -> &'static str {
            match self {
                Protocol::Unspecified | Protocol::Tcp => "tcp",
                Protocol::Http => "http",
                Protocol::Http2 => "http2",
                Protocol::Grpc => "grpc",
            }
        }

        /// Parses a selector name as users type it. Returns `None` for anything else;
        /// callers list [`Protocol::VALID_SELECTORS`] in their error.
        pub fn from_selector(name: &str) -> Option<Self> {
            match name.trim().to_ascii_lowercase().as_str() {
                "tcp" => Some(Protocol::Tcp),
                "http" => Some(Protocol::Http),
                "http2" => Some(Protocol::Http2),
                "grpc" => Some(Protocol::Grpc),
                _ => None,
            }
        }

        /// The values accepted by [`Protocol::from_selector`], for error messages.
        pub const VALID_SELECTORS: &'static str = "tcp, http, http2, grpc";
    }

    impl DataplaneKind {
        /// Path segment used in SPIFFE ids and dataplane ids.
        pub fn segment(self) -> &'static str {
            match self {
                DataplaneKind::Unspecified | DataplaneKind::Sidecar => "service",
                DataplaneKind::Gateway => "gateway",
                DataplaneKind::Ingress => "ingress",
            }
        }
    }

    /// Upper bounds, in microseconds, of the latency buckets of [`TrafficCounts`]: bucket
    /// `i` counts latencies up to `LATENCY_BOUNDS_US[i]`, one more bucket counts the rest.
    /// Part of the protocol and fixed for good: every dataplane's histograms merge.
    pub const LATENCY_BOUNDS_US: [u64; 14] = [
        500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
        2_500_000, 5_000_000, 10_000_000,
    ];

    /// Number of latency buckets: one per bound, plus the one above the last bound.
    pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

    /// The latency bucket of a request that took `micros` microseconds.
    pub fn latency_bucket(micros: u64) -> usize {
        LATENCY_BOUNDS_US.partition_point(|bound| *bound < micros)
    }

    impl TrafficSource {
        /// How people name a source, as in permission rules: a service by its name,
        /// `gateway:NAME`, `ingress:NAME`, or `unknown`.
        pub fn label(&self) -> String {
            match DataplaneKind::try_from(self.kind).unwrap_or(DataplaneKind::Unspecified) {
                DataplaneKind::Sidecar => self.name.clone(),
                DataplaneKind::Gateway => format!("gateway:{}", self.name),
                DataplaneKind::Ingress => format!("ingress:{}", self.name),
                DataplaneKind::Unspecified => "unknown".to_owned(),
            }
        }
    }

    impl AppProtocol {
        /// Short human name, as shown by `weftctl`.
        pub fn display_name(self) -> &'static str {
            match self {
                AppProtocol::Unknown => "-",
                AppProtocol::Http2 => "http2",
                AppProtocol::Http1 => "http/1.1",
                AppProtocol::Opaque => "opaque",
                AppProtocol::Down => "down",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::v1::*;
    use prost::Message as _;

    /// `DiscoveryRequest` as control planes from before traffic reports decode it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct DiscoveryRequestBeforeTraffic {
        #[prost(oneof = "BeforeTraffic", tags = "1, 2, 3, 4")]
        message: Option<BeforeTraffic>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    enum BeforeTraffic {
        #[prost(message, tag = "1")]
        Hello(Hello),
        #[prost(message, tag = "2")]
        Ack(Ack),
        #[prost(message, tag = "3")]
        Nack(Nack),
        #[prost(message, tag = "4")]
        AppStatus(AppStatus),
    }

    #[test]
    fn older_control_planes_see_a_traffic_report_as_no_message() {
        let report = DiscoveryRequest {
            message: Some(discovery_request::Message::Traffic(TrafficReport {
                interval_ms: 10_000,
                counts: vec![TrafficCounts {
                    service: "web".into(),
                    requests: 3,
                    ..Default::default()
                }],
            })),
        };
        let old = DiscoveryRequestBeforeTraffic::decode(report.encode_to_vec().as_slice())
            .expect("an unknown field is skipped, not an error");
        // Their stream loop ignores `message: None`.
        assert_eq!(old.message, None);
    }

    #[test]
    fn latencies_fall_in_the_bucket_of_the_first_bound_not_below_them() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(500), 0);
        assert_eq!(latency_bucket(501), 1);
        assert_eq!(latency_bucket(9_999_999), LATENCY_BUCKETS - 2);
        assert_eq!(latency_bucket(10_000_000), LATENCY_BUCKETS - 2);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn sources_are_named_like_permission_rules() {
        let source = |kind: DataplaneKind, name: &str| TrafficSource {
            kind: kind as i32,
            name: name.into(),
        };
        assert_eq!(source(DataplaneKind::Sidecar, "web").label(), "web");
        assert_eq!(
            source(DataplaneKind::Gateway, "edge").label(),
            "gateway:edge"
        );
        assert_eq!(source(DataplaneKind::Ingress, "us").label(), "ingress:us");
        assert_eq!(source(DataplaneKind::Unspecified, "").label(), "unknown");
    }
}
