//! Updates for one dataplane: full or delta from the version it acknowledged, whole
//! or in parts of bounded size built one at a time as they are sent.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use prost::Message as _;
use weft_proto::v1::{ConfigUpdate, DataplaneKind, RevokedCertificates, RouteKey};

use super::{Interest, Snapshot, interest};
use crate::store::{Tombstone, TombstoneKind, split_route_key};

impl Snapshot {
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

    /// Builds the next part of `plan`: items in key order (services, endpoints,
    /// permissions or routes, then removals) until the next one would take the part over
    /// `limit`. Sets `more` when items remain; then `plan` holds where the next part starts.
    fn fill_part(&self, plan: &mut Plan, limit: usize) -> ConfigUpdate {
        let mut part = self.part_header(plan);
        // The `more` flag (2 bytes) is counted in case it is needed.
        let mut budget = Budget {
            size: part.encoded_len() + 2,
            limit,
            empty: true,
        };
        loop {
            let pos = std::mem::replace(&mut plan.pos, Pos::Done);
            match self.advance(pos, plan, &mut part, &mut budget) {
                Advance::To(next) => plan.pos = next,
                Advance::Full(here) => {
                    plan.pos = here;
                    part.more = true;
                    return part;
                }
                Advance::Done => return part,
            }
        }
    }

    /// A part with the update's versions; the first part of an update also carries
    /// the trust domain, and the bundle, revocations and mesh settings that changed.
    fn part_header(&self, plan: &mut Plan) -> ConfigUpdate {
        let mut part = ConfigUpdate {
            version: self.version,
            base_version: plan.base.unwrap_or(0),
            full: plan.base.is_none(),
            control_plane_id: self.control_plane_id.clone(),
            ..Default::default()
        };
        if !matches!(plan.pos, Pos::Header) {
            return part;
        }
        let changed = |rev: u64| plan.base.is_none_or(|b| rev > b);
        part.trust_domain = self.trust_domain.clone();
        if changed(self.bundle_revision) {
            part.trust_bundle_pem = self.bundle_pem.clone();
        }
        if changed(self.revoked_revision) {
            part.revoked = Some(RevokedCertificates {
                certificates: self.revoked.clone(),
            });
        }
        if plan.interest.permissions && changed(self.mesh.revision) {
            part.mesh = Some(self.mesh);
        }
        plan.pos = Pos::Services(Bound::Unbounded);
        part
    }

    /// Puts the next changed item at `pos` into `part`, or moves on to the next kind of
    /// item when there is none left.
    fn advance(
        &self,
        pos: Pos,
        plan: &Plan,
        part: &mut ConfigUpdate,
        budget: &mut Budget,
    ) -> Advance {
        let changed = |rev: u64| plan.base.is_none_or(|b| rev > b);
        match pos {
            Pos::Header => Advance::To(Pos::Services(Bound::Unbounded)),
            Pos::Services(after) => {
                let next = next_after(&self.services, &after, |s| changed(s.revision));
                match next {
                    Some(s) if !budget.fits(s.encoded_len()) => Advance::Full(Pos::Services(after)),
                    Some(s) => {
                        part.services.push(s.clone());
                        Advance::To(Pos::Services(Bound::Excluded(s.name.clone())))
                    }
                    None => Advance::To(Pos::Endpoints(Bound::Unbounded)),
                }
            }
            Pos::Endpoints(after) => {
                let next = next_after(&self.endpoints, &after, |(_, rev)| changed(*rev));
                match next {
                    Some((e, _)) if !budget.fits(e.encoded_len()) => {
                        Advance::Full(Pos::Endpoints(after))
                    }
                    Some((e, _)) => {
                        part.endpoints.push(e.clone());
                        Advance::To(Pos::Endpoints(Bound::Excluded(e.id.clone())))
                    }
                    None => Advance::To(self.after_endpoints(plan)),
                }
            }
            Pos::Permissions(after) => {
                let next = next_after(&self.permissions, &after, |p| changed(p.revision));
                match next {
                    Some(p) if !budget.fits(p.encoded_len()) => {
                        Advance::Full(Pos::Permissions(after))
                    }
                    Some(p) => {
                        part.permissions.push(p.clone());
                        Advance::To(Pos::Permissions(Bound::Excluded(p.id.clone())))
                    }
                    None if plan.interest.routes => Advance::To(Pos::Routes(Bound::Unbounded)),
                    None => Advance::To(self.removals_from(plan.base)),
                }
            }
            Pos::Routes(after) => {
                let next = self
                    .routes
                    .range((after.as_ref(), Bound::Unbounded))
                    .map(|(_, r)| r)
                    .find(|r| changed(r.revision));
                match next {
                    Some(r) if !budget.fits(r.encoded_len()) => Advance::Full(Pos::Routes(after)),
                    Some(r) => {
                        part.routes.push(r.clone());
                        let key = (r.host.clone(), r.path_prefix.clone());
                        Advance::To(Pos::Routes(Bound::Excluded(key)))
                    }
                    None => Advance::To(self.removals_from(plan.base)),
                }
            }
            Pos::Removals(i) => match self.tombstones.get(i) {
                None => Advance::Done,
                Some(t) if !plan.interest.tombstone(t.kind) => Advance::To(Pos::Removals(i + 1)),
                Some(t) if add_removal(part, t, budget) => Advance::To(Pos::Removals(i + 1)),
                Some(_) => Advance::Full(Pos::Removals(i)),
            },
            Pos::Done => Advance::Done,
        }
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

/// The first item of `map` after `after` (in key order) that `wanted` accepts.
fn next_after<'a, V>(
    map: &'a BTreeMap<String, V>,
    after: &Bound<String>,
    wanted: impl Fn(&V) -> bool,
) -> Option<&'a V> {
    let after = after.as_ref().map(String::as_str);
    map.range::<str, _>((after, Bound::Unbounded))
        .map(|(_, v)| v)
        .find(|v| wanted(v))
}

/// Adds the removal `t` to `part` if it fits; false when the part is full.
fn add_removal(part: &mut ConfigUpdate, t: &Tombstone, budget: &mut Budget) -> bool {
    match t.kind {
        TombstoneKind::Service if budget.fits(t.key.len()) => {
            part.removed_services.push(t.key.clone());
        }
        TombstoneKind::Endpoint if budget.fits(t.key.len()) => {
            part.removed_endpoints.push(t.key.clone());
        }
        TombstoneKind::Permission if budget.fits(t.key.len()) => {
            part.removed_permissions.push(t.key.clone());
        }
        TombstoneKind::Route => {
            let (host, prefix) = split_route_key(&t.key);
            let key = RouteKey {
                host: host.to_owned(),
                path_prefix: prefix.to_owned(),
            };
            if !budget.fits(key.encoded_len()) {
                return false;
            }
            part.removed_routes.push(key);
        }
        _ => return false,
    }
    true
}

/// What one step of filling a part did.
enum Advance {
    /// Placed an item or moved to the next kind: continue from this position.
    To(Pos),
    /// The item at this position does not fit: the part ends, the next starts here.
    Full(Pos),
    /// Nothing is left to send.
    Done,
}

/// The encoded size of a part so far, against its limit.
struct Budget {
    size: usize,
    limit: usize,
    /// No item placed yet: the first always fits, however large.
    empty: bool,
}

impl Budget {
    /// Whether an item of `len` encoded bytes still fits; if so, it is counted.
    fn fits(&mut self, len: usize) -> bool {
        let field = 1 + prost::length_delimiter_len(len) + len;
        if self.empty || self.size.saturating_add(field) <= self.limit {
            self.size = self.size.saturating_add(field);
            self.empty = false;
            true
        } else {
            false
        }
    }
}
