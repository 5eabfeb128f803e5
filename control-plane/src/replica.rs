//! Keeping one replica's view in step with changes made through the others.
//!
//! A replica publishes what it changed itself at once (admin calls reload the hub). What
//! other replicas change reaches it three ways, all ending in [`ConfigHub::notify`],
//! which re-reads everything from the store and pushes what changed past the snapshot
//! it holds: a PostgreSQL `NOTIFY` sent by every change (the fast path), a re-read each
//! time the listening connection is (re)made (notifications sent while it was down are
//! lost), and a check of the revision every second (a notification lost any other way).
//! Since revisions are handed out in commit order (see `store::postgres`), reading "the
//! current state" never misses a change that committed late.
//!
//! The CA follows the same snapshots: when the trust bundle's revision moves (a rotation
//! step made through another replica), the CA state is re-read, so every replica signs
//! with the root that signs and serves the bundle that is pushed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_postgres::AsyncMessage;

use crate::ca::CaManager;
use crate::hub::ConfigHub;
use crate::store::Store;
use crate::store::postgres::{CONFIG_CHANNEL, PgTarget};

/// How often the revision is checked besides notifications.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Longest wait between two attempts to re-open the listening connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Re-reads the store whenever the revision moved past the published snapshot.
pub async fn poll_revision(hub: Arc<ConfigHub>, store: Arc<dyn Store>) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.revision().await {
            Ok(rev) if rev > hub.current().version => hub.notify(),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the store's revision"),
        }
    }
}

/// Listens for change notifications on a connection of its own, re-made with backoff
/// whenever it breaks; each (re)connection also triggers a re-read.
pub async fn listen(hub: Arc<ConfigHub>, target: PgTarget) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match listen_once(&hub, &target).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(store = %target.shown(), error = %e, "change notifications interrupted; reconnecting (the revision is polled meanwhile)");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn listen_once(hub: &ConfigHub, target: &PgTarget) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = target.config().connect(tokio_postgres::NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection only makes progress while polled: drive it on its own task, which
    // forwards what arrives (and ends the channel when the connection ends).
    tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    // The payload is the revision; one that cannot be read still
                    // means "something changed".
                    if tx.send(Ok(n.payload().parse::<u64>().ok())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CONFIG_CHANNEL}"))
        .await?;
    tracing::info!(store = %target.shown(), "listening for changes made through other replicas");
    // Whatever changed while nobody listened.
    hub.notify();
    while let Some(message) = rx.recv().await {
        // This replica's own changes are published already (admin calls reload).
        if message?.is_none_or(|rev| rev > hub.current().version) {
            hub.notify();
        }
    }
    Ok(())
}

/// Re-reads the CA whenever a published snapshot carries a newer trust bundle.
pub async fn follow_ca(hub: Arc<ConfigHub>, ca: Arc<CaManager>) {
    let mut snapshots = hub.subscribe();
    loop {
        let bundle_revision = snapshots.borrow_and_update().bundle_revision();
        if bundle_revision > ca.current().bundle_revision {
            if let Err(e) = ca.refresh().await {
                tracing::error!(error = %e, "cannot re-read the CA after a change through another replica; retrying on the next change");
            }
        }
        if snapshots.changed().await.is_err() {
            return;
        }
    }
}
