//! Enforcement of traffic permissions at the inbound, against the caller's verified
//! SPIFFE id, and of the revoked-certificate list in every mesh TLS handshake.
//!
//! The decisions about this sidecar's service (on its app's port) are precomputed with
//! the policy crate's one decision function whenever the config's permissions or
//! default policy change ([`weft_policy::Policy::for_destination`]); a check is then the
//! caller's identity plus one hash lookup. Every tunnel stream and every request of a
//! mesh HTTP connection is checked, so a change applies to new streams and requests at
//! once; a stream already admitted (a spliced TCP connection, a WebSocket) runs on.
//!
//! Each decision is counted in `weft_authz_decisions_total{source,destination,decision}`;
//! denials and audits (allowed, but would have been denied) are logged on the
//! `weft::authz` target, naming the rule or default that decided.

use std::sync::Arc;

use tokio::sync::watch;
use weft_certs::{Revocations, SpiffeId};
use weft_policy::{Caller, DestinationPolicy, Outcome};

use crate::control::config::{DefaultPolicyEntry, MeshConfig, PermissionEntry};
use crate::errors::{MeshError, Rejection};
use crate::metrics::{AuthzLabels, Metrics};

/// The permissions in force for one service.
pub struct Authz {
    service: String,
    /// Certificates revoked by the control plane (shared with the mesh TLS configs).
    revoked: Arc<Revocations>,
    /// This dataplane's trust domain: callers of any other are foreign.
    trust_domain: String,
    table: watch::Receiver<Arc<DestinationPolicy>>,
    metrics: Arc<Metrics>,
}

/// What the decisions are computed from, to skip recomputing on other changes.
type Inputs = (
    std::collections::BTreeMap<String, PermissionEntry>,
    DefaultPolicyEntry,
);

fn inputs(c: &MeshConfig) -> Inputs {
    (c.permissions.clone(), c.default_policy)
}

impl Authz {
    /// The permissions for calls to `service` on `app_port`, following `config` (call
    /// from within a runtime: it spawns the follower).
    pub fn new(
        service: &str,
        app_port: u16,
        own: &SpiffeId,
        mut config: watch::Receiver<Arc<MeshConfig>>,
        revoked: Arc<Revocations>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let owned = service.to_owned();
        let build =
            move |c: &MeshConfig| Arc::new(c.policy().for_destination(&owned, Some(app_port)));
        let (first, mut seen) = {
            let c = config.borrow_and_update();
            (build(&c), inputs(&c))
        };
        let (tx, table) = watch::channel(first);
        let follow_service = service.to_owned();
        tokio::spawn(async move {
            while config.changed().await.is_ok() {
                let next = {
                    let c = config.borrow_and_update();
                    let now = inputs(&c);
                    (now != seen).then(|| {
                        seen = now;
                        (c.permissions.len(), build(&c))
                    })
                };
                if let Some((rules, table)) = next {
                    tracing::info!(target: "weft::authz", service = %follow_service, rules, "permissions updated");
                    if tx.send(table).is_err() {
                        return;
                    }
                }
            }
        });
        Arc::new(Authz {
            service: service.to_owned(),
            revoked,
            trust_domain: own.trust_domain().to_owned(),
            table,
            metrics,
        })
    }

    /// Whether `caller`, on a connection opened with the certificate of `serial`, may
    /// reach this service now: counted, logged when denied or audited, and refused with
    /// `WEFT-10` (403, gRPC 7) naming the deciding rule.
    pub fn admit(&self, caller: &SpiffeId, serial: &str) -> Result<(), Rejection> {
        let who = Caller::of(caller, &self.trust_domain);
        if self.revoked.is_revoked(serial) {
            let source = who.label();
            self.count(&source, "deny");
            tracing::info!(target: "weft::authz", decision = "deny", source = %source, destination = %self.service, serial, "certificate revoked");
            return Err(Rejection::new(
                MeshError::PermissionDenied,
                format!(
                    "{source} may not call {}: its certificate was revoked",
                    self.service
                ),
            ));
        }
        let table = self.table.borrow();
        let decision = table.decide(who);
        let source = who.label();
        self.count(&source, decision.outcome.as_str());
        match decision.outcome {
            Outcome::Allow => Ok(()),
            Outcome::Audit => {
                tracing::info!(target: "weft::authz", decision = "audit", source = %source, destination = %self.service, reason = %decision.reason(), "allowed by an audit rule: would be denied");
                Ok(())
            }
            Outcome::Deny => {
                let reason = decision.reason();
                tracing::info!(target: "weft::authz", decision = "deny", source = %source, destination = %self.service, reason = %reason, "denied");
                Err(Rejection::new(
                    MeshError::PermissionDenied,
                    format!("{source} may not call {}: {reason}", self.service),
                ))
            }
        }
    }
}

impl Authz {
    fn count(&self, source: &str, decision: &'static str) {
        self.metrics
            .authz
            .get_or_create(&AuthzLabels {
                source: source.to_owned(),
                destination: self.service.clone(),
                decision,
            })
            .inc();
    }
}

/// Keeps `revoked` (shared by this dataplane's mesh TLS configs) equal to the revoked
/// certificates of the config (the control plane leaves out those already expired).
pub fn follow_revocations(mut config: watch::Receiver<Arc<MeshConfig>>, revoked: Arc<Revocations>) {
    tokio::spawn(async move {
        loop {
            let serials: Vec<String> = config.borrow_and_update().revoked.keys().cloned().collect();
            if serials.len() != revoked.len() || serials.iter().any(|s| !revoked.is_revoked(s)) {
                tracing::info!(target: "weft::authz", revoked = serials.len(), "revoked certificates updated");
                revoked.replace(serials);
            }
            if config.changed().await.is_err() {
                return;
            }
        }
    });
}
