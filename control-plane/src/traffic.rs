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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use weft_proto::v1::{
    DataplaneKind, LATENCY_BOUNDS_US, LATENCY_BUCKETS, ServiceTraffic, SourceTraffic,
    TrafficCounts, TrafficFigures, TrafficPoint, TrafficReport, TrafficSource, TrafficStats,
};

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

/// Counters of one bucket. 32 bits are plenty for ten seconds of requests and keep a
/// bucket small; additions saturate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    requests: u32,
    /// 2xx, 3xx, 4xx, 5xx.
    classes: [u32; 4],
    grpc_errors: u32,
    connections: u32,
    bytes_in: u64,
    bytes_out: u64,
}

fn small(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Counts {
    fn add_report(&mut self, c: &TrafficCounts) {
        self.requests = self.requests.saturating_add(small(c.requests));
        for (slot, n) in self.classes.iter_mut().zip([
            c.responses_2xx,
            c.responses_3xx,
            c.responses_4xx,
            c.responses_5xx,
        ]) {
            *slot = slot.saturating_add(small(n));
        }
        self.grpc_errors = self.grpc_errors.saturating_add(small(c.grpc_errors));
        self.connections = self.connections.saturating_add(small(c.connections));
        self.bytes_in = self.bytes_in.saturating_add(c.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(c.bytes_out);
    }

    fn add(&mut self, o: &Counts) {
        self.requests = self.requests.saturating_add(o.requests);
        for (a, b) in self.classes.iter_mut().zip(o.classes) {
            *a = a.saturating_add(b);
        }
        self.grpc_errors = self.grpc_errors.saturating_add(o.grpc_errors);
        self.connections = self.connections.saturating_add(o.connections);
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
    }
}

type Latency = [u32; LATENCY_BUCKETS];

/// A bucket: its slot (start time / BUCKET_SECONDS) and what it holds.
#[derive(Clone, Debug)]
struct Bucket<T> {
    slot: i64,
    data: T,
}

/// Buckets in increasing slot order, only those with data.
#[derive(Debug)]
struct Series<T>(VecDeque<Bucket<T>>);

impl<T: Default> Series<T> {
    fn new() -> Self {
        Series(VecDeque::new())
    }

    /// The bucket of `slot`, created at the end if needed. A clock that went back puts
    /// data in the newest bucket rather than out of order.
    fn at(&mut self, slot: i64) -> &mut T {
        let newest = self.0.back().map(|b| b.slot);
        if newest.is_none_or(|n| n < slot) {
            self.0.push_back(Bucket {
                slot,
                data: T::default(),
            });
        }
        let n = self.0.len() - 1;
        &mut self.0[n].data
    }

    /// Drops buckets before `oldest`.
    fn prune(&mut self, oldest: i64) {
        while self.0.front().is_some_and(|b| b.slot < oldest) {
            self.0.pop_front();
        }
    }

    fn between(&self, first: i64, last: i64) -> impl Iterator<Item = &Bucket<T>> {
        self.0
            .iter()
            .filter(move |b| (first..=last).contains(&b.slot))
    }

    fn bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<Bucket<T>>()
    }
}

#[derive(Debug, Default)]
struct ServiceData {
    counts: Counts,
    latency: Latency,
}

#[derive(Debug)]
struct ServiceWindow {
    buckets: Series<ServiceData>,
    sources: HashMap<TrafficSource, Series<Counts>>,
}

/// What is kept per reporting dataplane.
#[derive(Debug)]
struct Reporter {
    last_report: i64,
    /// Open connections per destination service at the last report.
    active: Vec<(Arc<str>, u64)>,
}

#[derive(Debug, Default)]
struct Inner {
    services: HashMap<Arc<str>, ServiceWindow>,
    reporters: HashMap<String, Reporter>,
}

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

fn slot_of(unix: i64) -> i64 {
    unix.div_euclid(BUCKET_SECONDS)
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
        let mut active: Vec<(Arc<str>, u64)> = Vec::new();
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
            match active.iter_mut().find(|(s, _)| *s == name) {
                Some((_, n)) => *n = n.saturating_add(c.active_connections),
                None => active.push((name, c.active_connections)),
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
        let oldest = slot_of(now) - WINDOW_BUCKETS + 1;
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
                            + std::mem::size_of::<Series<Counts>>()
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
            .iter()
            .map(|(id, r)| {
                map_entry(24, std::mem::size_of::<Reporter>())
                    + id.capacity()
                    + r.active.capacity() * std::mem::size_of::<(Arc<str>, u64)>()
            })
            .sum();
        services + reporters
    }

    /// The figures over the last `window_seconds` (0: the default; capped at the
    /// window kept), for one service (with its series) or all of them.
    pub fn stats(
        &self,
        service: Option<&str>,
        window_seconds: u32,
        now: i64,
        connected_dataplanes: u32,
    ) -> TrafficStats {
        self.prune(now);
        let window_seconds = match window_seconds {
            0 => DEFAULT_WINDOW_SECONDS,
            w => w.clamp(BUCKET_SECONDS as u32, MAX_WINDOW_SECONDS),
        };
        // Only complete buckets count: the current one is still filling up as
        // dataplanes report, and counting it would make rates jump with their phase.
        let last = slot_of(now) - 1;
        let first = last - i64::from(window_seconds.div_ceil(BUCKET_SECONDS as u32)) + 1;
        let span = |oldest_with_data: Option<i64>| {
            // From the first bucket with data, so that traffic that started a moment
            // ago is not averaged over the whole window.
            let from = oldest_with_data.unwrap_or(last).max(first);
            ((last - from + 1) * BUCKET_SECONDS) as f64
        };
        let inner = self.inner.lock();
        let fresh = now - ACTIVE_FRESH_SECONDS;
        let mut services: Vec<ServiceTraffic> = inner
            .services
            .iter()
            .filter(|(name, _)| service.is_none_or(|s| s == &***name))
            .filter_map(|(name, w)| {
                let mut counts = Counts::default();
                let mut latency = [0u32; LATENCY_BUCKETS];
                let mut oldest = None;
                for b in w.buckets.between(first, last) {
                    oldest.get_or_insert(b.slot);
                    counts.add(&b.data.counts);
                    for (a, n) in latency.iter_mut().zip(b.data.latency) {
                        *a = a.saturating_add(n);
                    }
                }
                let named = service.is_some();
                if oldest.is_none() && !named {
                    return None;
                }
                let span = span(oldest);
                let mut sources: Vec<SourceTraffic> = w
                    .sources
                    .iter()
                    .filter_map(|(source, series)| {
                        let mut c = Counts::default();
                        let mut oldest = None;
                        for b in series.between(first, last) {
                            oldest.get_or_insert(b.slot);
                            c.add(&b.data);
                        }
                        oldest?;
                        Some(SourceTraffic {
                            source: Some(source.clone()),
                            figures: Some(figures(&c, None, span)),
                        })
                    })
                    .collect();
                sources.sort_by(|a, b| {
                    let req = |s: &SourceTraffic| s.figures.map_or(0, |f| f.requests);
                    req(b).cmp(&req(a)).then_with(|| {
                        a.source
                            .as_ref()
                            .map(TrafficSource::label)
                            .cmp(&b.source.as_ref().map(TrafficSource::label))
                    })
                });
                let series = if named {
                    w.buckets
                        .between(last - WINDOW_BUCKETS + 1, last)
                        .map(|b| TrafficPoint {
                            start: b.slot * BUCKET_SECONDS,
                            figures: Some(figures(
                                &b.data.counts,
                                Some(&b.data.latency),
                                BUCKET_SECONDS as f64,
                            )),
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let active_connections = inner
                    .reporters
                    .values()
                    .filter(|r| r.last_report >= fresh)
                    .flat_map(|r| r.active.iter())
                    .filter(|(s, _)| s == name)
                    .map(|(_, n)| *n)
                    .sum();
                Some(ServiceTraffic {
                    service: name.to_string(),
                    total: Some(figures(&counts, Some(&latency), span)),
                    sources,
                    series,
                    active_connections,
                })
            })
            .collect();
        services.sort_by(|a, b| {
            let rate = |s: &ServiceTraffic| s.total.map_or(0.0, |t| t.request_rate);
            rate(b)
                .total_cmp(&rate(a))
                .then_with(|| a.service.cmp(&b.service))
        });
        let window_start = now - i64::from(window_seconds);
        let reporting = inner
            .reporters
            .values()
            .filter(|r| r.last_report > window_start)
            .count();
        TrafficStats {
            generated_at: now,
            window_seconds,
            bucket_seconds: BUCKET_SECONDS as u32,
            reporting_dataplanes: u32::try_from(reporting).unwrap_or(u32::MAX),
            connected_dataplanes,
            services,
        }
    }
}

/// Derived figures of counts (and a histogram) covering `span` seconds.
fn figures(c: &Counts, latency: Option<&Latency>, span: f64) -> TrafficFigures {
    let requests = u64::from(c.requests);
    let failed = u64::from(c.classes[3]) + u64::from(c.grpc_errors);
    let has_requests = requests > 0;
    let percentile = |q| latency.and_then(|l| quantile(l, q));
    TrafficFigures {
        requests,
        request_rate: requests as f64 / span,
        responses_2xx: u64::from(c.classes[0]),
        responses_3xx: u64::from(c.classes[1]),
        responses_4xx: u64::from(c.classes[2]),
        responses_5xx: u64::from(c.classes[3]),
        grpc_errors: u64::from(c.grpc_errors),
        success_rate: has_requests.then(|| 1.0 - failed.min(requests) as f64 / requests as f64),
        latency_p50_ms: percentile(0.5),
        latency_p99_ms: percentile(0.99),
        bytes_in: c.bytes_in,
        bytes_out: c.bytes_out,
        connections: u64::from(c.connections),
    }
}

fn bound_ms(i: usize) -> f64 {
    LATENCY_BOUNDS_US.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

/// The `q` quantile (0..1) of a latency histogram in milliseconds, interpolated
/// linearly within its bucket like Prometheus' `histogram_quantile`; above the last
/// bound it is that bound. `None` for an empty histogram.
pub fn quantile(histogram: &[u32], q: f64) -> Option<f64> {
    let total: u64 = histogram.iter().map(|n| u64::from(*n)).sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let last = LATENCY_BOUNDS_US.len() - 1;
    let mut seen = 0.0;
    for (i, n) in histogram.iter().enumerate() {
        let n = f64::from(*n);
        if n > 0.0 && seen + n >= rank {
            if i > last {
                return Some(bound_ms(last));
            }
            let lower = if i == 0 { 0.0 } else { bound_ms(i - 1) };
            let upper = bound_ms(i);
            return Some(lower + (upper - lower) * ((rank - seen) / n).clamp(0.0, 1.0));
        }
        seen += n;
    }
    Some(bound_ms(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(name: &str) -> Reporting<'_> {
        Reporting {
            dataplane_id: name,
            kind: DataplaneKind::Sidecar,
            name,
        }
    }

    fn counts(service: &str, source: &str, requests: u64, errors: u64) -> TrafficCounts {
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

    fn report(c: Vec<TrafficCounts>) -> TrafficReport {
        TrafficReport {
            interval_ms: 10_000,
            counts: c,
        }
    }

    #[test]
    fn reports_of_several_dataplanes_add_up_per_service_and_source() {
        let w = TrafficWindow::default();
        let t0 = 1_000_000;
        for t in (0..6).map(|i| t0 + i * 10) {
            for dp in ["web/a", "web/b"] {
                let from = Reporting {
                    dataplane_id: dp,
                    ..sidecar("web")
                };
                w.record(from, &report(vec![counts("web", "api", 100, 1)]), t);
            }
        }
        let stats = w.stats(None, 60, t0 + 65, 2);
        assert_eq!(stats.reporting_dataplanes, 2);
        let [web] = stats.services.as_slice() else {
            panic!("{stats:?}");
        };
        let total = web.total.unwrap();
        assert_eq!(total.requests, 1200);
        assert!((total.request_rate - 20.0).abs() < 1e-9, "{total:?}");
        assert_eq!(total.success_rate, Some(1.0 - 12.0 / 1200.0));
        let p50 = total.latency_p50_ms.unwrap();
        assert!((5.0..=10.0).contains(&p50), "{p50}");
        assert_eq!(
            web.active_connections, 4,
            "two dataplanes with two open each"
        );
        assert_eq!(web.sources[0].source.as_ref().unwrap().label(), "api");
        assert_eq!(web.sources[0].figures.unwrap().requests, 1200);
        assert!(web.series.is_empty(), "series only for a named service");

        assert!(
            w.stats(None, 60, t0 + 55, 2).services[0]
                .total
                .unwrap()
                .requests
                < 1200,
            "the bucket still filling up is left out"
        );
        let one = w.stats(Some("web"), 0, t0 + 65, 2);
        assert_eq!(one.window_seconds, DEFAULT_WINDOW_SECONDS);
        assert_eq!(one.services[0].series.len(), 6);
        assert_eq!(one.services[0].series[0].start, t0);
    }

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
    fn a_recent_start_is_not_averaged_over_the_whole_window() {
        let w = TrafficWindow::default();
        w.record(
            sidecar("web"),
            &report(vec![counts("web", "api", 100, 0)]),
            2000,
        );
        let total = w.stats(None, 60, 2011, 1).services[0].total.unwrap();
        assert!((total.request_rate - 10.0).abs() < 1e-9, "{total:?}");
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut h = [0u32; LATENCY_BUCKETS];
        assert_eq!(quantile(&h, 0.5), None);
        h[0] = 50; // up to 0.5 ms
        h[1] = 50; // (0.5, 1] ms
        assert_eq!(quantile(&h, 0.5), Some(0.5));
        assert_eq!(quantile(&h, 0.75), Some(0.75));
        h[LATENCY_BUCKETS - 1] = 100;
        assert_eq!(quantile(&h, 0.99), Some(10_000.0), "above the last bound");
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
