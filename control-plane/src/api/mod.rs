//! The gRPC services of the control plane: [`admin`] (operators, behind [`gate`]; its
//! authorization calls in [`authz`]), [`discovery`] (one config stream per dataplane)
//! and [`identity`] (CSR signing).

pub mod admin;
pub mod auth;
pub mod authz;
pub mod discovery;
pub mod gate;
pub mod identity;

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

use crate::advertise::AdvertisePolicy;
use crate::ca::CaManager;
use crate::hub::ConfigHub;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use crate::traffic::TrafficWindow;

/// What every service shares.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub hub: Arc<ConfigHub>,
    pub registry: Arc<Registry>,
    pub ca: Arc<CaManager>,
    pub metrics: Arc<Metrics>,
    pub control_plane_id: String,
    /// Key that signs bootstrap tokens.
    pub token_key: Vec<u8>,
    /// Lifetime of issued workload certificates.
    pub cert_ttl: Duration,
    /// Traffic figures reported by the dataplanes connected here.
    pub traffic: Arc<TrafficWindow>,
    /// This replica's lease, for `cp status`.
    pub leader: Arc<crate::leader::Leader>,
    /// The store as `cp status` shows it (no password).
    pub store_shown: String,
    /// Checks operators' tokens (admin API) and sessions (dashboard).
    pub auth: Arc<auth::Authenticator>,
    /// Which addresses dataplanes may announce.
    pub advertise: AdvertisePolicy,
}

/// Store errors keep their operator-facing message; backend failures are logged in full
/// and reported without internals.
pub fn status(e: StoreError) -> Status {
    match e {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::AlreadyExists(m) => Status::already_exists(m),
        StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::NotLeader(m) => Status::unavailable(m),
        StoreError::Backend(m) => {
            tracing::error!(error = %m, "store failure");
            Status::internal("the control plane could not access its store; see the weft-cp log")
        }
    }
}
