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
pub mod server;

/// Per-stream receive window.
pub const STREAM_WINDOW: u32 = 1024 * 1024;
/// Concurrent streams (carried connections) on one tunnel connection.
pub const MAX_STREAMS: u32 = 2047;
/// Per-connection receive window: the largest HTTP/2 allows, which covers every stream.
pub const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// Largest frame we accept; bigger frames mean fewer frame headers on bulk transfers.
pub const MAX_FRAME: u32 = 256 * 1024;
/// How long a TLS handshake or a tunnel connect may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

// Checked when building: the connection window covers every stream.
const _: () = assert!(MAX_STREAMS as u64 * STREAM_WINDOW as u64 <= CONNECTION_WINDOW as u64);
