//! Durable state of the control plane, behind the [`Store`] trait.
//!
//! Every change an operator makes is one ACID transaction that bumps the global config
//! *revision* and stamps the changed row with it; deletions leave a tombstone with the
//! revision of the delete. That is what lets the push layer send a dataplane only what
//! changed since the version it acknowledged, even across control-plane restarts.
//!
//! - [`model`]: the records kept, shared by every backend;
//! - `rules`: what a change checks and when the revision moves, independent of SQL;
//! - `rows`: rows to records, for every backend;
//! - [`sqlite`]: the embedded backend ([`sqlite::SqliteStore`]), one file per concern.

pub mod model;
pub mod postgres;
pub(crate) mod rows;
pub mod rules;
pub mod sqlite;

use async_trait::async_trait;
use weft_proto::v1::{
    AppProtocol, DefaultPolicy, MeshSettings, Permission, Protocol, Route, Service,
};

pub use model::{
    CaRootRecord, CaRootTimes, CertificateRecord, ConfigState, DataplaneRecord,
    DataplaneRegistration, Fence, LeaseRecord, Liveness, ReplicaRecord, RevokedDataplane,
    SessionRecord, StoreMeta, SweepOutcome, TokenKind, TokenRecord, Tombstone, TombstoneKind,
    route_key, split_route_key,
};
pub use rules::SweepPolicy;

/// Which backend `--store` chose.
#[derive(Clone, Debug)]
pub enum StoreKind {
    /// `<data-dir>/weft.db`, for one weft-cp.
    Sqlite,
    /// A PostgreSQL database shared by every replica.
    Postgres(Box<postgres::PgTarget>),
}

impl StoreKind {
    /// Parses `--store`: `sqlite`, or a `postgres://USER@HOST:PORT/DB` URL.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "sqlite" {
            return Ok(StoreKind::Sqlite);
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return postgres::PgTarget::parse(s).map(|t| StoreKind::Postgres(Box::new(t)));
        }
        Err("use `sqlite` or a URL like postgres://USER@HOST:PORT/DB".into())
    }

    /// What `weftctl cp status` shows (no password).
    pub fn describe(&self, data_dir: &std::path::Path) -> String {
        match self {
            StoreKind::Sqlite => format!("sqlite {}", data_dir.join("weft.db").display()),
            StoreKind::Postgres(t) => t.shown().to_owned(),
        }
    }
}

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
    /// A leader's write refused because its lease is gone (see [`Fence`]).
    #[error("{0}")]
    NotLeader(String),
}

/// The control plane's durable state. Every mutating call is atomic: on error nothing
/// was written. Returned revisions are those stamped on the change.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's identity; `init` is used only when the store is new.
    async fn meta_or_init(&self, init: StoreMeta) -> Result<StoreMeta, StoreError>;
    /// Adds or replaces one value of the store's identity (e.g. `secret_check` the
    /// first time a store is used with `--ca-key-secret`).
    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError>;

    /// The latest revision, cheaply: replicas poll it to notice changes they missed.
    async fn revision(&self) -> Result<u64, StoreError>;

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
    /// Fails with `FailedPrecondition` while routes point at the service or
    /// permissions name it.
    async fn delete_service(&self, name: &str) -> Result<u64, StoreError>;

    /// Fails with `NotFound` if the service does not exist.
    async fn create_route(&self, route: Route) -> Result<Route, StoreError>;
    async fn list_routes(&self) -> Result<Vec<Route>, StoreError>;
    async fn delete_route(&self, host: &str, path_prefix: &str) -> Result<u64, StoreError>;

    /// Registers or refreshes a dataplane. Bumps the revision only when what other
    /// dataplanes see (address, region, health) changed; returns the stored record.
    /// Fails with `FailedPrecondition` when the id is registered to another identity.
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
    /// Revokes every certificate of the dataplane's lineage (the one its stream last
    /// presented, the ones renewed from it) and removes the dataplane, in one change
    /// that bumps the revision and the revoked list's revision. `NotFound` for an
    /// unknown id.
    async fn revoke_dataplane(&self, id: &str, now: i64) -> Result<RevokedDataplane, StoreError>;

    /// Records a certificate the CA issued (and forgets certificates expired for a day).
    async fn record_certificate(&self, cert: CertificateRecord, now: i64)
    -> Result<(), StoreError>;
    async fn get_certificate(&self, serial: &str) -> Result<Option<CertificateRecord>, StoreError>;

    /// Stores a permission (id and creation time chosen by the caller) at a new
    /// revision. `NotFound` when a service it names does not exist, `AlreadyExists` when a
    /// permission of the same source, destination and port exists.
    async fn create_permission(&self, permission: Permission) -> Result<Permission, StoreError>;
    async fn list_permissions(&self) -> Result<Vec<Permission>, StoreError>;
    /// Deletes a permission (it gets a tombstone). `NotFound` for an unknown id.
    async fn delete_permission(&self, id: &str) -> Result<u64, StoreError>;
    /// The mesh settings (a store that never changed them: default policy unset = allow,
    /// revision 0).
    async fn mesh_settings(&self) -> Result<MeshSettings, StoreError>;
    /// Sets the default policy (bumping the revision only when it changes).
    async fn set_default_policy(&self, policy: DefaultPolicy) -> Result<MeshSettings, StoreError>;

    async fn create_token(&self, token: TokenRecord) -> Result<(), StoreError>;
    async fn get_token(&self, id: &str) -> Result<TokenRecord, StoreError>;
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    async fn revoke_token(&self, id: &str, now: i64) -> Result<TokenRecord, StoreError>;

    /// Adds a root to the trust bundle (bumps the revision). With `signing`, it becomes
    /// the only signing root.
    async fn add_ca_root(&self, root: CaRootRecord) -> Result<u64, StoreError>;
    /// Makes an existing root the signing one (bumps the revision); a leader duty, so
    /// refused unless `fence` still holds. The root that signed
    /// until now gets `now` as the time it stopped signing, so retiring it can wait until
    /// every certificate it signed has expired.
    async fn set_signing_root(
        &self,
        sha256: &str,
        now: i64,
        fence: &Fence,
    ) -> Result<u64, StoreError>;
    /// When each root stopped signing (see [`CaRootTimes`]), in bundle order.
    async fn ca_root_times(&self) -> Result<Vec<CaRootTimes>, StoreError>;
    /// Replaces a root's stored key by the same key in another form (sealed with
    /// `--ca-key-secret`). No revision bump: keys are never pushed.
    async fn set_ca_root_key(&self, sha256: &str, key_pem: &str) -> Result<(), StoreError>;
    /// Removes a non-signing root from the bundle (bumps the revision).
    async fn remove_ca_root(&self, sha256: &str) -> Result<u64, StoreError>;

    /// One consistent read of everything that is pushed to dataplanes.
    async fn config_state(&self) -> Result<ConfigState, StoreError>;

    // Replicas, sessions and the leader lease (see `crate::leader`). Times are the
    // store's clock, so that replicas on different hosts agree on them.

    /// Records that `replica` is alive now (and forgets replicas long gone).
    async fn heartbeat(&self, replica: &ReplicaRecord) -> Result<(), StoreError>;
    /// Removes a replica that stops cleanly, so it is not shown as gone.
    async fn remove_replica(&self, id: &str) -> Result<(), StoreError>;
    /// Every session and replica, with the store's clock.
    async fn liveness(&self) -> Result<Liveness, StoreError>;
    /// A stream opened on `session.replica_id` (replacing any older session row).
    async fn open_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// Writes sent/acked/nacked of sessions still held by the same replica and
    /// generation (a newer stream elsewhere is left alone).
    async fn save_sessions(&self, sessions: Vec<SessionRecord>) -> Result<(), StoreError>;
    /// A stream closed: the session is no longer connected, as of now.
    async fn close_session(&self, session: &SessionRecord) -> Result<(), StoreError>;

    /// Takes the lease if it is free or expired: returns the new epoch and the store's
    /// clock, or `None` if another replica holds it.
    async fn try_lead(&self, holder: &str, ttl_ms: i64) -> Result<Option<(u64, i64)>, StoreError>;
    /// Extends the lease; false if it is no longer held at this epoch.
    async fn renew_lead(&self, fence: &Fence, ttl_ms: i64) -> Result<bool, StoreError>;
    /// Gives the lease up (clean shutdown), so another replica takes over at once.
    async fn release_lead(&self, fence: &Fence) -> Result<(), StoreError>;
    async fn lease(&self) -> Result<LeaseRecord, StoreError>;
    /// A leader duty: marks dataplane `id` unhealthy or removes it if, read again in
    /// this transaction, it is still gone past the policy's limits.
    async fn sweep_dataplane(
        &self,
        fence: &Fence,
        id: &str,
        policy: SweepPolicy,
    ) -> Result<SweepOutcome, StoreError>;
}
