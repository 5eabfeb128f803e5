//! `weftctl permission …`, `weftctl mesh …` and `weftctl dataplane revoke`: what they
//! send and how their results read.
//!
//! Rule arguments are parsed with the policy crate before connecting, so a bad `--from`
//! is a usage error (exit 2) naming the valid forms, exactly as the control plane would
//! refuse it. `permission check` exits 0 when the call is allowed (also when audited)
//! and 3 when it is denied.

use serde_json::{Value, json};
use weft_policy::{Caller, DefaultPolicy, Destination, Source};
use weft_proto::v1::{
    CheckPermissionRequest, CheckPermissionResponse, CreatePermissionRequest,
    DeletePermissionRequest, GetMeshRequest, ListPermissionsRequest, MeshInfo, Permission,
    PermissionAction, RevokeDataplaneRequest, RevokeDataplaneResponse, SetDefaultPolicyRequest,
};

use super::args::{MeshCmd, PermissionCmd, RuleArgs};
use super::commands::Out;
use super::connect::AdminConn;
use super::error::CliError;
use super::output::{Table, key_values, kind_name, or_dash, time_cell, time_json};
use crate::api::authz::rule_text;

/// Checks rule arguments locally: the same parse as the control plane's.
pub fn preflight_permission(cmd: &PermissionCmd) -> Result<(), CliError> {
    match cmd {
        PermissionCmd::Allow(args) | PermissionCmd::Deny(args) | PermissionCmd::Audit(args) => {
            parse_rule(args).map(|_| ())
        }
        PermissionCmd::Check(args) => check_parts(args).map(|_| ()),
        PermissionCmd::List | PermissionCmd::Delete { .. } => Ok(()),
    }
}

pub fn preflight_mesh(cmd: &MeshCmd) -> Result<(), CliError> {
    match cmd {
        MeshCmd::SetDefaultPolicy { policy } => parse_default(policy).map(|_| ()),
        MeshCmd::Show => Ok(()),
    }
}

fn usage(e: impl ToString) -> CliError {
    CliError::Usage(e.to_string())
}

fn parse_rule(args: &RuleArgs) -> Result<(Source, Destination), CliError> {
    Ok((
        Source::parse(&args.from).map_err(usage)?,
        Destination::parse(&args.to).map_err(usage)?,
    ))
}

/// A check needs one caller and one destination service.
fn check_parts(args: &RuleArgs) -> Result<(), CliError> {
    let (source, destination) = parse_rule(args)?;
    if Caller::named_by(&source).is_none() {
        return Err(CliError::Usage(
            "permission check needs one caller: --from SERVICE or --from gateway:NAME, not '*'"
                .into(),
        ));
    }
    if destination.service().is_none() {
        return Err(CliError::Usage(
            "permission check needs one destination: --to SERVICE, not '*'".into(),
        ));
    }
    Ok(())
}

fn parse_default(value: &str) -> Result<DefaultPolicy, CliError> {
    DefaultPolicy::parse(value).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown default policy \"{value}\": use allow or deny"
        ))
    })
}

pub(super) async fn permission(
    client: &mut AdminConn,
    out: &Out<'_>,
    cmd: PermissionCmd,
) -> Result<(), CliError> {
    let create = |args: RuleArgs, action: PermissionAction| CreatePermissionRequest {
        source: args.from,
        destination: args.to,
        port: args.port.map_or(0, u32::from),
        action: action as i32,
    };
    let request = match cmd {
        PermissionCmd::Allow(args) => create(args, PermissionAction::Allow),
        PermissionCmd::Deny(args) => create(args, PermissionAction::Deny),
        PermissionCmd::Audit(args) => create(args, PermissionAction::Audit),
        PermissionCmd::List => {
            let list = out.call(client.list_permissions(ListPermissionsRequest {}).await)?;
            let items = list.permissions.iter().map(permission_json).collect();
            return out.list(permission_table(&list.permissions), items);
        }
        PermissionCmd::Delete { id } => {
            let request = DeletePermissionRequest { id: id.clone() };
            let r = out.call(client.delete_permission(request).await)?;
            return out.show(
                || format!("deleted permission {id} (revision {})\n", r.revision),
                || json!({ "deleted": id, "revision": r.revision }),
            );
        }
        PermissionCmd::Check(args) => return check(client, out, args).await,
    };
    let p = out.call(client.create_permission(request).await)?;
    out.show(
        || permission_table(std::slice::from_ref(&p)).render(),
        || permission_json(&p),
    )
}

async fn check(client: &mut AdminConn, out: &Out<'_>, args: RuleArgs) -> Result<(), CliError> {
    let request = CheckPermissionRequest {
        source: args.from.clone(),
        destination: args.to.clone(),
        port: args.port.map_or(0, u32::from),
    };
    let answer = out.call(client.check_permission(request).await)?;
    let call = call_text(&args);
    out.show(|| check_text(&answer, &call), || check_json(&answer, &args))?;
    if answer.decision() == PermissionAction::Deny {
        return Err(CliError::Denied(format!("{call}: {}", answer.reason)));
    }
    Ok(())
}

pub(super) async fn mesh(
    client: &mut AdminConn,
    out: &Out<'_>,
    cmd: MeshCmd,
) -> Result<(), CliError> {
    let info = match cmd {
        MeshCmd::Show => out.call(client.get_mesh(GetMeshRequest {}).await)?,
        MeshCmd::SetDefaultPolicy { policy } => {
            let policy = parse_default(&policy)?;
            let request = SetDefaultPolicyRequest {
                default_policy: policy.to_proto() as i32,
            };
            out.call(client.set_default_policy(request).await)?
        }
    };
    out.show(|| mesh_text(&info), || mesh_json(&info))
}

pub(super) async fn revoke_dataplane(
    client: &mut AdminConn,
    out: &Out<'_>,
    id: String,
) -> Result<(), CliError> {
    let r = out.call(client.revoke_dataplane(RevokeDataplaneRequest { id }).await)?;
    out.show(|| revoked_text(&r), || revoked_json(&r))
}

// ---- views: pure, tested without a control plane ----

fn action_name(p: &Permission) -> &'static str {
    weft_policy::Action::from_proto(p.action).map_or("?", |a| a.as_str())
}

fn port_text(port: u32) -> String {
    if port == 0 {
        "*".into()
    } else {
        port.to_string()
    }
}

pub fn permission_table(permissions: &[Permission]) -> Table {
    let mut t = Table::new(&["ID", "ACTION", "FROM", "TO", "PORT", "REVISION", "CREATED"]);
    for p in permissions {
        t.row(vec![
            p.id.clone(),
            action_name(p).into(),
            p.source.clone(),
            p.destination.clone(),
            port_text(p.port),
            p.revision.to_string(),
            time_cell(p.created_at),
        ]);
    }
    t
}

pub fn permission_json(p: &Permission) -> Value {
    json!({
        "id": p.id,
        "action": action_name(p),
        "from": p.source,
        "to": p.destination,
        "port": (p.port != 0).then_some(p.port),
        "rule": rule_text(p),
        "revision": p.revision,
        "created_at": time_json(p.created_at),
    })
}

fn decision_name(a: PermissionAction) -> &'static str {
    match a {
        PermissionAction::Deny => "deny",
        PermissionAction::Audit => "audit",
        _ => "allow",
    }
}

fn call_text(args: &RuleArgs) -> String {
    match args.port {
        Some(p) => format!("{} -> {}:{p}", args.from.trim(), args.to.trim()),
        None => format!("{} -> {}", args.from.trim(), args.to.trim()),
    }
}

pub fn check_text(a: &CheckPermissionResponse, call: &str) -> String {
    let decision = a.decision();
    let mut text = key_values(&[
        ("decision", decision_name(decision).to_string()),
        ("call", call.to_string()),
        ("decided by", a.reason.clone()),
    ]);
    if decision == PermissionAction::Audit {
        text.push_str(
            "note: audit: the call is allowed, but logged and counted as a would-be denial \
             (weft_authz_decisions_total{decision=\"audit\"})\n",
        );
    }
    if !a.port_rules.is_empty() {
        let rules: Vec<String> = a
            .port_rules
            .iter()
            .map(|p| format!("{} ({})", p.id, rule_text(p)))
            .collect();
        text.push_str(&format!(
            "note: rules for one port also apply to calls on that port: {}; pass --port P to include them\n",
            rules.join(", ")
        ));
    }
    text
}

pub fn check_json(a: &CheckPermissionResponse, args: &RuleArgs) -> Value {
    json!({
        "decision": decision_name(a.decision()),
        "allowed": a.decision() != PermissionAction::Deny,
        "call": { "from": args.from.trim(), "to": args.to.trim(), "port": args.port },
        "rule": a.rule.as_ref().map(permission_json),
        "by_default": a.by_default,
        "default_policy": DefaultPolicy::from_proto(a.default_policy).as_str(),
        "reason": a.reason,
        "port_rules": a.port_rules.iter().map(permission_json).collect::<Vec<_>>(),
    })
}

fn default_of(info: &MeshInfo) -> DefaultPolicy {
    DefaultPolicy::from_proto(info.settings.as_ref().map_or(0, |s| s.default_policy))
}

/// The default policy in words: what happens to calls no permission matches.
pub fn default_policy_text(info: &MeshInfo) -> String {
    let revision = info.settings.as_ref().map_or(0, |s| s.revision);
    match (default_of(info), revision) {
        (DefaultPolicy::Allow, 0) => "allow: calls no permission matches are ALLOWED (the default of a new mesh; `weftctl mesh set-default-policy deny` denies them)".into(),
        (DefaultPolicy::Allow, _) => "allow: calls no permission matches are ALLOWED".into(),
        (DefaultPolicy::Deny, _) => "deny: calls no permission matches are DENIED".into(),
    }
}

pub fn mesh_text(info: &MeshInfo) -> String {
    let total = info.allow_rules + info.deny_rules + info.audit_rules;
    key_values(&[
        ("default policy", default_policy_text(info)),
        (
            "permissions",
            format!(
                "{total} ({} allow, {} deny, {} audit); see `weftctl permission list`",
                info.allow_rules, info.deny_rules, info.audit_rules
            ),
        ),
        ("trust domain", info.trust_domain.clone()),
    ])
}

pub fn mesh_json(info: &MeshInfo) -> Value {
    json!({
        "default_policy": default_of(info).as_str(),
        "default_policy_revision": info.settings.as_ref().map_or(0, |s| s.revision),
        "permissions": { "allow": info.allow_rules, "deny": info.deny_rules, "audit": info.audit_rules },
        "trust_domain": info.trust_domain,
    })
}

fn token_flag(kind: &str, name: &str) -> String {
    match kind {
        "gateway" => format!("--gateway {name}"),
        "ingress" => format!("--ingress {name}"),
        _ => format!("--service {name}"),
    }
}

pub fn revoked_text(r: &RevokeDataplaneResponse) -> String {
    let d = r.dataplane.clone().unwrap_or_default();
    let kind = kind_name(d.kind());
    let serials = if r.revoked_serials.is_empty() {
        "-".to_string()
    } else {
        r.revoked_serials.join(", ")
    };
    let mut text = format!(
        "revoked dataplane {} ({kind} {} at {}, revision {})\n",
        d.id,
        d.name,
        or_dash(&d.address),
        r.revision
    );
    text.push_str(&format!(
        "its certificates ({serials}) are refused by every peer from now on, its discovery stream is closed, and it cannot renew\n"
    ));
    text.push_str(&format!(
        "to bring the instance back: `weftctl token create {}`, then restart it with the new token and an empty --state-dir\n",
        token_flag(kind, &d.name)
    ));
    text
}

pub fn revoked_json(r: &RevokeDataplaneResponse) -> Value {
    let d = r.dataplane.clone().unwrap_or_default();
    json!({
        "revoked": d.id,
        "kind": kind_name(d.kind()),
        "name": d.name,
        "address": d.address,
        "revoked_serials": r.revoked_serials,
        "revision": r.revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::error::{EXIT_DENIED, EXIT_USAGE};
    use weft_proto::v1::MeshSettings;

    fn args(from: &str, to: &str, port: Option<u16>) -> RuleArgs {
        RuleArgs {
            from: from.into(),
            to: to.into(),
            port,
        }
    }

    #[test]
    fn bad_rule_arguments_are_usage_errors_naming_the_forms() {
        let err = preflight_permission(&PermissionCmd::Allow(args("ingress:us", "web", None)))
            .unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.to_string().contains("gateway:NAME"), "{err}");
        let err = preflight_permission(&PermissionCmd::Check(args("*", "web", None))).unwrap_err();
        assert!(err.to_string().contains("one caller"), "{err}");
        let err = preflight_permission(&PermissionCmd::Check(args("a", "*", None))).unwrap_err();
        assert!(err.to_string().contains("one destination"), "{err}");
        assert!(preflight_permission(&PermissionCmd::Audit(args("*", "*", Some(80)))).is_ok());
        let err = preflight_mesh(&MeshCmd::SetDefaultPolicy {
            policy: "block".into(),
        })
        .unwrap_err();
        assert!(err.to_string().contains("allow or deny"), "{err}");
        assert_eq!(CliError::Denied(String::new()).exit_code(), EXIT_DENIED);
    }

    fn perm(id: &str, source: &str, port: u32, action: PermissionAction) -> Permission {
        Permission {
            id: id.into(),
            source: source.into(),
            destination: "web".into(),
            port,
            action: action as i32,
            revision: 3,
            created_at: 1_700_000_000,
        }
    }

    #[test]
    fn check_says_what_decides() {
        let deny = CheckPermissionResponse {
            decision: PermissionAction::Deny as i32,
            rule: Some(perm("perm-1", "*", 0, PermissionAction::Deny)),
            reason: "rule perm-1 (deny * -> web)".into(),
            default_policy: weft_proto::v1::DefaultPolicy::Allow as i32,
            ..Default::default()
        };
        let text = check_text(&deny, "frontend -> web");
        assert!(text.contains("decision:    deny"), "{text}");
        assert!(
            text.contains("decided by:  rule perm-1 (deny * -> web)"),
            "{text}"
        );
        let j = check_json(&deny, &args("frontend", "web", None));
        assert_eq!(j["allowed"], false);
        assert_eq!(j["rule"]["rule"], "deny * -> web");

        let audit = CheckPermissionResponse {
            decision: PermissionAction::Audit as i32,
            port_rules: vec![perm("perm-2", "frontend", 8080, PermissionAction::Allow)],
            ..deny
        };
        let text = check_text(&audit, "frontend -> web");
        assert!(text.contains("would-be denial"), "{text}");
        assert!(
            text.contains("perm-2 (allow frontend -> web:8080)"),
            "{text}"
        );
        assert_eq!(
            check_json(&audit, &args("frontend", "web", None))["allowed"],
            true
        );
    }

    #[test]
    fn mesh_show_says_the_default_plainly() {
        let new = MeshInfo {
            settings: Some(MeshSettings::default()),
            trust_domain: "weft.local".into(),
            allow_rules: 2,
            ..Default::default()
        };
        let text = mesh_text(&new);
        assert!(
            text.contains("ALLOWED (the default of a new mesh"),
            "{text}"
        );
        assert!(text.contains("2 (2 allow, 0 deny, 0 audit)"), "{text}");
        let closed = MeshInfo {
            settings: Some(MeshSettings {
                default_policy: weft_proto::v1::DefaultPolicy::Deny as i32,
                revision: 9,
            }),
            ..new
        };
        assert!(mesh_text(&closed).contains("deny: calls no permission matches are DENIED"));
        assert_eq!(mesh_json(&closed)["default_policy"], "deny");
    }

    #[test]
    fn permissions_list_as_rules() {
        let p = perm("perm-9", "gateway:edge", 8443, PermissionAction::Audit);
        let table = permission_table(std::slice::from_ref(&p)).render();
        assert!(
            table.contains("perm-9  audit   gateway:edge  web  8443"),
            "{table}"
        );
        assert_eq!(
            permission_json(&p)["rule"],
            "audit gateway:edge -> web:8443"
        );
        let any = perm("perm-8", "*", 0, PermissionAction::Allow);
        assert_eq!(permission_json(&any)["port"], Value::Null);
        assert!(permission_table(&[any]).render().contains(" *  "));
    }
}
