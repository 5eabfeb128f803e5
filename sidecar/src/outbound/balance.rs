//! Choosing an endpoint: healthy endpoints in the region a gateway route prefers first
//! (when it names one), then in the caller's region, then in any region; power of two
//! choices on in-flight connections; an endpoint that refused is ejected for a while
//! (doubling while it keeps refusing).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::control::config::{EndpointEntry, MeshConfig};

const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(60);

struct Ejection {
    until: Instant,
    next: Duration,
}

/// Per-endpoint load and ejection state.
pub struct Balancer {
    region: String,
    inflight: DashMap<String, Arc<AtomicUsize>>,
    ejected: DashMap<String, Ejection>,
}

/// Holds one unit of in-flight load on an endpoint while alive.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub fn new(region: &str) -> Arc<Self> {
        Arc::new(Balancer {
            region: region.to_owned(),
            inflight: DashMap::new(),
            ejected: DashMap::new(),
        })
    }

    fn load(&self, id: &str) -> usize {
        self.inflight
            .get(id)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn is_ejected(&self, addr: &str, now: Instant) -> bool {
        self.ejected.get(addr).is_some_and(|e| e.until > now)
    }

    /// The caller's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Picks an endpoint of `service`, skipping `exclude` (ids already tried). Among
    /// the healthy, non-ejected endpoints: those in `prefer_region` (a route's
    /// preference; `None` or empty for none) if there are any, else those in the
    /// caller's region if there are any, else all of them.
    pub fn pick<'a>(
        &self,
        config: &'a MeshConfig,
        service: &str,
        exclude: &[String],
        prefer_region: Option<&str>,
    ) -> Option<&'a EndpointEntry> {
        let now = Instant::now();
        let usable = |e: &&'a EndpointEntry| {
            e.service == service
                && e.healthy
                && !exclude.contains(&e.id)
                && !self.is_ejected(&e.address, now)
        };
        let eps = &config.endpoints;
        let in_region = |e: &&'a EndpointEntry, region: &str| usable(e) && e.region == region;
        let preferred = prefer_region.filter(|r| !r.is_empty());
        preferred
            .and_then(|r| self.two_choices(|| eps.values().filter(move |e| in_region(e, r))))
            .or_else(|| {
                let own = self.region.as_str();
                self.two_choices(|| eps.values().filter(move |e| in_region(e, own)))
            })
            .or_else(|| self.two_choices(|| eps.values().filter(usable)))
    }

    /// Power of two choices among `candidates` (called again to walk them: nothing is
    /// collected, since this runs for every request and connection).
    fn two_choices<'a, I>(&self, candidates: impl Fn() -> I) -> Option<&'a EndpointEntry>
    where
        I: Iterator<Item = &'a EndpointEntry>,
    {
        match candidates().count() {
            0 => None,
            1 => candidates().next(),
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (candidates().nth(a)?, candidates().nth(b)?);
                Some(if self.load(&eb.id) < self.load(&ea.id) {
                    eb
                } else {
                    ea
                })
            }
        }
    }

    /// Counts a connection to `id` until the guard drops.
    pub fn start(&self, id: &str) -> InFlight {
        // A read lock and no allocation for endpoints seen before (every request).
        let c = match self.inflight.get(id) {
            Some(c) => c.clone(),
            None => self.inflight.entry(id.to_owned()).or_default().clone(),
        };
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }

    /// The endpoint at `addr` refused: keep it out for a while. Failures while it is
    /// already out (e.g. every stream of one broken connection failing at once) do not
    /// lengthen the ejection; only failing again after it came back does.
    pub fn eject(&self, addr: &str) {
        let now = Instant::now();
        let mut e = self.ejected.entry(addr.to_owned()).or_insert(Ejection {
            until: now,
            next: BASE_EJECTION,
        });
        if e.until > now {
            return;
        }
        e.until = now + e.next;
        e.next = (e.next * 2).min(MAX_EJECTION);
        tracing::info!(endpoint = addr, for_ = ?e.until.duration_since(now), "endpoint ejected");
    }

    /// The endpoint at `addr` worked: forget past refusals.
    pub fn succeeded(&self, addr: &str) {
        self.ejected.remove(addr);
    }

    /// Forgets state of endpoints no longer in the config.
    pub fn retain(&self, config: &MeshConfig) {
        self.inflight
            .retain(|id, c| config.endpoints.contains_key(id) || c.load(Ordering::Relaxed) > 0);
        self.ejected
            .retain(|addr, _| config.endpoints.values().any(|e| &e.address == addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, region: &str, healthy: bool) -> EndpointEntry {
        EndpointEntry {
            id: id.into(),
            service: "web".into(),
            address: format!("{id}:15008"),
            region: region.into(),
            healthy,
            identity: "spiffe://weft.local/service/web".into(),
            ingress_address: String::new(),
            sni: String::new(),
        }
    }

    fn config(eps: Vec<EndpointEntry>) -> MeshConfig {
        let mut c = MeshConfig::default();
        for e in eps {
            c.endpoints.insert(e.id.clone(), e);
        }
        c
    }

    #[test]
    fn same_region_first_then_failover() {
        let b = Balancer::new("eu");
        let c = config(vec![ep("a", "eu", true), ep("b", "us", true)]);
        for _ in 0..50 {
            assert_eq!(b.pick(&c, "web", &[], None).unwrap().id, "a");
        }
        b.eject("a:15008");
        assert_eq!(b.pick(&c, "web", &[], None).unwrap().id, "b");
        let c = config(vec![ep("a", "eu", false), ep("b", "us", true)]);
        let b = Balancer::new("eu");
        assert_eq!(b.pick(&c, "web", &[], None).unwrap().id, "b");
        assert!(b.pick(&c, "web", &["b".into()], None).is_none());
    }

    #[test]
    fn a_preferred_region_wins_over_the_own_region_then_falls_back() {
        let b = Balancer::new("eu");
        let c = config(vec![
            ep("a", "eu", true),
            ep("b", "us", true),
            ep("c", "us", true),
        ]);
        let us = Some("us");
        for _ in 0..50 {
            let id = b.pick(&c, "web", &[], us).unwrap().id.clone();
            assert!(id == "b" || id == "c", "preferred region first, got {id}");
        }
        // Empty or absent preference: the caller's own region, as before.
        assert_eq!(b.pick(&c, "web", &[], Some("")).unwrap().id, "a");
        assert_eq!(b.pick(&c, "web", &[], None).unwrap().id, "a");
        // A preferred region with no endpoint at all: the usual order.
        assert_eq!(b.pick(&c, "web", &[], Some("ap")).unwrap().id, "a");

        // The preferred region's endpoints are unhealthy, tried or ejected: the usual
        // order again (own region first), never nothing.
        let sick = config(vec![
            ep("a", "eu", true),
            ep("b", "us", false),
            ep("c", "us", true),
        ]);
        assert_eq!(b.pick(&sick, "web", &[], us).unwrap().id, "c");
        assert_eq!(b.pick(&sick, "web", &["c".into()], us).unwrap().id, "a");
        b.eject("c:15008");
        assert_eq!(b.pick(&sick, "web", &[], us).unwrap().id, "a");
        // With no endpoint in the own region either: any region.
        let far = config(vec![ep("d", "ap", true), ep("b", "us", false)]);
        assert_eq!(b.pick(&far, "web", &[], us).unwrap().id, "d");
    }

    #[test]
    fn simultaneous_failures_do_not_stack_ejections() {
        let b = Balancer::new("");
        for _ in 0..4 {
            b.eject("a:15008");
        }
        let e = b.ejected.get("a:15008").unwrap();
        assert_eq!(e.next, BASE_EJECTION * 2, "one ejection, not four");
        assert!(e.until <= Instant::now() + BASE_EJECTION);
    }

    #[test]
    fn least_loaded_of_two_wins() {
        let b = Balancer::new("");
        let c = config(vec![ep("a", "", true), ep("b", "", true)]);
        let _held: Vec<InFlight> = (0..10).map(|_| b.start("a")).collect();
        for _ in 0..50 {
            assert_eq!(b.pick(&c, "web", &[], None).unwrap().id, "b");
        }
    }
}
