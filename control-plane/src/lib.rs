//! The Weft control plane (`weft-cp`) and its CLI (`weftctl`).
//!
//! - [`store`]: durable, ACID state behind a trait (SQLite embedded backend);
//! - [`hub`]: config snapshots and deltas, pushed on change;
//! - [`registry`]: live dataplane state and health timers;
//! - [`ca`]: the mesh CA as held by the control plane;
//! - [`advertise`]: which addresses dataplanes may announce;
//! - [`api`]: the gRPC services (admin, discovery, identity);
//! - [`traffic`]: the rolling window of traffic figures the dataplanes report;
//! - [`warnings`]: problems worth an operator's attention, worded once;
//! - [`dashboard`]: the read-only web dashboard on `--http`;
//! - [`server`]: wiring it all together;
//! - [`cli`]: the `weftctl` command line.
#![forbid(unsafe_code)]

pub mod advertise;
pub mod api;
pub mod ca;
pub mod cli;
pub mod dashboard;
pub mod http;
pub mod hub;
pub mod leader;
pub mod metrics;
pub mod registry;
pub mod replica;
pub mod secret;
pub mod server;
pub mod store;
pub mod tls;
pub mod traffic;
pub mod validate;
pub mod warnings;
