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
