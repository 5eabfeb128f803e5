//! Traffic figures for the control plane: what this dataplane carried, per destination
//! service and source identity, reported on the discovery stream about every 10 s
//! ([`REPORT_INTERVAL`]) so that operators see every dataplane's figures in one place
//! (`weftctl service stats`, `weftctl top`, the dashboard) without running Prometheus.
//!
//! Counting costs a few relaxed atomic adds per request and nothing else: the counters
//! of a (service, source) pair are looked up once per connection ([`Traffic::pair`])
//! and shared by everything that connection carries. A report swaps every counter back
//! to zero, so each one carries what happened since the previous one and the control
//! plane merges reports by adding them up.
//!
//! The inbound counts: every tunnel stream and mesh HTTP connection is a connection of
//! its caller's pair; every request it forwards is a request, timed to its response
//! headers, whose bodies ([`CountedBody`]) add their bytes and whose gRPC status is
//! read from the trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use weft_certs::{IdentityKind, SpiffeId};
use weft_proto::v1::{
    DataplaneKind, LATENCY_BUCKETS, TrafficCounts, TrafficReport, TrafficSource, latency_bucket,
};

/// How often a dataplane reports. The control plane's window has buckets of this size.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// At most this many pairs go into one report (the busiest are not chosen: a dataplane
/// has one destination service and its callers are mesh identities, far fewer than this).
pub const MAX_PAIRS_PER_REPORT: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PairKey {
    service: String,
    source: TrafficSource,
}

/// Counters of one (destination service, source) pair since the last report.
#[derive(Debug, Default)]
pub struct PairCounters {
    requests: AtomicU64,
    /// 2xx (and 1xx finals), 3xx, 4xx, 5xx.
    classes: [AtomicU64; 4],
    grpc_errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
    connections: AtomicU64,
    active: AtomicU64,
    /// `active` as last reported, so that a report also goes out when it drops to zero.
    reported_active: AtomicU64,
}

fn class_index(status: u16) -> usize {
    match status {
        300..=399 => 1,
        400..=499 => 2,
        500.. => 3,
        _ => 0,
    }
}

impl PairCounters {
    /// One answered request: its status, whether it was a gRPC call that failed, and
    /// the time to its response headers.
    pub fn request(&self, status: u16, grpc_error: bool, latency: Duration) {
        self.requests.fetch_add(1, Relaxed);
        self.classes[class_index(status)].fetch_add(1, Relaxed);
        if grpc_error {
            self.grpc_errors.fetch_add(1, Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency[latency_bucket(micros)].fetch_add(1, Relaxed);
    }

    /// A gRPC call that ended with a status other than OK (seen in its trailers).
    pub fn grpc_error(&self) {
        self.grpc_errors.fetch_add(1, Relaxed);
    }

    /// Bytes carried: `inbound` from the caller towards the app, `outbound` back.
    pub fn bytes(&self, inbound: u64, outbound: u64) {
        if inbound > 0 {
            self.bytes_in.fetch_add(inbound, Relaxed);
        }
        if outbound > 0 {
            self.bytes_out.fetch_add(outbound, Relaxed);
        }
    }

    /// A connection (tunnel stream) whose life is not followed: counted, never active.
    pub fn connection(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    /// A connection (tunnel stream) opened; it counts as active until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenConnection {
        self.connections.fetch_add(1, Relaxed);
        self.active.fetch_add(1, Relaxed);
        OpenConnection(self.clone())
    }

    /// Takes the counters (leaving zeros), as the counts of a report, and whether there
    /// is anything to report.
    fn take(&self, key: &PairKey) -> (TrafficCounts, bool) {
        let take = |c: &AtomicU64| c.swap(0, Relaxed);
        let active = self.active.load(Relaxed);
        let active_changed = self.reported_active.swap(active, Relaxed) != active;
        let requests = take(&self.requests);
        let latency: Vec<u64> = self.latency.iter().map(take).collect();
        let c = TrafficCounts {
            service: key.service.clone(),
            source: Some(key.source.clone()),
            requests,
            responses_2xx: take(&self.classes[0]),
            responses_3xx: take(&self.classes[1]),
            responses_4xx: take(&self.classes[2]),
            responses_5xx: take(&self.classes[3]),
            grpc_errors: take(&self.grpc_errors),
            bytes_in: take(&self.bytes_in),
            bytes_out: take(&self.bytes_out),
            latency_buckets: if latency.iter().any(|n| *n > 0) {
                latency
            } else {
                Vec::new()
            },
            connections: take(&self.connections),
            active_connections: active,
        };
        let busy = c.requests > 0
            || c.connections > 0
            || c.bytes_in > 0
            || c.bytes_out > 0
            || active > 0
            || active_changed;
        (c, busy)
    }
}

/// The source of traffic from a peer with this verified identity.
pub fn source_of(id: &SpiffeId) -> TrafficSource {
    let kind = match id.kind() {
        IdentityKind::Service => DataplaneKind::Sidecar,
        IdentityKind::Gateway => DataplaneKind::Gateway,
        IdentityKind::Ingress => DataplaneKind::Ingress,
        IdentityKind::ControlPlane => DataplaneKind::Unspecified,
    };
    TrafficSource {
        kind: kind as i32,
        name: if kind == DataplaneKind::Unspecified {
            String::new()
        } else {
            id.name().to_owned()
        },
    }
}

/// Whether gRPC headers or trailers end the call with a status other than OK.
pub fn grpc_failed(headers: &HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() != b"0")
}

/// Which way a [`CountedBody`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A request body, from the caller towards the app.
    In,
    /// A response body, from the app back to the caller.
    Out,
}

/// A body that adds its bytes to a pair when it ends (or is dropped), and counts a gRPC
/// error when its trailers carry one. Everything else passes through untouched,
/// including `is_end_stream`, so a gRPC Trailers-Only answer stays one HEADERS frame.
#[derive(Debug)]
pub struct CountedBody<B> {
    inner: B,
    pair: Arc<PairCounters>,
    direction: Direction,
    bytes: u64,
    /// Look for `grpc-status` in the trailers (a gRPC response).
    grpc: bool,
}

impl<B> CountedBody<B> {
    pub fn new(inner: B, pair: Arc<PairCounters>, direction: Direction, grpc: bool) -> Self {
        CountedBody {
            inner,
            pair,
            direction,
            bytes: 0,
            grpc,
        }
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        match self.direction {
            Direction::In => self.pair.bytes(self.bytes, 0),
            Direction::Out => self.pair.bytes(0, self.bytes),
        }
    }
}

impl<B> HttpBody for CountedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes += data.len() as u64;
            } else if let Some(trailers) = frame.trailers_ref() {
                if self.grpc && grpc_failed(trailers) {
                    self.pair.grpc_error();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Keeps a connection counted as active while it lives.
#[derive(Debug)]
pub struct OpenConnection(Arc<PairCounters>);

impl OpenConnection {
    /// The pair this connection is counted under, to count its requests and bytes.
    pub fn counters(&self) -> &PairCounters {
        &self.0
    }

    /// The same, to share with the requests the connection carries.
    pub fn pair(&self) -> &Arc<PairCounters> {
        &self.0
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// Everything this dataplane counts, by (destination service, source).
#[derive(Debug, Default)]
pub struct Traffic {
    pairs: DashMap<PairKey, Arc<PairCounters>>,
}

impl Traffic {
    pub fn new() -> Arc<Self> {
        Arc::new(Traffic::default())
    }

    /// The counters of traffic to `service` from `source`. Look them up once per
    /// connection and keep them: this is the only step that takes a (sharded) lock.
    pub fn pair(&self, service: &str, source: TrafficSource) -> Arc<PairCounters> {
        let key = PairKey {
            service: service.to_owned(),
            source,
        };
        if let Some(c) = self.pairs.get(&key) {
            return c.clone();
        }
        self.pairs.entry(key).or_default().clone()
    }

    /// What was carried since the previous report, `interval` ago; `None` when there is
    /// nothing to say (nothing carried, nothing open). Pairs left idle and unused are
    /// forgotten, so the map holds only what is in use.
    pub fn report(&self, interval: Duration) -> Option<TrafficReport> {
        let mut counts = Vec::new();
        self.pairs.retain(|key, pair| {
            let (c, busy) = pair.take(key);
            if busy && counts.len() < MAX_PAIRS_PER_REPORT {
                counts.push(c);
            }
            // Under the shard's lock nobody can look this pair up; a count of one means
            // no connection holds it either.
            busy || Arc::strong_count(pair) > 1
        });
        (!counts.is_empty()).then(|| TrafficReport {
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            counts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::v1::DataplaneKind;

    fn gateway(name: &str) -> TrafficSource {
        TrafficSource {
            kind: DataplaneKind::Gateway as i32,
            name: name.into(),
        }
    }

    #[test]
    fn a_report_carries_what_happened_since_the_previous_one() {
        let t = Traffic::new();
        let pair = t.pair("web", gateway("edge"));
        pair.request(200, false, Duration::from_micros(700));
        pair.request(503, false, Duration::from_millis(30));
        pair.request(200, true, Duration::from_secs(20));
        pair.bytes(100, 2_000);
        let report = t.report(Duration::from_secs(10)).unwrap();
        assert_eq!(report.interval_ms, 10_000);
        let [c] = report.counts.as_slice() else {
            panic!("one pair expected: {report:?}");
        };
        assert_eq!(
            (c.service.as_str(), c.source.as_ref()),
            ("web", Some(&gateway("edge")))
        );
        assert_eq!(
            (c.requests, c.responses_2xx, c.responses_5xx, c.grpc_errors),
            (3, 2, 1, 1)
        );
        assert_eq!((c.bytes_in, c.bytes_out), (100, 2_000));
        assert_eq!(c.latency_buckets.len(), LATENCY_BUCKETS);
        assert_eq!(
            c.latency_buckets[1], 1,
            "0.7 ms is in the (0.5, 1] ms bucket"
        );
        assert_eq!(
            c.latency_buckets[6], 1,
            "30 ms is in the (25, 50] ms bucket"
        );
        assert_eq!(
            c.latency_buckets[LATENCY_BUCKETS - 1],
            1,
            "20 s is above every bound"
        );

        pair.request(404, false, Duration::ZERO);
        let next = t.report(Duration::from_secs(10)).unwrap();
        assert_eq!(
            next.counts[0].requests, 1,
            "the first report's counts were taken"
        );
        assert_eq!(next.counts[0].responses_4xx, 1);
    }

    #[tokio::test]
    async fn counted_bodies_add_their_bytes_and_grpc_errors_from_trailers() {
        use http_body_util::{BodyExt as _, Full, StreamBody};
        let t = Traffic::new();
        let pair = t.pair("api", gateway("edge"));
        let request = CountedBody::new(
            Full::new(Bytes::from_static(b"hello")),
            pair.clone(),
            Direction::In,
            false,
        );
        assert_eq!(request.collect().await.unwrap().to_bytes().len(), 5);
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"12345678"))),
            Ok(Frame::trailers(trailers)),
        ];
        let response = CountedBody::new(
            StreamBody::new(futures_util::stream::iter(frames)),
            pair.clone(),
            Direction::Out,
            true,
        );
        let collected = response.collect().await.unwrap();
        assert!(collected.trailers().is_some());
        drop(pair);
        let c = &t.report(Duration::from_secs(1)).unwrap().counts[0];
        assert_eq!((c.bytes_in, c.bytes_out, c.grpc_errors), (5, 8, 1));
    }

    #[test]
    fn sources_name_the_peer_identity() {
        let td = weft_certs::TrustDomain::new("weft.local").unwrap();
        let id = SpiffeId::new(&td, IdentityKind::Gateway, "edge").unwrap();
        assert_eq!(source_of(&id), gateway("edge"));
        let cp = SpiffeId::new(&td, IdentityKind::ControlPlane, "cp").unwrap();
        assert_eq!(source_of(&cp), TrafficSource::default());
    }

    #[test]
    fn open_connections_are_reported_until_they_close_and_idle_pairs_are_forgotten() {
        let t = Traffic::new();
        let conn = t.pair("db", TrafficSource::default()).open();
        conn.counters().bytes(5, 0);
        let r = t.report(Duration::from_secs(10)).unwrap();
        assert_eq!(
            (r.counts[0].connections, r.counts[0].active_connections),
            (1, 1)
        );
        let r = t.report(Duration::from_secs(10)).unwrap();
        assert_eq!(
            (r.counts[0].connections, r.counts[0].active_connections),
            (0, 1)
        );
        drop(conn);
        let r = t.report(Duration::from_secs(10)).unwrap();
        assert_eq!(
            r.counts[0].active_connections, 0,
            "the drop to zero is reported"
        );
        assert!(t.report(Duration::from_secs(10)).is_none());
        assert!(t.pairs.is_empty(), "an idle pair nobody holds is forgotten");
    }
}
