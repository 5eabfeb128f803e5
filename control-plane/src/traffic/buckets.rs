//! What the window keeps: counters per 10 s bucket, per service and per (service,
//! source) pair, in series that hold only buckets with data.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use weft_proto::v1::{LATENCY_BUCKETS, TrafficCounts, TrafficSource};

use super::{BUCKET_SECONDS, WINDOW_BUCKETS};

/// Counters of one service's bucket. 32 bits are plenty for ten seconds of requests
/// and keep a bucket small; additions saturate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) requests: u32,
    /// 2xx, 3xx, 4xx, 5xx.
    pub(super) classes: [u32; 4],
    pub(super) grpc_errors: u32,
    pub(super) connections: u32,
}

/// Counters of one (service, source) bucket: what the callers table shows, no more
/// (there are more sources than services, so these are kept smaller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct SourceCounts {
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) requests: u32,
    responses_5xx: u32,
    pub(super) grpc_errors: u32,
    pub(super) connections: u32,
}

impl SourceCounts {
    pub(super) fn add_report(&mut self, c: &TrafficCounts) {
        self.add(&SourceCounts {
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            requests: small(c.requests),
            responses_5xx: small(c.responses_5xx),
            grpc_errors: small(c.grpc_errors),
            connections: small(c.connections),
        });
    }

    pub(super) fn add(&mut self, o: &SourceCounts) {
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.requests = self.requests.saturating_add(o.requests);
        self.responses_5xx = self.responses_5xx.saturating_add(o.responses_5xx);
        self.grpc_errors = self.grpc_errors.saturating_add(o.grpc_errors);
        self.connections = self.connections.saturating_add(o.connections);
    }

    /// As service counts, for [`figures`]: the split below 5xx is not kept.
    pub(super) fn as_counts(&self) -> Counts {
        Counts {
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            requests: self.requests,
            classes: [0, 0, 0, self.responses_5xx],
            grpc_errors: self.grpc_errors,
            connections: self.connections,
        }
    }
}

pub(super) fn small(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Counts {
    pub(super) fn add_report(&mut self, c: &TrafficCounts) {
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

    pub(super) fn add(&mut self, o: &Counts) {
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

pub(super) type Latency = [u32; LATENCY_BUCKETS];

/// A bucket's start time divided by [`BUCKET_SECONDS`]: 32 bits last until the year
/// 3000 and keep buckets small.
pub(super) type Slot = u32;

/// A bucket: its slot and what it holds.
#[derive(Clone, Debug)]
pub(super) struct Bucket<T> {
    pub(super) slot: Slot,
    pub(super) data: T,
}

/// Buckets in increasing slot order, only those with data.
#[derive(Debug)]
pub(super) struct Series<T>(pub(super) VecDeque<Bucket<T>>);

impl<T: Default> Series<T> {
    pub(super) fn new() -> Self {
        Series(VecDeque::new())
    }

    /// The bucket of `slot`, created at the end if needed. A clock that went back puts
    /// data in the newest bucket rather than out of order.
    pub(super) fn at(&mut self, slot: Slot) -> &mut T {
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
    pub(super) fn prune(&mut self, oldest: Slot) {
        while self.0.front().is_some_and(|b| b.slot < oldest) {
            self.0.pop_front();
        }
    }

    pub(super) fn between(&self, first: Slot, last: Slot) -> impl Iterator<Item = &Bucket<T>> {
        self.0
            .iter()
            .filter(move |b| (first..=last).contains(&b.slot))
    }

    pub(super) fn bytes(&self) -> usize {
        self.0.capacity() * std::mem::size_of::<Bucket<T>>()
    }
}

#[derive(Debug, Default)]
pub(super) struct ServiceData {
    pub(super) counts: Counts,
    pub(super) latency: Latency,
}

#[derive(Debug)]
pub(super) struct ServiceWindow {
    pub(super) buckets: Series<ServiceData>,
    pub(super) sources: HashMap<TrafficSource, Series<SourceCounts>>,
}

/// What is kept per reporting dataplane.
#[derive(Debug)]
pub(super) struct Reporter {
    pub(super) last_report: i64,
    /// A sidecar's service and its open connections at the last report (gateways count
    /// no connections).
    pub(super) active: Option<(Arc<str>, u64)>,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) services: HashMap<Arc<str>, ServiceWindow>,
    pub(super) reporters: HashMap<String, Reporter>,
}

/// The slot of a Unix time.
pub(super) fn slot_of(unix: i64) -> Slot {
    Slot::try_from(unix.div_euclid(BUCKET_SECONDS)).unwrap_or(0)
}

/// Buckets kept, as slots.
pub(super) const KEPT: Slot = WINDOW_BUCKETS as Slot;
