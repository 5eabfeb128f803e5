//! The decision: may this caller reach this service (and port)?
//!
//! [`Policy::decide`] is the only place the rules are interpreted. The control plane
//! calls it for `weftctl permission check`; a sidecar calls it, through
//! [`Policy::for_destination`], once per caller named in its rules whenever its config
//! changes, and then answers every stream and request with one hash lookup.
//!
//! The order, fully:
//! 1. Ingresses, the control plane and identities of another trust domain are denied,
//!    whatever the rules say: an ingress only relays TLS it cannot decrypt, and neither
//!    it nor the control plane has any business calling an app.
//! 2. Any matching `deny` denies (the most specific deny is reported).
//! 3. Otherwise the most specific matching `allow` or `audit` decides: an exact source
//!    (a service, or `gateway:NAME`) beats `*`; then an exact destination beats `*`; then
//!    a rule with a port beats one without. Equal specificity: `audit` beats `allow`
//!    (the stricter); still equal (rules of the same selector, which the control plane
//!    never stores twice): the smallest id.
//! 4. No rule matches: the mesh default policy.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use weft_certs::{IdentityKind, SpiffeId};
use weft_proto::v1::DefaultPolicy as ProtoDefault;

use crate::rule::{Action, Rule, Source};

/// Who is calling, as far as permissions care. Borrowed, so a caller made from a
/// connection's verified [`SpiffeId`] costs nothing per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    Service(&'a str),
    Gateway(&'a str),
    Ingress(&'a str),
    ControlPlane(&'a str),
    /// A certificate of another trust domain.
    Foreign,
}

impl<'a> Caller<'a> {
    /// The caller holding `id`, in a mesh of `trust_domain`.
    pub fn of(id: &'a SpiffeId, trust_domain: &str) -> Self {
        if id.trust_domain() != trust_domain {
            return Caller::Foreign;
        }
        match id.kind() {
            IdentityKind::Service => Caller::Service(id.name()),
            IdentityKind::Gateway => Caller::Gateway(id.name()),
            IdentityKind::Ingress => Caller::Ingress(id.name()),
            IdentityKind::ControlPlane => Caller::ControlPlane(id.name()),
        }
    }

    /// The caller a source names; `None` for `*`, which is every caller, not one.
    pub fn named_by(source: &'a Source) -> Option<Self> {
        match source {
            Source::Service(name) => Some(Caller::Service(name)),
            Source::Gateway(name) => Some(Caller::Gateway(name)),
            Source::Any => None,
        }
    }

    /// Why this caller may never reach an app, for identities that may not.
    fn never_allowed(&self) -> Option<&'static str> {
        match self {
            Caller::Service(_) | Caller::Gateway(_) => None,
            Caller::Ingress(_) => {
                Some("an ingress only relays connections and may never call a service")
            }
            Caller::ControlPlane(_) => Some("the control plane may never call a service"),
            Caller::Foreign => Some("the caller's identity belongs to another trust domain"),
        }
    }

    /// The caller as a metric label and in logs: `web`, `gateway:edge`, `ingress:us`.
    pub fn label(&self) -> String {
        match self {
            Caller::Service(name) => (*name).to_owned(),
            Caller::Gateway(name) => format!("gateway:{name}"),
            Caller::Ingress(name) => format!("ingress:{name}"),
            Caller::ControlPlane(name) => format!("control-plane:{name}"),
            Caller::Foreign => "foreign".to_owned(),
        }
    }
}

impl fmt::Display for Caller<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// What happens to calls no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DefaultPolicy {
    /// A new mesh allows every call.
    #[default]
    Allow,
    Deny,
}

impl DefaultPolicy {
    /// Unset (a store that never had it changed) is `Allow`.
    pub fn from_proto(value: i32) -> Self {
        match ProtoDefault::try_from(value) {
            Ok(ProtoDefault::Deny) => DefaultPolicy::Deny,
            _ => DefaultPolicy::Allow,
        }
    }

    pub fn to_proto(self) -> ProtoDefault {
        match self {
            DefaultPolicy::Allow => ProtoDefault::Allow,
            DefaultPolicy::Deny => ProtoDefault::Deny,
        }
    }

    /// Parses `allow` or `deny` as operators type it.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "allow" => Some(DefaultPolicy::Allow),
            "deny" => Some(DefaultPolicy::Deny),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Allow => "allow",
            DefaultPolicy::Deny => "deny",
        }
    }
}

/// What the decision does with the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allow,
    Deny,
    /// Allowed, logged and counted as a would-be denial.
    Audit,
}

impl Outcome {
    /// `allow`, `deny` or `audit`: the metric label and what `permission check` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Audit => "audit",
        }
    }
}

/// Why the decision is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Basis {
    /// This rule decided.
    Rule(Arc<Rule>),
    /// No rule matched.
    Default(DefaultPolicy),
    /// The caller's kind of identity may never call a service.
    Identity(&'static str),
}

/// A decision and its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub basis: Basis,
}

impl Decision {
    /// Whether the call goes through (`allow` or `audit`).
    pub fn allowed(&self) -> bool {
        self.outcome != Outcome::Deny
    }

    /// The rule that decided, if one did.
    pub fn rule(&self) -> Option<&Rule> {
        match &self.basis {
            Basis::Rule(r) => Some(r),
            _ => None,
        }
    }

    /// One phrase naming the reason: `rule perm-1a2b (deny * -> web)`, `the mesh default
    /// policy (deny)`, or why the identity may not call at all.
    pub fn reason(&self) -> String {
        match &self.basis {
            Basis::Rule(r) => format!("rule {} ({r})", r.id),
            Basis::Default(d) => format!("the mesh default policy ({})", d.as_str()),
            Basis::Identity(why) => (*why).to_owned(),
        }
    }
}

/// Every rule of the mesh and its default policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<Arc<Rule>>,
    default: DefaultPolicy,
}

/// Orders matching rules: the greatest decides.
fn rank(r: &Rule) -> (u8, u8, Reverse<&str>) {
    let strictness = match r.action {
        Action::Allow => 0,
        Action::Audit => 1,
        Action::Deny => 2,
    };
    (r.specificity(), strictness, Reverse(r.id.as_str()))
}

impl Policy {
    pub fn new(rules: impl IntoIterator<Item = Rule>, default: DefaultPolicy) -> Self {
        Policy {
            rules: rules.into_iter().map(Arc::new).collect(),
            default,
        }
    }

    pub fn default_policy(&self) -> DefaultPolicy {
        self.default
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|r| r.as_ref())
    }

    /// The decision for a call from `caller` to service `destination`, on the
    /// destination app's `port` (`None` when unknown: then only rules without a port
    /// can match). See the module documentation for the order.
    pub fn decide(&self, caller: Caller<'_>, destination: &str, port: Option<u16>) -> Decision {
        if let Some(why) = caller.never_allowed() {
            return Decision {
                outcome: Outcome::Deny,
                basis: Basis::Identity(why),
            };
        }
        let mut deny: Option<&Arc<Rule>> = None;
        let mut best: Option<&Arc<Rule>> = None;
        for rule in self
            .rules
            .iter()
            .filter(|r| r.matches(&caller, destination, port))
        {
            let slot = if rule.action == Action::Deny {
                &mut deny
            } else {
                &mut best
            };
            if slot.is_none_or(|held| rank(rule) > rank(held)) {
                *slot = Some(rule);
            }
        }
        match deny.or(best) {
            Some(rule) => Decision {
                outcome: match rule.action {
                    Action::Allow => Outcome::Allow,
                    Action::Deny => Outcome::Deny,
                    Action::Audit => Outcome::Audit,
                },
                basis: Basis::Rule(rule.clone()),
            },
            None => Decision {
                outcome: match self.default {
                    DefaultPolicy::Allow => Outcome::Allow,
                    DefaultPolicy::Deny => Outcome::Deny,
                },
                basis: Basis::Default(self.default),
            },
        }
    }

    /// Every decision about calls to `destination` on `port`, computed now (with
    /// [`Policy::decide`]) so that each later call costs one hash lookup.
    pub fn for_destination(&self, destination: &str, port: Option<u16>) -> DestinationPolicy {
        // Only rules about this destination and port can match; deciding on them alone
        // gives the same answers, faster.
        let relevant = Policy {
            rules: self
                .rules
                .iter()
                .filter(|r| {
                    r.destination.service().is_none_or(|d| d == destination)
                        && r.port.is_none_or(|p| Some(p) == port)
                })
                .cloned()
                .collect(),
            default: self.default,
        };
        let decide = |caller| relevant.decide(caller, destination, port);
        let mut services = HashMap::new();
        let mut gateways = HashMap::new();
        for rule in &relevant.rules {
            match &rule.source {
                Source::Service(name) => {
                    services
                        .entry(name.clone())
                        .or_insert_with(|| decide(Caller::Service(name)));
                }
                Source::Gateway(name) => {
                    gateways
                        .entry(name.clone())
                        .or_insert_with(|| decide(Caller::Gateway(name)));
                }
                Source::Any => {}
            }
        }
        // A caller no rule names matches only the `*` rules: the same decision for all
        // of them. The empty name is never a valid one, so no rule names it.
        DestinationPolicy {
            services,
            gateways,
            other_service: decide(Caller::Service("")),
            other_gateway: decide(Caller::Gateway("")),
            ingress: decide(Caller::Ingress("")),
            control_plane: decide(Caller::ControlPlane("")),
            foreign: decide(Caller::Foreign),
        }
    }
}

/// The decisions about one destination (and port), precomputed: what a sidecar holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPolicy {
    services: HashMap<String, Decision>,
    gateways: HashMap<String, Decision>,
    other_service: Decision,
    other_gateway: Decision,
    ingress: Decision,
    control_plane: Decision,
    foreign: Decision,
}

impl Default for DestinationPolicy {
    /// What a sidecar holds before its first config: the default of a new mesh.
    fn default() -> Self {
        Policy::default().for_destination("", None)
    }
}

impl DestinationPolicy {
    /// The decision for `caller`: the same as [`Policy::decide`] with this destination
    /// and port, in one hash lookup.
    pub fn decide(&self, caller: Caller<'_>) -> &Decision {
        match caller {
            Caller::Service(name) => self.services.get(name).unwrap_or(&self.other_service),
            Caller::Gateway(name) => self.gateways.get(name).unwrap_or(&self.other_gateway),
            Caller::Ingress(_) => &self.ingress,
            Caller::ControlPlane(_) => &self.control_plane,
            Caller::Foreign => &self.foreign,
        }
    }
}
