//! The endpoint retry loop, written once for every caller that picks endpoints
//! (outbound connections, gateway requests): pick an endpoint not tried yet, let the
//! caller try it, and when the attempt delivered nothing, pick another, up to
//! [`MAX_ATTEMPTS`]. What counts as "delivered nothing" is the caller's to say; whether
//! the endpoint is then ejected too ([`Attempts::refused`] vs [`Attempts::skipped`]).

use crate::control::config::{EndpointEntry, MeshConfig};

use super::balance::Balancer;

/// Endpoints tried for one connection or request before giving up.
pub const MAX_ATTEMPTS: usize = 3;

/// One connection's or request's walk over the endpoints of a service.
pub struct Attempts<'a> {
    balancer: &'a Balancer,
    config: &'a MeshConfig,
    service: &'a str,
    prefer_region: Option<&'a str>,
    tried: Vec<String>,
    attempts: usize,
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
            attempts: 0,
        }
    }

    /// `ep` refused or could not be reached, and nothing was delivered: it is ejected
    /// for a while and not tried again by this walk.
    pub fn refused(&mut self, ep: &EndpointEntry) {
        self.balancer.eject(&ep.address);
        self.tried.push(ep.id.clone());
    }

    /// `ep` could not take this one (e.g. a connection closing) but is not at fault:
    /// not tried again by this walk, not ejected.
    pub fn skipped(&mut self, ep: &EndpointEntry) {
        self.tried.push(ep.id.clone());
    }

    /// `ep` took it: past refusals are forgotten.
    pub fn succeeded(&self, ep: &EndpointEntry) {
        self.balancer.succeeded(&ep.address);
    }

    /// How many endpoints were tried.
    pub fn made(&self) -> usize {
        self.attempts
    }
}

impl<'a> Iterator for Attempts<'a> {
    type Item = &'a EndpointEntry;

    /// The next endpoint to try; `None` once [`MAX_ATTEMPTS`] were made or no endpoint
    /// that was not tried is left.
    fn next(&mut self) -> Option<&'a EndpointEntry> {
        if self.attempts >= MAX_ATTEMPTS {
            return None;
        }
        let ep = self
            .balancer
            .pick(self.config, self.service, &self.tried, self.prefer_region)?;
        self.attempts += 1;
        Some(ep)
    }
}
