//! The tunnel between dataplanes: mTLS (TLS 1.3, SPIFFE ids checked both ways), one
//! HTTP/2 connection per peer, one `CONNECT` stream per carried TCP connection.
//!
//! Windows: each stream's memory stays bounded by its window because window is only
//! released as the consumer reads, and the connection window covers every stream the
//! connection allows ([`MAX_STREAMS`] × [`STREAM_WINDOW`] ≤ [`CONNECTION_WINDOW`]), so
//! carried connections whose readers stall hold only their own windows and never stop
//! the other streams of the tunnel.

pub mod client;
pub mod io;
pub mod liveness;
pub mod server;
pub mod splice;

#[cfg(test)]
mod io_tests;

use std::time::Duration;

/// Per-stream receive window.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Concurrent streams (carried connections) on one tunnel connection.
pub const MAX_STREAMS: u32 = 2047;
/// Per-connection receive window: the largest HTTP/2 allows, which covers every stream.
pub const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// Largest frame we accept; bigger frames mean fewer frame headers on bulk transfers.
pub const MAX_FRAME: u32 = 256 * 1024;
/// How long the inbound may take to connect to its app, and half of what a peer's TLS
/// handshake may take on the inbound port.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP connect to another dataplane may take (Linkerd's default): a peer
/// that does not answer a SYN within it is tried again in the next round of attempts,
/// or another peer is.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the TLS and HTTP/2 handshakes with another dataplane may take once
/// connected: room for a ClientHello relayed by two ingresses across regions.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// A mesh connection from which nothing arrived for this long is pinged...
pub const PING_IDLE: Duration = Duration::from_secs(1);
/// ...and is dead when nothing at all (no PONG, no other byte) arrives for this long
/// after the PING: a path cut silently is noticed in about two seconds. Only between
/// dataplanes: apps (gRPC servers count PINGs as strikes) are never pinged.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);

// Checked when building: the connection window covers every stream.
const _: () = assert!(MAX_STREAMS as u64 * STREAM_WINDOW as u64 <= CONNECTION_WINDOW as u64);
