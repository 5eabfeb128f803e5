//! How each resource looks in table and JSON output. Pure functions, so the wording
//! and the JSON shape are tested without a control plane.

use serde_json::{Value, json};
use weft_proto::v1::{
    AppProtocol, CaInfo, CaRoot, ControlPlaneStatus, Dataplane, Protocol, Route, Service,
    ServiceDetail, TokenInfo,
};

use super::output::{
    Table, duration_text, key_values, kind_name, or_dash, time_cell, time_json, yes_no,
};

/// The note `service get` prints for a service with no selector.
pub fn unset_protocol_note(name: &str) -> String {
    format!(
        "protocol selector not set: treated as tcp; set it with \
         `weftctl service set-protocol {name} <tcp|http|http2|grpc>`"
    )
}

/// A selector for display; an unset one shows how it behaves and that it is unset.
pub fn protocol_cell(protocol: Protocol) -> String {
    match protocol {
        Protocol::Unspecified => "tcp (not set)".to_string(),
        p => p.selector_name().to_string(),
    }
}

pub fn service_table(services: &[Service]) -> Table {
    let mut t = Table::new(&["NAME", "PROTOCOL", "PORT", "REVISION", "CREATED"]);
    for s in services {
        t.row(vec![
            s.name.clone(),
            protocol_cell(s.protocol()),
            port_cell(s.port),
            s.revision.to_string(),
            time_cell(s.created_at),
        ]);
    }
    t
}

pub fn service_json(s: &Service) -> Value {
    json!({
        "name": s.name,
        "protocol": s.protocol().selector_name(),
        "protocol_set": s.protocol() != Protocol::Unspecified,
        "port": (s.port != 0).then_some(s.port),
        "revision": s.revision,
        "created_at": time_json(s.created_at),
    })
}

/// `service get` as text: the service's fields, then its dataplanes.
pub fn service_detail_text(detail: &ServiceDetail, latest: u64) -> String {
    let Some(s) = detail.service.as_ref() else {
        return String::new();
    };
    let mut text = key_values(&[
        ("name", s.name.clone()),
        ("protocol", protocol_cell(s.protocol())),
        ("port", port_cell(s.port)),
        ("revision", s.revision.to_string()),
        ("created", time_cell(s.created_at)),
    ]);
    if s.protocol() == Protocol::Unspecified {
        text.push_str(&format!("note: {}\n", unset_protocol_note(&s.name)));
    }
    text.push_str(&format!("\ndataplanes ({}):\n", detail.dataplanes.len()));
    text.push_str(&dataplane_table(&detail.dataplanes, latest).render());
    text
}

pub fn service_detail_json(detail: &ServiceDetail, latest: u64) -> Value {
    json!({
        "service": detail.service.as_ref().map(service_json),
        "dataplanes": detail.dataplanes.iter().map(|d| dataplane_json(d, latest)).collect::<Vec<_>>(),
        "warnings": detail.warnings,
    })
}

pub fn route_table(routes: &[Route]) -> Table {
    let mut t = Table::new(&[
        "HOST",
        "PATH PREFIX",
        "SERVICE",
        "REWRITE HOST",
        "PREFER REGION",
        "REVISION",
    ]);
    for r in routes {
        t.row(vec![
            r.host.clone(),
            path_prefix(&r.path_prefix).to_string(),
            r.service.clone(),
            or_dash(&r.rewrite_host),
            or_dash(&r.prefer_region),
            r.revision.to_string(),
        ]);
    }
    t
}

pub fn route_json(r: &Route) -> Value {
    json!({
        "host": r.host,
        "path_prefix": path_prefix(&r.path_prefix),
        "service": r.service,
        "rewrite_host": (!r.rewrite_host.is_empty()).then_some(&r.rewrite_host),
        "prefer_region": (!r.prefer_region.is_empty()).then_some(&r.prefer_region),
        "revision": r.revision,
    })
}

/// Empty means `/` in the API; show what it means.
pub fn path_prefix(p: &str) -> &str {
    if p.is_empty() { "/" } else { p }
}

/// The config version a dataplane should hold: its own `latest_version`, or the
/// list-wide one when the control plane left the per-dataplane field unset.
fn latest_for(d: &Dataplane, list_latest: u64) -> u64 {
    if d.latest_version != 0 {
        d.latest_version
    } else {
        list_latest
    }
}

/// Whether a dataplane holds the latest config (`list_latest` as for [`dataplane_json`]).
pub fn in_sync(d: &Dataplane, list_latest: u64) -> bool {
    d.acked_version == latest_for(d, list_latest)
}

/// Whether a dataplane holds the latest config, and if not, why.
pub fn sync_state(acked: u64, latest: u64, nacked: u64, nack_error: &str) -> String {
    if acked == latest {
        "in sync".to_string()
    } else if nacked > acked {
        if nack_error.is_empty() {
            format!("nacked v{nacked}")
        } else {
            format!("nacked v{nacked}: {nack_error}")
        }
    } else {
        format!("behind (acked v{acked} of v{latest})")
    }
}

fn app_cell(p: AppProtocol) -> String {
    p.display_name().to_string()
}

/// `list_latest` is the version from `ListDataplanesResponse` (0 when unknown).
pub fn dataplane_table(dataplanes: &[Dataplane], list_latest: u64) -> Table {
    let mut t = Table::new(&[
        "ID",
        "KIND",
        "NAME",
        "REGION",
        "ADDRESS",
        "CONNECTED",
        "HEALTHY",
        "ACKED/LATEST",
        "SYNC",
        "CERT EXPIRY",
        "APP",
    ]);
    for d in dataplanes {
        let latest = latest_for(d, list_latest);
        t.row(vec![
            d.id.clone(),
            kind_name(d.kind()).to_string(),
            d.name.clone(),
            or_dash(&d.region),
            or_dash(&d.address),
            yes_no(d.connected),
            yes_no(d.healthy),
            format!("{}/{}", d.acked_version, latest),
            sync_state(d.acked_version, latest, d.nacked_version, &d.nack_error),
            time_cell(d.cert_expiry),
            app_cell(d.app_protocol()),
        ]);
    }
    t
}

pub fn dataplane_text(d: &Dataplane) -> String {
    let latest = d.latest_version;
    let mut pairs = vec![
        ("id", d.id.clone()),
        ("kind", kind_name(d.kind()).to_string()),
        ("name", d.name.clone()),
        ("region", or_dash(&d.region)),
        ("address", or_dash(&d.address)),
        ("connected", yes_no(d.connected)),
        ("healthy", yes_no(d.healthy)),
        ("acked version", d.acked_version.to_string()),
        ("sent version", d.sent_version.to_string()),
        ("latest version", latest.to_string()),
        (
            "sync",
            sync_state(d.acked_version, latest, d.nacked_version, &d.nack_error),
        ),
        ("cert expiry", time_cell(d.cert_expiry)),
        ("app protocol", app_cell(d.app_protocol())),
        ("last seen", time_cell(d.last_seen)),
    ];
    if d.nacked_version != 0 {
        pairs.push(("nacked version", d.nacked_version.to_string()));
        pairs.push(("nack error", or_dash(&d.nack_error)));
    }
    key_values(&pairs)
}

pub fn dataplane_json(d: &Dataplane, list_latest: u64) -> Value {
    let latest = latest_for(d, list_latest);
    let app = d.app_protocol();
    json!({
        "id": d.id,
        "kind": kind_name(d.kind()),
        "name": d.name,
        "region": d.region,
        "address": d.address,
        "connected": d.connected,
        "healthy": d.healthy,
        "acked_version": d.acked_version,
        "sent_version": d.sent_version,
        "latest_version": latest,
        "nacked_version": d.nacked_version,
        "nack_error": (!d.nack_error.is_empty()).then_some(&d.nack_error),
        "in_sync": in_sync(d, list_latest),
        "sync": sync_state(d.acked_version, latest, d.nacked_version, &d.nack_error),
        "cert_expiry": time_json(d.cert_expiry),
        "app_protocol": (app != AppProtocol::Unknown).then_some(app.display_name()),
        "last_seen": time_json(d.last_seen),
    })
}

/// What a token is for: `sidecar`, `gateway`, `ingress` (bootstrap) or `viewer`.
pub fn token_kind_name(t: &TokenInfo) -> &'static str {
    if t.viewer {
        "viewer"
    } else {
        kind_name(t.kind())
    }
}

/// `active`, `expired` or `revoked` at time `now` (Unix seconds).
pub fn token_state(t: &TokenInfo, now: i64) -> &'static str {
    if t.revoked_at != 0 {
        "revoked"
    } else if t.expires_at != 0 && t.expires_at <= now {
        "expired"
    } else {
        "active"
    }
}

pub fn token_table(tokens: &[TokenInfo], now: i64) -> Table {
    let mut t = Table::new(&["ID", "KIND", "NAME", "CREATED", "EXPIRES", "STATE"]);
    for tok in tokens {
        t.row(vec![
            tok.id.clone(),
            token_kind_name(tok).to_string(),
            tok.name.clone(),
            time_cell(tok.created_at),
            time_cell(tok.expires_at),
            token_state(tok, now).to_string(),
        ]);
    }
    t
}

pub fn token_json(t: &TokenInfo, now: i64) -> Value {
    json!({
        "id": t.id,
        "kind": token_kind_name(t),
        "name": t.name,
        "created_at": time_json(t.created_at),
        "expires_at": time_json(t.expires_at),
        "revoked_at": time_json(t.revoked_at),
        "state": token_state(t, now),
    })
}

/// `cp status`: the store, the leader, then one row per replica.
pub fn cp_status_text(s: &ControlPlaneStatus) -> String {
    let leader = if s.leader_id.is_empty() {
        "none (no replica holds the lease now)".to_string()
    } else {
        format!(
            "{} (epoch {}, lease renewed, {} ms left)",
            s.leader_id, s.epoch, s.lease_remaining_ms
        )
    };
    let mut text = key_values(&[("store", s.store.clone()), ("leader", leader)]);
    text.push_str(&format!("\nreplicas ({}):\n", s.replicas.len()));
    let mut t = Table::new(&["ID", "ADDRESS", "STARTED", "ALIVE", "LEADER", "HEARTBEAT"]);
    for r in &s.replicas {
        let id = if r.answering {
            format!("{} (answered)", r.id)
        } else {
            r.id.clone()
        };
        t.row(vec![
            id,
            r.address.clone(),
            time_cell(r.started_at),
            yes_no(r.alive),
            yes_no(r.leader),
            format!("{} ms ago", r.heartbeat_age_ms),
        ]);
    }
    text.push_str(&t.render());
    text
}

pub fn cp_status_json(s: &ControlPlaneStatus) -> Value {
    json!({
        "store": s.store,
        "leader_id": s.leader_id,
        "epoch": s.epoch,
        "lease_remaining_ms": s.lease_remaining_ms,
        "replicas": s.replicas.iter().map(|r| json!({
            "id": r.id,
            "address": r.address,
            "started_at": time_json(r.started_at),
            "heartbeat_age_ms": r.heartbeat_age_ms,
            "alive": r.alive,
            "leader": r.leader,
            "answering": r.answering,
        })).collect::<Vec<_>>(),
    })
}

pub fn ca_text(ca: &CaInfo) -> String {
    let rotation = ca
        .rotation
        .as_ref()
        .map_or_else(|| "idle".to_string(), |r| r.summary.clone());
    let mut text = key_values(&[
        ("trust domain", ca.trust_domain.clone()),
        ("cert ttl", duration_text(ca.cert_ttl_seconds)),
        ("rotation", rotation),
    ]);
    text.push_str(&format!("\nroots ({}):\n", ca.roots.len()));
    let mut t = Table::new(&[
        "SHA256",
        "NOT BEFORE",
        "NOT AFTER",
        "SIGNING",
        "RETIRE FROM",
    ]);
    for r in &ca.roots {
        t.row(vec![
            r.sha256.clone(),
            time_cell(r.not_before),
            time_cell(r.not_after),
            root_role(r),
            time_cell(r.retirable_at),
        ]);
    }
    text.push_str(&t.render());
    text
}

/// The SIGNING column: whether the root signs, or what it is waiting for.
fn root_role(r: &CaRoot) -> String {
    if r.signing {
        "yes".to_string()
    } else if r.signing_ended_at == 0 {
        "next (rotation)".to_string()
    } else {
        format!("until {}", time_cell(r.signing_ended_at))
    }
}

/// What `ca rotate` prints: the new root and what happens next.
pub fn rotation_started_text(ca: &CaInfo) -> String {
    let rotation = ca.rotation.clone().unwrap_or_default();
    format!(
        "new CA root {} added to the trust bundle and pushed to every dataplane\n\
         signing switches to it once all {} connected dataplanes acknowledged the bundle \
         (now {}); follow it with `weftctl ca show`\n",
        rotation.new_root_sha256, rotation.connected_dataplanes, rotation.acked_dataplanes
    )
}

pub fn ca_json(ca: &CaInfo) -> Value {
    let root = |r: &CaRoot| {
        json!({
            "sha256": r.sha256,
            "not_before": time_json(r.not_before),
            "not_after": time_json(r.not_after),
            "signing": r.signing,
            "signing_ended_at": time_json(r.signing_ended_at),
            "retirable_at": time_json(r.retirable_at),
            "cert_pem": r.cert_pem,
        })
    };
    let rotation = ca.rotation.clone().unwrap_or_default();
    json!({
        "trust_domain": ca.trust_domain,
        "cert_ttl_seconds": ca.cert_ttl_seconds,
        "cert_ttl": duration_text(ca.cert_ttl_seconds),
        "roots": ca.roots.iter().map(root).collect::<Vec<_>>(),
        "rotation": {
            "phase": if rotation.phase.is_empty() { "idle" } else { rotation.phase.as_str() },
            "new_root_sha256": (!rotation.new_root_sha256.is_empty()).then_some(&rotation.new_root_sha256),
            "acked_dataplanes": rotation.acked_dataplanes,
            "connected_dataplanes": rotation.connected_dataplanes,
            "switched_at": time_json(rotation.switched_at),
            "retirable_at": time_json(rotation.retirable_at),
            "summary": rotation.summary,
        },
    })
}

fn port_cell(port: u32) -> String {
    if port == 0 {
        "-".to_string()
    } else {
        port.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::DataplaneKind;

    #[test]
    fn sync_column() {
        assert_eq!(sync_state(5, 5, 0, ""), "in sync");
        assert_eq!(sync_state(5, 5, 3, "old"), "in sync");
        assert_eq!(sync_state(4, 6, 5, "bad route"), "nacked v5: bad route");
        assert_eq!(sync_state(4, 6, 5, ""), "nacked v5");
        assert_eq!(sync_state(4, 6, 3, "older nack"), "behind (acked v4 of v6)");
        assert_eq!(sync_state(0, 2, 0, ""), "behind (acked v0 of v2)");
    }

    #[test]
    fn unset_protocol_shows_as_tcp_not_set() {
        let s = Service {
            name: "legacy".into(),
            ..Service::default()
        };
        let row = service_table(std::slice::from_ref(&s)).render();
        assert!(row.contains("tcp (not set)"), "{row}");
        let j = service_json(&s);
        assert_eq!(j["protocol"], "tcp");
        assert_eq!(j["protocol_set"], false);
        assert_eq!(j["port"], Value::Null);

        let detail = ServiceDetail {
            service: Some(s),
            ..ServiceDetail::default()
        };
        let text = service_detail_text(&detail, 0);
        assert!(text.contains(
            "protocol selector not set: treated as tcp; set it with \
             `weftctl service set-protocol legacy <tcp|http|http2|grpc>`"
        ));
    }

    #[test]
    fn dataplane_uses_list_latest_when_its_own_is_unset() {
        let mut d = Dataplane {
            id: "service/web/10.0.0.1:15008".into(),
            name: "web".into(),
            acked_version: 3,
            ..Dataplane::default()
        };
        d.set_kind(DataplaneKind::Sidecar);
        let j = dataplane_json(&d, 7);
        assert_eq!(j["kind"], "sidecar");
        assert_eq!(j["latest_version"], 7);
        assert_eq!(j["sync"], "behind (acked v3 of v7)");
        assert_eq!(j["app_protocol"], Value::Null);
        let text = dataplane_table(&[d], 7).render();
        assert!(text.contains("3/7"), "{text}");
    }

    #[test]
    fn ca_shows_rotation_and_root_roles() {
        let ca = CaInfo {
            trust_domain: "weft.local".into(),
            cert_ttl_seconds: 3600,
            roots: vec![
                CaRoot {
                    sha256: "old".into(),
                    signing_ended_at: 1_700_000_000,
                    retirable_at: 1_700_003_600,
                    ..CaRoot::default()
                },
                CaRoot {
                    sha256: "new".into(),
                    signing: true,
                    ..CaRoot::default()
                },
            ],
            rotation: Some(weft_proto::v1::CaRotation {
                phase: "switched".into(),
                new_root_sha256: "new".into(),
                switched_at: 1_700_000_000,
                retirable_at: 1_700_003_600,
                summary: "switched at 2023-11-14T22:13:20Z".into(),
                ..Default::default()
            }),
        };
        let text = ca_text(&ca);
        assert!(
            text.contains("rotation:      switched at 2023-11-14T22:13:20Z"),
            "{text}"
        );
        assert!(
            text.contains("until 2023-11-14T22:13:20Z  2023-11-14T23:13:20Z"),
            "{text}"
        );
        let j = ca_json(&ca);
        assert_eq!(j["rotation"]["phase"], "switched");
        assert_eq!(j["roots"][0]["retirable_at"], "2023-11-14T23:13:20Z");
        assert_eq!(j["roots"][1]["retirable_at"], Value::Null);
        let idle = ca_json(&CaInfo::default());
        assert_eq!(idle["rotation"]["phase"], "idle");
    }

    #[test]
    fn token_states() {
        let mut t = TokenInfo {
            expires_at: 100,
            ..TokenInfo::default()
        };
        assert_eq!(token_state(&t, 99), "active");
        assert_eq!(token_state(&t, 100), "expired");
        t.revoked_at = 50;
        assert_eq!(token_state(&t, 10), "revoked");
    }

    #[test]
    fn empty_route_prefix_means_root() {
        let r = Route {
            host: "*.example.com".into(),
            service: "web".into(),
            ..Route::default()
        };
        assert_eq!(route_json(&r)["path_prefix"], "/");
        assert_eq!(route_json(&r)["rewrite_host"], Value::Null);
        assert_eq!(route_json(&r)["prefer_region"], Value::Null);
        let us = Route {
            prefer_region: "us".into(),
            ..r
        };
        assert_eq!(route_json(&us)["prefer_region"], "us");
        assert!(route_table(&[us]).render().contains(" us "));
    }
}
