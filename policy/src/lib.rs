//! Weft traffic permissions: who may call which service.
//!
//! - [`rule`]: the syntax of a permission (source, destination, port, action), parsed
//!   once where it enters (weftctl, the admin API, the config stream);
//! - [`address`]: which announced addresses the mesh may connect to (the control plane
//!   at registration, the ingress before splicing);
//! - [`decide`]: the one decision function, [`Policy::decide`], and its precomputed
//!   form for one destination, [`DestinationPolicy`], which sidecars consult per stream
//!   and per request.
//!
//! A crate of its own because two programs must agree on every answer: the control
//! plane explains decisions (`weftctl permission check`) and the sidecars enforce them.
//! Sharing the code, not a description of it, is what keeps the explanation true. It
//! depends only on the identity types (`weft-certs`) and the API messages it converts
//! from (`weft-proto`).
#![forbid(unsafe_code)]

pub mod address;
pub mod decide;
pub mod rule;

#[cfg(test)]
mod tests;

pub use decide::{Basis, Caller, Decision, DefaultPolicy, DestinationPolicy, Outcome, Policy};
pub use rule::{Action, Destination, Rule, RuleError, Source, port_from_proto};
