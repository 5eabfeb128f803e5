//! What happened to each request's body, kept in memory so a test can ask the app
//! afterwards (`GET /_requests`) whether a body arrived whole, was cut off, or whether
//! the client stopped reading a response: the app's side of "a reset reached the app".

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// How many events are kept (the oldest go first).
const KEEP: usize = 1000;

/// One body that ended.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub method: String,
    /// Path and query as received.
    pub path: String,
    pub version: &'static str,
    /// `request` (a body the app read) or `response` (a body the app sent).
    pub body: &'static str,
    /// `complete`, `aborted` (the request body failed: reset or cut off), `cancelled`
    /// (the response was dropped before its end) or `failed` (the app failed it on
    /// purpose, `reset_after`).
    pub outcome: &'static str,
    /// Bytes read or sent by then.
    pub bytes: u64,
    /// The error, for `aborted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The events of one app process.
#[derive(Debug, Default)]
pub struct Journal {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    events: VecDeque<Event>,
    /// Every event ever recorded, also those no longer kept (a flood of requests is
    /// counted even when it overflows the queue).
    total: u64,
}

impl Journal {
    pub fn record(&self, event: Event) {
        // A panic elsewhere while holding the lock leaves a usable queue: keep going.
        let mut kept = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.events.len() == KEEP {
            kept.events.pop_front();
        }
        kept.events.push_back(event);
        kept.total += 1;
    }

    /// Every event kept, oldest first, and how many were ever recorded.
    pub fn events(&self) -> (Vec<Event>, u64) {
        let kept = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (kept.events.iter().cloned().collect(), kept.total)
    }
}
