//! The figures derived from the window, computed once for every reader: totals over
//! the window asked for, rates, success rate, latency percentiles, callers, and the
//! 10 s series of a service.

use std::collections::HashMap;

use weft_proto::v1::{
    LATENCY_BOUNDS_US, LATENCY_BUCKETS, ServiceTraffic, SourceTraffic, TrafficFigures,
    TrafficPoint, TrafficSource, TrafficStats,
};

use super::buckets::{Counts, KEPT, Latency, ServiceWindow, Slot, SourceCounts, slot_of};
use super::{
    ACTIVE_FRESH_SECONDS, BUCKET_SECONDS, DEFAULT_WINDOW_SECONDS, MAX_WINDOW_SECONDS, TrafficWindow,
};

/// The buckets a question covers: complete buckets only (the current one is still
/// filling up as dataplanes report, and counting it would make rates jump with their
/// phase), the last `window_seconds` of them.
struct Range {
    window_seconds: u32,
    first: Slot,
    last: Slot,
}

impl Range {
    fn new(window_seconds: u32, now: i64) -> Self {
        let window_seconds = match window_seconds {
            0 => DEFAULT_WINDOW_SECONDS,
            w => w.clamp(BUCKET_SECONDS as u32, MAX_WINDOW_SECONDS),
        };
        let last = slot_of(now).saturating_sub(1);
        let first = (last + 1).saturating_sub(window_seconds.div_ceil(BUCKET_SECONDS as u32));
        Range {
            window_seconds,
            first,
            last,
        }
    }

    /// Seconds the data covers: from the first bucket with data, so that traffic that
    /// started a moment ago is not averaged over the whole window.
    fn span(&self, oldest_with_data: Option<Slot>) -> f64 {
        let from = oldest_with_data.unwrap_or(self.last).max(self.first);
        f64::from(self.last - from + 1) * BUCKET_SECONDS as f64
    }
}

impl TrafficWindow {
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
        let range = Range::new(window_seconds, now);
        let inner = self.inner.lock();
        // Open connections per service: the last report of each dataplane still reporting.
        let fresh = now - ACTIVE_FRESH_SECONDS;
        let mut open: HashMap<&str, u64> = HashMap::new();
        for (name, n) in inner
            .reporters
            .values()
            .filter(|r| r.last_report >= fresh)
            .filter_map(|r| r.active.as_ref())
        {
            *open.entry(&**name).or_default() += n;
        }
        let mut services: Vec<ServiceTraffic> = inner
            .services
            .iter()
            .filter(|(name, _)| service.is_none_or(|s| s == &***name))
            .filter_map(|(name, w)| {
                let mut t = service_traffic(w, &range, service.is_some())?;
                t.service = name.to_string();
                t.active_connections = open.get(&**name).copied().unwrap_or(0);
                Some(t)
            })
            .collect();
        services.sort_by(|a, b| {
            let rate = |s: &ServiceTraffic| s.total.map_or(0.0, |t| t.request_rate);
            rate(b)
                .total_cmp(&rate(a))
                .then_with(|| a.service.cmp(&b.service))
        });
        let window_start = now - i64::from(range.window_seconds);
        let reporting = inner
            .reporters
            .values()
            .filter(|r| r.last_report > window_start)
            .count();
        TrafficStats {
            generated_at: now,
            window_seconds: range.window_seconds,
            bucket_seconds: BUCKET_SECONDS as u32,
            reporting_dataplanes: u32::try_from(reporting).unwrap_or(u32::MAX),
            connected_dataplanes,
            services,
        }
    }
}

/// One service's totals, callers and (when `named`) series over `range`; `None` for a
/// service with nothing in the range that was not asked for by name.
fn service_traffic(w: &ServiceWindow, range: &Range, named: bool) -> Option<ServiceTraffic> {
    let mut counts = Counts::default();
    let mut latency = [0u32; LATENCY_BUCKETS];
    let mut oldest = None;
    for b in w.buckets.between(range.first, range.last) {
        oldest.get_or_insert(b.slot);
        counts.add(&b.data.counts);
        for (a, n) in latency.iter_mut().zip(b.data.latency) {
            *a = a.saturating_add(n);
        }
    }
    if oldest.is_none() && !named {
        return None;
    }
    let span = range.span(oldest);
    let series = if named {
        w.buckets
            .between((range.last + 1).saturating_sub(KEPT), range.last)
            .map(|b| TrafficPoint {
                start: i64::from(b.slot) * BUCKET_SECONDS,
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
    Some(ServiceTraffic {
        total: Some(figures(&counts, Some(&latency), span)),
        sources: callers(w, range, span),
        series,
        ..Default::default()
    })
}

/// Who called the service in `range`, busiest first. Rates use the service's span, so
/// a caller's and the service's rates add up.
fn callers(w: &ServiceWindow, range: &Range, span: f64) -> Vec<SourceTraffic> {
    let mut sources: Vec<SourceTraffic> = w
        .sources
        .iter()
        .filter_map(|(source, series)| {
            let mut c = SourceCounts::default();
            let mut oldest = None;
            for b in series.between(range.first, range.last) {
                oldest.get_or_insert(b.slot);
                c.add(&b.data);
            }
            oldest?;
            Some(SourceTraffic {
                source: Some(source.clone()),
                figures: Some(figures(&c.as_counts(), None, span)),
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
    sources
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
    use super::super::testing::{counts, report, sidecar};
    use super::super::{DEFAULT_WINDOW_SECONDS, Reporting};
    use super::*;

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
}
