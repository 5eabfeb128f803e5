//! The endpoint retry loop, written once for every caller that picks endpoints
//! (outbound connections, gateway requests): pick an endpoint not tried yet, let the
//! caller try it, and when the attempt delivered nothing, pick another. What counts as
//! "delivered nothing" is the caller's to say, and so is what the failure says about the
//! endpoint ([`Attempts::refused`], [`Attempts::unreachable`], [`Attempts::skipped`]).
//!
//! Attempts come in rounds of up to [`MAX_ATTEMPTS`] endpoints. When a round found no
//! endpoint that took it, and some endpoint of it could not be reached or could not
//! take it for now (rather than answering that it will not), the walk pauses (25 ms,
//! doubling up to 250 ms, jittered) and starts a new round over every endpoint, until
//! [`RETRY_BUDGET`] is spent: an endpoint restarting, or a service whose every endpoint
//! failed at once, is retried within the budget instead of failing the caller at once.
//! A round whose endpoints all answered with a refusal (their apps are down) ends the
//! walk: the control plane takes them out, and the caller learns it at once.

use std::time::{Duration, Instant};

use crate::control::config::{EndpointEntry, MeshConfig};

use super::balance::{Balancer, jitter};

/// Endpoints tried in one round.
pub const MAX_ATTEMPTS: usize = 3;
/// How long one connection or request may spend in rounds of attempts before it is
/// given up. No new round starts past it (an attempt under way finishes).
pub const RETRY_BUDGET: Duration = Duration::from_secs(2);
/// Pause before the second round, doubling up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const MAX_PAUSE: Duration = Duration::from_millis(250);

/// One connection's or request's walk over the endpoints of a service.
pub struct Attempts<'a> {
    balancer: &'a Balancer,
    config: &'a MeshConfig,
    service: &'a str,
    prefer_region: Option<&'a str>,
    /// Endpoints tried in this round.
    tried: Vec<String>,
    made: usize,
    /// Some endpoint of this round may take it if asked again.
    worth_another_round: bool,
    started: Instant,
    pause: Duration,
}

impl<'a> Attempts<'a> {
    pub fn new(
        balancer: &'a Balancer,
        config: &'a MeshConfig,
        service: &'a str,
        prefer_region: Option<&'a str>,
    ) -> Self {
        Attempts {
            balancer,
            config,
            service,
            prefer_region,
            tried: Vec::new(),
            made: 0,
            worth_another_round: false,
            started: Instant::now(),
            pause: FIRST_PAUSE,
        }
    }

    /// The next endpoint to try; `None` when the service has no healthy endpoint, or
    /// once [`RETRY_BUDGET`] is spent.
    pub async fn next(&mut self) -> Option<&'a EndpointEntry> {
        loop {
            if self.tried.len() < MAX_ATTEMPTS {
                if let Some(ep) =
                    self.balancer
                        .pick(self.config, self.service, &self.tried, self.prefer_region)
                {
                    self.made += 1;
                    return Some(ep);
                }
            }
            // A round that found nothing to try will not find more in the next one
            // (the config is the one this walk started with).
            if self.tried.is_empty() || !self.worth_another_round {
                return None;
            }
            let pause = jitter(self.pause);
            if self.started.elapsed() + pause > RETRY_BUDGET {
                return None;
            }
            tokio::time::sleep(pause).await;
            self.pause = (self.pause * 2).min(MAX_PAUSE);
            self.tried.clear();
            self.worth_another_round = false;
        }
    }

    /// `ep` answered that it cannot take it (e.g. its app refused the connection), and
    /// nothing was delivered: it is ejected for a while and not tried again this round.
    pub fn refused(&mut self, ep: &EndpointEntry) {
        self.balancer.eject(&ep.address);
        self.tried.push(ep.id.clone());
    }

    /// `ep` could not be reached (connect or handshake failed, or its connection died):
    /// ejected until a probe reaches it, and not tried again this round. Returns true
    /// when the caller should start that probe ([`Balancer::unreachable`]).
    #[must_use]
    pub fn unreachable(&mut self, ep: &EndpointEntry) -> bool {
        self.tried.push(ep.id.clone());
        self.worth_another_round = true;
        self.balancer.unreachable(&ep.address)
    }

    /// `ep` could not take this one (e.g. a connection closing, a stream refused) but
    /// is not at fault: not tried again this round, not ejected.
    pub fn skipped(&mut self, ep: &EndpointEntry) {
        self.tried.push(ep.id.clone());
        self.worth_another_round = true;
    }

    /// `ep` took it: past failures are forgotten.
    pub fn succeeded(&self, ep: &EndpointEntry) {
        self.balancer.succeeded(&ep.address);
    }

    /// How many endpoints were tried.
    pub fn made(&self) -> usize {
        self.made
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::balance::tests::{config, ep};

    #[tokio::test]
    async fn an_unreachable_only_endpoint_is_retried_within_the_budget() {
        let b = Balancer::new("eu");
        let c = config(vec![ep("a", "eu", true)]);
        let started = Instant::now();
        let mut walk = Attempts::new(&b, &c, "web", None);
        let mut tries = Vec::new();
        while let Some(e) = walk.next().await {
            tries.push(started.elapsed());
            let _ = walk.unreachable(e);
        }
        let spent = started.elapsed();
        // Ejected after the first refusal, yet tried again (the panic threshold), with
        // growing pauses, until the budget is spent.
        assert!(tries.len() >= 8, "tried {} times in {spent:?}", tries.len());
        assert!(
            spent <= RETRY_BUDGET + Duration::from_millis(500),
            "{spent:?}"
        );
        assert!(
            spent >= RETRY_BUDGET - MAX_PAUSE,
            "gave up early: {spent:?}"
        );
        let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= FIRST_PAUSE / 2, "{gaps:?}");
        assert!(
            gaps.iter()
                .all(|g| *g <= MAX_PAUSE + Duration::from_millis(100)),
            "pauses stay short: {gaps:?}"
        );
        assert_eq!(walk.made(), tries.len());
    }

    #[tokio::test]
    async fn a_round_tries_other_endpoints_before_pausing() {
        let b = Balancer::new("eu");
        let c = config(vec![ep("a", "eu", true), ep("b", "eu", true)]);
        let mut walk = Attempts::new(&b, &c, "web", None);
        let first = walk.next().await.unwrap();
        walk.refused(first);
        let started = Instant::now();
        let second = walk.next().await.unwrap();
        assert_ne!(first.id, second.id, "the other endpoint, in the same round");
        assert!(
            started.elapsed() < FIRST_PAUSE / 2,
            "no pause within a round"
        );
    }

    #[tokio::test]
    async fn endpoints_that_all_refuse_end_the_walk_at_once() {
        let b = Balancer::new("eu");
        let c = config(vec![ep("a", "eu", true), ep("b", "eu", true)]);
        let started = Instant::now();
        let mut walk = Attempts::new(&b, &c, "web", None);
        while let Some(e) = walk.next().await {
            walk.refused(e);
        }
        assert_eq!(walk.made(), 2, "each endpoint once");
        assert!(started.elapsed() < FIRST_PAUSE / 2, "no second round");
        // One of them unreachable instead: worth another round.
        let b = Balancer::new("eu");
        let mut walk = Attempts::new(&b, &c, "web", None);
        let first = walk.next().await.unwrap();
        let _ = walk.unreachable(first);
        let second = walk.next().await.unwrap();
        walk.refused(second);
        assert!(walk.next().await.is_some(), "a second round");
    }

    #[tokio::test]
    async fn a_service_without_healthy_endpoints_fails_at_once() {
        let b = Balancer::new("eu");
        let c = config(vec![ep("a", "eu", false)]);
        let started = Instant::now();
        let mut walk = Attempts::new(&b, &c, "web", None);
        assert!(walk.next().await.is_none());
        assert_eq!(walk.made(), 0);
        assert!(started.elapsed() < FIRST_PAUSE);
    }
}
