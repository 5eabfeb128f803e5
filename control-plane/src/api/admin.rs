//! The admin service: services, routes, dataplanes, tokens and the CA. Every change is
//! validated first, committed in one store transaction, then pushed.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use weft_certs::IdentityKind;
use weft_certs::token::BootstrapClaims;
use weft_proto::v1::admin_server::Admin;
use weft_proto::v1::*;

use super::{Shared, auth, authz, status};
use crate::ca::{CaError, rfc3339};
use crate::registry::now_unix;
use crate::store::rules::replica_alive;
use crate::store::{DataplaneRecord, TokenKind, TokenRecord};
use crate::{validate, warnings};

const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

pub struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    pub fn new(shared: Arc<Shared>) -> Self {
        AdminService { shared }
    }

    /// After a committed change: publish it before answering, so the caller knows the
    /// push is under way when the call returns.
    async fn committed(&self) {
        self.shared.metrics.admin_changes.inc();
        if let Err(e) = self.shared.hub.reload().await {
            tracing::error!(error = %e, "reload after change failed; will retry on the next change");
            self.shared.hub.notify();
        }
    }
}

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

fn token_kind(kind: i32) -> Result<(DataplaneKind, IdentityKind), Status> {
    match DataplaneKind::try_from(kind) {
        Ok(DataplaneKind::Sidecar) => Ok((DataplaneKind::Sidecar, IdentityKind::Service)),
        Ok(DataplaneKind::Gateway) => Ok((DataplaneKind::Gateway, IdentityKind::Gateway)),
        Ok(DataplaneKind::Ingress) => Ok((DataplaneKind::Ingress, IdentityKind::Ingress)),
        _ => Err(invalid(
            "token kind must be SIDECAR (--service NAME), GATEWAY (--gateway NAME) or INGRESS (--ingress NAME), or set viewer (--viewer NAME)".into(),
        )),
    }
}

fn token_info(t: &TokenRecord) -> TokenInfo {
    let (kind, viewer) = match t.kind {
        TokenKind::Bootstrap(kind) => (kind, false),
        TokenKind::Viewer => (DataplaneKind::Unspecified, true),
    };
    TokenInfo {
        id: t.id.clone(),
        kind: kind as i32,
        name: t.name.clone(),
        created_at: t.created_at,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
        viewer,
    }
}

/// A token's lifetime from the request: the default for 0, at most a year.
fn token_ttl(ttl_seconds: u64) -> Result<Duration, Status> {
    let ttl = match ttl_seconds {
        0 => DEFAULT_TOKEN_TTL,
        s => Duration::from_secs(s),
    };
    if ttl > MAX_TOKEN_TTL {
        return Err(invalid(format!(
            "token TTL {}s is too long: at most 365 days (e.g. --ttl 30d)",
            ttl.as_secs()
        )));
    }
    Ok(ttl)
}

pub(crate) fn random_hex(bytes: usize) -> Result<String, Status> {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Status::internal("no randomness available"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_service(
        &self,
        req: Request<CreateServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        let r = req.into_inner();
        validate::name("service", &r.name).map_err(invalid)?;
        let protocol = validate::protocol(r.protocol, true).map_err(invalid)?;
        validate::port(r.port).map_err(invalid)?;
        let svc = self
            .shared
            .store
            .create_service(&r.name, protocol, r.port, now_unix())
            .await
            .map_err(status)?;
        tracing::info!(service = %svc.name, protocol = protocol.selector_name(), port = svc.port, revision = svc.revision, "service created");
        self.committed().await;
        Ok(Response::new(svc))
    }

    async fn get_service(
        &self,
        req: Request<GetServiceRequest>,
    ) -> Result<Response<ServiceDetail>, Status> {
        let name = req.into_inner().name;
        let service = self.shared.store.get_service(&name).await.map_err(status)?;
        let dataplanes = self
            .dataplane_views(|d| d.kind == DataplaneKind::Sidecar && d.name == name)
            .await?;
        let warnings =
            warnings::for_service(&service, &dataplanes, now_unix(), self.shared.cert_ttl);
        Ok(Response::new(ServiceDetail {
            service: Some(service),
            dataplanes,
            warnings,
        }))
    }

    async fn list_services(
        &self,
        _req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let services = self.shared.store.list_services().await.map_err(status)?;
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn delete_service(
        &self,
        req: Request<DeleteServiceRequest>,
    ) -> Result<Response<DeleteServiceResponse>, Status> {
        let name = req.into_inner().name;
        let revision = self
            .shared
            .store
            .delete_service(&name)
            .await
            .map_err(status)?;
        tracing::info!(service = %name, revision, "service deleted");
        self.committed().await;
        Ok(Response::new(DeleteServiceResponse { revision }))
    }

    async fn set_protocol(
        &self,
        req: Request<SetProtocolRequest>,
    ) -> Result<Response<Service>, Status> {
        let r = req.into_inner();
        let protocol = validate::protocol(r.protocol, false).map_err(invalid)?;
        let svc = self
            .shared
            .store
            .set_protocol(&r.name, protocol)
            .await
            .map_err(status)?;
        tracing::info!(service = %svc.name, protocol = protocol.selector_name(), revision = svc.revision, "protocol selector set");
        self.committed().await;
        Ok(Response::new(svc))
    }

    async fn create_route(
        &self,
        req: Request<CreateRouteRequest>,
    ) -> Result<Response<Route>, Status> {
        let r = req.into_inner();
        let route = Route {
            host: validate::route_host(&r.host).map_err(invalid)?,
            path_prefix: validate::path_prefix(&r.path_prefix).map_err(invalid)?,
            service: r.service,
            rewrite_host: validate::rewrite_host(&r.rewrite_host).map_err(invalid)?,
            revision: 0,
            prefer_region: r.prefer_region,
        };
        validate::name("service", &route.service).map_err(invalid)?;
        validate::region(&route.prefer_region, "--prefer-region").map_err(invalid)?;
        let route = self
            .shared
            .store
            .create_route(route)
            .await
            .map_err(status)?;
        tracing::info!(host = %route.host, prefix = %route.path_prefix, service = %route.service, prefer_region = %route.prefer_region, "route created");
        self.committed().await;
        Ok(Response::new(route))
    }

    async fn list_routes(
        &self,
        _req: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesResponse>, Status> {
        let routes = self.shared.store.list_routes().await.map_err(status)?;
        Ok(Response::new(ListRoutesResponse { routes }))
    }

    async fn delete_route(
        &self,
        req: Request<DeleteRouteRequest>,
    ) -> Result<Response<DeleteRouteResponse>, Status> {
        let r = req.into_inner();
        let host = validate::route_host(&r.host).map_err(invalid)?;
        let prefix = validate::path_prefix(&r.path_prefix).map_err(invalid)?;
        let revision = self
            .shared
            .store
            .delete_route(&host, &prefix)
            .await
            .map_err(status)?;
        self.committed().await;
        Ok(Response::new(DeleteRouteResponse { revision }))
    }

    async fn list_dataplanes(
        &self,
        req: Request<ListDataplanesRequest>,
    ) -> Result<Response<ListDataplanesResponse>, Status> {
        let filter = req.into_inner().name;
        let dataplanes = self
            .dataplane_views(|d| filter.is_empty() || d.name == filter)
            .await?;
        Ok(Response::new(ListDataplanesResponse {
            dataplanes,
            latest_version: self.shared.hub.current().version,
        }))
    }

    async fn get_dataplane(
        &self,
        req: Request<GetDataplaneRequest>,
    ) -> Result<Response<Dataplane>, Status> {
        let id = req.into_inner().id;
        self.dataplane_views(|d| d.id == id)
            .await?
            .pop()
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no dataplane \"{id}\"; list them with `weftctl dataplane list`"
                ))
            })
    }

    async fn revoke_dataplane(
        &self,
        req: Request<RevokeDataplaneRequest>,
    ) -> Result<Response<RevokeDataplaneResponse>, Status> {
        let revoked = authz::revoke_dataplane(&self.shared, &req.into_inner().id).await?;
        // Publishing the revoked list is what closes its stream and tells its peers.
        self.committed().await;
        Ok(Response::new(revoked))
    }

    async fn create_permission(
        &self,
        req: Request<CreatePermissionRequest>,
    ) -> Result<Response<Permission>, Status> {
        let permission = authz::create_permission(&self.shared, req.into_inner()).await?;
        self.committed().await;
        Ok(Response::new(permission))
    }

    async fn list_permissions(
        &self,
        _req: Request<ListPermissionsRequest>,
    ) -> Result<Response<ListPermissionsResponse>, Status> {
        let permissions = self.shared.store.list_permissions().await.map_err(status)?;
        Ok(Response::new(ListPermissionsResponse { permissions }))
    }

    async fn delete_permission(
        &self,
        req: Request<DeletePermissionRequest>,
    ) -> Result<Response<DeletePermissionResponse>, Status> {
        let id = req.into_inner().id;
        let revision = self
            .shared
            .store
            .delete_permission(id.trim())
            .await
            .map_err(status)?;
        tracing::info!(id = %id, revision, "permission deleted");
        self.committed().await;
        Ok(Response::new(DeletePermissionResponse { revision }))
    }

    async fn check_permission(
        &self,
        req: Request<CheckPermissionRequest>,
    ) -> Result<Response<CheckPermissionResponse>, Status> {
        Ok(Response::new(
            authz::check_permission(&self.shared, req.into_inner()).await?,
        ))
    }

    async fn get_mesh(&self, _req: Request<GetMeshRequest>) -> Result<Response<MeshInfo>, Status> {
        Ok(Response::new(authz::mesh_info(&self.shared).await?))
    }

    async fn set_default_policy(
        &self,
        req: Request<SetDefaultPolicyRequest>,
    ) -> Result<Response<MeshInfo>, Status> {
        authz::set_default_policy(&self.shared, req.into_inner().default_policy).await?;
        self.committed().await;
        Ok(Response::new(authz::mesh_info(&self.shared).await?))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let r = req.into_inner();
        let ttl = token_ttl(r.ttl_seconds)?;
        let now = now_unix();
        let mut record = TokenRecord {
            id: format!("tok-{}", random_hex(8)?),
            kind: TokenKind::Viewer,
            name: r.name.clone(),
            created_at: now,
            expires_at: now.saturating_add(ttl.as_secs() as i64),
            revoked_at: 0,
        };
        let token = if r.viewer {
            if r.kind != DataplaneKind::Unspecified as i32 {
                return Err(invalid(
                    "a viewer token is for a person or tool, not a dataplane: leave kind unset (weftctl: --viewer NAME alone)".into(),
                ));
            }
            validate::name("viewer", &r.name).map_err(invalid)?;
            auth::viewer_token(&record.id, &self.shared.token_key)
        } else {
            let (kind, claims) = self.bootstrap_claims(&r, &record).await?;
            record.kind = TokenKind::Bootstrap(kind);
            claims.sign(&self.shared.token_key)
        };
        self.shared
            .store
            .create_token(record.clone())
            .await
            .map_err(status)?;
        tracing::info!(token = %record.id, kind = ?record.kind, name = %record.name, "token created");
        Ok(Response::new(CreateTokenResponse {
            info: Some(token_info(&record)),
            token,
        }))
    }

    async fn list_tokens(
        &self,
        _req: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let tokens = self.shared.store.list_tokens().await.map_err(status)?;
        Ok(Response::new(ListTokensResponse {
            tokens: tokens.iter().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<TokenInfo>, Status> {
        let id = req.into_inner().id;
        let t = self
            .shared
            .store
            .revoke_token(&id, now_unix())
            .await
            .map_err(status)?;
        tracing::info!(token = %t.id, "bootstrap token revoked");
        Ok(Response::new(token_info(&t)))
    }

    async fn get_traffic_stats(
        &self,
        req: Request<GetTrafficStatsRequest>,
    ) -> Result<Response<TrafficStats>, Status> {
        let r = req.into_inner();
        if r.window_seconds > crate::traffic::MAX_WINDOW_SECONDS {
            return Err(invalid(format!(
                "window of {} s is longer than the {} s kept; ask for at most {} s",
                r.window_seconds,
                crate::traffic::MAX_WINDOW_SECONDS,
                crate::traffic::MAX_WINDOW_SECONDS
            )));
        }
        let service = (!r.service.is_empty()).then_some(r.service.as_str());
        if let Some(name) = service {
            // A service that exists but carried nothing has empty figures; a typo is
            // an error that says so.
            self.shared.store.get_service(name).await.map_err(status)?;
        }
        // Each replica's window holds the reports of the streams it holds.
        let connected = self.shared.registry.connected_here();
        let stats = self.shared.traffic.stats(
            service,
            r.window_seconds,
            now_unix(),
            u32::try_from(connected).unwrap_or(u32::MAX),
        );
        Ok(Response::new(stats))
    }

    async fn get_control_plane_status(
        &self,
        _req: Request<GetControlPlaneStatusRequest>,
    ) -> Result<Response<ControlPlaneStatus>, Status> {
        let store = &self.shared.store;
        let lease = store.lease().await.map_err(status)?;
        let liveness = store.liveness().await.map_err(status)?;
        let held = lease.expires_ms >= lease.now_ms && !lease.holder.is_empty();
        let me = &self.shared.leader.replica().id;
        let replicas = liveness
            .replicas
            .iter()
            .map(|r| ControlPlaneReplica {
                id: r.id.clone(),
                address: r.address.clone(),
                started_at: r.started_at_ms / 1000,
                heartbeat_age_ms: (liveness.now_ms - r.heartbeat_ms).max(0),
                alive: replica_alive(r, liveness.now_ms),
                leader: held && r.id == lease.holder,
                answering: &r.id == me,
            })
            .collect();
        Ok(Response::new(ControlPlaneStatus {
            replicas,
            leader_id: if held { lease.holder } else { String::new() },
            epoch: lease.epoch,
            store: self.shared.store_shown.clone(),
            lease_remaining_ms: if held {
                lease.expires_ms - lease.now_ms
            } else {
                0
            },
        }))
    }

    async fn get_ca(&self, _req: Request<GetCaRequest>) -> Result<Response<CaInfo>, Status> {
        Ok(Response::new(self.ca_info().await?))
    }

    async fn rotate_ca(&self, _req: Request<RotateCaRequest>) -> Result<Response<CaInfo>, Status> {
        self.shared.ca.begin_rotation().await.map_err(ca_status)?;
        // Publishing the new bundle is what the rotation task then waits on.
        self.committed().await;
        Ok(Response::new(self.ca_info().await?))
    }

    async fn retire_ca_root(
        &self,
        req: Request<RetireCaRootRequest>,
    ) -> Result<Response<CaInfo>, Status> {
        let r = req.into_inner();
        if r.sha256.trim().is_empty() {
            return Err(invalid(
                "name the root to retire by its sha256 (see `weftctl ca show`)".into(),
            ));
        }
        self.shared
            .ca
            .retire(&r.sha256, r.force, self.shared.cert_ttl)
            .await
            .map_err(ca_status)?;
        self.committed().await;
        Ok(Response::new(self.ca_info().await?))
    }
}

/// CA errors as statuses: refusals keep their message; failures are logged in full.
fn ca_status(e: CaError) -> Status {
    match e {
        CaError::Store(e) => status(e),
        CaError::Precondition(m) => Status::failed_precondition(m),
        CaError::NotFound(m) => Status::not_found(m),
        other => {
            tracing::error!(error = %other, "CA operation failed");
            Status::internal(format!(
                "the CA operation failed: {other}; see the weft-cp log"
            ))
        }
    }
}

impl AdminService {
    /// Stored dataplanes matching `keep`, merged with their live state, each with the
    /// latest config version relevant to its kind.
    ///
    /// The snapshot is read only after every acknowledgement: a dataplane can only ack a
    /// version the hub published earlier, so "latest" is never older than what it
    /// acked. A dataplane that took a full config after a change it does not receive
    /// (a sidecar after a route change) acks a version newer than the last one relevant
    /// to it; it holds everything relevant, so that ack counts as the latest.
    async fn dataplane_views(
        &self,
        keep: impl Fn(&DataplaneRecord) -> bool,
    ) -> Result<Vec<Dataplane>, Status> {
        let records = self.shared.store.list_dataplanes().await.map_err(status)?;
        let liveness = self.shared.store.liveness().await.map_err(status)?;
        let mut views: Vec<Dataplane> = records
            .iter()
            .filter(|d| keep(d))
            .map(|d| self.shared.registry.view(d, &liveness))
            .collect();
        let snap = self.shared.hub.current();
        for v in &mut views {
            v.latest_version = snap.relevant_version(v.kind()).max(v.acked_version);
        }
        Ok(views)
    }
}

impl AdminService {
    /// What a bootstrap token for `r` grants, checked: the identity must be valid and,
    /// for a sidecar, its service must exist.
    async fn bootstrap_claims(
        &self,
        r: &CreateTokenRequest,
        record: &TokenRecord,
    ) -> Result<(DataplaneKind, BootstrapClaims), Status> {
        let (kind, id_kind) = token_kind(r.kind)?;
        validate::name(kind.segment(), &r.name).map_err(invalid)?;
        if kind == DataplaneKind::Sidecar {
            self.shared
                .store
                .get_service(&r.name)
                .await
                .map_err(status)?;
        }
        let claims = BootstrapClaims {
            id: record.id.clone(),
            kind: id_kind,
            name: record.name.clone(),
            expires_at: record.expires_at,
            ca_sha256: self.shared.ca.current().signing.sha256_hex(),
            trust_domain: self.shared.ca.trust_domain().as_str().to_owned(),
        };
        Ok((kind, claims))
    }

    /// The CA as `GetCa` shows it: roots, their retirement times, and rotation progress.
    async fn ca_info(&self) -> Result<CaInfo, Status> {
        let state = self.shared.ca.current();
        let ttl = i64::try_from(self.shared.cert_ttl.as_secs()).unwrap_or(i64::MAX);
        let pending = state.pending().map(|p| p.sha256.clone());
        let roots = state
            .roots
            .iter()
            .map(|r| {
                let (nb, na) = x509_parser::pem::parse_x509_pem(r.cert_pem.as_bytes())
                    .ok()
                    .and_then(|(_, pem)| {
                        pem.parse_x509().ok().map(|c| {
                            (
                                c.validity().not_before.timestamp(),
                                c.validity().not_after.timestamp(),
                            )
                        })
                    })
                    .unwrap_or((0, 0));
                let ended = state.signing_ended_at(&r.sha256);
                CaRoot {
                    cert_pem: r.cert_pem.clone(),
                    sha256: r.sha256.clone(),
                    not_before: nb,
                    not_after: na,
                    signing: r.signing,
                    signing_ended_at: ended,
                    retirable_at: if ended > 0 {
                        ended.saturating_add(ttl)
                    } else {
                        0
                    },
                }
            })
            .collect();
        let rotation = match (pending, state.last_switch()) {
            (Some(target), _) => {
                let (acked, connected) = self
                    .shared
                    .registry
                    .acked_count(state.bundle_revision)
                    .await
                    .map_err(status)?;
                CaRotation {
                    phase: "distributing".into(),
                    new_root_sha256: target,
                    acked_dataplanes: u32::try_from(acked).unwrap_or(u32::MAX),
                    connected_dataplanes: u32::try_from(connected).unwrap_or(u32::MAX),
                    summary: format!(
                        "distributing ({acked} of {connected} connected dataplanes acked the new bundle); \
                         signing switches once all have"
                    ),
                    ..Default::default()
                }
            }
            (None, Some(switched_at)) => {
                let retirable_at = switched_at.saturating_add(ttl);
                CaRotation {
                    phase: "switched".into(),
                    new_root_sha256: state
                        .signing_root()
                        .map(|r| r.sha256.clone())
                        .unwrap_or_default(),
                    switched_at,
                    retirable_at,
                    summary: format!(
                        "switched at {}; old roots can be retired from {} (`weftctl ca retire SHA256`)",
                        rfc3339(switched_at),
                        rfc3339(retirable_at)
                    ),
                    ..Default::default()
                }
            }
            (None, None) => CaRotation {
                phase: "idle".into(),
                summary: "idle".into(),
                ..Default::default()
            },
        };
        Ok(CaInfo {
            trust_domain: self.shared.ca.trust_domain().as_str().to_owned(),
            roots,
            cert_ttl_seconds: self.shared.cert_ttl.as_secs(),
            rotation: Some(rotation),
        })
    }
}
