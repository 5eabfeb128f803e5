//! Outbound listeners: for every service with a port, one listener on
//! `<outbound-ip>:<port>`; each accepted connection is carried untouched through a
//! tunnel stream to an endpoint of that service. The outbound never parses what it
//! carries: translation happens only at the last hop.

pub mod attempts;
pub mod balance;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::config::MeshConfig;
use crate::metrics::{ActiveGuard, DirLabel, Metrics, ResultLabel};
use crate::serve::{self, Drain};
use crate::tunnel::client::{Target, TunnelError, TunnelPool};
use attempts::Attempts;
use balance::Balancer;

/// Owns the outbound listeners and reconciles them with the config.
pub struct Outbound {
    ip: IpAddr,
    pool: Arc<TunnelPool>,
    balancer: Arc<Balancer>,
    config: watch::Receiver<Arc<MeshConfig>>,
    metrics: Arc<Metrics>,
    drain: Drain,
    /// Open connections allowed per listener.
    max_connections: usize,
    /// Sockets bound while validating a config, handed to the listener when it applies.
    prebound: Mutex<HashMap<u16, std::net::TcpListener>>,
    listeners: Mutex<HashMap<String, (u16, JoinHandle<()>)>>,
}

impl Outbound {
    pub fn new(
        ip: IpAddr,
        pool: Arc<TunnelPool>,
        balancer: Arc<Balancer>,
        config: watch::Receiver<Arc<MeshConfig>>,
        metrics: Arc<Metrics>,
        drain: Drain,
        max_connections: usize,
    ) -> Arc<Self> {
        Arc::new(Outbound {
            ip,
            pool,
            balancer,
            config,
            metrics,
            drain,
            max_connections,
            prebound: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
        })
    }

    fn listening_ports(&self) -> HashSet<u16> {
        self.listeners.lock().values().map(|(p, _)| *p).collect()
    }

    /// Checks that every port a candidate config needs can be bound (binding it now and
    /// keeping the socket), so an update that cannot apply is nacked with the reason.
    pub fn validate(&self, candidate: &MeshConfig) -> Result<(), String> {
        let listening = self.listening_ports();
        let mut prebound = self.prebound.lock();
        for svc in candidate.services.values() {
            if svc.port == 0 || listening.contains(&svc.port) || prebound.contains_key(&svc.port) {
                continue;
            }
            let addr = SocketAddr::new(self.ip, svc.port);
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                format!(
                    "cannot listen on {addr} for service {}: {e}; free the port or change it with `weftctl service create`",
                    svc.name
                )
            })?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            prebound.insert(svc.port, l);
        }
        Ok(())
    }

    /// Opens listeners for new service ports, closes those of removed services.
    pub fn reconcile(self: &Arc<Self>, config: &MeshConfig) {
        let mut listeners = self.listeners.lock();
        let wanted: HashMap<&str, u16> = config
            .services
            .values()
            .filter(|s| s.port != 0)
            .map(|s| (s.name.as_str(), s.port))
            .collect();
        listeners.retain(|name, (port, task)| {
            let keep = wanted.get(name.as_str()) == Some(port);
            if !keep {
                tracing::info!(service = %name, port = *port, "outbound listener closed");
                task.abort();
            }
            keep
        });
        for (name, port) in wanted {
            if listeners.contains_key(name) {
                continue;
            }
            let std_listener = self.prebound.lock().remove(&port);
            let std_listener = match std_listener {
                Some(l) => l,
                None => match std::net::TcpListener::bind(SocketAddr::new(self.ip, port))
                    .and_then(|l| l.set_nonblocking(true).map(|_| l))
                {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(service = name, port, error = %e, "cannot open outbound listener");
                        continue;
                    }
                },
            };
            let listener = match tokio::net::TcpListener::from_std(std_listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(service = name, port, error = %e, "cannot open outbound listener");
                    continue;
                }
            };
            tracing::info!(service = name, addr = %SocketAddr::new(self.ip, port), "outbound listener open");
            let this = self.clone();
            let service: Arc<str> = name.into();
            let task = tokio::spawn(serve::accept(
                serve::Listener {
                    listener,
                    direction: "outbound",
                    max_connections: self.max_connections,
                },
                self.metrics.clone(),
                self.drain.clone(),
                move |tcp, _peer, _drain| {
                    let (this, service) = (this.clone(), service.clone());
                    async move { this.carry(tcp, &service).await }
                },
            ));
            listeners.insert(name.to_owned(), (port, task));
        }
        self.balancer.follow(config);
        let addrs: HashSet<String> = config
            .endpoints
            .values()
            .flat_map(|e| [e.address.clone(), e.ingress_address.clone()])
            .collect();
        self.pool.retain_addresses(&addrs);
    }

    /// Stops every listener (shutdown: stop accepting, let open connections finish).
    pub fn close_all(&self) {
        for (_, (_, task)) in self.listeners.lock().drain() {
            task.abort();
        }
    }

    /// Carries one accepted connection to an endpoint of `service`.
    async fn carry(&self, mut client: TcpStream, service: &str) {
        let count = |result| {
            self.metrics
                .connections
                .get_or_create(&ResultLabel {
                    direction: "outbound",
                    result,
                })
                .inc();
        };
        let config = self.config.borrow().clone();
        // Nothing is read from the client before a tunnel stream is open, so every
        // failure before that can be retried, on another endpoint or, within the retry
        // budget, on the same one once it is back.
        let mut attempts = Attempts::new(&self.balancer, &config, service, None);
        while let Some(ep) = attempts.next().await {
            // A sidecar's network may reach only its own region: other regions are
            // reached through this region's ingress when there is one (looked up only
            // for those, not on every same-region connection).
            let region = self.balancer.region();
            let egress = (ep.region != region)
                .then(|| config.region_ingress(region))
                .flatten();
            let target = Target::for_endpoint(ep, service, region, egress);
            let inflight = self.balancer.start(&ep.id);
            match self.pool.open(&target).await {
                Ok(mut tunnel) => {
                    attempts.succeeded(ep);
                    count("tunneled");
                    self.metrics.tunnel_pool.set(self.pool.size() as i64);
                    let _active = ActiveGuard::new(&self.metrics, "outbound");
                    let r = crate::tunnel::splice::splice(&mut client, &mut tunnel).await;
                    if let Ok((a, b)) = r {
                        self.metrics
                            .bytes
                            .get_or_create(&DirLabel {
                                direction: "outbound",
                            })
                            .inc_by(a + b);
                    }
                    drop(inflight);
                    return;
                }
                Err(TunnelError::Refused { status, .. })
                    if status == http::StatusCode::FORBIDDEN =>
                {
                    // A permission refusal: no other endpoint would decide otherwise.
                    count("denied");
                    tracing::info!(service, "the destination refused this service's identity");
                    return;
                }
                Err(e) if e.unprocessed() => {
                    tracing::debug!(service, endpoint = %ep.address, error = %e, "stream refused unprocessed; trying again");
                    attempts.skipped(ep);
                }
                Err(e) if e.answered() => {
                    tracing::warn!(service, endpoint = %ep.address, error = %e, "endpoint refused; trying another");
                    attempts.refused(ep);
                }
                Err(e) => {
                    tracing::warn!(service, endpoint = %ep.address, error = %e, "endpoint unreachable; trying another");
                    if attempts.unreachable(ep) {
                        self.pool.probe(&target);
                    }
                }
            }
        }
        count("no_endpoint");
        tracing::warn!(
            service,
            tried = attempts.made(),
            "no endpoint could take the connection"
        );
        // Nothing was sent: closing tells the client to retry or fail.
    }
}
