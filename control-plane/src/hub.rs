//! The config hub: an immutable [`Snapshot`] of everything pushed to dataplanes,
//! rebuilt from the store after each change and published on a `watch` channel.
//!
//! Push is event-driven: a committed change calls [`ConfigHub::notify`], one reloader
//! task reads the store and publishes a new snapshot, and every discovery stream that
//! waits on the channel wakes. Bursts of changes coalesce into one reload (at most one
//! per `RELOAD_INTERVAL`), and a stream that is behind computes one delta from the
//! version its dataplane acknowledged, sent whole or in small parts
//! ([`Snapshot::parts_for`]).

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use tokio::sync::{Notify, watch};
use weft_proto::v1::{
    ConfigUpdate, DataplaneKind, Endpoint, MeshSettings, Permission, RevokedCertificate,
    RevokedCertificates, Route, RouteKey, Service,
};

use crate::store::{ConfigState, Store, Tombstone, TombstoneKind, split_route_key};

/// Shortest time between two reloads started by [`ConfigHub::run`].
const RELOAD_INTERVAL: Duration = Duration::from_millis(100);

/// How long [`ConfigHub::published`] waits for the reloader before reloading itself.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// What a dataplane of a given kind receives besides services, endpoints, the trust
/// bundle and the revoked certificates: gateways route, sidecars enforce permissions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Interest {
    routes: bool,
    permissions: bool,
}

fn interest(kind: DataplaneKind) -> Interest {
    Interest {
        routes: kind == DataplaneKind::Gateway,
        permissions: kind == DataplaneKind::Sidecar,
    }
}

impl Interest {
    fn tombstone(self, kind: TombstoneKind) -> bool {
        match kind {
            TombstoneKind::Service | TombstoneKind::Endpoint => true,
            TombstoneKind::Route => self.routes,
            TombstoneKind::Permission => self.permissions,
        }
    }
}

/// One consistent view of the pushed config.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store revision this snapshot reflects; it is the config version.
    pub version: u64,
    pub control_plane_id: String,
    pub trust_domain: String,
    services: BTreeMap<String, Service>,
    routes: BTreeMap<(String, String), Route>,
    /// Endpoint with the revision at which it last changed.
    endpoints: BTreeMap<String, (Endpoint, u64)>,
    tombstones: Vec<Tombstone>,
    horizon: u64,
    bundle_pem: String,
    bundle_revision: u64,
    permissions: BTreeMap<String, Permission>,
    mesh: MeshSettings,
    /// Revoked certificates not yet expired, and the revision of the last revocation.
    revoked: Vec<RevokedCertificate>,
    revoked_serials: HashSet<String>,
    revoked_revision: u64,
    /// Latest version of what every dataplane receives, of routes, of permissions
    /// (with the mesh settings).
    latest_common: u64,
    latest_routes: u64,
    latest_permissions: u64,
}

impl Snapshot {
    /// Builds the snapshot from one consistent store read.
    pub fn from_state(state: ConfigState, control_plane_id: &str, trust_domain: &str) -> Self {
        // The healthy ingress of each region (lowest id wins), with the revision at
        // which it last changed: an endpoint's record changes when its ingress does.
        let mut ingresses: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
        for d in state
            .dataplanes
            .iter()
            .filter(|d| d.kind == DataplaneKind::Ingress && d.healthy)
        {
            ingresses
                .entry(d.region.as_str())
                .or_insert((d.address.as_str(), d.revision));
        }
        let endpoints: BTreeMap<String, (Endpoint, u64)> = state
            .dataplanes
            .iter()
            .filter(|d| d.kind == DataplaneKind::Sidecar)
            .map(|d| {
                let (ingress_address, ingress_rev) = ingresses
                    .get(d.region.as_str())
                    .map(|(a, r)| ((*a).to_owned(), *r))
                    .unwrap_or_default();
                (
                    d.id.clone(),
                    (
                        Endpoint {
                            id: d.id.clone(),
                            service: d.name.clone(),
                            address: d.address.clone(),
                            region: d.region.clone(),
                            healthy: d.healthy,
                            identity: format!("spiffe://{trust_domain}/service/{}", d.name),
                            ingress_address,
                            sni: endpoint_sni(&d.id, &d.name),
                        },
                        d.revision.max(ingress_rev),
                    ),
                )
            })
            .collect();
        let bundle_pem = state
            .ca_roots
            .iter()
            .map(|r| r.cert_pem.trim_end().to_owned() + "\n")
            .collect::<String>();
        let now = crate::registry::now_unix();
        let revoked: Vec<RevokedCertificate> = state
            .revoked
            .into_iter()
            .filter(|r| r.not_after > now)
            .collect();
        let mut latest_common = state
            .bundle_revision
            .max(state.revoked_revision)
            .max(state.services.iter().map(|s| s.revision).max().unwrap_or(0))
            .max(endpoints.values().map(|(_, r)| *r).max().unwrap_or(0));
        let mut latest_routes = state.routes.iter().map(|r| r.revision).max().unwrap_or(0);
        let mut latest_permissions = state.mesh.revision.max(
            state
                .permissions
                .iter()
                .map(|p| p.revision)
                .max()
                .unwrap_or(0),
        );
        for t in &state.tombstones {
            let latest = match t.kind {
                TombstoneKind::Service | TombstoneKind::Endpoint => &mut latest_common,
                TombstoneKind::Route => &mut latest_routes,
                TombstoneKind::Permission => &mut latest_permissions,
            };
            *latest = (*latest).max(t.revision);
        }
        Snapshot {
            version: state.revision,
            control_plane_id: control_plane_id.to_owned(),
            trust_domain: trust_domain.to_owned(),
            services: state
                .services
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            routes: state
                .routes
                .into_iter()
                .map(|r| ((r.host.clone(), r.path_prefix.clone()), r))
                .collect(),
            endpoints,
            tombstones: state.tombstones,
            horizon: state.tombstone_horizon,
            bundle_pem,
            bundle_revision: state.bundle_revision,
            permissions: state
                .permissions
                .into_iter()
                .map(|p| (p.id.clone(), p))
                .collect(),
            mesh: state.mesh,
            revoked_serials: revoked.iter().map(|r| r.serial.clone()).collect(),
            revoked,
            revoked_revision: state.revoked_revision,
            latest_common,
            latest_routes,
            latest_permissions,
        }
    }

    /// Whether the certificate with this serial was revoked (and has not expired).
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked_serials.contains(serial)
    }

    /// The newest version that changed something a dataplane of `kind` receives. A
    /// dataplane is in sync when its acknowledged version is at least this.
    pub fn relevant_version(&self, kind: DataplaneKind) -> u64 {
        let interest = interest(kind);
        let mut latest = self.latest_common;
        if interest.routes {
            latest = latest.max(self.latest_routes);
        }
        if interest.permissions {
            latest = latest.max(self.latest_permissions);
        }
        latest
    }

    /// Whether `base` (a version acknowledged by a dataplane holding `cp_id`'s config)
    /// can serve as the base of a delta.
    pub fn can_delta_from(&self, cp_id: &str, base: u64) -> bool {
        base > 0 && cp_id == self.control_plane_id && base >= self.horizon && base <= self.version
    }

    /// The update that brings a dataplane of `kind` from `base` to this snapshot, or
    /// `None` when nothing it receives changed. `base = None` asks for a full config.
    pub fn update_for(&self, kind: DataplaneKind, base: Option<u64>) -> Option<ConfigUpdate> {
        let mut plan = self.plan(kind, base)?;
        Some(self.fill_part(&mut plan, usize::MAX))
    }

    /// The same update as [`Snapshot::update_for`], to be sent in parts of at most
    /// `part_bytes` encoded bytes each (an item larger than that gets a part of its
    /// own). The parts are built one at a time from the snapshot as they are sent, so
    /// a stream never holds a copy of a whole full config.
    pub fn parts_for(
        self: &Arc<Self>,
        kind: DataplaneKind,
        base: Option<u64>,
        part_bytes: usize,
    ) -> Option<UpdateParts> {
        let plan = self.plan(kind, base)?;
        Some(UpdateParts {
            snapshot: self.clone(),
            plan,
            part_bytes,
        })
    }

    /// What an update from `base` contains, or `None` when nothing changed for `kind`.
    fn plan(&self, kind: DataplaneKind, base: Option<u64>) -> Option<Plan> {
        let base = base.filter(|b| *b >= self.horizon && *b <= self.version);
        if base.is_some_and(|b| self.relevant_version(kind) <= b) {
            return None;
        }
        Some(Plan {
            interest: interest(kind),
            base,
            pos: Pos::Header,
        })
    }

    /// Builds the next part of `plan`: items in key order (services, endpoints, routes,
    /// then removals) until the next one would take the part over `limit`. Sets `more`
    /// when items remain; then `plan` holds where the next part starts.
    fn fill_part(&self, plan: &mut Plan, limit: usize) -> ConfigUpdate {
        let changed = |rev: u64| plan.base.is_none_or(|b| rev > b);
        let mut part = ConfigUpdate {
            version: self.version,
            base_version: plan.base.unwrap_or(0),
            full: plan.base.is_none(),
            control_plane_id: self.control_plane_id.clone(),
            ..Default::default()
        };
        if matches!(plan.pos, Pos::Header) {
            part.trust_domain = self.trust_domain.clone();
            if plan.base.is_none_or(|b| self.bundle_revision > b) {
                part.trust_bundle_pem = self.bundle_pem.clone();
            }
            if plan.base.is_none_or(|b| self.revoked_revision > b) {
                part.revoked = Some(RevokedCertificates {
                    certificates: self.revoked.clone(),
                });
            }
            if plan.interest.permissions && plan.base.is_none_or(|b| self.mesh.revision > b) {
                part.mesh = Some(self.mesh);
            }
            plan.pos = Pos::Services(Bound::Unbounded);
        }
        // The `more` flag (2 bytes) is counted in case it is needed.
        let mut size = part.encoded_len() + 2;
        let mut empty = true;
        // Whether an item of `len` encoded bytes still fits; the first always does.
        let mut fits = |len: usize| {
            let field = 1 + prost::length_delimiter_len(len) + len;
            if empty || size.saturating_add(field) <= limit {
                size = size.saturating_add(field);
                empty = false;
                true
            } else {
                false
            }
        };
        loop {
            match &plan.pos {
                Pos::Header => plan.pos = Pos::Services(Bound::Unbounded),
                Pos::Services(after) => {
                    let after = after.as_ref().map(String::as_str);
                    let next = self
                        .services
                        .range::<str, _>((after, Bound::Unbounded))
                        .map(|(_, s)| s)
                        .find(|s| changed(s.revision));
                    match next {
                        Some(s) if !fits(s.encoded_len()) => break,
                        Some(s) => {
                            part.services.push(s.clone());
                            plan.pos = Pos::Services(Bound::Excluded(s.name.clone()));
                        }
                        None => plan.pos = Pos::Endpoints(Bound::Unbounded),
                    }
                }
                Pos::Endpoints(after) => {
                    let after = after.as_ref().map(String::as_str);
                    let next = self
                        .endpoints
                        .range::<str, _>((after, Bound::Unbounded))
                        .map(|(_, e)| e)
                        .find(|(_, rev)| changed(*rev));
                    match next {
                        Some((e, _)) if !fits(e.encoded_len()) => break,
                        Some((e, _)) => {
                            part.endpoints.push(e.clone());
                            plan.pos = Pos::Endpoints(Bound::Excluded(e.id.clone()));
                        }
                        None => plan.pos = self.after_endpoints(plan),
                    }
                }
                Pos::Permissions(after) => {
                    let after = after.as_ref().map(String::as_str);
                    let next = self
                        .permissions
                        .range::<str, _>((after, Bound::Unbounded))
                        .map(|(_, p)| p)
                        .find(|p| changed(p.revision));
                    match next {
                        Some(p) if !fits(p.encoded_len()) => break,
                        Some(p) => {
                            part.permissions.push(p.clone());
                            plan.pos = Pos::Permissions(Bound::Excluded(p.id.clone()));
                        }
                        None if plan.interest.routes => plan.pos = Pos::Routes(Bound::Unbounded),
                        None => plan.pos = self.removals_from(plan.base),
                    }
                }
                Pos::Routes(after) => {
                    let next = self
                        .routes
                        .range((after.as_ref(), Bound::Unbounded))
                        .map(|(_, r)| r)
                        .find(|r| changed(r.revision));
                    match next {
                        Some(r) if !fits(r.encoded_len()) => break,
                        Some(r) => {
                            part.routes.push(r.clone());
                            plan.pos = Pos::Routes(Bound::Excluded((
                                r.host.clone(),
                                r.path_prefix.clone(),
                            )));
                        }
                        None => plan.pos = self.removals_from(plan.base),
                    }
                }
                Pos::Removals(i) => {
                    let Some(t) = self.tombstones.get(*i) else {
                        plan.pos = Pos::Done;
                        continue;
                    };
                    match t.kind {
                        _ if !plan.interest.tombstone(t.kind) => {}
                        TombstoneKind::Service => {
                            if !fits(t.key.len()) {
                                break;
                            }
                            part.removed_services.push(t.key.clone());
                        }
                        TombstoneKind::Endpoint => {
                            if !fits(t.key.len()) {
                                break;
                            }
                            part.removed_endpoints.push(t.key.clone());
                        }
                        TombstoneKind::Permission => {
                            if !fits(t.key.len()) {
                                break;
                            }
                            part.removed_permissions.push(t.key.clone());
                        }
                        TombstoneKind::Route => {
                            let (host, prefix) = split_route_key(&t.key);
                            let key = RouteKey {
                                host: host.to_owned(),
                                path_prefix: prefix.to_owned(),
                            };
                            if !fits(key.encoded_len()) {
                                break;
                            }
                            part.removed_routes.push(key);
                        }
                    }
                    plan.pos = Pos::Removals(i + 1);
                }
                Pos::Done => return part,
            }
        }
        part.more = true;
        part
    }

    /// What follows the endpoints in an update for `plan`'s kind of dataplane.
    fn after_endpoints(&self, plan: &Plan) -> Pos {
        if plan.interest.permissions {
            Pos::Permissions(Bound::Unbounded)
        } else if plan.interest.routes {
            Pos::Routes(Bound::Unbounded)
        } else {
            self.removals_from(plan.base)
        }
    }

    /// Where the removals of a delta from `base` start; a full config has none.
    fn removals_from(&self, base: Option<u64>) -> Pos {
        match base {
            Some(b) => Pos::Removals(self.tombstones.partition_point(|t| t.revision <= b)),
            None => Pos::Done,
        }
    }

    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// The revision at which the trust bundle last changed.
    pub fn bundle_revision(&self) -> u64 {
        self.bundle_revision
    }
}

/// What one update contains and how far sending it got.
#[derive(Debug)]
struct Plan {
    interest: Interest,
    /// The version the update is a delta from; `None` for a full config.
    base: Option<u64>,
    pos: Pos,
}

/// The next item of an update to put in a part: items are sent in key order, so the
/// position is the last key sent (the snapshot is immutable, so keys stay valid).
#[derive(Debug)]
enum Pos {
    /// Nothing sent yet: the first part also carries the trust domain and bundle.
    Header,
    Services(Bound<String>),
    Endpoints(Bound<String>),
    Permissions(Bound<String>),
    Routes(Bound<(String, String)>),
    /// Index into the tombstones (sorted by revision).
    Removals(usize),
    Done,
}

/// An update being sent in parts (see [`Snapshot::parts_for`]).
#[derive(Debug)]
pub struct UpdateParts {
    snapshot: Arc<Snapshot>,
    plan: Plan,
    part_bytes: usize,
}

impl UpdateParts {
    /// The version the update brings the dataplane to.
    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    /// Whether at least one part was returned already.
    pub fn started(&self) -> bool {
        !matches!(self.plan.pos, Pos::Header)
    }
}

impl Iterator for UpdateParts {
    type Item = ConfigUpdate;

    /// The next part; the last one has `more == false`.
    fn next(&mut self) -> Option<ConfigUpdate> {
        if matches!(self.plan.pos, Pos::Done) {
            return None;
        }
        Some(self.snapshot.fill_part(&mut self.plan, self.part_bytes))
    }
}

/// The TLS server name that names one endpoint for region ingresses:
/// `<16 hex of sha256(id)>.<service>.weft`, a valid DNS name unique per endpoint.
pub fn endpoint_sni(id: &str, service: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}.{service}.weft")
}

/// Owns the current snapshot and the reloader.
pub struct ConfigHub {
    store: Arc<dyn Store>,
    control_plane_id: String,
    trust_domain: String,
    tx: watch::Sender<Arc<Snapshot>>,
    dirty: Notify,
}

impl ConfigHub {
    /// Loads the first snapshot. Call [`ConfigHub::run`] on a task afterwards.
    pub async fn new(
        store: Arc<dyn Store>,
        control_plane_id: String,
        trust_domain: String,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        let state = store.config_state().await?;
        let snap = Snapshot::from_state(state, &control_plane_id, &trust_domain);
        let (tx, _) = watch::channel(Arc::new(snap));
        Ok(Arc::new(ConfigHub {
            store,
            control_plane_id,
            trust_domain,
            tx,
            dirty: Notify::new(),
        }))
    }

    /// Something changed in the store: reload soon. Cheap and never blocks.
    pub fn notify(&self) {
        self.dirty.notify_one();
    }

    /// Reloads right now and publishes if the revision moved forward. Admin calls use
    /// this so that, when they return, the change is already on its way to every stream.
    pub async fn reload(&self) -> Result<(), crate::store::StoreError> {
        let state = self.store.config_state().await?;
        if state.revision > self.tx.borrow().version {
            let snap = Arc::new(Snapshot::from_state(
                state,
                &self.control_plane_id,
                &self.trust_domain,
            ));
            // Two reloads may run at once (the reloader and an admin call): never let
            // the one that read the store first replace a newer snapshot.
            self.tx.send_if_modified(|current| {
                let newer = snap.version > current.version;
                if newer {
                    *current = snap;
                }
                newer
            });
        }
        Ok(())
    }

    /// Waits until the published snapshot reflects store `revision`, asking the
    /// reloader for it. A new discovery stream uses this to include its own
    /// registration: during a connect storm the registrations of many streams then
    /// share one reload (see [`ConfigHub::run`]) instead of each rebuilding the
    /// snapshot and pushing a delta to every connected stream.
    pub async fn published(&self, revision: u64) -> Result<(), crate::store::StoreError> {
        let mut rx = self.tx.subscribe();
        if rx.borrow().version >= revision {
            return Ok(());
        }
        self.notify();
        let published = tokio::time::timeout(PUBLISH_WAIT, rx.wait_for(|s| s.version >= revision))
            .await
            .is_ok_and(|r| r.is_ok());
        if published {
            Ok(())
        } else {
            // The reloader failed to read the store: try here, and report the error.
            self.reload().await
        }
    }

    /// Reloader loop: waits for [`ConfigHub::notify`]; a burst of notifications while a
    /// reload runs results in exactly one more reload. Reloads start at most every
    /// `RELOAD_INTERVAL` (100 ms): the first change after a quiet spell is published at once,
    /// and during a burst (a fleet reconnecting, each registration a new revision) the
    /// changes of one interval share one snapshot and one push per stream, which keeps
    /// the work of a burst linear rather than quadratic in the number of dataplanes.
    /// Admin changes do not wait for this: they call [`ConfigHub::reload`] directly.
    pub async fn run(self: Arc<Self>) {
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            self.dirty.notified().await;
            if let Some(last) = last {
                tokio::time::sleep_until(last + RELOAD_INTERVAL).await;
            }
            last = Some(tokio::time::Instant::now());
            if let Err(e) = self.reload().await {
                tracing::error!(error = %e, "cannot reload config from the store; will retry on the next change");
            }
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{CaRootRecord, DataplaneRecord};
    use weft_proto::v1::{AppProtocol, Protocol};

    fn state() -> ConfigState {
        ConfigState {
            revision: 10,
            services: vec![
                Service {
                    name: "a".into(),
                    protocol: Protocol::Http as i32,
                    revision: 2,
                    ..Default::default()
                },
                Service {
                    name: "b".into(),
                    protocol: Protocol::Grpc as i32,
                    revision: 8,
                    ..Default::default()
                },
            ],
            routes: vec![Route {
                host: "x.example.com".into(),
                path_prefix: "/".into(),
                service: "a".into(),
                rewrite_host: String::new(),
                revision: 10,
                prefer_region: "us".into(),
            }],
            dataplanes: vec![DataplaneRecord {
                id: "service/a/1.2.3.4:15008".into(),
                kind: DataplaneKind::Sidecar,
                name: "a".into(),
                region: "eu".into(),
                address: "1.2.3.4:15008".into(),
                healthy: true,
                app_protocol: AppProtocol::Unknown,
                revision: 5,
                last_seen: 0,
                acked_version: 0,
                cert_expiry: 0,
                cert_serial: String::new(),
            }],
            tombstones: vec![Tombstone {
                kind: TombstoneKind::Service,
                key: "gone".into(),
                revision: 9,
            }],
            tombstone_horizon: 3,
            ca_roots: vec![CaRootRecord {
                sha256: "x".into(),
                cert_pem: "PEM".into(),
                key_pem: String::new(),
                signing: true,
                added_at: 0,
            }],
            bundle_revision: 1,
            permissions: vec![Permission {
                id: "perm-1".into(),
                source: "b".into(),
                destination: "a".into(),
                action: weft_proto::v1::PermissionAction::Allow as i32,
                revision: 7,
                ..Default::default()
            }],
            mesh: MeshSettings {
                default_policy: weft_proto::v1::DefaultPolicy::Deny as i32,
                revision: 4,
            },
            revoked: vec![
                RevokedCertificate {
                    serial: "aa".into(),
                    not_after: i64::MAX,
                },
                RevokedCertificate {
                    serial: "expired".into(),
                    not_after: 1,
                },
            ],
            revoked_revision: 3,
        }
    }

    #[test]
    fn sidecars_get_permissions_and_everyone_the_revoked_certificates() {
        let snap = Snapshot::from_state(state(), "cp", "weft.local");
        let full = snap.update_for(DataplaneKind::Sidecar, None).unwrap();
        assert_eq!(full.permissions.len(), 1);
        assert_eq!(full.mesh.unwrap().revision, 4);
        let revoked = |u: &ConfigUpdate| {
            u.revoked.as_ref().map(|r| {
                r.certificates
                    .iter()
                    .map(|c| c.serial.clone())
                    .collect::<Vec<_>>()
            })
        };
        // Expired certificates are left out: the chain check refuses them anyway.
        assert_eq!(revoked(&full), Some(vec!["aa".to_owned()]));
        assert!(snap.is_revoked("aa") && !snap.is_revoked("expired"));
        for kind in [DataplaneKind::Gateway, DataplaneKind::Ingress] {
            let full = snap.update_for(kind, None).unwrap();
            assert!(
                full.permissions.is_empty() && full.mesh.is_none(),
                "{kind:?}"
            );
            assert_eq!(revoked(&full), Some(vec!["aa".to_owned()]));
        }
        // Deltas carry the settings and the list only when they changed.
        let delta = snap.update_for(DataplaneKind::Sidecar, Some(5)).unwrap();
        assert_eq!(delta.permissions.len(), 1);
        assert!(delta.mesh.is_none() && delta.revoked.is_none());
        // A permission change is no change for gateways and ingresses.
        let mut st = state();
        st.revision = 11;
        st.permissions[0].revision = 11;
        let snap = Snapshot::from_state(st, "cp", "weft.local");
        assert_eq!(snap.relevant_version(DataplaneKind::Sidecar), 11);
        assert_eq!(snap.relevant_version(DataplaneKind::Ingress), 9);
        assert!(snap.update_for(DataplaneKind::Ingress, Some(9)).is_none());
    }

    #[test]
    fn full_and_delta() {
        let snap = Snapshot::from_state(state(), "cp", "weft.local");
        let full = snap.update_for(DataplaneKind::Sidecar, None).unwrap();
        assert!(full.full && full.services.len() == 2 && full.endpoints.len() == 1);
        assert!(full.routes.is_empty(), "sidecars get no routes");
        assert_eq!(full.trust_bundle_pem, "PEM\n");
        assert_eq!(full.endpoints[0].identity, "spiffe://weft.local/service/a");

        let delta = snap.update_for(DataplaneKind::Sidecar, Some(6)).unwrap();
        assert!(!delta.full);
        assert_eq!(delta.base_version, 6);
        assert_eq!(
            delta
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert!(delta.endpoints.is_empty());
        assert_eq!(delta.removed_services, ["gone"]);
        assert!(delta.trust_bundle_pem.is_empty());

        // The route change at 10 does not concern sidecars: they are in sync at 9.
        assert_eq!(snap.relevant_version(DataplaneKind::Sidecar), 9);
        assert!(snap.update_for(DataplaneKind::Sidecar, Some(9)).is_none());
        let gw = snap.update_for(DataplaneKind::Gateway, Some(9)).unwrap();
        assert_eq!(gw.routes.len(), 1);
        assert_eq!(
            gw.routes[0].prefer_region, "us",
            "the preference reaches gateways"
        );

        // Below the tombstone horizon, or from the future, only a full update is safe.
        assert!(
            snap.update_for(DataplaneKind::Sidecar, Some(2))
                .unwrap()
                .full
        );
        assert!(
            snap.update_for(DataplaneKind::Sidecar, Some(11))
                .unwrap()
                .full
        );
        assert!(!snap.can_delta_from("other-cp", 6));
        assert!(snap.can_delta_from("cp", 6));
    }

    /// A bigger state: many services and endpoints, routes, and tombstones of each kind.
    fn big_state() -> ConfigState {
        let mut st = state();
        st.revision = 500;
        st.services = (0..60)
            .map(|i| Service {
                name: format!("svc-{i:03}"),
                protocol: Protocol::Http as i32,
                revision: 10 + i,
                ..Default::default()
            })
            .collect();
        st.routes = (0..40)
            .map(|i| Route {
                host: format!("h{i}.example.com"),
                path_prefix: "/".into(),
                service: "svc-001".into(),
                rewrite_host: String::new(),
                revision: 100 + i,
                prefer_region: String::new(),
            })
            .collect();
        st.dataplanes = (0..300)
            .map(|i| DataplaneRecord {
                id: format!(
                    "service/svc-{:03}/10.0.{}.{}:15008",
                    i % 60,
                    i / 250,
                    i % 250
                ),
                kind: DataplaneKind::Sidecar,
                name: format!("svc-{:03}", i % 60),
                region: "eu".into(),
                address: format!("10.0.{}.{}:15008", i / 250, i % 250),
                healthy: i % 7 != 0,
                app_protocol: AppProtocol::Unknown,
                revision: 150 + i,
                last_seen: 0,
                acked_version: 0,
                cert_expiry: 0,
                cert_serial: String::new(),
            })
            .collect();
        st.tombstones = (0..90)
            .map(|i| Tombstone {
                kind: [
                    TombstoneKind::Service,
                    TombstoneKind::Endpoint,
                    TombstoneKind::Route,
                ][i % 3],
                key: if i % 3 == 2 {
                    format!("gone{i}.example.com\n/api")
                } else {
                    format!("gone-{i}")
                },
                revision: 400 + i as u64,
            })
            .collect();
        st.permissions = (0..30)
            .map(|i| Permission {
                id: format!("perm-{i:02}"),
                source: format!("svc-{i:03}"),
                destination: "svc-001".into(),
                action: weft_proto::v1::PermissionAction::Allow as i32,
                revision: 200 + i,
                ..Default::default()
            })
            .collect();
        st.tombstones.extend((0..5).map(|i| Tombstone {
            kind: TombstoneKind::Permission,
            key: format!("perm-gone-{i}"),
            revision: 491 + i,
        }));
        st.tombstone_horizon = 5;
        st.ca_roots[0].cert_pem = "-----BEGIN CERTIFICATE-----\n".repeat(40);
        st.bundle_revision = 450;
        st
    }

    /// Joins parts the way a dataplane does.
    fn join(parts: &[ConfigUpdate]) -> ConfigUpdate {
        let mut whole = parts[0].clone();
        for p in &parts[1..] {
            assert_eq!(
                (p.version, p.base_version, p.full, &p.control_plane_id),
                (
                    whole.version,
                    whole.base_version,
                    whole.full,
                    &whole.control_plane_id
                ),
                "every part carries the same header"
            );
            assert!(p.trust_domain.is_empty() && p.trust_bundle_pem.is_empty());
            whole.services.extend(p.services.iter().cloned());
            whole
                .removed_services
                .extend(p.removed_services.iter().cloned());
            whole.endpoints.extend(p.endpoints.iter().cloned());
            whole
                .removed_endpoints
                .extend(p.removed_endpoints.iter().cloned());
            whole.routes.extend(p.routes.iter().cloned());
            whole
                .removed_routes
                .extend(p.removed_routes.iter().cloned());
            assert!(p.mesh.is_none() && p.revoked.is_none(), "first part only");
            whole.permissions.extend(p.permissions.iter().cloned());
            whole
                .removed_permissions
                .extend(p.removed_permissions.iter().cloned());
        }
        whole.more = false;
        whole
    }

    fn items(p: &ConfigUpdate) -> usize {
        p.services.len()
            + p.removed_services.len()
            + p.endpoints.len()
            + p.removed_endpoints.len()
            + p.routes.len()
            + p.removed_routes.len()
            + p.permissions.len()
            + p.removed_permissions.len()
    }

    #[test]
    fn parts_add_up_to_the_update() {
        let snap = Arc::new(Snapshot::from_state(big_state(), "cp", "weft.local"));
        for kind in [DataplaneKind::Sidecar, DataplaneKind::Gateway] {
            for base in [None, Some(2), Some(120), Some(300), Some(420), Some(480)] {
                let whole = snap.update_for(kind, base).unwrap();
                assert!(!whole.more);
                for limit in [1, 300, 1000, 4000, usize::MAX] {
                    let mut it = snap.parts_for(kind, base, limit).unwrap();
                    assert!(!it.started());
                    assert_eq!(it.version(), 500);
                    let parts: Vec<ConfigUpdate> = it.by_ref().collect();
                    assert!(it.started() && it.next().is_none());
                    let (last, rest) = parts.split_last().unwrap();
                    assert!(
                        rest.iter().all(|p| p.more) && !last.more,
                        "{kind:?} {base:?} {limit}"
                    );
                    for p in &parts {
                        assert!(
                            p.encoded_len() <= limit || items(p) <= 1,
                            "part of {} bytes over {limit}",
                            p.encoded_len()
                        );
                    }
                    assert_eq!(join(&parts), whole, "{kind:?} {base:?} {limit}");
                    if limit == usize::MAX {
                        assert_eq!(parts.len(), 1);
                    }
                    if limit == 4000 && base.is_none() {
                        assert!(parts.len() > 5, "a full config is split");
                    }
                }
            }
        }
        // Nothing to send is still nothing.
        assert!(
            snap.parts_for(DataplaneKind::Sidecar, Some(500), 4000)
                .is_none()
        );
        let full = snap.update_for(DataplaneKind::Gateway, None).unwrap();
        assert_eq!(
            (full.services.len(), full.endpoints.len(), full.routes.len()),
            (60, 300, 40)
        );
        let delta = snap.update_for(DataplaneKind::Gateway, Some(420)).unwrap();
        assert_eq!(
            (
                delta.removed_services.len(),
                delta.removed_endpoints.len(),
                delta.removed_routes.len()
            ),
            (23, 23, 23)
        );
        assert_eq!(delta.removed_routes[0].path_prefix, "/api");
        assert!(!delta.trust_bundle_pem.is_empty());
        assert!(delta.permissions.is_empty() && delta.removed_permissions.is_empty());
        let sidecar = snap.update_for(DataplaneKind::Sidecar, None).unwrap();
        assert_eq!((sidecar.permissions.len(), sidecar.routes.len()), (30, 0));
        let delta = snap.update_for(DataplaneKind::Sidecar, Some(420)).unwrap();
        assert_eq!(
            (delta.removed_permissions.len(), delta.removed_routes.len()),
            (5, 0)
        );
    }
}
