//! Weft's data plane: the sidecar beside every app (and, later, the gateway and the
//! region ingress).
//!
//! - [`control`]: identity from the control plane, renewal, and the discovery stream,
//!   with the last good config kept on disk;
//! - [`tunnel`]: mTLS HTTP/2 `CONNECT` tunnels between dataplanes;
//! - [`outbound`]: per-service listeners that carry connections into the tunnel;
//! - [`inbound`]: delivery to the app per protocol selector, translating HTTP versions
//!   only here, at the last hop;
//! - [`traffic`]: per-service, per-caller figures reported to the control plane;
//! - [`run`]: `weft-sidecar run`, wiring it all together.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod control;
pub mod dataplane;
pub mod errors;
pub mod gateway;
pub mod http;
pub mod inbound;
pub mod ingress;
pub mod io;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod probe;
pub mod run;
pub mod serve;
pub mod tls;
pub mod traffic;
pub mod tunnel;
