//! The dashboard's JSON (`/api/...`): one document per page, built from the admin API's
//! own read calls (made in-process) and shaped by the views `weftctl -o json` prints, so
//! sync state, warnings and figures read the same in the terminal and the browser.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tonic::{Request, Status};
use weft_proto::v1::admin_server::Admin as _;
use weft_proto::v1::{
    Dataplane, DataplaneKind, GetCaRequest, GetMeshRequest, GetServiceRequest,
    GetTrafficStatsRequest, ListDataplanesRequest, ListPermissionsRequest, ListRoutesRequest,
    ListServicesRequest, MeshInfo, Permission, TrafficStats,
};

use crate::api::Shared;
use crate::api::admin::AdminService;
use crate::cli::output::time_json;
use crate::cli::{authz, traffic, views};
use crate::registry::now_unix;
use crate::warnings;

/// Builds the JSON of each page.
pub struct Api {
    admin: AdminService,
    shared: Arc<Shared>,
}

/// Where traffic figures come from, shown under them: each replica counts only the
/// dataplanes connected to it.
fn coverage(stats: &TrafficStats) -> Value {
    json!({
        "window_seconds": stats.window_seconds,
        "reporting_dataplanes": stats.reporting_dataplanes,
        "connected_dataplanes": stats.connected_dataplanes,
        "note": traffic::coverage_text(stats),
    })
}

/// Counts of a group of dataplanes: how many, connected, healthy, in sync.
fn instances(dataplanes: &[&Dataplane], latest: u64) -> Value {
    let count = |f: &dyn Fn(&Dataplane) -> bool| dataplanes.iter().filter(|d| f(d)).count();
    let mut seen: Vec<&str> = dataplanes
        .iter()
        .map(|d| d.app_protocol().display_name())
        .filter(|p| *p != "-")
        .collect();
    seen.sort_unstable();
    seen.dedup();
    json!({
        "total": dataplanes.len(),
        "connected": count(&|d| d.connected),
        "healthy": count(&|d| d.healthy),
        "in_sync": count(&|d| d.connected && views::in_sync(d, latest)),
        "app_protocols": seen,
    })
}

impl Api {
    pub fn new(shared: Arc<Shared>) -> Self {
        Api {
            admin: AdminService::new(shared.clone()),
            shared,
        }
    }

    async fn traffic(&self, service: &str) -> Result<TrafficStats, Status> {
        let request = GetTrafficStatsRequest {
            service: service.to_owned(),
            window_seconds: 0,
        };
        Ok(self
            .admin
            .get_traffic_stats(Request::new(request))
            .await?
            .into_inner())
    }

    async fn mesh(&self) -> Result<MeshInfo, Status> {
        Ok(self
            .admin
            .get_mesh(Request::new(GetMeshRequest {}))
            .await?
            .into_inner())
    }

    async fn permission_list(&self) -> Result<Vec<Permission>, Status> {
        Ok(self
            .admin
            .list_permissions(Request::new(ListPermissionsRequest {}))
            .await?
            .into_inner()
            .permissions)
    }

    async fn dataplanes(&self) -> Result<(Vec<Dataplane>, u64), Status> {
        let list = self
            .admin
            .list_dataplanes(Request::new(ListDataplanesRequest::default()))
            .await?
            .into_inner();
        Ok((list.dataplanes, list.latest_version))
    }

    /// The mesh at a glance: services with their selector, instances and figures;
    /// dataplanes connected and in sync; the CA; every warning.
    pub async fn overview(&self) -> Result<Value, Status> {
        let services = self
            .admin
            .list_services(Request::new(ListServicesRequest {}))
            .await?
            .into_inner()
            .services;
        let (dataplanes, latest) = self.dataplanes().await?;
        let ca = self
            .admin
            .get_ca(Request::new(GetCaRequest {}))
            .await?
            .into_inner();
        let stats = self.traffic("").await?;
        let mesh = self.mesh().await?;
        let now = now_unix();
        let ttl = self.shared.cert_ttl;

        let mut by_service: BTreeMap<&str, Vec<&Dataplane>> = BTreeMap::new();
        for d in dataplanes
            .iter()
            .filter(|d| d.kind() == DataplaneKind::Sidecar)
        {
            by_service.entry(d.name.as_str()).or_default().push(d);
        }
        let mut warnings: Vec<Value> = Vec::new();
        let service_rows: Vec<Value> = services
            .iter()
            .map(|s| {
                let own = by_service.get(s.name.as_str()).cloned().unwrap_or_default();
                let owned: Vec<Dataplane> = own.iter().map(|d| (*d).clone()).collect();
                for w in warnings::for_service(s, &owned, now, ttl) {
                    warnings.push(json!({ "subject": s.name, "message": w }));
                }
                let figures = stats
                    .services
                    .iter()
                    .find(|t| t.service == s.name)
                    .map(traffic::service_traffic_json);
                let mut row = views::service_json(s);
                row["instances"] = instances(&own, latest);
                row["traffic"] = figures.unwrap_or(Value::Null);
                row
            })
            .collect();
        for d in dataplanes
            .iter()
            .filter(|d| d.kind() != DataplaneKind::Sidecar)
        {
            for w in warnings::for_dataplane(d, now, ttl) {
                warnings.push(json!({ "subject": d.name, "message": w }));
            }
        }
        let all: Vec<&Dataplane> = dataplanes.iter().collect();
        let rotation = ca.rotation.clone().unwrap_or_default();
        Ok(json!({
            "generated_at": time_json(now),
            "trust_domain": ca.trust_domain,
            "config_version": latest,
            "dataplanes": instances(&all, latest),
            "ca": {
                "phase": if rotation.phase.is_empty() { "idle" } else { rotation.phase.as_str() },
                "summary": rotation.summary,
                "roots": ca.roots.len(),
                "cert_ttl": crate::cli::output::duration_text(ca.cert_ttl_seconds),
            },
            "mesh": mesh_json(&mesh),
            "services": service_rows,
            "warnings": warnings,
            "traffic": coverage(&stats),
            "pages": pages(),
        }))
    }

    /// One service: its instances by region, figures with their 10 s series, callers,
    /// the routes to it and its warnings.
    pub async fn service(&self, name: &str) -> Result<Value, Status> {
        let detail = self
            .admin
            .get_service(Request::new(GetServiceRequest {
                name: name.to_owned(),
            }))
            .await?
            .into_inner();
        let (_, latest) = self.dataplanes().await?;
        let mut regions: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for d in &detail.dataplanes {
            regions
                .entry(d.region.as_str())
                .or_default()
                .push(views::dataplane_json(d, latest));
        }
        let routes = self.routes_json(Some(name)).await?;
        // The rules that can decide calls to this service.
        let permissions: Vec<Value> = self
            .permission_list()
            .await?
            .iter()
            .filter(|p| p.destination == name || p.destination == "*")
            .map(authz::permission_json)
            .collect();
        let stats = self.traffic(name).await?;
        let figures = stats
            .services
            .first()
            .map(traffic::service_traffic_json)
            .unwrap_or(Value::Null);
        let all: Vec<&Dataplane> = detail.dataplanes.iter().collect();
        Ok(json!({
            "service": detail.service.as_ref().map(views::service_json),
            "instances": instances(&all, latest),
            "regions": regions.into_iter().map(|(region, dataplanes)| json!({
                "region": if region.is_empty() { "default" } else { region },
                "dataplanes": dataplanes,
            })).collect::<Vec<_>>(),
            "routes": routes,
            "permissions": permissions,
            "mesh": mesh_json(&self.mesh().await?),
            "warnings": detail.warnings,
            "traffic": figures,
            "coverage": coverage(&stats),
        }))
    }

    /// Every dataplane, as `weftctl dataplane list -o json` prints it, with its warnings.
    pub async fn dataplanes_page(&self) -> Result<Value, Status> {
        let (dataplanes, latest) = self.dataplanes().await?;
        let now = now_unix();
        let items: Vec<Value> = dataplanes
            .iter()
            .map(|d| {
                let mut j = views::dataplane_json(d, latest);
                j["warnings"] = json!(warnings::for_dataplane(d, now, self.shared.cert_ttl));
                j
            })
            .collect();
        Ok(json!({ "latest_version": latest, "dataplanes": items }))
    }

    async fn routes_json(&self, service: Option<&str>) -> Result<Vec<Value>, Status> {
        let routes = self
            .admin
            .list_routes(Request::new(ListRoutesRequest {}))
            .await?
            .into_inner()
            .routes;
        Ok(routes
            .iter()
            .filter(|r| service.is_none_or(|s| r.service == s))
            .map(views::route_json)
            .collect())
    }

    /// Gateway routes, as `weftctl route list -o json` prints them.
    pub async fn routes(&self) -> Result<Value, Status> {
        Ok(json!({ "routes": self.routes_json(None).await? }))
    }

    /// The permissions and the default policy, as `weftctl permission list` and `weftctl
    /// mesh show` print them.
    pub async fn permissions(&self) -> Result<Value, Status> {
        let rules = self.permission_list().await?;
        Ok(json!({
            "mesh": mesh_json(&self.mesh().await?),
            "permissions": rules.iter().map(authz::permission_json).collect::<Vec<_>>(),
        }))
    }

    /// Every service's figures, as `weftctl service stats -o json` prints them.
    pub async fn traffic_page(&self) -> Result<Value, Status> {
        Ok(traffic::traffic_json(&self.traffic("").await?))
    }
}

/// The mesh settings as `weftctl mesh show -o json` prints them, with the default
/// policy in words.
fn mesh_json(mesh: &MeshInfo) -> Value {
    let mut j = authz::mesh_json(mesh);
    j["default_policy_text"] = json!(authz::default_policy_text(mesh));
    j
}

/// The pages the dashboard offers, for its navigation.
fn pages() -> Value {
    json!(["overview", "dataplanes", "routes", "permissions"])
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::AppProtocol;

    #[test]
    fn instances_count_connected_healthy_and_in_sync() {
        let mut a = Dataplane {
            connected: true,
            healthy: true,
            acked_version: 5,
            latest_version: 5,
            ..Dataplane::default()
        };
        a.set_app_protocol(AppProtocol::Http1);
        let b = Dataplane {
            acked_version: 3,
            latest_version: 5,
            ..Dataplane::default()
        };
        let j = instances(&[&a, &b], 5);
        assert_eq!(j["total"], 2);
        assert_eq!(j["connected"], 1);
        assert_eq!(j["healthy"], 1);
        assert_eq!(j["in_sync"], 1);
        assert_eq!(j["app_protocols"], json!(["http/1.1"]));
    }
}
