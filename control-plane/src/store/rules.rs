//! What a change does, decided the same way by every backend: which checks refuse it
//! (with the operator-facing message), when the global revision moves, and how many
//! tombstones are kept. Backends read what these functions need in their transaction,
//! ask here, then write.
//!
//! Revision rules, restated for every backend:
//! - every change that a dataplane could see bumps the global revision once, in the
//!   transaction that makes it, and stamps the changed row with the new value;
//! - a deletion leaves a tombstone stamped with the revision of the delete; re-creating
//!   the same key clears it;
//! - a trust bundle change also records its revision as `bundle_revision`;
//! - a no-op (same protocol, a dataplane reconnecting unchanged, health already as
//!   asked) does not bump, so it pushes nothing.

use weft_proto::v1::{AppProtocol, Permission, Route};

use super::StoreError;
use super::model::{
    DataplaneRecord, DataplaneRegistration, Fence, ReplicaRecord, SessionRecord, SweepOutcome,
};

/// How long a certificate is remembered after it expired (then it is forgotten: it can
/// neither renew nor be presented any more).
pub(crate) const CERTIFICATE_RETENTION_SECS: i64 = 24 * 3600;

/// How many tombstones are kept; older ones are pruned and raise the delta horizon.
pub(crate) const MAX_TOMBSTONES: i64 = 10_000;

/// How many of the oldest tombstones to prune when `count` are stored.
pub(crate) fn tombstones_to_prune(count: i64) -> Option<i64> {
    (count > MAX_TOMBSTONES).then_some(count - MAX_TOMBSTONES)
}

pub(crate) fn service_not_found(name: &str) -> StoreError {
    StoreError::NotFound(format!(
        "service \"{name}\" does not exist; list services with `weftctl service list` or create it with `weftctl service create {name} --protocol <tcp|http|http2|grpc>`"
    ))
}

/// A new service needs a free name, and a port (when it has one) no other service uses:
/// every sidecar listens on each service port.
pub(crate) fn check_new_service(
    name: &str,
    exists: bool,
    port: u32,
    port_owner: Option<String>,
) -> Result<(), StoreError> {
    if exists {
        return Err(StoreError::AlreadyExists(format!(
            "service \"{name}\" already exists; change its protocol with `weftctl service set-protocol {name} <protocol>` or delete it first"
        )));
    }
    if let Some(owner) = port_owner {
        return Err(StoreError::AlreadyExists(format!(
            "port {port} is already used by service \"{owner}\"; every sidecar listens on each service port, so choose another --port"
        )));
    }
    Ok(())
}

/// A service that gateway routes point at cannot be deleted; `routes` are their
/// `host + path_prefix`.
pub(crate) fn check_service_unrouted(name: &str, routes: &[String]) -> Result<(), StoreError> {
    if routes.is_empty() {
        return Ok(());
    }
    Err(StoreError::FailedPrecondition(format!(
        "service \"{name}\" is the target of gateway routes ({}); delete them first with `weftctl route delete HOST`",
        routes.join(", ")
    )))
}

/// A service that permissions name cannot be deleted (a rule left behind would come
/// back to life with a new service of the same name); `ids` are those permissions.
pub(crate) fn check_service_unreferenced(name: &str, ids: &[String]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    Err(StoreError::FailedPrecondition(format!(
        "service \"{name}\" is named by permissions ({}); delete them first with `weftctl permission delete ID`",
        ids.join(", ")
    )))
}

/// The services a permission names (its source when it is a service, its destination
/// when it is not `*`), which must exist.
pub(crate) fn permission_services(p: &Permission) -> Vec<&str> {
    let source = (p.source != "*" && !p.source.contains(':')).then_some(p.source.as_str());
    let destination = (p.destination != "*").then_some(p.destination.as_str());
    source.into_iter().chain(destination).collect()
}

/// A new permission names existing services (`missing`: the first that does not
/// exist) and a selector no other permission has (`taken_by`: that permission's id and
/// action).
pub(crate) fn check_new_permission(
    p: &Permission,
    missing: Option<&str>,
    taken_by: Option<(String, i32)>,
) -> Result<(), StoreError> {
    if let Some(name) = missing {
        return Err(StoreError::NotFound(format!(
            "service \"{name}\" does not exist; permissions name existing services (create it first with `weftctl service create {name} --protocol <tcp|http|http2|grpc>`, or use '*')"
        )));
    }
    if let Some((id, action)) = taken_by {
        let action = weft_policy::Action::from_proto(action).map_or("?", |a| a.as_str());
        let port = if p.port == 0 {
            String::new()
        } else {
            format!(":{}", p.port)
        };
        return Err(StoreError::AlreadyExists(format!(
            "a permission for {} -> {}{port} already exists ({id}, {action}); delete it first with `weftctl permission delete {id}`",
            p.source, p.destination
        )));
    }
    Ok(())
}

pub(crate) fn no_permission(id: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no permission \"{id}\"; list them with `weftctl permission list`"
    ))
}

/// A dataplane id belongs to one identity: registering it for another kind or name is
/// refused rather than replacing the record (ids are derived from the identity, so this
/// is a second line of defence).
pub(crate) fn check_same_identity(
    existing: Option<&DataplaneRecord>,
    reg: &DataplaneRegistration,
) -> Result<(), StoreError> {
    match existing {
        Some(old) if old.kind != reg.kind || old.name != reg.name => {
            Err(StoreError::FailedPrecondition(format!(
                "dataplane id \"{}\" belongs to {} \"{}\", not {} \"{}\"",
                reg.id,
                old.kind.segment(),
                old.name,
                reg.kind.segment(),
                reg.name
            )))
        }
        _ => Ok(()),
    }
}

/// A new route needs an existing target service and a free `(host, path_prefix)`;
/// `taken_by` is the service of the route already there, if any.
pub(crate) fn check_new_route(
    route: &Route,
    target_exists: bool,
    taken_by: Option<String>,
) -> Result<(), StoreError> {
    if !target_exists {
        return Err(StoreError::NotFound(format!(
            "route target service \"{}\" does not exist; create it first with `weftctl service create {} --protocol <tcp|http|http2|grpc>`",
            route.service, route.service
        )));
    }
    if let Some(service) = taken_by {
        return Err(StoreError::AlreadyExists(format!(
            "a route for {}{} already exists (to service \"{service}\"); delete it first with `weftctl route delete {} --path-prefix {}`",
            route.host, route.path_prefix, route.host, route.path_prefix
        )));
    }
    Ok(())
}

pub(crate) fn no_route(host: &str, path_prefix: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no route for {host}{path_prefix}; list routes with `weftctl route list`"
    ))
}

pub(crate) fn no_dataplane(id: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no dataplane \"{id}\"; list them with `weftctl dataplane list`"
    ))
}

pub(crate) fn no_token(id: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no token with id \"{id}\"; list tokens with `weftctl token list`"
    ))
}

fn no_ca_root(sha: &str) -> StoreError {
    StoreError::NotFound(format!(
        "no CA root with sha256 {sha}; see `weftctl ca show`"
    ))
}

/// A root can become the signing one if it exists and its key is here; `key_pem` is
/// the stored key of root `sha` (`None`: no such root).
pub(crate) fn check_can_sign(sha: &str, key_pem: Option<&str>) -> Result<(), StoreError> {
    match key_pem {
        None => Err(no_ca_root(sha)),
        Some("") => Err(StoreError::FailedPrecondition(format!(
            "CA root {sha} has no private key here, so it cannot sign"
        ))),
        Some(_) => Ok(()),
    }
}

/// Only a root that does not sign can leave the bundle; `signing` is whether root
/// `sha` signs (`None`: no such root).
pub(crate) fn check_removable_root(sha: &str, signing: Option<bool>) -> Result<(), StoreError> {
    match signing {
        None => Err(no_ca_root(sha)),
        Some(true) => Err(StoreError::FailedPrecondition(format!(
            "CA root {sha} is the signing root; rotate to another root before removing it"
        ))),
        Some(false) => Ok(()),
    }
}

/// What registering a dataplane writes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Registration {
    /// Nothing other dataplanes see changed: only `last_seen` and `cert_expiry` are
    /// written, with no revision bump. Holds the record as it is after the write.
    Refresh(DataplaneRecord),
    /// New, or changed in what others see (or coming back from unhealthy): the row is
    /// replaced at a new revision, healthy, and its endpoint tombstone cleared.
    Replace {
        /// The app protocol seen before is kept only while the address is the same.
        app_protocol: AppProtocol,
        /// The acknowledged version survives re-registration.
        acked_version: u64,
    },
}

/// Decides what registering `reg` over the stored `existing` record writes.
pub(crate) fn registration(
    existing: Option<DataplaneRecord>,
    reg: &DataplaneRegistration,
) -> Registration {
    match existing {
        Some(old)
            if old.address == reg.address
                && old.region == reg.region
                && old.kind == reg.kind
                && old.name == reg.name
                && old.healthy =>
        {
            Registration::Refresh(DataplaneRecord {
                last_seen: reg.now,
                cert_expiry: reg.cert_expiry,
                cert_serial: reg.cert_serial.clone(),
                ..old
            })
        }
        old => Registration::Replace {
            app_protocol: old
                .as_ref()
                .filter(|o| o.address == reg.address)
                .map(|o| o.app_protocol)
                .unwrap_or(AppProtocol::Unknown),
            acked_version: old.as_ref().map(|o| o.acked_version).unwrap_or(0),
        },
    }
}

/// A replica that wrote no heartbeat for this long is gone, and so are its streams.
pub const REPLICA_TIMEOUT_MS: i64 = 3_000;

/// Replicas gone for this long are forgotten (removed from `weftctl cp status`).
pub(crate) const REPLICA_FORGET_MS: i64 = 10 * 60 * 1000;

pub fn replica_alive(replica: &ReplicaRecord, now_ms: i64) -> bool {
    now_ms - replica.heartbeat_ms <= REPLICA_TIMEOUT_MS
}

/// Whether a session is a live stream: open, on a replica that is alive.
pub fn session_live(session: &SessionRecord, replica: Option<&ReplicaRecord>, now_ms: i64) -> bool {
    session.connected && replica.is_some_and(|r| replica_alive(r, now_ms))
}

/// Since when (store clock, ms) `dataplane` has had no live stream; `None` while it has
/// one. A stream on a replica that died counts as gone since the replica's last
/// heartbeat; a dataplane with no session row at all, since it was last seen.
pub fn gone_since(
    dataplane: &DataplaneRecord,
    session: Option<&SessionRecord>,
    replica: Option<&ReplicaRecord>,
    now_ms: i64,
) -> Option<i64> {
    match session {
        Some(s) if session_live(s, replica, now_ms) => None,
        Some(s) if s.connected => Some(replica.map_or(s.since_ms, |r| r.heartbeat_ms)),
        Some(s) => Some(s.since_ms),
        None => Some(dataplane.last_seen.saturating_mul(1000)),
    }
}

/// When the leader marks a gone dataplane unhealthy, and forgets it.
#[derive(Clone, Copy, Debug)]
pub struct SweepPolicy {
    pub grace_ms: i64,
    pub expiry_ms: i64,
    /// When this leader took the lease (store clock): nobody is counted gone for longer
    /// than the leader has led, so dataplanes get the grace period to reconnect after a
    /// takeover or a restart, as they did after a restart with one weft-cp.
    pub lead_since_ms: i64,
}

/// What the sweep does to a dataplane gone since `gone_since`.
pub fn sweep(
    dataplane: &DataplaneRecord,
    gone_since: Option<i64>,
    policy: &SweepPolicy,
    now_ms: i64,
) -> SweepOutcome {
    let Some(since) = gone_since else {
        return SweepOutcome::Kept;
    };
    let gone_for = now_ms - since.max(policy.lead_since_ms);
    if gone_for >= policy.expiry_ms {
        SweepOutcome::Removed
    } else if gone_for >= policy.grace_ms && dataplane.healthy {
        SweepOutcome::MarkedUnhealthy
    } else {
        SweepOutcome::Kept
    }
}

/// The refusal of a leader's write whose fence no longer holds.
pub(crate) fn not_leader(fence: &Fence) -> StoreError {
    StoreError::NotLeader(format!(
        "this replica ({}) no longer holds the leader lease at epoch {}; another replica leads now",
        fence.holder, fence.epoch
    ))
}
