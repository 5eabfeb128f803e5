//! The config a dataplane holds, and how a [`ConfigUpdate`] applies to it.
//!
//! An update is applied to a copy and checked before it replaces the current config, so
//! a bad update is nacked and the dataplane keeps serving the version it had.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weft_proto::v1::{ConfigUpdate, Protocol};

/// How the inbound delivers a service's traffic to its app (the protocol selector).
/// Converted from the proto as a config is applied, so nothing downstream matches on
/// strings. Serialised as the name users type (`tcp`, `http`, `http2`, `grpc`), which
/// is also how the state dir and `/config` show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    /// Raw bytes, spliced; the app is not HTTP (or the mesh must not parse it).
    #[default]
    Tcp,
    /// An HTTP/1.1 app.
    Http,
    /// An h2c (prior knowledge) app.
    Http2,
    /// A gRPC app over h2c.
    Grpc,
}

impl Selector {
    /// Whether the app speaks HTTP at all (every selector but `tcp`).
    pub fn is_http(self) -> bool {
        self != Selector::Tcp
    }

    /// Whether the app speaks h2c (`http2`, `grpc`); `http` apps speak HTTP/1.1.
    pub fn app_speaks_h2(self) -> bool {
        matches!(self, Selector::Http2 | Selector::Grpc)
    }

    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            Selector::Tcp => "tcp",
            Selector::Http => "http",
            Selector::Http2 => "http2",
            Selector::Grpc => "grpc",
        }
    }
}

impl From<Protocol> for Selector {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Unspecified | Protocol::Tcp => Selector::Tcp,
            Protocol::Http => Selector::Http,
            Protocol::Http2 => Selector::Http2,
            Protocol::Grpc => Selector::Grpc,
        }
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One service as a dataplane sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: String,
    /// The selector (unset is held as tcp).
    pub protocol: Selector,
    /// Whether a selector was set at all.
    pub protocol_set: bool,
    /// Outbound port, 0 = none.
    pub port: u16,
}

/// One endpoint of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointEntry {
    pub id: String,
    pub service: String,
    pub address: String,
    pub region: String,
    pub healthy: bool,
    pub identity: String,
    /// Ingress of the endpoint's region, for callers in other regions (empty: none).
    #[serde(default)]
    pub ingress_address: String,
    /// TLS server name naming this endpoint (for the ingress).
    #[serde(default)]
    pub sni: String,
}

/// A gateway route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub host: String,
    pub path_prefix: String,
    pub service: String,
    pub rewrite_host: String,
    /// Region whose endpoints are tried first (empty: the usual order).
    #[serde(default)]
    pub prefer_region: String,
}

/// Everything a dataplane holds, as of `version` from control plane `control_plane_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshConfig {
    pub version: u64,
    pub control_plane_id: String,
    pub trust_domain: String,
    pub services: BTreeMap<String, ServiceEntry>,
    pub endpoints: BTreeMap<String, EndpointEntry>,
    /// Keyed by `host` + path prefix.
    pub routes: BTreeMap<String, RouteEntry>,
    pub trust_bundle_pem: String,
    /// Traffic permissions keyed by id (sidecars only), checked when applied.
    #[serde(default)]
    pub permissions: BTreeMap<String, PermissionEntry>,
    /// What happens to calls no permission matches.
    #[serde(default)]
    pub default_policy: DefaultPolicyEntry,
    /// Serials of revoked certificates, with when each expires anyway.
    #[serde(default)]
    pub revoked: BTreeMap<String, i64>,
}

/// One permission as held (and shown by `/config`): the canonical text of its parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionEntry {
    pub source: String,
    pub destination: String,
    /// 0 = every port.
    pub port: u16,
    pub action: String,
}

/// The mesh default policy as held: `allow` (a new mesh) or `deny`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicyEntry {
    #[default]
    Allow,
    Deny,
}

impl From<DefaultPolicyEntry> for weft_policy::DefaultPolicy {
    fn from(d: DefaultPolicyEntry) -> Self {
        match d {
            DefaultPolicyEntry::Allow => weft_policy::DefaultPolicy::Allow,
            DefaultPolicyEntry::Deny => weft_policy::DefaultPolicy::Deny,
        }
    }
}

impl PermissionEntry {
    /// The rule, parsed once more (it was checked when the update was applied).
    fn rule(&self, id: &str) -> Result<weft_policy::Rule, weft_policy::RuleError> {
        let action = match self.action.as_str() {
            "deny" => weft_policy::Action::Deny,
            "audit" => weft_policy::Action::Audit,
            _ => weft_policy::Action::Allow,
        };
        Ok(weft_policy::Rule {
            id: id.to_owned(),
            source: weft_policy::Source::parse(&self.source)?,
            destination: weft_policy::Destination::parse(&self.destination)?,
            port: (self.port != 0).then_some(self.port),
            action,
        })
    }
}

/// Why an update cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The delta was computed from a version this dataplane does not hold: resync.
    #[error("delta from version {base} does not apply to held version {held}")]
    BaseMismatch { base: u64, held: u64 },
    /// The update is invalid: nack it.
    #[error("{0}")]
    Invalid(String),
}

/// A part that does not continue the update being assembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "update part for version {got} (base {got_base}) does not continue the parts of version {expected} (base {expected_base})"
)]
pub struct PartMismatch {
    pub expected: u64,
    pub expected_base: u64,
    pub got: u64,
    pub got_base: u64,
}

/// Collects an update the control plane sent in parts (`ConfigUpdate.more` set on all
/// but the last), so that it is applied, and acked, as the one update it is.
#[derive(Debug, Default)]
pub struct UpdateAssembler {
    pending: Option<ConfigUpdate>,
}

impl UpdateAssembler {
    /// Adds one received message. Returns the whole update at its last part, `None`
    /// while parts are missing. A part of another update is a protocol error: the
    /// parts so far are dropped.
    pub fn push(&mut self, part: ConfigUpdate) -> Result<Option<ConfigUpdate>, PartMismatch> {
        let whole = match self.pending.take() {
            None => part,
            Some(mut acc) => {
                if part.version != acc.version
                    || part.base_version != acc.base_version
                    || part.full != acc.full
                    || part.control_plane_id != acc.control_plane_id
                {
                    return Err(PartMismatch {
                        expected: acc.version,
                        expected_base: acc.base_version,
                        got: part.version,
                        got_base: part.base_version,
                    });
                }
                acc.services.extend(part.services);
                acc.removed_services.extend(part.removed_services);
                acc.endpoints.extend(part.endpoints);
                acc.removed_endpoints.extend(part.removed_endpoints);
                acc.routes.extend(part.routes);
                acc.removed_routes.extend(part.removed_routes);
                acc.permissions.extend(part.permissions);
                acc.removed_permissions.extend(part.removed_permissions);
                if part.mesh.is_some() {
                    acc.mesh = part.mesh;
                }
                if part.revoked.is_some() {
                    acc.revoked = part.revoked;
                }
                if !part.trust_bundle_pem.is_empty() {
                    acc.trust_bundle_pem = part.trust_bundle_pem;
                }
                if !part.trust_domain.is_empty() {
                    acc.trust_domain = part.trust_domain;
                }
                acc.more = part.more;
                acc
            }
        };
        if whole.more {
            self.pending = Some(whole);
            Ok(None)
        } else {
            Ok(Some(whole))
        }
    }
}

fn route_key(host: &str, prefix: &str) -> String {
    format!("{host}{prefix}")
}

impl MeshConfig {
    /// The ingress of `region` (every endpoint of a region carries the same one), if
    /// the region has one.
    pub fn region_ingress(&self, region: &str) -> Option<&str> {
        self.endpoints
            .values()
            .find(|e| e.region == region && !e.ingress_address.is_empty())
            .map(|e| e.ingress_address.as_str())
    }

    /// Every permission and the default policy, as the decision function takes them.
    pub fn policy(&self) -> weft_policy::Policy {
        let rules = self
            .permissions
            .iter()
            .filter_map(|(id, p)| p.rule(id).ok());
        weft_policy::Policy::new(rules, self.default_policy.into())
    }

    /// Applies the authorization parts of `u` (permissions, default policy, revoked
    /// certificates) to `next`. A permission that does not parse makes the update
    /// invalid: better nack it than enforce a different rule set than the control
    /// plane explains.
    fn apply_authz(next: &mut MeshConfig, u: &ConfigUpdate) -> Result<(), ApplyError> {
        for id in &u.removed_permissions {
            next.permissions.remove(id);
        }
        for p in &u.permissions {
            let rule = weft_policy::Rule::from_proto(p)
                .map_err(|e| ApplyError::Invalid(format!("permission {}: {e}", p.id)))?;
            next.permissions.insert(
                p.id.clone(),
                PermissionEntry {
                    source: rule.source.to_string(),
                    destination: rule.destination.to_string(),
                    port: rule.port.unwrap_or(0),
                    action: rule.action.as_str().to_owned(),
                },
            );
        }
        if let Some(mesh) = &u.mesh {
            next.default_policy = match weft_policy::DefaultPolicy::from_proto(mesh.default_policy)
            {
                weft_policy::DefaultPolicy::Allow => DefaultPolicyEntry::Allow,
                weft_policy::DefaultPolicy::Deny => DefaultPolicyEntry::Deny,
            };
        }
        if let Some(revoked) = &u.revoked {
            next.revoked = revoked
                .certificates
                .iter()
                .map(|c| (c.serial.clone(), c.not_after))
                .collect();
        }
        Ok(())
    }

    /// Applies `u` to a copy of `self` and returns it.
    pub fn apply(&self, u: &ConfigUpdate) -> Result<MeshConfig, ApplyError> {
        let mut next = if u.full {
            MeshConfig::default()
        } else {
            if u.base_version != self.version || u.control_plane_id != self.control_plane_id {
                return Err(ApplyError::BaseMismatch {
                    base: u.base_version,
                    held: self.version,
                });
            }
            self.clone()
        };
        if u.version < u.base_version {
            return Err(ApplyError::Invalid(format!(
                "version {} is older than its base {}",
                u.version, u.base_version
            )));
        }
        next.version = u.version;
        next.control_plane_id = u.control_plane_id.clone();
        if !u.trust_domain.is_empty() {
            next.trust_domain = u.trust_domain.clone();
        }
        for name in &u.removed_services {
            next.services.remove(name);
        }
        for s in &u.services {
            next.services
                .insert(s.name.clone(), ServiceEntry::try_from(s)?);
        }
        for id in &u.removed_endpoints {
            next.endpoints.remove(id);
        }
        for e in &u.endpoints {
            next.endpoints
                .insert(e.id.clone(), EndpointEntry::try_from(e)?);
        }
        for r in &u.removed_routes {
            next.routes.remove(&route_key(&r.host, &r.path_prefix));
        }
        for r in &u.routes {
            next.routes
                .insert(route_key(&r.host, &r.path_prefix), RouteEntry::from(r));
        }
        Self::apply_authz(&mut next, u)?;
        if !u.trust_bundle_pem.is_empty() {
            weft_certs::TrustBundle::from_pem(&u.trust_bundle_pem)
                .map_err(|e| ApplyError::Invalid(format!("trust bundle: {e}")))?;
            next.trust_bundle_pem = u.trust_bundle_pem.clone();
        }
        Ok(next)
    }

    /// Selector of `service`, `tcp` when unknown or unset.
    pub fn protocol_of(&self, service: &str) -> Selector {
        self.services
            .get(service)
            .map_or(Selector::Tcp, |s| s.protocol)
    }
}

/// A pushed service, checked: its selector known, its port a port, its name valid.
impl TryFrom<&weft_proto::v1::Service> for ServiceEntry {
    type Error = ApplyError;

    fn try_from(s: &weft_proto::v1::Service) -> Result<Self, ApplyError> {
        let protocol = Protocol::try_from(s.protocol).map_err(|_| {
            ApplyError::Invalid(format!(
                "service {} has unknown protocol value {}",
                s.name, s.protocol
            ))
        })?;
        let port = u16::try_from(s.port).map_err(|_| {
            ApplyError::Invalid(format!("service {} has invalid port {}", s.name, s.port))
        })?;
        weft_certs::validate_name(&s.name)
            .map_err(|e| ApplyError::Invalid(format!("service name {:?}: {e}", s.name)))?;
        Ok(ServiceEntry {
            name: s.name.clone(),
            protocol: Selector::from(protocol),
            protocol_set: protocol != Protocol::Unspecified,
            port,
        })
    }
}

/// A pushed endpoint, checked: its address has a port.
impl TryFrom<&weft_proto::v1::Endpoint> for EndpointEntry {
    type Error = ApplyError;

    fn try_from(e: &weft_proto::v1::Endpoint) -> Result<Self, ApplyError> {
        if e.address
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(ApplyError::Invalid(format!(
                "endpoint {} has invalid address {:?}",
                e.id, e.address
            )));
        }
        Ok(EndpointEntry {
            id: e.id.clone(),
            service: e.service.clone(),
            address: e.address.clone(),
            region: e.region.clone(),
            healthy: e.healthy,
            identity: e.identity.clone(),
            ingress_address: e.ingress_address.clone(),
            sni: e.sni.clone(),
        })
    }
}

impl From<&weft_proto::v1::Route> for RouteEntry {
    fn from(r: &weft_proto::v1::Route) -> Self {
        RouteEntry {
            host: r.host.clone(),
            path_prefix: r.path_prefix.clone(),
            service: r.service.clone(),
            rewrite_host: r.rewrite_host.clone(),
            prefer_region: r.prefer_region.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::{Endpoint, Service};

    fn full() -> ConfigUpdate {
        ConfigUpdate {
            version: 5,
            full: true,
            control_plane_id: "cp".into(),
            services: vec![Service {
                name: "web".into(),
                protocol: Protocol::Http as i32,
                port: 8080,
                ..Default::default()
            }],
            endpoints: vec![Endpoint {
                id: "e1".into(),
                service: "web".into(),
                address: "127.0.0.1:15008".into(),
                healthy: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn full_then_delta() {
        let c = MeshConfig::default().apply(&full()).unwrap();
        assert_eq!(c.version, 5);
        assert_eq!(c.protocol_of("web"), Selector::Http);
        let delta = ConfigUpdate {
            version: 7,
            base_version: 5,
            control_plane_id: "cp".into(),
            services: vec![Service {
                name: "web".into(),
                protocol: Protocol::Http2 as i32,
                port: 8080,
                ..Default::default()
            }],
            removed_endpoints: vec!["e1".into()],
            ..Default::default()
        };
        let d = c.apply(&delta).unwrap();
        assert_eq!(d.protocol_of("web"), Selector::Http2);
        assert!(d.endpoints.is_empty());
        // The same delta cannot apply twice: its base is gone.
        assert!(matches!(
            d.apply(&delta),
            Err(ApplyError::BaseMismatch { .. })
        ));
    }

    #[test]
    fn parts_are_applied_as_one_update() {
        let mut whole = full();
        whole.services.push(Service {
            name: "api".into(),
            protocol: Protocol::Grpc as i32,
            ..Default::default()
        });
        whole.trust_domain = "weft.local".into();
        // Split as the control plane does: header fields in every part, the trust
        // domain in the first, items spread over the parts.
        let header = ConfigUpdate {
            version: whole.version,
            full: true,
            control_plane_id: whole.control_plane_id.clone(),
            more: true,
            ..Default::default()
        };
        let parts = [
            ConfigUpdate {
                trust_domain: whole.trust_domain.clone(),
                services: whole.services[..1].to_vec(),
                ..header.clone()
            },
            ConfigUpdate {
                services: whole.services[1..].to_vec(),
                ..header.clone()
            },
            ConfigUpdate {
                endpoints: whole.endpoints.clone(),
                more: false,
                ..header.clone()
            },
        ];
        let mut asm = UpdateAssembler::default();
        assert_eq!(asm.push(parts[0].clone()), Ok(None));
        assert_eq!(asm.push(parts[1].clone()), Ok(None));
        let assembled = asm.push(parts[2].clone()).unwrap().unwrap();
        assert_eq!(assembled, whole);
        assert_eq!(
            MeshConfig::default().apply(&assembled),
            MeshConfig::default().apply(&whole)
        );
        // A single message is an update of its own.
        assert_eq!(asm.push(whole.clone()), Ok(Some(whole.clone())));

        // A part of another version does not continue the update.
        assert_eq!(asm.push(parts[0].clone()), Ok(None));
        let other = ConfigUpdate {
            version: 6,
            ..parts[2].clone()
        };
        assert!(asm.push(other).is_err());
        // ...and what was collected is dropped.
        assert_eq!(asm.push(whole.clone()), Ok(Some(whole)));
    }

    #[test]
    fn selectors_are_stored_and_shown_by_their_names() {
        // The state dir and /config keep the names users type, as before the enum.
        for (sel, name) in [
            (Selector::Tcp, "tcp"),
            (Selector::Http, "http"),
            (Selector::Http2, "http2"),
            (Selector::Grpc, "grpc"),
        ] {
            assert_eq!(serde_json::to_value(sel).unwrap(), name);
            assert_eq!(
                serde_json::from_value::<Selector>(name.into()).unwrap(),
                sel
            );
            assert_eq!(sel.to_string(), name);
        }
        let unset = ConfigUpdate {
            services: vec![Service {
                name: "raw".into(),
                ..Default::default()
            }],
            ..full()
        };
        let c = MeshConfig::default().apply(&unset).unwrap();
        assert_eq!(c.protocol_of("raw"), Selector::Tcp, "unset behaves as tcp");
        assert_eq!(c.protocol_of("unknown"), Selector::Tcp);
    }

    #[test]
    fn invalid_updates_are_refused_whole() {
        let mut bad = full();
        bad.services[0].protocol = 99;
        assert!(matches!(
            MeshConfig::default().apply(&bad),
            Err(ApplyError::Invalid(m)) if m.contains("unknown protocol")
        ));
        let mut bad = full();
        bad.endpoints[0].address = "nowhere".into();
        assert!(MeshConfig::default().apply(&bad).is_err());
    }
}

#[cfg(test)]
mod authz_tests {
    use super::*;
    use weft_proto::v1::{
        MeshSettings, Permission, PermissionAction, RevokedCertificate, RevokedCertificates,
    };

    fn permission(id: &str, source: &str, action: PermissionAction) -> Permission {
        Permission {
            id: id.into(),
            source: source.into(),
            destination: "web".into(),
            action: action as i32,
            ..Default::default()
        }
    }

    #[test]
    fn permissions_default_and_revocations_apply_and_drive_the_policy() {
        let full = ConfigUpdate {
            version: 3,
            full: true,
            control_plane_id: "cp".into(),
            permissions: vec![
                permission("perm-1", "frontend", PermissionAction::Allow),
                permission("perm-2", "*", PermissionAction::Audit),
            ],
            mesh: Some(MeshSettings {
                default_policy: weft_proto::v1::DefaultPolicy::Deny as i32,
                revision: 2,
            }),
            revoked: Some(RevokedCertificates {
                certificates: vec![RevokedCertificate {
                    serial: "ab".into(),
                    not_after: 99,
                }],
            }),
            ..Default::default()
        };
        let c = MeshConfig::default().apply(&full).unwrap();
        assert_eq!(c.default_policy, DefaultPolicyEntry::Deny);
        assert_eq!(c.revoked.get("ab"), Some(&99));
        let p = c.policy().for_destination("web", None);
        use weft_policy::{Caller, Outcome};
        assert_eq!(
            p.decide(Caller::Service("frontend")).outcome,
            Outcome::Allow
        );
        assert_eq!(p.decide(Caller::Service("other")).outcome, Outcome::Audit);

        // A delta removes one rule and leaves the default and the list alone.
        let delta = ConfigUpdate {
            version: 4,
            base_version: 3,
            control_plane_id: "cp".into(),
            removed_permissions: vec!["perm-2".into()],
            ..Default::default()
        };
        let d = c.apply(&delta).unwrap();
        assert_eq!(d.permissions.len(), 1);
        assert_eq!(
            (d.default_policy, d.revoked.len()),
            (DefaultPolicyEntry::Deny, 1)
        );
        let p = d.policy().for_destination("web", None);
        assert_eq!(p.decide(Caller::Service("other")).outcome, Outcome::Deny);

        // A rule the sidecar cannot read nacks the whole update.
        let bad = ConfigUpdate {
            version: 5,
            base_version: 4,
            control_plane_id: "cp".into(),
            permissions: vec![permission("perm-9", "ingress:us", PermissionAction::Allow)],
            ..Default::default()
        };
        assert!(matches!(d.apply(&bad), Err(ApplyError::Invalid(m)) if m.contains("perm-9")));
    }

    #[test]
    fn authorization_parts_are_assembled() {
        let header = ConfigUpdate {
            version: 2,
            full: true,
            control_plane_id: "cp".into(),
            more: true,
            ..Default::default()
        };
        let mut asm = UpdateAssembler::default();
        let first = ConfigUpdate {
            mesh: Some(MeshSettings::default()),
            revoked: Some(RevokedCertificates::default()),
            permissions: vec![permission("perm-1", "a", PermissionAction::Allow)],
            ..header.clone()
        };
        assert_eq!(asm.push(first), Ok(None));
        let last = ConfigUpdate {
            permissions: vec![permission("perm-2", "b", PermissionAction::Deny)],
            removed_permissions: vec!["perm-0".into()],
            more: false,
            ..header
        };
        let whole = asm.push(last).unwrap().unwrap();
        assert_eq!(whole.permissions.len(), 2);
        assert_eq!(whole.removed_permissions, ["perm-0"]);
        assert!(whole.mesh.is_some() && whole.revoked.is_some());
    }
}
