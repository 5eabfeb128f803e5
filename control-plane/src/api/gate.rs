//! The admin API's door: every call needs a token ([`super::auth::Authenticator`]),
//! and what a token may call is decided here, by method name, before the call reaches
//! [`super::admin::AdminService`].
//!
//! The admin token may call everything. A viewer token may call the methods listed in
//! [`READ_ONLY`] and nothing else: a method is a write unless it is listed, so a new
//! RPC stays admin-only until someone decides it only reads.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use super::auth::{AuthError, Authenticator, Principal};

/// Admin methods that only read, which viewer tokens may call.
pub const READ_ONLY: &[&str] = &[
    "GetService",
    "ListServices",
    "ListRoutes",
    "ListDataplanes",
    "GetDataplane",
    "ListTokens",
    "GetCa",
    "GetTrafficStats",
    "GetControlPlaneStatus",
    "ListPermissions",
    "CheckPermission",
    "GetMesh",
];

/// Admin methods that change something (or hand out secrets): admin token only. Every
/// method is in exactly one of the two lists (a unit test checks it against the proto).
pub const WRITES: &[&str] = &[
    "CreateService",
    "DeleteService",
    "SetProtocol",
    "CreateRoute",
    "DeleteRoute",
    "CreateToken",
    "RevokeToken",
    "RotateCa",
    "RetireCaRoot",
    "RevokeDataplane",
    "CreatePermission",
    "DeletePermission",
    "SetDefaultPolicy",
];

/// Whether `principal` may call the admin method at `path` (`/weft.v1.Admin/<Method>`).
pub fn allowed(principal: &Principal, path: &str) -> bool {
    match principal {
        Principal::Admin => true,
        Principal::Viewer { .. } => path
            .rsplit_once('/')
            .is_some_and(|(_, method)| READ_ONLY.contains(&method)),
    }
}

fn refusal(e: AuthError) -> Status {
    match e {
        AuthError::Store(e) => super::status(e),
        other => Status::unauthenticated(other.to_string()),
    }
}

/// Wraps the admin service: authenticates, checks the method, then calls it.
#[derive(Clone)]
pub struct AdminGate<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> AdminGate<S> {
    pub fn new(inner: S, auth: Arc<Authenticator>) -> Self {
        AdminGate { inner, auth }
    }
}

impl<S: NamedService> NamedService for AdminGate<S> {
    const NAME: &'static str = S::NAME;
}

type GateFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for AdminGate<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = GateFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone is not ready; the instance that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let principal = match auth.authenticate_bearer(header).await {
                Ok(p) => p,
                Err(e) => return Ok(refusal(e).into_http()),
            };
            if !allowed(&principal, req.uri().path()) {
                let method = req.uri().path().rsplit('/').next().unwrap_or_default();
                tracing::info!(caller = %principal.label(), method, "admin call refused: read-only token");
                return Ok(Status::permission_denied(format!(
                    "{method} changes the mesh and a viewer token only reads; use the admin token (<data-dir>/admin.token)"
                ))
                .into_http());
            }
            inner.call(req).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn every_admin_method_is_either_read_only_or_a_write() {
        let set =
            prost_types::FileDescriptorSet::decode(weft_proto::v1::FILE_DESCRIPTOR_SET).unwrap();
        let admin = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == "Admin")
            .unwrap();
        let mut methods: Vec<&str> = admin.method.iter().map(|m| m.name()).collect();
        methods.sort_unstable();
        let mut listed: Vec<&str> = READ_ONLY.iter().chain(WRITES).copied().collect();
        listed.sort_unstable();
        assert_eq!(
            methods, listed,
            "classify every Admin method in READ_ONLY or WRITES (api/gate.rs)"
        );
    }

    #[test]
    fn viewers_may_only_read() {
        let viewer = Principal::Viewer {
            token_id: "tok-1".into(),
            name: "ops".into(),
        };
        assert!(allowed(&viewer, "/weft.v1.Admin/ListServices"));
        assert!(allowed(&viewer, "/weft.v1.Admin/GetTrafficStats"));
        assert!(!allowed(&viewer, "/weft.v1.Admin/CreateToken"));
        assert!(!allowed(&viewer, "/weft.v1.Admin/SomethingNew"));
        assert!(!allowed(&viewer, "ListServices"));
        assert!(allowed(&Principal::Admin, "/weft.v1.Admin/RotateCa"));
    }
}
