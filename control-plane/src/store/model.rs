//! What the store keeps, as plain records shared by every backend.
//!
//! Services and routes are the protobuf messages themselves (they are pushed as they are
//! stored); everything else has a record here. Integers read back from a database are
//! turned into enums by the `*_from_i64` functions, which map unknown values to the
//! `Unspecified`/`Unknown` variant rather than failing: a row written by a newer
//! weft-cp must not make an older one unable to read the whole table.

use weft_proto::v1::{
    AppProtocol, DataplaneKind, MeshSettings, Permission, Protocol, RevokedCertificate, Route,
    Service,
};

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
    /// Key is [`route_key`]`(host, path_prefix)`.
    Route,
    /// Key is the dataplane id.
    Endpoint,
    /// Key is the permission id.
    Permission,
}

impl TombstoneKind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            TombstoneKind::Service => "service",
            TombstoneKind::Route => "route",
            TombstoneKind::Endpoint => "endpoint",
            TombstoneKind::Permission => "permission",
        }
    }

    /// The kind named by a `kind` column; `None` for a kind this version does not know.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "service" => Some(TombstoneKind::Service),
            "route" => Some(TombstoneKind::Route),
            "endpoint" => Some(TombstoneKind::Endpoint),
            "permission" => Some(TombstoneKind::Permission),
            _ => None,
        }
    }
}

/// Route tombstone key for `(host, path_prefix)`: a newline cannot occur in either.
pub fn route_key(host: &str, path_prefix: &str) -> String {
    format!("{host}\n{path_prefix}")
}

/// `(host, path_prefix)` of a [`route_key`].
pub fn split_route_key(key: &str) -> (&str, &str) {
    key.split_once('\n').unwrap_or((key, "/"))
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
    /// Serial (lowercase hex) of the certificate its discovery stream last presented;
    /// what `weftctl dataplane revoke` revokes, with the rest of its lineage.
    pub cert_serial: String,
}

/// What a dataplane announces in its hello (with what its certificate says); stored on
/// every (re)connect.
#[derive(Clone, Debug)]
pub struct DataplaneRegistration {
    pub id: String,
    pub kind: DataplaneKind,
    pub name: String,
    pub region: String,
    pub address: String,
    pub cert_expiry: i64,
    pub cert_serial: String,
    pub now: i64,
}

/// What a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A dataplane's first certificate, for one identity of this kind.
    Bootstrap(DataplaneKind),
    /// Read-only access to the admin API (list and get calls) and the dashboard.
    Viewer,
}

/// The `kind` column of a viewer token. Bootstrap tokens store their dataplane kind's
/// protobuf value (1 to 3), so viewer tokens take one far from that range.
const VIEWER_TOKEN_KIND: i64 = 100;

impl TokenKind {
    /// The value stored in the `kind` column.
    pub(crate) fn to_i64(self) -> i64 {
        match self {
            TokenKind::Bootstrap(kind) => i64::from(kind as i32),
            TokenKind::Viewer => VIEWER_TOKEN_KIND,
        }
    }

    pub(crate) fn from_i64(v: i64) -> Self {
        match v {
            VIEWER_TOKEN_KIND => TokenKind::Viewer,
            v => TokenKind::Bootstrap(kind_from_i64(v)),
        }
    }
}

/// A certificate the CA issued to a dataplane. Renewals continue a *lineage* (the
/// serial of the first certificate, issued with a bootstrap token), which is how a
/// renewal is traced back to the token it started from, and how revoking a dataplane
/// revokes every certificate it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRecord {
    /// Lowercase hex of the serial number.
    pub serial: String,
    pub lineage: String,
    /// The bootstrap token the lineage started with ("" when unknown: a certificate
    /// issued before certificates were recorded).
    pub token_id: String,
    pub kind: DataplaneKind,
    pub name: String,
    pub not_after: i64,
    /// When the lineage was revoked (0 = not revoked).
    pub revoked_at: i64,
}

/// What revoking a dataplane did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedDataplane {
    /// The dataplane as it was registered (it is removed).
    pub record: DataplaneRecord,
    /// Every certificate of its lineage that is now refused.
    pub serials: Vec<String>,
    pub revision: u64,
}

/// A token's metadata (the secret itself is never stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub kind: TokenKind,
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
    pub permissions: Vec<Permission>,
    /// The default policy and the revision at which it last changed.
    pub mesh: MeshSettings,
    /// Revoked certificates (expired ones included; the push layer leaves those out).
    pub revoked: Vec<RevokedCertificate>,
    /// Revision at which the revoked list last changed.
    pub revoked_revision: u64,
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
    /// The admin token sealed with `--ca-key-secret`, so that every replica can write
    /// `<data-dir>/admin.token`; empty for stores created without a secret.
    pub admin_token_sealed: Vec<u8>,
    /// A value sealed with `--ca-key-secret`, which tells a wrong secret at start-up;
    /// empty until the store is first used with a secret.
    pub secret_check: Vec<u8>,
}

/// Keys of the `meta` table, in the order of [`StoreMeta::to_pairs`]; the first four
/// are present in every store, the others only once they were written.
pub const META_KEYS: [&str; 6] = [
    "control_plane_id",
    "trust_domain",
    "token_key",
    "admin_token_sha256",
    "admin_token_sealed",
    META_SECRET_CHECK,
];

/// Key of [`StoreMeta::secret_check`] in the `meta` table.
pub const META_SECRET_CHECK: &str = "secret_check";

impl StoreMeta {
    /// The `meta` rows that hold this identity, keyed by [`META_KEYS`] (empty optional
    /// values are left out).
    pub fn to_pairs(&self) -> Vec<(&'static str, Vec<u8>)> {
        let values = [
            self.control_plane_id.as_bytes().to_vec(),
            self.trust_domain.as_bytes().to_vec(),
            self.token_key.clone(),
            self.admin_token_sha256.clone(),
            self.admin_token_sealed.clone(),
            self.secret_check.clone(),
        ];
        META_KEYS
            .into_iter()
            .zip(values)
            .enumerate()
            .filter(|(i, (_, v))| *i < 4 || !v.is_empty())
            .map(|(_, pair)| pair)
            .collect()
    }

    /// The identity from the values of [`META_KEYS`], if the first four are present.
    pub fn from_values(values: [Option<Vec<u8>>; 6]) -> Option<Self> {
        let [id, td, key, admin, sealed, check] = values;
        Some(StoreMeta {
            control_plane_id: String::from_utf8_lossy(&id?).into_owned(),
            trust_domain: String::from_utf8_lossy(&td?).into_owned(),
            token_key: key?,
            admin_token_sha256: admin?,
            admin_token_sealed: sealed.unwrap_or_default(),
            secret_check: check.unwrap_or_default(),
        })
    }
}

pub(crate) fn protocol_from_i64(v: i64) -> Protocol {
    i32::try_from(v)
        .ok()
        .and_then(|v| Protocol::try_from(v).ok())
        .unwrap_or(Protocol::Unspecified)
}

pub(crate) fn kind_from_i64(v: i64) -> DataplaneKind {
    i32::try_from(v)
        .ok()
        .and_then(|v| DataplaneKind::try_from(v).ok())
        .unwrap_or(DataplaneKind::Unspecified)
}

pub(crate) fn app_protocol_from_i64(v: i64) -> AppProtocol {
    i32::try_from(v)
        .ok()
        .and_then(|v| AppProtocol::try_from(v).ok())
        .unwrap_or(AppProtocol::Unknown)
}

/// A running weft-cp, as it announces itself every heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// Random per process: a restarted weft-cp is a new replica.
    pub id: String,
    /// Where its gRPC API listens, as configured (`--listen`).
    pub address: String,
    pub started_at_ms: i64,
    /// The store's clock at the last heartbeat (milliseconds since the epoch).
    pub heartbeat_ms: i64,
}

/// One discovery stream as its replica last wrote it. Every replica can read every
/// session, which is what `dataplane list`, health marking and CA rotation need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionRecord {
    pub dataplane_id: String,
    /// The replica that holds (or held) the stream.
    pub replica_id: String,
    /// Tells this stream from a later one of the same dataplane on the same replica.
    pub generation: u64,
    pub connected: bool,
    /// The store's clock when the stream opened (connected) or closed (not connected).
    pub since_ms: i64,
    pub sent_version: u64,
    pub acked_version: u64,
    pub nacked_version: u64,
    pub nack_error: String,
    pub cert_expiry: i64,
}

/// Every session and replica, read together with the store's clock.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    pub sessions: Vec<SessionRecord>,
    pub replicas: Vec<ReplicaRecord>,
    pub now_ms: i64,
}

/// The leader lease as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The replica holding it ('' before anyone led).
    pub holder: String,
    /// Incremented by every takeover; leader writes carry it (see [`Fence`]).
    pub epoch: u64,
    pub expires_ms: i64,
    /// The store's clock when this was read.
    pub now_ms: i64,
}

/// The proof a leader's write carries: the write commits only if `holder` still holds
/// the lease at `epoch` (checked in the same transaction), so a leader that lost its
/// lease without knowing it yet cannot undo what its successor does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub holder: String,
    pub epoch: u64,
}

/// What the leader's sweep did to one dataplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepOutcome {
    /// Live again, or not gone long enough: nothing written.
    Kept,
    MarkedUnhealthy,
    Removed,
}
