//! The tunnel between dataplanes: mTLS (TLS 1.3, SPIFFE ids checked both ways), one
//! HTTP/2 connection per peer, one `CONNECT` stream per carried TCP connection.
//!
//! Windows are large (4 MiB per stream, 16 MiB per connection) so one bulk stream is not
//! window-bound across a high bandwidth-delay link, while each stream's memory stays
//! bounded by its window because window is only released as the consumer reads.

pub mod client;
pub mod io;
pub mod server;

/// Per-stream receive window.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection receive window.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest frame we accept; bigger frames mean fewer frame headers on bulk transfers.
pub const MAX_FRAME: u32 = 256 * 1024;
/// How long a TLS handshake or a tunnel connect may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
