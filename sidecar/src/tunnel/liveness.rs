//! Whether a pooled tunnel connection is still alive: the one way to notice a path cut
//! silently (no FIN, no reset), which TCP alone reports only after its own timeouts.
//!
//! Any byte that arrives proves the peer alive, so a busy connection is never pinged.
//! A connection quiet for [`PING_IDLE`] gets a PING; it is dead when nothing at all
//! arrives for [`PING_TIMEOUT`] after it. Before declaring it dead, the watcher gives
//! the connection [`GRACE`] to read what may be waiting: when this process itself was
//! stalled (a loaded machine), the answer can be sitting unread in the socket.

use std::time::{Duration, Instant};

use super::{PING_IDLE, PING_TIMEOUT};
use crate::io::Activity;

/// Time given to read an answer that may be waiting before a connection is dead.
const GRACE: Duration = Duration::from_millis(100);

/// How watching a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The connection closed by itself.
    Closed,
    /// Nothing arrived after a PING: the path is dead.
    Dead,
}

/// Watches one connection until it closes or is found dead. `heard` is the
/// connection's clock of received bytes ([`crate::io::Tracked::reads`]).
pub async fn watch(mut pong: h2::PingPong, heard: Activity) -> Ended {
    loop {
        heard.idle(PING_IDLE).await;
        let sent = Instant::now();
        let ping = pong.ping(h2::Ping::opaque());
        let mut ping = std::pin::pin!(ping);
        let mut grace_given = false;
        loop {
            // Quiet since the later of the PING and the last byte heard.
            let quiet = heard.idle_for().min(sent.elapsed());
            let wait = if quiet < PING_TIMEOUT {
                grace_given = false;
                PING_TIMEOUT - quiet
            } else if !grace_given {
                grace_given = true;
                GRACE
            } else {
                return Ended::Dead;
            };
            tokio::select! {
                answered = &mut ping => match answered {
                    Ok(_) => break,
                    Err(_) => return Ended::Closed,
                },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Tracked;

    /// An h2 client connection through a relay the test can silence; the watcher's end.
    async fn watched(silence: tokio::sync::oneshot::Receiver<()>) -> (Ended, Duration) {
        let (client_io, mut relay_a) = tokio::io::duplex(64 * 1024);
        let (mut relay_b, server_io) = tokio::io::duplex(64 * 1024);
        // The relay forwards both ways until silenced; then it holds both ends open
        // and forwards nothing, like a cut path.
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut relay_a, &mut relay_b) => return,
                _ = silence => {}
            }
            std::future::pending::<()>().await;
            drop((relay_a, relay_b));
        });
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            while conn.accept().await.is_some() {}
        });
        let heard = Activity::default();
        let (_send, mut conn) = h2::client::handshake(Tracked::reads(client_io, heard.clone()))
            .await
            .unwrap();
        let pong = conn.ping_pong().unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let started = Instant::now();
        let ended = watch(pong, heard).await;
        (ended, started.elapsed())
    }

    #[tokio::test]
    async fn a_silent_path_is_found_dead_in_about_two_seconds() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(watched(rx));
        // Alive and answering PINGs for a while: not dead.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            !watcher.is_finished(),
            "a live connection was declared dead"
        );
        let cut = Instant::now();
        tx.send(()).unwrap();
        let (ended, _) = watcher.await.unwrap();
        let noticed = cut.elapsed();
        assert_eq!(ended, Ended::Dead);
        assert!(
            noticed <= PING_IDLE + PING_TIMEOUT + GRACE + Duration::from_millis(500),
            "noticed after {noticed:?}"
        );
    }
}
