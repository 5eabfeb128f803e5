//! Choosing an endpoint: healthy endpoints in the region a gateway route prefers first
//! (when it names one), then in the caller's region, then in any region; power of two
//! choices on in-flight connections.
//!
//! An endpoint that refused is ejected for a while (doubling while it keeps refusing);
//! one that could not be reached is ejected until a probe reaches it again. Ejection
//! never turns a short outage into a long one:
//!
//! - **Panic threshold** (Envoy's healthy panic threshold): when fewer than half of the
//!   candidates are left after ejection, ejection is ignored and all of them are tried,
//!   so ejecting the only endpoint of a service (or most of them) never leaves nothing
//!   to try.
//! - **Ended early**: by any success with the endpoint, by a probe that reaches it, and
//!   by the control plane's word: an endpoint it reports healthy again after reporting it
//!   unhealthy is tried at once.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;

use crate::control::config::{EndpointEntry, MeshConfig};

const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(60);
/// Below this share (in percent) of candidates left after ejection, ejection is ignored.
pub const PANIC_THRESHOLD_PERCENT: usize = 50;
/// First pause of a probe of an unreachable endpoint, doubling up to [`PROBE_MAX_PAUSE`].
const PROBE_FIRST_PAUSE: Duration = Duration::from_millis(100);
const PROBE_MAX_PAUSE: Duration = Duration::from_secs(2);
/// How long a probe keeps an unreachable endpoint ejected by itself; after that the
/// ejection's own time applies and traffic decides again.
const PROBE_FOR: Duration = Duration::from_secs(30);

struct Ejection {
    until: Instant,
    next: Duration,
    /// A probe is checking the endpoint: it stays ejected until the probe ends.
    probing: bool,
}

/// Per-endpoint load and ejection state.
pub struct Balancer {
    region: String,
    inflight: DashMap<String, Arc<AtomicUsize>>,
    ejected: DashMap<String, Ejection>,
    /// Addresses the last config reported unhealthy.
    unhealthy: Mutex<HashSet<String>>,
}

/// Holds one unit of in-flight load on an endpoint while alive.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `d` with jitter: uniformly between half of it and all of it, so callers that failed
/// together do not come back together.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + half.mul_f64(fastrand::f64())
}

impl Balancer {
    pub fn new(region: &str) -> Arc<Self> {
        Arc::new(Balancer {
            region: region.to_owned(),
            inflight: DashMap::new(),
            ejected: DashMap::new(),
            unhealthy: Mutex::new(HashSet::new()),
        })
    }

    fn load(&self, id: &str) -> usize {
        self.inflight
            .get(id)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    fn is_ejected(&self, addr: &str, now: Instant) -> bool {
        self.ejected
            .get(addr)
            .is_some_and(|e| e.probing || e.until > now)
    }

    /// The caller's region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Picks an endpoint of `service`, skipping `exclude` (ids already tried). Among
    /// the healthy endpoints not ejected (all the healthy ones when most are ejected:
    /// the panic threshold): those in `prefer_region` (a route's preference; `None` or
    /// empty for none) if there are any, else those in the caller's region if there are
    /// any, else all of them.
    pub fn pick<'a>(
        &self,
        config: &'a MeshConfig,
        service: &str,
        exclude: &[String],
        prefer_region: Option<&str>,
    ) -> Option<&'a EndpointEntry> {
        let now = Instant::now();
        let candidate =
            |e: &&'a EndpointEntry| e.service == service && e.healthy && !exclude.contains(&e.id);
        let (candidates, ejected) = config
            .endpoints
            .values()
            .filter(candidate)
            .fold((0, 0), |(n, out), e| {
                (n + 1, out + usize::from(self.is_ejected(&e.address, now)))
            });
        let panic = (candidates - ejected) * 100 < candidates * PANIC_THRESHOLD_PERCENT;
        if panic {
            tracing::debug!(
                service,
                candidates,
                ejected,
                "most endpoints ejected: trying them all"
            );
        }
        let usable = |e: &&'a EndpointEntry| {
            candidate(e) && (panic || ejected == 0 || !self.is_ejected(&e.address, now))
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
            probing: false,
        });
        if e.until > now {
            return;
        }
        e.until = now + e.next;
        e.next = (e.next * 2).min(MAX_EJECTION);
        tracing::info!(endpoint = addr, for_ = ?e.until.duration_since(now), "endpoint ejected");
    }

    /// The endpoint at `addr` could not be reached (no connection, or its connection
    /// found dead): ejected like a refusal, and kept out while a probe checks it.
    /// Returns true when no probe checks it yet: the caller starts one with
    /// [`Balancer::probe`], since only it knows how to connect.
    pub fn unreachable(&self, addr: &str) -> bool {
        self.eject(addr);
        self.ejected
            .get_mut(addr)
            .is_some_and(|mut e| !std::mem::replace(&mut e.probing, true))
    }

    /// Checks an unreachable endpoint with `connect` (true: it answered), pausing
    /// between tries, until it answers (which ends its ejection), its ejection ended
    /// otherwise (a success elsewhere, the control plane's word, the endpoint gone), or
    /// [`PROBE_FOR`] passed.
    pub async fn probe<F, Fut>(self: Arc<Self>, addr: String, connect: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        let mut pause = PROBE_FIRST_PAUSE;
        loop {
            tokio::time::sleep(jitter(pause)).await;
            if !self.ejected.get(&addr).is_some_and(|e| e.probing) {
                return;
            }
            if connect().await {
                tracing::info!(endpoint = %addr, "endpoint reachable again; ejection ended");
                self.succeeded(&addr);
                return;
            }
            if started.elapsed() >= PROBE_FOR {
                if let Some(mut e) = self.ejected.get_mut(&addr) {
                    e.probing = false;
                }
                return;
            }
            pause = (pause * 2).min(PROBE_MAX_PAUSE);
        }
    }

    /// The endpoint at `addr` worked: forget past refusals (and stop probing it).
    pub fn succeeded(&self, addr: &str) {
        self.ejected.remove(addr);
    }

    /// Follows a new config: forgets endpoints no longer in it, and ends the ejection
    /// of every endpoint the control plane reports healthy after it reported it
    /// unhealthy (its word comes from the endpoint itself, and is newer than the
    /// failures seen here while it was down).
    pub fn follow(&self, config: &MeshConfig) {
        let now_unhealthy: HashSet<String> = config
            .endpoints
            .values()
            .filter(|e| !e.healthy)
            .map(|e| e.address.clone())
            .collect();
        let was_unhealthy = std::mem::replace(&mut *self.unhealthy.lock(), now_unhealthy);
        for e in config.endpoints.values() {
            if e.healthy
                && was_unhealthy.contains(&e.address)
                && self.ejected.remove(&e.address).is_some()
            {
                tracing::info!(endpoint = %e.address, "the control plane reports the endpoint healthy again; ejection ended");
            }
        }
        self.inflight
            .retain(|id, c| config.endpoints.contains_key(id) || c.load(Ordering::Relaxed) > 0);
        self.ejected
            .retain(|addr, _| config.endpoints.values().any(|e| &e.address == addr));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ep(id: &str, region: &str, healthy: bool) -> EndpointEntry {
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

    pub(crate) fn config(eps: Vec<EndpointEntry>) -> MeshConfig {
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

    #[test]
    fn the_only_endpoint_is_tried_even_when_ejected() {
        let b = Balancer::new("eu");
        let c = config(vec![ep("a", "eu", true)]);
        b.eject("a:15008");
        assert_eq!(b.pick(&c, "web", &[], None).unwrap().id, "a");
        // Tried in this walk already: nothing left.
        assert!(b.pick(&c, "web", &["a".into()], None).is_none());
    }

    #[test]
    fn most_endpoints_ejected_means_all_are_tried() {
        let b = Balancer::new("eu");
        let c = config(vec![
            ep("a", "eu", true),
            ep("b", "eu", true),
            ep("c", "eu", true),
            ep("d", "eu", true),
        ]);
        let picked = |b: &Balancer| {
            (0..200)
                .map(|_| b.pick(&c, "web", &[], None).unwrap().id.clone())
                .collect::<HashSet<_>>()
        };
        // Half ejected: at the threshold, ejection holds.
        b.eject("a:15008");
        b.eject("b:15008");
        assert_eq!(picked(&b), HashSet::from(["c".into(), "d".into()]));
        // Three of four ejected: below it, every endpoint is tried again.
        b.eject("c:15008");
        assert_eq!(picked(&b).len(), 4);
        // The threshold counts only what is still a candidate: with the one endpoint
        // left excluded (tried), the three ejected ones are all there is.
        let rest: HashSet<String> = (0..200)
            .map(|_| b.pick(&c, "web", &["d".into()], None).unwrap().id.clone())
            .collect();
        assert_eq!(rest.len(), 3);
        // Unhealthy endpoints are never candidates, panic or not.
        let sick = config(vec![ep("a", "eu", false), ep("b", "eu", true)]);
        b.eject("b:15008");
        for _ in 0..50 {
            assert_eq!(b.pick(&sick, "web", &[], None).unwrap().id, "b");
        }
    }

    #[test]
    fn panic_spreads_over_regions_in_the_usual_order() {
        // The own region's only endpoint is ejected, another region's is not: fail
        // over (half the service is left, no panic).
        let b = Balancer::new("eu");
        let c = config(vec![ep("a", "eu", true), ep("b", "us", true)]);
        b.eject("a:15008");
        assert_eq!(b.pick(&c, "web", &[], None).unwrap().id, "b");
        // Both ejected: panic, and the own region comes first again.
        b.eject("b:15008");
        for _ in 0..50 {
            assert_eq!(b.pick(&c, "web", &[], None).unwrap().id, "a");
        }
    }

    #[test]
    fn a_success_ends_an_ejection() {
        let b = Balancer::new("eu");
        let c = config(vec![ep("a", "eu", true), ep("b", "eu", true)]);
        b.eject("a:15008");
        assert!(b.is_ejected("a:15008", Instant::now()));
        b.succeeded("a:15008");
        assert!(!b.is_ejected("a:15008", Instant::now()));
        let seen: HashSet<String> = (0..100)
            .map(|_| b.pick(&c, "web", &[], None).unwrap().id.clone())
            .collect();
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn the_control_plane_reporting_an_endpoint_healthy_again_ends_its_ejection() {
        let b = Balancer::new("eu");
        let up = config(vec![ep("a", "eu", true), ep("b", "eu", true)]);
        let down = config(vec![ep("a", "eu", false), ep("b", "eu", true)]);
        b.follow(&up);
        b.eject("a:15008");
        // Healthy all along: the control plane has nothing newer to say.
        b.follow(&up);
        assert!(b.is_ejected("a:15008", Instant::now()));
        // Unhealthy, then healthy again: tried at once.
        b.follow(&down);
        assert!(b.is_ejected("a:15008", Instant::now()));
        b.follow(&up);
        assert!(!b.is_ejected("a:15008", Instant::now()));
        // Endpoints that left the config are forgotten.
        b.eject("b:15008");
        b.follow(&config(vec![ep("a", "eu", true)]));
        assert!(b.ejected.get("b:15008").is_none());
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_stays_out_until_a_probe_reaches_it() {
        use std::sync::atomic::AtomicBool;
        let b = Balancer::new("eu");
        assert!(b.unreachable("a:15008"), "the first report starts a probe");
        assert!(!b.unreachable("a:15008"), "one probe at a time");
        // Held by the probe, even once the ejection's own time is over.
        b.ejected.get_mut("a:15008").unwrap().until = Instant::now();
        assert!(b.is_ejected("a:15008", Instant::now()));

        let reachable = Arc::new(AtomicBool::new(false));
        let tries = Arc::new(AtomicUsize::new(0));
        let probe = {
            let (reachable, tries) = (reachable.clone(), tries.clone());
            tokio::spawn(b.clone().probe("a:15008".into(), move || {
                tries.fetch_add(1, Ordering::Relaxed);
                let ok = reachable.load(Ordering::Relaxed);
                async move { ok }
            }))
        };
        while tries.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(b.is_ejected("a:15008", Instant::now()), "still unreachable");
        reachable.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(5), probe)
            .await
            .unwrap()
            .unwrap();
        assert!(!b.is_ejected("a:15008", Instant::now()), "reached: back in");
    }

    #[tokio::test]
    async fn a_probe_stops_once_the_ejection_ended_otherwise() {
        let b = Balancer::new("eu");
        assert!(b.unreachable("a:15008"));
        b.succeeded("a:15008");
        let tries = Arc::new(AtomicUsize::new(0));
        let t = tries.clone();
        tokio::time::timeout(
            Duration::from_secs(5),
            b.clone().probe("a:15008".into(), move || {
                t.fetch_add(1, Ordering::Relaxed);
                async { false }
            }),
        )
        .await
        .unwrap();
        assert_eq!(tries.load(Ordering::Relaxed), 0);
    }
}
