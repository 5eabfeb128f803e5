//! Outbound listeners: for every service with a port, one listener on
//! `<outbound-ip>:<port>`; each accepted connection is carried untouched through a
//! tunnel stream to an endpoint of that service. The outbound never parses what it
//! carries: translation happens only at the last hop.

pub mod balance;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::config::MeshConfig;
use crate::inbound::splice;
use crate::metrics::{ActiveGuard, DirLabel, Metrics, ResultLabel};
use crate::tunnel::client::{Target, TunnelPool};
use balance::Balancer;

/// Endpoints tried for one connection before giving up.
const MAX_ATTEMPTS: usize = 3;

/// Owns the outbound listeners and reconciles them with the config.
pub struct Outbound {
    ip: IpAddr,
    pool: Arc<TunnelPool>,
    balancer: Arc<Balancer>,
    config: watch::Receiver<Arc<MeshConfig>>,
    metrics: Arc<Metrics>,
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
    ) -> Arc<Self> {
        Arc::new(Outbound {
            ip,
            pool,
            balancer,
            config,
            metrics,
            prebound: Mutex::new(HashMap::new()),
            listeners: Mutex::new(HashMap::new()),
        })
    }

    fn listening_ports(&self) -> HashSet<u16> {
        match self.listeners.lock() {
            Ok(l) => l.values().map(|(p, _)| *p).collect(),
            Err(p) => p.into_inner().values().map(|(p, _)| *p).collect(),
        }
    }

    /// Checks that every port a candidate config needs can be bound (binding it now and
    /// keeping the socket), so an update that cannot apply is nacked with the reason.
    pub fn validate(&self, candidate: &MeshConfig) -> Result<(), String> {
        let listening = self.listening_ports();
        let mut prebound = match self.prebound.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
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
        let mut listeners = match self.listeners.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
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
            let std_listener = {
                let mut prebound = match self.prebound.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                prebound.remove(&port)
            };
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
            let service = name.to_owned();
            let task = tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok((tcp, _)) => {
                            let (this, service) = (this.clone(), service.clone());
                            tokio::spawn(async move { this.carry(tcp, &service).await });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "outbound accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            });
            listeners.insert(name.to_owned(), (port, task));
        }
        self.balancer.retain(config);
        let addrs: HashSet<String> = config
            .endpoints
            .values()
            .flat_map(|e| [e.address.clone(), e.ingress_address.clone()])
            .collect();
        self.pool.retain_addresses(&addrs);
    }

    /// Stops every listener (shutdown: stop accepting, let open connections finish).
    pub fn close_all(&self) {
        let mut listeners = match self.listeners.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        for (_, (_, task)) in listeners.drain() {
            task.abort();
        }
    }

    /// Carries one accepted connection to an endpoint of `service`.
    async fn carry(&self, mut client: TcpStream, service: &str) {
        let _ = client.set_nodelay(true);
        let count = |result| {
            self.metrics
                .connections
                .get_or_create(&ResultLabel {
                    direction: "outbound",
                    result,
                })
                .inc();
        };
        let mut tried = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let config = self.config.borrow().clone();
            let Some(ep) = self.balancer.pick(&config, service, &tried, None) else {
                break;
            };
            // A sidecar's network may reach only its own region: other regions are
            // reached through this region's ingress when there is one (looked up only
            // for those, not on every same-region connection).
            let region = self.balancer.region();
            let egress = (ep.region != region)
                .then(|| config.region_ingress(region))
                .flatten();
            let target = Target::for_endpoint(&ep, service, region, egress);
            let inflight = self.balancer.start(&ep.id);
            match self.pool.open(&target).await {
                Ok(mut tunnel) => {
                    self.balancer.succeeded(&ep.address);
                    count("tunneled");
                    self.metrics.tunnel_pool.set(self.pool.size() as i64);
                    let _active = ActiveGuard::new(&self.metrics, "outbound");
                    let r = splice(&mut client, &mut tunnel).await;
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
                Err(e) => {
                    tracing::warn!(service, endpoint = %ep.address, error = %e, "endpoint failed; trying another");
                    self.balancer.eject(&ep.address);
                    tried.push(ep.id);
                }
            }
        }
        count("no_endpoint");
        tracing::warn!(
            service,
            tried = tried.len(),
            "no endpoint could take the connection"
        );
        // Nothing was sent: closing tells the client to retry or fail.
    }
}
