//! Test harness: starts the real `weft-cp` binary on 127.0.0.1 with a fresh data dir,
//! drives it with the real `weftctl`, a raw tonic gRPC client, and dataplane
//! subscribers built from `weft-sidecar`'s control module.
//!
//! Binaries are taken from the Cargo target dir (`scripts/test` builds them first).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
mod clients;
mod control_plane;
mod dataplanes;
pub mod load;
pub mod mtls;
pub mod openloop;
pub mod paths;
pub mod postgres;
mod process;
pub mod proxy;
pub mod traffic_bench;

pub use clients::*;
pub use control_plane::*;
pub use dataplanes::*;
pub use process::*;
