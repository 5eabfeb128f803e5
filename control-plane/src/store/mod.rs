//! Durable state of the control plane, behind the [`Store`] trait.
//!
//! Every change an operator makes is one ACID transaction that bumps the global config
//! *revision* and stamps the changed row with it; deletions leave a tombstone with the
//! revision of the delete. That is what lets the push layer send a dataplane only what
//! changed since the version it acknowledged, even across control-plane restarts.
//!
//! The embedded backend is SQLite ([`sqlite::SqliteStore`]); the trait is what a
//! PostgreSQL backend for several replicas would implement, without touching callers.

pub mod sqlite;

use async_trait::async_trait;
use weft_proto::v1::{AppProtocol, DataplaneKind, Protocol, Route, Service};

/// Why a store operation failed. Messages are written for the operator: they say what
/// is wrong and what to do, and are passed through to gRPC statuses unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("store failure: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// A tombstone: something that existed and was deleted at `revision`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub kind: TombstoneKind,
    pub key: String,
    pub revision: u64,
}

/// What kind of resource a tombstone stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TombstoneKind {
    Service,
    /// Key is `host\npath_prefix`.
    Route,
    /// Key is the dataplane id.
    Endpoint,
}

impl TombstoneKind {
    fn as_str(self) -> &'static str {
        match self {
            TombstoneKind::Service => "service",
            TombstoneKind::Route => "route",
            TombstoneKind::Endpoint => "endpoint",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(TombstoneKind::Service),
            "route" => Some(TombstoneKind::Route),
            "endpoint" => Some(TombstoneKind::Endpoint),
            _ => None,
        }
    }
}

/// Route tombstone key for `(host, path_prefix)`.
pub fn route_key(host: &str, path_prefix: &str) -> String {
    format!("{host}\n{path_prefix}")
}

/// A registered dataplane as stored (the live part — connected, acks — is in memory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplaneRecord {
    pub id: String,
    pub kind: DataplaneKind,
    pub name: String,
    pub region: String,
    pub address: String,
    pub healthy: bool,
    pub app_protocol: AppProtocol,
    pub revision: u64,
    pub last_seen: i64,
    pub acked_version: u64,
    pub cert_expiry: i64,
}

/// What a dataplane announces in its hello; stored on every (re)connect.
#[derive(Clone, Debug)]
pub struct DataplaneRegistration {
    pub id: String,
    pub kind: DataplaneKind,
    pub name: String,
    pub region: String,
    pub address: String,
    pub cert_expiry: i64,
    pub now: i64,
}

/// A bootstrap token's metadata (the secret itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub kind: DataplaneKind,
    pub name: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: i64,
}

/// A CA root kept by the store. The key is present for roots this control plane can sign with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaRootRecord {
    pub sha256: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub signing: bool,
    pub added_at: i64,
}

/// When a root signed: what CA rotation needs besides [`CaRootRecord`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaRootTimes {
    pub sha256: String,
    /// When the root stopped signing (unix seconds); 0 while it signs, and for a root
    /// that never signed (the target of a rotation that has not switched yet).
    pub signing_ended_at: i64,
}

/// Everything the push layer needs, read in one consistent transaction.
#[derive(Clone, Debug, Default)]
pub struct ConfigState {
    pub revision: u64,
    pub services: Vec<Service>,
    pub routes: Vec<Route>,
    pub dataplanes: Vec<DataplaneRecord>,
    pub tombstones: Vec<Tombstone>,
    /// Deltas from a base below this revision cannot be computed (tombstones pruned).
    pub tombstone_horizon: u64,
    pub ca_roots: Vec<CaRootRecord>,
    /// Revision at which the trust bundle last changed.
    pub bundle_revision: u64,
}

/// Identity of the store, created once with it.
#[derive(Clone, Debug)]
pub struct StoreMeta {
    /// Random id of this store; dataplanes echo it so a delta is never computed against
    /// a version that came from another control plane's store.
    pub control_plane_id: String,
    pub trust_domain: String,
    /// Key that signs bootstrap tokens (HMAC-SHA256).
    pub token_key: Vec<u8>,
    /// SHA-256 of the admin token.
    pub admin_token_sha256: Vec<u8>,
}

/// The control plane's durable state. Every mutating call is atomic: on error nothing
/// was written. Returned revisions are those stamped on the change.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's identity; `init` is used only when the store is new.
    async fn meta_or_init(&self, init: StoreMeta) -> Result<StoreMeta, StoreError>;

    async fn create_service(
        &self,
        name: &str,
        protocol: Protocol,
        port: u32,
        now: i64,
    ) -> Result<Service, StoreError>;
    async fn get_service(&self, name: &str) -> Result<Service, StoreError>;
    async fn list_services(&self) -> Result<Vec<Service>, StoreError>;
    async fn set_protocol(&self, name: &str, protocol: Protocol) -> Result<Service, StoreError>;
    /// Fails with `FailedPrecondition` while routes point at the service.
    async fn delete_service(&self, name: &str) -> Result<u64, StoreError>;

    /// Fails with `NotFound` if the service does not exist.
    async fn create_route(&self, route: Route) -> Result<Route, StoreError>;
    async fn list_routes(&self) -> Result<Vec<Route>, StoreError>;
    async fn delete_route(&self, host: &str, path_prefix: &str) -> Result<u64, StoreError>;

    /// Registers or refreshes a dataplane. Bumps the revision only when what other
    /// dataplanes see (address, region, health) changed; returns the stored record.
    async fn register_dataplane(
        &self,
        reg: DataplaneRegistration,
    ) -> Result<DataplaneRecord, StoreError>;
    /// Sets health (bumping the revision if it changed).
    async fn set_dataplane_health(
        &self,
        id: &str,
        healthy: bool,
        app_protocol: Option<AppProtocol>,
    ) -> Result<Option<DataplaneRecord>, StoreError>;
    /// Remembers the latest acknowledged version and last-seen time (no revision bump).
    async fn record_dataplane_seen(
        &self,
        id: &str,
        acked_version: u64,
        now: i64,
    ) -> Result<(), StoreError>;
    /// Removes a dataplane for good (its endpoint gets a tombstone).
    async fn delete_dataplane(&self, id: &str) -> Result<u64, StoreError>;
    async fn list_dataplanes(&self) -> Result<Vec<DataplaneRecord>, StoreError>;

    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError>;
    async fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    async fn revoke_token(&self, id: &str, now: i64) -> Result<TokenRecord, StoreError>;

    /// Adds a root to the trust bundle (bumps the revision). With `signing`, it becomes
    /// the only signing root.
    async fn add_ca_root(&self, root: CaRootRecord) -> Result<u64, StoreError>;
    /// Makes an existing root the signing one (bumps the revision). The root that signed
    /// until now gets `now` as the time it stopped signing, so retiring it can wait until
    /// every certificate it signed has expired.
    async fn set_signing_root(&self, sha256: &str, now: i64) -> Result<u64, StoreError>;
    /// When each root stopped signing (see [`CaRootTimes`]), in bundle order.
    async fn ca_root_times(&self) -> Result<Vec<CaRootTimes>, StoreError>;
    /// Removes a non-signing root from the bundle (bumps the revision).
    async fn remove_ca_root(&self, sha256: &str) -> Result<u64, StoreError>;

    /// One consistent read of everything that is pushed to dataplanes.
    async fn config_state(&self) -> Result<ConfigState, StoreError>;
}

pub(crate) fn protocol_from_i32(v: i64) -> Protocol {
    i32::try_from(v)
        .ok()
        .and_then(|v| Protocol::try_from(v).ok())
        .unwrap_or(Protocol::Unspecified)
}

pub(crate) fn kind_from_i32(v: i64) -> DataplaneKind {
    i32::try_from(v)
        .ok()
        .and_then(|v| DataplaneKind::try_from(v).ok())
        .unwrap_or(DataplaneKind::Unspecified)
}

pub(crate) fn app_protocol_from_i32(v: i64) -> AppProtocol {
    i32::try_from(v)
        .ok()
        .and_then(|v| AppProtocol::try_from(v).ok())
        .unwrap_or(AppProtocol::Unknown)
}
