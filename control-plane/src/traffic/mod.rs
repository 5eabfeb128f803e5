//! The rolling window of traffic figures: what the dataplanes connected to this control
//! plane reported over the last five minutes, in 10 s buckets, and the figures derived
//! from it (rates, success rate, latency percentiles) for `GetTrafficStats`, weftctl and
//! the dashboard. Every derived figure is computed here, once.
//!
//! The window lives in memory, not in the store: figures are worth seeing for minutes,
//! are cheap to lose at a restart, and would cost a write per dataplane every 10 s.
//! With several replicas each keeps the window of the dataplanes connected to it.
//!
//! Memory is bounded by traffic, not by the fleet: buckets are kept per destination
//! service (with the latency histogram) and per (service, source) pair (counters only),
//! and only where something was carried, so a thousand dataplanes of a hundred services
//! cost the same as ten dataplanes carrying the same traffic. Per dataplane there is
//! only when it last reported and how many connections it had open.
//!
//! [`buckets`] holds the counters; [`stats`] derives the figures from them.

mod buckets;
mod stats;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use weft_proto::v1::{DataplaneKind, LATENCY_BUCKETS, TrafficReport, TrafficSource};

use buckets::{Inner, KEPT, Reporter, Series, ServiceWindow, SourceCounts, slot_of, small};
pub use stats::quantile;

/// Size of a bucket, and the interval at which dataplanes report.
pub const BUCKET_SECONDS: i64 = 10;
/// Buckets kept: five minutes.
pub const WINDOW_BUCKETS: i64 = 30;
/// What `window_seconds = 0` means.
pub const DEFAULT_WINDOW_SECONDS: u32 = 60;
/// The longest window that can be asked for (everything kept).
pub const MAX_WINDOW_SECONDS: u32 = (BUCKET_SECONDS * WINDOW_BUCKETS) as u32;
/// A dataplane's open connections count while its last report is at most this old.
const ACTIVE_FRESH_SECONDS: i64 = 3 * BUCKET_SECONDS;
/// Limits that keep a misbehaving dataplane from growing the window without bound.
const MAX_COUNTS_PER_REPORT: usize = 256;
const MAX_SOURCES_PER_SERVICE: usize = 1024;
const MAX_SERVICES: usize = 10_000;
const MAX_NAME: usize = 253;

/// Who sent a report, as its discovery stream authenticated it.
#[derive(Clone, Copy, Debug)]
pub struct Reporting<'a> {
    pub dataplane_id: &'a str,
    pub kind: DataplaneKind,
    pub name: &'a str,
}

/// The window. Reports arrive about a hundred a second for a thousand dataplanes and
/// readers ask about once a second: one mutex, held for microseconds, is enough.
#[derive(Debug, Default)]
pub struct TrafficWindow {
    inner: Mutex<Inner>,
}

/// A source as reported, or "unknown" when it is not a plausible mesh identity.
fn clean_source(source: Option<&TrafficSource>) -> TrafficSource {
    match source {
        Some(s)
            if DataplaneKind::try_from(s.kind).is_ok_and(|k| k != DataplaneKind::Unspecified)
                && !s.name.is_empty()
                && s.name.len() <= MAX_NAME =>
        {
            s.clone()
        }
        _ => TrafficSource::default(),
    }
}

impl TrafficWindow {
    pub fn new() -> Arc<Self> {
        Arc::new(TrafficWindow::default())
    }

    /// Adds a report that arrived at `now` (Unix seconds). A sidecar may only report
    /// traffic to its own service (what its inbound received); gateways report traffic
    /// to the services of their routes; ingresses carry no requests and report nothing.
    pub fn record(&self, from: Reporting<'_>, report: &TrafficReport, now: i64) {
        let slot = slot_of(now);
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let mut active: Option<(Arc<str>, u64)> = None;
        for c in report.counts.iter().take(MAX_COUNTS_PER_REPORT) {
            let allowed = match from.kind {
                DataplaneKind::Sidecar => c.service == from.name,
                DataplaneKind::Gateway => !c.service.is_empty() && c.service.len() <= MAX_NAME,
                _ => false,
            };
            if !allowed {
                tracing::debug!(dataplane = from.dataplane_id, service = %c.service, "traffic report for a service it does not serve ignored");
                continue;
            }
            let name: Arc<str> = match inner.services.get_key_value(c.service.as_str()) {
                Some((k, _)) => k.clone(),
                None if inner.services.len() < MAX_SERVICES => Arc::from(c.service.as_str()),
                None => continue,
            };
            let window = inner
                .services
                .entry(name.clone())
                .or_insert_with(|| ServiceWindow {
                    buckets: Series::new(),
                    sources: HashMap::new(),
                });
            let data = window.buckets.at(slot);
            data.counts.add_report(c);
            if c.latency_buckets.len() == LATENCY_BUCKETS {
                for (a, b) in data.latency.iter_mut().zip(&c.latency_buckets) {
                    *a = a.saturating_add(small(*b));
                }
            }
            let source = clean_source(c.source.as_ref());
            let known = window.sources.contains_key(&source);
            if known || window.sources.len() < MAX_SOURCES_PER_SERVICE {
                window
                    .sources
                    .entry(source)
                    .or_insert_with(Series::new)
                    .at(slot)
                    .add_report(c);
            }
            if from.kind == DataplaneKind::Sidecar {
                let (_, open) = active.get_or_insert((name, 0));
                *open = open.saturating_add(c.active_connections);
            }
        }
        inner.reporters.insert(
            from.dataplane_id.to_owned(),
            Reporter {
                last_report: now,
                active,
            },
        );
    }

    /// Forgets what is older than the window: buckets, idle services and sources, and
    /// dataplanes that stopped reporting. Called periodically and before each read.
    pub fn prune(&self, now: i64) {
        let oldest = (slot_of(now) + 1).saturating_sub(KEPT);
        let mut inner = self.inner.lock();
        inner.services.retain(|_, w| {
            w.buckets.prune(oldest);
            w.sources.retain(|_, s| {
                s.prune(oldest);
                !s.0.is_empty()
            });
            !w.buckets.0.is_empty()
        });
        inner
            .reporters
            .retain(|_, r| r.last_report > now - i64::from(MAX_WINDOW_SECONDS));
    }

    /// Approximate heap memory held by the window, in bytes.
    pub fn memory_bytes(&self) -> usize {
        let inner = self.inner.lock();
        let map_entry = |key: usize, value: usize| key + value + 8;
        let services: usize = inner
            .services
            .iter()
            .map(|(name, w)| {
                let sources: usize = w
                    .sources
                    .iter()
                    .map(|(s, series)| {
                        map_entry(std::mem::size_of::<TrafficSource>(), 0)
                            + s.name.capacity()
                            + std::mem::size_of::<Series<SourceCounts>>()
                            + series.bytes()
                    })
                    .sum();
                map_entry(16, std::mem::size_of::<ServiceWindow>())
                    + name.len()
                    + 16
                    + w.buckets.bytes()
                    + w.sources.capacity().saturating_sub(w.sources.len()) * 8
                    + sources
            })
            .sum();
        let reporters: usize = inner
            .reporters
            .keys()
            .map(|id| map_entry(24, std::mem::size_of::<Reporter>()) + id.capacity())
            .sum();
        services + reporters
    }
}

/// Reports as a sidecar would send them, for the tests of both files.
#[cfg(test)]
mod testing {
    use super::*;
    use weft_proto::v1::TrafficCounts;

    pub(super) fn sidecar(name: &str) -> Reporting<'_> {
        Reporting {
            dataplane_id: name,
            kind: DataplaneKind::Sidecar,
            name,
        }
    }

    pub(super) fn counts(service: &str, source: &str, requests: u64, errors: u64) -> TrafficCounts {
        let mut latency = vec![0; LATENCY_BUCKETS];
        latency[4] = requests; // (5, 10] ms
        TrafficCounts {
            service: service.into(),
            source: Some(TrafficSource {
                kind: DataplaneKind::Sidecar as i32,
                name: source.into(),
            }),
            requests,
            responses_2xx: requests - errors,
            responses_5xx: errors,
            latency_buckets: latency,
            bytes_in: 10 * requests,
            connections: 1,
            active_connections: 2,
            ..Default::default()
        }
    }

    pub(super) fn report(c: Vec<TrafficCounts>) -> TrafficReport {
        TrafficReport {
            interval_ms: 10_000,
            counts: c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{counts, report, sidecar};
    use super::*;

    #[test]
    fn a_sidecar_reports_only_its_own_service() {
        let w = TrafficWindow::default();
        w.record(
            sidecar("web"),
            &report(vec![counts("db", "web", 5, 0)]),
            100,
        );
        assert!(w.stats(None, 60, 110, 1).services.is_empty());
        let gateway = Reporting {
            dataplane_id: "gateway/edge",
            kind: DataplaneKind::Gateway,
            name: "edge",
        };
        w.record(gateway, &report(vec![counts("db", "x", 5, 0)]), 100);
        assert_eq!(w.stats(None, 60, 110, 1).services.len(), 1);
    }

    #[test]
    fn old_buckets_leave_the_window_and_are_forgotten() {
        let w = TrafficWindow::default();
        w.record(
            sidecar("web"),
            &report(vec![counts("web", "api", 10, 0)]),
            1000,
        );
        assert_eq!(w.stats(None, 60, 1050, 1).services.len(), 1);
        assert!(w.stats(None, 60, 1070, 1).services.is_empty(), "past 60 s");
        assert_eq!(
            w.stats(None, 300, 1070, 1).services.len(),
            1,
            "within 5 min"
        );
        assert!(w.memory_bytes() > 0);
        w.prune(1000 + 301);
        assert_eq!(w.memory_bytes(), 0, "nothing kept past the window");
    }

    #[test]
    fn a_full_window_of_a_thousand_dataplanes_holds_under_a_kilobyte_each() {
        // 1,000 sidecars of 100 services, each called by a gateway and one service,
        // reporting every 10 s for longer than the window.
        let w = TrafficWindow::default();
        let ids: Vec<String> = (0..1000)
            .map(|i| {
                format!(
                    "service/svc-{:03}/10.0.{}.{}:15008",
                    i % 100,
                    i / 250,
                    i % 250
                )
            })
            .collect();
        for round in 0..35 {
            let now = 1_000_000 + round * 10;
            for (i, id) in ids.iter().enumerate() {
                let service = format!("svc-{:03}", i % 100);
                let caller = format!("svc-{:03}", (i + 1) % 100);
                let mut gateway = counts(&service, "x", 600, 6);
                gateway.source = Some(TrafficSource {
                    kind: DataplaneKind::Gateway as i32,
                    name: "edge".into(),
                });
                let from = Reporting {
                    dataplane_id: id,
                    kind: DataplaneKind::Sidecar,
                    name: &service,
                };
                w.record(
                    from,
                    &report(vec![gateway, counts(&service, &caller, 400, 0)]),
                    now,
                );
            }
            w.prune(now);
        }
        let per_dataplane = w.memory_bytes() / ids.len();
        assert!(per_dataplane < 1000, "{per_dataplane} bytes per dataplane");
    }

    #[test]
    fn bad_sources_count_as_unknown() {
        let long = "x".repeat(300);
        for source in [
            None,
            Some(TrafficSource::default()),
            Some(TrafficSource {
                kind: 99,
                name: "a".into(),
            }),
            Some(TrafficSource {
                kind: DataplaneKind::Sidecar as i32,
                name: long,
            }),
        ] {
            assert_eq!(clean_source(source.as_ref()).label(), "unknown");
        }
    }
}
