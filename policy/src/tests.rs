//! The whole decision matrix: every kind of caller against every kind of rule, and the
//! precomputed per-destination form against the decision function it is built from.

use crate::{Action, Basis, Caller, DefaultPolicy, Destination, Outcome, Policy, Rule, Source};

/// `"allow frontend -> web:8080"` as a rule with id `id`.
fn rule(id: &str, text: &str) -> Rule {
    let (action, selector) = text.split_once(' ').unwrap();
    let (source, target) = selector.split_once(" -> ").unwrap();
    let (destination, port) = match target.split_once(':') {
        Some((d, p)) => (d, Some(p.parse().unwrap())),
        None => (target, None),
    };
    Rule {
        id: id.into(),
        source: Source::parse(source).unwrap(),
        destination: Destination::parse(destination).unwrap(),
        port,
        action: match action {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            "audit" => Action::Audit,
            other => panic!("{other}"),
        },
    }
}

fn policy(default: DefaultPolicy, rules: &[&str]) -> Policy {
    Policy::new(
        rules
            .iter()
            .enumerate()
            .map(|(i, text)| rule(&format!("perm-{i}"), text)),
        default,
    )
}

/// (outcome, id of the deciding rule or "default"/"identity")
fn decide(p: &Policy, caller: Caller<'_>, dst: &str, port: Option<u16>) -> (Outcome, String) {
    let d = p.decide(caller, dst, port);
    let by = match &d.basis {
        Basis::Rule(r) => r.id.clone(),
        Basis::Default(_) => "default".into(),
        Basis::Identity(_) => "identity".into(),
    };
    (d.outcome, by)
}

use Outcome::{Allow, Audit, Deny};

#[test]
fn no_rules_means_the_default_policy() {
    let open = policy(DefaultPolicy::Allow, &[]);
    assert_eq!(
        decide(&open, Caller::Service("a"), "web", None),
        (Allow, "default".into())
    );
    assert_eq!(
        decide(&open, Caller::Gateway("edge"), "web", Some(80)),
        (Allow, "default".into())
    );
    let closed = policy(DefaultPolicy::Deny, &[]);
    assert_eq!(
        decide(&closed, Caller::Service("a"), "web", None),
        (Deny, "default".into())
    );
    assert_eq!(
        closed.decide(Caller::Service("a"), "web", None).reason(),
        "the mesh default policy (deny)"
    );
}

#[test]
fn ingresses_control_plane_and_foreign_ids_are_never_allowed() {
    let p = policy(DefaultPolicy::Allow, &["allow * -> *", "allow * -> web:80"]);
    for caller in [
        Caller::Ingress("us"),
        Caller::ControlPlane("cp"),
        Caller::Foreign,
    ] {
        for port in [None, Some(80)] {
            assert_eq!(
                decide(&p, caller, "web", port),
                (Deny, "identity".into()),
                "{caller}"
            );
        }
    }
    let id = weft_certs::SpiffeId::parse("spiffe://other.domain/service/a").unwrap();
    assert_eq!(Caller::of(&id, "weft.local"), Caller::Foreign);
    let id = weft_certs::SpiffeId::parse("spiffe://weft.local/ingress/us").unwrap();
    assert_eq!(Caller::of(&id, "weft.local"), Caller::Ingress("us"));
    assert!(
        p.decide(Caller::of(&id, "weft.local"), "web", None)
            .reason()
            .contains("ingress")
    );
}

#[test]
fn any_matching_deny_denies_however_specific_the_allow() {
    let p = policy(
        DefaultPolicy::Allow,
        &["allow frontend -> web:80", "deny * -> *"],
    );
    assert_eq!(
        decide(&p, Caller::Service("frontend"), "web", Some(80)),
        (Deny, "perm-1".into())
    );
    // ...and the most specific deny is the one reported.
    let p = policy(
        DefaultPolicy::Allow,
        &["deny * -> *", "deny frontend -> web", "deny * -> web"],
    );
    assert_eq!(
        decide(&p, Caller::Service("frontend"), "web", None),
        (Deny, "perm-1".into())
    );
    assert_eq!(
        decide(&p, Caller::Service("other"), "web", None),
        (Deny, "perm-2".into())
    );
    assert_eq!(
        decide(&p, Caller::Service("other"), "api", None),
        (Deny, "perm-0".into())
    );
}

#[test]
fn every_selector_matches_what_it_names() {
    let p = policy(
        DefaultPolicy::Deny,
        &[
            "allow frontend -> web",     // 0 exact service
            "allow gateway:edge -> web", // 1 exact gateway
            "allow * -> api",            // 2 every caller
            "allow batch -> *",          // 3 every destination
            "allow * -> db:5432",        // 4 one port
        ],
    );
    /// caller, destination, port, expected outcome, deciding rule
    type Case<'a> = (Caller<'a>, &'a str, Option<u16>, (Outcome, &'a str));
    let cases: &[Case<'_>] = &[
        (Caller::Service("frontend"), "web", None, (Allow, "perm-0")),
        (
            Caller::Service("frontend"),
            "web",
            Some(8080),
            (Allow, "perm-0"),
        ),
        (Caller::Service("backend"), "web", None, (Deny, "default")),
        (Caller::Gateway("edge"), "web", None, (Allow, "perm-1")),
        // A gateway and a service of the same name are different callers.
        (Caller::Service("edge"), "web", None, (Deny, "default")),
        (Caller::Gateway("frontend"), "web", None, (Deny, "default")),
        (Caller::Gateway("other"), "web", None, (Deny, "default")),
        // '*' covers services and gateways.
        (Caller::Service("anyone"), "api", None, (Allow, "perm-2")),
        (Caller::Gateway("other"), "api", None, (Allow, "perm-2")),
        (Caller::Service("batch"), "web", None, (Allow, "perm-3")),
        (
            Caller::Service("batch"),
            "anything",
            Some(1),
            (Allow, "perm-3"),
        ),
        (
            Caller::Gateway("batch"),
            "anything",
            None,
            (Deny, "default"),
        ),
        // A port rule matches only that port, and nothing when the port is unknown.
        (Caller::Service("x"), "db", Some(5432), (Allow, "perm-4")),
        (Caller::Service("x"), "db", Some(5433), (Deny, "default")),
        (Caller::Service("x"), "db", None, (Deny, "default")),
    ];
    for (caller, dst, port, (outcome, by)) in cases {
        assert_eq!(
            decide(&p, *caller, dst, *port),
            (*outcome, (*by).to_string()),
            "{caller} -> {dst}:{port:?}"
        );
    }
}

#[test]
fn the_most_specific_allow_or_audit_decides() {
    // Exact source beats everything else; then exact destination; then port.
    let p = policy(
        DefaultPolicy::Deny,
        &[
            "audit * -> *",             // 0: specificity 0
            "allow * -> *:80",          // 1: 1
            "audit * -> web",           // 2: 2
            "allow * -> web:80",        // 3: 3
            "audit frontend -> *",      // 4: 4
            "allow frontend -> *:80",   // 5: 5
            "allow frontend -> web",    // 6: 6
            "audit frontend -> web:80", // 7: 7
        ],
    );
    let f = Caller::Service("frontend");
    let o = Caller::Service("other");
    assert_eq!(decide(&p, f, "web", Some(80)), (Audit, "perm-7".into()));
    assert_eq!(decide(&p, f, "web", Some(81)), (Allow, "perm-6".into()));
    assert_eq!(decide(&p, f, "api", Some(80)), (Allow, "perm-5".into()));
    assert_eq!(decide(&p, f, "api", None), (Audit, "perm-4".into()));
    assert_eq!(decide(&p, o, "web", Some(80)), (Allow, "perm-3".into()));
    assert_eq!(decide(&p, o, "web", None), (Audit, "perm-2".into()));
    assert_eq!(decide(&p, o, "api", Some(80)), (Allow, "perm-1".into()));
    assert_eq!(decide(&p, o, "api", None), (Audit, "perm-0".into()));
}

#[test]
fn audit_is_allowed_but_reported_and_beats_an_equal_allow() {
    let p = policy(
        DefaultPolicy::Deny,
        &["allow frontend -> web", "audit frontend -> web"],
    );
    let d = p.decide(Caller::Service("frontend"), "web", None);
    assert_eq!(d.outcome, Audit);
    assert!(d.allowed());
    assert_eq!(d.reason(), "rule perm-1 (audit frontend -> web)");
    // Same selector and action twice (never stored, but still deterministic): smallest id.
    let p = Policy::new(
        [
            rule("perm-b", "allow a -> web"),
            rule("perm-a", "allow a -> web"),
        ],
        DefaultPolicy::Deny,
    );
    assert_eq!(
        decide(&p, Caller::Service("a"), "web", None),
        (Allow, "perm-a".into())
    );
}

#[test]
fn audit_rollout_scenario() {
    // Known callers allowed, everything else audited, then the default flips.
    let rules = [
        "allow frontend -> web",
        "allow gateway:edge -> web",
        "audit * -> *",
    ];
    let before = policy(DefaultPolicy::Allow, &rules);
    assert_eq!(
        decide(&before, Caller::Service("frontend"), "web", None).0,
        Allow
    );
    assert_eq!(
        decide(&before, Caller::Service("stray"), "web", None).0,
        Audit
    );
    let after = policy(DefaultPolicy::Deny, &rules[..2]);
    assert_eq!(
        decide(&after, Caller::Gateway("edge"), "web", None).0,
        Allow
    );
    assert_eq!(
        decide(&after, Caller::Service("stray"), "web", None).0,
        Deny
    );
}

/// A tiny deterministic generator, so the equivalence test covers many rule sets
/// without a dependency.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

#[test]
fn the_precomputed_form_agrees_with_the_decision_function() {
    let names = ["a", "b", "c"];
    let dsts = ["web", "api"];
    let ports = [None, Some(80), Some(443)];
    let mut rng = Lcg(7);
    for round in 0..400 {
        let mut rules = Vec::new();
        for i in 0..rng.next(8) {
            let source = match rng.next(4) {
                0 => Source::Any,
                1 => Source::Gateway(names[rng.next(3)].into()),
                _ => Source::Service(names[rng.next(3)].into()),
            };
            let destination = match rng.next(3) {
                0 => Destination::Any,
                _ => Destination::Service(dsts[rng.next(2)].into()),
            };
            let action = [Action::Allow, Action::Deny, Action::Audit][rng.next(3)];
            rules.push(Rule {
                id: format!("perm-{i}"),
                source,
                destination,
                port: ports[rng.next(3)],
                action,
            });
        }
        let default = [DefaultPolicy::Allow, DefaultPolicy::Deny][round % 2];
        let p = Policy::new(rules, default);
        for dst in dsts {
            for port in ports {
                let pre = p.for_destination(dst, port);
                let mut callers = vec![
                    Caller::Ingress("x"),
                    Caller::ControlPlane("cp"),
                    Caller::Foreign,
                    Caller::Service("zz"),
                    Caller::Gateway("zz"),
                ];
                for n in names {
                    callers.push(Caller::Service(n));
                    callers.push(Caller::Gateway(n));
                }
                for caller in callers {
                    assert_eq!(
                        pre.decide(caller),
                        &p.decide(caller, dst, port),
                        "round {round}: {caller} -> {dst}:{port:?} with {:?}",
                        p.rules().map(ToString::to_string).collect::<Vec<_>>()
                    );
                }
            }
        }
    }
}

#[test]
fn a_sidecar_without_config_allows_like_a_new_mesh() {
    let pre = crate::DestinationPolicy::default();
    assert_eq!(pre.decide(Caller::Service("a")).outcome, Allow);
    assert_eq!(pre.decide(Caller::Ingress("a")).outcome, Deny);
}

#[test]
fn rules_convert_from_the_api() {
    let proto = weft_proto::v1::Permission {
        id: "perm-1".into(),
        source: "gateway:edge".into(),
        destination: "web".into(),
        port: 8443,
        action: weft_proto::v1::PermissionAction::Deny as i32,
        ..Default::default()
    };
    let r = Rule::from_proto(&proto).unwrap();
    assert_eq!(r.to_string(), "deny gateway:edge -> web:8443");
    let bad = weft_proto::v1::Permission {
        source: "ingress:us".into(),
        ..proto
    };
    assert!(Rule::from_proto(&bad).is_err());
    assert_eq!(DefaultPolicy::from_proto(0), DefaultPolicy::Allow);
    assert_eq!(DefaultPolicy::from_proto(2), DefaultPolicy::Deny);
    assert_eq!(DefaultPolicy::parse("DENY"), Some(DefaultPolicy::Deny));
    assert_eq!(DefaultPolicy::parse("maybe"), None);
}
