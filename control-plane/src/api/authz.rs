//! The admin calls of authorization: permissions, their explanation, the mesh default
//! policy, and revoking one dataplane. Input is parsed into the policy crate's types
//! (so the API and `weftctl` refuse exactly the same things), stored as the canonical
//! text, and `CheckPermission` answers with [`weft_policy::Policy::decide`], the function
//! the sidecars enforce with.

use tonic::Status;
use weft_policy::{
    Action, Basis, Caller, DefaultPolicy, Destination, Outcome, Policy, Rule, Source,
    port_from_proto,
};
use weft_proto::v1::{
    CheckPermissionRequest, CheckPermissionResponse, CreatePermissionRequest, Dataplane,
    DefaultPolicy as ProtoDefault, MeshInfo, MeshSettings, Permission, PermissionAction,
    RevokeDataplaneResponse,
};

use super::{Shared, status};
use crate::registry::now_unix;

fn invalid(e: impl ToString) -> Status {
    Status::invalid_argument(e.to_string())
}

pub(super) async fn create_permission(
    shared: &Shared,
    r: CreatePermissionRequest,
) -> Result<Permission, Status> {
    let source = Source::parse(&r.source).map_err(invalid)?;
    let destination = Destination::parse(&r.destination).map_err(invalid)?;
    let port = port_from_proto(r.port).map_err(invalid)?;
    let action = Action::from_proto(r.action).map_err(invalid)?;
    let permission = Permission {
        id: format!("perm-{}", super::admin::random_hex(4)?),
        source: source.to_string(),
        destination: destination.to_string(),
        port: port.map_or(0, u32::from),
        action: action.to_proto() as i32,
        revision: 0,
        created_at: now_unix(),
    };
    let stored = shared
        .store
        .create_permission(permission)
        .await
        .map_err(status)?;
    tracing::info!(id = %stored.id, rule = %rule_text(&stored), revision = stored.revision, "permission created");
    Ok(stored)
}

/// `allow frontend -> web:8080` for a stored permission (its id when unreadable).
pub fn rule_text(p: &Permission) -> String {
    Rule::from_proto(p).map_or_else(|_| p.id.clone(), |r| r.to_string())
}

/// Every stored permission and the default policy, as the decision function takes them.
async fn load_policy(shared: &Shared) -> Result<(Policy, Vec<Permission>), Status> {
    let stored = shared.store.list_permissions().await.map_err(status)?;
    let mesh = shared.store.mesh_settings().await.map_err(status)?;
    let rules = stored.iter().filter_map(|p| match Rule::from_proto(p) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(id = %p.id, error = %e, "stored permission is unreadable; ignored");
            None
        }
    });
    let policy = Policy::new(rules, DefaultPolicy::from_proto(mesh.default_policy));
    Ok((policy, stored))
}

pub(super) async fn check_permission(
    shared: &Shared,
    r: CheckPermissionRequest,
) -> Result<CheckPermissionResponse, Status> {
    let source = Source::parse(&r.source).map_err(invalid)?;
    let caller = Caller::named_by(&source).ok_or_else(|| {
        invalid("a check needs one caller: a service name or gateway:NAME, not '*'")
    })?;
    let destination = Destination::parse(&r.destination).map_err(invalid)?;
    let dst = destination
        .service()
        .ok_or_else(|| invalid("a check needs one destination service, not '*'"))?;
    shared.store.get_service(dst).await.map_err(status)?;
    let port = port_from_proto(r.port).map_err(invalid)?;
    let (policy, stored) = load_policy(shared).await?;
    let decision = policy.decide(caller, dst, port);
    let find = |id: &str| stored.iter().find(|p| p.id == id).cloned();
    // Without a port, rules for one port cannot match; name those that would apply
    // to calls on their port, since they may change the answer there.
    let port_rules = match port {
        Some(_) => Vec::new(),
        None => policy
            .rules()
            .filter(|rule| rule.port.is_some() && rule.matches(&caller, dst, rule.port))
            .filter_map(|rule| find(&rule.id))
            .collect(),
    };
    Ok(CheckPermissionResponse {
        decision: match decision.outcome {
            Outcome::Allow => PermissionAction::Allow,
            Outcome::Deny => PermissionAction::Deny,
            Outcome::Audit => PermissionAction::Audit,
        } as i32,
        rule: decision.rule().and_then(|rule| find(&rule.id)),
        by_default: matches!(decision.basis, Basis::Default(_)),
        default_policy: policy.default_policy().to_proto() as i32,
        reason: decision.reason(),
        port_rules,
    })
}

pub(super) async fn mesh_info(shared: &Shared) -> Result<MeshInfo, Status> {
    let settings = shared.store.mesh_settings().await.map_err(status)?;
    let permissions = shared.store.list_permissions().await.map_err(status)?;
    let count = |action: PermissionAction| {
        permissions
            .iter()
            .filter(|p| p.action == action as i32)
            .count() as u32
    };
    Ok(MeshInfo {
        settings: Some(MeshSettings {
            default_policy: DefaultPolicy::from_proto(settings.default_policy).to_proto() as i32,
            revision: settings.revision,
        }),
        trust_domain: shared.ca.trust_domain().as_str().to_owned(),
        allow_rules: count(PermissionAction::Allow),
        deny_rules: count(PermissionAction::Deny),
        audit_rules: count(PermissionAction::Audit),
    })
}

pub(super) async fn set_default_policy(shared: &Shared, value: i32) -> Result<(), Status> {
    let policy = match ProtoDefault::try_from(value) {
        Ok(p @ (ProtoDefault::Allow | ProtoDefault::Deny)) => p,
        _ => {
            return Err(invalid(
                "the default policy must be ALLOW or DENY (weftctl mesh set-default-policy allow|deny)",
            ));
        }
    };
    let settings = shared
        .store
        .set_default_policy(policy)
        .await
        .map_err(status)?;
    tracing::info!(
        default_policy = DefaultPolicy::from_proto(settings.default_policy).as_str(),
        revision = settings.revision,
        "mesh default policy set"
    );
    Ok(())
}

pub(super) async fn revoke_dataplane(
    shared: &Shared,
    id: &str,
) -> Result<RevokeDataplaneResponse, Status> {
    let revoked = shared
        .store
        .revoke_dataplane(id, now_unix())
        .await
        .map_err(status)?;
    let r = &revoked.record;
    let dataplane = Dataplane {
        id: r.id.clone(),
        kind: r.kind as i32,
        name: r.name.clone(),
        region: r.region.clone(),
        address: r.address.clone(),
        cert_expiry: r.cert_expiry,
        last_seen: r.last_seen,
        ..Default::default()
    };
    tracing::warn!(dataplane = %id, serials = ?revoked.serials, revision = revoked.revision, "dataplane revoked");
    Ok(RevokeDataplaneResponse {
        dataplane: Some(dataplane),
        revoked_serials: revoked.serials,
        revision: revoked.revision,
    })
}
