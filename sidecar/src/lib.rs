//! Weft's data plane: the sidecar, the gateway and the region ingress.
//!
//! This crate starts with [`control`]: how a dataplane obtains its identity from the
//! control plane, keeps it renewed, and follows its config over the discovery stream,
//! keeping the last good config on disk so it can keep serving (and restart) while the
//! control plane is away.
#![forbid(unsafe_code)]

pub mod control;
