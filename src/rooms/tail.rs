//! A cluster node's repair of what the bus lost: the tail of a room.
//!
//! Streams notice a lost message by the seq gap the next one leaves, and read it from
//! the store. A lost *last* message leaves no gap until another comes, so every
//! interval (`--cluster-repair-interval-ms`) the node reads the stored `last_seq` of the rooms it has streams in
//! (one statement) and tells each room that is ahead of what it published
//! ([`Hubs::behind`]): its streams read the rest from the store, as any gap.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::live::Hubs;
use crate::store::Store;

/// Starts the check, every `interval` (a message lost on the bus reaches the streams
/// within about that long, plus one catch-up read); it ends when `stop` turns true.
pub fn start(
    store: Store,
    hubs: Arc<Hubs>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
            let live = hubs.live_rooms();
            if live.is_empty() {
                continue;
            }
            match store.last_seqs(&live).await {
                Ok(stored) => {
                    for (room, last_seq) in stored {
                        hubs.behind(&room, last_seq);
                    }
                }
                Err(error) => tracing::debug!(%error, "could not read live rooms' last seqs"),
            }
        }
    })
}
