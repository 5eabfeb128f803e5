//! Socket options of connections between dataplanes (tunnels, mesh HTTP, the ingress's
//! relays), so a path that dies silently is found by the kernel too, not only by the
//! HTTP/2 pings of the side that owns the connection.
//!
//! - TCP keepalive: an idle connection is probed after [`KEEPALIVE_IDLE`], every
//!   [`KEEPALIVE_INTERVAL`], and closed after [`KEEPALIVE_PROBES`] unanswered probes
//!   (about 16 s). This is what frees the *accepting* side of a cut path, which sends
//!   nothing by itself.
//! - `TCP_USER_TIMEOUT`: data sent and not acknowledged for [`USER_TIMEOUT`] closes the
//!   connection, where Linux would otherwise retransmit for about 15 minutes.
//!
//! Never applied to connections with apps or public clients: those belong to the app's
//! and the client's own policies.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered keepalive probes before the connection is closed.
pub const KEEPALIVE_PROBES: u32 = 3;
/// How long sent data may stay unacknowledged.
pub const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies the mesh's socket options to a connection with another dataplane. A failure
/// is logged and otherwise ignored: the connection works without them, it is only found
/// dead later.
pub fn mesh_socket(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let sock = SockRef::from(tcp);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = sock.set_tcp_user_timeout(Some(USER_TIMEOUT)) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mesh_sockets_carry_keepalive_and_a_user_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        mesh_socket(&tcp);
        let sock = SockRef::from(&tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        #[cfg(target_os = "linux")]
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
        assert!(tcp.nodelay().unwrap());
    }
}
