//! The syntax of a permission: who calls ([`Source`]), what is called
//! ([`Destination`], optional port) and what happens ([`Action`]).
//!
//! Rules arrive as strings (from `weftctl`, the admin API, the config stream) and are
//! turned into these types once, where they arrive; nothing downstream parses text.
//! The parse errors are what an operator reads, so each names the valid forms.

use std::fmt;

use weft_proto::v1::{Permission as ProtoPermission, PermissionAction};

/// Why a rule (or one of its parts) is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "invalid source \"{value}\": {reason}; use a service name (frontend), gateway:NAME \
         (gateway:edge) or '*' (every service and gateway)"
    )]
    Source { value: String, reason: String },
    #[error(
        "invalid destination \"{value}\": {reason}; use a service name (web) or '*' (every service)"
    )]
    Destination { value: String, reason: String },
    #[error("invalid port {0}: use 1-65535, or no port for a rule that covers every port")]
    Port(u32),
    #[error("unknown permission action {0}: use allow, deny or audit")]
    Action(i32),
}

/// Who a rule is about. Callers are mesh identities: a service's sidecars, or a gateway.
/// Ingresses and the control plane are never callers (see [`crate::Caller`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// Every sidecar of this service (`spiffe://<td>/service/<name>`).
    Service(String),
    /// The gateway of this name (`spiffe://<td>/gateway/<name>`).
    Gateway(String),
    /// Every service and every gateway.
    Any,
}

const GATEWAY_PREFIX: &str = "gateway:";

impl Source {
    /// Parses `frontend`, `gateway:edge` or `*`.
    pub fn parse(value: &str) -> Result<Self, RuleError> {
        let err = |reason: String| RuleError::Source {
            value: value.to_owned(),
            reason,
        };
        let v = value.trim();
        if v == "*" {
            return Ok(Source::Any);
        }
        if let Some(name) = v.strip_prefix(GATEWAY_PREFIX) {
            if name == "*" {
                return Err(err("there is no gateway wildcard".into()));
            }
            weft_certs::validate_name(name).map_err(|e| err(e.to_string()))?;
            return Ok(Source::Gateway(name.to_owned()));
        }
        if let Some((kind, _)) = v.split_once(':') {
            let reason = match kind {
                "ingress" | "control-plane" => {
                    format!("{kind} identities can never call services, whatever the rules say")
                }
                "service" => "write the service name alone, without \"service:\"".to_owned(),
                _ => format!("unknown kind \"{kind}\""),
            };
            return Err(err(reason));
        }
        weft_certs::validate_name(v).map_err(|e| err(e.to_string()))?;
        Ok(Source::Service(v.to_owned()))
    }

    /// Whether this names one identity (rather than every caller).
    pub fn is_exact(&self) -> bool {
        !matches!(self, Source::Any)
    }

    /// The service this source names, if it names one.
    pub fn service(&self) -> Option<&str> {
        match self {
            Source::Service(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Service(name) => f.write_str(name),
            Source::Gateway(name) => write!(f, "{GATEWAY_PREFIX}{name}"),
            Source::Any => f.write_str("*"),
        }
    }
}

/// What a rule is about: one service, or every service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Service(String),
    Any,
}

impl Destination {
    /// Parses `web` or `*`.
    pub fn parse(value: &str) -> Result<Self, RuleError> {
        let v = value.trim();
        if v == "*" {
            return Ok(Destination::Any);
        }
        weft_certs::validate_name(v).map_err(|e| RuleError::Destination {
            value: value.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Destination::Service(v.to_owned()))
    }

    pub fn is_exact(&self) -> bool {
        !matches!(self, Destination::Any)
    }

    /// The service this destination names, if it names one.
    pub fn service(&self) -> Option<&str> {
        match self {
            Destination::Service(name) => Some(name),
            Destination::Any => None,
        }
    }

    fn covers(&self, service: &str) -> bool {
        match self {
            Destination::Service(name) => name == service,
            Destination::Any => true,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Service(name) => f.write_str(name),
            Destination::Any => f.write_str("*"),
        }
    }
}

/// What a rule does to the calls it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// Allowed, but logged and counted as a would-be denial.
    Audit,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Audit => "audit",
        }
    }

    pub fn from_proto(value: i32) -> Result<Self, RuleError> {
        match PermissionAction::try_from(value) {
            Ok(PermissionAction::Allow) => Ok(Action::Allow),
            Ok(PermissionAction::Deny) => Ok(Action::Deny),
            Ok(PermissionAction::Audit) => Ok(Action::Audit),
            _ => Err(RuleError::Action(value)),
        }
    }

    pub fn to_proto(self) -> PermissionAction {
        match self {
            Action::Allow => PermissionAction::Allow,
            Action::Deny => PermissionAction::Deny,
            Action::Audit => PermissionAction::Audit,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port a rule is limited to: 1-65535 (`0` in the API means "any port").
pub fn port_from_proto(port: u32) -> Result<Option<u16>, RuleError> {
    match port {
        0 => Ok(None),
        p => u16::try_from(p).map(Some).map_err(|_| RuleError::Port(p)),
    }
}

/// One permission.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Stable id (`perm-…`); empty for a rule that was never stored.
    pub id: String,
    pub source: Source,
    pub destination: Destination,
    /// The destination app's port the rule is limited to; `None` = every port.
    pub port: Option<u16>,
    pub action: Action,
}

impl Rule {
    /// The rule as the admin API and the config stream carry it.
    pub fn from_proto(p: &ProtoPermission) -> Result<Self, RuleError> {
        Ok(Rule {
            id: p.id.clone(),
            source: Source::parse(&p.source)?,
            destination: Destination::parse(&p.destination)?,
            port: port_from_proto(p.port)?,
            action: Action::from_proto(p.action)?,
        })
    }

    /// Whether the rule applies to a call from `source` (as named in rules: the caller's
    /// service or gateway) to `destination` on `port` (`None`: port unknown, so only
    /// rules for every port apply).
    pub fn matches(
        &self,
        caller: &crate::Caller<'_>,
        destination: &str,
        port: Option<u16>,
    ) -> bool {
        let source = match (&self.source, caller) {
            (Source::Any, crate::Caller::Service(_) | crate::Caller::Gateway(_)) => true,
            (Source::Service(name), crate::Caller::Service(c)) => name == c,
            (Source::Gateway(name), crate::Caller::Gateway(c)) => name == c,
            _ => false,
        };
        source && self.destination.covers(destination) && self.port.is_none_or(|p| Some(p) == port)
    }

    /// How specific the rule is; among matching rules the most specific decides. An
    /// exact source counts most, then an exact destination, then a port: each weighs
    /// more than all the lighter ones together, so the order is total.
    pub fn specificity(&self) -> u8 {
        (u8::from(self.source.is_exact()) << 2)
            | (u8::from(self.destination.is_exact()) << 1)
            | u8::from(self.port.is_some())
    }

    /// What the rule selects, without its action: two stored rules never share one.
    pub fn selector(&self) -> String {
        match self.port {
            Some(p) => format!("{} -> {}:{p}", self.source, self.destination),
            None => format!("{} -> {}", self.source, self.destination),
        }
    }
}

/// `allow frontend -> web`, `deny gateway:edge -> web:8443`, `audit * -> *`.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.selector())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_in_their_three_forms() {
        assert_eq!(
            Source::parse("frontend").unwrap(),
            Source::Service("frontend".into())
        );
        assert_eq!(
            Source::parse("gateway:edge").unwrap(),
            Source::Gateway("edge".into())
        );
        assert_eq!(Source::parse(" * ").unwrap(), Source::Any);
        for (source, text) in [
            (Source::Service("a".into()), "a"),
            (Source::Gateway("g".into()), "gateway:g"),
            (Source::Any, "*"),
        ] {
            assert_eq!(source.to_string(), text);
            assert_eq!(Source::parse(text).unwrap(), source);
        }
    }

    #[test]
    fn bad_sources_name_the_valid_forms() {
        for (bad, why) in [
            ("Frontend", "lowercase"),
            ("gateway:", "empty"),
            ("gateway:*", "no gateway wildcard"),
            ("ingress:us", "never call services"),
            ("control-plane:cp", "never call services"),
            ("service:web", "without \"service:\""),
            ("pod:x", "unknown kind"),
            ("", "empty"),
            ("a b", "character"),
        ] {
            let e = Source::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(
                e.contains("gateway:NAME") && e.contains("'*'"),
                "{bad}: the message lists the valid forms: {e}"
            );
        }
    }

    #[test]
    fn destinations_are_a_service_or_every_service() {
        assert_eq!(
            Destination::parse("web").unwrap(),
            Destination::Service("web".into())
        );
        assert_eq!(Destination::parse("*").unwrap(), Destination::Any);
        let e = Destination::parse("gateway:edge").unwrap_err().to_string();
        assert!(e.contains("a service name (web) or '*'"), "{e}");
    }

    #[test]
    fn ports_and_actions_from_the_api() {
        assert_eq!(port_from_proto(0).unwrap(), None);
        assert_eq!(port_from_proto(8080).unwrap(), Some(8080));
        assert_eq!(port_from_proto(70_000), Err(RuleError::Port(70_000)));
        for a in [Action::Allow, Action::Deny, Action::Audit] {
            assert_eq!(Action::from_proto(a.to_proto() as i32).unwrap(), a);
        }
        assert_eq!(Action::from_proto(0), Err(RuleError::Action(0)));
        assert_eq!(Action::from_proto(9), Err(RuleError::Action(9)));
    }

    #[test]
    fn rules_print_as_operators_write_them() {
        let rule = Rule {
            id: "perm-1".into(),
            source: Source::Gateway("edge".into()),
            destination: Destination::Service("web".into()),
            port: Some(8443),
            action: Action::Deny,
        };
        assert_eq!(rule.to_string(), "deny gateway:edge -> web:8443");
        let any = Rule {
            source: Source::Any,
            destination: Destination::Any,
            port: None,
            action: Action::Audit,
            ..rule
        };
        assert_eq!(any.to_string(), "audit * -> *");
        assert_eq!(any.selector(), "* -> *");
    }

    #[test]
    fn specificity_orders_source_then_destination_then_port() {
        let rule = |source: Source, destination: Destination, port: Option<u16>| Rule {
            id: String::new(),
            source,
            destination,
            port,
            action: Action::Allow,
        };
        let exact_source_only = rule(Source::Service("a".into()), Destination::Any, None);
        let everything_else = rule(Source::Any, Destination::Service("b".into()), Some(1));
        assert!(exact_source_only.specificity() > everything_else.specificity());
        let exact_dst = rule(Source::Any, Destination::Service("b".into()), None);
        let port_only = rule(Source::Any, Destination::Any, Some(1));
        assert!(exact_dst.specificity() > port_only.specificity());
        assert!(port_only.specificity() > rule(Source::Any, Destination::Any, None).specificity());
    }
}
